/// Declaring a hang on proof: at a miss, the evidence read (`ProofRule`) proves a deadlock, so the deadline
/// has nothing left to tell.
extension SupervisorMachine {
    /// A proof that the watched instance `pid` is deadlocked. Ignored unless `actOnProof`, the instance is the
    /// one watched, its heartbeat is silent, and no progress verdict is awaited (the deadline came first).
    public mutating func hangProven(_ proof: HangProof, pid: Int32, at now: MonoTime) -> [SupervisorAction] {
        guard settings.actOnProof, case let .watching(watch) = state, watch.instance.pid == pid, watch.stopAnnounced == nil,
              !watch.silence.awaitingVerdict, let since = watch.silence.since else { return [] }
        let silence = now.milliseconds(since: since)
        let sinceLast = watch.instance.lastPongAt.map { now.milliseconds(since: $0) }
        let cause = FailureCause.missedHeartbeat(misses: watch.silence.misses, msSinceLastPong: sinceLast, lastError: watch.instance.lastPingError,
                                                 silenceMs: silence, extendedMs: watch.silence.extendedMs,
                                                 verdict: .stuck("proven: \(proof.line)"))
        return [.hangDeclaredOnProof(proof, silenceMs: silence)]
            + failInstance(cause, instance: watch.instance, stopAnnounced: watch.stopAnnounced, at: now)
    }
}
