import DefibCore
import DefibPOSIX
import Foundation

/// Runtime evidence in the supervisor: the two calls into `DefibPOSIX` (before the core; after the incident
/// closed, from the core) and how their results land in the incident. Kept apart so a new runtime can call
/// the same two entry points.
extension Supervisor {
    /// Before the core: the pthread wait-for graph and the runtime's stacks (py-spy, jcmd), within
    /// `capture.runtime_budget_ms` (at most half the capture budget). Returns what the diagnosis needs.
    func collectRuntimeEvidence(pid: Int32, into current: inout Incident) -> RuntimeEvidenceCollector.BeforeKill {
        let result = RuntimeEvidenceCollector.collect(pid: pid, setting: config.capture.runtime,
                                                      budgetMs: config.capture.effectiveRuntimeBudgetMs, home: config.runDirectory)
        current.waitFor = result.waitFor
        current.runtimeEvidence = result.evidence
        current.notes += result.notes
        if !result.waitFor.isEmpty { logger.info("wait-for graph: \(result.waitFor.count) thread(s) blocked on pthread mutexes") }
        if let e = result.evidence, e.runtime != .native {
            logger.info("runtime \(e.runtime.rawValue): \(e.total) stack(s) read in \(Int(result.elapsedMs)) ms\(e.error.map { "; \($0)" } ?? "")")
        }
        return result
    }

    /// After the incident closed: for a Go service with a core, delve reads the goroutines from it (a child
    /// the loop reaps). Returns false when there is nothing to start, so the caller goes on at once.
    func startGoroutinesFromCore(_ closed: Incident) -> Bool {
        guard let id = closed.id, closed.runtimeEvidence?.runtime == .go, closed.runtimeEvidence?.groups.isEmpty == true,
              closed.runtimeEvidence?.error == nil else { return false }
        guard let core = closed.capture?.path, let binary = closed.binaryPath else {
            let why = "goroutines are read from the core, and there is none (capture.method = \(config.capture.method.rawValue)"
                + (closed.capture?.error.map { ", \($0)" } ?? "") + ")"
            updateStoredIncident(id) { $0.runtimeEvidence?.error = why; $0.notes.append("runtime stacks: \(why)") }
            return false
        }
        do {
            let job = try GoroutinesJob.start(binary: binary, core: core, scratch: config.runDirectory, incidentID: id)
            backgroundJobs[job.child.pid] = .goroutines(job)
            return true
        } catch {
            logger.error("could not read goroutines from the core: \(error)")
            updateStoredIncident(id) { $0.runtimeEvidence?.error = "\(error)"; $0.notes.append("runtime stacks: \(error)") }
            return false
        }
    }

    /// delve is done: store the goroutines, let the RWMutex diagnosis replace an `unknown` one, then go on
    /// with gdb's stacks and the rest.
    func finishGoroutinesJob(_ job: GoroutinesJob, status: ChildStatus) {
        job.child.closePidfd()
        let (evidence, diagnosis) = job.finish(status: status)
        guard var stored = try? recorder.incident(id: job.incidentID) else { return }
        stored.runtimeEvidence = evidence
        if let error = evidence.error { stored.notes.append("runtime stacks: \(error)") }
        let current = HangDiagnosis(line: stored.diagnosis, evidence: stored.diagnosisEvidence ?? [])
            ?? HangDiagnosis(kind: .unknown, sentence: stored.diagnosis)
        let combined = RuntimeDiagnoser.combine(native: current, runtime: diagnosis, evidence: evidence)
        stored.diagnosis = combined.line
        stored.diagnosisEvidence = combined.evidence
        stored.signature = signature(of: stored)
        do { try recorder.update(stored) } catch { logger.error("could not store goroutines: \(error)") }
        logger.info("goroutines for incident \(job.incidentID): \(evidence.total) in \(evidence.groups.count) group(s); diagnosis \(combined.line)")
        afterIncidentClosed(stored, goroutinesRead: true)
    }
}
