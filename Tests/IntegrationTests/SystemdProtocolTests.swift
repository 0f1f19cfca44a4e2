import DefibPOSIX
import Foundation
import Glibc
import Testing

/// The systemd protocols, both ways, with the real binaries: defib as a Type=notify service (READY,
/// STATUS, WATCHDOG, STOPPING to a NOTIFY_SOCKET the test serves), the NOTIFY_SOCKET defib serves to its
/// child (READY, WATCHDOG, WATCHDOG=trigger, only from the main pid), socket passing, Prometheus metrics.
@Suite(.serialized, .timeLimit(.minutes(3)))
struct SystemdProtocolTests {
    static var pingable: String { "\(Binaries.fixtures)/pingable.py" }
    static var notifier: String { "\(Binaries.fixtures)/notifier.py" }

    /// Datagrams received on `server` within `ms`, with their sender pids.
    static func collect(_ server: NotifyServer, forMs ms: Int, until done: ([NotifyServer.Message]) -> Bool = { _ in false }) -> [NotifyServer.Message] {
        var out: [NotifyServer.Message] = []
        let deadline = monotonicNanoseconds() + Int64(ms) * 1_000_000
        while monotonicNanoseconds() < deadline && !done(out) {
            var pfd = pollfd(fd: server.fd, events: Int16(POLLIN), revents: 0)
            _ = poll(&pfd, 1, 50)
            out += server.receiveAll()
        }
        return out
    }

    @Test func underANotifySocketDefibSendsReadyOnceTheServiceAnswersThenKeepAlivesThenStopping() throws {
        let dir = Scratch("sd-contract"); defer { dir.remove() }
        let manager = try NotifyServer(path: "\(dir.path)/manager.sock")
        let defib = try Background([Binaries.defib, "run", "--state-dir", "\(dir.path)/state", "--interval", "50", "--deadline", "400",
                                    "--capture", "none", "--", Self.pingable],
                                   env: ["NOTIFY_SOCKET": manager.path, "WATCHDOG_USEC": "1000000", "MODE": "slow-start:700"],
                                   log: "\(dir.path)/defib.log")
        defer { defib.stop() }
        let started = monotonicNanoseconds()
        let early = Self.collect(manager, forMs: 10_000) { $0.contains { $0.text.contains("READY=1") } }
        let ready = try #require(early.first { $0.text.contains("READY=1") }, "no READY=1: \(early.map(\.text)) \(defib.log)")
        #expect(ready.pid == defib.pid, "sent by defib's own pid")
        #expect(ready.text.contains("STATUS=pingable.py: running pid"), "\(ready.text)")
        #expect(monotonicNanoseconds() - started >= 700_000_000, "READY=1 only after the service answered (it starts after 700 ms)")
        #expect(!early.dropLast().contains { $0.text.contains("READY=1") })
        // WATCHDOG=1 at least every WATCHDOG_USEC/2 = 500 ms (defib sends every 400 ms): over 4 s, at least 6
        // of them (10 expected), and never a gap systemd would act on (a whole WATCHDOG_USEC).
        var arrivals: [Int64] = []
        var later: [NotifyServer.Message] = []
        let until = monotonicNanoseconds() + 4_000_000_000
        while monotonicNanoseconds() < until {
            var pfd = pollfd(fd: manager.fd, events: Int16(POLLIN), revents: 0)
            _ = poll(&pfd, 1, 50)
            for m in manager.receiveAll() {
                later.append(m)
                if m.text.contains("WATCHDOG=1") { arrivals.append(monotonicNanoseconds()) }
            }
        }
        let keepAlives = later.filter { $0.text.contains("WATCHDOG=1") }
        #expect(keepAlives.count >= 6, "\(keepAlives.count) keep-alives in 4 s: \(later.map(\.text))")
        #expect(keepAlives.allSatisfy { $0.pid == defib.pid })
        let widest = zip(arrivals.dropFirst(), arrivals).map { $0 - $1 }.max() ?? 0
        #expect(widest < 1_000_000_000, "a keep-alive gap of \(widest / 1_000_000) ms: systemd would have fired")
        kill(defib.pid, SIGTERM)
        let end = Self.collect(manager, forMs: 5000) { $0.contains { $0.text.contains("STOPPING=1") } }
        #expect(end.contains { $0.text.contains("STOPPING=1") }, "\(end.map(\.text))")
        #expect(defib.wait(timeoutMs: 10_000) == .exited(code: 0))
    }

    func superviseNotifier(_ dir: Scratch, mode: String) throws -> Background {
        try Background([Binaries.defib, "run", "--state-dir", dir.path, "--heartbeat", "notify", "--interval", "100", "--deadline", "500",
                        "--capture", "none", "--", Self.notifier], env: ["MODE": mode], log: "\(dir.path)/defib.log")
    }

    @Test func anSdNotifyServiceIsReadyOnReadyAndHungWhenItsKeepAlivesStop() throws {
        let dir = Scratch("sd-child"); defer { dir.remove() }
        let defib = try superviseNotifier(dir, mode: "stop-after:10")
        defer { defib.stop() }
        let found = try waitUntil(timeoutMs: 30_000) {
            try incidentsJSON(stateDir: dir.path).contains { $0["outcome"] as? String == "recovered" }
        }
        #expect(found, "\(defib.log)")
        let incident = try #require(try incidentsJSON(stateDir: dir.path).last)
        #expect(incident["cause"] as? String == "missed-heartbeat")
        #expect((incident["cause_detail"] as? String)?.contains("no WATCHDOG=1") == true, "\(incident)")
        #expect(defib.log.contains("service says: STATUS=serving"))
        // Named as what went silent: the keep-alives and their last WATCHDOG=1, not a control channel or a pong.
        let detail = incident["cause_detail"] as? String ?? ""
        #expect(detail.hasPrefix("sd_notify keep-alive (WATCHDOG=1) failing: ") && detail.contains("last beat "), "\(detail)")
        #expect(!detail.contains("control channel") && !detail.contains("pong"), "\(detail)")
    }

    @Test func keepAlivesFromAnotherPidAreIgnored() throws {
        let dir = Scratch("sd-impostor"); defer { dir.remove() }
        let defib = try superviseNotifier(dir, mode: "impostor")
        defer { defib.stop() }
        let found = try waitUntil(timeoutMs: 30_000) { try !incidentsJSON(stateDir: dir.path).isEmpty }
        #expect(found, "keep-alives from a forked child must not keep the service alive: \(defib.log)")
        #expect(defib.log.contains("ignored sd_notify message from pid"), "\(defib.log)")
    }

    @Test func watchdogTriggerIsAnIncidentAtOnce() throws {
        let dir = Scratch("sd-trigger"); defer { dir.remove() }
        let defib = try superviseNotifier(dir, mode: "trigger-after:3")
        defer { defib.stop() }
        let found = try waitUntil(timeoutMs: 30_000) { try !incidentsJSON(stateDir: dir.path).isEmpty }
        #expect(found, "\(defib.log)")
        #expect(try incidentsJSON(stateDir: dir.path).last?["cause"] as? String == "watchdog-trigger")
    }

    @Test func aPassedSocketRefusesNoConnectionThroughAHangAndARestart() throws {
        let dir = Scratch("sd-sockets"); defer { dir.remove() }
        let backendPort = freePort()
        try FileManager.default.createDirectory(atPath: "\(dir.path)/site", withIntermediateDirectories: true)
        try "ok\n".write(toFile: "\(dir.path)/site/index.html", atomically: true, encoding: .utf8)
        let backend = try Background(["python3", "-m", "http.server", String(backendPort), "--bind", "127.0.0.1", "--directory", "\(dir.path)/site"],
                                     log: "\(dir.path)/backend.log")
        defer { backend.stop() }
        let port = freePort()
        let state = "\(dir.path)/state"
        let defib = try Background([Binaries.defib, "run", "--state-dir", state, "--interval", "50", "--deadline", "500", "--capture", "none",
                                    "--socket", "http=127.0.0.1:\(port)", "--", Binaries.proxy, "--route", "app.test=127.0.0.1:\(backendPort)"],
                                   log: "\(dir.path)/defib.log")
        defer { defib.stop() }
        try #require(waitUntil(timeoutMs: 30_000) { httpGet(port: port, path: "/", host: "app.test")?.status == 200 }, "\(defib.log)")

        // A client that keeps connecting through the hang and the restart.
        final class Tally: @unchecked Sendable {
            var ok = 0, refused = 0, failed = 0, okAfterRecovery = 0
            var stop = false, recovered = false
            let lock = NSLock()
        }
        let tally = Tally()
        let client = Thread {
            while !tally.lock.withLock({ tally.stop }) {
                let outcome = Self.connectAndGet(port: port)
                tally.lock.withLock {
                    switch outcome {
                    case .ok: tally.ok += 1; if tally.recovered { tally.okAfterRecovery += 1 }
                    case .refused: tally.refused += 1
                    case .failed: tally.failed += 1
                    }
                }
                usleep(20_000)
            }
        }
        client.start()
        usleep(500_000)
        #expect(try runCommand([Binaries.defib, "ctl", "--state-dir", state, "fault", "timeout-race"]).code == 0)
        let recovered = try waitUntil(timeoutMs: 30_000) {
            try incidentsJSON(stateDir: state).first?["outcome"] as? String == "recovered"
        }
        tally.lock.withLock { tally.recovered = true }
        usleep(1_000_000)
        tally.lock.withLock { tally.stop = true }
        while client.isExecuting { usleep(10_000) }
        #expect(recovered, "\(defib.log)")
        #expect(tally.refused == 0, "connections refused during the hang and the restart: \(tally.refused)")
        #expect(tally.okAfterRecovery > 0, "served again after the restart (ok \(tally.ok), failed \(tally.failed))")
    }

    enum Outcome { case ok, refused, failed }

    /// One GET on a fresh connection: refused (ECONNREFUSED), ok (200), or failed (reset, timeout, other status).
    static func connectAndGet(port: Int) -> Outcome {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var tv = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = UInt16(port).bigEndian
        let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        if rc != 0 { return errno == ECONNREFUSED ? .refused : .failed }
        let req = Array("GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n".utf8)
        guard send(fd, req, req.count, Int32(MSG_NOSIGNAL)) == req.count else { return .failed }
        var buf = [UInt8](repeating: 0, count: 4096)
        let n = recv(fd, &buf, buf.count, 0)
        guard n > 12 else { return .failed }
        return String(decoding: buf[0..<n], as: UTF8.self).hasPrefix("HTTP/1.1 200") ? .ok : .failed
    }

    @Test func metricsAreServedInThePrometheusFormat() throws {
        let dir = Scratch("sd-metrics"); defer { dir.remove() }
        let port = freePort()
        let defib = try Background([Binaries.defib, "run", "--state-dir", dir.path, "--interval", "50", "--deadline", "400", "--capture", "none",
                                    "--metrics", "127.0.0.1:\(port)", "--", Self.pingable], env: ["MODE": "hang-after:20"],
                                   log: "\(dir.path)/defib.log")
        defer { defib.stop() }
        let hung = try waitUntil(timeoutMs: 30_000) { try !incidentsJSON(stateDir: dir.path).isEmpty }
        #expect(hung, "\(defib.log)")
        var text = ""
        _ = waitUntil(timeoutMs: 10_000) {
            text = httpGet(port: port, path: "/metrics", host: "localhost")?.body ?? ""
            return text.contains("defib_incidents_total")
        }
        for expected in ["defib_heartbeat_rtt_seconds_bucket", "defib_heartbeat_misses_total", "defib_incidents_total",
                         "cause=\"missed-heartbeat\"", "defib_phase", "defib_restarts_total"] {
            #expect(text.contains(expected), "metrics lack \(expected):\n\(text)")
        }
        #expect(httpGet(port: port, path: "/nope", host: "localhost")?.status == 404)
    }
}
