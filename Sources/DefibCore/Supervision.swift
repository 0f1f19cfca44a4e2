import Foundation

/// The supervision of one service as a pure function of events and time: the machine decides *when*
/// (stages, deadlines, restarts), the ledger keeps *what is known* (the incident and its evidence), and
/// this ties them together and says which effects the runtime must carry out. The runtime is a loop:
///
/// ```
/// handle(.start)
/// loop:
///   for event in effects.wait(until: nextWakeup) + [.tick]:
///     for effect in handle(event, at: effects.now()):
///       perform it; feed its answer (if any) back to handle at once
/// ```
///
/// Some actions need an answer from the world before the next step makes sense (a spawn's pid, a /proc
/// sample, the store's id for a new incident, a core). Their effect is the last of the batch `handle`
/// returns; the work left is kept in order (`agenda`) and resumes when the answer comes back.
public struct Supervision: Sendable {
    /// What the supervision is given once, at start.
    public struct Setup: Sendable {
        public var config: SupervisorConfig
        /// The service manager's watchdog period for defib (WATCHDOG_USEC), when it watches us.
        public var managerWatchdogUsec: UInt64?
        /// A service manager listens (NOTIFY_SOCKET is set): READY=1 and STATUS= go to it.
        public var managerListening: Bool
        /// Processes that were already our children when supervision began: never a remnant to kill.
        public var childrenBeforeUs: Set<Int32>
        /// defib's stderr is the journal's stream: where `[capture] announce_to_coredumpctl` unset means yes
        /// (someone there runs coredumpctl).
        public var underJournald: Bool
        /// This host's name, for the cores' journal entries (COREDUMP_HOSTNAME).
        public var hostname: String?
        /// A fleet shipper works beside the loop: its backlog goes into STATUS=.
        public var shipping: Bool
        /// Where the service's sockets and flight recorder are (by default those of a service running as defib's user).
        public var paths: ServicePaths
        public init(config: SupervisorConfig, managerWatchdogUsec: UInt64? = nil, managerListening: Bool = false, childrenBeforeUs: Set<Int32> = [],
                    underJournald: Bool = false, hostname: String? = nil, shipping: Bool = false, paths: ServicePaths? = nil) {
            self.config = config; self.managerWatchdogUsec = managerWatchdogUsec
            self.managerListening = managerListening; self.childrenBeforeUs = childrenBeforeUs
            self.underJournald = underJournald; self.hostname = hostname; self.shipping = shipping
            self.paths = paths ?? ServicePaths(config)
        }
    }

    /// A helper process working off the critical path.
    enum Helper: Sendable, Equatable {
        /// gdb reading stacks from a core into `output`.
        case stacks(incidentID: Int64, output: String)
        /// gzip/zstd replacing `input` with `output`.
        case compression(incidentID: Int64, input: String, output: String, tool: CoreCompression)
        /// delve reading a Go service's goroutines from the core, since `startedAt`.
        case goroutines(GoroutinesRequest, startedAt: MonoTime)
        /// gdb reading the stacks of a stall capture (`sequence`) into `output`; the capture is removed after unless
        /// it is a full core kept as such.
        case stallStacks(sequence: Int, core: String, output: String, keepCore: Bool)
    }

    /// Work to do, in order: the machine's actions and the steps that follow an answer.
    enum Step: Sendable {
        case action(SupervisorAction)
        /// The instance is gone: say so, drop its requests, kill what it left behind, then tell the machine.
        case instanceEnded(pid: Int32, status: ChildStatus)
        indirect case recordCore(CoreOutcome)
        /// The next stuck process of the instance after the main one, while the capture budget lasts.
        case captureNextProcess
        case finishCapture(jitterDraw: Double)
        case queryLocks
        /// Goroutines (a Go service's) and stacks from the core of a closed incident, then compression, then retention.
        case evidenceAfterClose(incidentID: Int64)
        /// gdb's stacks from the core, then compression, then retention.
        case stacksAfterClose(incidentID: Int64)
        case compressOrTrim(incidentID: Int64)
        case retention(justWritten: Int64?)
        /// The core is final (stacks, compression, retention): coredumpctl hears of it, then the incident's
        /// evidence is complete.
        case announceCore(incidentID: Int64)
        case helperEnded(pid: Int32, status: ChildStatus)
        /// Offer the store what it refused (updates at once, then each insert in turn).
        case retryWrites
        indirect case retryInsert(Incident)
    }

    /// The answer the agenda waits for.
    enum Awaiting: Sendable {
        case spawn
        case baseline
        case softEvidence(pid: Int32, silenceMs: Double)
        case verdict(pid: Int32)
        case verdictAtOpen(FailureCause, pid: Int32, detected: Date)
        case stored
        case lockEvidence(pid: Int32)
        indirect case runtimeStacks(pid: Int32, observation: Observation, runtime: DetectedRuntime, askedAt: MonoTime)
        case core
        case processCore(pid: Int32)
        case leftovers(oldPid: Int32, status: ChildStatus)
        case helperStart(Helper)
        case stacks(incidentID: Int64, output: String, status: ChildStatus)
        case goroutines(GoroutinesRequest, status: ChildStatus, startedAt: MonoTime)
        case compressedSize(Helper, status: ChildStatus)
        case inventory(justWritten: Int64?)
        /// The store's answer to an incident it had refused before.
        indirect case storedLater(Incident)
        case announcement(incidentID: Int64, note: String)
        case identity(pid: Int32)
        /// Stalls (Supervision+Stall.swift).
        case stallEvidence(StallEvidence)
        /// The progress baseline again, after the capture's own ptrace stop; then gdb over `core` (when there is one).
        case stallBaseline(pid: Int32, sequence: Int, core: String?, keepCore: Bool, binary: String?)
        indirect case stallStored(Incident)
        case stallStacks(sequence: Int, core: String, output: String, keepCore: Bool, status: ChildStatus)
        /// The reading a proof is sought in, at a miss.
        case proof(pid: Int32)
        /// The hung process frozen for its core (restart while the core is written), or why not.
        case freeze(pid: Int32)
    }

    /// The core of a frozen hung instance being written in the background while its replacement runs: the
    /// incident it belongs to (it may close before the core is done; its after-close evidence waits for it).
    struct FrozenCapture: Sendable, Equatable {
        var pid: Int32
        var incidentID: Int64?
        var closedBeforeCore = false
        /// The replacement is ready and the writer was told to stop yielding the CPU.
        var hurried = false
        /// The writer's outcome is in the incident / the frozen instance was killed (overdue, at shutdown: before it).
        var coreRecorded = false
        var killed = false
    }

    public internal(set) var machine: SupervisorMachine
    public internal(set) var ledger: IncidentLedger
    let setup: Setup
    var config: SupervisorConfig { setup.config }

    /// The live instance as spawned.
    var child: (pid: Int32, executable: String)?
    /// The last instance's pid and start, kept after it is gone (a death's incident names them).
    var lastChildPid: Int32?
    var childStartedAt: Date?
    /// Who the last instance ran as, read when it started and again once ready (a death's incident has nothing
    /// later).
    var childProcess: IncidentProcess?
    /// The ping whose request is open, and when it went out (for the round-trip metric).
    var pingOpen: (token: UInt64, sentAt: MonoTime)?
    /// A `locks` query is open until then.
    var locksQueryDeadline: MonoTime?
    /// The instance whose locks were asked for (once per instance, at its first pong).
    var locksAskedOf: Int32?
    /// The probe that is the heartbeat (`http`, `tcp`, `exec`), nil for the protocols.
    let probe: ProbeSpec?
    /// The probe attempt running.
    var probeOpen: ProbeInFlight?
    /// What the last probe attempt of the current silence said (nil once a beat comes).
    var lastProbeFailure: String?
    /// `auto`'s warning about a service supervised for its exit only is given once.
    var warnedUnheard = false
    /// The other stuck processes of the instance still to capture, in order, and when the capture began.
    var processCaptureQueue: [Int32] = []
    var captureStartedAt: MonoTime?
    /// The capture's budget from `captureStartedAt`: the configured one less what the runtime's tool took.
    var captureBudgetMs = 0
    var helpers: [Int32: Helper] = [:]
    var nextManagerKeepAlive = MonoTime(nanoseconds: 0)
    var announcedReady = false
    var lastStatusSent: String?
    /// The last STATUS= the service sent over sd_notify.
    var serviceStatus: String?
    /// The fleet shipper's backlog as last reported.
    var shipping: ShippingReport?
    var lastIncidentLine: String?
    var lastPhase: SupervisorMachine.Phase?
    /// The machine is done; helpers get until `deadline` to finish, then the supervisor exits with `code`.
    var exiting: (code: Int32, deadline: MonoTime)?
    public internal(set) var finished = false
    /// Stall captures taken so far (each one's number in its file name and evidence).
    var stallSequence = 0
    /// The suspect stage's /proc sample and what it says about progress since the first miss: a stall's diagnosis.
    var suspectSample: (sample: ProcessSample, verdict: ProgressVerdict?)?
    /// The current silence's deadline was extended (starved, not stuck): if it ends, that was starvation, not a stall.
    var silenceExtended = false

    /// A frozen instance's core being written in the background.
    var frozenCapture: FrozenCapture?
    /// When what the store refused is offered again (every `storeRetryMs` while anything waits), and whether
    /// the last offer before exit was made.
    var nextStoreRetry: MonoTime?
    var finalWritesOffered = false
    /// Incidents whose refused update was logged in full (once per spell of refusals).
    var refusalsLogged: Set<Int64> = []
    /// Log lines a child can cause (its sd_notify datagrams, its replies, what it leaves behind) go through
    /// this: a flood of them costs a bounded log.
    var childLog = LogRateLimiter()

    var agenda: [Step] = []
    var awaiting: Awaiting?
    var now = Instant(mono: MonoTime(nanoseconds: 0), wall: Date(timeIntervalSince1970: 0))
    var output: [Effect] = []

    public init(_ setup: Setup) {
        self.setup = setup
        machine = SupervisorMachine(settings: .init(setup.config))
        ledger = IncidentLedger(service: setup.config.service.name)
        ledger.stallLimit = StallRateLimit(perHour: setup.config.escalation.stallIncidentsPerHour)
        probe = try? setup.config.heartbeat.probeSpec()
    }

    /// A probe attempt in flight: `attempt` is the token it was started with (its result carries it), `token`
    /// the machine's ping it answers (a retry during start-up hands the running attempt the new token rather than
    /// cutting it short), `deadline` when its time is up.
    struct ProbeInFlight: Sendable, Equatable {
        var attempt: UInt64
        var token: UInt64
        var sentAt: MonoTime
        var deadline: MonoTime
    }

    /// When the runtime must come back with a `.tick` at the latest (it also wakes at most every second).
    public var nextWakeup: MonoTime? {
        if let exiting { return exiting.deadline }
        var times = [machine.nextWakeup, locksQueryDeadline, probeOpen?.deadline, ledger.hasUnwritten ? nextStoreRetry : nil].compactMap { $0 }
        if setup.managerWatchdogUsec != nil { times.append(nextManagerKeepAlive) }
        return times.min()
    }

    /// The one entry point: an event at `now`, the effects to carry out in order.
    public mutating func handle(_ event: SupervisorEvent, at now: Instant) -> [Effect] {
        guard !finished else { return [] }
        self.now = now
        output = []
        if let waiting = awaiting, resume(waiting, with: event) {
            // The answer was awaited: the agenda goes on from where it stopped.
        } else if exiting != nil {
            reactWhileExiting(to: event)
        } else {
            react(to: event)
        }
        drain()
        if exiting != nil, awaiting == nil, agenda.isEmpty, helpers.isEmpty { finishAfterLastOffer() }
        housekeeping(after: event)
        return output
    }

    // MARK: events from the world

    private mutating func react(to event: SupervisorEvent) {
        switch event {
        case .start:
            // The shipper's backlog is known before the first status (READY=1 comes with one).
            askShipping()
            schedule(machine.start(at: now.mono))
        case .tick:
            if let deadline = locksQueryDeadline, now.mono >= deadline {
                locksQueryDeadline = nil
                emit(.cancelLocksQuery)
                log(.debug, "locks query timed out")
            }
            if let open = probeOpen, now.mono >= open.deadline {
                // The attempt's time is up: its answer (what it was still waiting for) is its miss.
                emit(.timeOutProbe(token: open.attempt))
            }
            schedule(machine.tick(at: now.mono))
            offerUnwrittenIfDue()
        case let .signal(sig):
            log(.info, "received \(signalName(sig)); stopping the service and exiting")
            if setup.managerListening { emit(.notifyManager("STOPPING=1\nSTATUS=stopping (\(signalName(sig)))")) }
            schedule(machine.shutdown(at: now.mono))
        case let .childExited(pid, status):
            childExited(pid: pid, status: status)
        case let .notify(message):
            notified(message)
        case let .pingReply(token, line):
            let sent = pingOpen
            pingOpen = nil
            if line == "pong \(token)" {
                if let sent, sent.token == token { emit(.metric(.pingRoundTrip(nanoseconds: now.mono.nanoseconds - sent.sentAt.nanoseconds))) }
                schedule(machine.pongReceived(token: token, at: now.mono))
                // The first pong of a ready instance (also one ready by READY=1 under `auto`): ask for its locks.
                if let pid = child?.pid, locksAskedOf != pid, machine.phase == .running {
                    locksAskedOf = pid
                    agenda.append(.queryLocks)
                }
            } else {
                let shown = line.count > 120 ? String(line.prefix(120)) + "…" : line
                schedule(machine.pingFailed(token: token, reason: "unexpected reply '\(shown)' to 'ping \(token)' (expected 'pong \(token)')", at: now.mono))
            }
        case let .pingFailed(token, problem):
            pingOpen = nil
            schedule(machine.pingFailed(token: token, reason: problem, at: now.mono))
        case let .probeResult(attempt, progress):
            probeAnswered(attempt: attempt, progress: progress)
        case let .locksReply(line):
            locksQueryDeadline = nil
            if let locks = KnownLock.parse(line) { ledger.learnLocks(locks) } else { logFromChild(.warning, "unreadable 'locks' reply: \(line.prefix(200))", source: "control channel") }
        case let .locksFailed(problem):
            locksQueryDeadline = nil
            log(.debug, "locks query failed: \(problem)")
        case let .storeFailed(failure):
            log(.error, "could not update incident: \(failure)")
        case let .frozenCoreWritten(outcome):
            frozenCoreWritten(outcome)
        case let .incidentNotUpdated(incident, failure):
            updateRefused(incident, failure)
        case let .shippingReported(report):
            shipping = report
        case .spawned, .spawnFailed, .observed, .coreWritten, .coreFrozen, .stallEvidenceTaken, .leftoversKilled, .helperStarted, .helperFailed, .stacksRead,
             .fileMeasured, .coresScanned, .incidentStored, .coreAnnounced, .runtimeStacksRead, .goroutinesRead:
            // An answer nobody waits for (the runtime feeds answers back at once, so this does not happen).
            log(.debug, "unexpected answer ignored: \(event)")
        }
    }

    /// After the machine is done: only helpers' ends matter; the rest waits for nobody.
    private mutating func reactWhileExiting(to event: SupervisorEvent) {
        switch event {
        case let .childExited(pid, status) where helpers[pid] != nil:
            agenda.append(.helperEnded(pid: pid, status: status))
        case .tick:
            guard let exiting, now.mono >= exiting.deadline else { return }
            stopHelpersAtShutdown()
        case let .storeFailed(failure):
            log(.error, "could not update incident: \(failure)")
        case let .incidentNotUpdated(incident, failure):
            updateRefused(incident, failure)
        default:
            break
        }
    }

    private mutating func childExited(pid: Int32, status: ChildStatus) {
        if let child, child.pid == pid {
            agenda.append(.instanceEnded(pid: pid, status: status))
        } else if helpers[pid] != nil {
            agenda.append(.helperEnded(pid: pid, status: status))
        } else if let frozen = frozenCapture, frozen.pid == pid {
            log(.info, "the frozen instance pid \(pid) ended: \(machine.describe(status))")
        } else {
            logFromChild(.debug, "reaped orphan pid \(pid): \(machine.describe(status))", source: "orphan")
        }
    }

    /// A probe attempt's verdict, for the machine a pong or a failed ping of the token it answers.
    private mutating func probeAnswered(attempt: UInt64, progress: ProbeProgress) {
        guard let open = probeOpen, open.attempt == attempt else {
            log(.debug, "result of a probe attempt no longer awaited ignored: \(progress)")
            return
        }
        switch progress {
        case .pending:
            return
        case .beat:
            probeOpen = nil
            lastProbeFailure = nil
            emit(.metric(.pingRoundTrip(nanoseconds: now.mono.nanoseconds - open.sentAt.nanoseconds)))
            schedule(machine.pongReceived(token: open.token, at: now.mono))
        case let .miss(failure):
            probeOpen = nil
            lastProbeFailure = failure.description
            schedule(machine.pingFailed(token: open.token, reason: failure.description, at: now.mono))
        }
    }

    /// Every pending sd_notify datagram. Heard: the child's own pid (`notify_access = "main"`, systemd's
    /// NotifyAccess=main), or any process of the instance (`"all"`: its cgroup or its process tree, as the
    /// runtime found it). The socket is open to every local user; the sender's pid is what counts.
    private mutating func notified(_ message: NotifyMessage) {
        let heard = child.map { message.pid == $0.pid || (config.heartbeat.notifyAccess == .all && message.senderInInstance) } ?? false
        guard let child, heard else {
            emit(.metric(.notifyRejected))
            let who = config.heartbeat.notifyAccess == .all ? "only processes of the service's instance (main pid \(child.map { String($0.pid) } ?? "-")) are heard"
                : "only the service's main pid \(child.map { String($0.pid) } ?? "-") is heard"
            logFromChild(.warning, "ignored sd_notify message from pid \(message.pid) (\(who)): \(message.text.prefix(120))", source: "rejected sd_notify")
            return
        }
        let parsed = NotifyProtocol.parse(message.text)
        for problem in parsed.problems { logFromChild(.warning, "sd_notify from pid \(message.pid): \(problem)", source: "sd_notify") }
        if message.truncated { logFromChild(.warning, "sd_notify from pid \(message.pid): datagram longer than 4 KiB, truncated", source: "sd_notify") }
        if message.pid != child.pid, !parsed.fields.isEmpty {
            logFromChild(.debug, "sd_notify from pid \(message.pid) of the instance (main pid \(child.pid)): heard (notify_access = all)", source: "sd_notify")
        }
        schedule(machine.notifyReceived(parsed.fields, at: now.mono))
    }

    /// A line the child causes, through the rate limiter: within the burst it is logged (cut when very
    /// long); past it, counted and reported in one "N … suppressed" line when the window ends.
    mutating func logFromChild(_ level: LogEntry.Level, _ message: String, source: String) {
        switch childLog.admit(source, at: now.mono) {
        case let .log(suppressedNote):
            if let suppressedNote { log(.warning, suppressedNote) }
            log(level, childLog.clip(message))
        case .drop:
            break
        }
    }

    // MARK: the agenda

    /// The machine's actions go first, before whatever was left (they follow from what just happened).
    mutating func schedule(_ actions: [SupervisorAction]) {
        agenda.insert(contentsOf: actions.map { .action($0) }, at: 0)
    }

    mutating func scheduleFirst(_ steps: [Step]) { agenda.insert(contentsOf: steps, at: 0) }

    private mutating func drain() {
        while awaiting == nil, !finished, !agenda.isEmpty {
            run(agenda.removeFirst())
            flushChanges()
        }
    }

    /// Asks the world for an answer and stops the agenda until it comes.
    mutating func ask(_ effect: Effect, awaiting: Awaiting) {
        flushChanges()
        emit(effect)
        self.awaiting = awaiting
    }

    /// Writes each incident the ledger changed, once.
    mutating func flushChanges() {
        for incident in ledger.takeChanges() { emit(.updateIncident(incident)) }
    }

    /// At the end, what the store refused is offered one last time; then the supervision is over.
    private mutating func finishAfterLastOffer() {
        if ledger.hasUnwritten && !finalWritesOffered {
            finalWritesOffered = true
            agenda.append(.retryWrites)
            drain()
            guard awaiting == nil, agenda.isEmpty else { return }
        }
        finish()
    }

    mutating func finish() {
        guard let exiting else { return }
        if probeOpen != nil { emit(.cancelProbe); probeOpen = nil }
        for note in childLog.flushAll() { log(.warning, note) }
        for incident in ledger.unwritten {
            // Not lost: the whole record is in the log (journald or stderr) even though the store never took it.
            log(.error, "incident of pid \(incident.pid) detected at \(RFC3339.string(incident.detectedAt)) could not be stored before exit; as last known: \(IncidentJSON.string(incident, includeStacks: true, pretty: false))")
        }
        flushChanges()
        emit(.exit(code: exiting.code))
        finished = true
        agenda.removeAll()
    }

    // MARK: after every event

    private mutating func housekeeping(after event: SupervisorEvent) {
        if let usec = setup.managerWatchdogUsec, now.mono >= nextManagerKeepAlive {
            // WATCHDOG=1 from the loop itself: if the loop stops turning, the manager's watchdog fires.
            emit(.notifyManager("WATCHDOG=1"))
            nextManagerKeepAlive = now.mono + Int(Self.keepAlivePeriodNs(watchdogUsec: usec) / 1_000_000)
        }
        guard case .tick = event, !finished else { return }
        // A ping the machine gave up on (its deadline passed, or the instance is being handled) is abandoned.
        if let open = pingOpen, machine.pingInFlight != open.token {
            emit(.cancelPing)
            pingOpen = nil
        }
        for note in childLog.flush(at: now.mono) { log(.warning, note) }
        if let open = probeOpen, machine.pingInFlight != open.token {
            emit(.cancelProbe)
            probeOpen = nil
        }
        if machine.phase != lastPhase {
            lastPhase = machine.phase
            emit(.metric(.phase(machine.phase)))
        }
        updateManagerStatus()
        askShipping()
    }

    /// The fleet shipper's backlog for the next STATUS=, when a shipper runs and a manager listens (a lock
    /// and a copy: the loop never waits for the shipper). A status is at most one turn behind its backlog.
    private mutating func askShipping() {
        if setup.shipping && setup.managerListening { emit(.readShipping) }
    }

    /// The keep-alive period: 40 % of WATCHDOG_USEC, so that with the loop's own latency the gap between two
    /// keep-alives stays under the half that sd_watchdog_enabled(3) asks for.
    public static func keepAlivePeriodNs(watchdogUsec usec: UInt64) -> Int64 { Int64(usec) * 400 }

    /// STATUS= for `systemctl status`, sent when it changes; READY=1 the first time the service answers.
    mutating func updateManagerStatus(ready: Bool = false) {
        guard setup.managerListening else { return }
        var status = "\(config.service.name): \(machine.phase.rawValue)"
        if let pid = machine.pid { status += " pid \(pid)" }
        status += "; \(machine.restarts) restart(s)"
        if let last = lastIncidentLine { status += "; last incident \(last)" }
        if let serviceStatus { status += "; service: \(serviceStatus.prefix(80))" }
        if let shipping { status += "; \(shipping.statusClause)" }
        var message = ""
        if ready && !announcedReady {
            announcedReady = true
            message += "READY=1\n"
        }
        guard !message.isEmpty || status != lastStatusSent else { return }
        lastStatusSent = status
        emit(.notifyManager(message + "STATUS=" + status))
    }

    mutating func emit(_ effect: Effect) { output.append(effect) }

    mutating func log(_ level: LogEntry.Level, _ message: String, fields: [String: String] = [:]) {
        emit(.log(LogEntry(level, message, fields: fields)))
    }
}
