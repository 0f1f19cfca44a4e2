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
///
/// The state is an enum whose cases carry only what is valid in them (a deadline exists only while
/// starting, a verdict is awaited only while watching, a kill is scheduled only while stopping), so no
/// state can hold a leftover of another. `phase` names the case for metrics, STATUS= and logs.
public struct SupervisorMachine: Sendable {
    /// Where the supervised service is in its life: the name of `state`'s case (`running`/`suspect` are
    /// the two faces of `watching`).
    public enum Phase: String, Equatable, Sendable, CaseIterable {
        case idle, spawning, starting, running, suspect, capturing, stopping, backoff, gaveUp = "gave-up", shuttingDown = "shutting-down", stopped
    }

    /// The ping awaited from an instance.
    struct PingInFlight: Sendable {
        var token: UInt64
        var sentAt: MonoTime
        /// When it counts as (once more) missed; the same ping keeps waiting after each miss.
        var deadline: MonoTime
    }

    /// A live instance and its heartbeat bookkeeping, from its spawn until it is handed to capture or gone.
    struct Instance: Sendable {
        let pid: Int32
        let startedAt: MonoTime
        /// When it answered first (nil while starting): a long healthy run resets the backoff.
        var readyAt: MonoTime?
        var lastPongAt: MonoTime?
        var lastPingError: String?
        var ping: PingInFlight?
        var nextPingAt: MonoTime?
        /// sd_notify: when the next WATCHDOG=1 is due, and the period (WATCHDOG_USEC= from the child changes it).
        var keepAliveDue: MonoTime?
        var keepAliveIntervalMs: Int
        /// The last WATCHDOG=1 (`lastPongAt` is the last sign of life from either source).
        var lastKeepAliveAt: MonoTime?
        /// `auto`: when to say that nothing has been heard from the service, if nothing has (the end of the
        /// start window, even for an instance ready by READY=1).
        var unheardCheckAt: MonoTime?
    }

    /// The current silence of a watched instance: from the first unanswered ping (or late keep-alive) until
    /// every source answers again.
    struct Silence: Sendable {
        var misses = 0
        /// How far the hang deadline has been extended (starvation).
        var extendedMs = 0
        var pingSilentSince: MonoTime?
        var notifySilentSince: MonoTime?
        var nextNotifyMissAt: MonoTime?
        /// `.judgeProgress` was asked for; nothing else happens until `progressJudged`.
        var awaitingVerdict = false
        /// Which sources are silent now: the control channel, the keep-alives, or both; nil while all answer.
        var silentSources: HeartbeatSource? {
            switch (pingSilentSince, notifySilentSince) {
            case (.some, .some): .both
            case (.some, nil): .ping
            case (nil, .some): .notify
            case (nil, nil): nil
            }
        }
        /// The heartbeat is silent since the earliest silence of any source.
        var since: MonoTime? {
            switch (pingSilentSince, notifySilentSince) {
            case let (p?, n?): min(p, n)
            case let (p, n): p ?? n
            }
        }
    }

    /// The service announced STOPPING=1: no heartbeat is expected until `until` (stop_timeout_ms, or what
    /// EXTEND_TIMEOUT_USEC= asks), so a service shutting down by itself is not declared hung.
    struct StopAnnouncement: Sendable {
        var since: MonoTime
        var until: MonoTime
    }

    /// A ready instance whose heartbeats are watched.
    struct Watch: Sendable {
        var instance: Instance
        var silence = Silence()
        /// Stage "suspect" reached in this silence.
        var suspect = false
        var stopAnnounced: StopAnnouncement?
    }

    /// Evidence is being taken from `pid`; it may die meanwhile.
    struct Capture: Sendable {
        enum Target: Sendable { case alive(pid: Int32), exited(ChildStatus) }
        var target: Target
        var readyAt: MonoTime?
    }

    /// SIGKILL is scheduled (kill jitter) or sent (and sent again while the process lives).
    struct Stop: Sendable {
        enum Kill: Sendable { case delayed(until: MonoTime), sent(retryAt: MonoTime) }
        let pid: Int32
        var readyAt: MonoTime?
        var kill: Kill
    }

    enum State: Sendable {
        case idle
        case spawning
        case starting(Instance, deadline: MonoTime)
        case watching(Watch)
        case capturing(Capture)
        case stopping(Stop)
        case backoff(until: MonoTime)
        case gaveUp
        case shuttingDown(pid: Int32, deadline: MonoTime)
        case stopped
    }

    var state: State = .idle
    public private(set) var settings: Settings
    /// An incident is open: it spans a failure, its capture, restarts, until a replacement is ready.
    public internal(set) var incidentOpen = false
    public private(set) var restarts = 0
    /// SIGTERM/SIGINT came: whatever is under way ends in `stopped`, never in a restart.
    private var shutdownRequested = false
    /// Tokens keep growing across instances, so a late pong of an old instance never counts.
    private var lastPingToken: UInt64 = 0
    /// Which heartbeat was silent when the last hang was declared: `.ping` (the control channel), `.notify`
    /// (WATCHDOG=1 keep-alives) or `.both`; what the incident's cause names.
    public internal(set) var lastSilence: HeartbeatSource?
    /// `auto`: the service has answered a ping / sent WATCHDOG=1 (any instance). From then on that source is
    /// held to as strictly as if it had been configured, for every instance (a replacement that never answers
    /// is a start timeout, as with `--heartbeat ping`).
    public internal(set) var heardPing = false
    public internal(set) var heardKeepAlive = false

    public init(settings: Settings) {
        self.settings = settings
    }

    public var phase: Phase {
        switch state {
        case .idle: .idle
        case .spawning: .spawning
        case .starting: .starting
        case let .watching(w): w.suspect ? .suspect : .running
        case .capturing: .capturing
        case .stopping: .stopping
        case .backoff: .backoff
        case .gaveUp: .gaveUp
        case .shuttingDown: .shuttingDown
        case .stopped: .stopped
        }
    }

    /// The live instance's pid (nil when none is alive).
    public var pid: Int32? {
        switch state {
        case let .starting(i, _): i.pid
        case let .watching(w): w.instance.pid
        case let .capturing(c): if case let .alive(pid) = c.target { pid } else { nil }
        case let .stopping(s): s.pid
        case let .shuttingDown(pid, _): pid
        case .idle, .spawning, .backoff, .gaveUp, .stopped: nil
        }
    }

    /// Pings missed in the current silence.
    public var misses: Int { if case let .watching(w) = state { w.silence.misses } else { 0 } }
    /// How far the hang deadline has been extended in the current silence.
    public var extendedMs: Int { if case let .watching(w) = state { w.silence.extendedMs } else { 0 } }
    /// The keep-alive period expected from the instance (the child may change it with WATCHDOG_USEC=).
    public var keepAliveIntervalMs: Int { instance?.keepAliveIntervalMs ?? settings.intervalMs }

    /// The ping currently awaited, if any.
    public var pingInFlight: UInt64? { instance?.ping?.token }

    /// How long the heartbeat has been silent at `now` (0 when it is not).
    public func silenceMs(at now: MonoTime) -> Double {
        guard case let .watching(w) = state, let since = w.silence.since else { return 0 }
        return now.milliseconds(since: since)
    }

    var instance: Instance? {
        switch state {
        case let .starting(i, _): i
        case let .watching(w): w.instance
        default: nil
        }
    }

    /// When the runtime must call `tick(at:)` next; nil = only on events.
    public var nextWakeup: MonoTime? {
        switch state {
        case let .starting(i, deadline):
            return [i.ping?.deadline ?? i.nextPingAt, deadline].compactMap { $0 }.min()
        case let .watching(w):
            if w.silence.awaitingVerdict { return nil }
            if let stop = w.stopAnnounced { return stop.until }
            let i = w.instance
            var times = [i.ping?.deadline ?? i.nextPingAt, w.silence.nextNotifyMissAt ?? i.keepAliveDue.map { $0 + settings.missMs },
                         i.unheardCheckAt].compactMap { $0 }
            if let since = w.silence.since {
                if !w.suspect { times.append(since + settings.suspectMs) }
                // Until enough pings are missed the hang deadline cannot fire; the next miss wakes us.
                if w.silence.misses >= settings.missesBeforeHang { times.append(since + (settings.deadlineMs + w.silence.extendedMs)) }
            }
            return times.min()
        case let .backoff(until): return until
        case let .stopping(s):
            switch s.kill {
            case let .delayed(until): return until
            case let .sent(retryAt): return retryAt
            }
        case let .shuttingDown(_, deadline): return deadline
        case .idle, .spawning, .capturing, .gaveUp, .stopped: return nil
        }
    }

    // MARK: events of the instance's life

    public mutating func start(at now: MonoTime) -> [SupervisorAction] {
        guard case .idle = state else { return [] }
        state = .spawning
        return [.spawn]
    }

    public mutating func spawned(pid newPid: Int32, at now: MonoTime) -> [SupervisorAction] {
        guard case .spawning = state else { return [] }
        var actions: [SupervisorAction] = incidentOpen ? [.incidentRestarted(newPid: newPid)] : []
        if shutdownRequested {
            // Asked to stop while the spawn was under way: stop the new instance at once.
            state = .shuttingDown(pid: newPid, deadline: now + settings.stopTimeoutMs)
            return actions + [.terminate(pid: newPid)]
        }
        var instance = Instance(pid: newPid, startedAt: now, nextPingAt: settings.triesPing ? now : nil,
                                keepAliveIntervalMs: settings.intervalMs)
        if settings.mode == .auto { instance.unheardCheckAt = now + settings.startTimeoutMs }
        actions += pingIfDue(&instance, at: now)
        state = .starting(instance, deadline: now + settings.startTimeoutMs)
        return actions
    }

    public mutating func spawnFailed(message: String, at now: MonoTime) -> [SupervisorAction] {
        guard case .spawning = state else { return [] }
        var actions: [SupervisorAction]
        if incidentOpen {
            actions = [.noteIncident("restart failed: \(message)")]
        } else {
            incidentOpen = true
            actions = [.openIncident(.spawnFailed(message: message))]
        }
        return actions + afterInstanceGone(readyAt: nil, at: now)
    }

    public mutating func tick(at now: MonoTime) -> [SupervisorAction] {
        switch state {
        case .starting(var instance, let deadline):
            if now >= deadline {
                let ms = Int(now.milliseconds(since: instance.startedAt))
                if !holdsToStartTimeout {
                    // Neither protocol heard (`auto`) or none asked for (`none`): the instance is supervised for its
                    // exit only; its start is over.
                    var instance = instance
                    let unheard: [SupervisorAction] = settings.mode == .auto ? [.heartbeatUnheard(pid: instance.pid, afterMs: ms)] : []
                    instance.unheardCheckAt = nil
                    return unheard + becomeReady(instance, at: now)
                }
                return failInstance(.startTimeout(ms: ms, lastError: instance.lastPingError), instance: instance, stopAnnounced: nil, at: now)
            }
            if let ping = instance.ping, now >= ping.deadline {
                // Before the first pong an unanswered ping is only retried; the start timeout decides.
                instance.ping = nil
                instance.nextPingAt = now
            }
            let actions = pingIfDue(&instance, at: now)
            state = .starting(instance, deadline: deadline)
            return actions
        case var .watching(watch):
            let actions = tickWatched(&watch, at: now)
            if case .watching = state { state = .watching(watch) }
            return actions
        case let .backoff(until):
            guard now >= until else { return [] }
            state = .spawning
            return [.spawn]
        case var .stopping(stop):
            switch stop.kill {
            case let .delayed(until):
                guard now >= until else { return [] }
                stop.kill = .sent(retryAt: now + settings.killRetryMs)
                state = .stopping(stop)
                return [.kill(pid: stop.pid)]
            case let .sent(retryAt):
                guard now >= retryAt else { return [] }
                stop.kill = .sent(retryAt: now + settings.killRetryMs)
                state = .stopping(stop)
                let note = SupervisorAction.noteIncident("pid \(stop.pid) still alive \(settings.killRetryMs) ms after SIGKILL; sending it again")
                return (incidentOpen ? [note] : []) + [.kill(pid: stop.pid)]
            }
        case let .shuttingDown(pid, deadline):
            guard now >= deadline else { return [] }
            state = .shuttingDown(pid: pid, deadline: now + settings.killRetryMs)
            let note = SupervisorAction.noteIncident("pid \(pid) ignored SIGTERM for \(settings.stopTimeoutMs) ms; sending SIGKILL")
            return (incidentOpen ? [note] : []) + [.kill(pid: pid)]
        case .idle, .spawning, .capturing, .gaveUp, .stopped:
            return []
        }
    }

    /// The evidence is taken; `jitterDraw` in [0, 1) picks the kill delay when kill jitter is on.
    public mutating func captureFinished(at now: MonoTime, jitterDraw: Double = 0) -> [SupervisorAction] {
        guard case let .capturing(capture) = state else { return [] }
        guard case let .alive(pid) = capture.target else { return afterInstanceGone(readyAt: capture.readyAt, at: now) }
        let jitter = Int((Double(settings.killJitterMs) * min(max(jitterDraw, 0), 1)).rounded(.down))
        if jitter > 0 && !shutdownRequested {
            state = .stopping(Stop(pid: pid, readyAt: capture.readyAt, kill: .delayed(until: now + jitter)))
            return [.killDelayed(ms: jitter, maxMs: settings.killJitterMs)]
        }
        state = .stopping(Stop(pid: pid, readyAt: capture.readyAt, kill: .sent(retryAt: now + settings.killRetryMs)))
        return [.kill(pid: pid)]
    }

    public mutating func childExited(_ status: ChildStatus, at now: MonoTime) -> [SupervisorAction] {
        switch state {
        case let .starting(instance, _):
            return failInstance(.died(status), instance: instance, stopAnnounced: nil, at: now)
        case let .watching(watch):
            return failInstance(.died(status), instance: watch.instance, stopAnnounced: watch.stopAnnounced, at: now)
        case var .capturing(capture):
            guard case .alive = capture.target else { return [] }
            capture.target = .exited(status)
            state = .capturing(capture)
            return [.noteIncident("the process ended during evidence capture: \(describe(status))")]
        case let .stopping(stop):
            return afterInstanceGone(readyAt: stop.readyAt, at: now)
        case .shuttingDown:
            state = .stopped
            return closeForShutdown() + [.exit(code: 0)]
        case .idle, .spawning, .backoff, .gaveUp, .stopped:
            return []
        }
    }

    /// SIGTERM/SIGINT to the supervisor. A second request while the child is still stopping escalates to SIGKILL.
    public mutating func shutdown(at now: MonoTime) -> [SupervisorAction] {
        let repeated = shutdownRequested
        shutdownRequested = true
        switch state {
        case .idle, .backoff, .gaveUp:
            state = .stopped
            return closeForShutdown() + [.exit(code: 0)]
        case let .starting(instance, _):
            state = .shuttingDown(pid: instance.pid, deadline: now + settings.stopTimeoutMs)
            return [.terminate(pid: instance.pid)]
        case let .watching(watch):
            state = .shuttingDown(pid: watch.instance.pid, deadline: now + settings.stopTimeoutMs)
            return [.terminate(pid: watch.instance.pid)]
        case let .shuttingDown(pid, _):
            guard repeated else { return [] }
            state = .shuttingDown(pid: pid, deadline: now + settings.killRetryMs)
            return [.kill(pid: pid)]
        case var .stopping(stop):
            // A jittered kill waits for nobody once we are asked to stop.
            guard case .delayed = stop.kill else { return [] }
            stop.kill = .sent(retryAt: now + settings.killRetryMs)
            state = .stopping(stop)
            return [.kill(pid: stop.pid)]
        case .spawning, .capturing, .stopped:
            // capturing/stopping end in afterInstanceGone, which honours shutdownRequested.
            return []
        }
    }

    // MARK: failure and restart

    /// The instance failed: record the incident first, then either capture (it is alive) or restart (it is gone).
    mutating func failInstance(_ cause: FailureCause, instance: Instance, stopAnnounced: StopAnnouncement?, at now: MonoTime) -> [SupervisorAction] {
        var died = false
        if case .died = cause { died = true }
        var actions: [SupervisorAction]
        if incidentOpen && !died {
            // A replacement that hangs (it is alive: a capture follows) gets its own evidence (core, locks,
            // diagnosis) in its own incident; the open one ends here, pointing at it, so neither overwrites the
            // other's core.
            actions = [.noteIncident("the replacement pid \(instance.pid) failed too before it was ready: \(describe(cause)); the next incident holds its evidence"),
                       .closeIncident(.replacementFailed), .openIncident(cause)]
        } else if incidentOpen {
            // One that dies (or is gone) is part of the same episode: a crash loop is one incident.
            actions = [.noteIncident("the replacement failed too: \(describe(cause))")]
        } else {
            incidentOpen = true
            actions = [.openIncident(cause)]
        }
        if died {
            if let stop = stopAnnounced {
                actions.append(.noteIncident("the service had announced STOPPING=1 \(Int(now.milliseconds(since: stop.since))) ms before it ended"))
            }
            return actions + afterInstanceGone(readyAt: instance.readyAt, at: now)
        }
        state = .capturing(Capture(target: .alive(pid: instance.pid), readyAt: instance.readyAt))
        return actions + [.captureEvidence(pid: instance.pid)]
    }

    private mutating func afterInstanceGone(readyAt: MonoTime?, at now: MonoTime) -> [SupervisorAction] {
        if let readyAt { settings.backoff.instanceWasHealthy(forMs: now.milliseconds(since: readyAt)) }
        if shutdownRequested {
            state = .stopped
            return closeForShutdown() + [.exit(code: 0)]
        }
        guard settings.intensity.allows(at: now) else {
            state = .gaveUp
            incidentOpen = false
            let limit = "restart intensity exceeded: \(settings.intensity.maxRestarts) restarts within \(settings.intensity.windowMs) ms"
            return [.noteIncident(limit), .closeIncident(.gaveUp), .exit(code: 1)]
        }
        settings.intensity.record(at: now)
        restarts += 1
        let delay = settings.backoff.take()
        state = .backoff(until: now + delay)
        return [.scheduleRestart(delayMs: delay)]
    }

    private mutating func closeForShutdown() -> [SupervisorAction] {
        guard incidentOpen else { return [] }
        incidentOpen = false
        return [.closeIncident(.shutdown)]
    }

    // MARK: helpers

    /// Sends the next ping when one is due and none is in flight.
    mutating func pingIfDue(_ instance: inout Instance, at now: MonoTime) -> [SupervisorAction] {
        guard settings.triesPing, instance.ping == nil, let due = instance.nextPingAt, now >= due else { return [] }
        lastPingToken &+= 1
        instance.ping = PingInFlight(token: lastPingToken, sentAt: now, deadline: now + settings.missMs)
        instance.nextPingAt = nil
        return [.sendPing(token: lastPingToken)]
    }

    /// The same for a watched instance, whose silence starts with the first ping that goes unanswered.
    mutating func pingIfDue(_ watch: inout Watch, at now: MonoTime) -> [SupervisorAction] {
        let actions = pingIfDue(&watch.instance, at: now)
        // A ping `auto` sends to learn whether the service listens is no heartbeat yet: no silence starts with it.
        if !actions.isEmpty && watch.silence.pingSilentSince == nil && expectsPing { watch.silence.pingSilentSince = now }
        return actions
    }

    /// A ping that goes unanswered (or fails) is a miss: the mode pings strictly, or `auto` has heard one.
    var expectsPing: Bool {
        switch settings.mode {
        case .ping, .both, .http, .tcp, .exec: true
        case .auto: heardPing
        case .notify, .none: false
        }
    }

    /// WATCHDOG=1 keep-alives are due once ready: `notify`, `both`, or `auto` once one was heard.
    var expectsKeepAlive: Bool {
        switch settings.mode {
        case .notify, .both: true
        case .auto: heardKeepAlive
        case .ping, .http, .tcp, .exec, .none: false
        }
    }

    /// Whether an instance not ready within the start timeout is a failure. `none` never is; `auto` only once a
    /// protocol has been heard (before that the instance is supervised for its exit only).
    var holdsToStartTimeout: Bool {
        switch settings.mode {
        case .none: false
        case .auto: heardPing || heardKeepAlive
        case .ping, .notify, .both, .http, .tcp, .exec: true
        }
    }

    func describe(_ status: ChildStatus) -> String {
        switch status {
        case let .exited(code): "exited with code \(code)"
        case let .signaled(signal, core): "killed by \(signalName(signal))" + (core ? " (core dumped)" : "")
        }
    }

    func describe(_ cause: FailureCause) -> String {
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
