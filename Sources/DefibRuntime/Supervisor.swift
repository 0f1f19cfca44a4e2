import DefibCore
import Logging

/// The supervisor's runtime: an interpreter. It waits for the world (`SupervisorEffects.wait`), hands each
/// event to the pure `Supervision`, and carries out the effects it returns, feeding every answer straight
/// back. It decides nothing and calls no OS function itself: the effects do that.
///
/// ```
/// handle(.start)
/// until the supervision says exit:
///     for event in effects.wait(until: supervision.nextWakeup) + [.tick]:
///         for effect in supervision.handle(event, at: effects.now()):
///             answer = perform(effect)            // spawn, signal, observe, write a core, store, log …
///             if answer: handle(answer) at once   // the pid, the sample, the core, the incident's id …
/// ```
///
/// Runs on the thread that calls `run()`; that thread spawns the children, so it must live as long as the
/// supervisor (PR_SET_PDEATHSIG follows the spawning thread).
public final class Supervisor {
    private(set) var supervision: Supervision
    let effects: any SupervisorEffects
    let logger: Logger
    let metrics: SupervisorMetrics
    private var exitCode: Int32?
    /// What `defib run` settled before the loop and holds until it ends (the lock, the service's cgroup).
    var startup: SupervisorStartup?

    public init(_ setup: Supervision.Setup, effects: any SupervisorEffects, logger: Logger) {
        self.supervision = Supervision(setup)
        self.effects = effects
        self.logger = logger
        self.metrics = SupervisorMetrics(service: setup.config.service.name)
    }

    /// Runs until shutdown (exit code 0) or until the restart intensity is exceeded (exit code 1).
    public func run() -> Int32 {
        handle(.start)
        while exitCode == nil {
            for event in effects.wait(until: supervision.nextWakeup) where exitCode == nil { handle(event) }
            if exitCode == nil { handle(.tick) }
        }
        startup?.finish()
        return exitCode ?? 1
    }

    /// One event and the answers to the effects it causes, in order.
    private func handle(_ event: SupervisorEvent) {
        var answers: [SupervisorEvent] = []
        for effect in supervision.handle(event, at: effects.now()) {
            if let answer = perform(effect) { answers.append(answer) }
        }
        var next = 0
        while next < answers.count {
            for effect in supervision.handle(answers[next], at: effects.now()) {
                if let answer = perform(effect) { answers.append(answer) }
            }
            next += 1
        }
    }

    /// Carries out one effect; its answer, when it has one.
    private func perform(_ effect: Effect) -> SupervisorEvent? {
        switch effect {
        case let .spawn(plan):
            return effects.spawn(plan)
        case let .signal(pid, signal):
            effects.signal(pid: pid, signal: signal)
        case let .killLeftovers(pid, sparing):
            return .leftoversKilled(effects.killLeftovers(of: pid, sparing: sparing))
        case let .sendPing(token):
            return effects.sendPing(token: token).map { .pingFailed(token: token, problem: $0) }
        case .cancelPing:
            effects.cancelPing()
        case .queryLocks:
            return effects.queryLocks().map { .locksFailed($0) }
        case .cancelLocksQuery:
            effects.cancelLocksQuery()
        case let .startProbe(token):
            return effects.startProbe(token: token).map { .probeResult(token: token, .miss($0)) }
        case let .timeOutProbe(token):
            return effects.timeOutProbe(token: token).map { .probeResult(token: token, .miss($0)) }
        case .cancelProbe:
            effects.cancelProbe()
        case let .observe(request):
            return .observed(effects.observe(request))
        case let .writeCore(request):
            return .coreWritten(effects.writeCore(request))
        case let .freezeForCore(request):
            return .coreFrozen(effects.freezeForCore(request))
        case let .writeFrozenCore(background):
            return effects.writeFrozenCore(background: background).map { .coreWritten($0) }
        case .hurryFrozenCore:
            effects.hurryFrozenCore()
        case let .takeStallEvidence(request):
            return .stallEvidenceTaken(effects.takeStallEvidence(request))
        case let .startStacks(binary, core, output):
            return Self.helper(effects.startStacks(binary: binary, core: core, output: output))
        case let .startCompression(argv):
            return Self.helper(effects.startCompression(argv: argv))
        case let .readStacks(path):
            return .stacksRead(effects.readStacks(path: path))
        case let .readRuntimeStacks(request):
            return .runtimeStacksRead(effects.readRuntimeStacks(request))
        case let .startGoroutines(request):
            return Self.helper(effects.startGoroutines(request))
        case let .readGoroutines(path):
            return .goroutinesRead(effects.readGoroutines(path: path))
        case let .stopHelper(pid):
            effects.stopHelper(pid: pid)
        case let .measureFile(path):
            return .fileMeasured(effects.fileSize(path: path))
        case let .removeFile(path):
            effects.removeFile(path: path)
        case let .scanCores(directory):
            return .coresScanned(effects.scanCores(directory: directory))
        case let .insertIncident(incident):
            return .incidentStored(effects.insert(incident))
        case let .updateIncident(incident):
            return effects.update(incident).map { .incidentNotUpdated(incident, $0) }
        case let .recordCoreRemoved(id, note):
            return effects.recordCoreRemoved(incidentID: id, note: note).map { .storeFailed($0) }
        case let .log(entry):
            logger.log(level: Logger.Level(entry.level), "\(entry.message)",
                       metadata: entry.fields.isEmpty ? nil : entry.fields.mapValues { .string($0) })
        case let .metric(event):
            metrics.record(event)
        case let .notifyManager(state):
            effects.notifyManager(state)
        case let .announceCore(fields):
            return .coreAnnounced(effects.announceCore(fields))
        case .readShipping:
            return .shippingReported(effects.shippingReport())
        case let .exit(code):
            exitCode = code
        }
        return nil
    }

    private static func helper(_ started: Result<Int32, EffectFailure>) -> SupervisorEvent {
        switch started {
        case let .success(pid): .helperStarted(pid: pid)
        case let .failure(failure): .helperFailed(failure.description)
        }
    }
}

extension Logger.Level {
    init(_ level: LogEntry.Level) {
        switch level {
        case .trace: self = .trace
        case .debug: self = .debug
        case .info: self = .info
        case .notice: self = .notice
        case .warning: self = .warning
        case .error: self = .error
        case .critical: self = .critical
        }
    }
}
