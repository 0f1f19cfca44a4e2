import Foundation

/// Runtime evidence in the supervision: the runtime's tool before the kill (py-spy, jcmd; for Go whether
/// delve is there), and a Go service's goroutines read by delve from the core after the close, before gdb's
/// stacks. Each answer lands in the ledger.
extension Supervision {
    // MARK: before the kill

    /// The tool answered: its time comes out of the core's budget.
    mutating func runtimeStacksRead(pid: Int32, observation: Observation, runtime: DetectedRuntime, askedAt: MonoTime,
                                    outcome: RuntimeStacksOutcome) {
        let spentMs = Int(now.mono.milliseconds(since: askedAt).rounded(.up))
        let e = outcome.evidence
        log(.info, "runtime \(e.runtime.rawValue): \(e.total) stack(s) read in \(spentMs) ms\(e.error.map { "; \($0)" } ?? "")")
        diagnoseAndCapture(pid: pid, observation: observation, runtime: RuntimeFindings(observation: observation, runtime: runtime, stacks: outcome),
                           spentMs: spentMs)
    }

    // MARK: after the close

    /// For a Go service whose goroutines are still to be read: delve over the core (true: the agenda waits for
    /// it), or the reason there is none in the incident (false: gdb's stacks come next at once).
    mutating func startGoroutines(incidentID id: Int64) -> Bool {
        guard let closed = ledger.incident(id: id), let runtime = closed.runtimeEvidence, runtime.runtime == .go, runtime.groups.isEmpty,
              runtime.error == nil else { return false }
        guard let core = closed.capture?.path, let binary = closed.binaryPath else {
            let why = "goroutines are read from the core, and there is none (capture.method = \(config.capture.method.rawValue)"
                + (closed.capture?.error.map { ", \($0)" } ?? "") + ")"
            ledger.runtimeStacksMissing(incidentID: id, why)
            return false
        }
        let request = GoroutinesRequest(binary: binary, core: core, directory: config.runDirectory, incidentID: id)
        ask(.startGoroutines(request), awaiting: .helperStart(.goroutines(request, startedAt: now.mono)))
        return true
    }

    /// delve is done: the goroutines land in the incident, their RWMutex diagnosis replaces an `unknown` one;
    /// gdb's stacks follow.
    mutating func goroutinesRead(_ request: GoroutinesRequest, status: ChildStatus, startedAt: MonoTime, text: String) {
        for file in request.files { emit(.removeFile(path: file)) }
        // `timeout -s KILL` ends with 128+9 when it had to kill delve; a delve killed from outside is signaled.
        let timedOut = status == .signaled(signal: SIGKILL, coreDumped: false) || status == .exited(code: 137) || status == .exited(code: 124)
        let outcome = GoroutinesReport.read(text, ended: status == .exited(code: 0) ? nil : machine.describe(status), timedOut: timedOut,
                                            elapsedMs: now.mono.milliseconds(since: startedAt), timeLimitSeconds: request.timeLimitSeconds)
        let id = request.incidentID
        if let stored = ledger.applyGoroutines(incidentID: id, outcome) {
            flushChanges()
            log(.info, "goroutines for incident \(id): \(outcome.evidence.total) in \(outcome.evidence.groups.count) group(s); diagnosis \(stored.diagnosis)")
        }
        scheduleFirst([.stacksAfterClose(incidentID: id)])
    }

    /// delve could not start (not installed, not trusted, its files not written): the incident says why; gdb's
    /// stacks still follow.
    mutating func goroutinesFailed(_ request: GoroutinesRequest, problem: String) {
        log(.error, "could not read goroutines from the core: \(problem)")
        ledger.runtimeStacksMissing(incidentID: request.incidentID, problem)
        scheduleFirst([.stacksAfterClose(incidentID: request.incidentID)])
    }
}
