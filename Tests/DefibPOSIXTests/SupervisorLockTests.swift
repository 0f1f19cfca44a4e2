import DefibPOSIX
import DefibTestKit
import Foundation
import Glibc
import Testing

/// One supervisor per (state directory, service). (Two real `defib run` processes: IntegrationTests'
/// HardeningRunTests; here the type against flock(1) and against itself.)
@Suite struct SupervisorLockTests {
    /// The lock again after `release()`. Other tests in this process fork children all the time, and a
    /// child between its fork and its exec still shares the lock's descriptor (close-on-exec closes it only
    /// at the exec): in a busy test run the lock may take a moment to be free.
    static func acquireAgain(_ run: SafeDirectory, service: String) throws -> SupervisorLock {
        for _ in 0..<500 {
            if let lock = try? SupervisorLock.acquire(in: run, service: service) { return lock }
            usleep(10_000)
        }
        return try SupervisorLock.acquire(in: run, service: service)
    }

    @Test func aSecondLockerIsToldWhoHoldsIt() throws {
        let scratch = ScratchDirectory("lock-twice")
        let run = try SafeDirectory.open(scratch.path + "/run/web")
        let first = try SupervisorLock.acquire(in: run, service: "web")
        #expect(first.previousHolder == nil)
        #expect(SupervisorLock.holder(runDirectory: run.path) == getpid())
        // A second open file description conflicts with the first, as a second process would.
        do {
            _ = try SupervisorLock.acquire(in: run, service: "web")
            Issue.record("a second lock was granted")
        } catch {
            #expect(error.code == .held(byPid: getpid()))
            #expect(error.description.hasPrefix("another defib (pid \(getpid())) already supervises 'web'"), "\(error)")
        }
        first.release()
        let second = try Self.acquireAgain(run, service: "web")
        #expect(second.isHeld)
    }

    @Test func aLockHeldByAnotherProcessIsRefusedAndAStaleOneTakenOver() throws {
        let scratch = ScratchDirectory("lock-other")
        let run = try SafeDirectory.open(scratch.path + "/run/web")
        // A dead supervisor's pid in the file, nobody holding it.
        try "999999999\n".write(toFile: run.path + "/supervisor.lock", atomically: false, encoding: .utf8)
        chmod(run.path + "/supervisor.lock", 0o600)
        // A real other process holds it (python's flock, one process, so killing it releases the lock).
        let held = scratch.path + "/held"
        let script = "import fcntl, sys, time\nf = open(sys.argv[1], 'r')\nfcntl.flock(f, fcntl.LOCK_EX)\nopen(sys.argv[2], 'w').close()\ntime.sleep(60)\n"
        var request = SpawnRequest(argv: ["python3", "-c", script, run.path + "/supervisor.lock", held], environment: currentEnvironment())
        request.parentDeathSignal = 0; request.stdinFromDevNull = true
        let holder = try spawnProcess(request)
        defer { try? holder.signal(SIGKILL); _ = waitForChild(holder, timeoutMs: 5000); holder.closePidfd() }
        for _ in 0..<3000 where access(held, F_OK) != 0 { usleep(10_000) }
        try #require(access(held, F_OK) == 0, "the holder never took the lock")
        var refused: SupervisorLockError?
        do { _ = try SupervisorLock.acquire(in: run, service: "web") } catch { refused = error }
        let error = try #require(refused, "granted while another process held it")
        #expect(error.code == .held(byPid: 999999999), "the holder wrote no pid: the file still names the last writer")
        try holder.signal(SIGKILL)
        _ = waitForChild(holder, timeoutMs: 5000)
        let lock = try Self.acquireAgain(run, service: "web")
        #expect(lock.previousHolder == 999999999, "a stale lock is taken over and says whose it was")
        #expect(SupervisorLock.holder(runDirectory: run.path) == getpid())
    }

    @Test func aLockFileDefibCannotTrustIsRefused() throws {
        let scratch = ScratchDirectory("lock-untrusted")
        let run = try SafeDirectory.open(scratch.path + "/run/web")
        try "x".write(toFile: scratch.path + "/elsewhere", atomically: false, encoding: .utf8)
        try #require(symlink(scratch.path + "/elsewhere", run.path + "/supervisor.lock") == 0)
        #expect(throws: SupervisorLockError.self) { _ = try SupervisorLock.acquire(in: run, service: "web") }
        unlink(run.path + "/supervisor.lock")
        try #require(link(scratch.path + "/elsewhere", run.path + "/supervisor.lock") == 0)
        do { _ = try SupervisorLock.acquire(in: run, service: "web"); Issue.record("a hard-linked lock file was used") } catch {
            #expect(error.code == .untrustedFile("has 2 hard links"))
        }
        #expect((try? String(contentsOfFile: scratch.path + "/elsewhere", encoding: .utf8)) == "x", "never written through")
    }

    @Test func theLockIsNotInheritedByChildren() throws {
        let scratch = ScratchDirectory("lock-cloexec")
        let run = try SafeDirectory.open(scratch.path + "/run/web")
        let lock = try SupervisorLock.acquire(in: run, service: "web")
        var request = SpawnRequest(argv: ["sleep", "30"], environment: currentEnvironment())
        request.parentDeathSignal = 0; request.stdinFromDevNull = true
        let child = try spawnProcess(request)
        defer { try? child.signal(SIGKILL); _ = waitForChild(child, timeoutMs: 5000); child.closePidfd() }
        let fds = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(child.pid)/fd")) ?? []
        let targets = fds.compactMap { try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(child.pid)/fd/\($0)") }
        #expect(!targets.contains(lock.path), "a service holding the lock would keep a dead supervisor's lock alive")
        lock.release()
        _ = try Self.acquireAgain(run, service: "web")
    }
}
