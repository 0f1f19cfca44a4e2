import DefibCore
import DefibPOSIX
import Glibc
import Testing

private typealias S = CoreTestSupport

private let corePatternIsAFile: Bool = {
    let pattern = S.readText("/proc/sys/kernel/core_pattern")
    return !pattern.hasPrefix("|") && pattern.contains { !$0.isWhitespace }
}()

/// The kernel's own dump, driven from outside: only the child's RLIMIT_CORE changes; core_pattern is read, never written.
@Suite("kernel core method", .serialized, .timeLimit(.minutes(2)))
struct KernelCoreTests {
    @Test("the kernel's core appears where core_pattern says; the process is killed by SIGSYS by design",
          .enabled(if: corePatternIsAFile, "core_pattern is a pipe or empty here: the kernel would hand the core to another program"))
    func dumpLandsWhereThePatternSays() throws {
        let dir = try S.makeTempDir("kernel")
        defer { S.removeTree(dir) }
        let fixture = try S.startFixture(conds: 2, futexes: 1, dataMiB: 1, zeroMiB: 0, reserveMiB: 0, cwd: dir)
        defer { S.removeTree(fixture.dir) }
        let child = fixture.child
        let result = KernelCoreCapture.capture(pid: child.pid, pidfd: child.pidfd, budgetMs: 30_000) { timeoutMs in
            waitForChild(child, timeoutMs: timeoutMs)
        }
        child.closePidfd()
        #expect(result.signal == SIGSYS)
        #expect(result.status == .signaled(signal: SIGSYS, coreDumped: true))
        #expect(result.notes.contains { $0.contains("SIGSYS") && $0.contains("kills by design") }, "\(result.notes)")
        #expect(result.record.method == "kernel" && result.record.error == nil, "\(result.record.error ?? "")")
        let path = try #require(result.record.path)
        defer { if !path.hasPrefix(dir) { unlink(path) } }
        let pattern = S.readText("/proc/sys/kernel/core_pattern")
        if pattern.hasPrefix("core") && !pattern.contains("%") {
            let usesPid = S.readText("/proc/sys/kernel/core_uses_pid").hasPrefix("1")
            #expect(path == dir + "/core" + (usesPid ? ".\(child.pid)" : ""))
        }
        #expect(result.record.bytes > 0 && result.record.bytes == fileSize(path))
        let view = try S.gdb(binary: fixture.binary, core: path, extra: ["print/x the_global"])
        #expect(view.threads.count == 4, "\(view.output)")
        #expect(S.printed(view.output) == "0x5eed0123456789ab")
        #expect(view.output.contains("SIGSYS"))
    }

    @Test("a process that is already gone: a clear error and nothing sent")
    func goneProcess() throws {
        var request = SpawnRequest(argv: ["/bin/true"], environment: [:])
        request.stdinFromDevNull = true
        let child = try spawnProcess(request)
        _ = waitForChild(child, timeoutMs: 10_000)
        child.closePidfd()
        var waited = false
        let result = KernelCoreCapture.capture(pid: child.pid, budgetMs: 1_000) { _ in waited = true; return nil }
        #expect(!waited, "nothing was sent, so there is nothing to wait for")
        #expect(result.record.error?.contains("process \(child.pid) not found") == true, "\(result.record.error ?? "")")
        #expect(result.record.path == nil && result.signal == nil)
    }
}
