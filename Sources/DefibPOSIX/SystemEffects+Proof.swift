import DefibCore
import Foundation
import Glibc

/// The reading a proof is made from (`ProofRule`): nothing is stopped or written, and every read lies between
/// two /proc samples, so "no thread ran between the samples" holds for the reads as well.
extension SystemEffects {
    /// /proc, the lock words, a pause of `apartMs`, the lock words again, the wait-for graph (two reads of its
    /// own), /proc again.
    func observeForProof(_ request: ObservationRequest) -> Observation {
        let pid = request.pid
        var observation = Observation(pid: pid)
        let apartMs: Int
        if case let .pair(ms) = request.samples { apartMs = ms } else { apartMs = ProofRule.minimumGapMs }
        let addresses = Self.readRecorder(request, into: &observation)
        func readWords() -> [UInt64: Result<UInt64, EffectFailure>] { Self.readLockWords(pid: pid, addresses: addresses) }
        let before = ProcSampler.sample(pid: pid)
        observation.firstLockWords = readWords()
        usleep(UInt32(apartMs) * 1000)
        observation.lockWords = readWords()
        if request.waitForGraph {
            let graph = WaitForReader.readStable(pid: pid)
            observation.waitFor = WaitForReading(edges: graph.edges, notes: graph.notes)
        }
        observation.samples = [before, ProcSampler.sample(pid: pid)]
        return observation
    }
}
