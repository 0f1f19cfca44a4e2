import DefibCore
import Foundation
import GRDB
import Synchronization

/// The fleet outbox: which incidents changed since they were last shipped to the fleet database.
///
/// Every insert and update of an incident also writes its outbox row, in the same transaction, so a change
/// is either recorded and pending or not recorded at all — shipping needs nothing from the supervision loop.
/// One row per incident (`REPLACE`): a row holds no copy of the incident, only its id and a `seq` drawn from
/// SQLite's AUTOINCREMENT, which never goes back, even after deletes. That `seq` is the change's **version**:
/// a later change of the same incident always has a higher one, so the fleet database can refuse an older
/// change arriving after a newer one, and five changes made while the database was down ship as one (the
/// newest state).
///
/// The bound is the disk: a pending change costs one small row (~40 bytes) next to the incident it names,
/// at most one per incident. When the disk is full the incident's own insert fails, and with it the outbox
/// row (one transaction): what was recorded before — the oldest — stays recorded and pending, nothing
/// already pending is ever dropped to make room.
///
/// Acknowledgement is arranged so the shipper (another thread) never writes to the store while the
/// supervisor runs: it reads with a cursor and reports what the fleet database committed through
/// `acknowledgeOutbox`; those rows are deleted inside the supervisor's next incident write (at most 64, no
/// extra transaction or fsync), and the rest when the shipper stops (`pruneAcknowledgedOutbox`). Until
/// deleted, an acknowledged row would only be shipped again after a restart: at least once, and the fleet's
/// upsert is idempotent.
enum FleetOutboxSchema {
    static let table = "fleet_outbox"

    /// Registers the outbox migration. Named apart from the incident table's `v1`, `v2` … so schema changes
    /// on either side never collide.
    static func register(_ migrator: inout DatabaseMigrator) {
        migrator.registerMigration("fleet-outbox-v1") { db in
            try db.execute(sql: """
                CREATE TABLE fleet_outbox (
                    seq INTEGER PRIMARY KEY AUTOINCREMENT,
                    incident_id INTEGER NOT NULL UNIQUE,
                    queued_at INTEGER NOT NULL
                );
                CREATE TABLE fleet_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
                INSERT INTO fleet_meta (key, value) VALUES ('store_id', lower(hex(randomblob(16))));
                INSERT INTO fleet_outbox (incident_id, queued_at) SELECT id, detected_at FROM incident ORDER BY id;
                """)
        }
    }

    /// Marks `incidentID` changed (a new, higher `seq`), and deletes up to `pruning` acknowledged rows.
    static func recordChange(_ db: Database, incidentID: Int64, pruning: [Int64]) throws {
        try db.execute(sql: "REPLACE INTO fleet_outbox (incident_id, queued_at) VALUES (?, ?)",
                       arguments: [incidentID, Date().millisecondsSince1970])
        if !pruning.isEmpty { try deleteRows(db, pruning) }
    }

    static func deleteRows(_ db: Database, _ seqs: [Int64]) throws {
        for chunk in stride(from: 0, to: seqs.count, by: 500).map({ Array(seqs[$0..<min($0 + 500, seqs.count)]) }) {
            let marks = Array(repeating: "?", count: chunk.count).joined(separator: ",")
            try db.execute(sql: "DELETE FROM fleet_outbox WHERE seq IN (\(marks))", arguments: StatementArguments(chunk))
        }
    }
}

/// The shipper's acknowledgements waiting to be deleted from the outbox (see `FleetOutboxSchema`).
final class OutboxAcknowledgements: Sendable {
    private struct State { var seqs: [Int64] = []; var oldestAt: Date? }
    private let state = Mutex(State())
    /// At most this many ride along in one incident write: the supervisor's transaction stays tiny.
    static let perIncidentWrite = 64

    func add(_ seqs: [Int64], at now: Date) {
        guard !seqs.isEmpty else { return }
        state.withLock { s in
            if s.seqs.isEmpty { s.oldestAt = now }
            s.seqs += seqs
        }
    }

    /// Up to `limit` acknowledged seqs (oldest first), left in place until `remove` confirms their deletion.
    func peek(_ limit: Int) -> [Int64] { state.withLock { Array($0.seqs.prefix(limit)) } }

    func remove(_ seqs: [Int64]) {
        guard !seqs.isEmpty else { return }
        let gone = Set(seqs)
        state.withLock { s in
            s.seqs.removeAll { gone.contains($0) }
            if s.seqs.isEmpty { s.oldestAt = nil }
        }
    }

    var status: (count: Int, oldestAt: Date?) { state.withLock { ($0.seqs.count, $0.oldestAt) } }
}

extension IncidentStore {
    /// One pending change: the incident as it is now (nil when it has since been deleted) and its version.
    public struct OutboxEntry: Sendable {
        /// The change's version (the outbox row's seq): higher for every later change of the same incident.
        public var version: Int64
        /// The local incident id.
        public var incidentID: Int64
        /// When the change was recorded (Unix ms).
        public var queuedAtUnixMs: Int64
        /// The incident's current state; nil when the row is gone (nothing left to ship).
        public var incident: Incident?
    }

    /// This database's identity in the fleet: a random id made when the outbox was created, so the incidents
    /// of a recreated local database (ids restarting at 1) never overwrite the old ones.
    public func fleetStoreID() throws -> String {
        do {
            return try reader.read { db in
                try String.fetchOne(db, sql: "SELECT value FROM fleet_meta WHERE key = 'store_id'") ?? ""
            }
        } catch {
            throw StoreError(.read, path: path, "read the fleet store id: \(sqliteMessage(error))")
        }
    }

    /// Up to `limit` pending changes with a version above `cursor`, oldest change first.
    public func outboxBatch(after cursor: Int64, limit: Int) throws -> [OutboxEntry] {
        let rows: [Row]
        do {
            rows = try reader.read { db in
                try Row.fetchAll(db, sql: """
                    SELECT o.seq, o.incident_id, o.queued_at, i.id, i.service, i.pid, i.detected_at, i.outcome, i.body
                    FROM fleet_outbox o LEFT JOIN incident i ON i.id = o.incident_id
                    WHERE o.seq > ? ORDER BY o.seq LIMIT ?
                    """, arguments: [cursor, max(1, limit)])
            }
        } catch {
            throw StoreError(.read, path: path, "read the fleet outbox: \(sqliteMessage(error))")
        }
        return try rows.map { row in
            var entry = OutboxEntry(version: row["seq"], incidentID: row["incident_id"], queuedAtUnixMs: row["queued_at"], incident: nil)
            if let id: Int64 = row["id"] {
                let columns = IncidentCodec.Columns(id: id, service: row["service"], pid: row["pid"],
                                                    detectedAtMs: row["detected_at"], outcome: row["outcome"])
                do {
                    entry.incident = try IncidentCodec.decode(row["body"], columns: columns)
                } catch {
                    throw StoreError(.corruptRecord, path: path, "incident \(id) cannot be decoded: \(error)")
                }
            }
            return entry
        }
    }

    /// Changes not yet shipped: how many have a version above `cursor`, and when the oldest was recorded.
    public func outboxBacklog(after cursor: Int64) throws -> (count: Int, oldestQueuedUnixMs: Int64?) {
        do {
            return try reader.read { db in
                let row = try Row.fetchOne(db, sql: "SELECT COUNT(*) AS n, MIN(queued_at) AS oldest FROM fleet_outbox WHERE seq > ?",
                                           arguments: [cursor])
                return (row?["n"] ?? 0, row?["oldest"])
            }
        } catch {
            throw StoreError(.read, path: path, "count the fleet outbox: \(sqliteMessage(error))")
        }
    }

    /// The fleet database committed these versions: their rows may go (see `FleetOutboxSchema` for when).
    public func acknowledgeOutbox(_ versions: [Int64], at now: Date = Date()) {
        outboxAcknowledgements.add(versions, at: now)
    }

    /// Acknowledged rows waiting for deletion, and since when the oldest waits.
    public var acknowledgedOutbox: (count: Int, oldestAt: Date?) { outboxAcknowledgements.status }

    /// Deletes every acknowledged row now, in transactions of at most 500 rows; returns how many.
    @discardableResult
    public func pruneAcknowledgedOutbox() throws -> Int {
        var total = 0
        while true {
            let seqs = outboxAcknowledgements.peek(500)
            if seqs.isEmpty { return total }
            try write("prune the fleet outbox") { db in try FleetOutboxSchema.deleteRows(db, seqs) }
            outboxAcknowledgements.remove(seqs)
            total += seqs.count
        }
    }

    /// Queues every incident again (new versions), e.g. after the fleet database was restored from a backup.
    /// Returns how many were queued.
    @discardableResult
    public func requeueAllForFleet() throws -> Int {
        try write("requeue incidents for the fleet") { db in
            try db.execute(sql: "REPLACE INTO fleet_outbox (incident_id, queued_at) SELECT id, ? FROM incident ORDER BY id",
                           arguments: [Date().millisecondsSince1970])
            return db.changesCount
        }
    }

    /// Records many incidents in one transaction (each with its outbox row), returning their ids in order:
    /// for tools that load a store in bulk (the fleet benchmark builds its hosts' stores with it).
    @discardableResult
    public func insertBatch(_ incidents: [Incident]) throws -> [Int64] {
        let rows = try incidents.map { try StoredRow($0, path: path) }
        return try write("insert \(incidents.count) incidents") { db in
            var ids: [Int64] = []
            ids.reserveCapacity(rows.count)
            for row in rows {
                try db.execute(sql: StoredRow.insertSQL, arguments: row.arguments)
                let id = db.lastInsertedRowID
                try FleetOutboxSchema.recordChange(db, incidentID: id, pruning: [])
                ids.append(id)
            }
            return ids
        }
    }
}
