import DefibCore
import DefibStore
import Foundation
import GRDB
import Glibc
import Synchronization
import Testing

/// A fresh state directory under /tmp, removed at the end of the test.
final class TempDirectory {
    let path: String
    init(_ name: String = #function) {
        let clean = name.filter { $0.isLetter || $0.isNumber }
        path = "/tmp/defib-store-\(clean)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }
    deinit { try? FileManager.default.removeItem(atPath: path) }
    var database: String { "\(path)/incidents.sqlite" }
}

/// A date on a whole millisecond, the precision the store keeps.
func at(_ ms: Int64) -> Date { Date(timeIntervalSince1970: Double(ms) / 1000) }

let base: Int64 = 1_795_000_000_000   // 2026-11-18, whole milliseconds

/// An incident with every field set, as the supervisor leaves it after a recovered hang with stacks.
func fullyPopulated() -> Incident {
    var i = Incident(service: "proxy", pid: 4123, binaryPath: "/usr/local/bin/defib-proxy", startedAt: at(base - 60_000),
                     detectedAt: at(base),
                     cause: .missedHeartbeat(misses: 2, lastPongAt: at(base - 1_234), lastError: "no reply within 1000 ms"))
    i.killedAt = at(base + 812)
    i.restartedAt = at(base + 915)
    i.readyAt = at(base + 1_377)
    i.capture = CaptureRecord(method: "gcore", path: "/var/lib/defib/cores/core.proxy.1.1795000000", bytes: 48_123_904,
                              durationMs: 801.25, error: nil)
    i.stacks = "Thread 3 (LWP 4125):\n#0  futex_wait () at futex.c:12\n#1  \"quoted\" frame\n"
    i.lockState = [
        LockState(name: "catalog", address: "0x00007f1234560000", word: "0xfffffffffffffffe", source: "memory",
                  holder: nil, lastHolder: "reload#7", readersWaiting: 31, writersWaiting: 1),
        LockState(name: "stats", address: "0x00007f1234560040", word: "unknown", source: "control"),
    ]
    i.newPid = 4190
    i.outcome = .recovered
    i.diagnosis = "corrupted-lock-word: lock 'catalog' word 0xfffffffffffffffe: …"
    i.notes = ["killed after capture", "stacks: gdb ended normally", "ünïcödé ✓"]
    return i
}

@Suite struct IncidentStoreTests {
    @Test func migratesAnEmptyDirectoryIntoAWALDatabase() throws {
        let dir = TempDirectory()
        let store = try IncidentStore.open(stateDirectory: dir.path)
        #expect(store.path == dir.database)
        #expect(try store.count() == 0)
        #expect(try store.list().isEmpty)
        #expect(try store.latest() == nil)

        let queue = try DatabaseQueue(path: dir.database)
        let (mode, columns, migrations) = try queue.read { db in
            (try String.fetchOne(db, sql: "PRAGMA journal_mode"),
             try db.columns(in: "incident").map(\.name),
             try String.fetchAll(db, sql: "SELECT identifier FROM grdb_migrations"))
        }
        #expect(mode == "wal")
        // v1's columns, then those computed from the body for matches (v2-process-columns).
        #expect(Array(columns.prefix(10)) == ["id", "service", "pid", "cause_kind", "detected_at", "outcome", "signature", "core_path",
                                              "core_bytes", "body"])
        #expect(Array(columns.dropFirst(10)) == ["comm", "exe", "uid", "gid", "diagnosis_kind", "runtime"])
        // The incident table's v1 and its derived columns, then the fleet outbox's own migration.
        #expect(migrations == ["v1", "v2-process-columns", "runtime-evidence", "fleet-outbox-v1"], "\(migrations)")

        // Opening again (a restarted supervisor) neither fails nor re-runs migrations.
        let again = try IncidentStore.open(stateDirectory: dir.path)
        #expect(try again.count() == 0)
    }

    @Test func insertUpdateAndGetRoundTripEveryField() throws {
        let dir = TempDirectory()
        let store = try IncidentStore.open(stateDirectory: dir.path)

        // As the supervisor does it: insert the open incident, then fill it in with updates.
        let full = fullyPopulated()
        var open = Incident(service: full.service, pid: full.pid, binaryPath: full.binaryPath, startedAt: full.startedAt,
                            detectedAt: full.detectedAt, cause: full.cause)
        open.id = 999   // ignored: the database assigns ids
        let id = try store.insert(open)
        #expect(id == 1)
        var stored = try #require(try store.incident(id: id))
        open.id = id
        #expect(stored == open)
        #expect(stored.outcome == .open)

        var complete = full
        complete.id = id
        try store.update(complete)
        stored = try #require(try store.incident(id: id))
        #expect(stored == complete)

        // The indexed columns follow the body.
        let row = try DatabaseQueue(path: dir.database).read { db in
            try Row.fetchOne(db, sql: "SELECT * FROM incident WHERE id = ?", arguments: [id])
        }
        let r = try #require(row)
        #expect(r["service"] as String == "proxy")
        #expect(r["pid"] as Int64 == 4123)
        #expect(r["cause_kind"] as String == "missed-heartbeat")
        #expect(r["detected_at"] as Int64 == base)
        #expect(r["outcome"] as String == "recovered")
        #expect(r["core_path"] as String? == complete.capture?.path)
        #expect(r["core_bytes"] as Int64 == 48_123_904)
        #expect((r["body"] as String).contains("\"readyAt\":\"2026-"), "dates are stored readable")

        #expect(try store.incident(id: id + 1) == nil)
    }

    @Test func everyCauseSurvivesTheRoundTrip() throws {
        let dir = TempDirectory()
        let store = try IncidentStore.open(stateDirectory: dir.path)
        let causes: [IncidentCause] = [
            .missedHeartbeat(misses: 1, lastPongAt: nil, lastError: nil),
            .exited(code: 7), .signaled(signal: 11, coreDumped: true), .startTimeout(seconds: 1.5),
            .startTimeout(seconds: 2, heartbeat: "http probe GET http://127.0.0.1:8000/", lastError: "connection refused"),
            .spawnFailed(message: "execve(/nonexistent): No such file or directory"),
        ]
        for (n, cause) in causes.enumerated() {
            let id = try store.insert(Incident(service: "s", pid: Int32(n + 1), detectedAt: at(base + Int64(n)), cause: cause))
            #expect(try store.incident(id: id)?.cause == cause)
        }
    }

    @Test func listIsNewestFirstWithServiceTimeAndLimitFilters() throws {
        let dir = TempDirectory()
        let store = try IncidentStore.open(stateDirectory: dir.path)
        // Inserted out of time order: the order must come from detected_at, not from the id.
        let plan: [(String, Int64)] = [("proxy", 3_000), ("proxy", 1_000), ("cache", 2_000), ("proxy", 5_000), ("cache", 4_000)]
        var ids: [Int64: Int64] = [:]   // time offset → id
        for (service, offset) in plan {
            ids[offset] = try store.insert(Incident(service: service, pid: Int32(offset), detectedAt: at(base + offset),
                                                    cause: .exited(code: 1)))
        }
        func offsets(_ list: [Incident]) -> [Int64] { list.map { Int64($0.pid) } }

        #expect(offsets(try store.list()) == [5_000, 4_000, 3_000, 2_000, 1_000])
        #expect(try store.list().map(\.id) == [5_000, 4_000, 3_000, 2_000, 1_000].map { ids[$0] })
        #expect(offsets(try store.list(service: "proxy")) == [5_000, 3_000, 1_000])
        #expect(offsets(try store.list(service: "nobody")) == [])
        #expect(offsets(try store.list(since: at(base + 2_000))) == [5_000, 4_000, 3_000, 2_000], "since is inclusive")
        #expect(offsets(try store.list(until: at(base + 4_000))) == [4_000, 3_000, 2_000, 1_000], "until is inclusive")
        #expect(offsets(try store.list(since: at(base + 1_500), until: at(base + 4_500))) == [4_000, 3_000, 2_000])
        #expect(offsets(try store.list(service: "cache", since: at(base + 2_500))) == [4_000])
        #expect(offsets(try store.list(limit: 2)) == [5_000, 4_000])
        #expect(offsets(try store.list(service: "proxy", limit: 1)) == [5_000])
        #expect(try store.list(limit: 0).isEmpty)

        #expect(try store.count() == 5)
        #expect(try store.count(service: "cache") == 2)
        #expect(try store.count(since: at(base + 3_000)) == 3)
        #expect(try store.latest()?.pid == 5_000)
        #expect(try store.latest(service: "cache")?.pid == 4_000)

        // Same detection time: the later insert counts as newer.
        let tieA = try store.insert(Incident(service: "tie", pid: 1, detectedAt: at(base + 9_000), cause: .exited(code: 1)))
        let tieB = try store.insert(Incident(service: "tie", pid: 2, detectedAt: at(base + 9_000), cause: .exited(code: 1)))
        #expect(try store.list(service: "tie").map(\.id) == [tieB, tieA])

        #expect(try store.delete(id: ids[5_000]!))
        #expect(try !store.delete(id: ids[5_000]!), "already gone")
        #expect(try store.latest(service: "proxy")?.pid == 3_000)
        #expect(try store.count() == 6)
    }

    @Test func aReaderInAnotherConnectionReadsWhileTheWriterWrites() throws {
        let dir = TempDirectory()
        let writer = try IncidentStore.open(stateDirectory: dir.path)
        try writer.insert(Incident(service: "proxy", pid: 1, detectedAt: at(base), cause: .exited(code: 1)))
        let reader = try IncidentStore.openReadOnly(stateDirectory: dir.path)

        // A reader holding a read transaction open does not stop the writer (it would under a rollback
        // journal: the commit needs every reader gone) and keeps seeing its snapshot.
        let snapshot = try DatabaseQueue(path: dir.database, configuration: { var c = Configuration(); c.readonly = true; return c }())
        try snapshot.read { db in
            #expect(try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM incident") == 1)
            try writer.insert(Incident(service: "proxy", pid: 2, detectedAt: at(base + 1), cause: .exited(code: 1)))
            #expect(try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM incident") == 1, "the open transaction keeps its snapshot")
            #expect(try reader.count() == 2, "a new read sees the commit")
        }

        // A writer thread commits 200 incidents one by one while this thread keeps listing.
        let total = 200
        final class Shared: Sendable {
            let done = Atomic(false)
            let error = Mutex<String?>(nil)
        }
        let shared = Shared()
        let thread = Thread {
            do {
                for n in 0..<total {
                    var i = Incident(service: "proxy", pid: Int32(100 + n), detectedAt: at(base + 10 + Int64(n)), cause: .exited(code: 1))
                    i.id = try writer.insert(i)
                    i.outcome = .recovered
                    try writer.update(i)
                }
            } catch { shared.error.withLock { $0 = "\(error)" } }
            shared.done.store(true, ordering: .releasing)
        }
        thread.start()
        var seen: [Int] = []
        while !shared.done.load(ordering: .acquiring) {
            let list = try reader.list(limit: 5)
            seen.append(try reader.count())
            // Whatever the reader sees is a consistent incident, never a half-written one.
            for i in list { #expect(i.service == "proxy" && i.cause == .exited(code: 1)) }
        }
        let writerError = shared.error.withLock { $0 }
        #expect(writerError == nil, "writer failed: \(writerError ?? "")")
        #expect(seen == seen.sorted(), "counts only grow")
        #expect(try reader.count() == total + 2)
        #expect(try reader.latest()?.pid == Int32(100 + total - 1))
        #expect(try reader.latest()?.outcome == .recovered)
    }

    @Test func rowsWrittenByAnOlderVersionStillDecode() throws {
        let dir = TempDirectory()
        let store = try IncidentStore.open(stateDirectory: dir.path)
        // A body with only the first version's core fields (no capture, lockState, notes, diagnosis, outcome,
        // newPid …) and one field this version does not know.
        let body = #"{"cause":{"exited":{"code":3}},"detectedAt":"2026-11-18T11:06:40.000Z","pid":77,"service":"old","futureField":{"x":1}}"#
        let queue = try DatabaseQueue(path: dir.database)
        try queue.write { db in
            try db.execute(sql: """
                INSERT INTO incident (service, pid, cause_kind, detected_at, outcome, body)
                VALUES ('old', 77, 'exited', ?, 'gave-up', ?)
                """, arguments: [base, body])
        }
        let old = try #require(try store.incident(id: 1))
        #expect(old.id == 1)
        #expect(old.service == "old")
        #expect(old.pid == 77)
        #expect(old.cause == .exited(code: 3))
        #expect(old.detectedAt == at(base))
        #expect(old.outcome == .gaveUp, "missing from the body: taken from its column")
        #expect(old.capture == nil && old.newPid == nil && old.readyAt == nil && old.stacks == nil)
        #expect(old.lockState.isEmpty && old.notes.isEmpty && old.diagnosis.isEmpty)
        #expect(try store.list().count == 1)

        // A capture record and a lock written before some of their fields existed.
        let partial = #"{"cause":{"exited":{"code":3}},"detectedAt":"2026-11-18T11:06:40.000Z","pid":78,"service":"old","capture":{"path":"/c"},"lockState":[{"word":"0x1"}]}"#
        try queue.write { db in
            try db.execute(sql: "INSERT INTO incident (service, pid, cause_kind, detected_at, outcome, body) VALUES ('old', 78, 'exited', ?, 'open', ?)",
                           arguments: [base, partial])
        }
        let second = try #require(try store.incident(id: 2))
        #expect(second.capture?.path == "/c")
        #expect(second.capture?.bytes == 0)
        #expect(second.lockState.first?.word == "0x1")
        #expect(second.lockState.first?.name == "unknown")
    }

    @Test func anUnreadableRowIsAnErrorNamingTheFileAndTheIncident() throws {
        let dir = TempDirectory()
        let store = try IncidentStore.open(stateDirectory: dir.path)
        try DatabaseQueue(path: dir.database).write { db in
            try db.execute(sql: "INSERT INTO incident (service, pid, cause_kind, detected_at, outcome, body) VALUES ('x', 1, 'exited', 0, 'open', 'not json')")
        }
        let error = try #require(throws: StoreError.self) { try store.incident(id: 1) }
        #expect(error.kind == .corruptRecord)
        #expect(error.description.hasPrefix(dir.database + ": incident 1 cannot be decoded"), "\(error)")
    }

    @Test func databaseFilesArePrivate() throws {
        let dir = TempDirectory()
        let store = try IncidentStore.open(stateDirectory: dir.path)
        try store.insert(fullyPopulated())
        for file in [dir.database, dir.database + "-wal", dir.database + "-shm"] {
            var st = stat()
            try #require(stat(file, &st) == 0, "\(file) missing")
            #expect(st.st_mode & 0o777 == 0o600, "\(file) has mode \(String(st.st_mode & 0o777, radix: 8))")
        }

        // An existing file left readable by others is tightened on open.
        let other = TempDirectory()
        #expect(FileManager.default.createFile(atPath: other.database, contents: nil))
        chmod(other.database, 0o644)
        _ = try IncidentStore.open(stateDirectory: other.path)
        var st = stat()
        #expect(stat(other.database, &st) == 0 && st.st_mode & 0o777 == 0o600)
    }

    @Test func errorsNameTheFileAndTheProblem() throws {
        let dir = TempDirectory()
        let missing = try #require(throws: StoreError.self) { try IncidentStore.openReadOnly(stateDirectory: dir.path) }
        #expect(missing.kind == .missingDatabase)
        #expect(missing.message == "no incident database at \(dir.database)")

        let nowhere = try #require(throws: StoreError.self) { try IncidentStore.open(stateDirectory: dir.path + "/no/such/dir") }
        #expect(nowhere.kind == .open)
        #expect(nowhere.description == "\(dir.path)/no/such/dir/incidents.sqlite: cannot create: No such file or directory")

        // A file a supervisor has just created and not yet migrated: distinguishable, so `list` can say "none yet".
        FileManager.default.createFile(atPath: dir.database, contents: nil)
        let fresh = try #require(throws: StoreError.self) { try IncidentStore.openReadOnly(stateDirectory: dir.path) }
        #expect(fresh.kind == .uninitialized, "\(fresh)")
        try FileManager.default.removeItem(atPath: dir.database)

        // The migrator commits its bookkeeping table (with the autoindex of its primary key) before the first
        // migration: still a database being created. A foreign table beside it is not an incident database.
        let half = try DatabaseQueue(path: dir.database)
        try half.write { db in try db.execute(sql: "CREATE TABLE grdb_migrations (identifier TEXT NOT NULL PRIMARY KEY)") }
        let halfway = try #require(throws: StoreError.self) { try IncidentStore.openReadOnly(stateDirectory: dir.path) }
        #expect(halfway.kind == .uninitialized, "\(halfway)")
        try half.write { db in try db.execute(sql: "CREATE TABLE grdbx (a)") }
        let foreign = try #require(throws: StoreError.self) { try IncidentStore.openReadOnly(stateDirectory: dir.path) }
        #expect(foreign.kind == .open && foreign.message.contains("not an incident database"), "\(foreign)")
        try half.close()
        try FileManager.default.removeItem(atPath: dir.database)

        let notADatabase = "\(dir.path)/incidents.sqlite"
        try "hello, I am a text file, not SQLite at all, padded to look like a page ....................................."
            .write(toFile: notADatabase, atomically: false, encoding: .utf8)
        let garbage = try #require(throws: StoreError.self) { try IncidentStore.openReadOnly(stateDirectory: dir.path) }
        #expect(garbage.path == notADatabase)
        #expect(garbage.kind == .open, "\(garbage)")
        try FileManager.default.removeItem(atPath: notADatabase)

        let store = try IncidentStore.open(stateDirectory: dir.path)
        var ghost = fullyPopulated()
        ghost.id = 42
        let notFound = try #require(throws: StoreError.self) { try store.update(ghost) }
        #expect(notFound.kind == .notFound)
        #expect(notFound.description == "\(dir.database): no incident 42")
        #expect(throws: StoreError.self) { try store.update(Incident(service: "x", pid: 1, detectedAt: at(base), cause: .exited(code: 0))) }

        let readOnly = try IncidentStore.openReadOnly(stateDirectory: dir.path)
        let refused = try #require(throws: StoreError.self) { try readOnly.insert(fullyPopulated()) }
        #expect(refused.kind == .readOnly)
    }
}

/// A multi-process instance's incident holds the cores of its other processes in `processes`: retention sees
/// them with the incident's own core, and forgets them all when it deletes them.
@Suite struct StoredCoresOfOtherProcessesTests {
    @Test func theOtherProcessesCoresComeWithTheIncidentsCoreAndGoWithIt() throws {
        let dir = TempDirectory()
        let store = try IncidentStore.open(stateDirectory: dir.path)
        var incident = Incident(service: "nginx", pid: 100, detectedAt: at(base), cause: .triggered(reason: "x"))
        incident.capture = CaptureRecord(method: "native", path: "/c/core.nginx.1.100", bytes: 10, durationMs: 1, error: nil)
        incident.processes = [
            ServiceProcessRecord(pid: 100, comm: "nginx", state: "S", corePath: "/c/core.nginx.1.100", diagnosis: "idle", evidence: "e", main: true),
            ServiceProcessRecord(pid: 101, comm: "nginx", state: "T", corePath: "/c/core.nginx.1.101", diagnosis: "stopped", evidence: "e", main: false),
            ServiceProcessRecord(pid: 102, comm: "nginx", state: "S", corePath: nil, diagnosis: "idle", evidence: "e", main: false),
            ServiceProcessRecord(pid: 103, comm: "nginx", state: "T", corePath: "/c/core.nginx.1.103", diagnosis: "stopped", evidence: "e", main: false),
        ]
        let id = try store.insert(incident)
        var single = Incident(service: "redis", pid: 7, detectedAt: at(base + 1), cause: .triggered(reason: "y"))
        single.capture = CaptureRecord(method: "native", path: "/c/core.redis.2.7", bytes: 10, durationMs: 1, error: nil)
        _ = try store.insert(single)
        let cores = try store.storedCores()
        #expect(cores.map(\.path) == ["/c/core.nginx.1.100", "/c/core.redis.2.7"])
        #expect(cores.map(\.otherPaths) == [["/c/core.nginx.1.101", "/c/core.nginx.1.103"], []])
        try store.recordCoreRemoved(id: id, note: "removed by retention")
        let after = try #require(try store.incident(id: id))
        #expect(after.capture?.path == nil && after.processes?.allSatisfy { $0.corePath == nil } == true)
        #expect(try store.storedCores().map(\.path) == ["/c/core.redis.2.7"])
    }
}
