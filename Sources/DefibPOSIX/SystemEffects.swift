import DefibCore
import Foundation
import Glibc

/// The supervisor's effects on a real Linux system: every syscall, file and helper process the loop needs
/// (the store behind `IncidentPersistence`). Single-threaded: the thread that calls `spawn` must be the
/// supervisor's own, long-lived one (PR_SET_PDEATHSIG follows the spawning thread).
public final class SystemEffects: SupervisorEffects {
    let config: SupervisorConfig
    let store: any IncidentPersistence
    let signals: SignalQueue
    /// Descriptors passed to every instance (LISTEN_FDS), bound once by the caller.
    let passedSockets: [(name: String, fd: Int32)]
    /// The NOTIFY_SOCKET served to the instance.
    let notifyServer: NotifyServer
    /// The checked directories and where the service's files go.
    let directories: ServiceDirectories
    /// The service's cgroup: each instance gets a leaf of it (nil: process groups and the subreaper only).
    let cgroup: ServiceCgroup?
    /// Processes that were already our children when supervision began.
    public let childrenBeforeUs: Set<Int32>
    /// The service manager's watchdog period for us (WATCHDOG_USEC), when it watches us.
    public let managerWatchdogUsec: UInt64?
    /// A service manager listens (NOTIFY_SOCKET is set).
    public let managerListening: Bool
    /// Our stderr is the journal's stream (systemd started us with StandardError=journal).
    public let underJournald: Bool
    /// This host's name, for the cores' journal entries.
    public let hostname: String?
    /// The fleet shipper working beside the loop, when one runs.
    let shipping: (any ShippingReporter)?
    /// What setting up did not manage but the supervision survives (for the log).
    public private(set) var warnings: [String] = []

    var child: ChildProcess?
    /// The hung instance frozen for its core while its replacement runs (killed once the core is written), and
    /// its core's writer.
    var frozenInstance: ChildProcess?
    var frozenCore: FrozenCoreJob?
    /// The frozen instance's cgroup leaf (its own: the replacement gets a new one), killed and removed with it.
    var frozenCgroup: InstanceCgroup?
    /// The live instance's cgroup leaf, and the leaves of instances that ended, until their leftovers are killed.
    var childCgroup: InstanceCgroup?
    var endedCgroups: [Int32: InstanceCgroup] = [:]
    var helpers: [Int32: ChildProcess] = [:]
    var ping: (token: UInt64, request: ControlRequest)?
    var locksQuery: ControlRequest?
    /// A cgroup leaf could not be made for an instance: said once.
    var leafFailureLogged = false
    /// Where a problem found while supervising goes (the supervisor's log), when it does not stop anything.
    public var onWarning: (@Sendable (String) -> Void)?
    /// The probe that is the heartbeat (resolved once, at start-up), and its attempt in flight.
    let probe: ResolvedProbe?
    var probeAttempt: (token: UInt64, attempt: any ProbeAttempt)?

    /// Blocks the signals the supervisor handles and returns their queue. Call it first thing, before any
    /// library starts a thread: a thread that does not block SIGTERM would take its default action.
    public static func takeOverSignals() throws -> SignalQueue {
        _ = Glibc.signal(SIGPIPE, SIG_IGN)
        return try SignalQueue(signals: [SIGCHLD, SIGTERM, SIGINT, SIGHUP])
    }

    /// Becomes our descendants' subreaper and, in the checked `directories`, makes the link to a control
    /// socket kept elsewhere (or in the instance directory) and the NOTIFY_SOCKET. Without `directories`
    /// (tests, tools), they are opened here for a service running as defib's user.
    public init(config: SupervisorConfig, store: any IncidentPersistence, signals: SignalQueue,
                passedSockets: [(name: String, fd: Int32)] = [], probe: ResolvedProbe? = nil,
                shipping: (any ShippingReporter)? = nil, directories: ServiceDirectories? = nil, cgroup: ServiceCgroup? = nil) throws {
        self.config = config
        self.probe = probe
        self.store = store
        self.shipping = shipping
        self.signals = signals
        self.passedSockets = passedSockets
        self.cgroup = cgroup
        childrenBeforeUs = Set(childProcesses(of: getpid()))
        managerWatchdogUsec = SystemdNotifier.watchdogUsec()
        managerListening = SystemdNotifier.isEnabled
        underJournald = Journald.stderrIsJournal
        hostname = CoredumpJournal.hostname()
        try becomeChildSubreaper()
        let directories = try directories ?? ServiceDirectories.open(config, credentials: nil)
        self.directories = directories
        warnings += directories.warnings
        let run = directories.run
        let runDirectory = run.path
        let controlSocket = directories.paths.controlSocket
        if controlSocket != runDirectory + "/control.sock" {
            // A control socket elsewhere (or in the instance directory): `defib ctl` finds it through a link
            // in the run directory. A directory elsewhere is made (0700) only if missing — never chmod'ed, it
            // may be shared (/run, /tmp).
            let target: String
            if let instance = directories.paths.instanceDirectory, controlSocket.hasPrefix(instance + "/") {
                target = "instance/" + controlSocket.dropFirst(instance.count + 1)
            } else {
                let dir = Self.parentDirectory(controlSocket)
                if access(dir, F_OK) != 0 { try makeDirectory(dir, mode: 0o700) }
                target = controlSocket
            }
            unlinkat(run.fd, "control.sock", 0)
            if symlinkat(target, run.fd, "control.sock") != 0 { throw SystemError("symlink(\(target), \(runDirectory)/control.sock)") }
        }
        // Writable by any local user, like systemd's: a daemon that drops its privileges by itself still
        // reaches it, and what it says counts only when the sender's pid is the service's.
        notifyServer = try NotifyServer(path: directories.paths.notifySocket, mode: 0o666)
        // Who supervises this service: `defib ctl` picks among live supervisors, not among sockets (a service
        // that is restarting has none for a moment, and a line meant for it must not go to another one).
        // The file also records our PID namespace, so `defib ctl` on the host finds a defib that is a container's
        // PID 1 (SupervisorPidFile). Written without following a link planted in the run directory.
        do { try SupervisorPidFile.write(runDirectory: runDirectory) } catch {
            warnings.append("could not write \(runDirectory)/\(SupervisorPidFile.fileName): \(error); defib ctl will fall back to probing sockets")
        }
    }

    static func parentDirectory(_ path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        return slash == path.startIndex ? "/" : String(path[..<slash])
    }

    public func now() -> Instant { Instant(mono: MonoTime(nanoseconds: monotonicNanoseconds()), wall: Date()) }

    // MARK: waiting

    public func wait(until deadline: MonoTime?) -> [SupervisorEvent] {
        var fds = [pollfd(fd: signals.fd, events: Int16(POLLIN), revents: 0), pollfd(fd: notifyServer.fd, events: Int16(POLLIN), revents: 0)]
        if let ping { fds.append(pollfd(fd: ping.request.fd, events: Int16(POLLIN), revents: 0)) }
        if let locksQuery { fds.append(pollfd(fd: locksQuery.fd, events: Int16(POLLIN), revents: 0)) }
        if let (_, attempt) = probeAttempt { fds.append(pollfd(fd: attempt.fd, events: attempt.pollEvents, revents: 0)) }
        if let job = frozenCore, job.readFD >= 0 { fds.append(pollfd(fd: job.readFD, events: Int16(POLLIN), revents: 0)) }
        var timeoutMs: Int32 = 1000
        if let deadline {
            // Rounded up, so the loop sleeps until the deadline rather than spinning through its last millisecond.
            timeoutMs = min(timeoutMs, Int32(clamping: max(0, (deadline.nanoseconds - monotonicNanoseconds() + 999_999) / 1_000_000)))
        }
        _ = poll(&fds, nfds_t(fds.count), timeoutMs)

        var events: [SupervisorEvent] = []
        for sig in signals.drain() {
            if sig == SIGCHLD { reap(into: &events) } else { events.append(.signal(sig)) }
        }
        reap(into: &events)  // a SIGCHLD can be merged with one already drained
        events += frozenCoreEvents()
        for message in notifyServer.receiveAll() {
            var notify = NotifyMessage(pid: message.pid, text: message.text, truncated: message.truncated)
            if config.heartbeat.notifyAccess == .all, let child, message.pid != child.pid {
                notify.senderInInstance = isInInstance(message.pid, mainPID: child.pid)
            }
            events.append(.notify(notify))
        }
        if let (token, request) = ping {
            switch request.readAvailable() {
            case .pending: break
            case let .reply(line): cancelPing(); events.append(.pingReply(token: token, line: line))
            case let .failed(problem): cancelPing(); events.append(.pingFailed(token: token, problem: problem))
            }
        }
        if let request = locksQuery {
            switch request.readAvailable() {
            case .pending: break
            case let .reply(line): cancelLocksQuery(); events.append(.locksReply(line))
            case let .failed(problem): cancelLocksQuery(); events.append(.locksFailed(problem))
            }
        }
        if let (token, attempt) = probeAttempt {
            let progress = attempt.readAvailable()
            if progress != .pending {
                probeAttempt = nil
                events.append(.probeResult(token: token, progress))
            }
        }
        return events
    }

    /// Every child that has ended: the instance, helpers, and orphans re-parented to us. Their pidfds close
    /// here, before anyone could signal a recycled pid.
    private func reap(into events: inout [SupervisorEvent]) {
        // A running exec probe reaps its own command through its pidfd (it kills the command's group first,
        // which is safe only while the leader is unreaped).
        for reaped in reapAll(sparing: Set([probeAttempt?.attempt.sparedPID].compactMap { $0 })) {
            if let child, child.pid == reaped.pid {
                child.closePidfd()
                instanceEnded(reaped.pid)
                if frozenInstance?.pid == reaped.pid { frozenInstance = nil }
            } else if let frozen = frozenInstance, frozen.pid == reaped.pid {
                frozen.closePidfd()
                frozenInstance = nil
                frozenEnded()
            } else if let helper = helpers.removeValue(forKey: reaped.pid) {
                helper.closePidfd()
            }
            events.append(.childExited(pid: reaped.pid, status: reaped.status))
        }
    }

    // MARK: the service

    /// Starts an instance: as the service's user when it has one (its instance directory made anew first),
    /// in a cgroup leaf of its own when the service has a cgroup (joined by the child before exec, so all it
    /// ever starts is in it).
    public func spawn(_ plan: SpawnPlan) -> SupervisorEvent {
        // Replacing an instance kept frozen for its core: it keeps its own leaf (killed with it), the new one gets one.
        if let frozen = frozenInstance, frozen.pid == child?.pid {
            frozenCgroup = childCgroup
            childCgroup = nil
            child = nil
        }
        do { try directories.prepareInstance() } catch { return .spawnFailed("\(error)") }
        if let stale = plan.removeFirst { unlink(stale) }
        var env = helperEnvironment()
        let credentials = directories.credentials
        // USER, LOGNAME, HOME and SHELL of the service's user, as systemd's User= gives them; the config's wins.
        for (key, value) in credentials?.environment ?? [:] { env[key] = value }
        for (key, value) in plan.environmentDefaults where env[key] == nil { env[key] = value }
        for (key, value) in plan.environment { env[key] = value }
        var request = SpawnRequest(argv: plan.argv, environment: env, workingDirectory: plan.workingDirectory)
        request.passFDs = passedSockets.map(\.fd)
        request.passFDNames = passedSockets.map(\.name)
        request.credentials = credentials
        var leaf: InstanceCgroup?
        if let cgroup {
            do {
                leaf = try cgroup.newInstance()
                request.cgroupProcsFD = leaf?.procsFD ?? -1
                request.cgroupDirFD = leaf?.directoryFD ?? -1
            } catch {
                if !leafFailureLogged { onWarning?("instance cgroup: \(error); instances run in the service's process group only") }
                leafFailureLogged = true
            }
        }
        do {
            let started = try spawnProcess(request)
            child = started
            leaf?.closeProcsFD()
            childCgroup = leaf
            // It has exec'd (spawnProcess returns after that) and is not reaped before we are: its pid is its own.
            return .spawned(pid: started.pid, executable: started.executable, process: ProcessIdentity.read(pid: started.pid))
        } catch {
            leaf?.remove()
            return .spawnFailed("\(error)")
        }
    }

    /// A signal to the instance (its pidfd) and everything in it: its cgroup leaf (`cgroup.kill` for SIGKILL,
    /// each member otherwise), its process group and — SIGKILL — every descendant that left the group (listed
    /// before the main process dies, while they are still its descendants; what matters without a cgroup).
    public func signal(pid: Int32, signal: Int32) {
        // The instance, or a hung one kept frozen beside it while its core is written (its leaf is its own).
        let target: (child: ChildProcess, leaf: InstanceCgroup?)
        if let child, child.pid == pid { target = (child, childCgroup) }
        else if let frozen = frozenInstance, frozen.pid == pid { target = (frozen, frozenCgroup) }
        else { return }
        let child = target.child
        let strays = signal == SIGKILL ? ServiceProcesses.openDescendants(of: pid) : []
        try? child.signal(signal)
        child.signalGroup(signal)
        if let leaf = target.leaf {
            if signal == SIGKILL { leaf.killNow() } else { leaf.signalMembers(signal) }
        }
        for stray in strays { stray.kill(signal) }
    }

    /// What the ended instance `pid` left: everything still in its cgroup leaf (killed with `cgroup.kill`, the
    /// leaf then removed) and our children that are not `sparing`'s (re-parented to us, the subreaper).
    public func killLeftovers(of pid: Int32, sparing: Set<Int32>) -> [KilledProcess] {
        var killed: [KilledProcess] = []
        if let leaf = endedCgroups.removeValue(forKey: pid) {
            let members = leaf.members().filter { !sparing.contains($0) && $0 != child?.pid && $0 != frozenInstance?.pid && helpers[$0] == nil }
            let names = members.map { KilledProcess(pid: $0, name: processName($0)) }
            if !members.isEmpty || ServiceCgroup.populated(leaf.path) {
                // Bounded: SIGKILL'ed processes go at once; one in uninterruptible sleep keeps its leaf, which the
                // service cgroup's removal at exit takes care of.
                leaf.kill(waitMs: 1000)
            }
            killed += names
            leaf.remove()
        }
        let named = Set(killed.map(\.pid))
        let probePID = probeAttempt?.attempt.sparedPID
        for leftover in childProcesses(of: getpid())
        where !sparing.contains(leftover) && leftover != child?.pid && leftover != frozenInstance?.pid && helpers[leftover] == nil && leftover != probePID {
            let name = processName(leftover)
            if killProcess(leftover), !named.contains(leftover) { killed.append(KilledProcess(pid: leftover, name: name)) }
        }
        return killed
    }

    /// The instance `pid` was reaped: its leaf waits for `killLeftovers`.
    func instanceEnded(_ pid: Int32) {
        child = nil
        if let leaf = childCgroup { endedCgroups[pid] = leaf }
        childCgroup = nil
    }

    /// Whether `pid` belongs to the instance whose main process is `mainPID`: in its cgroup leaf, or below it
    /// in the process tree (a worker, a re-exec'd self).
    func isInInstance(_ pid: Int32, mainPID: Int32) -> Bool {
        if let leaf = childCgroup, let own = readTextFile("/proc/\(pid)/cgroup"),
           let line = own.split(separator: "\n").first(where: { $0.hasPrefix("0::") }) {
            let path = String(line.dropFirst(3))
            if path == leaf.cgroupPath || path.hasPrefix(leaf.cgroupPath + "/") { return true }
        }
        var current = pid
        for _ in 0..<64 {
            guard let text = readTextFile("/proc/\(current)/stat"), let parent = ProcParse.parentPID(text), parent > 1 else { return false }
            if parent == mainPID { return true }
            current = parent
        }
        return false
    }

    // MARK: the control channel

    public func sendPing(token: UInt64) -> String? {
        cancelPing()
        switch ControlRequest.start(path: directories.paths.controlSocket, line: "ping \(token)", noFollow: directories.paths.instanceDirectory != nil) {
        case let .success(request): ping = (token, request); return nil
        case let .failure(error): return error.problem
        }
    }

    public func cancelPing() {
        ping?.request.close()
        ping = nil
    }

    public func queryLocks() -> String? {
        cancelLocksQuery()
        switch ControlRequest.start(path: directories.paths.controlSocket, line: "locks", noFollow: directories.paths.instanceDirectory != nil) {
        case let .success(request): locksQuery = request; return nil
        case let .failure(error): return "\(error)"
        }
    }

    public func cancelLocksQuery() {
        locksQuery?.close()
        locksQuery = nil
    }

    // MARK: probes

    public func startProbe(token: UInt64) -> ProbeFailure? {
        cancelProbe()
        guard let probe else { return .couldNotStart("no probe is configured") }
        switch probe.start() {
        case let .success(attempt):
            probeAttempt = (token, attempt)
            return nil
        case let .failure(failure):
            return failure
        }
    }

    public func timeOutProbe(token: UInt64) -> ProbeFailure? {
        guard let (running, attempt) = probeAttempt, running == token else { return nil }
        probeAttempt = nil
        // An exec probe's group is killed; a leader not dead yet is left to the reaper (it is no longer spared).
        return attempt.timedOut()
    }

    public func cancelProbe() {
        probeAttempt?.attempt.cancel()
        probeAttempt = nil
    }

    // MARK: the store and the service manager

    public func insert(_ incident: Incident) -> Result<Int64, EffectFailure> {
        do { return .success(try store.insert(incident)) } catch { return .failure(Self.failure(error)) }
    }

    public func update(_ incident: Incident) -> EffectFailure? {
        do { try store.update(incident); return nil } catch { return Self.failure(error) }
    }

    /// The store's error, saying whether the write may succeed later (a full disk, an I/O error, a busy database).
    static func failure(_ error: any Error) -> EffectFailure {
        EffectFailure("\(error)", retryLater: (error as? any RetryableError)?.retryLater ?? false)
    }

    public func recordCoreRemoved(incidentID: Int64, note: String) -> EffectFailure? {
        do { try store.recordCoreRemoved(id: incidentID, note: note); return nil } catch { return EffectFailure("\(error)") }
    }

    public func notifyManager(_ state: String) { SystemdNotifier.notify(state) }

    public func announceCore(_ fields: [JournalField]) -> EffectFailure? { CoredumpJournal.send(fields).map { EffectFailure($0) } }
    public func shippingReport() -> ShippingReport? { shipping?.shippingReport }
}
