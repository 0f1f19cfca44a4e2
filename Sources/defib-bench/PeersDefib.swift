import DefibCore
import DefibPOSIX
import Foundation
import Glibc

/// `defib run … -- defib-proxy …`: a row for each capture method, and one where the proxy binds its own port.
final class DefibPeerSession: PeerSession {
    let id: PeerID
    let proxy: PeerProxy
    let heartbeat: String
    private(set) var notes: [String] = []
    private let defib: String
    private let directory: String
    private let stateDirectory: String
    private let child: ManagedChild

    /// The capture method a row uses.
    static func captureMethod(_ id: PeerID) -> String {
        switch id {
        case .defibGcore: "gcore"
        case .defibNone: "none"
        default: "native"
        }
    }

    /// The command line of a row (the report quotes it).
    static func argv(_ id: PeerID, defib: String, proxy: String, stateDirectory: String, controlSocket: String, port: Int,
                     backendPort: Int, intervalMs: Int, deadlineMs: Int) -> [String] {
        var argv = [defib, "run", "--state-dir", stateDirectory, "--interval", String(intervalMs), "--deadline", String(deadlineMs),
                    "--capture", captureMethod(id), "--control-socket", controlSocket]
        if id.socketPassed { argv += ["--socket", "http=127.0.0.1:\(port)"] }
        argv += ["--", proxy]
        if !id.socketPassed { argv += ["--listen", "127.0.0.1:\(port)"] }
        argv += ["--route", "\(PeerRunner.appHost)=127.0.0.1:\(backendPort)"]
        return argv
    }

    init(id: PeerID, defib: String, proxy: String, directory: String, backendPort: Int, intervalMs: Int, deadlineMs: Int) throws {
        self.id = id; self.defib = defib; self.directory = directory
        stateDirectory = directory + "/state"
        heartbeat = "a `ping` on the control socket every \(intervalMs) ms, hang after \(deadlineMs) ms of silence"
        try makeDirectories(directory)
        let endpoint = try PeerProxy.inDirectory(directory, binary: proxy)
        self.proxy = endpoint
        let argv = Self.argv(id, defib: defib, proxy: proxy, stateDirectory: stateDirectory, controlSocket: endpoint.controlSocket, port: endpoint.port,
                             backendPort: backendPort, intervalMs: intervalMs, deadlineMs: deadlineMs)
        child = try ManagedChild(name: "defib run (\(id.rawValue))", argv: argv, workingDirectory: directory, logPath: directory + "/defib.log",
                                 removing: ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID",
                                            "LISTEN_FDNAMES", "DEFIB_CONTROL_SOCKET"])
    }

    func supervisorProcesses() -> [(name: String, pid: Int32)] { [("defib", child.pid)] }

    func proxyPID() -> Int32? {
        childProcesses(of: child.pid).first { processName($0) == "defib-proxy" && ProcFSState.isAlive($0) }
    }

    func supervisorProblem() -> String? {
        child.poll().map { "defib run (pid \(child.pid)) \(describe($0)): \(child.logTail)" }
    }

    func beforeFault(rep: Int) {}

    /// The incident of `oldPid` from `defib incidents --json`, once it is no longer open.
    func evidence(rep: Int, oldPid: Int32, faultAtUnixMs: Double, recovered: Bool) -> SessionEvidence {
        let deadline = monotonicNanoseconds() + 20_000_000_000
        var incident: [String: Any]?
        var last = "no incident for pid \(oldPid)"
        while monotonicNanoseconds() < deadline {
            let (status, output) = runToolCapturing([defib, "incidents", "--state-dir", stateDirectory, "--json"], workDirectory: directory)
            if status == .exited(code: 0), let data = output.data(using: .utf8),
               let list = (try? JSONSerialization.jsonObject(with: data)) as? [[String: Any]] {
                incident = list.first { ($0["pid"] as? Int).map(Int32.init) == oldPid }
                if let i = incident, (i["outcome"] as? String) != "open" { break }
            } else {
                last = "defib incidents --json: \(status.map(describe) ?? "timed out"): \(output.prefix(200))"
            }
            sleepMs(200)
        }
        guard let i = incident else { return SessionEvidence(corePath: nil, coreNote: last, recorded: false, record: last) }
        let incidentID = i["id"] as? Int ?? 0
        let words = (i["lock_words"] as? [String] ?? []).joined(separator: ", ")
        let record = "incident #\(incidentID): \(i["cause"] as? String ?? "?"), \(i["outcome"] as? String ?? "?"); "
            + "diagnosis \(i["diagnosis"] as? String ?? "?"); lock word \(words.isEmpty ? "?" : words); "
            + "capture \(i["capture_method"] as? String ?? "none")"
            + ((i["capture_ms"] as? Double).map { String(format: " %.0f ms", $0) } ?? "")
        let core = i["core_path"] as? String
        var note: String?
        if core == nil { note = (i["capture_error"] as? String).map { "capture failed: \($0)" } ?? "no capture (--capture \(Self.captureMethod(id)))" }
        return SessionEvidence(corePath: core, coreNote: note, recorded: true, record: record)
    }

    func restartHungInstance(oldPid: Int32) {
        // defib restarts by itself; an instance still hung at the bound is killed so the next repetition starts clean.
        killProcess(oldPid)
    }

    func stop() -> [String] {
        var problems: [String] = []
        let status = child.stop(graceMs: 15_000)
        if let s = status, s != .exited(code: 0) { problems.append("defib \(describe(s)) when stopped: \(child.logTail)") }
        let left = killOrphanedProxies()
        if !left.isEmpty { problems.append("defib-proxy pid(s) \(left) outlived defib and were killed") }
        return problems
    }
}

/// /proc state letters.
enum ProcFSState {
    /// Exists and is neither a zombie nor dead.
    static func isAlive(_ pid: Int32) -> Bool {
        guard let stat = readTextFile("/proc/\(pid)/stat"), let close = stat.lastIndex(of: ")") else { return false }
        let state = stat[stat.index(after: close)...].first { !$0.isWhitespace }
        return state != nil && state != "Z" && state != "X"
    }
}
