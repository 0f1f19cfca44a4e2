import DefibCore
import DefibPOSIX
import DefibStore
import Foundation
import Glibc

/// One `defib run` supervising one `defib-proxy` behind a socket defib binds: started by the harness,
/// stopped by pidfd, with helpers to reach the proxy and read the incidents.
final class Session {
    let stateDir: String
    let controlSocket: String
    let port: Int
    let defib: ChildProcess
    let logPath: String
    let proxyExecutable: String
    private let registry: ProcessRegistry
    private var store: IncidentStore?
    private(set) var exitStatus: ChildStatus?
    /// Every proxy instance seen (for the orphan check).
    private(set) var proxyPids: Set<Int32> = []

    /// The environment variable that tags every process of a run.
    static let tagName = "DEFIB_CHAOS_TAG"

    private init(stateDir: String, controlSocket: String, port: Int, defib: ChildProcess, logPath: String, proxyExecutable: String, registry: ProcessRegistry) {
        self.stateDir = stateDir; self.controlSocket = controlSocket; self.port = port; self.defib = defib
        self.logPath = logPath; self.proxyExecutable = proxyExecutable; self.registry = registry
    }

    /// Starts `defib run` with the config file and the harness's flags.
    static func start(defibPath: String, proxyPath: String, configFile: String, overrides: [String], stateDir: String,
                      controlSocket: String, backendPort: Int, logPath: String, tag: String, registry: ProcessRegistry) throws(ChaosError) -> Session {
        do {
            try makeDirectory(stateDir, mode: 0o700)
            try makeDirectory((controlSocket as NSString).deletingLastPathComponent, mode: 0o700)
        } catch {
            throw ChaosError(.setup, "state directory \(stateDir): \(error)")
        }
        let port = freeLoopbackPort()
        let argv = [defibPath, "run", "--config", configFile, "--state-dir", stateDir, "--name", "proxy",
                    "--control-socket", controlSocket, "--socket", "http=127.0.0.1:\(port)"] + overrides
            + ["--", proxyPath, "--route", "app.test=127.0.0.1:\(backendPort)"]
        var env = currentEnvironment()
        env[tagName] = tag
        let log = open(logPath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard log >= 0 else { throw ChaosError(.setup, "open(\(logPath)): \(String(cString: strerror(errno)))") }
        defer { close(log) }
        var request = SpawnRequest(argv: argv, environment: env)
        request.stdoutFD = log; request.stderrFD = log; request.stdinFromDevNull = true
        // If the harness dies, defib is told to stop (and stops its proxy) rather than being left behind.
        request.parentDeathSignal = SIGTERM
        let child: ChildProcess
        do { child = try spawnProcess(request) } catch { throw ChaosError(.setup, "\(defibPath): \(error)") }
        registry.register(child)
        return Session(stateDir: stateDir, controlSocket: controlSocket, port: port, defib: child, logPath: logPath,
                       proxyExecutable: realPath(proxyPath), registry: registry)
    }

    /// Whether defib is still running (reaps it if it ended).
    var defibAlive: Bool {
        if exitStatus != nil { return false }
        if let s = waitForChild(defib, timeoutMs: 0) { exitStatus = s; return false }
        return true
    }

    /// The proxy instance defib runs now (a live child of defib running the proxy executable).
    func currentProxyPid() -> Int32? {
        let pids = ProcFS.children(of: defib.pid).filter { ProcFS.isAlive($0) && runsProxy($0) }
        for p in pids { proxyPids.insert(p) }
        return pids.last
    }

    /// Children of defib that are not the current proxy (gdb and compression jobs are expected; anything
    /// else running the proxy executable is a leftover instance).
    func strayProxyInstances(current: Int32?) -> [Int32] {
        ProcFS.children(of: defib.pid).filter { $0 != current && ProcFS.isAlive($0) && runsProxy($0) }
    }

    private func runsProxy(_ pid: Int32) -> Bool {
        // The executable, or its name when the file was replaced by a rebuild ("… (deleted)").
        if let exe = ProcFS.executable(of: pid), realPath(exe) == proxyExecutable { return true }
        return ProcFS.comm(of: pid) == String((proxyExecutable as NSString).lastPathComponent.prefix(15))
    }

    /// One ping on the control channel.
    func ping(timeoutMs: Int = 1000) -> Bool {
        let token = "chaos\(UInt32.random(in: 0...UInt32.max))"
        if case let .success(reply) = ControlRequest.roundTrip(path: controlSocket, line: "ping \(token)", timeoutMs: timeoutMs) {
            return reply == "pong \(token)"
        }
        return false
    }

    /// Both the control channel and HTTP through the proxy answer.
    func waitReady(timeoutMs: Int, flag: InterruptFlag) throws(ChaosError) -> Bool {
        let deadline = ChaosClock.nowUnixMs() + Double(timeoutMs)
        while ChaosClock.nowUnixMs() < deadline {
            try flag.check()
            if !defibAlive { return false }
            if ping(), httpGetStatus(port: port, host: "app.test", timeoutMs: 2000) == 200 { _ = currentProxyPid(); return true }
            ChaosClock.sleep(ms: 50)
        }
        return false
    }

    /// Injects `scenario`'s fault. Returns the onset (Unix ms) or why it could not be injected. `stallMs` is how
    /// long a `stall` lasts (its first part, a SIGSTOP, is over when this returns).
    func inject(_ scenario: ChaosScenario, stallMs: Int = 750) -> (onset: Double?, problem: String?) {
        switch scenario {
        case .control:
            return (nil, nil)
        case .stall:
            guard let pid = currentProxyPid() else { return (nil, "no proxy instance to stop") }
            let onset = ChaosClock.nowUnixMs()
            if kill(pid, SIGSTOP) != 0 { return (nil, "kill(\(pid), SIGSTOP): \(String(cString: strerror(errno)))") }
            ChaosClock.sleep(ms: Double(stallMs))
            if kill(pid, SIGCONT) != 0 { return (onset, "kill(\(pid), SIGCONT): \(String(cString: strerror(errno)))") }
            return (onset, nil)
        case .sigstop:
            guard let pid = currentProxyPid() else { return (nil, "no proxy instance to stop") }
            let onset = ChaosClock.nowUnixMs()
            if kill(pid, SIGSTOP) != 0 { return (nil, "kill(\(pid), SIGSTOP): \(String(cString: strerror(errno)))") }
            return (onset, nil)
        default:
            let pid = currentProxyPid()
            let onset = ChaosClock.nowUnixMs()
            switch ControlRequest.roundTrip(path: controlSocket, line: "fault \(scenario.rawValue)", timeoutMs: 3000) {
            case let .success(reply) where reply.hasPrefix("ok"):
                if scenario == .leakedRead {
                    // The leaked guard only bites at the next catalog write: make it now (a SIGHUP reload).
                    guard let pid else { return (onset, "no proxy instance to send SIGHUP to (the leaked read waits for the periodic reload)") }
                    if kill(pid, SIGHUP) != 0 { return (onset, "kill(\(pid), SIGHUP): \(String(cString: strerror(errno)))") }
                }
                return (onset, nil)
            case let .success(reply):
                return (nil, "'fault \(scenario.rawValue)' answered '\(reply)'")
            case let .failure(error):
                return (nil, "'fault \(scenario.rawValue)': \(error)")
            }
        }
    }

    /// The second stall of the `stall` scenario: the catalog's write lock held `ms`, then released
    /// (`fault slow-holder MS`). Returns the onset or why it could not be injected.
    func injectLockStall(ms: Int) -> (onset: Double?, problem: String?) {
        let onset = ChaosClock.nowUnixMs()
        switch ControlRequest.roundTrip(path: controlSocket, line: "fault slow-holder \(ms)", timeoutMs: 3000) {
        case let .success(reply) where reply.hasPrefix("ok"): return (onset, nil)
        case let .success(reply): return (nil, "'fault slow-holder \(ms)' answered '\(reply)'")
        case let .failure(error): return (nil, "'fault slow-holder \(ms)': \(error)")
        }
    }

    /// The incidents detected at or after `sinceUnixMs` (all when nil), oldest first. A soak polls with a
    /// recent bound: decoding a thousand incidents with their stacks every 50 ms would be the soak's main cost.
    func incidents(sinceUnixMs: Double? = nil) -> [Incident] {
        if store == nil { store = try? IncidentStore.openReadOnly(stateDirectory: stateDir) }
        let since = sinceUnixMs.map { Date(timeIntervalSince1970: $0 / 1000) }
        guard let store, let list = try? store.list(since: since) else { return [] }
        return list.sorted { ($0.id ?? 0) < ($1.id ?? 0) }
    }

    /// One incident, fresh from the store.
    func incident(id: Int64) -> Incident? {
        if store == nil { store = try? IncidentStore.openReadOnly(stateDirectory: stateDir) }
        return try? store?.incident(id: id)
    }

    /// SIGTERM to defib (it stops the proxy and waits for its stacks jobs), SIGKILL after `graceMs`.
    /// Returns how defib ended.
    @discardableResult
    func stop(graceMs: Int = 90_000) -> String {
        _ = currentProxyPid()
        if exitStatus == nil {
            if let s = waitForChild(defib, timeoutMs: 0) {
                exitStatus = s
            } else {
                try? defib.signal(SIGTERM)
                exitStatus = waitForChild(defib, timeoutMs: graceMs)
                if exitStatus == nil {
                    try? defib.signal(SIGKILL)
                    exitStatus = waitForChild(defib, timeoutMs: 5000)
                    registry.forget(defib)
                    store = nil
                    return "did not stop within \(graceMs) ms of SIGTERM; killed"
                }
            }
            registry.forget(defib)
        }
        store = nil
        return describe(exitStatus)
    }

    /// The last lines of defib's log, for error messages.
    func logTail(lines: Int = 8) -> String {
        let text = readTextFile(logPath, maxBytes: 4 << 20) ?? ""
        return text.split(separator: "\n").suffix(lines).joined(separator: "\n")
    }
}

func describe(_ s: ChildStatus?) -> String {
    switch s {
    case nil: "still running"
    case let .exited(code)?: "exited with code \(code)"
    case let .signaled(sig, _)?: "killed by \(signalName(sig))"
    }
}

func realPath(_ path: String) -> String {
    guard let p = realpath(path, nil) else { return path }
    defer { free(p) }
    return String(cString: p)
}

/// A free TCP port on 127.0.0.1 (bound to port 0 and released).
func freeLoopbackPort() -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    defer { close(fd) }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
    var len = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
    return Int(UInt16(bigEndian: addr.sin_port))
}

/// One blocking `GET` to 127.0.0.1:`port` over a fresh connection (`Connection: close`): the status, or nil on
/// refusal, timeout or an incomplete answer. The harness and the benchmarks probe a service with it.
public func httpGetStatus(port: Int, host: String, path: String = "/", timeoutMs: Int) -> Int? {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var tv = timeval(tv_sec: timeoutMs / 1000, tv_usec: (timeoutMs % 1000) * 1000)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    addr.sin_port = UInt16(port).bigEndian
    let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
    guard rc == 0 else { return nil }
    let req = Array("GET \(path) HTTP/1.1\r\nHost: \(host)\r\nConnection: close\r\n\r\n".utf8)
    guard send(fd, req, req.count, Int32(MSG_NOSIGNAL)) == req.count else { return nil }
    var data: [UInt8] = []
    var buf = [UInt8](repeating: 0, count: 16384)
    while true {
        let n = recv(fd, &buf, buf.count, 0)
        if n > 0 { data += buf[0..<n]; if let done = LoadGenerator.complete(data) { return done.1 }; continue }
        if n == 0 { return LoadGenerator.completeAtEOF(data)?.1 }
        return nil
    }
}
