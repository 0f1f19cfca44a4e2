@testable import DefibProxy
import FlightRecorder
import Foundation
import Glibc
import ParkingLock
import Testing

/// A real `defib-proxy` process (the built binary next to the test bundle) writing a real flight
/// recorder, stopped with SIGKILL by pid when the test ends.
final class ProxyWithRecorder {
    let pid: pid_t
    let directory: String
    /// Set once the process has been reaped: its pid may then belong to someone else and is never signalled.
    private var reaped = false
    var recorderPath: String { directory + "/flight.rec" }
    var controlPath: String { directory + "/control.sock" }
    var log: String { (try? String(contentsOfFile: directory + "/proxy.log", encoding: .utf8)) ?? "" }

    static var binary: String {
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? ""
        return (exe as NSString).deletingLastPathComponent + "/defib-proxy"
    }

    init(name: String) throws {
        directory = scratchPath(name)
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        guard access(Self.binary, X_OK) == 0 else { throw ProxyTestFailure("\(Self.binary) is not built (swift build --build-tests builds it)") }
        let argv = [Self.binary, "--listen", "127.0.0.1:\(Self.freePort())", "--route", "shop=127.0.0.1:9",
                    "--control-socket", directory + "/control.sock", "--reload-interval", "0", "--threads", "2", "--log-level", "warning"]
        var env = ProcessInfo.processInfo.environment
        env[FlightRecordLayout.environmentVariable] = directory + "/flight.rec"
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, directory + "/proxy.log", O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        let cArgv = argv.map { strdup($0) } + [nil]
        let cEnv = env.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { (cArgv + cEnv).forEach { free($0) } }
        var child: pid_t = 0
        let rc = posix_spawn(&child, Self.binary, &actions, nil, cArgv, cEnv)
        guard rc == 0 else { throw ProxyTestFailure("posix_spawn(\(Self.binary)): \(String(cString: strerror(rc)))") }
        pid = child
    }

    /// Waits for the first pong on the control socket; false at once if the process ended.
    func waitReady() -> Bool {
        var exited = false
        let ready = eventually(timeoutMs: 20_000) {
            var status: Int32 = 0
            if !exited, waitpid(pid, &status, WNOHANG) == pid { exited = true; reaped = true }
            return exited || controlExchange(path: controlPath, ["ping ready"], timeoutMs: 500) == ["pong ready"]
        }
        return ready && !exited
    }

    func control(_ line: String) -> String? { controlExchange(path: controlPath, [line], timeoutMs: 2000)?.first }

    /// The catalog's slot in the recorder file, if the file decodes.
    func catalogSlot() -> FlightRecord.Lock? {
        guard let data = FileManager.default.contents(atPath: recorderPath),
              let record = try? FlightRecord.decode([UInt8](data)) else { return nil }
        return record.locks.first { $0.name == "catalog" }
    }

    /// The proxy's thread named `name` (from /proc/PID/task/TID/comm).
    func thread(named name: String) -> Int32? {
        threads().first { $0.name == name }?.tid
    }

    func threads() -> [(tid: Int32, name: String)] {
        let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
        return tasks.compactMap { t in
            guard let tid = Int32(t), let comm = try? String(contentsOfFile: "/proc/\(pid)/task/\(t)/comm", encoding: .utf8) else { return nil }
            return (tid, comm.trimmingCharacters(in: .whitespacesAndNewlines))
        }
    }

    /// The one-letter state and the system call number a thread is in (/proc/PID/task/TID/{stat,syscall}).
    func state(of tid: Int32) -> (state: String, syscall: Int?)? {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/task/\(tid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return nil }
        let state = String(stat[stat.index(close, offsetBy: 2)])
        let call = (try? String(contentsOfFile: "/proc/\(pid)/task/\(tid)/syscall", encoding: .utf8))
            .flatMap { $0.split(separator: " ").first.flatMap { Int($0) } }
        return (state, call)
    }

    /// SIGKILL by pid only while the process is ours and unreaped (an unreaped child's pid cannot be
    /// recycled; a reaped one's can, and another test's process could be hit), then reap.
    func stop() {
        if !reaped {
            kill(pid, SIGKILL)
            var status: Int32 = 0
            _ = waitpid(pid, &status, 0)
            reaped = true
        }
        try? FileManager.default.removeItem(atPath: directory)
    }

    static func freePort() -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
        return Int(UInt16(bigEndian: addr.sin_port))
    }
}

struct ProxyTestFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

#if arch(x86_64)
private let idleOrParkedCalls: Set<Int> = [202, 232, 281, 441]   // futex, epoll_wait, epoll_pwait, epoll_pwait2
#else
private let idleOrParkedCalls: Set<Int> = [98, 22, 441]          // futex, epoll_pwait, epoll_pwait2
#endif

/// What the proxy's lock faults leave in its flight recorder, read from the file as a supervisor would.
@Suite(.serialized, .timeLimit(.minutes(2)))
struct FaultEvidenceTests {
    @Test func aLeakedReadShowsAnIdleReadHolderAndAReloadWaitingForIt() throws {
        let proxy = try ProxyWithRecorder(name: "leak-evidence")
        defer { proxy.stop() }
        try #require(proxy.waitReady(), "no pong: \(proxy.log)")
        #expect(proxy.control("fault leaked-read") == "ok fault leaked-read armed")
        // The live snapshot already knows who holds it.
        let locks = try #require(proxy.control("locks"))
        #expect(locks.contains(#""holder_waiting_for_readers":false"#) && locks.contains(#""read_holders":[{"tid":"#), "\(locks)")

        // The next write: a reload on SIGHUP, an untimed write that waits for the leaked reader forever.
        #expect(kill(proxy.pid, SIGHUP) == 0)
        try #require(eventually(timeoutMs: 10_000) { proxy.catalogSlot()?.holderWaitingForReaders == true }, "no pending writer: \(proxy.log)")
        let slot = try #require(proxy.catalogSlot())
        let reloader = try #require(proxy.thread(named: "catalog-reload"))
        #expect(slot.holder?.label == "catalog.reload")
        #expect(slot.holder?.tid == reloader)
        #expect(LockWord.readerCount(slot.word) == 1)
        let holders = try #require(slot.readHolders)
        #expect(holders.count == 1 && slot.moreReadHolders == 0, "\(holders) + \(slot.moreReadHolders)")
        let leaker = try #require(holders.first)
        #expect(leaker.tid != reloader)
        #expect(!leaker.threadExited)
        let name = proxy.threads().first { $0.tid == leaker.tid }?.name ?? "(gone)"
        #expect(name.hasPrefix("NIO-ELT"), "the control channel's event loop took the guard: \(name)")
        // Not inside a read section: back in its event loop (or parked on another read of the catalog).
        let idle = eventually(timeoutMs: 5000) {
            guard let s = proxy.state(of: leaker.tid) else { return false }
            return s.state == "S" && s.syscall.map(idleOrParkedCalls.contains) == true
        }
        #expect(idle, "read holder \(leaker.tid) state \(String(describing: proxy.state(of: leaker.tid)))")
        #expect(slot.events.contains { $0.kind == .parkedWriteForReaders && $0.tid == reloader })
        #expect(slot.pinnedWriteWhileHoldingRead == nil, "nobody asked for the write lock while holding a read lock")
    }

    @Test func aGuardAcrossElseRecordsTheUpdaterAskingForTheWriteLockWhileHoldingARead() throws {
        let proxy = try ProxyWithRecorder(name: "else-evidence")
        defer { proxy.stop() }
        try #require(proxy.waitReady(), "no pong: \(proxy.log)")
        let updater = try #require(proxy.thread(named: "catalog-updates"), "threads: \(proxy.threads())")
        #expect(proxy.control("fault guard-across-else") == "ok fault guard-across-else armed")
        try #require(eventually(timeoutMs: 10_000) { proxy.catalogSlot()?.pinnedWriteWhileHoldingRead != nil }, "no event: \(proxy.log)")
        try #require(eventually(timeoutMs: 10_000) { proxy.catalogSlot()?.holderWaitingForReaders == true })
        let slot = try #require(proxy.catalogSlot())
        let event = try #require(slot.pinnedWriteWhileHoldingRead)
        #expect(event.tid == updater)
        #expect(event.kind == .writeWhileHoldingRead)
        #expect(event.label == "catalog.update app=shop machine=defib-fault")
        #expect(slot.allEvents.contains(event))
        // The writer waiting for readers is the only reader it waits for.
        #expect(slot.holder?.tid == updater)
        #expect(slot.readHolders?.map(\.tid) == [updater])
        #expect(slot.word & ~LockWord.parked == 0x1A, "word \(LockWord.hex(slot.word))")
    }
}
