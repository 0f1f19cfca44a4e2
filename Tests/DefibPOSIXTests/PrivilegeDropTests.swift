import DefibCore
import DefibPOSIX
import Foundation
import Glibc
import Testing

/// `[service] user/group/supplementary_groups`: names resolved once, credentials set by the spawn shim before
/// exec, and the parent-death signal set after them (a credential change clears it).
@Suite(.timeLimit(.minutes(2)))
struct PrivilegeDropTests {
    /// Prints what the process itself sees — uid, euid, gid, egid, groups, PR_GET_PDEATHSIG — then waits.
    static let reporter = """
        import ctypes, os, sys, time
        sig = ctypes.c_int(-1)
        ctypes.CDLL(None, use_errno=True).prctl(2, ctypes.byref(sig), 0, 0, 0)
        print(os.getuid(), os.geteuid(), os.getgid(), os.getegid(), ",".join(map(str, sorted(os.getgroups()))), sig.value, flush=True)
        time.sleep(120)
        """

    func service(user: String? = nil, group: String? = nil, groups: [String]? = nil) -> SupervisorConfig.Service {
        var s = SupervisorConfig.Service(name: "t", argv: ["/bin/true"])
        s.user = user; s.group = group; s.supplementaryGroups = groups
        return s
    }

    @Test func namesResolveToTheUsersIdsAndGroups() throws {
        let nobody = try #require(try ProcessCredentials.resolve(service(user: "nobody")))
        #expect(nobody.uid == 65534 && nobody.gid == 65534)
        #expect(nobody.groups == [65534])
        #expect(nobody.userName == "nobody" && nobody.home == "/nonexistent")
        #expect(nobody.environment["USER"] == "nobody" && nobody.environment["HOME"] == "/nonexistent")

        let explicit = try #require(try ProcessCredentials.resolve(service(user: "nobody", group: "daemon", groups: ["daemon", "65534", "7"])))
        #expect(explicit.gid == 1)
        #expect(explicit.groups == [1, 65534, 7])

        let numeric = try #require(try ProcessCredentials.resolve(service(user: "65534")))
        #expect(numeric.uid == 65534 && numeric.userName == "nobody")
        let none = try #require(try ProcessCredentials.resolve(service(user: "nobody", groups: [])))
        #expect(none.groups.isEmpty)
        #expect(try ProcessCredentials.resolve(service()) == nil)
    }

    @Test func unknownNamesAreNamedWithTheirKey() {
        #expect(throws: IdentityError(key: "service.user", "no user \"defib-no-such-user\" in the password database")) {
            try ProcessCredentials.resolve(service(user: "defib-no-such-user"))
        }
        #expect(throws: IdentityError(key: "service.group", "no group \"defib-no-such-group\" in the group database")) {
            try ProcessCredentials.resolve(service(user: "nobody", group: "defib-no-such-group"))
        }
        #expect(throws: IdentityError(key: "service.supplementary_groups[1]", "no group \"defib-nope\" in the group database")) {
            try ProcessCredentials.resolve(service(user: "nobody", groups: ["daemon", "defib-nope"]))
        }
        #expect(throws: IdentityError(key: "service.user", "uid 54321 has no entry in the password database: set service.group too")) {
            try ProcessCredentials.resolve(service(user: "54321"))
        }
        // A uid without an entry is fine once the group is given.
        #expect((try? ProcessCredentials.resolve(service(user: "54321", group: "54321")))??.uid == 54321)
    }

    @Test func theChildRunsAsTheUserWithItsGroupsAndKeepsItsParentDeathSignal() throws {
        let dir = try CoreTestSupport.makeTempDir("ids")
        defer { CoreTestSupport.removeTree(dir) }
        let out = open(dir + "/out", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        defer { close(out) }
        var request = SpawnRequest(argv: ["/usr/bin/python3", "-c", Self.reporter], environment: ["PATH": "/usr/bin:/bin"])
        request.credentials = try ProcessCredentials.resolve(service(user: "nobody", groups: ["nogroup", "daemon"]))
        request.stdoutFD = out; request.stderrFD = out; request.stdinFromDevNull = true
        let child = try spawnProcess(request)
        defer { try? child.signal(SIGKILL); _ = waitForChild(child, timeoutMs: 10_000); child.closePidfd() }

        #expect(waitUntil(timeoutMs: 30_000) { CoreTestSupport.readText(dir + "/out").contains("\n") }, "\(CoreTestSupport.readText(dir + "/out"))")
        // What the process sees: every uid and gid changed, exactly the groups asked for, and SIGKILL (9) as its
        // parent-death signal although the credential change cleared the one a shim sets before it.
        #expect(CoreTestSupport.readText(dir + "/out").trimmingCharacters(in: .whitespacesAndNewlines) == "65534 65534 65534 65534 1,65534 9")
        // What /proc says from outside (real, effective, saved, filesystem ids).
        let status = CoreTestSupport.readText("/proc/\(child.pid)/status")
        #expect(status.contains("Uid:\t65534\t65534\t65534\t65534"))
        #expect(status.contains("Gid:\t65534\t65534\t65534\t65534"))
        #expect(status.contains("Groups:\t1 65534"))
        // Capabilities are gone with uid 0.
        #expect(status.contains("CapEff:\t0000000000000000"))
    }

    @Test func theChildDiesWithTheThreadThatSpawnedItAfterDroppingPrivileges() throws {
        let credentials = try ProcessCredentials.resolve(service(user: "nobody"))
        // Spawned from a thread that then exits: the parent-death signal (SIGKILL) must still be armed after
        // setresuid, so the kernel kills the child when that thread goes.
        let spawned = SpawnBox()
        let thread = Thread {
            var request = SpawnRequest(argv: ["/bin/sleep", "120"], environment: [:])
            request.credentials = credentials
            spawned.set(Result { try spawnProcess(request) })
        }
        thread.start()
        #expect(waitUntil(timeoutMs: 30_000) { spawned.get() != nil })
        let child = try #require(try spawned.get()?.get())
        defer { try? child.signal(SIGKILL); _ = waitForChild(child, timeoutMs: 10_000); child.closePidfd() }
        #expect(CoreTestSupport.readText("/proc/\(child.pid)/status").contains("Uid:\t65534"))
        let status = waitForChild(child, timeoutMs: 30_000)
        #expect(status == .signaled(signal: SIGKILL, coreDumped: false), "the child outlived the thread that spawned it: \(String(describing: status))")
    }

    @Test func aWorkingDirectoryTheUserCannotEnterIsRefusedAfterTheDrop() throws {
        let dir = try CoreTestSupport.makeTempDir("cwd")   // 0700, root's
        defer { CoreTestSupport.removeTree(dir) }
        var request = SpawnRequest(argv: ["/bin/true"], environment: [:], workingDirectory: dir)
        request.credentials = try ProcessCredentials.resolve(service(user: "nobody"))
        do {
            let child = try spawnProcess(request)
            _ = waitForChild(child, timeoutMs: 10_000); child.closePidfd()
            Issue.record("nobody entered a 0700 root directory")
        } catch let error as SpawnError {
            #expect(error.stage == "chdir" && error.errno == EACCES, "\(error)")
        }
        // As root (no credentials) the same directory is fine: the refusal is the user's.
        request.credentials = nil
        let child = try spawnProcess(request)
        #expect(waitForChild(child, timeoutMs: 10_000) == .exited(code: 0))
        child.closePidfd()
    }
}

/// A spawn result handed from another thread.
final class SpawnBox: @unchecked Sendable {
    private let lock = NSLock()
    private var value: Result<ChildProcess, Error>?
    func set(_ v: Result<ChildProcess, Error>) { lock.lock(); value = v; lock.unlock() }
    func get() -> Result<ChildProcess, Error>? { lock.lock(); defer { lock.unlock() }; return value }
}

/// Polls `condition` every 20 ms until it holds or `timeoutMs` passes.
func waitUntil(timeoutMs: Int, _ condition: () -> Bool) -> Bool {
    let deadline = monotonicNanoseconds() + Int64(timeoutMs) * 1_000_000
    while monotonicNanoseconds() < deadline {
        if condition() { return true }
        usleep(20_000)
    }
    return condition()
}
