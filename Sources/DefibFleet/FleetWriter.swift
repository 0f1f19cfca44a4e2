import DefibCore
import Foundation
import PostgresNIO

/// One incident as the fleet database stores it: the local JSON whole (without stacks: they stay on the
/// host, next to the core) and the columns the views filter, group and sort on.
public struct FleetIncidentRow: Sendable, Equatable {
    public var host: String
    public var storeID: String
    public var localID: Int64
    /// The change's version (the local outbox's seq): an older one never overwrites a newer one.
    public var version: Int64
    public var machineID: String?
    public var service: String
    public var detectedAt: Date
    public var cause: String
    public var outcome: String
    public var diagnosisKind: String?
    public var signature: String?
    public var suspect: String?
    /// `defib incidents --json`'s object for this incident, compact.
    public var body: String

    /// The row for `incident` (which must have its local id) as of change `version`.
    public init(incident: Incident, version: Int64, host: String, storeID: String, machineID: String?) {
        var shipped = incident
        shipped.stacks = nil
        self.host = host
        self.storeID = storeID
        localID = incident.id ?? 0
        self.version = version
        self.machineID = machineID
        service = incident.service
        detectedAt = incident.detectedAt
        cause = incident.cause.kind
        outcome = incident.outcome.rawValue
        diagnosisKind = HangDiagnosis(line: incident.diagnosis)?.kind.rawValue
        signature = incident.signature
        suspect = FleetSuspect.of(incident)
        body = IncidentJSON.object(shipped).rendered(pretty: false)
    }
}

/// When one signature on many hosts is a fleet event (`fleet_alert_hosts` within `fleet_alert_window`).
public struct FleetAlertRule: Sendable, Equatable {
    /// Distinct hosts needed.
    public var hosts: Int
    /// The window, in seconds, ending at the signature's newest incident.
    public var windowSeconds: Int
    /// Makes a rule.
    public init(hosts: Int, windowSeconds: Int) { self.hosts = hosts; self.windowSeconds = windowSeconds }
}

/// A fleet event: one signature reached the alert rule's number of hosts within its window.
public struct FleetEvent: Sendable, Equatable {
    public var id: Int64
    public var signature: String
    public var raisedAt: Date
    /// The host whose shipper saw the threshold crossed and recorded the event.
    public var raisedBy: String
    public var firstSeen: Date
    public var lastSeen: Date
    public var hosts: Int
    public var threshold: Int
    public var windowSeconds: Int
    public var diagnosisKind: String?
    public var suspect: String?
    public var suspectHosts: Int
    public var hostNames: [String]

    /// The log line: `fleet event: signature S hung 5 hosts within 600 s (threshold 3): self-deadlock; suspect …`.
    public var summary: String {
        var s = "fleet event #\(id): signature \(signature) hung \(hosts) hosts within \(windowSeconds) s (threshold \(threshold))"
        if let diagnosisKind { s += ": \(diagnosisKind)" }
        if let suspect { s += "; suspect '\(suspect)' on \(suspectHosts) of \(hosts) hosts" } else { s += "; no suspect write named" }
        return s
    }
}

/// What one shipment did.
public struct FleetShipResult: Sendable, Equatable {
    /// Rows inserted (new incidents).
    public var inserted = 0
    /// Rows updated to a newer version.
    public var updated = 0
    /// Rows the database already had at this or a newer version (a duplicate or a late, older delivery).
    public var unchanged = 0
    /// Fleet events this shipment recorded.
    public var events: [FleetEvent] = []
}

/// Writes incidents to the fleet database: one transaction per batch, an idempotent upsert keyed by
/// (host, local database, local id) that keeps the highest version, then the fleet-event check.
///
/// **Who detects a fleet event**: the shipper, right after its upsert and inside the same transaction. It
/// takes an advisory lock per signature in its batch (in key order: no deadlock between shippers), counts
/// the distinct hosts of each signature in the window ending at its newest incident (an index-only scan of
/// `fleet_incident_by_signature`), and records an event when the count reaches the rule's hosts and no
/// event of that signature is still open (its `last_seen` within the window). An open event only has its
/// `last_seen`, hosts and suspect brought up to date: one event per episode, however many hosts follow. The lock makes
/// the check and the insert one step across the fleet, so the event is recorded once, by the host whose
/// incident crossed the threshold; it logs the line and counts the metric.
public enum FleetWriter {
    /// Ships `rows` in one transaction.
    public static func ship(_ rows: [FleetIncidentRow], on c: FleetConnection, alert: FleetAlertRule, raisedBy: String,
                            deadlineSeconds: Double = 60) async throws -> FleetShipResult {
        // One batch never names an incident twice (the outbox coalesces); keep the newest just in case, or
        // PostgreSQL refuses the statement ("cannot affect row a second time").
        var newest: [String: FleetIncidentRow] = [:]
        for r in rows {
            let key = "\(r.host)\u{0}\(r.storeID)\u{0}\(r.localID)"
            if let have = newest[key], have.version >= r.version { continue }
            newest[key] = r
        }
        let batch = Array(newest.values).sorted { ($0.host, $0.storeID, $0.localID) < ($1.host, $1.storeID, $1.localID) }
        guard !batch.isEmpty else { return FleetShipResult() }
        return try await c.transaction("ship \(batch.count) incident(s)", seconds: deadlineSeconds) { c in
            var result = try await upsert(batch, on: c)
            let signed = batch.filter { $0.signature != nil }
            if !signed.isEmpty {
                result.events = try await checkAlerts(signatures: signed.map { $0.signature! }, detectedAt: signed.map(\.detectedAt),
                                                      on: c, alert: alert, raisedBy: raisedBy)
            }
            return result
        }
    }

    static func upsert(_ batch: [FleetIncidentRow], on c: FleetConnection) async throws -> FleetShipResult {
        let query: PostgresQuery = """
            WITH up AS (
                INSERT INTO fleet_incident AS f (host, store_id, local_id, version, machine_id, service, detected_at, cause,
                                                 outcome, diagnosis_kind, signature, suspect, body)
                SELECT host, store_id, local_id, version, NULLIF(machine_id, ''), service, detected_at, cause, outcome,
                       NULLIF(diagnosis_kind, ''), NULLIF(signature, ''), NULLIF(suspect, ''), body::json
                FROM unnest(\(batch.map(\.host))::text[], \(batch.map(\.storeID))::text[], \(batch.map(\.localID))::int8[],
                            \(batch.map(\.version))::int8[], \(batch.map { $0.machineID ?? "" })::text[], \(batch.map(\.service))::text[],
                            \(batch.map(\.detectedAt))::timestamptz[], \(batch.map(\.cause))::text[], \(batch.map(\.outcome))::text[],
                            \(batch.map { $0.diagnosisKind ?? "" })::text[], \(batch.map { $0.signature ?? "" })::text[],
                            \(batch.map { $0.suspect ?? "" })::text[], \(batch.map(\.body))::text[])
                     AS u(host, store_id, local_id, version, machine_id, service, detected_at, cause, outcome, diagnosis_kind,
                          signature, suspect, body)
                ON CONFLICT (host, store_id, local_id) DO UPDATE SET
                    version = EXCLUDED.version, machine_id = EXCLUDED.machine_id, service = EXCLUDED.service,
                    detected_at = EXCLUDED.detected_at, cause = EXCLUDED.cause, outcome = EXCLUDED.outcome,
                    diagnosis_kind = EXCLUDED.diagnosis_kind, signature = EXCLUDED.signature, suspect = EXCLUDED.suspect,
                    body = EXCLUDED.body, shipped_at = now()
                WHERE f.version < EXCLUDED.version
                RETURNING (xmax = 0) AS inserted
            )
            SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM up
            """
        let rows = try await c.run(query, "upsert \(batch.count) incident(s)")
        var (inserted, updated): (Int64, Int64) = (0, 0)
        if let row = rows.first { (inserted, updated) = try row.decode((Int64, Int64).self) }
        return FleetShipResult(inserted: Int(inserted), updated: Int(updated), unchanged: batch.count - Int(inserted) - Int(updated))
    }

    /// The fleet-event check for the incidents just written (signature and detection time of each; see the
    /// type's comment). A signature is looked at only when one of them falls in the window ending at its newest
    /// incident: a backlog of old incidents shipped late changes no episode and costs no check.
    static func checkAlerts(signatures batchSignatures: [String], detectedAt: [Date], on c: FleetConnection, alert: FleetAlertRule,
                            raisedBy: String) async throws -> [FleetEvent] {
        let window = Double(alert.windowSeconds)
        let signatures = Array(Set(batchSignatures)).sorted()
        try await c.run("""
            SELECT pg_advisory_xact_lock(k) FROM (
                SELECT DISTINCT hashtextextended('defib-fleet-event:' || s, 0) AS k FROM unnest(\(signatures)::text[]) AS s ORDER BY k
            ) AS keys
            """, "lock the fleet-event check")
        let due = try await c.run("""
            WITH b AS (SELECT * FROM unnest(\(batchSignatures)::text[], \(detectedAt)::timestamptz[]) AS b(signature, detected_at)),
            newest AS (
                SELECT s.signature, (SELECT max(f.detected_at) FROM fleet_incident f WHERE f.signature = s.signature) AS t
                FROM (SELECT DISTINCT signature FROM b) s
            ),
            relevant AS (
                SELECT n.* FROM newest n
                WHERE EXISTS (SELECT 1 FROM b WHERE b.signature = n.signature AND b.detected_at > n.t - make_interval(secs => \(window)))
            ),
            counts AS (
                SELECT n.signature, n.t, count(DISTINCT f.host)::int8 AS hosts, min(f.detected_at) AS first_seen
                FROM relevant n JOIN fleet_incident f ON f.signature = n.signature AND f.detected_at > n.t - make_interval(secs => \(window))
                GROUP BY n.signature, n.t
            )
            SELECT c.signature, c.hosts,
                   (SELECT e.id FROM fleet_event e WHERE e.signature = c.signature
                        AND e.last_seen > c.t - make_interval(secs => \(window)) ORDER BY e.last_seen DESC LIMIT 1) AS open_event
            FROM counts c
            """, "check for fleet events")
        var events: [FleetEvent] = []
        for row in due {
            let (signature, hosts, openEvent) = try row.decode((String, Int64, Int64?).self)
            if let openEvent {
                // The episode goes on: its hosts, last sighting and suspect over every incident since it began.
                try await c.run("""
                    WITH w AS (
                        SELECT host, detected_at, suspect FROM fleet_incident
                        WHERE signature = \(signature) AND detected_at >= (SELECT first_seen FROM fleet_event WHERE id = \(openEvent))
                    ),
                    votes AS (SELECT DISTINCT ON (host) host, suspect FROM w ORDER BY host, detected_at DESC),
                    tally AS (SELECT suspect, count(*) AS n FROM votes WHERE suspect IS NOT NULL GROUP BY suspect ORDER BY count(*) DESC, suspect LIMIT 1)
                    UPDATE fleet_event SET
                        last_seen = greatest(last_seen, (SELECT max(detected_at) FROM w)),
                        hosts = greatest(hosts, (SELECT count(*) FROM votes)::int),
                        host_names = coalesce((SELECT array_agg(host ORDER BY host) FROM votes), host_names),
                        suspect = coalesce((SELECT suspect FROM tally), suspect),
                        suspect_hosts = coalesce((SELECT n FROM tally)::int, suspect_hosts)
                    WHERE id = \(openEvent)
                    """, "extend fleet event \(openEvent)")
            } else if hosts >= Int64(alert.hosts) {
                events.append(try await raise(signature: signature, on: c, alert: alert, raisedBy: raisedBy))
            }
        }
        return events
    }

    /// Records the event for `signature` with its hosts, diagnosis kind and suspect (one vote per host: the
    /// suspect of its newest incident in the window, as `fleet signatures` counts them).
    static func raise(signature: String, on c: FleetConnection, alert: FleetAlertRule, raisedBy: String) async throws -> FleetEvent {
        let window = Double(alert.windowSeconds)
        let rows = try await c.run("""
            WITH newest AS (SELECT max(detected_at) AS t FROM fleet_incident WHERE signature = \(signature)),
            w AS (
                SELECT f.host, f.detected_at, f.diagnosis_kind, f.suspect FROM fleet_incident f, newest
                WHERE f.signature = \(signature) AND f.detected_at > newest.t - make_interval(secs => \(window))
            ),
            votes AS (SELECT DISTINCT ON (host) host, suspect FROM w ORDER BY host, detected_at DESC),
            tally AS (SELECT suspect, count(*) AS n FROM votes WHERE suspect IS NOT NULL GROUP BY suspect ORDER BY count(*) DESC, suspect LIMIT 1)
            INSERT INTO fleet_event (signature, raised_by, first_seen, last_seen, hosts, threshold, window_seconds,
                                     diagnosis_kind, suspect, suspect_hosts, host_names)
            SELECT \(signature), \(raisedBy), min(w.detected_at), max(w.detected_at), count(DISTINCT w.host), \(Int32(alert.hosts)),
                   \(Int32(alert.windowSeconds)), (SELECT mode() WITHIN GROUP (ORDER BY diagnosis_kind) FROM w),
                   (SELECT suspect FROM tally), coalesce((SELECT n FROM tally), 0), array_agg(DISTINCT w.host ORDER BY w.host)
            FROM w
            RETURNING id, raised_at, first_seen, last_seen, hosts, diagnosis_kind, suspect, suspect_hosts, host_names
            """, "record a fleet event for \(signature)")
        guard let row = rows.first else { throw FleetError(.query, "record a fleet event for \(signature)", "no row returned") }
        let (id, raisedAt, first, last, hosts, kind, suspect, suspectHosts, names) =
            try row.decode((Int64, Date, Date, Date, Int32, String?, String?, Int32, [String]).self)
        return FleetEvent(id: id, signature: signature, raisedAt: raisedAt, raisedBy: raisedBy, firstSeen: first, lastSeen: last,
                          hosts: Int(hosts), threshold: alert.hosts, windowSeconds: alert.windowSeconds, diagnosisKind: kind,
                          suspect: suspect, suspectHosts: Int(suspectHosts), hostNames: names)
    }
}
