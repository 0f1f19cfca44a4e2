import Foundation

/// Stalls: a silence that reaches the suspect stage is captured while it lasts (every thread's stack, or a
/// core, for a pause bounded by `stall_evidence_budget_ms`); if the heartbeat comes back it becomes an incident
/// of its own (`stall`, `self-recovered`: no kill, same pid, no restart counted), and if it does not, the
/// evidence joins the hang's incident. gdb reads the capture in the background, after the threads run again.
extension Supervision {
    /// After the suspect stage's soft evidence: the capture, when one is configured and the process is ours.
    mutating func takeStallEvidence(pid: Int32, silenceMs: Double, observation: Observation) {
        let sample = observation.samples.last ?? ProcessSample(pid: pid, atNs: now.mono.nanoseconds, threads: [])
        suspectSample = (sample, ledger.baseline.flatMap { $0.pid == pid ? ProgressJudge.judge(before: $0, after: sample) : nil })
        stallSequence += 1
        let mode = config.escalation.stallEvidence
        // `none`: the soft evidence (the suspect note, the sample a stall incident is diagnosed from) is all there is.
        guard mode != .none else { return }
        var evidence = StallEvidence(sequence: stallSequence, takenAt: now.wall, silenceMs: silenceMs, mode: mode)
        // A multi-process instance: the process that stalled, which may be a worker behind an idle master — judged
        // over a real window (the instance baseline of the first miss), never over a few milliseconds, in which
        // every sleeping process looks stuck.
        var target = (pid: pid, sample: sample)
        if let round = observation.instanceSamples.last, round.count > 1,
           let judged = ledger.judgeStallRound(mainPID: pid, round: round, minimumWindowMs: ProgressJudge.minimumWindowMs),
           let chosen = ServiceProgressJudge.stallTarget(judged), !chosen.isMain,
           let chosenSample = round.first(where: { $0.pid == chosen.pid }) {
            let main = judged.first(where: \.isMain)
            evidence.process = "pid \(chosen.pid) (\(chosen.comm)), \(chosen.condition.rawValue); the main process pid \(pid) was "
                + (main?.condition.rawValue ?? "not judged")
            target = (chosen.pid, chosenSample)
            // The stall incident is diagnosed from the process that stalled, as its evidence is.
            let before = ledger.instanceBaseline.first { $0.pid == chosen.pid }
            suspectSample = (chosenSample, before.map { ProgressJudge.judge(before: $0, after: chosenSample) })
        }
        evidence.threadStates = target.sample.stateSummary
        evidence.threads = target.sample.threads.isEmpty ? nil : target.sample.threads.count
        guard child?.pid == pid else {
            evidence.error = "not captured: pid \(pid) is no longer the instance"
            ledger.setSuspectEvidence(evidence)
            return
        }
        if case .starved? = suspectSample?.verdict {
            // Runnable threads that get no CPU cannot be stopped in time either: the capture would only hold the loop.
            evidence.error = "not captured: the process is starved of CPU (runnable, not running), its threads would not stop in time"
            ledger.setSuspectEvidence(evidence)
            return
        }
        // `stall.…` is a temporary stacks-only capture, `stall-core.…` a full core that may be kept (a dead supervisor's
        // leftovers are told apart by it at the next start).
        let path = "\(config.coreDirectory)/\(mode == .core ? "stall-core" : "stall").\(config.service.name).\(stallSequence).\(target.pid)"
        let request = StallEvidenceRequest(pid: target.pid, mode: mode, budgetMs: config.escalation.stallEvidenceBudgetMs, path: path,
                                           firstThread: target.sample.threads.first(where: \.inFutexWait)?.tid)
        ask(.takeStallEvidence(request), awaiting: .stallEvidence(evidence))
    }

    /// Answers the stall path waits for; false when `event` is not the one awaited.
    mutating func resumeStall(_ waiting: Awaiting, with event: SupervisorEvent) -> Bool {
        switch (waiting, event) {
        case let (.stallEvidence(evidence), .stallEvidenceTaken(capture)):
            awaiting = nil
            stallEvidenceTaken(evidence, capture: capture)
        case let (.stallBaseline(pid, sequence, core, keepCore, binary), .observed(observation)):
            awaiting = nil
            if let sample = observation.samples.last, sample.pid == pid {
                ledger.setBaseline(sample, instance: observation.instanceSamples.last ?? [])
            }
            startStallStacks(sequence: sequence, core: core, keepCore: keepCore, binary: binary)
        case let (.stallStored(incident), .incidentStored(result)):
            awaiting = nil
            stallStored(incident, result: result)
        case let (.stallStacks(sequence, core, output, keepCore, status), .stacksRead(text)):
            awaiting = nil
            stallStacksRead(sequence: sequence, core: core, output: output, keepCore: keepCore, status: status, text: text)
        default:
            return false
        }
        return true
    }

    /// The capture is done and the threads run again: the evidence waits in the ledger, gdb reads it meanwhile.
    mutating func stallEvidenceTaken(_ taken: StallEvidence, capture: StallCapture) {
        var evidence = taken
        evidence.mode = capture.mode
        evidence.pauseMs = capture.pauseMs
        if capture.threads > 0 { evidence.threads = capture.threads }
        evidence.error = capture.record.error
        let keepCore = capture.mode == .core && capture.record.path != nil
        if keepCore {
            evidence.corePath = capture.record.path
            evidence.coreBytes = capture.record.bytes
            // A worker's kept core goes with the worker's executable (`defib incidents gdb`), not the main process's.
            if evidence.process != nil { evidence.executable = capture.executable }
        }
        if taken.mode == .core && capture.mode == .stacks {
            ledger.notePending("a full core would have frozen the service longer than stall_evidence_budget_ms "
                + "(\(config.escalation.stallEvidenceBudgetMs) ms): stacks only")
        }
        for note in capture.notes { ledger.notePending("stall capture: \(note)") }
        emit(.metric(.stallEvidencePause(ms: capture.pauseMs)))
        log(.notice, evidence.summary)
        ledger.setSuspectEvidence(evidence)
        guard capture.pauseMs > 0, let pid = child?.pid else {
            startStallStacks(sequence: evidence.sequence, core: capture.record.path, keepCore: keepCore, binary: capture.executable)
            return
        }
        // The capture's own stop and resume cost the threads a little CPU and a wake-up: that is defib's doing, not
        // the service's progress, and must not hide a stuck process (or a lock cycle's proof) at the deadline.
        ledger.notePending("progress at the deadline is judged from after the stall capture (its ptrace stop is not the service's progress)")
        var request = ObservationRequest(pid: pid, samples: .one)
        request.instanceProcesses = true
        ask(.observe(request), awaiting: .stallBaseline(pid: pid, sequence: evidence.sequence, core: capture.record.path, keepCore: keepCore,
                                                        binary: capture.executable))
    }

    /// gdb over the stall capture in the background (its stacks land in whatever holds the evidence by then), with
    /// the captured process's executable (a worker's may not be the main process's).
    private mutating func startStallStacks(sequence: Int, core: String?, keepCore: Bool, binary captured: String?) {
        guard let core else { return }
        guard let binary = captured ?? child?.executable else {
            if !keepCore { emit(.removeFile(path: core)) }
            if var evidence = ledger.suspectEvidence, evidence.sequence == sequence {
                evidence.error = "stacks not read: the instance's executable is unknown"
                ledger.setSuspectEvidence(evidence)
            }
            return
        }
        let output = core + ".stacks.txt"
        ask(.startStacks(binary: binary, core: core, output: output),
            awaiting: .helperStart(.stallStacks(sequence: sequence, core: core, output: output, keepCore: keepCore)))
    }

    /// The heartbeat came back after the suspect stage: a stall incident (or a count past the hourly limit) — unless
    /// the service was starved (runnable threads getting no CPU at the suspect stage, or its deadline extended for
    /// it): then the machine, not the service, paused it, and the judge and the extensions said so already.
    mutating func stallEnded(silenceMs: Double, misses: Int) {
        var starved = silenceExtended
        if case .starved? = suspectSample?.verdict { starved = true }
        if starved {
            log(.info, "heartbeat back after \(Int(silenceMs)) ms of silence; the service was starved of CPU: starvation, not a stall")
            suspectSample = nil
            dropSuspectEvidence()
            ledger.forgetSilence()
            return
        }
        emit(.metric(.stall(silenceMs: silenceMs)))
        let pid = child?.pid ?? lastChildPid ?? 0
        let suspect = suspectSample
        suspectSample = nil
        guard let incident = ledger.stallIncident(silenceMs: silenceMs, misses: misses, pid: pid, binaryPath: child?.executable,
                                                  startedAt: childStartedAt, process: pid == lastChildPid ? childProcess : nil,
                                                  heartbeat: probe?.name, stallSample: suspect?.sample, progress: suspect?.verdict,
                                                  at: now) else {
            log(.warning, "stall of \(Int(silenceMs)) ms counted, not stored: stall_incidents_per_hour "
                + "(\(config.escalation.stallIncidentsPerHour)) reached; the next stored stall says how many")
            dropSuspectEvidence()
            ledger.forgetSilence()
            return
        }
        ledger.forgetSilence()
        ask(.insertIncident(incident), awaiting: .stallStored(incident))
    }

    private mutating func stallStored(_ incident: Incident, result: Result<Int64, EffectFailure>) {
        var stored = incident
        switch result {
        case let .success(id): stored.id = id
        case let .failure(failure):
            // Not retried like a hang's (the service is fine and the next stall says the same): the log has it in full.
            log(.error, "could not record the stall incident: \(failure); as known: \(IncidentJSON.string(incident, includeStacks: true, pretty: false))")
            return
        }
        ledger.keepClosed(stored)
        emit(.metric(.incident(cause: stored.cause.kind)))
        let id = stored.id!
        lastIncidentLine = "#\(id) stall at \(RFC3339.string(stored.detectedAt))"
        log(.warning, "incident \(id): \(stored.cause.summary); no kill, pid \(stored.pid) goes on",
            fields: stored.journalFields(messageID: DefibMessageID.incidentClosed))
        let pending = stored.stallEvidence.map { evidence in
            helpers.values.contains { if case let .stallStacks(sequence, _, _, _) = $0 { sequence == evidence.sequence } else { false } }
        } ?? false
        if !pending { stallEvidenceLanded(incidentID: id) }
    }

    /// Everything of a stall incident is in: a kept core goes through compression and retention; otherwise done.
    private mutating func stallEvidenceLanded(incidentID id: Int64) {
        if ledger.incident(id: id)?.capture?.path != nil {
            scheduleFirst([.compressOrTrim(incidentID: id)])
        } else {
            ledger.evidenceComplete(incidentID: id)
        }
    }

    private mutating func stallStacksRead(sequence: Int, core: String, output: String, keepCore: Bool, status: ChildStatus, text: String) {
        emit(.removeFile(path: output))
        if !keepCore { emit(.removeFile(path: core)) }
        let problem = status == .exited(code: 0) ? nil : "gdb ended \(machine.describe(status)) while reading the stall's stacks"
        let landed = ledger.applyStallStacks(sequence: sequence, text: text, problem: problem)
        if !landed.held && keepCore { emit(.removeFile(path: core)) }
        flushChanges()
        log(.info, "stacks of stall capture \(sequence) read (\(text.split(separator: "\n").count) lines)"
            + (landed.incidentID.map { ", incident \($0)" } ?? ""))
        if let id = landed.incidentID {
            if ledger.incident(id: id)?.cause.kind == "stall" { stallEvidenceLanded(incidentID: id) } else { ledger.stallStacksLanded(incidentID: id) }
        }
    }

    mutating func stallStacksFailed(sequence: Int, core: String, keepCore: Bool, problem: String) {
        log(.error, "could not run gdb for a stall's stacks: \(problem)")
        if !keepCore { emit(.removeFile(path: core)) }
        let landed = ledger.applyStallStacks(sequence: sequence, text: "", problem: "stacks not read: could not run gdb (\(problem))")
        flushChanges()
        if let id = landed.incidentID {
            if ledger.incident(id: id)?.cause.kind == "stall" { stallEvidenceLanded(incidentID: id) } else { ledger.stallStacksLanded(incidentID: id) }
        }
    }

    /// gdb still reading a stall capture at shutdown: stopped, its files removed (a kept core stays).
    mutating func stallStacksStopped(sequence: Int, core: String, output: String, keepCore: Bool) {
        emit(.removeFile(path: output))
        if !keepCore { emit(.removeFile(path: core)) }
        log(.warning, "gdb reading stall capture \(sequence) stopped at shutdown")
        if let id = ledger.applyStallStacks(sequence: sequence, text: "", problem: "stacks not read: defib stopped before gdb finished").incidentID {
            ledger.stallStacksLanded(incidentID: id)
        }
    }

    /// The silence no longer counts (STOPPING=1) or its stall is only counted: the capture goes, unless gdb still
    /// reads it (then it goes when gdb is done and finds nobody holding it).
    mutating func dropSuspectEvidence() {
        suspectSample = nil
        guard let evidence = ledger.suspectEvidence, let core = evidence.corePath else { return }
        let reading = helpers.values.contains { if case let .stallStacks(sequence, _, _, _) = $0 { sequence == evidence.sequence } else { false } }
        if !reading { emit(.removeFile(path: core)) }
    }
}
