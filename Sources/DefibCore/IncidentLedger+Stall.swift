import Foundation

/// Stalls: the suspect stage's evidence, kept until the silence ends. A heartbeat that comes back makes it an
/// incident of its own (`stall`, `self-recovered`, nothing done to the process); a silence that becomes a hang
/// (or a death) hands it to that incident as its first moment.
extension IncidentLedger {
    /// The suspect stage's capture, with the thread states /proc showed then.
    mutating func setSuspectEvidence(_ evidence: StallEvidence) { suspectEvidence = evidence }

    /// The incident opened for this silence takes the stall's evidence (its first moment), and says so.
    mutating func joinSuspectEvidence(_ incident: inout Incident) {
        guard let evidence = suspectEvidence else { return }
        suspectEvidence = nil
        incident.stallEvidence = evidence
        incident.notes.append("the stall's evidence from the suspect stage joins this incident: \(evidence.summary)")
    }

    /// The silence ended by itself: a `stall` incident from what the suspect stage gathered (the pending notes,
    /// the evidence), not stored yet. Nil when the rate limit only counts it (the next one stored notes how many
    /// were only counted). The caller forgets the silence afterwards.
    mutating func stallIncident(silenceMs: Double, misses: Int, pid: Int32, binaryPath: String?, startedAt: Date?,
                                process: IncidentProcess?, heartbeat: String?, stallSample: ProcessSample?, progress: ProgressVerdict?, at now: Instant) -> Incident? {
        guard stallLimit.admit(at: now.mono) else { return nil }
        let cause = IncidentCause.stall(silenceMs: silenceMs, misses: misses, heartbeat: heartbeat)
        let detectedAt = now.wall.addingTimeInterval(-silenceMs / 1000)
        var incident = Incident(service: service, pid: pid, binaryPath: binaryPath, startedAt: startedAt, detectedAt: detectedAt, cause: cause)
        incident.outcome = .selfRecovered
        incident.readyAt = now.wall
        incident.process = process
        incident.silenceMs = silenceMs
        incident.progress = progress
        incident.threadStates = stallSample?.stateSummary
        incident.threads = stallSample.flatMap { $0.threads.isEmpty ? nil : $0.threads.count }
        incident.notes = pendingNotes
        incident.notes.append("heartbeat back after \(Int(silenceMs)) ms of silence (\(misses) missed); nothing was done to the process")
        let unstored = stallLimit.takeNotStored()
        if unstored > 0 {
            incident.notes.append("\(unstored) earlier stall(s) past stall_incidents_per_hour (\(stallLimit.perHour)) were counted, not stored")
        }
        if let evidence = suspectEvidence {
            suspectEvidence = nil
            incident.stallEvidence = evidence
            incident.threadStates = evidence.threadStates ?? incident.threadStates
            incident.threads = evidence.threads ?? incident.threads
            incident.stacks = evidence.stacks
            if let core = evidence.corePath {
                incident.capture = CaptureRecord(method: "native", path: core, bytes: evidence.coreBytes ?? 0, durationMs: evidence.pauseMs, error: nil)
                // A worker's core: its own executable goes with it.
                if let executable = evidence.executable { incident.binaryPath = executable }
            }
            incident.notes.append(evidence.summary)
        }
        incident.lockState = knownLocks.map { $0.state(word: $0.word ?? "unknown", source: "control") }
        let diagnosis = Diagnoser.diagnose(DiagnosisInput(cause: cause, locks: incident.lockState, progress: progress, sample: stallSample,
                                                          stacks: incident.stacks, nowUnixMs: Int64(now.wall.timeIntervalSince1970 * 1000)))
        incident.diagnosis = diagnosis.line
        incident.diagnosisEvidence = diagnosis.evidence
        incident.signature = incident.computedSignature()
        return incident
    }

    /// The stacks of an incident's stall capture landed: if its own evidence was complete already, it is done.
    mutating func stallStacksLanded(incidentID id: Int64) {
        guard stallStacksPending.remove(id) != nil else { return }
        evidenceComplete(incidentID: id)
    }

    /// gdb's stacks of the stall capture `sequence`: into the pending evidence, or the incident that holds it (a
    /// stall's stacks are its `stacks` too; a hang keeps its own core's). The incident's id when one changed;
    /// false when nobody holds the capture any more (its silence was cancelled).
    mutating func applyStallStacks(sequence: Int, text: String, problem: String?) -> (held: Bool, incidentID: Int64?) {
        func fill(_ evidence: inout StallEvidence) {
            evidence.stacks = text.isEmpty ? nil : text
            if let problem { evidence.error = evidence.error.map { "\($0); \(problem)" } ?? problem }
        }
        if var pending = suspectEvidence, pending.sequence == sequence {
            fill(&pending)
            suspectEvidence = pending
            return (true, nil)
        }
        let holders = ([open].compactMap { $0 } + closing.values).filter { $0.stallEvidence?.sequence == sequence }
        guard let holder = holders.first else { return (false, nil) }
        guard let id = holder.id else {
            // Opened but not stored yet: the open incident is changed in place.
            if var current = open, current.stallEvidence?.sequence == sequence {
                fill(&current.stallEvidence!)
                if current.cause.kind == "stall" { current.stacks = current.stallEvidence?.stacks }
                replaceOpen(current)
            }
            return (true, nil)
        }
        change(id) { incident in
            fill(&incident.stallEvidence!)
            if incident.cause.kind == "stall" {
                incident.stacks = incident.stallEvidence?.stacks
                if let text = incident.stacks, let diagnosis = HangDiagnosis(line: incident.diagnosis, evidence: incident.diagnosisEvidence ?? []) {
                    let refined = Diagnoser.refine(diagnosis, stacks: text)
                    incident.diagnosis = refined.line
                    incident.diagnosisEvidence = refined.evidence
                }
                incident.signature = incident.computedSignature()
            }
        }
        return (true, id)
    }
}

extension Incident {
    /// A capture of the stall it began as is still being read (its stacks and any error are not in yet).
    var awaitsStallStacks: Bool {
        guard let e = stallEvidence, e.mode != .none, cause.kind != "stall" else { return false }
        return e.stacks == nil && e.error == nil
    }
}
