import DefibCore
import DefibPOSIX
import Foundation
import Glibc
import Testing

/// A `defib-proxy` process started by a test (own working directory, optional passed sockets),
/// stopped by pid when the test ends.
private final class ProxyProcess {
    let child: ChildProcess
    let dir: Scratch
    let controlSocket: String
    private var status: ChildStatus?

    init(_ args: [String], dir: Scratch, passFDs: [Int32] = [], passFDNames: [String] = [], env: [String: String] = [:]) throws {
        self.dir = dir
        controlSocket = "\(dir.path)/run/control.sock"
        var environment = currentEnvironment()
        environment["DEFIB_CONTROL_SOCKET"] = controlSocket
        for (k, v) in env { environment[k] = v }
        let log = open("\(dir.path)/proxy.log", O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
        defer { close(log) }
        var request = SpawnRequest(argv: [Binaries.proxy] + args, environment: environment, workingDirectory: dir.path)
        request.parentDeathSignal = 0
        request.stdoutFD = log; request.stderrFD = log; request.stdinFromDevNull = true
        request.passFDs = passFDs; request.passFDNames = passFDNames
        child = try spawnProcess(request)
    }

    var pid: Int32 { child.pid }
    var log: String { (try? String(contentsOfFile: "\(dir.path)/proxy.log", encoding: .utf8)) ?? "" }

    /// One control-channel round trip on a fresh connection; nil when it does not answer in time.
    func control(_ line: String, timeoutMs: Int = 2000) -> String? {
        if case let .success(reply) = ControlRequest.roundTrip(path: controlSocket, line: line, timeoutMs: timeoutMs) { return reply }
        return nil
    }

    /// Waits until the control channel answers `ping`.
    func waitReady() -> Bool { waitUntil(timeoutMs: 20_000) { control("ping ready", timeoutMs: 500) == "pong ready" } }

    func wait(timeoutMs: Int) -> ChildStatus? {
        if status == nil { status = waitForChild(child, timeoutMs: timeoutMs) }
        return status
    }

    /// utime + stime in clock ticks, from /proc/PID/stat (fields 14 and 15, counted after the comm).
    func cpuTicks() -> Int? {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return nil }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        guard fields.count > 13, let u = Int(fields[11]), let s = Int(fields[12]) else { return nil }
        return u + s
    }

    @discardableResult
    func stop(graceMs: Int = 4000) -> ChildStatus? {
        if status == nil {
            try? child.signal(SIGTERM)
            if wait(timeoutMs: graceMs) == nil {
                try? child.signal(SIGKILL)
                _ = wait(timeoutMs: 5000)
            }
        }
        child.closePidfd()
        return status
    }
}

/// A real HTTP backend: `python3 -m http.server` serving one file.
private func startBackend(_ dir: Scratch) throws -> (Background, port: Int) {
    let port = freePort()
    let site = "\(dir.path)/site"
    try FileManager.default.createDirectory(atPath: site, withIntermediateDirectories: true)
    try "hello from the backend\n".write(toFile: "\(site)/hello.txt", atomically: true, encoding: .utf8)
    let backend = try Background(["python3", "-m", "http.server", String(port), "--bind", "127.0.0.1", "--directory", site],
                                 log: "\(dir.path)/backend.log")
    return (backend, port)
}

/// A listening TCP socket on 127.0.0.1 for LISTEN_FDS; returns (fd, port).
private func boundListener() throws -> (Int32, Int) {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    let bound = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
    guard bound == 0, listen(fd, 64) == 0 else { throw TestFailure("bind/listen: \(String(cString: strerror(errno)))") }
    var len = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
    return (fd, Int(UInt16(bigEndian: addr.sin_port)))
}

/// The real `defib-proxy` binary against a real backend, over real sockets.
@Suite(.serialized, .timeLimit(.minutes(3)))
struct ProxyTests {
    @Test func forwardsByHostAndAnswers404And502AndHealthz() throws {
        let dir = Scratch("proxy-fwd"); defer { dir.remove() }
        let (backend, backendPort) = try startBackend(dir)
        defer { backend.stop() }
        try "# routes\nup files.test m1 127.0.0.1:\(backendPort)\n".write(toFile: "\(dir.path)/routes", atomically: true, encoding: .utf8)
        let port = freePort(), closedPort = freePort()
        let proxy = try ProxyProcess(["--listen", "127.0.0.1:\(port)", "--routes", "\(dir.path)/routes",
                                      "--route", "app.test=127.0.0.1:\(backendPort)", "--route", "dead.test=127.0.0.1:\(closedPort)"], dir: dir)
        defer { proxy.stop() }
        let served = waitUntil(timeoutMs: 20_000) { httpGet(port: port, path: "/hello.txt", host: "app.test")?.status == 200 }
        try #require(served, "proxy never served: \(proxy.log)\n\(backend.log)")
        #expect(httpGet(port: port, path: "/hello.txt", host: "app.test")?.body == "hello from the backend\n")
        #expect(httpGet(port: port, path: "/hello.txt", host: "FILES.test:\(port)")?.body == "hello from the backend\n")
        #expect(httpGet(port: port, path: "/missing", host: "app.test")?.status == 404, "the backend's own 404 is relayed")

        let unknown = try #require(httpGet(port: port, path: "/", host: "nobody.test"))
        #expect(unknown.status == 404)
        #expect(unknown.body == "no route for host 'nobody.test'\n")
        let dead = try #require(httpGet(port: port, path: "/", host: "dead.test"))
        #expect(dead.status == 502)
        #expect(dead.body.contains("backend 127.0.0.1:\(closedPort) (app dead.test, machine m1)"), "\(dead.body)")
        let health = try #require(httpGet(port: port, path: "/healthz", host: "whatever"))
        #expect(health.status == 200)
        #expect(health.body == "ok apps=3 machines=3 version=3\n")
    }

    @Test func controlChannelPingLocksStats() throws {
        let dir = Scratch("proxy-ctl"); defer { dir.remove() }
        let port = freePort()
        let proxy = try ProxyProcess(["--listen", "127.0.0.1:\(port)", "--route", "a.test=127.0.0.1:1"], dir: dir)
        defer { proxy.stop() }
        try #require(proxy.waitReady(), "no pong: \(proxy.log)")
        #expect(proxy.control("ping x") == "pong x")
        let locksLine = try #require(proxy.control("locks"))
        let locks = try #require(JSONSerialization.jsonObject(with: Data(locksLine.utf8)) as? [String: Any], "\(locksLine)")
        #expect(locks["pid"] as? Int == Int(proxy.pid))
        let catalog = try #require((locks["locks"] as? [[String: Any]])?.first { $0["name"] as? String == "catalog" })
        let word = try #require(catalog["word"] as? String)
        #expect(word.range(of: "^0x[0-9a-f]{16}$", options: .regularExpression) != nil, "\(word)")
        #expect((catalog["address"] as? String)?.hasPrefix("0x") == true)
        #expect(catalog["revert"] as? String == "fixed")
        let statsLine = try #require(proxy.control("stats"))
        let stats = try #require(JSONSerialization.jsonObject(with: Data(statsLine.utf8)) as? [String: Any])
        #expect(stats["apps"] as? Int == 1)
        #expect(stats["fault"] as? String == "none")
        #expect(proxy.control("frobnicate") == "error unknown command 'frobnicate' (known: ping, locks, stats, fault, help)")
        var st = stat()
        #expect(stat(proxy.controlSocket, &st) == 0 && st.st_mode & 0o777 == 0o600)

        // SIGTERM: graceful, exit 0, socket file gone.
        #expect(proxy.stop() == .exited(code: 0), "\(proxy.log)")
        #expect(access(proxy.controlSocket, F_OK) != 0)
    }

    @Test func timeoutRaceSilencesTheHeartbeatWithACorruptedWord() throws {
        let dir = Scratch("proxy-race"); defer { dir.remove() }
        let port = freePort()
        let proxy = try ProxyProcess(["--listen", "127.0.0.1:\(port)", "--route", "a.test=127.0.0.1:1", "--route", "a.test=127.0.0.1:2"], dir: dir)
        defer { proxy.stop() }
        try #require(proxy.waitReady(), "no pong: \(proxy.log)")
        #expect(proxy.control("fault timeout-race") == "ok fault timeout-race armed")
        let silenced = waitUntil(timeoutMs: 15_000) { proxy.control("ping p", timeoutMs: 300) == nil }
        #expect(silenced, "ping kept answering: \(proxy.log)")
        #expect(httpGet(port: port, path: "/healthz", host: "a.test", timeoutMs: 500) == nil, "HTTP is stalled too")
        // 0x…fe after the revert; 0x…ff once a reader has parked (PARKED set), or if one was parked already.
        #expect(proxy.log.contains("catalog lock word corrupted to 0xfffffffffffffffe") || proxy.log.contains("catalog lock word corrupted to 0xffffffffffffffff"),
                "\(proxy.log)")
        // `locks` takes no lock; it answers if it lands on an event loop that is not parked yet.
        if let line = proxy.control("locks", timeoutMs: 300),
           let obj = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
           let word = (obj["locks"] as? [[String: Any]])?.first?["word"] as? String {
            #expect(word == "0xfffffffffffffffe" || word == "0xffffffffffffffff", "\(word)")
        }
        #expect(kill(proxy.pid, 0) == 0, "hung, not dead")
    }

    @Test func leakedReadHangsOnlyAtTheNextWrite() throws {
        let dir = Scratch("proxy-leak"); defer { dir.remove() }
        let port = freePort()
        let proxy = try ProxyProcess(["--listen", "127.0.0.1:\(port)", "--route", "a.test=127.0.0.1:1", "--reload-interval", "0"], dir: dir)
        defer { proxy.stop() }
        try #require(proxy.waitReady(), "no pong: \(proxy.log)")
        #expect(proxy.control("fault leaked-read") == "ok fault leaked-read armed")
        // Harmless so far: readers come and go past the leaked one.
        for i in 0..<5 { #expect(proxy.control("ping \(i)") == "pong \(i)") }
        #expect(httpGet(port: port, path: "/healthz", host: "x")?.status == 200)
        // The next write (a reload on SIGHUP, an untimed Lock) waits forever, and every reader queues behind it.
        #expect(kill(proxy.pid, SIGHUP) == 0)
        let silenced = waitUntil(timeoutMs: 10_000) { proxy.control("ping late", timeoutMs: 300) == nil }
        #expect(silenced, "ping kept answering after the write: \(proxy.log)")
    }

    @Test func deadLoopSilencesPingWhileBurningCPU() throws {
        let dir = Scratch("proxy-spin"); defer { dir.remove() }
        let port = freePort()
        let proxy = try ProxyProcess(["--listen", "127.0.0.1:\(port)", "--route", "a.test=127.0.0.1:1", "--threads", "2"], dir: dir)
        defer { proxy.stop() }
        try #require(proxy.waitReady(), "no pong: \(proxy.log)")
        #expect(proxy.control("fault dead-loop") == "ok fault dead-loop armed")
        let silenced = waitUntil(timeoutMs: 10_000) { proxy.control("ping spin", timeoutMs: 300) == nil }
        #expect(silenced, "ping kept answering: \(proxy.log)")
        let before = try #require(proxy.cpuTicks())
        usleep(1_000_000)
        let after = try #require(proxy.cpuTicks())
        #expect(after > before, "CPU time must keep advancing in a dead loop (\(before) → \(after) ticks)")
        #expect(httpGet(port: port, path: "/healthz", host: "x", timeoutMs: 500) == nil)
    }

    @Test func crashAndExitFaultsEndTheProcess() throws {
        let dir = Scratch("proxy-end"); defer { dir.remove() }
        let exiting = try ProxyProcess(["--listen", "127.0.0.1:\(freePort())", "--route", "a.test=127.0.0.1:1"], dir: dir)
        defer { exiting.stop() }
        try #require(exiting.waitReady(), "no pong: \(exiting.log)")
        #expect(exiting.control("fault exit") == "ok fault exit armed")
        #expect(exiting.wait(timeoutMs: 10_000) == .exited(code: 3))

        let crashing = try ProxyProcess(["--listen", "127.0.0.1:\(freePort())", "--route", "a.test=127.0.0.1:1"], dir: dir)
        defer { crashing.stop() }
        try #require(crashing.waitReady(), "no pong: \(crashing.log)")
        #expect(crashing.control("fault crash") == "ok fault crash armed")
        let status = crashing.wait(timeoutMs: 10_000)
        guard case let .signaled(signal, _)? = status else { Issue.record("expected death by signal, got \(String(describing: status))"); return }
        #expect(signal == SIGABRT)
    }

    @Test func servesOnASocketPassedWithListenFDs() throws {
        let dir = Scratch("proxy-fds"); defer { dir.remove() }
        let (backend, backendPort) = try startBackend(dir)
        defer { backend.stop() }
        let (fd, port) = try boundListener()
        defer { close(fd) }
        let proxy = try ProxyProcess(["--route", "app.test=127.0.0.1:\(backendPort)"], dir: dir, passFDs: [fd], passFDNames: ["http"])
        defer { proxy.stop() }
        let served = waitUntil(timeoutMs: 20_000) { httpGet(port: port, path: "/hello.txt", host: "app.test")?.status == 200 }
        #expect(served, "not served on the passed socket: \(proxy.log)")
        #expect(proxy.log.contains("serving HTTP on [IPv4]127.0.0.1/127.0.0.1:\(port)"), "\(proxy.log)")
    }

    @Test func ballastAndExtraThreadsGrowTheProcess() throws {
        let dir = Scratch("proxy-big"); defer { dir.remove() }
        let proxy = try ProxyProcess(["--listen", "127.0.0.1:\(freePort())", "--route", "a.test=127.0.0.1:1",
                                      "--ballast", "48", "--extra-threads", "6", "--threads", "2"], dir: dir)
        defer { proxy.stop() }
        try #require(proxy.waitReady(), "no pong: \(proxy.log)")
        let status = (try? String(contentsOfFile: "/proc/\(proxy.pid)/status", encoding: .utf8)) ?? ""
        func field(_ name: String) -> Int? {
            status.split(separator: "\n").first { $0.hasPrefix(name + ":") }
                .flatMap { Int($0.dropFirst(name.count + 1).split(whereSeparator: { $0 == " " || $0 == "\t" }).first ?? "") }
        }
        let rssKiB = try #require(field("VmRSS"))
        let threads = try #require(field("Threads"))
        #expect(rssKiB >= 48 * 1024, "the ballast is resident: VmRSS \(rssKiB) kB")
        #expect(threads >= 1 + 2 + 6, "main + event loops + idle threads: \(threads)")
        let idle = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(proxy.pid)/task"))?.filter { tid in
            (try? String(contentsOfFile: "/proc/\(proxy.pid)/task/\(tid)/comm", encoding: .utf8))?.hasPrefix("idle-") == true
        }
        #expect(idle?.count == 6)
    }

    @Test func startupErrorsExit2WithAClearMessage() throws {
        let dir = Scratch("proxy-bad"); defer { dir.remove() }
        let nothing = try runCommand([Binaries.proxy, "--route", "a=127.0.0.1:1"])
        #expect(nothing.code == 2)
        #expect(nothing.stderr.contains("nothing to listen on"), "\(nothing.stderr)")

        try "up a m1 127.0.0.1:1\n\nup b m1 127.0.0.1\n".write(toFile: "\(dir.path)/routes", atomically: true, encoding: .utf8)
        let bad = try runCommand([Binaries.proxy, "--listen", "127.0.0.1:\(freePort())", "--routes", "\(dir.path)/routes"])
        #expect(bad.code == 2)
        #expect(bad.stderr.contains("\(dir.path)/routes:3: address '127.0.0.1': expected HOST:PORT"), "\(bad.stderr)")

        let fault = try runCommand([Binaries.proxy, "--listen", "127.0.0.1:\(freePort())", "--fault", "melt"])
        #expect(fault.code == 2)
        #expect(fault.stderr.contains("--fault 'melt': unknown fault 'melt'"), "\(fault.stderr)")
    }
}
