import DefibCore
import Foundation
import PostgresNIO

/// One incident of the fleet, as `defib fleet incidents` lists it.
public struct FleetIncidentListing: Sendable, Equatable {
    public var host: String
    public var storeID: String
    public var localID: Int64
    public var version: Int64
    public var service: String
    public var detectedAt: Date
    public var cause: String
    public var outcome: String
    public var diagnosisKind: String?
    public var signature: String?
    public var suspect: String?
    /// The host's `defib incidents --json` object, compact, as shipped.
    public var body: String
    public var shippedAt: Date
}

/// One signature across the fleet, as `defib fleet signatures` lists it.
public struct FleetSignatureSummary: Sendable, Equatable {
    public var signature: String
    /// Distinct hosts with an incident of this signature in the period.
    public var hosts: Int
    /// Their names, sorted.
    public var hostNames: [String]
    public var incidents: Int
    public var firstSeen: Date
    public var lastSeen: Date
    /// The most common diagnosis kind among the incidents.
    public var diagnosisKind: String?
    /// The most common suspect write across the hosts (`FleetSuspect`, one vote per host).
    public var suspect: String?
    /// Hosts whose newest incident of this signature names `suspect`.
    public var suspectHosts: Int
}

/// The fleet views, each one statement.
public enum FleetQueries {
    /// Incidents newest first (by detection, then host and id), at most `limit` (0: no limit).
    public static func incidents(on c: FleetConnection, since: Date? = nil, host: String? = nil, signature: String? = nil,
                                 limit: Int = 1000) async throws -> [FleetIncidentListing] {
        // A far-past default keeps one statement shape for the planner; the filters are optional binds.
        let from = since ?? Date(timeIntervalSince1970: 0)
        let cap = limit > 0 ? Int64(limit) : Int64.max
        let rows = try await c.run("""
            SELECT host, store_id, local_id, version, service, detected_at, cause, outcome, diagnosis_kind, signature, suspect,
                   body::text, shipped_at
            FROM fleet_incident
            WHERE detected_at >= \(from) AND (\(host ?? "")::text = '' OR host = \(host ?? "")::text)
              AND (\(signature ?? "")::text = '' OR signature = \(signature ?? "")::text)
            ORDER BY detected_at DESC, host, local_id DESC
            LIMIT \(cap)
            """, "list fleet incidents")
        return try rows.map { row in
            let (h, store, id, version, service, detected, cause, outcome, kind, sig, suspect, body, shipped) =
                try row.decode((String, String, Int64, Int64, String, Date, String, String, String?, String?, String?, String, Date).self)
            return FleetIncidentListing(host: h, storeID: store, localID: id, version: version, service: service, detectedAt: detected,
                                        cause: cause, outcome: outcome, diagnosisKind: kind, signature: sig, suspect: suspect,
                                        body: body, shippedAt: shipped)
        }
    }

    /// One row per signature seen since `since` (incidents without a signature yet are left out), most hosts
    /// first. The suspect is counted as `FleetSuspectTally` does: each host votes with its newest incident of
    /// the signature, the most votes win, ties go to the label that sorts first.
    public static func signatures(on c: FleetConnection, since: Date? = nil, limit: Int = 0) async throws -> [FleetSignatureSummary] {
        let from = since ?? Date(timeIntervalSince1970: 0)
        let cap = limit > 0 ? Int64(limit) : Int64.max
        let rows = try await c.run("""
            WITH w AS (
                SELECT signature, host, detected_at, diagnosis_kind, suspect FROM fleet_incident
                WHERE signature IS NOT NULL AND detected_at >= \(from)
            ),
            agg AS (
                SELECT signature, count(DISTINCT host)::int8 AS hosts, array_agg(DISTINCT host ORDER BY host) AS host_names,
                       count(*)::int8 AS incidents, min(detected_at) AS first_seen, max(detected_at) AS last_seen,
                       mode() WITHIN GROUP (ORDER BY diagnosis_kind) AS diagnosis_kind
                FROM w GROUP BY signature
            ),
            votes AS (SELECT DISTINCT ON (signature, host) signature, host, suspect FROM w ORDER BY signature, host, detected_at DESC),
            tally AS (
                SELECT signature, suspect, count(*)::int8 AS n,
                       row_number() OVER (PARTITION BY signature ORDER BY count(*) DESC, suspect) AS rank
                FROM votes WHERE suspect IS NOT NULL GROUP BY signature, suspect
            )
            SELECT a.signature, a.hosts, a.host_names, a.incidents, a.first_seen, a.last_seen, a.diagnosis_kind, t.suspect,
                   coalesce(t.n, 0)::int8
            FROM agg a LEFT JOIN tally t ON t.signature = a.signature AND t.rank = 1
            ORDER BY a.hosts DESC, a.last_seen DESC, a.signature
            LIMIT \(cap)
            """, "summarize fleet signatures")
        return try rows.map { row in
            let (sig, hosts, names, incidents, first, last, kind, suspect, suspectHosts) =
                try row.decode((String, Int64, [String], Int64, Date, Date, String?, String?, Int64).self)
            return FleetSignatureSummary(signature: sig, hosts: Int(hosts), hostNames: names, incidents: Int(incidents), firstSeen: first,
                                         lastSeen: last, diagnosisKind: kind, suspect: suspect, suspectHosts: Int(suspectHosts))
        }
    }

    /// Fleet events raised since `since`, newest first.
    public static func events(on c: FleetConnection, since: Date? = nil, limit: Int = 100) async throws -> [FleetEvent] {
        let from = since ?? Date(timeIntervalSince1970: 0)
        let rows = try await c.run("""
            SELECT id, signature, raised_at, raised_by, first_seen, last_seen, hosts, threshold, window_seconds, diagnosis_kind,
                   suspect, suspect_hosts, host_names
            FROM fleet_event WHERE raised_at >= \(from) OR last_seen >= \(from)
            ORDER BY raised_at DESC LIMIT \(Int64(max(1, limit)))
            """, "list fleet events")
        return try rows.map { row in
            let (id, sig, raised, by, first, last, hosts, threshold, window, kind, suspect, suspectHosts, names) =
                try row.decode((Int64, String, Date, String, Date, Date, Int32, Int32, Int32, String?, String?, Int32, [String]).self)
            return FleetEvent(id: id, signature: sig, raisedAt: raised, raisedBy: by, firstSeen: first, lastSeen: last, hosts: Int(hosts),
                              threshold: Int(threshold), windowSeconds: Int(window), diagnosisKind: kind, suspect: suspect,
                              suspectHosts: Int(suspectHosts), hostNames: names)
        }
    }
}
