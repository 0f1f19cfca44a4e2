import DefibCore
@testable import DefibStore
import Foundation
import GRDB
import Testing

/// coredumpctl-style queries over the store: matches on indexed and derived columns, a store written before
/// the derived columns existed, and the per-signature summary.
@Suite struct IncidentQueryTests {
    func incident(_ service: String, pid: Int32, at ms: Int64, comm: String? = nil, uid: UInt32 = 0, diagnosis: String = "",
                  signature: String? = nil, exe: String? = nil) -> Incident {
        var i = Incident(service: service, pid: pid, binaryPath: exe, detectedAt: at(base + ms), cause: .missedHeartbeat(misses: 1, lastPongAt: nil, lastError: nil))
        i.diagnosis = diagnosis
        i.signature = signature
        if let comm { i.process = IncidentProcess(uid: uid, gid: uid, comm: comm, argv: [comm]) }
        return i
    }

    func seed(_ store: IncidentStore) throws -> [Int64] {
        [try store.insert(incident("proxy", pid: 10, at: 0, comm: "defib-proxy", diagnosis: "dead-loop: spins", signature: "s1", exe: "/bin/p")),
         try store.insert(incident("proxy", pid: 11, at: 1000, comm: "defib-proxy", uid: 1000, diagnosis: "dead-loop: spins", signature: "s1", exe: "/bin/p")),
         try store.insert(incident("cache", pid: 12, at: 2000, comm: "cache", diagnosis: "self-deadlock: x", signature: "s2")),
         try store.insert(incident("proxy", pid: 13, at: 3000, signature: "s1")),
         try store.insert(incident("cache", pid: 14, at: 4000))]
    }

    func ids(_ store: IncidentStore, _ build: (inout IncidentQuery) -> Void) throws -> [Int64] {
        var q = IncidentQuery()
        build(&q)
        return try store.incidents(matching: q).compactMap(\.id)
    }

    @Test func matchesOnEveryField() throws {
        let dir = TempDirectory()
        let store = try IncidentStore.open(stateDirectory: dir.path)
        let id = try seed(store)
        #expect(try ids(store) { _ in } == id.reversed())
        #expect(try ids(store) { $0.oldestFirst = true } == id)
        #expect(try ids(store) { $0.limit = 2; $0.oldestFirst = true } == [id[3], id[4]], "the newest two, oldest first")
        #expect(try ids(store) { $0.add(.comm, "defib-proxy") } == [id[1], id[0]])
        #expect(try ids(store) { $0.add(.uid, "1000") } == [id[1]])
        #expect(try ids(store) { $0.add(.exe, "/bin/p") } == [id[1], id[0]])
        #expect(try ids(store) { $0.add(.diagnosis, "dead-loop") } == [id[1], id[0]])
        #expect(try ids(store) { $0.add(.diagnosis, "self-deadlock"); $0.add(.diagnosis, "dead-loop") } == [id[2], id[1], id[0]])
        #expect(try ids(store) { $0.add(.service, "proxy"); $0.add(.signature, "s1"); $0.add(.pid, "13") } == [id[3]])
        #expect(try ids(store) { $0.add(.id, String(id[2])) } == [id[2]])
        #expect(try ids(store) { $0.add(.cause, "missed-heartbeat"); $0.since = at(base + 1000); $0.until = at(base + 3000) } == [id[3], id[2], id[1]])
        #expect(try ids(store) { $0.add(.outcome, "recovered") } == [])
        #expect(try store.exists(id: id[0]) && !(try store.exists(id: 999)))
    }

    @Test func theDerivedColumnsAreAMigrationAndIndexed() throws {
        let dir = TempDirectory()
        _ = try IncidentStore.open(stateDirectory: dir.path)
        let queue = try DatabaseQueue(path: dir.database)
        let (columns, indexes, plan) = try queue.read { db in
            (try Row.fetchAll(db, sql: "PRAGMA table_xinfo(incident)").map { $0["name"] as String },
             try String.fetchAll(db, sql: "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'incident'"),
             try Row.fetchAll(db, sql: "EXPLAIN QUERY PLAN SELECT id FROM incident WHERE comm = 'x'").map { $0["detail"] as String }.joined())
        }
        #expect(Set(["comm", "exe", "uid", "gid", "diagnosis_kind"]).isSubset(of: Set(columns)))
        #expect(Set(["incident_by_comm", "incident_by_exe", "incident_by_diagnosis_kind"]).isSubset(of: Set(indexes)))
        #expect(plan.contains("incident_by_comm"), "a COMM match uses its index: \(plan)")
    }

    @Test func aStoreFromBeforeTheDerivedColumnsIsQueriedByExpression() throws {
        let dir = TempDirectory()
        // A store as the previous version left it: only v1.
        let pool = try DatabasePool(path: dir.database)
        var old = DatabaseMigrator()
        old.registerMigration("v1") { db in
            try db.execute(sql: """
                CREATE TABLE incident (id INTEGER PRIMARY KEY AUTOINCREMENT, service TEXT NOT NULL, pid INTEGER NOT NULL,
                cause_kind TEXT NOT NULL, detected_at INTEGER NOT NULL, outcome TEXT NOT NULL, signature TEXT, core_path TEXT,
                core_bytes INTEGER NOT NULL DEFAULT 0, body TEXT NOT NULL)
                """)
        }
        try old.migrate(pool)
        let body = try IncidentCodec.encode(incident("proxy", pid: 10, at: 0, comm: "defib-proxy", diagnosis: "dead-loop: spins", signature: "s1"))
        try pool.write { db in
            try db.execute(sql: "INSERT INTO incident (service, pid, cause_kind, detected_at, outcome, signature, body) VALUES ('proxy', 10, 'missed-heartbeat', ?, 'open', 's1', ?)",
                           arguments: [base, body])
        }
        let reader = try IncidentStore.openReadOnly(stateDirectory: dir.path)
        #expect(try ids(reader) { $0.add(.comm, "defib-proxy") } == [1])
        #expect(try ids(reader) { $0.add(.diagnosis, "dead-loop") } == [1])
        #expect(try reader.signatures(matching: IncidentQuery()).first?.diagnosisKind == "dead-loop")
        // The supervisor's next open migrates it; the same answers come from the columns.
        let writer = try IncidentStore.open(stateDirectory: dir.path)
        #expect(try ids(writer) { $0.add(.comm, "defib-proxy") } == [1])
    }

    @Test func signaturesSummariseRepeats() throws {
        let dir = TempDirectory()
        let store = try IncidentStore.open(stateDirectory: dir.path)
        let id = try seed(store)
        let all = try store.signatures(matching: IncidentQuery())
        #expect(all.map(\.signature) == ["s1", "s2"], "the most recently seen first; unsigned incidents left out")
        let s1 = try #require(all.first)
        #expect(s1.count == 3 && s1.firstSeen == at(base) && s1.lastSeen == at(base + 3000) && s1.lastIncident == id[3])
        #expect(s1.services == ["proxy"] && s1.diagnosisKind == nil, "the kind of the newest of them (not yet diagnosed)")
        var since = IncidentQuery()
        since.since = at(base + 1000)
        since.add(.service, "proxy")
        #expect(try store.signatures(matching: since).map { [$0.signature, String($0.count)] } == [["s1", "2"]])
    }
}
