import DefibCore
import DefibPOSIX
import Foundation
import Glibc
import Testing

/// The native core writer against the reference proxy itself: gdb must show every thread, with the same
/// function frames as gcore's core of the same (stopped) process.
@Suite(.serialized, .timeLimit(.minutes(3)))
struct NativeCoreProxyTests {
    @Test func gdbSeesTheSameThreadsAndFramesInTheNativeCoreAsInGcores() throws {
        let dir = Scratch("native-proxy"); defer { dir.remove() }
        let proxy = try Background([Binaries.proxy, "--listen", "127.0.0.1:\(freePort())", "--route", "app.test=127.0.0.1:9",
                                    "--reload-interval", "0", "--extra-threads", "3"], log: "\(dir.path)/proxy.log")
        defer { proxy.stop() }
        try #require(waitUntil(timeoutMs: 20_000) { threadIDs(pid: proxy.pid).count >= 5 }, "\(proxy.log)")
        usleep(300_000)
        // Freeze it so both captures see the same state.
        kill(proxy.pid, SIGSTOP)
        defer { kill(proxy.pid, SIGCONT) }
        let tids = threadIDs(pid: proxy.pid)
        let native = NativeCoreWriter.capture(pid: proxy.pid, path: "\(dir.path)/native.core",
                                              options: NativeCoreOptions(budgetMs: 30_000, firstThread: tids.last))
        #expect(native.record.error == nil, "\(native.record.error ?? "")")
        #expect(native.threads == tids.count)
        let gcore = GcoreCapture.capture(pid: proxy.pid, prefix: "\(dir.path)/gcore", budgetMs: 120_000)
        #expect(gcore.error == nil, "\(gcore.error ?? "")")
        let nativePath = try #require(native.record.path)
        let gcorePath = try #require(gcore.path)
        #expect(native.allocatedBytes < (fileSize(gcorePath) ?? 0), "the native core takes less disk than gcore's")

        let a = try Self.frames(core: nativePath)
        let b = try Self.frames(core: gcorePath)
        #expect(Set(a.frames.keys) == Set(tids), "gdb sees every thread in the native core: \(a.frames.keys.sorted()) vs \(tids)")
        #expect(a.frames == b.frames, "per-thread frames differ:\nnative \(a.frames)\ngcore  \(b.frames)")
        #expect(a.current == tids.last, "the requested thread is gdb's current thread")
        #expect(a.frames.values.contains { $0.contains { $0.contains("DefibProxy") } }, "Swift frames of the proxy are there")
    }

    /// LWP → function names of each frame, and gdb's current thread, from `thread apply all bt`.
    static func frames(core: String) throws -> (frames: [Int32: [String]], current: Int32?) {
        let r = try runCommand(["gdb", "-batch", "-nx", "-q", "-ex", "set pagination off", "-ex", "set width 0", "-ex", "info threads",
                                "-ex", "thread apply all bt", Binaries.proxy, core], timeoutMs: 120_000)
        var frames: [Int32: [String]] = [:]
        var current: Int32?
        var thread: Int32?
        for line in r.stdout.split(separator: "\n") {
            if line.hasPrefix("*"), let id = lwp(line) { current = id }
            if line.hasPrefix("Thread "), line.hasSuffix(":") { thread = lwp(line); if let thread { frames[thread] = [] }; continue }
            guard let thread, line.hasPrefix("#") else { continue }
            var rest = line.drop { $0 != " " }.drop { $0 == " " }
            if rest.hasPrefix("0x"), let range = rest.range(of: " in ") { rest = rest[range.upperBound...] }
            frames[thread, default: []].append(String(rest.prefix { $0 != " " && $0 != "(" }))
        }
        return (frames, current)
    }

    static func lwp(_ line: Substring) -> Int32? {
        guard let r = line.range(of: "LWP ") else { return nil }
        return Int32(line[r.upperBound...].prefix { $0.isNumber })
    }
}
