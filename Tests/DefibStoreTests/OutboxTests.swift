import DefibCore
import DefibStore
import Foundation
import GRDB
import Testing

/// The fleet outbox in the SQLite store: written with every incident change in the same transaction, one
/// row per incident whose seq is the change's version, read with a cursor, pruned after acknowledgement.
@Suite struct OutboxTests {
    func incident(_ n: Int64) -> Incident {
        Incident(service: "proxy", pid: Int32(n), detectedAt: at(base + n * 1000), cause: .exited(code: 1))
    }

    @Test func everyInsertAndUpdateQueuesItsIncidentWithAHigherVersion() throws {
        let dir = TempDirectory()
        let store = try IncidentStore.open(stateDirectory: dir.path)
        #expect(try store.outboxBatch(after: 0, limit: 10).isEmpty)
        let a = try store.insert(incident(1))
        let b = try store.insert(incident(2))
        var batch = try store.outboxBatch(after: 0, limit: 10)
        #expect(batch.map(\.incidentID) == [a, b])
        #expect(batch[0].version < batch[1].version)
        #expect(batch[0].incident?.id == a && batch[0].incident?.pid == 1)
        let firstVersionOfA = batch[0].version

        // Changing `a` again moves it behind `b` with a newer version: one row per incident, the newest state.
        var changed = try #require(try store.incident(id: a))
        changed.outcome = .recovered
        try store.update(changed)
        batch = try store.outboxBatch(after: 0, limit: 10)
        #expect(batch.map(\.incidentID) == [b, a])
        #expect(batch[1].version > firstVersionOfA && batch[1].incident?.outcome == .recovered)
        #expect(try store.outboxBacklog(after: 0).count == 2)

        // A cursor reads only what came after it.
        #expect(try store.outboxBatch(after: batch[0].version, limit: 10).map(\.incidentID) == [a])
        #expect(try store.outboxBacklog(after: batch[1].version).count == 0)
        #expect(try store.outboxBatch(after: 0, limit: 1).count == 1)
    }

    @Test func acknowledgedRowsGoWithTheNextIncidentWriteOrAPrune() throws {
        let dir = TempDirectory()
        let store = try IncidentStore.open(stateDirectory: dir.path)
        for n in Int64(1)...3 { try store.insert(incident(n)) }
        let batch = try store.outboxBatch(after: 0, limit: 10)
        store.acknowledgeOutbox(batch.prefix(2).map(\.version))
        #expect(store.acknowledgedOutbox.count == 2)
        #expect(try rows(dir) == 3, "acknowledged rows wait for a write")
        // The supervisor's next incident write takes them along (no extra transaction).
        try store.insert(incident(4))
        #expect(try rows(dir) == 2 && store.acknowledgedOutbox.count == 0)
        // Or the shipper prunes them itself.
        store.acknowledgeOutbox(try store.outboxBatch(after: 0, limit: 10).map(\.version))
        #expect(try store.pruneAcknowledgedOutbox() == 2)
        #expect(try rows(dir) == 0)
        // An acknowledged version that was replaced by a newer change is not the row's version any more: the
        // newer change stays queued.
        let id = try store.insert(incident(5))
        let old = try #require(try store.outboxBatch(after: 0, limit: 10).first)
        var i = try #require(try store.incident(id: id))
        i.outcome = .gaveUp
        try store.update(i)
        store.acknowledgeOutbox([old.version])
        try store.pruneAcknowledgedOutbox()
        #expect(try store.outboxBatch(after: 0, limit: 10).map(\.incidentID) == [id])
    }

    @Test func aDeletedIncidentLeavesAnEntryWithNothingToShip() throws {
        let dir = TempDirectory()
        let store = try IncidentStore.open(stateDirectory: dir.path)
        let id = try store.insert(incident(1))
        try store.delete(id: id)
        let entry = try #require(try store.outboxBatch(after: 0, limit: 10).first)
        #expect(entry.incidentID == id && entry.incident == nil)
    }

    @Test func requeueingQueuesEveryIncidentAgainAndTheStoreHasAFleetIdentity() throws {
        let dir = TempDirectory()
        let store = try IncidentStore.open(stateDirectory: dir.path)
        for n in Int64(1)...3 { try store.insert(incident(n)) }
        let before = try store.outboxBatch(after: 0, limit: 10).map(\.version).max()!
        store.acknowledgeOutbox(try store.outboxBatch(after: 0, limit: 10).map(\.version))
        try store.pruneAcknowledgedOutbox()
        #expect(try store.requeueAllForFleet() == 3)
        let again = try store.outboxBatch(after: 0, limit: 10)
        #expect(again.count == 3 && again.allSatisfy { $0.version > before })
        let id = try store.fleetStoreID()
        #expect(id.count == 32 && id.allSatisfy(\.isHexDigit))
        #expect(try IncidentStore.open(stateDirectory: dir.path).fleetStoreID() == id, "stable across opens")
        let other = TempDirectory()
        #expect(try IncidentStore.open(stateDirectory: other.path).fleetStoreID() != id, "another database, another id")
    }

    @Test func aStoreFromBeforeTheOutboxQueuesItsIncidentsWhenUpgraded() throws {
        let dir = TempDirectory()
        // The schema as it was before the outbox: only the incident table's v1.
        let queue = try DatabaseQueue(path: dir.database)
        try queue.write { db in
            try db.execute(sql: """
                CREATE TABLE grdb_migrations (identifier TEXT NOT NULL PRIMARY KEY);
                INSERT INTO grdb_migrations VALUES ('v1');
                CREATE TABLE incident (id INTEGER PRIMARY KEY AUTOINCREMENT, service TEXT NOT NULL, pid INTEGER NOT NULL,
                    cause_kind TEXT NOT NULL, detected_at INTEGER NOT NULL, outcome TEXT NOT NULL, signature TEXT, core_path TEXT,
                    core_bytes INTEGER NOT NULL DEFAULT 0, body TEXT NOT NULL);
                INSERT INTO incident (service, pid, cause_kind, detected_at, outcome, body)
                VALUES ('old', 9, 'exited', 1795000000000, 'recovered', '{"service":"old","pid":9,"cause":{"exited":{"code":1}},"detectedAt":"2026-11-18T11:06:40.000Z","outcome":"recovered","diagnosis":"","notes":[],"lockState":[]}');
                """)
        }
        try queue.close()
        let store = try IncidentStore.open(stateDirectory: dir.path)
        let entries = try store.outboxBatch(after: 0, limit: 10)
        #expect(entries.count == 1 && entries[0].incident?.service == "old")
    }

    @Test func aBatchInsertQueuesEveryIncident() throws {
        let dir = TempDirectory()
        let store = try IncidentStore.open(stateDirectory: dir.path)
        let ids = try store.insertBatch((Int64(1)...50).map { incident($0) })
        #expect(ids.count == 50 && Set(ids).count == 50)
        #expect(try store.count() == 50)
        #expect(try store.outboxBatch(after: 0, limit: 100).map(\.incidentID) == ids)
    }

    func rows(_ dir: TempDirectory) throws -> Int {
        let q = try DatabaseQueue(path: dir.database)
        defer { try? q.close() }
        return try q.read { try Int.fetchOne($0, sql: "SELECT COUNT(*) FROM fleet_outbox") ?? -1 }
    }
}
