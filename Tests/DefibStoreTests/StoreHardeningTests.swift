import DefibCore
import DefibStore
import DefibTestKit
import Foundation
import Glibc
import Testing

/// The incident store when things go wrong: a damaged file is moved aside (never deleted) and a new store
/// started; a full disk keeps the incident in memory until it can be written; incidents a dead supervisor
/// left open are closed `supervisor-died`.
@Suite struct StoreHardeningTests {
    static func incident(_ service: String = "web", pid: Int32 = 100, ms: Int64 = 0, notes: [String] = []) -> Incident {
        var i = Incident(service: service, pid: pid, detectedAt: at(base + ms), cause: .missedHeartbeat(misses: 3, lastPongAt: nil, lastError: nil))
        i.notes = notes
        return i
    }

    /// A store with `n` incidents, written and closed (the WAL checkpointed into the file).
    static func populated(_ dir: TempDirectory, _ n: Int) throws {
        let store = try IncidentStore.open(stateDirectory: dir.path)
        for k in 0..<n { try store.insert(incident(ms: Int64(k))) }
    }

    static func bytes(_ path: String) -> [UInt8] { (try? [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))) ?? [] }

    static func overwrite(_ path: String, at offset: Int, with junk: [UInt8]) {
        let fd = open(path, O_WRONLY)
        _ = junk.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, off_t(offset)) }
        close(fd)
    }

    @Test func aDamagedHeaderIsMovedAsideAndANewStoreStarted() throws {
        let dir = TempDirectory()
        try Self.populated(dir, 3)
        Self.overwrite(dir.database, at: 0, with: Array("this is not a database at all, it was overwritten".utf8) + [UInt8](repeating: 0x41, count: 50))
        let damagedBytes = Self.bytes(dir.database)
        let now = Date(timeIntervalSince1970: 1_796_000_000)   // 2026-11-30T00:53:20Z
        let (store, damaged) = try IncidentStore.openRecovering(stateDirectory: dir.path, now: now)
        let moved = try #require(damaged, "the damaged file was used")
        #expect(moved.movedTo == dir.database + ".damaged-20261130T005320Z")
        #expect(Self.bytes(moved.movedTo) == damagedBytes, "moved, byte for byte, never rewritten or deleted")
        #expect(moved.description.hasPrefix("incident store \(dir.database) is damaged ("), "\(moved)")
        #expect(moved.description.contains("moved aside to \(moved.movedTo)") && moved.description.contains("a new store was started"))
        #expect(try store.count() == 0)
        try store.insert(Self.incident())
        #expect(try store.count() == 1, "the new store works")
    }

    @Test func aDamagedPageFoundByTheIntegrityCheckIsMovedAsideWithItsWAL() throws {
        // The files as a killed supervisor leaves them: copied while the store is open, WAL and all.
        let live = TempDirectory()
        let dir = TempDirectory()
        let writer = try IncidentStore.open(stateDirectory: live.path)
        for k in 0..<300 { try writer.insert(Self.incident(ms: Int64(k), notes: [String(repeating: "n", count: 200)])) }
        for suffix in ["", "-wal", "-shm"] where access(live.database + suffix, F_OK) == 0 {
            try FileManager.default.copyItem(atPath: live.database + suffix, toPath: dir.database + suffix)
        }
        try #require(access(dir.database + "-wal", F_OK) == 0, "a WAL to carry along")
        // Garbage over pages 2–4 of the file: the header is fine, the b-trees are not.
        Self.overwrite(dir.database, at: 4096, with: [UInt8](repeating: 0xA5, count: 3 * 4096))
        let before = (Self.bytes(dir.database), Self.bytes(dir.database + "-wal"))
        let moved: DamagedStore = try {
            let (store, damaged) = try IncidentStore.openRecovering(stateDirectory: dir.path, now: Date(timeIntervalSince1970: 1_796_000_000))
            let moved = try #require(damaged, "quick_check found nothing")
            #expect(moved.problem.contains("quick_check") || moved.problem.contains("malformed"), "\(moved.problem)")
            #expect(Array(moved.movedFiles.prefix(2)) == [moved.movedTo, moved.movedTo + "-wal"])
            #expect(try store.count() == 0)
            return moved
        }()
        #expect(Self.bytes(moved.movedTo) == before.0 && Self.bytes(moved.movedTo + "-wal") == before.1,
                "moved as they were: the WAL neither replayed into the damaged file nor lost")
        // Twice in the same second: a second name, nothing replaced.
        Self.overwrite(dir.database, at: 0, with: [UInt8](repeating: 0x42, count: 100))
        let (_, again) = try IncidentStore.openRecovering(stateDirectory: dir.path, now: Date(timeIntervalSince1970: 1_796_000_000))
        #expect(again?.movedTo == dir.database + ".damaged-20261130T005320Z-2")
        #expect(access(moved.movedTo, F_OK) == 0)
    }

    @Test func aHealthyStoreIsLeftAlone() throws {
        let dir = TempDirectory()
        try Self.populated(dir, 2)
        let (store, damaged) = try IncidentStore.openRecovering(stateDirectory: dir.path)
        #expect(try damaged == nil && store.count() == 2)
        #expect((try FileManager.default.contentsOfDirectory(atPath: dir.path)).allSatisfy { !$0.contains("damaged") })
    }

    @Test func aDatabaseThatIsALinkOrAnotherUsersIsRefused() throws {
        let dir = TempDirectory()
        try "x".write(toFile: dir.path + "/elsewhere", atomically: false, encoding: .utf8)
        try #require(symlink(dir.path + "/elsewhere", dir.database) == 0)
        #expect(throws: StoreError.self) { _ = try IncidentStore.open(stateDirectory: dir.path) }
        unlink(dir.database)
        try "".write(toFile: dir.database, atomically: false, encoding: .utf8)
        chown(dir.database, OtherUser.nobody.uid, OtherUser.nobody.gid)
        do { _ = try IncidentStore.open(stateDirectory: dir.path); Issue.record("another user's database was used") } catch {
            #expect("\(error)".contains("is owned by uid \(OtherUser.nobody.uid)"), "\(error)")
        }
    }

    /// A full disk refuses an insert and an update with an error that says to try again later (the supervision
    /// keeps the incident in memory and offers it again: `IncidentLedger`); once there is room, the same
    /// writes succeed.
    @Test func aFullDiskRefusesWritesAsOnesToRetry() throws {
        try #require(geteuid() == 0, "mounting a tmpfs needs root")
        try withTmpfs(size: "2m", name: "store") { disk in
            let state = disk.path + "/state"
            try #require(mkdir(state, 0o700) == 0)
            let store = try IncidentStore.open(stateDirectory: state)
            var first = Self.incident(ms: 1)
            first.id = try store.insert(first)
            try disk.fill()
            // An incident with a lot to say (notes, as a long hang accumulates them) on a full disk.
            let hang = Self.incident(pid: 200, ms: 2, notes: (0..<50).map { "note \($0) " + String(repeating: "x", count: 2000) })
            do {
                _ = try store.insert(hang)
                Issue.record("written on a full disk?")
            } catch let error as StoreError {
                #expect(error.retryLater, "\(error)")
                #expect((error as any RetryableError).retryLater, "the supervision sees it through RetryableError")
            }
            first.notes = (0..<50).map { "later note \($0) " + String(repeating: "y", count: 2000) }
            do {
                try store.update(first)
                Issue.record("updated on a full disk?")
            } catch let error as StoreError {
                #expect(error.retryLater, "\(error)")
            }
            disk.unfill()
            let id = try store.insert(hang)
            try store.update(first)
            #expect(try store.count() == 2)
            #expect(try store.incident(id: id)?.notes.count == 50)
            #expect(try store.incident(id: first.id!)?.notes.first?.hasPrefix("later note 0") == true)
        }
    }

    @Test func incidentsLeftOpenByADeadSupervisorAreClosed() throws {
        let dir = TempDirectory()
        let store = try IncidentStore.open(stateDirectory: dir.path)
        var open = Self.incident(ms: 10)
        open.diagnosis = "dead-loop: spinning"
        let openID = try store.insert(open)
        let otherService = try store.insert(Self.incident("api", ms: 11))
        var done = Self.incident(ms: 12)
        done.outcome = .recovered
        let doneID = try store.insert(done)
        var asked: [Int64] = []
        let closed = try store.closeIncidentsLeftOpen(service: "web", note: "the supervisor (pid 77) died while this incident was open") { incident in
            asked.append(incident.id ?? -1)
            return (CaptureRecord(method: "native", path: nil, bytes: 0, durationMs: 0, error: "partial core deleted"), ["partial core /x deleted"])
        }
        #expect(asked == [openID])
        #expect(closed.map(\.id) == [openID])
        let stored = try #require(try store.incident(id: openID))
        #expect(stored.outcome == .supervisorDied)
        #expect(stored.diagnosis == "dead-loop: spinning", "the evidence saved before the death is kept")
        #expect(stored.notes == ["the supervisor (pid 77) died while this incident was open", "partial core /x deleted"])
        #expect(stored.capture?.error == "partial core deleted")
        #expect(IncidentJSON.string(stored, pretty: false).contains("\"outcome\":\"supervisor-died\""))
        #expect(try store.incident(id: otherService)?.outcome == .open, "another service's supervisor may be alive")
        #expect(try store.incident(id: doneID)?.outcome == .recovered)
        #expect(try store.closeIncidentsLeftOpen(service: "web", note: "again") { _ in (nil, []) }.isEmpty)
    }
}
