import DefibCore
import DefibPOSIX
import Foundation
import Glibc

/// The files a peer's configuration is rendered from (bench/peers/), and writing them.
struct PeerTemplates {
    /// The directory holding them.
    var directory: String

    /// Reads `name`, fills its placeholders and writes it to `path` with `mode`.
    func render(_ name: String, to path: String, values: [String: String], mode: mode_t = 0o644) throws {
        let source = "\(directory)/\(name)"
        guard let text = readTextFile(source) else {
            throw BenchError(kind: .io, message: "reading template \(source): \(String(cString: strerror(errno)))")
        }
        let rendered = try PeerTemplate.render(text, name: source, values: values)
        do { try rendered.write(toFile: path, atomically: false, encoding: .utf8) } catch {
            throw BenchError(kind: .io, message: "writing \(path): \(error.localizedDescription)")
        }
        guard chmod(path, mode) == 0 else { throw BenchError(kind: .io, message: "\(SystemError("chmod(\(path))"))") }
    }
}

/// `monit -I -c DIR/monitrc` as our child: a 1 s cycle, the proxy's control-socket ping, gcore + restart on failure.
final class MonitPeerSession: PeerSession {
    let id = PeerID.monit
    let proxy: PeerProxy
    let heartbeat = "a 1 s cycle (`set daemon 1`): connect to the control socket, send `ping monit`, expect `pong monit`, timeout 1 s"
    private(set) var notes: [String] = []
    private let directory: String
    private let monit: ManagedChild
    private var logOffset = 0

    /// The proxy's arguments under monit (it binds its own port: monit cannot pass one).
    static func proxyArguments(port: Int, backendPort: Int, controlSocket: String) -> String {
        "--listen 127.0.0.1:\(port) --route \(PeerRunner.appHost)=127.0.0.1:\(backendPort) --control-socket \(controlSocket)"
    }

    init(monitPath: String, proxy: String, directory: String, templates: PeerTemplates, backendPort: Int) throws {
        self.directory = directory
        removeTree(directory)
        try makeDirectories(directory + "/cores")
        let endpoint = try PeerProxy.inDirectory(directory, binary: proxy)
        self.proxy = endpoint
        let values = ["DIR": directory, "PROXY": proxy,
                      "PROXY_ARGS": Self.proxyArguments(port: endpoint.port, backendPort: backendPort, controlSocket: endpoint.controlSocket)]
        // monit refuses a control file others can read.
        try templates.render("monitrc", to: directory + "/monitrc", values: values, mode: 0o600)
        try templates.render("monit-start-proxy.sh", to: directory + "/start-proxy.sh", values: values, mode: 0o755)
        try templates.render("monit-stop-proxy.sh", to: directory + "/stop-proxy.sh", values: values, mode: 0o755)
        try templates.render("monit-restart-with-gcore.sh", to: directory + "/restart-with-gcore.sh", values: values, mode: 0o755)
        let check = runToolCapturing([monitPath, "-t", "-c", directory + "/monitrc"], workDirectory: directory)
        guard check.status == .exited(code: 0) else {
            throw BenchError(kind: .startup, message: "monit -t -c \(directory)/monitrc: \(check.status.map(describe) ?? "timed out"): \(check.output.suffix(300))")
        }
        monit = try ManagedChild(name: "monit", argv: [monitPath, "-I", "-c", directory + "/monitrc"], workingDirectory: directory,
                                 logPath: directory + "/monit.out")
    }

    func supervisorProcesses() -> [(name: String, pid: Int32)] { [("monit", monit.pid)] }

    func proxyPID() -> Int32? {
        guard let text = readTextFile(directory + "/proxy.pid"),
              let pid = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)) else { return nil }
        return processName(pid) == "defib-proxy" && ProcFSState.isAlive(pid) ? pid : nil
    }

    func supervisorProblem() -> String? {
        monit.poll().map { "monit (pid \(monit.pid)) \(describe($0)): \(tailOfFile(directory + "/monit.log", maxLines: 4))" }
    }

    /// Until monit has cleared its last failure (it acts only when a test changes from passing to failing) and the
    /// serving instance is older than monit's post-start pause (1 s) plus two cycles.
    func waitWatching(timeoutMs: Int) -> String? {
        let deadline = monotonicNanoseconds() + Int64(timeoutMs) * 1_000_000
        var waiting = "nothing"
        while monotonicNanoseconds() < deadline {
            let log = readTextFile(directory + "/monit.log", maxBytes: 16 << 20) ?? ""
            if let why = Self.pendingFailure(monitLog: log) {
                waiting = why
            } else if let pid = proxyPID(), let age = processAgeMs(pid), age < 3000 {
                waiting = "proxy pid \(pid) started \(Int(age)) ms ago, inside monit's post-start pause"
            } else {
                return nil
            }
            sleepMs(100)
        }
        return "monit: \(waiting)"
    }

    /// The last failure monit logged that no later "succeeded" line cleared, if any. Pure.
    static func pendingFailure(monitLog: String) -> String? {
        var pending: String?
        for line in monitLog.split(separator: "\n") {
            if line.contains("failed protocol test") || line.contains("connection failed") { pending = stripTimestamp(String(line)) }
            else if line.contains("succeeded") && (line.contains("connection") || line.contains("protocol")) { pending = nil }
        }
        return pending.map { "its last failure is not cleared yet (\($0))" }
    }

    func beforeFault(rep: Int) {
        logOffset = (readTextFile(directory + "/monit.log", maxBytes: 16 << 20) ?? "").utf8.count
    }

    /// gcore's core of `oldPid` and monit's log lines since the fault.
    func evidence(rep: Int, oldPid: Int32, faultAtUnixMs: Double, recovered: Bool) -> SessionEvidence {
        // The restart script kills the proxy only after gcore finished, so the core is complete once the pid is gone.
        let core = "\(directory)/cores/core.\(oldPid)"
        let text = readTextFile(directory + "/monit.log", maxBytes: 16 << 20) ?? ""
        let lines = String(decoding: Array(text.utf8).dropFirst(logOffset), as: UTF8.self)
            .split(separator: "\n").map { String($0) }
        let failed = lines.first { $0.contains("failed protocol test") || $0.contains("connection failed") || $0.contains("failed") }
        let exec = lines.first { $0.contains("exec") }
        let record = [failed, exec].compactMap { $0.map(Self.stripTimestamp) }.joined(separator: " / ")
            .replacingOccurrences(of: directory + "/", with: "")
        let hasCore = access(core, R_OK) == 0
        return SessionEvidence(corePath: hasCore ? core : nil,
                               coreNote: hasCore ? nil : "no \(core) (restart.log: \(tailOfFile(directory + "/restart.log", maxLines: 2)))",
                               recorded: failed != nil, record: record.isEmpty ? "nothing in monit.log" : "monit.log: " + record)
    }

    /// "[2026-11-25T18:00:00+0000] error    : 'proxy' failed …" → "error: 'proxy' failed …".
    static func stripTimestamp(_ line: String) -> String {
        var s = Substring(line)
        if s.hasPrefix("["), let close = s.firstIndex(of: "]") { s = s[s.index(after: close)...] }
        return s.split(separator: " ", omittingEmptySubsequences: true).joined(separator: " ")
            .replacingOccurrences(of: " : ", with: ": ")
    }

    func restartHungInstance(oldPid: Int32) {
        killProcess(oldPid)
    }

    func stop() -> [String] {
        var problems: [String] = []
        // monit leaves its services running when it quits: the proxy is stopped by pid afterwards.
        if let s = monit.stop(graceMs: 10_000), s != .exited(code: 0), s != .signaled(signal: SIGTERM, coreDumped: false) {
            problems.append("monit \(describe(s)) when stopped")
        }
        sleepMs(100)
        if let pid = proxyPID() { killProcess(pid) }
        killOrphanedProxies()
        return problems
    }
}

/// `supervisord -n -c DIR/supervisord.conf` as our child. No hang detection: each repetition waits for the bound, then
/// the hung proxy is killed by pid and supervisord starts a new one.
final class SupervisordPeerSession: PeerSession {
    let id = PeerID.supervisord
    let proxy: PeerProxy
    let heartbeat = "none: supervisord learns of its child's exit (SIGCHLD) and nothing else"
    private(set) var notes: [String] = []
    private let directory: String
    private let supervisord: ManagedChild
    private var logOffset = 0

    init(supervisordPath: String, proxy: String, directory: String, templates: PeerTemplates, backendPort: Int) throws {
        self.directory = directory
        removeTree(directory)
        try makeDirectories(directory)
        let endpoint = try PeerProxy.inDirectory(directory, binary: proxy)
        self.proxy = endpoint
        let values = ["DIR": directory, "PROXY": proxy,
                      "PROXY_ARGS": MonitPeerSession.proxyArguments(port: endpoint.port, backendPort: backendPort, controlSocket: endpoint.controlSocket)]
        try templates.render("supervisord.conf", to: directory + "/supervisord.conf", values: values, mode: 0o600)
        supervisord = try ManagedChild(name: "supervisord", argv: [supervisordPath, "-n", "-c", directory + "/supervisord.conf"],
                                       workingDirectory: directory, logPath: directory + "/supervisord.out")
    }

    func supervisorProcesses() -> [(name: String, pid: Int32)] { [("supervisord", supervisord.pid)] }

    func proxyPID() -> Int32? {
        childProcesses(of: supervisord.pid).first { processName($0) == "defib-proxy" && ProcFSState.isAlive($0) }
    }

    func supervisorProblem() -> String? {
        supervisord.poll().map { "supervisord (pid \(supervisord.pid)) \(describe($0)): \(tailOfFile(directory + "/supervisord.log", maxLines: 4))" }
    }

    func beforeFault(rep: Int) {
        logOffset = (readTextFile(directory + "/supervisord.log", maxBytes: 16 << 20) ?? "").utf8.count
    }

    func evidence(rep: Int, oldPid: Int32, faultAtUnixMs: Double, recovered: Bool) -> SessionEvidence {
        let text = readTextFile(directory + "/supervisord.log", maxBytes: 16 << 20) ?? ""
        let lines = String(decoding: Array(text.utf8).dropFirst(logOffset), as: UTF8.self).split(separator: "\n")
        return SessionEvidence(corePath: nil, coreNote: "supervisord takes no cores", recorded: !lines.isEmpty,
                               record: lines.isEmpty ? "nothing: supervisord.log has no line from the fault to the bound"
                                   : "supervisord.log: " + lines.prefix(2).joined(separator: " / "))
    }

    func restartHungInstance(oldPid: Int32) {
        // We step in where supervisord cannot: SIGKILL by pid; supervisord sees the exit and starts a new proxy.
        killProcess(oldPid)
    }

    func stop() -> [String] {
        var problems: [String] = []
        if let s = supervisord.stop(graceMs: 15_000), s != .exited(code: 0) { problems.append("supervisord \(describe(s)) when stopped") }
        let left = killOrphanedProxies()
        if !left.isEmpty { problems.append("defib-proxy pid(s) \(left) outlived supervisord and were killed") }
        return problems
    }
}
