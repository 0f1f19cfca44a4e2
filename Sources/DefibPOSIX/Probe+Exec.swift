import CDefibShims
import DefibCore
import Glibc

/// An exec probe attempt: the command runs with a clean environment, in its own session and process group,
/// stdin from /dev/null, stdout and stderr into a pipe (the last of it kept for the miss detail). Exit 0 is a
/// beat. Its end is learnt through its pidfd; `fd` is an epoll descriptor over the pidfd and the pipe, so one
/// descriptor wakes the loop for either.
///
/// Reaping: the attempt reaps its own command (waitid on the pidfd) after killing whatever is left in its
/// process group — that kill is safe only while the leader is unreaped, so the loop's reaper must spare
/// `sparedPID` (`reapAll(sparing:)`). After a timeout the group is SIGKILLed and the attempt hands the leader
/// over: `sparedPID` becomes nil, and the loop's reaper collects it when it dies.
public final class ExecProbe: ProbeAttempt {
    /// The probe's PATH: systemd's default for services, not defib's (a clean environment).
    public static let searchPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

    private enum Stage { case running, done(ProbeProgress) }

    private let child: ChildProcess
    private let output: Int32
    public let fd: Int32
    private let timeoutMs: Int
    private var tail: [UInt8] = []
    private var stage: Stage = .running
    private var reaped = false

    private init(child: ChildProcess, output: Int32, epoll: Int32, timeoutMs: Int) {
        self.child = child; self.output = output; fd = epoll; self.timeoutMs = timeoutMs
    }

    deinit {
        if case .running = stage { cancel() }
        close(fd)
        close(output)
        child.closePidfd()
    }

    /// The environment a probe command gets: PATH and, when it runs as a user, that user's USER/LOGNAME/HOME/SHELL.
    public static func environment(credentials: ProcessCredentials?) -> [String: String] {
        var env = ["PATH": searchPath, "LANG": "C.UTF-8"]
        for (k, v) in credentials?.environment ?? [:] { env[k] = v }
        return env
    }

    /// Starts `argv` (no shell), as `credentials` when given. `timeoutMs` is the limit the loop enforces.
    public static func start(argv: [String], credentials: ProcessCredentials?, timeoutMs: Int) -> Result<ExecProbe, ProbeFailure> {
        var pipeFDs: [Int32] = [-1, -1]
        if defib_probe_pipe(&pipeFDs) != 0 { return .failure(.couldNotStart(SystemError("pipe2").description)) }
        var request = SpawnRequest(argv: argv, environment: environment(credentials: credentials), workingDirectory: "/")
        request.stdinFromDevNull = true
        request.stdoutFD = pipeFDs[1]
        request.stderrFD = pipeFDs[1]
        request.newSession = true
        request.credentials = credentials
        let child: ChildProcess
        do { child = try spawnProcess(request) } catch {
            close(pipeFDs[0]); close(pipeFDs[1])
            return .failure(.couldNotStart("\(error)"))
        }
        close(pipeFDs[1])
        let epoll = defib_epoll_create()
        if epoll < 0 || defib_epoll_add(epoll, child.pidfd) != 0 || defib_epoll_add(epoll, pipeFDs[0]) != 0 {
            let e = SystemError("epoll")
            child.signalGroup(SIGKILL)
            _ = waitForChild(child, timeoutMs: 2000)
            child.closePidfd()
            if epoll >= 0 { close(epoll) }
            close(pipeFDs[0])
            return .failure(.couldNotStart(e.description))
        }
        return .success(ExecProbe(child: child, output: pipeFDs[0], epoll: epoll, timeoutMs: timeoutMs))
    }

    /// The command's pid (its process group's id).
    public var pid: Int32 { child.pid }
    public var pollEvents: Int16 { Int16(POLLIN) }
    public var sparedPID: Int32? {
        if case .running = stage { return child.pid }
        return nil
    }

    public func readAvailable() -> ProbeProgress {
        if case let .done(verdict) = stage { return verdict }
        drainOutput()
        var exited: Int32 = 0, code: Int32 = 0, signaled: Int32 = 0, sig: Int32 = 0
        let peek = defib_pidfd_wait(child.pidfd, 1, &exited, &code, &signaled, &sig)
        if peek == 0 { return .pending }
        if peek < 0 {
            let e = SystemError("waitid(P_PIDFD, \(child.pid))")
            child.closePidfd()
            return finish(.miss(.couldNotStart(errno == ECHILD ? "\(e) — reaped by someone else: the loop's reaper must spare the probe" : e.description)))
        }
        // The leader has ended and is not reaped yet, so its group id cannot belong to anyone else: clear out what
        // it left running in its group, then reap it.
        child.signalGroup(SIGKILL)
        _ = defib_pidfd_wait(child.pidfd, 0, &exited, &code, &signaled, &sig)
        reaped = true
        child.closePidfd()
        drainOutput()
        if exited != 0 && code == 0 { return finish(.beat) }
        let last = lastOutputLine()
        return finish(.miss(exited != 0 ? .exited(code: code, output: last) : .signaled(signal: sig, output: last)))
    }

    public func timedOut() -> ProbeFailure {
        if case let .done(.miss(f)) = stage { return f }
        drainOutput()
        let last = lastOutputLine()
        killGroup()
        let failure = ProbeFailure.timedOut(afterMs: timeoutMs, stage: "with the command still running (pid \(child.pid); killed with its process group)"
                                            + (last.map { "; last output: \($0)" } ?? ""))
        stage = .done(.miss(failure))
        return failure
    }

    public func cancel() {
        if case .done = stage { return }
        killGroup()
        stage = .done(.miss(.couldNotStart("cancelled")))
    }

    /// Kills the group (the leader is unreaped, so its group id is still its own) and reaps the leader if it is
    /// already gone; otherwise the loop's reaper takes it.
    private func killGroup() {
        child.signalGroup(SIGKILL)
        var exited: Int32 = 0, code: Int32 = 0, signaled: Int32 = 0, sig: Int32 = 0
        if defib_pidfd_wait(child.pidfd, 0, &exited, &code, &signaled, &sig) == 1 { reaped = true }
        child.closePidfd()
    }

    /// For blocking callers without a reaper of their own (`ResolvedProbe.runOnce`, tests): waits up to
    /// `timeoutMs` for the killed command to be reaped. True when it is.
    @discardableResult
    public func awaitReaped(timeoutMs: Int) -> Bool {
        if reaped { return true }
        let deadline = monotonicNanoseconds() + Int64(timeoutMs) * 1_000_000
        while monotonicNanoseconds() < deadline {
            var exited: Int32 = 0, code: Int32 = 0, signaled: Int32 = 0, sig: Int32 = 0, core: Int32 = 0
            let r = defib_reap_pid(child.pid, &exited, &code, &signaled, &sig, &core)
            if r == child.pid || (r < 0 && errno == ECHILD) { reaped = true; return true }
            usleep(5000)
        }
        return false
    }

    /// Reads what the command wrote, keeping the last `ProbeLimits.outputBytes` (the rest is dropped so the
    /// command never blocks on a full pipe).
    private func drainOutput() {
        var chunk = [UInt8](repeating: 0, count: 16384)
        for _ in 0..<64 {
            let n = chunk.withUnsafeMutableBytes { read(output, $0.baseAddress, $0.count) }
            if n <= 0 { if n < 0 && errno == EINTR { continue }; return }
            tail += chunk[0..<n]
            if tail.count > ProbeLimits.outputBytes { tail.removeFirst(tail.count - ProbeLimits.outputBytes) }
        }
    }

    private func lastOutputLine() -> String? {
        let text = String(decoding: tail, as: UTF8.self)
        guard let line = text.split(whereSeparator: { $0 == "\n" || $0 == "\r" }).last(where: { !$0.allSatisfy(\.isWhitespace) }) else { return nil }
        return ProbeFailure.clip(String(line), max: 200)
    }

    private func finish(_ verdict: ProbeProgress) -> ProbeProgress {
        stage = .done(verdict)
        return verdict
    }
}

/// Reaps every ended child except `spared` (children whose owner reaps them itself, such as a running exec
/// probe): ended children are looked at without reaping (waitid WNOWAIT) and reaped by pid. When the first ended
/// child is a spared one (waitid would show it again and again), the others are found through
/// /proc/self/task/*/children, which lists zombies too.
public func reapAll(sparing spared: Set<Int32>) -> [Reaped] {
    if spared.isEmpty { return reapAll() }
    return reapEnded(sparing: spared, peek: { defib_peek_ended_child() }, children: { childProcesses(of: getpid()) }) { pid in
        var exited: Int32 = 0, code: Int32 = 0, signaled: Int32 = 0, sig: Int32 = 0, core: Int32 = 0
        guard defib_reap_pid(pid, &exited, &code, &signaled, &sig, &core) == pid else { return nil }
        if exited != 0 { return .exited(code: code) }
        if signaled != 0 { return .signaled(signal: sig, coreDumped: core != 0) }
        return nil
    }
}

/// The logic of `reapAll(sparing:)` over its three operations: `peek` (an ended child's pid, 0 when none),
/// `children` (every child, ended or not), `reap` (reaps one pid if it has ended).
func reapEnded(sparing spared: Set<Int32>, peek: () -> Int32, children: () -> [Int32], reap: (Int32) -> ChildStatus?) -> [Reaped] {
    var out: [Reaped] = []
    while true {
        let pid = peek()
        if pid <= 0 { break }
        if spared.contains(pid) {
            for child in children() where !spared.contains(child) {
                if let status = reap(child) { out.append(Reaped(pid: child, status: status)) }
            }
            break
        }
        guard let status = reap(pid) else { break }
        out.append(Reaped(pid: pid, status: status))
    }
    return out
}
