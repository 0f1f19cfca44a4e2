import DefibCore
import DefibPOSIX
import Foundation
import Glibc

/// A real systemd booted in an isolated container, the recipe of scripts/systemd-container-test.sh: systemd-nspawn on an
/// overlay root whose upper layer is a tmpfs, in its own PID and mount namespaces, launched from its own cgroup, torn
/// down by killing one process. Never systemd on the host. Unlike the test it shares this machine's network namespace
/// (no --private-network), so the load reaches the proxy on 127.0.0.1 and the proxy reaches the backend; and it
/// bind-mounts a work directory at /var/lib/peer (control sockets and cores, visible from here).
final class SystemdContainer {
    /// The work directory (mount points, console log, the shared directory).
    let work: String
    /// Bind-mounted read-write at /var/lib/peer inside.
    let share: String
    /// Where the shared directory appears inside.
    static let shareInside = "/var/lib/peer"
    /// The container's PID 1, in our PID namespace.
    let pid1: Int32
    private let launcher: ManagedChild
    private let cgroupUnified: String
    private let cgroupLegacy: String

    /// Why the container cannot run here, or nil when it can (root, systemd-nspawn, namespaces, cgroup2).
    static func unavailableReason(nspawn: String?, work: String) -> String? {
        guard getuid() == 0 else { return "needs root to create namespaces" }
        guard nspawn != nil else { return "systemd-nspawn not installed (apt-get install systemd-container)" }
        let probe = runToolCapturing(["unshare", "-m", "-p", "-f", "true"], workDirectory: work)
        guard probe.status == .exited(code: 0) else { return "cannot create mount and PID namespaces here: \(probe.output.prefix(200))" }
        guard access("/sys/fs/cgroup/unified", F_OK) == 0 || access("/sys/fs/cgroup/cgroup.controllers", F_OK) == 0 else {
            return "no cgroup2 hierarchy (/sys/fs/cgroup/unified or /sys/fs/cgroup/cgroup.controllers)"
        }
        return nil
    }

    /// Boots it (systemd reports running or degraded) or throws with the console's tail; nothing is left behind then.
    init(nspawn: String, work: String, log: (String) -> Void) throws {
        self.work = work
        share = work + "/share"
        removeTree(work)
        try makeDirectories(work + "/root")
        try makeDirectories(work + "/ovl")
        try makeDirectories(share)
        let name = "defib-peers.\(getpid())"
        cgroupUnified = access("/sys/fs/cgroup/unified", F_OK) == 0 ? "/sys/fs/cgroup/unified/\(name)" : "/sys/fs/cgroup/\(name)"
        cgroupLegacy = "/sys/fs/cgroup/systemd/\(name)"
        guard mkdir(cgroupUnified, 0o755) == 0 || errno == EEXIST else {
            throw BenchError(kind: .startup, message: "\(SystemError("mkdir(\(cgroupUnified))"))")
        }
        let (unified, legacy) = (cgroupUnified, cgroupLegacy)
        PeersInterrupt.setCleanup("systemd container") { Self.removeCgroups(unified: unified, legacy: legacy) }
        // The same steps as scripts/systemd-container-test.sh, minus --private-network, plus the shared directory.
        let script = """
        set -e; W=$1; echo $$ > $2/cgroup.procs
        mount -t tmpfs -o size=2g defib-peers $W/ovl; mkdir $W/ovl/upper $W/ovl/work
        mount -t overlay defib-peers -o lowerdir=/,upperdir=$W/ovl/upper,workdir=$W/ovl/work $W/root
        mount -t tmpfs defib-peers /run
        SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 exec $3 -D $W/root -b \
          --register=no --keep-unit --link-journal=no --resolv-conf=off \
          --timezone=off --tmpfs=/tmp --tmpfs=/var/tmp --tmpfs=/var/log/journal \
          --bind=$W/share:\(Self.shareInside) -- systemd.unit=basic.target
        """
        // unshare is our child with SIGKILL as its parent-death signal and --kill-child: if we die, the namespace dies.
        do {
            launcher = try ManagedChild(name: "systemd container", argv: ["unshare", "-m", "--propagation", "private", "-p", "-f", "--kill-child",
                                                                           "--", "bash", "-c", script, "defib-peers", work, cgroupUnified, nspawn],
                                        workingDirectory: work, logPath: work + "/console.log")
        } catch {
            rmdir(cgroupUnified)
            throw error
        }
        var found: Int32?
        let deadline = monotonicNanoseconds() + 15_000_000_000
        while found == nil && monotonicNanoseconds() < deadline && launcher.poll() == nil {
            for text in (readTextFile("\(cgroupUnified)/payload/init.scope/cgroup.procs") ?? "").split(separator: "\n") {
                guard let pid = Int32(text) else { continue }
                let nspid = (readTextFile("/proc/\(pid)/status") ?? "").split(separator: "\n").first { $0.hasPrefix("NSpid:") }
                if let line = nspid, line.hasSuffix("\t1") { found = pid }
            }
            sleepMs(100)
        }
        guard let p1 = found else {
            pid1 = 0
            let tail = tailOfFile(work + "/console.log", maxLines: 6)
            _ = shutdown()
            throw BenchError(kind: .startup, message: "systemd did not start in the container within 15 s: \(tail)")
        }
        pid1 = p1
        var state = ""
        for _ in 0..<100 {
            state = ct(["systemctl", "is-system-running", "--wait"], timeoutMs: 30_000).output.trimmingCharacters(in: .whitespacesAndNewlines)
            if state == "running" || state == "degraded" { break }
            sleepMs(100)
        }
        guard state == "running" || state == "degraded" else {
            let tail = tailOfFile(work + "/console.log", maxLines: 6)
            _ = shutdown()
            throw BenchError(kind: .startup, message: "systemd in the container is '\(state)', not running: \(tail)")
        }
        log("peers: systemd booted in a container (PID 1 is pid \(p1) here), state \(state)")
    }

    /// Runs `argv` inside the container (its mount, UTS, IPC, network and PID namespaces) with a clean environment.
    func ct(_ argv: [String], timeoutMs: Int = 30_000) -> (status: ChildStatus?, output: String) {
        runToolCapturing(["nsenter", "-t", String(pid1), "-m", "-u", "-i", "-n", "-p", "--", "env", "-i",
                          "PATH=/usr/local/bin:/usr/bin:/bin", "SYSTEMD_PAGER=cat"] + argv,
                         workDirectory: work, timeoutMs: timeoutMs)
    }

    /// The processes of a unit of the container, as pids here (its cgroup's cgroup.procs, read from our namespace).
    func unitPIDs(_ unit: String) -> [Int32] {
        (readTextFile("\(cgroupUnified)/payload/system.slice/\(unit)/cgroup.procs") ?? "").split(separator: "\n").compactMap { Int32($0) }
    }

    /// Powers it off, kills whatever is left through the cgroup, removes the cgroups; returns problems.
    func shutdown() -> [String] {
        var problems: [String] = []
        if pid1 > 0 && launcher.poll() == nil {
            _ = ct(["systemctl", "poweroff", "--no-block"], timeoutMs: 5000)
            _ = launcher.wait(timeoutMs: 10_000)
        }
        if launcher.poll() == nil { problems.append("the container did not power off within 10 s: killed") }
        launcher.stop(graceMs: 2000)
        Self.removeCgroups(unified: cgroupUnified, legacy: cgroupLegacy)
        PeersInterrupt.setCleanup("systemd container", nil)
        if (readTextFile("/proc/self/mountinfo") ?? "").contains(" \(work)/") {
            problems.append("still mounted under \(work) after the container ended")
        }
        return problems
    }

    /// Kills what is left in the container's cgroup (cgroup.kill), waits for it to empty, removes the cgroups.
    static func removeCgroups(unified: String, legacy: String) {
        if access("\(unified)/cgroup.kill", F_OK) == 0 {
            try? "1".write(toFile: "\(unified)/cgroup.kill", atomically: false, encoding: .utf8)
        }
        for _ in 0..<50 {
            guard (readTextFile("\(unified)/cgroup.events") ?? "").contains("populated 1") else { break }
            sleepMs(100)
        }
        for root in [unified, legacy] { removeCgroupTree(root) }
    }

    /// rmdir depth-first (cgroup directories hold only kernel files).
    private static func removeCgroupTree(_ path: String) {
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: path) else { return }
        for e in entries {
            var st = stat()
            if lstat("\(path)/\(e)", &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR { removeCgroupTree("\(path)/\(e)") }
        }
        rmdir(path)
    }
}

/// defib-proxy as a Type=notify unit with WatchdogSec=1s in the container: with a socket unit (systemd keeps the
/// listening socket across restarts) or binding --listen itself.
final class SystemdPeerSession: PeerSession {
    let id: PeerID
    let proxy: PeerProxy
    let heartbeat = "`WatchdogSec=1s`: the proxy sends WATCHDOG=1 every 500 ms after a catalog read; systemd checks the deadline"
    private(set) var notes: [String] = []
    private let container: SystemdContainer
    private let unit: String
    private let socketUnit: String?
    private let coresHere: String
    private var journalLines = 0

    /// The unit names of a row.
    static func units(_ id: PeerID) -> (service: String, socket: String?) {
        id == .systemdSocket ? ("peer-proxy.service", "peer-proxy.socket") : ("peer-proxy-listen.service", nil)
    }

    init(id: PeerID, container: SystemdContainer, proxy: String, templates: PeerTemplates, backendPort: Int) throws {
        self.id = id; self.container = container
        (unit, socketUnit) = Self.units(id)
        let row = id.rawValue
        let inside = SystemdContainer.shareInside
        try makeDirectories("\(container.share)/bin")
        try makeDirectories("\(container.share)/units")
        try makeDirectories("\(container.share)/\(row)/cores")
        coresHere = "\(container.share)/\(row)/cores"
        let binary = "\(container.share)/bin/defib-proxy"
        if access(binary, X_OK) != 0 {
            do { try FileManager.default.copyItem(atPath: proxy, toPath: binary) } catch {
                throw BenchError(kind: .io, message: "copying \(proxy) to \(binary): \(error.localizedDescription)")
            }
        }
        let port = try freeLoopbackPort()
        self.proxy = PeerProxy(port: port, controlSocket: "\(container.share)/\(row)/control.sock", binary: binary)
        var args = "--route \(PeerRunner.appHost)=127.0.0.1:\(backendPort) --control-socket \(inside)/\(row)/control.sock"
        if socketUnit == nil { args = "--listen 127.0.0.1:\(port) " + args }
        let values = ["PROXY": "\(inside)/bin/defib-proxy", "PROXY_ARGS": args, "CORES": "\(inside)/\(row)/cores", "PORT": String(port)]
        try templates.render(unit, to: "\(container.share)/units/\(unit)", values: values)
        if let s = socketUnit { try templates.render(s, to: "\(container.share)/units/\(s)", values: values) }
        let files = ([unit] + (socketUnit.map { [$0] } ?? [])).map { "\(inside)/units/\($0)" }
        for step in [["cp"] + files + ["/etc/systemd/system/"], ["systemctl", "daemon-reload"]]
            + (socketUnit.map { [["systemctl", "start", $0]] } ?? []) + [["systemctl", "start", unit]] {
            let r = container.ct(step, timeoutMs: 60_000)
            guard r.status == .exited(code: 0) else {
                let status = container.ct(["systemctl", "status", "--no-pager", "-n", "5", unit]).output
                throw BenchError(kind: .startup, message: "in the container, \(step.joined(separator: " ")): \(r.status.map(describe) ?? "timed out"): "
                                 + "\(r.output.suffix(300)) \(status.suffix(600))")
            }
        }
        let pattern = (readTextFile("/proc/sys/kernel/core_pattern") ?? "?").trimmingCharacters(in: .whitespacesAndNewlines)
        notes.append("systemd rows: kernel cores follow this machine's core_pattern `\(pattern)` (global, not per container)"
                     + (pattern.hasPrefix("|") ? ": a pipe to a handler on the host, so no core lands in the unit's directory"
                        : ", i.e. a file in the unit's WorkingDirectory"))
    }

    func supervisorProcesses() -> [(name: String, pid: Int32)] { [("systemd (the container's PID 1)", container.pid1)] }

    func proxyPID() -> Int32? {
        container.unitPIDs(unit).first { processName($0) == "defib-proxy" && ProcFSState.isAlive($0) }
    }

    func supervisorProblem() -> String? {
        ProcFSState.isAlive(container.pid1) ? nil : "the container's systemd (pid \(container.pid1)) is gone: \(tailOfFile(container.work + "/console.log", maxLines: 4))"
    }

    private func journal() -> [String] {
        container.ct(["journalctl", "--no-pager", "-o", "cat", "-u", unit]).output.split(separator: "\n").map(String.init)
    }

    func beforeFault(rep: Int) {
        journalLines = journal().count
    }

    /// The kernel's core in the unit's directory, and what the journal says about the unit since the fault.
    func evidence(rep: Int, oldPid: Int32, faultAtUnixMs: Double, recovered: Bool) -> SessionEvidence {
        var lines: [String] = []
        // journald may lag the restart by a moment.
        for _ in 0..<20 {
            lines = Array(journal().dropFirst(journalLines))
            if lines.contains(where: { $0.contains("Watchdog timeout") }) && lines.contains(where: { $0.contains("result 'watchdog'") }) { break }
            sleepMs(100)
        }
        let watchdog = lines.first { $0.contains("Watchdog timeout") }
        let exited = lines.first { $0.contains("Main process exited") }
        let result = lines.first { $0.contains("Failed with result") }
        let record = [watchdog, exited, result].compactMap { $0 }.joined(separator: " / ")
        let cores = ((try? FileManager.default.contentsOfDirectory(atPath: coresHere)) ?? []).filter { $0.hasPrefix("core") }.sorted()
        let core = cores.last.map { "\(coresHere)/\($0)" }
        let shown = core.map { c -> String in
            // Keep the name apart per repetition (core_uses_pid=0 names every one of them "core").
            let renamed = "\(coresHere)/rep\(rep)-\((c as NSString).lastPathComponent)"
            return rename(c, renamed) == 0 ? renamed : c
        }
        return SessionEvidence(corePath: shown, coreNote: shown == nil ? "no core file in the unit's WorkingDirectory" : nil,
                               recorded: watchdog != nil, record: record.isEmpty ? "no journal line for \(unit) since the fault" : "journal: " + record)
    }

    func restartHungInstance(oldPid: Int32) {
        // Restart=on-watchdog does not cover a kill by someone else: restart the unit instead.
        _ = container.ct(["systemctl", "restart", unit], timeoutMs: 60_000)
    }

    func stop() -> [String] {
        var problems: [String] = []
        // Before the stop: a manual start or stop resets the counter.
        if let restarts = container.ct(["systemctl", "show", "-p", "NRestarts", "--value", unit]).output
            .split(separator: "\n").first {
            notes.append("\(id.rawValue): systemd counted NRestarts=\(restarts) for \(unit)")
        }
        for u in [unit] + (socketUnit.map { [$0] } ?? []) {
            let r = container.ct(["systemctl", "stop", u], timeoutMs: 60_000)
            if r.status != .exited(code: 0) { problems.append("systemctl stop \(u): \(r.output.suffix(200))") }
        }
        return problems
    }
}
