import DefibCore
import DefibPOSIX
import DefibStore
import FlightRecorder
import Foundation
import Glibc
import Logging

/// One lock the service told us about: its name and the address of its word in the service's memory.
struct KnownLock: Equatable {
    var name: String
    var address: UInt64
    var word: String?
    var holder: String?
    var lastHolder: String?
    var readersWaiting: Int?
    var writersWaiting: Int?
}

/// The supervisor's runtime: feeds real events and a real clock into `SupervisorMachine` and performs
/// the actions it returns. Runs on the thread that calls `run()`; that thread spawns the children, so
/// it must live as long as the supervisor (PR_SET_PDEATHSIG follows the spawning thread).
public final class Supervisor {
    let config: SupervisorConfig
    let logger: Logger
    let recorder: IncidentStore
    var machine: SupervisorMachine
    let signals: SignalQueue
    /// Descriptors passed to every instance (LISTEN_FDS), bound once by us.
    let passedSockets: [(name: String, fd: Int32)]

    var child: ChildProcess?
    var childStartedAt: Date?
    var ping: (token: UInt64, request: ControlRequest)?
    var locksQuery: (request: ControlRequest, deadline: Int64)?
    var knownLocks: [KnownLock] = []
    var incident: Incident?
    var backgroundJobs: [Int32: BackgroundJob] = [:]
    /// The pid of the last instance, kept after it is reaped (an exit incident names it).
    var lastChildPid: Int32?
    /// The /proc sample taken when progress was last judged.
    var lastSample: ProcessSample?
    /// The sample `lastSample` was judged against (the start of the window of the last progress verdict).
    var lastSampleBaseline: ProcessSample?
    var exitCode: Int32?
    /// The /proc sample taken at the first miss of the current silence.
    var baselineSample: ProcessSample?
    /// Decisions taken before the incident existed (suspect evidence, deadline extensions), copied into it.
    var pendingNotes: [String] = []
    /// The last STATUS= the service sent over sd_notify.
    var serviceStatus: String?
    /// The NOTIFY_SOCKET served to the child.
    var notifyServer: NotifyServer?
    /// systemd's watchdog period for us (WATCHDOG_USEC), when it watches us.
    let systemdWatchdogUsec: UInt64?
    var nextSystemdKeepAlive: Int64 = 0
    var announcedReady = false
    var lastStatusSent: String?
    var lastIncidentLine: String?
    let testWedgeFile: String?
    let metrics: SupervisorMetrics
    var lastPhase: SupervisorMachine.Phase?
    var pingSentAtNs: Int64 = 0
    /// Processes that were already our children when supervision began.
    let childrenBeforeUs: Set<Int32>

    /// Blocks the signals the supervisor handles and returns their queue. Call it first thing, before any
    /// library starts a thread: a thread that does not block SIGTERM would take its default action.
    public static func takeOverSignals() throws -> SignalQueue {
        signal(SIGPIPE, SIG_IGN)
        return try SignalQueue(signals: [SIGCHLD, SIGTERM, SIGINT, SIGHUP])
    }

    public init(config: SupervisorConfig, recorder: IncidentStore, logger: Logger, signals: SignalQueue,
                passedSockets: [(name: String, fd: Int32)] = []) throws {
        self.config = config
        self.recorder = recorder
        self.logger = logger
        self.passedSockets = passedSockets
        self.machine = SupervisorMachine(settings: .init(config))
        self.signals = signals
        self.metrics = SupervisorMetrics(service: config.service.name)
        self.childrenBeforeUs = Set(childProcesses(of: getpid()))
        self.systemdWatchdogUsec = SystemdNotifier.watchdogUsec()
        self.testWedgeFile = ProcessInfo.processInfo.environment["DEFIB_TEST_WEDGE_FILE"]
        try becomeChildSubreaper()
        try makeDirectory(config.stateDirectory, mode: 0o700)
        try makeDirectory(config.coreDirectory, mode: 0o700)
        try makeDirectory(config.stateDirectory + "/run", mode: 0o700)
        try makeDirectory(runDirectory, mode: 0o700)
        if config.controlSocketPath != runDirectory + "/control.sock" {
            // A control socket elsewhere: its directory is made (0700) only if missing — never chmod'ed, it
            // may be shared (/run, /tmp) — and the run directory gets a symlink to it for `defib ctl`.
            let dir = (config.controlSocketPath as NSString).deletingLastPathComponent
            if access(dir, F_OK) != 0 { try makeDirectory(dir, mode: 0o700) }
            let link = runDirectory + "/control.sock"
            unlink(link)
            if symlink(config.controlSocketPath, link) != 0 { throw SystemError("symlink(\(config.controlSocketPath), \(link))") }
        }
        notifyServer = try NotifyServer(path: notifySocketPath)
        // Who supervises this service: `defib ctl` picks among live supervisors, not among sockets (a service
        // that is restarting has none for a moment, and a line meant for it must not go to another one).
        let pidFile = runDirectory + "/supervisor.pid"
        if (try? "\(getpid())\n".write(toFile: pidFile, atomically: true, encoding: .utf8)) == nil {
            logger.warning("could not write \(pidFile): defib ctl will fall back to probing sockets")
        }
    }

    /// The instance's run directory (0700): notify socket, flight recorder, the control socket or a link to it.
    var runDirectory: String { config.runDirectory }
    var flightRecorderPath: String { runDirectory + "/flight-recorder" }

    func now() -> MonoTime { MonoTime(nanoseconds: monotonicNanoseconds()) }

    /// Runs until shutdown (exit code 0) or until the restart intensity is exceeded (exit code 1).
    public func run() -> Int32 {
        perform(machine.start(at: now()))
        while exitCode == nil {
            waitForEvents()
        }
        finishBackgroundJobs()
        return exitCode ?? 1
    }

    // MARK: the loop

    private func waitForEvents() {
        var fds = [pollfd(fd: signals.fd, events: Int16(POLLIN), revents: 0)]
        if let notifyServer { fds.append(pollfd(fd: notifyServer.fd, events: Int16(POLLIN), revents: 0)) }
        if let ping { fds.append(pollfd(fd: ping.request.fd, events: Int16(POLLIN), revents: 0)) }
        if let locksQuery { fds.append(pollfd(fd: locksQuery.request.fd, events: Int16(POLLIN), revents: 0)) }
        var timeoutMs: Int32 = 1000
        if let wake = machine.nextWakeup {
            timeoutMs = Int32(clamping: max(0, (wake.nanoseconds - monotonicNanoseconds() + 999_999) / 1_000_000))
        }
        if let q = locksQuery { timeoutMs = min(timeoutMs, Int32(clamping: max(0, (q.deadline - monotonicNanoseconds()) / 1_000_000))) }
        if let keepAlive = msUntilSystemdKeepAlive { timeoutMs = min(timeoutMs, keepAlive) }
        _ = poll(&fds, nfds_t(fds.count), min(timeoutMs, 1000))

        for sig in signals.drain() {
            switch sig {
            case SIGCHLD: handleReaped(reapAll())
            default:
                logger.info("received \(signalName(sig)); stopping the service and exiting")
                SystemdNotifier.notify("STOPPING=1\nSTATUS=stopping (\(signalName(sig)))")
                perform(machine.shutdown(at: now()))
            }
        }
        handleReaped(reapAll())  // a SIGCHLD can be merged with one already drained
        handleNotifyMessages()
        if let ping { pollPing(ping.token, ping.request) }
        if let q = locksQuery { pollLocksQuery(q.request, deadline: q.deadline) }
        perform(machine.tick(at: now()))
        // A ping the machine gave up on (deadline passed) is abandoned.
        if let p = ping, machine.pingInFlight != p.token { p.request.close(); ping = nil }
        keepSystemdWatchdogFed()
        if machine.phase != lastPhase {
            lastPhase = machine.phase
            metrics.phase(machine.phase.rawValue, all: SupervisorMachine.Phase.allCases.map(\.rawValue))
        }
        updateSystemdStatus()
        wedgeIfAskedForTests()
    }

    func handleReaped(_ reaped: [Reaped]) {
        for r in reaped {
            if let child, r.pid == child.pid {
                childReaped(child, status: r.status)
            } else if let job = backgroundJobs.removeValue(forKey: r.pid) {
                finishBackgroundJob(job, status: r.status)
            } else {
                logger.debug("reaped orphan pid \(r.pid): \(describe(r.status))")
            }
        }
    }

    /// The instance is gone (reaped by the loop, or by the kernel capture's wait).
    func childReaped(_ child: ChildProcess, status: ChildStatus) {
        logger.warning("service pid \(child.pid) ended: \(describe(status))")
        child.closePidfd()
        self.child = nil
        ping?.request.close(); ping = nil
        locksQuery = nil
        killLeftovers(of: child.pid)
        perform(machine.childExited(status, at: now()))
    }

    /// Processes the instance started and left behind (daemonized out of its process group, or workers
    /// of an instance that died) were re-parented to us, its subreaper: kill them, so the next instance
    /// never runs beside a remnant of the last one.
    func killLeftovers(of oldPid: Int32) {
        // Not ours to kill: our own helpers, and children we had before we started supervising (a shell
        // that exec'd defib after forking, say, a log filter leaves it as our child).
        let ours = Set(backgroundJobs.keys).union(childrenBeforeUs)
        for pid in childProcesses(of: getpid()) where !ours.contains(pid) && pid != child?.pid {
            let name = processName(pid)
            guard killProcess(pid) else { continue }
            let line = "killed pid \(pid) (\(name)), left behind by the instance pid \(oldPid)"
            logger.warning("\(line)")
            if incident != nil { incident?.notes.append(line); saveIncident() } else { pendingNotes.append(line) }
        }
    }

    private func pollPing(_ token: UInt64, _ request: ControlRequest) {
        let progress = request.readAvailable()
        switch progress {
        case .pending: return
        case let .reply(line):
            request.close(); ping = nil
            if line == "pong \(token)" {
                metrics.pingRoundTrip.recordNanoseconds(monotonicNanoseconds() - pingSentAtNs)
                let wasStarting = machine.phase == .starting
                perform(machine.pongReceived(token: token, at: now()))
                if wasStarting && machine.phase == .running { queryLocks() }
            } else {
                let shown = line.count > 120 ? String(line.prefix(120)) + "…" : line
                perform(machine.pingFailed(token: token, reason: "unexpected reply '\(shown)' to 'ping \(token)' (expected 'pong \(token)')", at: now()))
            }
        case let .failed(problem):
            request.close(); ping = nil
            perform(machine.pingFailed(token: token, reason: problem, at: now()))
        }
    }

    // MARK: lock telemetry over the control channel

    /// Asks the healthy service which locks it has and where their words live.
    private func queryLocks() {
        switch ControlRequest.start(path: config.controlSocketPath, line: "locks") {
        case let .success(r): locksQuery = (r, monotonicNanoseconds() + 1_000_000_000)
        case let .failure(e): logger.debug("locks query failed: \(e)")
        }
    }

    private func pollLocksQuery(_ request: ControlRequest, deadline: Int64) {
        switch request.readAvailable() {
        case .pending:
            if monotonicNanoseconds() > deadline { request.close(); locksQuery = nil; logger.debug("locks query timed out") }
        case let .reply(line):
            request.close(); locksQuery = nil
            if let locks = Self.parseLocks(line) { knownLocks = locks } else { logger.warning("unreadable 'locks' reply: \(line.prefix(200))") }
        case let .failed(p):
            request.close(); locksQuery = nil
            logger.debug("locks query failed: \(p)")
        }
    }

    /// Parses `{"locks":[{"name":..,"address":"0x…","word":"0x…",...}]}`; nil when it is not that shape.
    static func parseLocks(_ line: String) -> [KnownLock]? {
        guard let obj = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
              let locks = obj["locks"] as? [[String: Any]] else { return nil }
        return locks.compactMap { l in
            guard let name = l["name"] as? String, let addr = l["address"] as? String,
                  let address = UInt64(addr.hasPrefix("0x") ? String(addr.dropFirst(2)) : addr, radix: 16) else { return nil }
            func label(_ key: String) -> String? {
                guard let h = l[key] as? [String: Any], let label = h["label"] as? String else { return nil }
                return "\(label) tid=\(h["tid"].map { "\($0)" } ?? "?")"
            }
            return KnownLock(name: name, address: address, word: l["word"] as? String,
                             holder: label("holder"), lastHolder: label("last_holder"),
                             readersWaiting: l["readers_waiting"] as? Int, writersWaiting: l["writers_waiting"] as? Int)
        }
    }

    // MARK: actions

    func perform(_ actions: [SupervisorAction]) {
        for action in actions { perform(action) }
    }

    private func perform(_ action: SupervisorAction) {
        switch action {
        case .spawn:
            spawnInstance()
        case let .sendPing(token):
            switch ControlRequest.start(path: config.controlSocketPath, line: "ping \(token)") {
            case let .success(r): ping = (token, r); pingSentAtNs = monotonicNanoseconds()
            case let .failure(e): perform(machine.pingFailed(token: token, reason: e.problem, at: now()))
            }
        case let .instanceReady(pid):
            logger.info("service \(config.service.name) pid \(pid) is ready")
            updateSystemdStatus(ready: true)
        case let .heartbeatMissed(misses, silenceMs, reason):
            logger.notice("heartbeat missed (\(misses) in a row, silent \(Int(silenceMs)) ms): \(reason)")
            metrics.misses.increment()
            // Kept for the incident, if this silence becomes one (the first few, then a count).
            let line = "miss \(misses) after \(Int(silenceMs)) ms of silence: \(reason)"
            if misses <= Self.missNotesKept { pendingNotes.append(line) }
            else if misses == Self.missNotesKept + 1 { pendingNotes.append("further misses are counted, not listed (see misses in the cause)") }
        case let .sampleProgress(pid):
            baselineSample = ProcSampler.sample(pid: pid)
        case let .collectSoftEvidence(pid, silenceMs):
            // Soft evidence, nothing done to the process: its threads, its progress, and its locks as the
            // flight recorder shows them (the recorder is read from a file; the process is not touched).
            let now = ProcSampler.sample(pid: pid)
            var line = "suspect after \(Int(silenceMs)) ms of silence: threads \(now.stateSummary)"
            if let before = baselineSample { line += "; progress since the first miss: \(ProgressJudge.judge(before: before, after: now).reason)" }
            if let locks = suspectLockSummary(pid: pid) { line += "; locks: \(locks)" }
            logger.warning("\(line)")
            pendingNotes.append(line)
            metrics.suspects.increment()
        case let .judgeProgress(pid):
            let verdict = judgeProgress(pid: pid)
            logger.notice("progress of pid \(pid): \(verdict.kind): \(verdict.reason)")
            metrics.verdict(verdict.kind)
            perform(machine.progressJudged(verdict, at: now()))
        case let .deadlineExtended(byMs, totalMs, reason):
            let line = "deadline extended by \(byMs) ms (\(totalMs) ms in all): starved, not stuck: \(reason)"
            logger.warning("\(line)")
            pendingNotes.append(line)
            metrics.extensions.increment()
        case let .silenceCancelled(reason):
            logger.info("the current silence no longer counts: \(reason)")
            pendingNotes.removeAll()
            baselineSample = nil
        case let .serviceNotified(text):
            logger.info("service says: \(text)")
            if text.hasPrefix("STATUS=") { serviceStatus = String(text.dropFirst(7)) }
        case let .heartbeatRecovered(silenceMs, misses, wasSuspect):
            let line = "heartbeat back after \(Int(silenceMs)) ms of silence (\(misses) missed)"
            if wasSuspect { logger.warning("\(line); no kill") } else { logger.info("\(line)") }
            metrics.recoveries.increment()
            pendingNotes.removeAll()
            baselineSample = nil
        case let .openIncident(cause):
            openIncident(cause)
        case let .captureEvidence(pid):
            let keepAlive = keepAliveDuringCapture()
            captureEvidence(pid: pid)
            keepAlive?.finish()
            keepSystemdWatchdogFed()
            perform(machine.captureFinished(at: now(), jitterDraw: Double.random(in: 0..<1)))
        case let .kill(pid):
            logger.warning("killing pid \(pid) and its process group (SIGKILL)")
            if let child, child.pid == pid { try? child.signal(SIGKILL) }
            _ = Glibc.kill(-pid, SIGKILL)
            if incident != nil && incident?.killedAt == nil { incident?.killedAt = Date(); saveIncident() }
        case let .terminate(pid):
            logger.info("stopping pid \(pid) (SIGTERM to its process group)")
            if let child, child.pid == pid { try? child.signal(SIGTERM) }
            _ = Glibc.kill(-pid, SIGTERM)
        case let .killDelayed(ms, maxMs):
            metrics.killJitter.recordMilliseconds(ms)
            perform(.noteIncident("kill delayed \(ms) ms (kill jitter up to \(maxMs) ms)"))
        case let .noteIncident(note):
            logger.notice("\(note)")
            incident?.notes.append(note); saveIncident()
        case let .incidentRestarted(newPid):
            incident?.restartedAt = Date(); incident?.newPid = newPid; saveIncident()
        case let .closeIncident(outcome):
            closeIncident(outcome)
        case let .scheduleRestart(delayMs):
            metrics.restarts.increment()
            logger.info("restarting \(config.service.name) in \(delayMs) ms (restart \(machine.restarts))")
        case let .exit(code):
            if code != 0 { logger.error("giving up on \(config.service.name): restart intensity exceeded") }
            exitCode = code
        }
    }

    /// How many miss lines an incident keeps (the count is in its cause either way).
    static let missNotesKept = 8

    /// The flight recorder's view of the locks at the suspect stage, one line: each lock's word, its holder
    /// and waiters. nil without a recorder for this pid.
    func suspectLockSummary(pid: Int32) -> String? {
        guard let record = try? FlightRecorderFile.read(path: flightRecorderPath), record.pid == pid, !record.locks.isEmpty else { return nil }
        return record.locks.prefix(4).map { lock in
            var text = "'\(lock.name)' \(hex64(lock.word))"
            if let h = lock.holder { text += " held by \(h.label) tid=\(h.tid)" + (lock.holderWaitingForReaders ? " (waiting for readers)" : "") }
            text += ", \(lock.readersWaiting) reader(s) and \(lock.writersWaiting) writer(s) waiting"
            return text
        }.joined(separator: "; ")
    }

    private func spawnInstance() {
        unlink(config.controlSocketPath)
        var request = SpawnRequest(argv: config.service.argv, environment: childEnvironment(), workingDirectory: config.service.workingDirectory)
        request.passFDs = passedSockets.map(\.fd)
        request.passFDNames = passedSockets.map(\.name)
        do {
            let c = try spawnProcess(request)
            child = c
            lastChildPid = c.pid
            childStartedAt = Date()
            knownLocks = []
            logger.info("started \(config.service.name): pid \(c.pid) (\(c.executable))")
            perform(machine.spawned(pid: c.pid, at: now()))
        } catch {
            logger.error("could not start \(config.service.name): \(error)")
            perform(machine.spawnFailed(message: "\(error)", at: now()))
        }
    }

    private func openIncident(_ cause: FailureCause) {
        let detected = Date()
        let incidentCause: IncidentCause
        switch cause {
        case let .missedHeartbeat(misses, since, error, _, _, _):
            incidentCause = .missedHeartbeat(misses: misses, lastPongAt: since.map { detected.addingTimeInterval(-$0 / 1000) }, lastError: error)
        case let .startTimeout(ms, _): incidentCause = .startTimeout(seconds: Double(ms) / 1000)
        case let .died(.exited(code)): incidentCause = .exited(code: code)
        case let .died(.signaled(sig, core)): incidentCause = .signaled(signal: sig, coreDumped: core)
        case let .spawnFailed(message): incidentCause = .spawnFailed(message: message)
        case let .triggered(reason): incidentCause = .triggered(reason: reason)
        }
        var new = Incident(service: config.service.name, pid: machine.pid ?? child?.pid ?? lastChildPid ?? 0,
                           binaryPath: child?.executable, startedAt: childStartedAt, detectedAt: detected, cause: incidentCause)
        if case .died = cause {} else { new.process = ProcessIdentity.read(pid: new.pid) }   // a reaped pid may be another's now
        if case let .startTimeout(_, lastError) = cause {
            if let lastError { new.notes.append("last control-channel error: \(lastError)") }
            // Never ready is a hang too: say whether it is stuck, stopped or busy.
            if let pid = machine.pid {
                new.progress = judgeProgress(pid: pid)
                new.threadStates = lastSample?.stateSummary
                if let verdict = new.progress { metrics.verdict(verdict.kind) }
            }
        }
        if case let .missedHeartbeat(_, _, _, silence, extended, verdict) = cause {
            new.silenceMs = silence
            new.extendedMs = extended
            new.progress = verdict
            new.threadStates = lastSample?.stateSummary
        }
        new.notes += pendingNotes
        pendingNotes.removeAll()
        // A death or a failed start needs no evidence to be explained (no capture follows it): name it now.
        // Hangs are diagnosed once their evidence has been read.
        switch cause {
        case .died, .spawnFailed:
            let diagnosis = Diagnoser.diagnose(DiagnosisInput(cause: incidentCause, locks: [],
                                                              nowUnixMs: Int64(detected.timeIntervalSince1970 * 1000)))
            new.diagnosis = diagnosis.line
            new.diagnosisEvidence = diagnosis.evidence
            new.signature = signature(of: new)
        case .missedHeartbeat, .startTimeout, .triggered:
            break
        }
        baselineSample = nil
        new.lockState = knownLocks.map { lockState($0, word: $0.word ?? "unknown", source: "control") }
        do {
            new.id = try recorder.insert(new)
        } catch {
            logger.error("could not record incident: \(error)")
        }
        incident = new
        metrics.incident(cause: incidentCause.kind)
        lastIncidentLine = "\(new.id.map { "#\($0)" } ?? "") \(incidentCause.kind) at \(RFC3339.string(detected))"
        logger.warning("incident \(new.id.map(String.init) ?? "?") opened: \(incidentCause.summary)",
                       metadata: journalFields(new, messageID: DefibMessageID.incidentOpened))
    }

    /// Progress since the first miss; with no baseline, two samples 100 ms apart.
    private func judgeProgress(pid: Int32) -> ProgressVerdict {
        var before = baselineSample
        if before == nil {
            before = ProcSampler.sample(pid: pid)
            usleep(100_000)
        }
        let after = ProcSampler.sample(pid: pid)
        lastSample = after
        lastSampleBaseline = before
        return ProgressJudge.judge(before: before!, after: after)
    }

    func lockState(_ l: KnownLock, word: String, source: String) -> LockState {
        LockState(name: l.name, address: hex64(l.address), word: word, source: source, holder: l.holder,
                  lastHolder: l.lastHolder, readersWaiting: l.readersWaiting, writersWaiting: l.writersWaiting)
    }

    private func closeIncident(_ outcome: IncidentOutcome) {
        guard var current = incident else { return }
        current.outcome = outcome
        if outcome == .recovered { current.readyAt = Date() }
        incident = current
        saveIncident()
        let id = current.id.map(String.init) ?? "?"
        let took = current.readyAt.map { String(format: " in %.0f ms", $0.timeIntervalSince(current.detectedAt) * 1000) } ?? ""
        logger.warning("incident \(id) closed: \(outcome.rawValue)\(took)",
                       metadata: journalFields(current, messageID: DefibMessageID.incidentClosed))
        incident = nil
        afterIncidentClosed(current)
    }

    /// The structured fields of an incident's journal entries (like systemd-coredump's): every entry carries
    /// the incident, service, pid and cause, and whatever is known so far of the diagnosis, signature and core.
    func journalFields(_ i: Incident, messageID: String) -> Logger.Metadata {
        var fields: Logger.Metadata = ["message_id": "\(messageID)", "incident_id": "\(i.id.map(String.init) ?? "")",
                                       "service": "\(i.service)", "pid": "\(i.pid)", "cause": "\(i.cause.kind)",
                                       "outcome": "\(i.outcome.rawValue)"]
        if !i.diagnosis.isEmpty { fields["diagnosis"] = "\(i.diagnosis)" }
        if let signature = i.signature { fields["signature"] = "\(signature)" }
        if let core = i.capture?.path { fields["core_path"] = "\(core)" }
        if let method = i.capture?.method { fields["capture_method"] = "\(method)" }
        if let newPid = i.newPid { fields["new_pid"] = "\(newPid)" }
        return fields
    }

    func saveIncident() {
        guard let incident, incident.id != nil else { return }
        do { try recorder.update(incident) } catch { logger.error("could not update incident: \(error)") }
    }

    func describe(_ s: ChildStatus) -> String {
        switch s {
        case let .exited(code): "exited with code \(code)"
        case let .signaled(sig, core): "killed by \(signalName(sig))\(core ? " (core dumped)" : "")"
        }
    }
}
