import CDefibShims
@testable import DefibProxy
import Foundation
import Glibc
import Testing

/// A NOTIFY_SOCKET of our own: a datagram socket with SO_PASSCRED, so each message names its sender's pid.
private final class NotifyListener {
    let path: String
    let fd: Int32

    init(path: String) throws {
        self.path = path
        fd = defib_notify_socket_bind(path)
        guard fd >= 0 else { throw ProxyTestFailure("bind(\(path)): \(String(cString: strerror(errno)))") }
    }

    deinit { close(fd); unlink(path) }

    /// Every message pending now, with its sender's pid.
    func drain() -> [(pid: Int32, text: String)] {
        var out: [(Int32, String)] = []
        var buf = [CChar](repeating: 0, count: 4096)
        while true {
            var pid: pid_t = 0, uid: uid_t = 0, gid: gid_t = 0, truncated: Int32 = 0
            let n = defib_notify_recv(fd, &buf, buf.count, &pid, &uid, &gid, &truncated)
            if n <= 0 { return out }
            out.append((pid, String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)))
        }
    }
}

/// `defib-proxy --sd-notify`, the real binary, with NOTIFY_SOCKET and WATCHDOG_USEC pointing at us.
private final class NotifyingProxy {
    let pid: pid_t
    let directory: String
    var controlPath: String { directory + "/control.sock" }
    var log: String { (try? String(contentsOfFile: directory + "/proxy.log", encoding: .utf8)) ?? "" }

    init(directory: String, environment extra: [String: String]) throws {
        self.directory = directory
        let binary = ProxyWithRecorder.binary
        guard access(binary, X_OK) == 0 else { throw ProxyTestFailure("\(binary) is not built (swift build --build-tests builds it)") }
        let argv = [binary, "--sd-notify", "--listen", "127.0.0.1:\(ProxyWithRecorder.freePort())", "--route", "shop=127.0.0.1:9",
                    "--control-socket", directory + "/control.sock", "--reload-interval", "0", "--threads", "2", "--log-level", "info"]
        var env = ProcessInfo.processInfo.environment
        for key in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "DEFIB_CONTROL_SOCKET", "DEFIB_FLIGHT_RECORDER"] {
            env.removeValue(forKey: key)
        }
        for (k, v) in extra { env[k] = v }
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
        let rc = posix_spawn(&child, binary, &actions, nil, cArgv, cEnv)
        guard rc == 0 else { throw ProxyTestFailure("posix_spawn(\(binary)): \(String(cString: strerror(rc)))") }
        pid = child
    }

    func control(_ line: String) -> String? { controlExchange(path: controlPath, [line], timeoutMs: 2000)?.first }

    /// The catalog lock word from `stats` (read from an atomic: it answers during a catalog deadlock).
    func catalogWord() -> String? {
        guard let reply = control("stats"), let range = reply.range(of: "\"catalog_word\":\"") else { return nil }
        return String(reply[range.upperBound...].prefix { $0 != "\"" })
    }

    private(set) var status: Int32?

    /// Whether it has exited (reaps it; its wait status is kept).
    func exited() -> Bool {
        if status == nil {
            var s: Int32 = 0
            if waitpid(pid, &s, WNOHANG) == pid { status = s }
        }
        return status != nil
    }

    /// SIGKILL by pid unless already reaped (an unreaped child's pid cannot be recycled), then reap.
    func kill() {
        guard !exited() else { return }
        _ = Glibc.kill(pid, SIGKILL)
        var s: Int32 = 0
        if waitpid(pid, &s, 0) == pid { status = s }
    }
}

@Suite struct SystemdNotifySettingsTests {
    @Test func noNotifySocketMeansNoManager() throws {
        #expect(try SystemdNotifySettings.parse(environment: [:], pid: 10) == nil)
        #expect(try SystemdNotifySettings.parse(environment: ["WATCHDOG_USEC": "1000000"], pid: 10) == nil)
    }

    @Test func keepAlivesAtHalfTheWatchdogPeriodForThisProcessOnly() throws {
        let ours = try #require(try SystemdNotifySettings.parse(
            environment: ["NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "10"], pid: 10))
        #expect(ours.socketPath == "/run/systemd/notify")
        #expect(ours.keepAliveIntervalNs == 500_000_000)
        let noPid = try #require(try SystemdNotifySettings.parse(environment: ["NOTIFY_SOCKET": "@abstract", "WATCHDOG_USEC": "200000"], pid: 10))
        #expect(noPid.keepAliveIntervalNs == 100_000_000)
        // WATCHDOG_PID of another process: the variables leaked from an ancestor; READY=1 only.
        let leaked = try #require(try SystemdNotifySettings.parse(
            environment: ["NOTIFY_SOCKET": "/n", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "11"], pid: 10))
        #expect(leaked.watchdogUsec == nil)
    }

    @Test func badValuesAreNamed() {
        func problem(_ env: [String: String]) -> String? {
            do { _ = try SystemdNotifySettings.parse(environment: env, pid: 10); return nil } catch { return error.description }
        }
        #expect(problem(["NOTIFY_SOCKET": "relative/path"])?.contains("NOTIFY_SOCKET 'relative/path'") == true)
        #expect(problem(["NOTIFY_SOCKET": "/" + String(repeating: "x", count: 200)])?.contains("Unix socket limit") == true)
        #expect(problem(["NOTIFY_SOCKET": "/n", "WATCHDOG_USEC": "soon"])?.contains("WATCHDOG_USEC 'soon'") == true)
        #expect(problem(["NOTIFY_SOCKET": "/n", "WATCHDOG_USEC": "0"])?.contains("positive") == true)
        #expect(problem(["NOTIFY_SOCKET": "/n", "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "me"])?.contains("WATCHDOG_PID 'me'") == true)
    }
}

/// The real defib-proxy: READY=1 and keep-alives from its own pid, and no keep-alive once the catalog lock is wedged.
@Suite(.serialized, .timeLimit(.minutes(2)))
struct SystemdNotifyProxyTests {
    @Test func readyThenKeepAlivesThatStopWhenTheCatalogLockIsCorrupted() throws {
        let dir = scratchPath("sd-notify")
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let listener = try NotifyListener(path: dir + "/notify.sock")
        // 200 ms watchdog: a keep-alive due every 100 ms.
        let proxy = try NotifyingProxy(directory: dir, environment: ["NOTIFY_SOCKET": listener.path, "WATCHDOG_USEC": "200000"])
        defer { proxy.kill() }

        var messages: [(pid: Int32, text: String)] = []
        let heard = eventually(timeoutMs: 20_000) {
            messages += listener.drain()
            return proxy.exited() || messages.filter { $0.text == "WATCHDOG=1" }.count >= 3
        }
        try #require(heard && !proxy.exited(), "no READY=1 and 3 keep-alives: \(messages.map(\.text)); log: \(proxy.log)")
        #expect(messages.first?.text == "READY=1", "READY=1 first: \(messages.map(\.text))")
        #expect(messages.filter { $0.text == "READY=1" }.count == 1)
        #expect(messages.allSatisfy { $0.pid == proxy.pid }, "every message from the main pid \(proxy.pid): \(messages.map(\.pid))")
        #expect(proxy.control("ping t") == "pong t")

        #expect(proxy.control("fault timeout-race") == "ok fault timeout-race armed")
        let corrupted = eventually(timeoutMs: 10_000) {
            guard let word = proxy.catalogWord() else { return false }
            return word == "0xfffffffffffffffe" || word == "0xffffffffffffffff"
        }
        try #require(corrupted, "catalog word \(proxy.catalogWord() ?? "unreadable")")
        // A keep-alive whose catalog read came just before the corruption may still arrive: let it, then listen.
        usleep(300_000)
        _ = listener.drain()
        usleep(1_000_000)
        let after = listener.drain().filter { $0.text == "WATCHDOG=1" }
        #expect(after.isEmpty, "\(after.count) keep-alive(s) in the second after the lock was corrupted")
        #expect(!proxy.exited(), "the process is alive (hung, not dead): \(proxy.log)")
        #expect(proxy.control("ping t") == nil, "and its ping hangs too")
    }

    @Test func noWatchdogUsecMeansReadyOnly() throws {
        let dir = scratchPath("sd-notify-ready")
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let listener = try NotifyListener(path: dir + "/notify.sock")
        let proxy = try NotifyingProxy(directory: dir, environment: ["NOTIFY_SOCKET": listener.path])
        defer { proxy.kill() }
        var messages: [(pid: Int32, text: String)] = []
        try #require(eventually(timeoutMs: 20_000) { messages += listener.drain(); return !messages.isEmpty || proxy.exited() },
                     "no READY=1: \(proxy.log)")
        usleep(500_000)
        messages += listener.drain()
        #expect(messages.map(\.text) == ["READY=1"])
        #expect(messages.first?.pid == proxy.pid)
    }

    @Test func aBadWatchdogUsecStopsTheStartNamingIt() throws {
        let dir = scratchPath("sd-notify-bad")
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let proxy = try NotifyingProxy(directory: dir, environment: ["NOTIFY_SOCKET": dir + "/notify.sock", "WATCHDOG_USEC": "soon"])
        defer { proxy.kill() }
        try #require(eventually(timeoutMs: 20_000) { proxy.exited() }, "still running with WATCHDOG_USEC=soon: \(proxy.log)")
        let status = try #require(proxy.status)
        #expect(status & 0x7f == 0 && (status >> 8) & 0xff == 2, "exit code 2, status \(status)")
        #expect(proxy.log.contains("WATCHDOG_USEC 'soon'"), "\(proxy.log)")
    }
}
