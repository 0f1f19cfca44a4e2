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
        var addresses = request.lockWordAddresses
        if let path = request.flightRecorder {
            do {
                let record = try FlightRecorderFile.read(path: path)
                observation.flightRecorder = .record(record)
                if request.recorderLockWords { addresses = record.locks.map(\.address) + addresses }
            } catch {
                observation.flightRecorder = access(path, F_OK) == 0 ? .unreadable("\(error)") : .missing
            }
        }
        var seen = Set<UInt64>()
        addresses = addresses.filter { seen.insert($0).inserted }
        func readWords() -> [UInt64: Result<UInt64, EffectFailure>] {
            var words: [UInt64: Result<UInt64, EffectFailure>] = [:]
            for address in addresses {
                do { words[address] = .success(try ProcessMemory.readUInt64(pid: pid, address: address)) } catch {
                    words[address] = .failure(EffectFailure("\(error)"))
                }
            }
            return words
        }
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
