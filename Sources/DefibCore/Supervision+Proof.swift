import FlightRecorder

/// `act_on_proof`: at each miss, the evidence a proof is made from is read (the lock words twice, the wait-for
/// graph, /proc around them); a proof (`ProofRule`) declares the hang at once, anything less leaves it to the
/// deadline.
extension Supervision {
    /// The pause between the two reads of a proof: well past `ProofRule.minimumGapMs`, short enough that the
    /// loop is not held up at a miss.
    static let proofPauseMs = 20

    func proofRequest(pid: Int32) -> ObservationRequest {
        var request = ObservationRequest(pid: pid, samples: .pair(apartMs: Self.proofPauseMs))
        request.proofReads = true
        request.flightRecorder = flightRecorderPath
        request.recorderLockWords = true
        request.lockWordAddresses = ledger.knownLocks.map(\.address)
        request.waitForGraph = true
        return request
    }

    /// The reading as `ProofRule` takes it.
    func proofReading(_ observation: Observation) -> ProofReading? {
        guard observation.samples.count == 2 else { return nil }
        func words(_ read: [UInt64: Result<UInt64, EffectFailure>]) -> [UInt64: UInt64] {
            read.compactMapValues { try? $0.get() }
        }
        var names: [UInt64: String] = [:]
        for lock in ledger.knownLocks { names[lock.address] = lock.name }
        if case let .record(record)? = observation.flightRecorder { for lock in record.locks { names[lock.address] = lock.name } }
        return ProofReading(before: observation.samples[0], after: observation.samples[1], firstWords: words(observation.firstLockWords),
                            secondWords: words(observation.lockWords), lockNames: names, waitFor: observation.waitFor?.edges ?? [])
    }

    mutating func proofRead(pid: Int32, observation: Observation) {
        guard let reading = proofReading(observation) else {
            log(.debug, "proof reading of pid \(pid): no samples (the process is gone?)")
            return
        }
        switch ProofRule.evaluate(reading) {
        case let .notProven(why):
            log(.info, "no proof of a deadlock in pid \(pid): \(why)")
        case let .proven(proof):
            let silence = machine.silenceMs(at: now.mono)
            let actions = machine.hangProven(proof, pid: pid, at: now.mono)
            guard !actions.isEmpty else { return }
            ledger.declaredOnProof(proof, silenceMs: silence, before: reading.before, after: reading.after)
            schedule(actions)
        }
    }

    mutating func hangDeclaredOnProof(_ proof: HangProof, silenceMs: Double) {
        log(.warning, "hang declared on proof after \(Int(silenceMs.rounded())) ms of silence (deadline \(config.heartbeat.deadlineMs) ms): \(proof.line)")
    }
}
