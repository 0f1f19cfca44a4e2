/// How a child process ended. Data, not an error.
public enum ChildStatus: Equatable, Sendable {
    case exited(code: Int32)
    case signaled(signal: Int32, coreDumped: Bool)
}

/// Why the machine decided an instance has failed. The runtime turns it into an `IncidentCause`
/// (it knows the wall clock; the machine only knows monotonic time).
public enum FailureCause: Equatable, Sendable {
    case missedHeartbeat(misses: Int, msSinceLastPong: Double?, lastError: String?)
    case startTimeout(ms: Int, lastError: String?)
    case died(ChildStatus)
    case spawnFailed(message: String)
}

/// Something the runtime must do. The machine never performs I/O itself.
public enum SupervisorAction: Equatable, Sendable {
    /// Start a new instance, then report `spawned` or `spawnFailed`.
    case spawn
    /// Send `ping <token>` on the control channel, then report `pongReceived` or `pingFailed`.
    case sendPing(token: UInt64)
    /// The instance answered its first ping.
    case instanceReady(pid: Int32)
    /// Record a new incident (as open) before anything else happens to the process.
    case openIncident(FailureCause)
    /// Read the lock state and take a core of `pid` within the budget, then report `captureFinished`.
    case captureEvidence(pid: Int32)
    /// SIGKILL to the instance and its process group.
    case kill(pid: Int32)
    /// SIGTERM to the instance and its process group (supervisor shutdown).
    case terminate(pid: Int32)
    /// Add a line to the open incident.
    case noteIncident(String)
    /// The replacement was spawned.
    case incidentRestarted(newPid: Int32)
    /// Finish the open incident.
    case closeIncident(IncidentOutcome)
    /// Wait `delayMs` before the next start (informational; the machine's own timer does the waiting).
    case scheduleRestart(delayMs: Int)
    /// Stop the supervisor with this exit code.
    case exit(code: Int32)
}

/// The supervision policy: a pure, clock-injected state machine. Every method takes the current
/// monotonic time and returns the actions the runtime must perform; `nextWakeup` tells the runtime
/// when to call `tick(at:)`.
public struct SupervisorMachine: Sendable {
    /// Where the supervised service is in its life.
    public enum Phase: String, Equatable, Sendable {
        case idle, spawning, starting, running, capturing, stopping, backoff, gaveUp = "gave-up", shuttingDown = "shutting-down", stopped
    }

    /// The knobs the policy needs, in milliseconds.
    public struct Settings: Sendable, Equatable {
        public var intervalMs: Int
        public var deadlineMs: Int
        public var missesBeforeHang: Int
        public var startTimeoutMs: Int
        /// While waiting for the first pong, a refused connection is retried this often.
        public var startRetryMs: Int
        /// After SIGKILL, how long before we say so and send it again.
        public var killRetryMs: Int
        /// After SIGTERM at shutdown, how long before SIGKILL.
        public var stopTimeoutMs: Int
        public var backoff: Backoff
        public var intensity: RestartIntensity

        public init(intervalMs: Int, deadlineMs: Int, missesBeforeHang: Int, startTimeoutMs: Int, startRetryMs: Int = 25,
                    killRetryMs: Int = 5000, stopTimeoutMs: Int, backoff: Backoff, intensity: RestartIntensity) {
            self.intervalMs = intervalMs; self.deadlineMs = deadlineMs; self.missesBeforeHang = missesBeforeHang
            self.startTimeoutMs = startTimeoutMs; self.startRetryMs = startRetryMs; self.killRetryMs = killRetryMs
            self.stopTimeoutMs = stopTimeoutMs; self.backoff = backoff; self.intensity = intensity
        }

        public init(_ c: SupervisorConfig) {
            self.init(intervalMs: c.heartbeat.intervalMs, deadlineMs: c.heartbeat.deadlineMs,
                      missesBeforeHang: c.heartbeat.misses, startTimeoutMs: c.heartbeat.startTimeoutMs,
                      startRetryMs: min(25, c.heartbeat.intervalMs),
                      stopTimeoutMs: c.restart.stopTimeoutMs,
                      backoff: Backoff(initialMs: c.restart.backoffInitialMs, maxMs: c.restart.backoffMaxMs,
                                       multiplier: c.restart.backoffMultiplier, resetAfterMs: c.restart.backoffResetMs),
                      intensity: RestartIntensity(maxRestarts: c.restart.intensityMax, windowMs: c.restart.intensityWindowMs))
        }
    }

    public private(set) var phase: Phase = .idle
    public private(set) var settings: Settings
    /// The live instance's pid (nil when none is alive).
    public private(set) var pid: Int32?
    public private(set) var incidentOpen = false
    public private(set) var misses = 0
    public private(set) var restarts = 0

    private var instanceStartedAt: MonoTime?
    private var readyAt: MonoTime?
    private var lastPongAt: MonoTime?
    private var lastPingError: String?
    private var pingToken: UInt64 = 0
    private var pingDeadline: MonoTime?
    private var nextPingAt: MonoTime?
    private var backoffUntil: MonoTime?
    private var stopDeadline: MonoTime?
    private var exitedDuringCapture: ChildStatus?
    private var shutdownRequested = false

    public init(settings: Settings) { self.settings = settings }

    /// When the runtime must call `tick(at:)` next; nil = only on events.
    public var nextWakeup: MonoTime? {
        switch phase {
        case .starting:
            let start = instanceStartedAt.map { $0 + settings.startTimeoutMs }
            return [pingDeadline ?? nextPingAt, start].compactMap { $0 }.min()
        case .running: return pingDeadline ?? nextPingAt
        case .backoff: return backoffUntil
        case .stopping, .shuttingDown: return stopDeadline
        case .idle, .spawning, .capturing, .gaveUp, .stopped: return nil
        }
    }

    /// The ping currently awaited, if any.
    public var pingInFlight: UInt64? { pingDeadline == nil ? nil : pingToken }

    // MARK: events

    public mutating func start(at now: MonoTime) -> [SupervisorAction] {
        guard phase == .idle else { return [] }
        phase = .spawning
        return [.spawn]
    }

    public mutating func spawned(pid newPid: Int32, at now: MonoTime) -> [SupervisorAction] {
        guard phase == .spawning else { return [] }
        phase = .starting
        pid = newPid
        instanceStartedAt = now
        readyAt = nil
        misses = 0
        lastPongAt = nil
        lastPingError = nil
        pingDeadline = nil
        nextPingAt = now
        var actions: [SupervisorAction] = incidentOpen ? [.incidentRestarted(newPid: newPid)] : []
        if shutdownRequested {
            // Asked to stop while the spawn was under way: stop the new instance at once.
            phase = .shuttingDown
            stopDeadline = now + settings.stopTimeoutMs
            nextPingAt = nil
            return actions + [.terminate(pid: newPid)]
        }
        actions += pingIfDue(at: now)
        return actions
    }

    public mutating func spawnFailed(message: String, at now: MonoTime) -> [SupervisorAction] {
        guard phase == .spawning else { return [] }
        var actions: [SupervisorAction]
        if incidentOpen {
            actions = [.noteIncident("restart failed: \(message)")]
        } else {
            incidentOpen = true
            actions = [.openIncident(.spawnFailed(message: message))]
        }
        actions += afterInstanceGone(at: now)
        return actions
    }

    public mutating func tick(at now: MonoTime) -> [SupervisorAction] {
        switch phase {
        case .starting:
            if let started = instanceStartedAt, now >= started + settings.startTimeoutMs {
                return failInstance(.startTimeout(ms: settings.startTimeoutMs, lastError: lastPingError), at: now)
            }
            if let deadline = pingDeadline, now >= deadline {
                // Before the first pong an unanswered ping is only retried; the start timeout decides.
                pingDeadline = nil
                nextPingAt = now
            }
            return pingIfDue(at: now)
        case .running:
            if let deadline = pingDeadline, now >= deadline {
                return pingMissed(reason: "no reply within \(settings.deadlineMs) ms", at: now)
            }
            return pingIfDue(at: now)
        case .backoff:
            guard let until = backoffUntil, now >= until else { return [] }
            backoffUntil = nil
            phase = .spawning
            return [.spawn]
        case .stopping, .shuttingDown:
            guard let deadline = stopDeadline, now >= deadline, let pid else { return [] }
            stopDeadline = now + settings.killRetryMs
            let note: SupervisorAction = phase == .stopping
                ? .noteIncident("pid \(pid) still alive \(settings.killRetryMs) ms after SIGKILL; sending it again")
                : .noteIncident("pid \(pid) ignored SIGTERM for \(settings.stopTimeoutMs) ms; sending SIGKILL")
            return (incidentOpen ? [note] : []) + [.kill(pid: pid)]
        case .idle, .spawning, .capturing, .gaveUp, .stopped:
            return []
        }
    }

    public mutating func pongReceived(token: UInt64, at now: MonoTime) -> [SupervisorAction] {
        guard token == pingToken, pingDeadline != nil, phase == .starting || phase == .running, let pid else { return [] }
        pingDeadline = nil
        misses = 0
        lastPongAt = now
        lastPingError = nil
        nextPingAt = now + settings.intervalMs
        guard phase == .starting else { return [] }
        phase = .running
        readyAt = now
        var actions: [SupervisorAction] = [.instanceReady(pid: pid)]
        if incidentOpen {
            incidentOpen = false
            actions.append(.closeIncident(.recovered))
        }
        return actions
    }

    /// The ping got no valid answer: refused, closed, a wrong reply. `reason` names the problem.
    public mutating func pingFailed(token: UInt64, reason: String, at now: MonoTime) -> [SupervisorAction] {
        guard token == pingToken, pingDeadline != nil else { return [] }
        switch phase {
        case .starting:
            pingDeadline = nil
            lastPingError = reason
            nextPingAt = now + settings.startRetryMs
            return []
        case .running:
            return pingMissed(reason: reason, at: now)
        default:
            return []
        }
    }

    public mutating func captureFinished(at now: MonoTime) -> [SupervisorAction] {
        guard phase == .capturing else { return [] }
        if exitedDuringCapture != nil {
            exitedDuringCapture = nil
            return afterInstanceGone(at: now)
        }
        guard let pid else { return afterInstanceGone(at: now) }
        phase = .stopping
        stopDeadline = now + settings.killRetryMs
        return [.kill(pid: pid)]
    }

    public mutating func childExited(_ status: ChildStatus, at now: MonoTime) -> [SupervisorAction] {
        guard pid != nil else { return [] }
        pid = nil
        pingDeadline = nil
        switch phase {
        case .starting, .running:
            return failInstance(.died(status), at: now)
        case .capturing:
            exitedDuringCapture = status
            return [.noteIncident("the process ended during evidence capture: \(describe(status))")]
        case .stopping:
            stopDeadline = nil
            return afterInstanceGone(at: now)
        case .shuttingDown:
            stopDeadline = nil
            phase = .stopped
            return closeForShutdown() + [.exit(code: 0)]
        case .idle, .spawning, .backoff, .gaveUp, .stopped:
            return []
        }
    }

    /// SIGTERM/SIGINT to the supervisor. A second request while the child is still stopping escalates to SIGKILL.
    public mutating func shutdown(at now: MonoTime) -> [SupervisorAction] {
        let repeated = shutdownRequested
        shutdownRequested = true
        switch phase {
        case .idle, .backoff, .gaveUp:
            phase = .stopped
            return closeForShutdown() + [.exit(code: 0)]
        case .starting, .running:
            guard let pid else { return [] }
            phase = .shuttingDown
            stopDeadline = now + settings.stopTimeoutMs
            pingDeadline = nil
            return [.terminate(pid: pid)]
        case .shuttingDown:
            guard repeated, let pid else { return [] }
            stopDeadline = now + settings.killRetryMs
            return [.kill(pid: pid)]
        case .spawning, .capturing, .stopping, .stopped:
            // capturing/stopping end in afterInstanceGone, which honours shutdownRequested.
            return []
        }
    }

    // MARK: helpers

    private mutating func pingIfDue(at now: MonoTime) -> [SupervisorAction] {
        guard pingDeadline == nil, let due = nextPingAt, now >= due else { return [] }
        pingToken &+= 1
        pingDeadline = now + settings.deadlineMs
        nextPingAt = nil
        return [.sendPing(token: pingToken)]
    }

    private mutating func pingMissed(reason: String, at now: MonoTime) -> [SupervisorAction] {
        misses += 1
        lastPingError = reason
        pingDeadline = nil
        if misses >= settings.missesBeforeHang {
            let sinceLast = lastPongAt.map { now.milliseconds(since: $0) }
            return failInstance(.missedHeartbeat(misses: misses, msSinceLastPong: sinceLast, lastError: reason), at: now)
        }
        nextPingAt = now
        return pingIfDue(at: now)
    }

    /// The instance failed: record the incident first, then either capture (it is alive) or restart (it is gone).
    private mutating func failInstance(_ cause: FailureCause, at now: MonoTime) -> [SupervisorAction] {
        var actions: [SupervisorAction]
        if incidentOpen {
            actions = [.noteIncident("the replacement failed too: \(describe(cause))")]
        } else {
            incidentOpen = true
            actions = [.openIncident(cause)]
        }
        if case .died = cause {
            return actions + afterInstanceGone(at: now)
        }
        guard let pid else { return actions + afterInstanceGone(at: now) }
        phase = .capturing
        pingDeadline = nil
        nextPingAt = nil
        return actions + [.captureEvidence(pid: pid)]
    }

    private mutating func afterInstanceGone(at now: MonoTime) -> [SupervisorAction] {
        pid = nil
        if let readyAt { settings.backoff.instanceWasHealthy(forMs: now.milliseconds(since: readyAt)) }
        readyAt = nil
        instanceStartedAt = nil
        if shutdownRequested {
            phase = .stopped
            return closeForShutdown() + [.exit(code: 0)]
        }
        guard settings.intensity.allows(at: now) else {
            phase = .gaveUp
            incidentOpen = false
            let limit = "restart intensity exceeded: \(settings.intensity.maxRestarts) restarts within \(settings.intensity.windowMs) ms"
            return [.noteIncident(limit), .closeIncident(.gaveUp), .exit(code: 1)]
        }
        settings.intensity.record(at: now)
        restarts += 1
        let delay = settings.backoff.take()
        phase = .backoff
        backoffUntil = now + delay
        return [.scheduleRestart(delayMs: delay)]
    }

    private mutating func closeForShutdown() -> [SupervisorAction] {
        guard incidentOpen else { return [] }
        incidentOpen = false
        return [.closeIncident(.shutdown)]
    }

    private func describe(_ status: ChildStatus) -> String {
        switch status {
        case let .exited(code): "exited with code \(code)"
        case let .signaled(signal, core): "killed by \(signalName(signal))" + (core ? " (core dumped)" : "")
        }
    }

    private func describe(_ cause: FailureCause) -> String {
        switch cause {
        case let .missedHeartbeat(misses, _, error): "\(misses) heartbeat(s) missed" + (error.map { " (\($0))" } ?? "")
        case let .startTimeout(ms, error): "no first pong within \(ms) ms" + (error.map { " (last: \($0))" } ?? "")
        case let .died(status): describe(status)
        case let .spawnFailed(message): "could not start: \(message)"
        }
    }
}
