import CDefibShims
import DefibChaos
import DefibCore
import DefibPOSIX
import Foundation
import Glibc

/// One supervisor running the proxy, as the repetitions see it. Each peer (defib, monit, systemd, supervisord)
/// implements it; the runner does the rest the same way for all of them.
/// A row's proxy as the runner reaches it.
struct PeerProxy {
    /// The proxy's HTTP port on 127.0.0.1.
    var port: Int
    /// The proxy's control socket (fault injection, pings), as a path on this machine.
    var controlSocket: String
    /// The proxy binary, for gdb.
    var binary: String

    /// A free loopback port, and the control socket in `directory`.
    static func inDirectory(_ directory: String, binary: String) throws -> PeerProxy {
        PeerProxy(port: try freeLoopbackPort(), controlSocket: directory + "/control.sock", binary: binary)
    }
}

extension PeerSession {
    var port: Int { proxy.port }
    var controlSocket: String { proxy.controlSocket }
    var proxyBinary: String { proxy.binary }
}

protocol PeerSession: AnyObject {
    /// The row.
    var id: PeerID { get }
    /// The supervised proxy: its port, control socket and binary.
    var proxy: PeerProxy { get }
    /// The supervisor's own processes, for its CPU and RSS.
    func supervisorProcesses() -> [(name: String, pid: Int32)]
    /// The heartbeat in words ("a ping every 100 ms").
    var heartbeat: String { get }
    /// The serving proxy instance (a pid in this machine's namespace), nil while there is none.
    func proxyPID() -> Int32?
    /// Non-nil once the supervisor itself has died (with its log's tail).
    func supervisorProblem() -> String?
    /// Waits (at most `timeoutMs`) until the supervisor is really watching the serving instance (monit pauses its tests
    /// after a start and acts only on a change of state); returns what it still waits for when the time is up.
    func waitWatching(timeoutMs: Int) -> String?
    /// Called right before the fault is injected (remember log offsets and the like).
    func beforeFault(rep: Int)
    /// What the supervisor left for the hang of `oldPid`: a core, a record. Waits (boundedly) for it to settle.
    func evidence(rep: Int, oldPid: Int32, faultAtUnixMs: Double, recovered: Bool) -> SessionEvidence
    /// Makes the hung instance go when the supervisor did not (supervisord): kills it by pid and lets the supervisor
    /// start a new one.
    func restartHungInstance(oldPid: Int32)
    /// Stops everything it started; returns problems met doing so.
    func stop() -> [String]
    /// Facts for the row's footnotes.
    var notes: [String] { get }
}

extension PeerSession {
    /// Watching from the first answered ping on: defib, systemd and supervisord need no wait.
    func waitWatching(timeoutMs: Int) -> String? { nil }
}

/// What a supervisor left behind for one hang.
struct SessionEvidence {
    var corePath: String?
    var coreNote: String?
    var recorded: Bool
    var record: String
}

/// Runs every row's repetitions the same way: load on, fault in, wait for the old instance to go and the first success
/// after that, then collect the supervisor's evidence.
struct PeerRunner {
    var settings: PeersSettings
    var workDirectory: String
    var warmupMs: Int
    var log: (String) -> Void

    /// The Host header the proxy routes to the backend.
    static let appHost = "app.test"

    /// A row: start its session, measure the supervisor's cost if asked, run the repetitions, stop it. With
    /// `freshSessionPerRep` every repetition gets a new session (`start(rep)`), so each hang is the supervisor's first.
    func run(_ id: PeerID, reps: Int, measureUsage: Bool, freshSessionPerRep: Bool = false, version: String, configuration: String,
             start: (Int) throws -> PeerSession) -> PeerResult {
        var result = PeerResult(id: id, status: "ok", reason: nil, version: version, configuration: configuration, reps: [], usage: nil)
        log("peers: \(id.rawValue): starting (\(version))")
        var session: PeerSession
        do { session = try start(0) } catch {
            result.status = "FAIL"
            result.reason = "could not start: \(error)"
            log("peers: \(id.rawValue): FAIL: \(result.reason!)")
            return result
        }
        func finish(_ s: PeerSession) {
            let problems = s.stop()
            if !problems.isEmpty {
                log("peers: \(id.rawValue): stopping: \(problems.joined(separator: "; "))")
                result.notes.append("stopping it: " + problems.joined(separator: "; "))
            }
            for n in s.notes where !result.notes.contains(n) { result.notes.append(n) }
            reapStrays()
        }
        do {
            let pid = try waitServing(session, timeoutMs: 60_000)
            log("peers: \(id.rawValue): proxy pid \(pid) serving on 127.0.0.1:\(session.port)")
            if measureUsage {
                result.usage = try self.measureUsage(session)
                if let u = result.usage {
                    log(String(format: "peers: \(id.rawValue): supervisor %.3f %% of one core, RSS %@ (%@)", u.cpuPercent,
                               formatBytes(u.rssEndBytes), u.processes.joined(separator: ", ")))
                }
            }
            for rep in 0..<reps {
                if freshSessionPerRep && rep > 0 {
                    finish(session)
                    session = try start(rep)
                    _ = try waitServing(session, timeoutMs: 60_000)
                }
                let r = try runRep(session, rep: rep)
                result.reps.append(r)
                let rec = r.window.recoveryMs.map { formatMs($0) } ?? "never within \(settings.boundSeconds) s"
                log("peers: \(id.rawValue) rep \(rep): hang → serving \(rec); refused \(r.window.refused), failed \(r.window.failed), "
                    + "timed out \(r.window.timedOut); core \(r.core.map { "\($0.gdbThreads) threads in gdb" } ?? (r.coreNote ?? "none")); "
                    + "recorded: \(r.recorded ? "yes" : "no")\(r.problems.isEmpty ? "" : "; problems: " + r.problems.joined(separator: "; "))")
            }
        } catch {
            result.status = "FAIL"
            result.reason = "\(error)"
            log("peers: \(id.rawValue): FAIL: \(error)")
        }
        finish(session)
        return result
    }

    /// Waits until the proxy answers a ping on its control socket and an HTTP request through it; returns its pid.
    func waitServing(_ session: PeerSession, timeoutMs: Int) throws -> Int32 {
        let deadline = monotonicNanoseconds() + Int64(timeoutMs) * 1_000_000
        var last = "no proxy instance yet"
        while monotonicNanoseconds() < deadline {
            reapStrays()
            if let problem = session.supervisorProblem() { throw BenchError(kind: .startup, message: problem) }
            if let pid = session.proxyPID() {
                switch ControlRequest.roundTrip(path: session.controlSocket, line: "ping bench", timeoutMs: 1000) {
                case .success("pong bench"):
                    let status = httpGetStatus(port: session.port, host: Self.appHost, timeoutMs: 2000)
                    if status == 200 { return pid }
                    last = "pid \(pid) answers ping but HTTP to 127.0.0.1:\(session.port) gave \(status.map { "status \($0)" } ?? "no response")"
                case let .success(other): last = "pid \(pid) answered '\(other)' to 'ping bench'"
                case let .failure(e): last = "pid \(pid): \(e)"
                }
            }
            sleepMs(20)
        }
        throw BenchError(kind: .startup, message: "the proxy was not serving within \(timeoutMs) ms: \(last)")
    }

    /// One repetition.
    func runRep(_ session: PeerSession, rep: Int) throws -> RepResult {
        _ = try waitServing(session, timeoutMs: 30_000)
        var problems: [String] = []
        if let waiting = session.waitWatching(timeoutMs: 20_000) { problems.append("fault injected anyway: \(waiting)") }
        let oldPid = try waitServing(session, timeoutMs: 30_000)
        let pidfd = defib_pidfd_open(oldPid)
        guard pidfd >= 0 else { throw BenchError(kind: .io, message: "\(SystemError("pidfd_open(\(oldPid))"))") }
        defer { close(pidfd) }
        let bound = Double(settings.boundSeconds) * 1000
        var config = LoadGenerator.Configuration(port: session.port, host: Self.appHost, ratePerSecond: settings.ratePerSecond,
                                                 timeoutMs: settings.requestTimeoutMs)
        config.maxDurationMs = Double(warmupMs) + bound + 10_000
        let generator = LoadGenerator.start(config)
        sleepMs(warmupMs)
        if generator.firstSuccess(completedAtOrAfter: generator.startUnixMs) == nil {
            problems.append("no request succeeded in the \(warmupMs) ms before the fault")
        }
        session.beforeFault(rep: rep)
        let faultAt = ChaosClock.nowUnixMs()
        let reply: String
        switch ControlRequest.roundTrip(path: session.controlSocket, line: "fault timeout-race", timeoutMs: 3000) {
        case let .success(r): reply = r
        case let .failure(e): reply = "no reply: \(e)"
        }
        if reply != "ok fault timeout-race armed" { problems.append("fault timeout-race: \(reply)") }
        var goneAt: Double?
        var recoveredAt: Double?
        while ChaosClock.nowUnixMs() < faultAt + bound {
            if goneAt == nil {
                var pfd = pollfd(fd: pidfd, events: Int16(POLLIN), revents: 0)
                if poll(&pfd, 1, 5) > 0 { goneAt = ChaosClock.nowUnixMs() }
            } else {
                sleepMs(5)
            }
            if let gone = goneAt, let ok = generator.firstSuccess(completedAtOrAfter: gone) {
                recoveredAt = ok
                break
            }
            reapStrays()
        }
        // A little more load after the recovery, so refusals right after it would show.
        if recoveredAt != nil { sleepMs(500) }
        var stillHung: String?
        if goneAt == nil {
            // The bound passed with the old instance alive: confirm it is hung, not serving.
            switch ControlRequest.roundTrip(path: session.controlSocket, line: "ping bench", timeoutMs: 1000) {
            case let .success(r): stillHung = "answered '\(r)' to a ping at the bound"
            case .failure: stillHung = nil
            }
        }
        let samples = generator.stop(drainMs: 1000)
        let window = RepWindow.evaluate(samples: samples, faultAtUnixMs: faultAt, oldGoneAtUnixMs: goneAt, boundMs: bound)
        if !window.hangShown {
            problems.append("the hang did not show: \(window.okWhileHung) of \(window.dueWhileHung) requests due from \(Int(RepWindow.hangGraceMs)) ms after the fault until the old instance's end succeeded")
        }
        if let s = stillHung { problems.append("pid \(oldPid) \(s)") }
        let evidence = session.evidence(rep: rep, oldPid: oldPid, faultAtUnixMs: faultAt, recovered: recoveredAt != nil)
        var result = RepResult(rep: rep, oldPid: oldPid, newPid: nil, faultReply: reply, faultAtUnixMs: faultAt,
                               oldGoneMs: goneAt.map { $0 - faultAt }, window: window, core: nil, coreNote: evidence.coreNote,
                               recorded: evidence.recorded, record: evidence.record, problems: problems)
        if let core = evidence.corePath {
            result.core = gdbCheck(binary: session.proxyBinary, core: core)
            // Checked: the file itself is not kept (a few hundred MB over a run).
            unlink(core)
        }
        if goneAt == nil {
            session.restartHungInstance(oldPid: oldPid)
        }
        result.newPid = try? waitServing(session, timeoutMs: 30_000)
        if result.newPid == nil { result.problems.append("no instance serving 30 s after the repetition") }
        return result
    }

    /// The supervisor's CPU (ns-precise process CPU clocks) and RSS over `settings.usageSeconds`, proxy healthy and idle.
    func measureUsage(_ session: PeerSession) throws -> SupervisorUsage {
        let procs = session.supervisorProcesses()
        guard !procs.isEmpty else { throw BenchError(kind: .startup, message: "no supervisor process to measure") }
        func cpu() throws -> Int64 {
            var total: Int64 = 0
            for p in procs {
                guard let ns = processCPUNanoseconds(p.pid) else {
                    throw BenchError(kind: .io, message: "clock_getcpuclockid(\(p.pid)) (\(p.name)): the process is gone")
                }
                total += ns
            }
            return total
        }
        func rss() -> Int64 { procs.reduce(0) { $0 + (ProcessStatus.read(pid: $1.pid)?.rssBytes ?? 0) } }
        log("peers: \(session.id.rawValue): measuring \(procs.map { "\($0.name) pid \($0.pid)" }.joined(separator: ", ")) for \(settings.usageSeconds) s")
        let t0 = monotonicNanoseconds()
        let c0 = try cpu()
        var samples = [rss()]
        for _ in 0..<settings.usageSeconds {
            sleepMs(1000)
            if let problem = session.supervisorProblem() { throw BenchError(kind: .startup, message: problem) }
            samples.append(rss())
            reapStrays()
        }
        let c1 = try cpu()
        let t1 = monotonicNanoseconds()
        return SupervisorUsage(processes: procs.map { "\($0.name) pid \($0.pid)" }, seconds: Double(t1 - t0) / 1e9, cpuNs: c1 - c0,
                               rssMaxBytes: samples.max() ?? 0, rssEndBytes: samples.last ?? 0, heartbeat: session.heartbeat)
    }

    /// `gdb -batch -ex 'info threads' BINARY CORE`: the threads it lists.
    func gdbCheck(binary: String, core: String) -> CoreEvidence {
        let bytes = fileSizes(core)?.size ?? 0
        let out = "\(workDirectory)/gdb-\(getpid()).out"
        defer { unlink(out) }
        guard let gdb = try? ManagedChild(name: "gdb", argv: ["gdb", "-batch", "-nx", "-ex", "info threads", binary, core],
                                          workingDirectory: workDirectory, logPath: out) else {
            return CoreEvidence(path: core, bytes: bytes, gdbThreads: 0, gdbDetail: "gdb could not be started")
        }
        let status = gdb.wait(timeoutMs: 120_000)
        gdb.stop()
        let text = readTextFile(out, maxBytes: 4 << 20) ?? ""
        let threads = countGdbThreads(text)
        // gdb's complaints about the core itself ("CORE: No such file", "is truncated", "not a core dump"), not the
        // missing source lines of the frame it prints.
        let complaint = text.split(separator: "\n").first { $0.hasPrefix(core) || $0.contains("not in executable format")
            || $0.contains("is truncated") || $0.contains("not a core dump") }
        let detail = (status.map { "gdb \(describe($0))" } ?? "gdb did not finish within 120 s") + (complaint.map { ": \($0)" } ?? "")
        return CoreEvidence(path: core, bytes: bytes, gdbThreads: threads, gdbDetail: detail)
    }
}

/// Process CPU time of `pid` (every thread, ended ones included) from its CPU clock, in ns; nil when it is gone.
func processCPUNanoseconds(_ pid: Int32) -> Int64? {
    var clock = clockid_t()
    guard clock_getcpuclockid(pid, &clock) == 0 else { return nil }
    var ts = timespec()
    guard clock_gettime(clock, &ts) == 0 else { return nil }
    return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
}

/// Reaps our children that are zombies and that nobody else waits for: the proxies monit's scripts started, re-parented
/// to us as subreaper. Children we spawned ourselves (ManagedChild) are waited for by their owners, so only processes we
/// did not spawn directly are reaped here: those whose parent-at-birth is gone are the orphans (their comm tells).
func reapStrays() {
    for pid in childProcesses(of: getpid()) {
        guard let stat = readTextFile("/proc/\(pid)/stat"), let close = stat.lastIndex(of: ")") else { continue }
        let name = processName(pid)
        let state = stat[stat.index(after: close)...].first { !$0.isWhitespace }
        // Only the proxy (orphaned by a start script) is ours to reap here; everything else has a waiting owner.
        guard state == "Z", name == "defib-proxy" else { continue }
        var status: Int32 = 0
        _ = waitpid(pid, &status, WNOHANG)
    }
}

/// Kills (SIGKILL, by pidfd) and reaps every defib-proxy that is our child: what a supervisor left running after it
/// stopped (orphans re-parented to us as subreaper). Returns what it killed.
@discardableResult
func killOrphanedProxies() -> [Int32] {
    var killed: [Int32] = []
    for pid in childProcesses(of: getpid()) where processName(pid) == "defib-proxy" {
        if killProcess(pid, signal: SIGKILL) { killed.append(pid) }
        var status: Int32 = 0
        for _ in 0..<100 {
            if waitpid(pid, &status, WNOHANG) != 0 { break }
            sleepMs(20)
        }
    }
    return killed
}

/// Runs a short tool to completion (stdout+stderr into a file): its status and output; nil status when it timed out
/// (it is killed then).
func runToolCapturing(_ argv: [String], workDirectory: String, timeoutMs: Int = 30_000,
                      environment: [String: String] = [:]) -> (status: ChildStatus?, output: String) {
    let out = "\(workDirectory)/tool-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).out"
    defer { unlink(out) }
    guard let child = try? ManagedChild(name: argv[0], argv: argv, workingDirectory: workDirectory, logPath: out,
                                        extraEnvironment: environment) else {
        return (.exited(code: 127), "\(argv[0]): could not be started")
    }
    let status = child.wait(timeoutMs: timeoutMs)
    child.stop()
    return (status, readTextFile(out, maxBytes: 8 << 20) ?? "")
}

/// How long ago `pid` started (its starttime in /proc/PID/stat against /proc/uptime), in ms; nil when it is gone.
func processAgeMs(_ pid: Int32) -> Double? {
    guard let stat = readTextFile("/proc/\(pid)/stat"), let close = stat.lastIndex(of: ")"),
          let uptime = readTextFile("/proc/uptime")?.split(separator: " ").first.flatMap({ Double($0) }) else { return nil }
    // Fields after the command name start at field 3 (state); starttime is field 22.
    let fields = stat[stat.index(after: close)...].split(separator: " ")
    guard fields.count > 19, let start = Double(fields[19]) else { return nil }
    return (uptime - start / Double(ProcSampler.ticksPerSecond)) * 1000
}
