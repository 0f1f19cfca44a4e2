import CDefibShims
import DefibCore
import Glibc
import Synchronization

/// What to start and how.
public struct SpawnRequest: Sendable {
    public var argv: [String]
    public var environment: [String: String]
    public var workingDirectory: String?
    /// Descriptors handed over as 3, 4, … with LISTEN_FDS/LISTEN_PID set.
    public var passFDs: [Int32] = []
    public var passFDNames: [String] = []
    /// SIGKILL the child if the spawning thread dies (spawn from one long-lived thread).
    public var parentDeathSignal: Int32 = SIGKILL
    public var newSession = true
    public var stdoutFD: Int32 = -1
    public var stderrFD: Int32 = -1
    public var stdinFromDevNull = false
    /// The child's uid, gid and supplementary groups, set after fork and before exec (then the parent-death
    /// signal, which a credential change clears); nil keeps defib's.
    public var credentials: ProcessCredentials?
    /// A cgroup.procs opened for writing (`InstanceCgroup.procsFD`): the child moves itself there before
    /// exec. -1: it stays in defib's cgroup.
    public var cgroupProcsFD: Int32 = -1
    /// The same cgroup's directory (`InstanceCgroup.directoryFD`): the child is born there (clone3
    /// CLONE_INTO_CGROUP) without the migration a write to cgroup.procs costs; `cgroupProcsFD` where the kernel refuses.
    public var cgroupDirFD: Int32 = -1

    public init(argv: [String], environment: [String: String], workingDirectory: String? = nil) {
        self.argv = argv; self.environment = environment; self.workingDirectory = workingDirectory
    }
}

/// A started child: its pid and a pidfd, so signals never reach a recycled pid.
///
/// Copies share one pidfd, closed at most once: a second `closePidfd()` (from a copy, or a cleanup that
/// runs twice) must not close a descriptor number some other thread has been given since — that other
/// descriptor might be another child's pidfd, and the next signal would go to the wrong process.
public struct ChildProcess: Sendable {
    public let pid: Int32
    /// The program actually executed.
    public let executable: String
    private let handle: PidFD

    /// The descriptor and whether it is closed, under one lock: a signal never races a close (another
    /// thread's `closePidfd()` cannot land between the check and the send).
    final class PidFD: Sendable {
        let fd: Int32
        let closed = Mutex<Bool>(false)
        init(_ fd: Int32) { self.fd = fd }
    }

    init(pid: Int32, pidfd: Int32, executable: String) {
        self.pid = pid; self.executable = executable; handle = PidFD(pidfd)
    }

    /// The pidfd (readable once the child has exited), or -1 once closed.
    public var pidfd: Int32 { handle.closed.withLock { $0 } ? -1 : handle.fd }

    /// Sends `signal` through the pidfd; ESRCH (already gone) is not an error. After `closePidfd()` nothing
    /// is sent (the child was reaped; its pid may be someone else's).
    public func signal(_ sig: Int32) throws {
        let failure: Int32? = handle.closed.withLock { closed in
            guard !closed else { return nil }
            return defib_pidfd_send_signal(handle.fd, sig) != 0 && errno != ESRCH ? errno : nil
        }
        if let failure { throw SystemError("pidfd_send_signal(\(pid), \(signalName(sig)))", errno: failure) }
    }

    /// Sends `signal` to the child's whole process group (it is its own session leader). Only while the child
    /// is unreaped (its pid, the group's id, cannot have been reused): callers signal before they reap.
    public func signalGroup(_ sig: Int32) {
        handle.closed.withLock { closed in
            if !closed { _ = Glibc.kill(-pid, sig) }
        }
    }

    /// Closes the pidfd, once, whichever copy asks.
    public func closePidfd() {
        handle.closed.withLock { closed in
            if !closed { closed = true; close(handle.fd) }
        }
    }
}

/// An exec failure, reported by the child before it exits.
public struct SpawnError: Error, CustomStringConvertible, Sendable {
    public var program: String
    public var stage: String
    public var errno: Int32
    public var description: String { "\(stage) \(program): \(String(cString: strerror(errno)))" }
}

/// Finds `name` in PATH the way execvp would (without calling it after fork).
public func resolveExecutable(_ name: String, path: String? = getenv("PATH").map { String(cString: $0) }) -> String? {
    if name.contains("/") { return access(name, X_OK) == 0 ? name : nil }
    for dir in (path ?? "/usr/local/bin:/usr/bin:/bin").split(separator: ":") {
        let candidate = "\(dir)/\(name)"
        var st = stat()
        if stat(candidate, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG, access(candidate, X_OK) == 0 { return candidate }
    }
    return nil
}

/// fork/exec through the C shim: own session, reset signals and mask, PDEATHSIG, fd passing, exec errors reported.
public func spawnProcess(_ request: SpawnRequest) throws -> ChildProcess {
    guard let program = request.argv.first, !program.isEmpty else {
        throw SpawnError(program: "(empty argv)", stage: "resolve", errno: ENOENT)
    }
    let envPath = request.environment["PATH"] ?? getenv("PATH").map { String(cString: $0) }
    guard let executable = resolveExecutable(program, path: envPath) else {
        // A path names one file (execve would say why it fails); a bare name is looked up in PATH.
        if program.contains("/") {
            throw SpawnError(program: program, stage: "execute", errno: access(program, F_OK) == 0 ? EACCES : ENOENT)
        }
        throw SpawnError(program: program, stage: "resolve in PATH", errno: ENOENT)
    }
    var env = request.environment
    env.removeValue(forKey: "LISTEN_PID")
    if !request.passFDs.isEmpty {
        env["LISTEN_FDS"] = String(request.passFDs.count)
        if !request.passFDNames.isEmpty { env["LISTEN_FDNAMES"] = request.passFDNames.joined(separator: ":") }
    } else {
        env.removeValue(forKey: "LISTEN_FDS"); env.removeValue(forKey: "LISTEN_FDNAMES")
    }
    // C strings that live until the call returns.
    var cStrings: [UnsafeMutablePointer<CChar>] = []
    defer { cStrings.forEach { free($0) } }
    func dup(_ s: String) -> UnsafeMutablePointer<CChar> { let p = strdup(s)!; cStrings.append(p); return p }
    let argv: [UnsafeMutablePointer<CChar>?] = request.argv.map { dup($0) } + [nil]
    var envp: [UnsafeMutablePointer<CChar>?] = env.sorted { $0.key < $1.key }.map { dup("\($0.key)=\($0.value)") }
    var listenSlot: UnsafeMutablePointer<CChar>? = nil
    if !request.passFDs.isEmpty {
        listenSlot = dup("LISTEN_PID=" + String(repeating: "0", count: 24))
        envp.append(listenSlot)
    }
    envp.append(nil)
    let path = dup(executable)
    let cwd = request.workingDirectory.map { dup($0) }
    var pid: pid_t = 0
    var err: Int32 = 0
    var stage: UnsafePointer<CChar>? = nil
    let ids = request.credentials
    let groups = ids?.groups ?? []
    let rc: Int32 = argv.withUnsafeBufferPointer { argvBuf in
        envp.withUnsafeBufferPointer { envBuf in
            request.passFDs.withUnsafeBufferPointer { fdBuf in
                groups.withUnsafeBufferPointer { groupBuf in
                    var attr = defib_spawn_attr(
                        path: path, argv: argvBuf.baseAddress, envp: envBuf.baseAddress, cwd: cwd,
                        fds: fdBuf.baseAddress, nfds: Int32(request.passFDs.count),
                        pdeathsig: request.parentDeathSignal, new_session: request.newSession ? 1 : 0,
                        listen_pid_slot: listenSlot, stdout_fd: request.stdoutFD, stderr_fd: request.stderrFD,
                        stdin_devnull: request.stdinFromDevNull ? 1 : 0,
                        set_ids: ids == nil ? 0 : 1, uid: ids?.uid ?? 0, gid: ids?.gid ?? 0,
                        groups: groupBuf.baseAddress, ngroups: Int32(groups.count), cgroup_procs_fd: request.cgroupProcsFD,
                        cgroup_dir_fd: request.cgroupDirFD)
                    return defib_spawn(&attr, &pid, &err, &stage)
                }
            }
        }
    }
    if rc != 0 {
        throw SpawnError(program: executable, stage: stage.map { String(cString: $0) } ?? "spawn", errno: err)
    }
    let pidfd = defib_pidfd_open(pid)
    if pidfd < 0 {
        let e = SystemError("pidfd_open(\(pid))")
        _ = Glibc.kill(pid, SIGKILL)
        throw e
    }
    return ChildProcess(pid: pid, pidfd: pidfd, executable: executable)
}

/// One reaped child.
public struct Reaped: Sendable, Equatable {
    public var pid: Int32
    public var status: ChildStatus
}

/// Reaps every child that has ended (waitpid(-1, WNOHANG)): the instance, helper tools, and orphans
/// re-parented to us as subreaper. Zombies never pile up.
public func reapAll() -> [Reaped] {
    var out: [Reaped] = []
    while true {
        var exited: Int32 = 0, code: Int32 = 0, signaled: Int32 = 0, sig: Int32 = 0, core: Int32 = 0
        let pid = defib_reap_any(&exited, &code, &signaled, &sig, &core)
        if pid <= 0 { break }
        if exited != 0 { out.append(Reaped(pid: pid, status: .exited(code: code))) }
        else if signaled != 0 { out.append(Reaped(pid: pid, status: .signaled(signal: sig, coreDumped: core != 0))) }
    }
    return out
}

/// Becomes the reaper of our descendants' orphans (PID 1 here reaps slowly).
public func becomeChildSubreaper() throws {
    if defib_set_child_subreaper() != 0 { throw SystemError("prctl(PR_SET_CHILD_SUBREAPER)") }
}

/// A signalfd for the supervisor's signals; they are blocked first, so call this before any thread starts.
public struct SignalQueue: Sendable {
    public let fd: Int32
    public init(signals: [Int32]) throws {
        let fd = signals.withUnsafeBufferPointer { defib_signalfd_block($0.baseAddress, Int32($0.count)) }
        if fd < 0 { throw SystemError("signalfd") }
        self.fd = fd
    }
    /// Pending signals, in order.
    public func drain() -> [Int32] {
        var out: [Int32] = []
        while true {
            let s = defib_signalfd_read(fd)
            if s <= 0 { break }
            out.append(s)
        }
        return out
    }
}

/// Waits for `pid` (a child that nobody else reaps) at most `timeoutMs`; nil when it is still running.
public func waitForChild(_ child: ChildProcess, timeoutMs: Int) -> ChildStatus? {
    let deadline = monotonicNanoseconds() + Int64(timeoutMs) * 1_000_000
    while true {
        var status: Int32 = 0
        let r = retryingEINTR { waitpid(child.pid, &status, WNOHANG | Int32(bitPattern: 0x4000_0000)) }
        if r == child.pid { return decodeWaitStatus(status) }
        if r < 0 { return .exited(code: -1) }
        let left = (deadline - monotonicNanoseconds()) / 1_000_000
        if left <= 0 { return nil }
        var pfd = pollfd(fd: child.pidfd, events: Int16(POLLIN), revents: 0)
        _ = poll(&pfd, 1, Int32(min(left, 100)))
    }
}

func decodeWaitStatus(_ status: Int32) -> ChildStatus {
    let sig = status & 0x7f
    if sig == 0 { return .exited(code: (status >> 8) & 0xff) }
    return .signaled(signal: sig, coreDumped: status & 0x80 != 0)
}
