import DefibCore
import DefibPOSIX
import Foundation
import Glibc

/// What a harness invocation produced.
public struct ChaosOutcome: Sendable {
    /// Every run's verdict, in execution order.
    public var results: [RunResult]
    /// The explicit verdicts (overload, soak).
    public var verdicts: [Verdict]
    /// Whether everything passed (exit status 0).
    public var passed: Bool
    /// One sentence per failed check or verdict.
    public var failures: [String]
    /// Where the report went.
    public var reportDirectory: String
    /// The signal that cut the invocation short, if any.
    public var interruptedBy: Int32?
}

/// Runs the plan: starts the backend, a supervised proxy per run (or one for a soak), the load and
/// stress-ng, injects each fault, waits for the incident and the recovery, checks the evidence, and
/// writes the report. Every process it starts is registered and killed by pidfd when it is done with it.
public final class ChaosHarness {
    let options: ChaosOptions
    let flag: InterruptFlag
    let registry: ProcessRegistry
    let progress: @Sendable (String) -> Void
    let plan: [RunSpec]
    let settings: ChaosSettings
    let effective: SupervisorConfig
    let policyFile: String
    let overrides: [String]
    let reportDirectory: String
    /// Short directory for the control sockets (a Unix socket path holds 107 bytes; report paths can be long).
    let socketRoot: String
    let tagBase: String
    let gdbPath: String?
    let stressPath: String?
    var results: [RunResult] = []
    var samplesByRun: [Int: [RequestSample]] = [:]
    var windowStarts: [Int: Double] = [:]
    var soak: SoakSummary?

    /// Checks the options, writes the policy file, works out the effective supervision settings. Throws
    /// `ChaosError` naming the option, file or program at fault; nothing has been started yet.
    public init(options: ChaosOptions, flag: InterruptFlag, registry: ProcessRegistry, progress: @escaping @Sendable (String) -> Void) throws(ChaosError) {
        self.options = options; self.flag = flag; self.registry = registry; self.progress = progress
        for (what, path) in [("--defib", options.defibPath), ("--proxy", options.proxyPath)] where access(path, X_OK) != 0 {
            throw ChaosError(.missing, "\(what) \(path): not an executable file (build it, or point \(what) at it)")
        }
        if options.runs < 1 { throw ChaosError(.badOption, "--runs \(options.runs): must be at least 1") }
        if let r = options.ratePerSecond, !(r > 0 && r <= 10_000) { throw ChaosError(.badOption, "--rate \(r): must be between 0 and 10000 requests/s") }
        plan = ChaosPlan.make(mode: options.mode, scenarios: options.scenarios, loads: options.loads, runs: options.runs)
        if plan.isEmpty { throw ChaosError(.badOption, "nothing to run: a soak needs at least one fault scenario (control runs have no fault to recover from)") }

        reportDirectory = options.reportDirectory.hasPrefix("/") ? options.reportDirectory
            : FileManager.default.currentDirectoryPath + "/" + options.reportDirectory
        do { try FileManager.default.createDirectory(atPath: reportDirectory + "/runs", withIntermediateDirectories: true) } catch {
            throw ChaosError(.setup, "--report \(reportDirectory): cannot create it: \(error.localizedDescription)")
        }

        // The policy: the operator's file, or the harness's own written next to the report.
        let policy = SupervisorConfig.chaosPolicy(capture: options.capture ?? .native,
                                                  intensityMax: options.mode == .soak ? max(1000, options.runs * 2 + 10) : 1000)
        if let configFile = options.configFile {
            policyFile = configFile.hasPrefix("/") ? configFile : FileManager.default.currentDirectoryPath + "/" + configFile
        } else {
            policyFile = reportDirectory + "/supervisor.toml"
            let text = "# Written by `defib chaos`: the supervision policy of these runs. The state directory, the service, its\n"
                + "# control socket and the HTTP socket are given to `defib run` as flags for each run.\n" + policy.tomlText
            do { try text.write(toFile: policyFile, atomically: true, encoding: .utf8) } catch {
                throw ChaosError(.setup, "cannot write \(policyFile): \(error.localizedDescription)")
            }
        }
        var cfg: SupervisorConfig
        do { cfg = try SupervisorConfig.load(path: policyFile) } catch {
            throw ChaosError(.badOption, "--config \(policyFile):\n\(error)")
        }
        var flags: [String] = []
        if let v = options.intervalMs { cfg.heartbeat.intervalMs = v; flags += ["--interval", String(v)] }
        if let v = options.deadlineMs { cfg.heartbeat.deadlineMs = v; flags += ["--deadline", String(v)] }
        if let v = options.capture { cfg.capture.method = v; flags += ["--capture", v.rawValue] }
        overrides = flags
        socketRoot = "/tmp/defib-chaos-\(getpid())"
        cfg.stateDirectory = reportDirectory + "/runs/state"
        cfg.service.name = "proxy"
        cfg.service.argv = [options.proxyPath]
        cfg.heartbeat.controlSocket = socketRoot + "/000/control.sock"
        do { try cfg.validate() } catch {
            throw ChaosError(.badOption, "the supervision settings do not validate:\n\(error)")
        }
        effective = cfg
        let machine = SupervisorMachine.Settings(cfg)
        tagBase = "\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        gdbPath = resolveExecutable("gdb")
        stressPath = resolveExecutable("stress-ng")
        let overload = plan.contains { $0.load == .overload }
        if overload && stressPath == nil {
            throw ChaosError(.missing, "stress-ng: not found in PATH (scripts/setup.sh installs it), needed by --load overload")
        }
        let d = ChaosOptions.defaults(for: options.mode)
        let rate = options.ratePerSecond ?? d.rate
        let timeout = options.requestTimeoutMs ?? (machine.deadlineMs + machine.maxExtensionMs + 3000)
        let workers = options.stressWorkers ?? 2 * Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))
        let r = cfg.restart
        settings = ChaosSettings(
            mode: options.mode, intervalMs: machine.intervalMs, deadlineMs: machine.deadlineMs,
            defaultDeadlineMs: SupervisorConfig.Heartbeat().deadlineMs, extensionStepMs: machine.extensionStepMs,
            maxExtensionMs: machine.maxExtensionMs, captureMethod: cfg.capture.method.rawValue,
            restart: "backoff \(r.backoffInitialMs)–\(r.backoffMaxMs) ms ×\(r.backoffMultiplier) (reset after \(r.backoffResetMs) ms ready), at most \(r.intensityMax) restarts in \(r.intensityWindowMs) ms",
            configFile: policyFile, operatorConfig: options.configFile != nil, ratePerSecond: rate, requestTimeoutMs: timeout,
            warmupMs: options.warmupMs ?? d.warmupMs, postMs: options.postMs ?? d.postMs,
            controlDurationMs: options.controlDurationMs ?? d.controlMs,
            stressCommand: overload ? "stress-ng --cpu \(workers) --timeout <run length + 60 s>" : nil,
            defibPath: options.defibPath, proxyPath: options.proxyPath, runs: options.runs)
        if gdbPath == nil && cfg.capture.method != .none {
            progress("defib chaos: gdb not found in PATH: core checks will fail (install gdb)")
        }
    }

    /// The runs the harness will make, in order.
    public var runs: [RunSpec] { plan }

    /// Runs everything and writes the report. Only a harness-level problem throws; a failed run is data.
    public func run() throws(ChaosError) -> ChaosOutcome {
        mkdir(socketRoot, 0o700)
        defer { try? FileManager.default.removeItem(atPath: socketRoot) }
        let backend: ChaosBackend
        do { backend = try ChaosBackend.start() } catch let e as ChaosError { throw e } catch { throw ChaosError(.setup, "backend: \(error)") }
        defer { backend.stop() }
        let machine = Self.machineInfo()
        var interrupted: Int32?
        do {
            if options.mode == .soak {
                try runSoak(backendPort: backend.port)
            } else {
                for (n, spec) in plan.enumerated() {
                    try flag.check()
                    let (result, samples, windowStart) = try runOnce(spec, index: n + 1, backendPort: backend.port)
                    results.append(result)
                    samplesByRun[results.count - 1] = samples
                    windowStarts[results.count - 1] = windowStart
                    progress("[\(n + 1)/\(plan.count)] \(spec.label): \(result.progressSummary)")
                }
            }
        } catch let e where e.kind == .interrupted {
            interrupted = flag.signal
            progress("defib chaos: \(e); writing the report of the \(results.count) finished run(s)")
        }
        registry.killAll()
        return writeReport(machine: machine, interruptedBy: interrupted)
    }

    // MARK: one run, its own supervisor

    private func runOnce(_ spec: RunSpec, index: Int, backendPort: Int) throws(ChaosError) -> (RunResult, [RequestSample], Double) {
        let label = String(format: "%03d", index) + "-\(spec.scenario.rawValue)-\(spec.load.rawValue)-\(spec.run)"
        let runDir = "\(reportDirectory)/runs/\(label)"
        try? FileManager.default.createDirectory(atPath: runDir, withIntermediateDirectories: true)
        let tag = "\(tagBase)-\(index)"
        var problems: [String] = []
        let windowStart = ChaosClock.nowUnixMs()
        let session: Session
        do {
            session = try Session.start(defibPath: options.defibPath, proxyPath: options.proxyPath, configFile: policyFile, overrides: overrides,
                                        stateDir: runDir + "/state", controlSocket: String(format: "\(socketRoot)/%03d/control.sock", index),
                                        backendPort: backendPort, logPath: runDir + "/defib.log", tag: tag, registry: registry)
        } catch {
            problems.append("\(error)")
            let obs = RunObservation(scenario: spec.scenario, load: spec.load, run: spec.run, onsetUnixMs: nil, windowStartUnixMs: windowStart,
                                     windowEndUnixMs: ChaosClock.nowUnixMs(), servingAtEnd: false, problems: problems)
            return (RunEvaluator.evaluate(obs), [], windowStart)
        }
        var stress: ChildProcess?
        var generator: LoadGenerator?
        var onset: Double?
        var samples: [RequestSample] = []
        var servingAtEnd = false
        var loadStart = windowStart
        defer {
            // Whatever happened (an interruption included), nothing this run started outlives it.
            _ = generator?.stop(drainMs: 0)
            if let s = stress { stopStress(s) }
            session.stop()
        }
        if try !session.waitReady(timeoutMs: 30_000, flag: flag) {
            problems.append("the proxy never became ready within 30 s (defib \(session.defibAlive ? "running" : describe(session.exitStatus))): \(session.logTail())")
        } else {
            if spec.load == .overload { stress = startStress(runLengthMs: runLengthBoundMs(spec.scenario), tag: tag) }
            if spec.load.sendsRequests {
                generator = startLoad(port: session.port)
                loadStart = generator!.startUnixMs
            }
            try pause(ms: settings.warmupMs + (spec.load == .overload ? 1000 : 0))
            if spec.scenario == .control {
                try pause(ms: settings.controlDurationMs)
            } else {
                let injected = session.inject(spec.scenario, stallMs: stallMs)
                onset = injected.onset
                if let p = injected.problem { problems.append("fault injection: \(p)") }
                if let onset {
                    problems += try awaitRecovery(session: session, scenario: spec.scenario, onset: onset, afterID: 0, generator: generator)
                    if spec.scenario == .stall { problems += try secondStall(session: session, afterOnset: onset, generator: generator) }
                }
                try pause(ms: settings.postMs)
            }
            servingAtEnd = session.ping(timeoutMs: 2000)
        }
        samples = generator?.stop(drainMs: 2000) ?? []
        generator = nil
        let windowEnd = ChaosClock.nowUnixMs()
        if spec.load == .overload, let p = stressProblem(stress) { problems.append(p) }
        if let s = stress { stopStress(s); stress = nil }
        let defibBefore = session.defibAlive ? nil : describe(session.exitStatus)
        if let early = defibBefore { problems.append("defib ended before the harness stopped it: \(early) (see \(session.logPath))") }
        let ended = session.stop()
        if defibBefore == nil && ended != "exited with code 0" { problems.append("defib \(ended) when stopped") }
        let orphans = ProcFS.tagged(Session.tagName, tag)
        if !orphans.isEmpty {
            problems.append("orphaned process(es) after the run: " + orphans.map { "\($0) \(ProcFS.comm(of: $0))" }.joined(separator: ", "))
            for pid in orphans { kill(pid, SIGKILL) }
        }
        let incidents = session.incidents().map(IncidentFacts.init)
        var checks: [Int64: CoreCheck] = [:]
        for i in incidents { checks[i.id] = checkCore(i) }
        var obs = RunObservation(scenario: spec.scenario, load: spec.load, run: spec.run, onsetUnixMs: onset, windowStartUnixMs: loadStart,
                                 windowEndUnixMs: windowEnd, incidents: incidents, coreChecks: checks, samples: samples,
                                 servingAtEnd: servingAtEnd, problems: problems)
        obs.captureEnabled = effective.capture.method != .none
        obs.stacksEnabled = effective.capture.stacks
        return (RunEvaluator.evaluate(obs), samples, loadStart)
    }

    /// Waits for the incident after `afterID`, its recovery, and (under load) the first success after the
    /// detection. Returns the problems met (empty when all came within their bounds).
    private func awaitRecovery(session: Session, scenario: ChaosScenario, onset: Double, afterID: Int64, generator: LoadGenerator?) throws(ChaosError) -> [String] {
        let detectBound = Double(detectBoundMs(scenario))
        var incident: Incident?
        while ChaosClock.nowUnixMs() - onset < detectBound {
            try flag.check()
            if let i = session.incidents(sinceUnixMs: onset - 5000).first(where: { ($0.id ?? 0) > afterID }) { incident = i; break }
            if !session.defibAlive { return ["defib \(describe(session.exitStatus)) while waiting for the incident (see \(session.logPath))"] }
            ChaosClock.sleep(ms: 50)
        }
        guard let first = incident, let id = first.id else {
            return ["no incident within \(Int(detectBound)) ms of the fault"]
        }
        let recoverBound = Double(effective.capture.budgetMs + effective.heartbeat.startTimeoutMs + effective.restart.backoffMaxMs + 10_000)
        let detected = first.detectedAt.timeIntervalSince1970 * 1000
        var current = first
        while current.outcome == .open && ChaosClock.nowUnixMs() - detected < recoverBound {
            try flag.check()
            ChaosClock.sleep(ms: 50)
            current = session.incident(id: id) ?? current
            if !session.defibAlive {
                return ["defib \(describe(session.exitStatus)) while incident #\(id) was open (see \(session.logPath))"]
            }
        }
        if current.outcome == .open { return ["incident #\(id) still open \(Int(recoverBound)) ms after its detection"] }
        guard current.outcome == .recovered, let generator else { return [] }
        let successBound = ChaosClock.nowUnixMs() + Double(settings.requestTimeoutMs) + 5000
        while generator.firstSuccess(completedAtOrAfter: detected) == nil && ChaosClock.nowUnixMs() < successBound {
            try flag.check()
            ChaosClock.sleep(ms: 20)
        }
        return []
    }

    /// How long each stall of the `stall` scenario lasts: three quarters of the deadline (past the suspect stage at
    /// half of it, short of the deadline whatever the ping's phase).
    var stallMs: Int { effective.heartbeat.deadlineMs * 3 / 4 }

    /// The `stall` scenario's second stall (the write lock held `stallMs`), once the first one's incident is in.
    private func secondStall(session: Session, afterOnset onset: Double, generator: LoadGenerator?) throws(ChaosError) -> [String] {
        guard let first = session.incidents(sinceUnixMs: onset - 5000).last?.id else { return ["stall: the SIGSTOP left no incident to follow"] }
        try pause(ms: 1000)
        let lock = session.injectLockStall(ms: stallMs)
        guard let lockOnset = lock.onset else { return ["fault injection: \(lock.problem ?? "the write-lock stall was not injected")"] }
        var problems = try awaitRecovery(session: session, scenario: .stall, onset: lockOnset, afterID: first, generator: generator)
        // Wait for both stalls' stacks (gdb reads them in the background).
        let until = ChaosClock.nowUnixMs() + 60_000
        while ChaosClock.nowUnixMs() < until,
              session.incidents(sinceUnixMs: onset - 5000).contains(where: { $0.cause.kind == "stall" && $0.stacks == nil && $0.stallEvidence?.error == nil }) {
            try flag.check()
            ChaosClock.sleep(ms: 100)
        }
        if let p = lock.problem { problems.append("fault injection: \(p)") }
        return problems
    }

    /// How long after the onset an incident may take to appear: the deadline and every extension, plus
    /// slack; the natural race first has to happen (up to about a minute, see parking-lot-race.md).
    func detectBoundMs(_ scenario: ChaosScenario) -> Int {
        settings.detectionBoundMs + settings.intervalMs + 5000 + (scenario == .timeoutRaceNatural ? 90_000 : 0)
    }

    private func runLengthBoundMs(_ scenario: ChaosScenario) -> Int {
        settings.warmupMs + 1000 + (scenario == .control ? settings.controlDurationMs : detectBoundMs(scenario) + 60_000) + settings.postMs
    }

    // MARK: the soak: one supervisor, N faults

    private func runSoak(backendPort: Int) throws(ChaosError) {
        let load = plan.first?.load ?? .idle
        let dir = "\(reportDirectory)/runs/soak"
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let tag = "\(tagBase)-soak"
        let session: Session
        do {
            session = try Session.start(defibPath: options.defibPath, proxyPath: options.proxyPath, configFile: policyFile, overrides: overrides,
                                        stateDir: dir + "/state", controlSocket: "\(socketRoot)/soak/control.sock",
                                        backendPort: backendPort, logPath: dir + "/defib.log", tag: tag, registry: registry)
        } catch {
            throw ChaosError(.setup, "soak: \(error)")
        }
        var stress: ChildProcess?
        var notes: [String] = []
        var orphans: Set<String> = []
        var injected = 0
        var lastID: Int64 = 0
        var restarts = 0
        var previousEnd = ChaosClock.nowUnixMs()
        defer {
            if let s = stress { stopStress(s) }
            session.stop()
        }
        guard try session.waitReady(timeoutMs: 30_000, flag: flag) else {
            throw ChaosError(.setup, "soak: the proxy never became ready within 30 s: \(session.logTail())")
        }
        if load == .overload {
            stress = startStress(runLengthMs: plan.count * 30_000, tag: tag)
            try pause(ms: 1000)
        }
        let settleMs = max(settings.postMs, min(effective.restart.backoffResetMs + 100, 5000))
        // An interruption still gets its soak summary (what was done until then), then goes on up.
        var interruption: ChaosError?
        do {
        for (n, spec) in plan.enumerated() {
            try flag.check()
            if !session.defibAlive {
                restarts = 1
                notes.append("defib \(describe(session.exitStatus)) before fault \(spec.run) (see \(session.logPath))")
                break
            }
            var problems: [String] = []
            let generator = load.sendsRequests ? startLoad(port: session.port) : nil
            let loadStart = generator?.startUnixMs ?? ChaosClock.nowUnixMs()
            var samples: [RequestSample] = []
            var onset: Double?
            do {
                try pause(ms: settings.warmupMs)
                let r = session.inject(spec.scenario, stallMs: stallMs)
                onset = r.onset
                if let p = r.problem { problems.append("fault injection: \(p)") }
                if onset != nil {
                    injected += 1
                    problems += try awaitRecovery(session: session, scenario: spec.scenario, onset: onset!, afterID: lastID, generator: generator)
                    if spec.scenario == .stall { problems += try secondStall(session: session, afterOnset: onset!, generator: generator) }
                }
                // Stacks come after the restart, off the critical path: wait for them so each fault's evidence is checked.
                if spec.scenario.expectsCore && effective.capture.method != .none && effective.capture.stacks, let onset,
                   let id = session.incidents(sinceUnixMs: onset - 5000).first(where: { ($0.id ?? 0) > lastID })?.id {
                    let until = ChaosClock.nowUnixMs() + 90_000
                    while ChaosClock.nowUnixMs() < until, session.incident(id: id).map({ $0.stacks == nil && $0.capture?.path != nil }) ?? false {
                        try flag.check()
                        ChaosClock.sleep(ms: 100)
                    }
                }
                try pause(ms: settleMs)
            } catch {
                _ = generator?.stop(drainMs: 0)
                throw error
            }
            samples = generator?.stop(drainMs: 2000) ?? []
            let windowEnd = ChaosClock.nowUnixMs()
            let fresh = session.incidents(sinceUnixMs: previousEnd - 5000).filter { ($0.id ?? 0) > lastID }
            previousEnd = windowEnd
            lastID = max(lastID, fresh.compactMap(\.id).max() ?? lastID)
            let facts = fresh.map(IncidentFacts.init)
            var checks: [Int64: CoreCheck] = [:]
            for i in facts { checks[i.id] = checkCore(i) }
            // Leftover instances: anything running the proxy under defib besides the current one.
            let current = session.currentProxyPid()
            for pid in session.strayProxyInstances(current: current) { orphans.insert("\(pid) \(ProcFS.comm(of: pid)) (a second proxy instance)") }
            let servingAtEnd = session.ping(timeoutMs: 2000)
            var obs = RunObservation(scenario: spec.scenario, load: load, run: spec.run, onsetUnixMs: onset, windowStartUnixMs: loadStart,
                                     windowEndUnixMs: windowEnd, incidents: facts, coreChecks: checks, samples: samples,
                                     servingAtEnd: servingAtEnd, problems: problems)
            obs.captureEnabled = effective.capture.method != .none
            obs.stacksEnabled = effective.capture.stacks
            let result = RunEvaluator.evaluate(obs)
            results.append(result)
            samplesByRun[results.count - 1] = samples
            windowStarts[results.count - 1] = loadStart
            progress("[\(n + 1)/\(plan.count)] \(spec.label): \(result.progressSummary)")
            if !servingAtEnd {
                // Give the supervisor a chance to bring the service back before the next fault.
                if try !session.waitReady(timeoutMs: 30_000, flag: flag) {
                    notes.append("the service did not come back within 30 s after fault \(spec.run); the soak stopped there")
                    break
                }
            }
        }
        } catch {
            interruption = (error as? ChaosError) ?? ChaosError(.setup, "\(error)")
            notes.append("\(error) after \(results.count) of \(plan.count) faults")
        }
        if load == .overload, let p = stressProblem(stress) { notes.append(p) }
        if let s = stress { stopStress(s); stress = nil }
        let allIncidents = session.incidents()
        let wasAlive = session.defibAlive
        if !wasAlive && restarts == 0 { restarts = 1; notes.append("defib \(describe(session.exitStatus)) before the harness stopped it") }
        let ended = session.stop()
        for pid in ProcFS.tagged(Session.tagName, tag) {
            orphans.insert("\(pid) \(ProcFS.comm(of: pid))")
            kill(pid, SIGKILL)
        }
        soak = SoakSummary(requested: plan.count, injected: injected, incidents: allIncidents.count,
                           recoveries: allIncidents.filter { $0.outcome == .recovered }.count, orphans: orphans.sorted(),
                           defibPid: session.defib.pid, supervisorRestarts: restarts, defibExit: wasAlive ? "stopped by the harness: \(ended)" : ended,
                           notes: notes)
        if let interruption { throw interruption }
    }
}
