/// How a child process ended. Data, not an error.
public enum ChildStatus: Equatable, Sendable {
    case exited(code: Int32)
    case signaled(signal: Int32, coreDumped: Bool)
}

/// Why the machine decided an instance has failed. The runtime turns it into an `IncidentCause`
/// (it knows the wall clock; the machine only knows monotonic time).
public enum FailureCause: Equatable, Sendable {
    /// The heartbeat went silent for `silenceMs` (≥ the deadline plus any extension) over `misses` missed pings.
    case missedHeartbeat(misses: Int, msSinceLastPong: Double?, lastError: String?, silenceMs: Double, extendedMs: Int, verdict: ProgressVerdict?)
    case startTimeout(ms: Int, lastError: String?)
    /// The service asked to be treated as hung (sd_notify `WATCHDOG=trigger`).
    case triggered(reason: String)
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
    /// Stage "miss": a ping went unanswered. Count it, log it; nothing else happens to the process.
    case heartbeatMissed(misses: Int, silenceMs: Double, reason: String)
    /// Take a baseline /proc sample of `pid` (the first miss of a silence), so later judgements see progress.
    case sampleProgress(pid: Int32)
    /// Stage "suspect": collect soft evidence (threads, flight recorder) without touching the process.
    case collectSoftEvidence(pid: Int32, silenceMs: Double)
    /// Judge progress (baseline vs now) and report it at once with `progressJudged(_:at:)`.
    case judgeProgress(pid: Int32)
    /// The hang deadline was extended because the process is starved, not stuck.
    case deadlineExtended(byMs: Int, totalMs: Int, reason: String)
    /// A late heartbeat came back before the hang deadline: the silence is over.
    case heartbeatRecovered(silenceMs: Double, misses: Int, wasSuspect: Bool)
    /// The service told us something for people (sd_notify STATUS=, STOPPING=1, …): log it, show it.
    case serviceNotified(String)
    /// A silence in progress no longer counts (the service announced STOPPING=1): forget what was gathered
    /// for it (miss notes, suspect evidence, the progress baseline).
    case silenceCancelled(reason: String)
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
    /// Kill jitter: the kill waits `ms` (drawn up to `maxMs`). Note it in the incident and a metric.
    case killDelayed(ms: Int, maxMs: Int)
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
///
/// Escalation is staged, like Envoy's miss / megamiss / kill. "Silence" runs from the moment the first
/// unanswered ping was sent until a pong arrives:
/// - **miss** — each `missMs` a ping stays unanswered (the same ping keeps waiting: a late pong counts),
///   or a refused connection / wrong reply (then a new ping after a pause): counted and logged; on the
///   first miss a baseline /proc sample is taken;
/// - **suspect** — silence ≥ `suspectMs`: soft evidence is collected (thread states, flight recorder), no kill;
/// - **hang** — silence ≥ `deadlineMs` (+ extensions) with at least `missesBeforeHang` misses: progress is
///   judged; a *starved* process (runnable but not getting a CPU, throttled, stalled on I/O) gets the
///   deadline extended by `extensionStepMs`, up to `maxExtensionMs` in all; anything else (stuck, busy,
///   stopped, unclear) is a hang: open the incident, capture, kill, restart.
public struct SupervisorMachine: Sendable {
    /// Where the supervised service is in its life.
    public enum Phase: String, Equatable, Sendable, CaseIterable {
        case idle, spawning, starting, running, suspect, capturing, stopping, backoff, gaveUp = "gave-up", shuttingDown = "shutting-down", stopped
    }

    /// The knobs the policy needs, in milliseconds.
    public struct Settings: Sendable, Equatable {
        /// Where heartbeats come from: pings on the control channel, sd_notify keep-alives, or both.
        public var source: HeartbeatSource
        /// Between a pong and the next ping; with sd_notify, the keep-alive period the child is asked
        /// for (it is told WATCHDOG_USEC = twice this, and sends at half of that, as sd_watchdog_enabled(3) advises).
        public var intervalMs: Int
        /// Stage "miss": a ping unanswered this long counts as missed and is replaced by a new one.
        public var missMs: Int
        /// Stage "suspect": silence this long collects soft evidence.
        public var suspectMs: Int
        /// Stage "hang": silence this long (plus extensions) is a hang.
        public var deadlineMs: Int
        /// A hang also needs at least this many missed pings.
        public var missesBeforeHang: Int
        /// When starved, each extension adds this much to the deadline …
        public var extensionStepMs: Int
        /// … up to this much in all (0 = never extend).
        public var maxExtensionMs: Int
        /// A random delay of up to this long before the kill, so a fleet does not bounce in lockstep (0 = off).
        public var killJitterMs: Int
        public var startTimeoutMs: Int
        /// While waiting for the first pong, or after a refused connection, the next ping goes out after this long.
        public var startRetryMs: Int
        /// After SIGKILL, how long before we say so and send it again.
        public var killRetryMs: Int
        /// After SIGTERM at shutdown, how long before SIGKILL.
        public var stopTimeoutMs: Int
        public var backoff: Backoff
        public var intensity: RestartIntensity

        public init(source: HeartbeatSource = .ping, intervalMs: Int, deadlineMs: Int, missesBeforeHang: Int = 1, missMs: Int? = nil, suspectMs: Int? = nil,
                    extensionStepMs: Int? = nil, maxExtensionMs: Int? = nil, killJitterMs: Int = 0,
                    startTimeoutMs: Int, startRetryMs: Int = 25, killRetryMs: Int = 5000, stopTimeoutMs: Int,
                    backoff: Backoff, intensity: RestartIntensity) {
            self.source = source
            self.intervalMs = intervalMs; self.deadlineMs = deadlineMs; self.missesBeforeHang = missesBeforeHang
            let stages = EscalationDefaults.stages(deadlineMs: deadlineMs, missesBeforeHang: missesBeforeHang)
            self.missMs = missMs ?? stages.missMs
            self.suspectMs = suspectMs ?? stages.suspectMs
            self.extensionStepMs = extensionStepMs ?? stages.extensionStepMs
            self.maxExtensionMs = maxExtensionMs ?? stages.maxExtensionMs
            self.killJitterMs = killJitterMs
            self.startTimeoutMs = startTimeoutMs; self.startRetryMs = startRetryMs; self.killRetryMs = killRetryMs
            self.stopTimeoutMs = stopTimeoutMs; self.backoff = backoff; self.intensity = intensity
        }

        public init(_ c: SupervisorConfig) {
            self.init(source: c.heartbeat.source, intervalMs: c.heartbeat.intervalMs, deadlineMs: c.heartbeat.deadlineMs,
                      missesBeforeHang: c.heartbeat.misses, missMs: c.escalation.missMs, suspectMs: c.escalation.suspectMs,
                      extensionStepMs: c.escalation.extensionStepMs, maxExtensionMs: c.escalation.maxExtensionMs,
                      killJitterMs: c.escalation.killJitterMs,
                      startTimeoutMs: c.heartbeat.startTimeoutMs, startRetryMs: min(25, c.heartbeat.intervalMs),
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
    /// Pings missed in the current silence.
    public private(set) var misses = 0
    public private(set) var restarts = 0
    /// How far the hang deadline has been extended in the current silence.
    public private(set) var extendedMs = 0

    private var instanceStartedAt: MonoTime?
    private var readyAt: MonoTime?
    private var lastPongAt: MonoTime?
    private var lastPingError: String?
    private var pingToken: UInt64 = 0
    /// When the ping in flight counts as (once more) missed.
    private var pingDeadline: MonoTime?
    private var pingSentAt: MonoTime?
    private var nextPingAt: MonoTime?
    /// When the first unanswered ping of the current silence was sent.
    private var pingSilentSince: MonoTime?
    /// sd_notify keep-alives: when the next WATCHDOG=1 is due, when the late one's silence began, when
    /// the next miss is counted, and the period (the child may change it with WATCHDOG_USEC=).
    private var keepAliveDue: MonoTime?
    private var notifySilentSince: MonoTime?
    private var nextNotifyMissAt: MonoTime?
    public private(set) var keepAliveIntervalMs: Int
    /// When a starting instance must have become ready (EXTEND_TIMEOUT_USEC= moves it).
    private var startDeadline: MonoTime?
    /// The heartbeat is silent since the earliest silence of any source.
    private var silentSince: MonoTime? { [pingSilentSince, notifySilentSince].compactMap { $0 }.min() }
    private var awaitingVerdict = false
    private var backoffUntil: MonoTime?
    private var stopDeadline: MonoTime?
    private var killAt: MonoTime?
    private var exitedDuringCapture: ChildStatus?
    /// The service announced STOPPING=1: no heartbeat is expected until then (stop_timeout_ms, or what
    /// EXTEND_TIMEOUT_USEC= asks), so a service shutting down by itself is not declared hung.
    private var serviceStoppingUntil: MonoTime?
    private var serviceStoppingSince: MonoTime?
    private var shutdownRequested = false

    public init(settings: Settings) {
        self.settings = settings
        self.keepAliveIntervalMs = settings.intervalMs
    }

    /// Whether the process is being watched for heartbeats (ready, possibly late).
    private var watching: Bool { phase == .running || phase == .suspect }

    /// When the runtime must call `tick(at:)` next; nil = only on events.
    public var nextWakeup: MonoTime? {
        switch phase {
        case .starting:
            return [pingDeadline ?? nextPingAt, startDeadline].compactMap { $0 }.min()
        case .running, .suspect:
            if awaitingVerdict { return nil }
            if let until = serviceStoppingUntil { return until }
            var times = [pingDeadline ?? nextPingAt, nextNotifyMissAt ?? keepAliveDue.map { $0 + settings.missMs }].compactMap { $0 }
            if let since = silentSince {
                if phase == .running { times.append(since + settings.suspectMs) }
                // Until enough pings are missed the hang deadline cannot fire; the next miss wakes us.
                if misses >= settings.missesBeforeHang { times.append(since + (settings.deadlineMs + extendedMs)) }
            }
            return times.min()
        case .backoff: return backoffUntil
        case .stopping: return killAt ?? stopDeadline
        case .shuttingDown: return stopDeadline
        case .idle, .spawning, .capturing, .gaveUp, .stopped: return nil
        }
    }

    /// The ping currently awaited, if any.
    public var pingInFlight: UInt64? { pingDeadline == nil ? nil : pingToken }

    /// How long the heartbeat has been silent at `now` (0 when it is not).
    public func silenceMs(at now: MonoTime) -> Double { silentSince.map { now.milliseconds(since: $0) } ?? 0 }

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
        startDeadline = now + settings.startTimeoutMs
        readyAt = nil
        lastPongAt = nil
        lastPingError = nil
        resetSilence()
        keepAliveDue = nil
        keepAliveIntervalMs = settings.intervalMs
        nextPingAt = settings.source.usesPing ? now : nil
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
            if let deadline = startDeadline, now >= deadline {
                let ms = instanceStartedAt.map { Int(now.milliseconds(since: $0)) } ?? settings.startTimeoutMs
                return failInstance(.startTimeout(ms: ms, lastError: lastPingError), at: now)
            }
            if let deadline = pingDeadline, now >= deadline {
                // Before the first pong an unanswered ping is only retried; the start timeout decides.
                pingDeadline = nil
                nextPingAt = now
            }
            return pingIfDue(at: now)
        case .running, .suspect:
            if awaitingVerdict { return [] }
            var actions: [SupervisorAction] = []
            if let until = serviceStoppingUntil {
                guard now >= until else { return [] }
                // Announced STOPPING=1 and still here: heartbeats are expected again, from now.
                let waited = serviceStoppingSince.map { Int(now.milliseconds(since: $0)) } ?? settings.stopTimeoutMs
                serviceStoppingUntil = nil
                serviceStoppingSince = nil
                resetSilence()
                if settings.source.usesPing { nextPingAt = now }
                if settings.source.usesNotify { keepAliveDue = now + keepAliveIntervalMs }
                actions.append(.serviceNotified("still running \(waited) ms after STOPPING=1: heartbeats are expected again"))
            }
            if let deadline = pingDeadline, now >= deadline {
                // Keep waiting on the same ping: a late pong still proves progress, and a struggling
                // service is not handed one more connection per miss.
                let waited = pingSentAt.map { Int(now.milliseconds(since: $0).rounded()) } ?? settings.missMs
                pingDeadline = now + settings.missMs
                actions += countMiss(reason: "no reply within \(waited) ms", at: now)
            }
            if let due = keepAliveDue, now >= nextNotifyMissAt ?? due + settings.missMs {
                if notifySilentSince == nil { notifySilentSince = due }
                nextNotifyMissAt = now + settings.missMs
                actions += countMiss(reason: "no WATCHDOG=1 for \(Int(now.milliseconds(since: due)) + keepAliveIntervalMs) ms", at: now)
            }
            actions += escalate(at: now)
            if watching && !awaitingVerdict { actions += pingIfDue(at: now) }
            return actions
        case .backoff:
            guard let until = backoffUntil, now >= until else { return [] }
            backoffUntil = nil
            phase = .spawning
            return [.spawn]
        case .stopping:
            if let at = killAt {
                guard now >= at, let pid else { return [] }
                killAt = nil
                stopDeadline = now + settings.killRetryMs
                return [.kill(pid: pid)]
            }
            fallthrough
        case .shuttingDown:
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
        guard token == pingToken, pingDeadline != nil, phase == .starting || watching, let pid else { return [] }
        pingDeadline = nil
        lastPongAt = now
        lastPingError = nil
        nextPingAt = now + settings.intervalMs
        if phase != .starting {
            let before = silentSince
            pingSilentSince = nil
            return sourceAnswered(silenceBefore: before, at: now)
        }
        // With sd_notify only, READY=1 (not a pong) makes the instance ready.
        guard settings.source.usesPing else { return [] }
        return becomeReady(pid: pid, at: now)
    }

    /// A datagram from the child's sd_notify, already checked to come from the child itself.
    public mutating func notifyReceived(_ fields: [NotifyField], at now: MonoTime) -> [SupervisorAction] {
        guard phase == .starting || watching || phase == .shuttingDown, let pid else { return [] }
        var actions: [SupervisorAction] = []
        for field in fields {
            switch field {
            case .ready:
                if phase == .starting && settings.source == .notify { actions += becomeReady(pid: pid, at: now) }
            case .watchdog:
                guard watching, settings.source.usesNotify, !awaitingVerdict else { continue }
                let before = silentSince
                lastPongAt = now
                keepAliveDue = now + keepAliveIntervalMs
                notifySilentSince = nil
                nextNotifyMissAt = nil
                actions += sourceAnswered(silenceBefore: before, at: now)
            case .watchdogTrigger:
                guard phase == .starting || watching else { continue }
                return actions + failInstance(.triggered(reason: "the service sent WATCHDOG=trigger"), at: now)
            case let .watchdogUsec(usec):
                // The child changes its watchdog period; it sends keep-alives at half of it.
                keepAliveIntervalMs = max(1, Int(usec / 2000))
                if watching, settings.source.usesNotify, notifySilentSince == nil { keepAliveDue = now + keepAliveIntervalMs }
                actions.append(.serviceNotified("WATCHDOG_USEC=\(usec): keep-alives now expected every \(keepAliveIntervalMs) ms"))
            case let .extendTimeoutUsec(usec):
                let until = now + Int(usec / 1000)
                if phase == .starting, let d = startDeadline, until > d { startDeadline = until }
                if phase == .shuttingDown, let d = stopDeadline, until > d { stopDeadline = until }
                if watching, let d = serviceStoppingUntil, until > d { serviceStoppingUntil = until }
                actions.append(.serviceNotified("EXTEND_TIMEOUT_USEC=\(usec)"))
            case let .status(text):
                actions.append(.serviceNotified("STATUS=\(text)"))
            case .stopping:
                guard watching, !awaitingVerdict, serviceStoppingUntil == nil else {
                    actions.append(.serviceNotified("STOPPING=1"))
                    continue
                }
                // Like systemd, which stops the watchdog of a service that is stopping: no hang is declared
                // while it winds down; if it is still running after stop_timeout_ms, heartbeats count again.
                if silentSince != nil || misses > 0 || phase == .suspect {
                    actions.append(.silenceCancelled(reason: "the service announced STOPPING=1"))
                }
                resetSilence()
                phase = .running
                nextPingAt = nil
                keepAliveDue = nil
                serviceStoppingSince = now
                serviceStoppingUntil = now + settings.stopTimeoutMs
                actions.append(.serviceNotified("STOPPING=1: the service is stopping by itself; no heartbeat expected for up to \(settings.stopTimeoutMs) ms"))
            case .reloading:
                actions.append(.serviceNotified("RELOADING=1"))
            case .mainPid, .errno, .other:
                continue
            }
        }
        return actions
    }

    private mutating func becomeReady(pid: Int32, at now: MonoTime) -> [SupervisorAction] {
        resetSilence()
        phase = .running
        readyAt = now
        startDeadline = nil
        if settings.source.usesNotify { keepAliveDue = now + keepAliveIntervalMs }
        var actions: [SupervisorAction] = [.instanceReady(pid: pid)]
        if incidentOpen {
            incidentOpen = false
            actions.append(.closeIncident(.recovered))
        }
        return actions
    }

    /// One source answered; the silence is over only when every source is answering.
    private mutating func sourceAnswered(silenceBefore before: MonoTime?, at now: MonoTime) -> [SupervisorAction] {
        guard silentSince == nil else { return [] }
        var actions: [SupervisorAction] = []
        if let before, misses > 0 || phase == .suspect {
            actions.append(.heartbeatRecovered(silenceMs: now.milliseconds(since: before), misses: misses, wasSuspect: phase == .suspect))
        }
        phase = .running
        misses = 0
        extendedMs = 0
        awaitingVerdict = false
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
        case .running, .suspect:
            guard !awaitingVerdict else { return [] }
            var actions = pingMissed(reason: reason, retryAfterMs: settings.startRetryMs, at: now)
            actions += escalate(at: now)
            if watching && !awaitingVerdict { actions += pingIfDue(at: now) }
            return actions
        default:
            return []
        }
    }

    /// The answer to `.judgeProgress`.
    public mutating func progressJudged(_ verdict: ProgressVerdict, at now: MonoTime) -> [SupervisorAction] {
        guard watching, awaitingVerdict, let since = silentSince else { return [] }
        awaitingVerdict = false
        let silence = now.milliseconds(since: since)
        if case let .starved(reason) = verdict, extendedMs + settings.extensionStepMs <= settings.maxExtensionMs, settings.extensionStepMs > 0 {
            extendedMs += settings.extensionStepMs
            return [.deadlineExtended(byMs: settings.extensionStepMs, totalMs: extendedMs, reason: reason)] + pingIfDue(at: now)
        }
        let sinceLast = lastPongAt.map { now.milliseconds(since: $0) }
        return failInstance(.missedHeartbeat(misses: misses, msSinceLastPong: sinceLast, lastError: lastPingError,
                                             silenceMs: silence, extendedMs: extendedMs, verdict: verdict), at: now)
    }

    /// The evidence is taken; `jitterDraw` in [0, 1) picks the kill delay when kill jitter is on.
    public mutating func captureFinished(at now: MonoTime, jitterDraw: Double = 0) -> [SupervisorAction] {
        guard phase == .capturing else { return [] }
        if exitedDuringCapture != nil {
            exitedDuringCapture = nil
            return afterInstanceGone(at: now)
        }
        guard let pid else { return afterInstanceGone(at: now) }
        phase = .stopping
        let jitter = Int((Double(settings.killJitterMs) * min(max(jitterDraw, 0), 1)).rounded(.down))
        if jitter > 0 && !shutdownRequested {
            killAt = now + jitter
            return [.killDelayed(ms: jitter, maxMs: settings.killJitterMs)]
        }
        stopDeadline = now + settings.killRetryMs
        return [.kill(pid: pid)]
    }

    public mutating func childExited(_ status: ChildStatus, at now: MonoTime) -> [SupervisorAction] {
        guard pid != nil else { return [] }
        pid = nil
        pingDeadline = nil
        awaitingVerdict = false
        switch phase {
        case .starting, .running, .suspect:
            return failInstance(.died(status), at: now)
        case .capturing:
            exitedDuringCapture = status
            return [.noteIncident("the process ended during evidence capture: \(describe(status))")]
        case .stopping:
            stopDeadline = nil
            killAt = nil
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
        case .starting, .running, .suspect:
            guard let pid else { return [] }
            phase = .shuttingDown
            stopDeadline = now + settings.stopTimeoutMs
            pingDeadline = nil
            awaitingVerdict = false
            return [.terminate(pid: pid)]
        case .shuttingDown:
            guard repeated, let pid else { return [] }
            stopDeadline = now + settings.killRetryMs
            return [.kill(pid: pid)]
        case .stopping:
            // A jittered kill waits for nobody once we are asked to stop.
            guard killAt != nil, let pid else { return [] }
            killAt = nil
            stopDeadline = now + settings.killRetryMs
            return [.kill(pid: pid)]
        case .spawning, .capturing, .stopped:
            // capturing/stopping end in afterInstanceGone, which honours shutdownRequested.
            return []
        }
    }

    // MARK: helpers

    private mutating func resetSilence() {
        misses = 0
        extendedMs = 0
        pingSilentSince = nil
        notifySilentSince = nil
        nextNotifyMissAt = nil
        awaitingVerdict = false
        pingDeadline = nil
    }

    private mutating func pingIfDue(at now: MonoTime) -> [SupervisorAction] {
        guard settings.source.usesPing, pingDeadline == nil, let due = nextPingAt, now >= due else { return [] }
        pingToken &+= 1
        pingDeadline = now + settings.missMs
        pingSentAt = now
        nextPingAt = nil
        if watching && pingSilentSince == nil { pingSilentSince = now }
        return [.sendPing(token: pingToken)]
    }

    /// A ping that failed outright (refused, reset, a wrong reply): a miss, and a new ping after `retryAfterMs`.
    private mutating func pingMissed(reason: String, retryAfterMs: Int, at now: MonoTime) -> [SupervisorAction] {
        pingDeadline = nil
        nextPingAt = now + retryAfterMs
        return countMiss(reason: reason, at: now)
    }

    private mutating func countMiss(reason: String, at now: MonoTime) -> [SupervisorAction] {
        misses += 1
        lastPingError = reason
        var actions: [SupervisorAction] = [.heartbeatMissed(misses: misses, silenceMs: silenceMs(at: now), reason: reason)]
        if misses == 1, let pid { actions.append(.sampleProgress(pid: pid)) }
        return actions
    }

    /// Stages "suspect" and "hang", driven by how long the heartbeat has been silent.
    private mutating func escalate(at now: MonoTime) -> [SupervisorAction] {
        guard watching, let since = silentSince, let pid else { return [] }
        var actions: [SupervisorAction] = []
        let silence = now.milliseconds(since: since)
        if phase == .running && silence >= Double(settings.suspectMs) {
            phase = .suspect
            if misses == 0 {
                // The ping in flight is not missed yet, but the silence is long: take the baseline now.
                actions.append(.sampleProgress(pid: pid))
            }
            actions.append(.collectSoftEvidence(pid: pid, silenceMs: silence))
        }
        if silence >= Double(settings.deadlineMs + extendedMs) && misses >= settings.missesBeforeHang {
            awaitingVerdict = true
            actions.append(.judgeProgress(pid: pid))
        }
        return actions
    }

    /// The instance failed: record the incident first, then either capture (it is alive) or restart (it is gone).
    private mutating func failInstance(_ cause: FailureCause, at now: MonoTime) -> [SupervisorAction] {
        var actions: [SupervisorAction]
        let announcedStop = serviceStoppingSince.map { Int(now.milliseconds(since: $0)) }
        serviceStoppingUntil = nil
        serviceStoppingSince = nil
        if incidentOpen, let live = pid {
            // A replacement that hangs (it is alive: a capture follows) gets its own evidence (core, locks,
            // diagnosis) in its own incident; the open one ends here, pointing at it, so neither overwrites the
            // other's core.
            actions = [.noteIncident("the replacement pid \(live) failed too before it was ready: \(describe(cause)); the next incident holds its evidence"),
                       .closeIncident(.replacementFailed), .openIncident(cause)]
        } else if incidentOpen {
            // One that dies (or is gone) is part of the same episode: a crash loop is one incident.
            actions = [.noteIncident("the replacement failed too: \(describe(cause))")]
        } else {
            incidentOpen = true
            actions = [.openIncident(cause)]
        }
        if case .died = cause {
            if let ms = announcedStop { actions.append(.noteIncident("the service had announced STOPPING=1 \(ms) ms before it ended")) }
            return actions + afterInstanceGone(at: now)
        }
        guard let pid else { return actions + afterInstanceGone(at: now) }
        phase = .capturing
        pingDeadline = nil
        nextPingAt = nil
        keepAliveDue = nil
        awaitingVerdict = false
        return actions + [.captureEvidence(pid: pid)]
    }

    private mutating func afterInstanceGone(at now: MonoTime) -> [SupervisorAction] {
        pid = nil
        if let readyAt { settings.backoff.instanceWasHealthy(forMs: now.milliseconds(since: readyAt)) }
        readyAt = nil
        instanceStartedAt = nil
        startDeadline = nil
        resetSilence()
        keepAliveDue = nil
        nextPingAt = nil
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
        case let .missedHeartbeat(misses, _, error, silence, _, _):
            "silent for \(Int(silence)) ms, \(misses) heartbeat(s) missed" + (error.map { " (\($0))" } ?? "")
        case let .startTimeout(ms, error): "not ready within \(ms) ms" + (error.map { " (last: \($0))" } ?? "")
        case let .triggered(reason): reason
        case let .died(status): describe(status)
        case let .spawnFailed(message): "could not start: \(message)"
        }
    }
}

/// Where heartbeats come from.
public enum HeartbeatSource: String, Sendable, Codable, CaseIterable {
    /// `ping TOKEN` → `pong TOKEN` on the control channel.
    case ping
    /// sd_notify `WATCHDOG=1` keep-alives on the NOTIFY_SOCKET the supervisor serves; `READY=1` marks start-up done.
    case notify
    /// Both must keep coming.
    case both

    public var usesPing: Bool { self != .notify }
    public var usesNotify: Bool { self != .ping }
}

/// The escalation stages' timings derived from the deadline when the config leaves them out.
public enum EscalationDefaults {
    public static func stages(deadlineMs: Int, missesBeforeHang: Int) -> (missMs: Int, suspectMs: Int, extensionStepMs: Int, maxExtensionMs: Int) {
        // A miss every quarter deadline (and at least as many as the config asks for before a hang);
        // suspect at half; starvation may double the deadline twice over in half-deadline steps.
        let missMs = max(1, min(deadlineMs / 4, deadlineMs / max(1, missesBeforeHang)))
        return (missMs, max(1, deadlineMs / 2), max(1, deadlineMs / 2), deadlineMs * 2)
    }
}
