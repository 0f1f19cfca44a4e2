import Foundation

/// Restart while the core is written (native capture, sockets passed by defib, memory allowing): freeze the hung
/// instance, start its replacement, write the core from the frozen process in a writer thread while the loop
/// serves the new instance, then SIGKILL the frozen one. Otherwise today's order: core, kill, restart.
extension Supervision {
    /// The process is frozen (or could not be): decide the order, and go on with it.
    mutating func coreFrozen(pid: Int32, _ freeze: CoreFreeze) {
        if let failure = freeze.failure {
            // Not frozen (gone, refused): recorded as a failed capture; the kill and restart follow as today.
            scheduleFirst([.recordCore(failure), .captureNextProcess, .finishCapture(jitterDraw: failure.jitterDraw)])
            return
        }
        switch ConcurrentCapture.decide(rssBytes: freeze.rssBytes, memAvailableBytes: freeze.memAvailableBytes) {
        case let .sequential(why):
            let line = "capture order: core first, then the kill and the restart (\(why))"
            log(.info, line)
            ledger.setCaptureOrder(.writeThenRestart, note: line)
            ask(.writeFrozenCore(background: false), awaiting: .core)
        case .concurrent:
            let line = String(format: "capture order: the replacement starts while the core is written from the frozen process (%d threads stopped in %.1f ms)",
                              freeze.threads, freeze.stopMs)
            log(.info, line)
            ledger.setCaptureOrder(.restartWhileWriting, note: line)
            frozenCapture = FrozenCapture(pid: pid, incidentID: ledger.open?.id)
            emit(.writeFrozenCore(background: true))
            // Killed when the core is done, and never later than the capture budget and a second.
            let killBy = (captureStartedAt ?? now.mono) + (captureBudgetMs + 1000)
            schedule(machine.captureFrozen(killBy: killBy, at: now.mono))
        }
    }

    /// The writer thread is done with the frozen instance's core: it lands in its incident, the frozen process is
    /// killed, and the incident's after-close evidence (stacks, compression, retention) follows if it closed meanwhile.
    mutating func frozenCoreWritten(_ outcome: CoreOutcome) {
        guard let frozen = frozenCapture, !frozen.coreRecorded else {
            log(.debug, "a frozen core's outcome nobody waits for: \(outcome.record.path ?? outcome.record.error ?? "-")")
            return
        }
        frozenCapture?.coreRecorded = true
        ledger.applyFrozenCore(outcome, incidentID: frozen.incidentID, at: now.wall)
        emit(.metric(.captureDuration(nanoseconds: Int64(outcome.record.durationMs * 1e6))))
        emit(.metric(.captureBytes(outcome.record.bytes)))
        if let error = outcome.record.error { log(.error, "core capture (native, from the frozen instance) failed: \(error)") }
        else if let path = outcome.record.path { log(.info, "core written from the frozen instance pid \(frozen.pid): \(path) (\(outcome.record.bytes) bytes, \(Int(outcome.record.durationMs)) ms)") }
        if frozen.killed {
            // Killed before its writer was done (overdue, shutdown): the core, cut short, is all there is.
            frozenCaptureDone()
            return
        }
        schedule(machine.frozenCoreWritten(at: now.mono))
    }

    /// The frozen instance is dead and its core recorded: the incident's after-close evidence may follow.
    private mutating func frozenCaptureDone() {
        guard let frozen = frozenCapture else { return }
        frozenCapture = nil
        if frozen.closedBeforeCore, let id = frozen.incidentID {
            flushChanges()
            if let closed = ledger.incident(id: id) { logClosed(closed) }
            scheduleFirst([.evidenceAfterClose(incidentID: id)])
        }
    }

    /// SIGKILL to the frozen instance (its process group too): its core is done, or it is overdue.
    mutating func killFrozen(pid: Int32, overdue: Bool) {
        let frozen = frozenCapture
        let line = overdue ? "the frozen instance pid \(pid) outlived the capture budget (\(captureBudgetMs) ms) and a second: killed, core or not" : nil
        log(overdue ? .error : .info, line ?? "killing the frozen instance pid \(pid) (SIGKILL), its core written")
        emit(.signal(pid: pid, signal: SIGKILL))
        ledger.frozenKilled(incidentID: frozen?.incidentID, at: now.wall, line: line)
        // Its writer ends once the process is gone (reads fail): the core it cut short is recorded when it reports.
        if frozen?.coreRecorded == true { frozenCaptureDone() } else { frozenCapture?.killed = true }
    }
}
