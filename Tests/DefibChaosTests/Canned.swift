@testable import DefibChaos

/// Canned runs: a fault at t = 10 000 ms (Unix ms, small numbers keep the arithmetic readable).
enum Canned {
    static let onset = 10_000.0

    /// A steady load at 10 ms spacing from 9 000 to 13 000 ms: fine before the fault, stuck from the fault
    /// until 11 200 (answered then), one refused and one reset, fine afterwards.
    static func samples() -> [RequestSample] {
        var out: [RequestSample] = []
        var t = 9000.0
        while t < 13_000 {
            if t < onset || t >= 11_200 {
                out.append(RequestSample(scheduledUnixMs: t, latencyMs: 2, outcome: .ok, status: 200))
            } else {
                out.append(RequestSample(scheduledUnixMs: t, latencyMs: 11_200 - t + 1, outcome: .ok, status: 200))
            }
            t += 10
        }
        out.append(RequestSample(scheduledUnixMs: 10_500, latencyMs: 1, outcome: .refused))
        out.append(RequestSample(scheduledUnixMs: 10_600, latencyMs: 1050, outcome: .failed))
        out.append(RequestSample(scheduledUnixMs: 10_700, latencyMs: 6000, outcome: .timedOut))
        return out
    }

    static func raceIncident(id: Int64 = 1, core: String? = "/cores/core.1", diagnosis: String = "corrupted-lock-word: no thread in the critical section") -> IncidentFacts {
        IncidentFacts(id: id, pid: 100, newPid: 200, diagnosis: diagnosis, detectedUnixMs: 11_000, killedUnixMs: 11_030, readyUnixMs: 11_180,
                      lockWords: ["0xffffffffffffffff", "0xfffffffffffffffe"], threads: 5, binary: "/bin/defib-proxy", corePath: core,
                      coreBytes: 64 << 20, captureMs: 18.5, hasStacks: core != nil, silenceMs: 1001, extendedMs: 0)
    }

    static func raceObservation(load: ChaosLoad = .steady) -> RunObservation {
        RunObservation(scenario: .timeoutRace, load: load, run: 1, onsetUnixMs: onset, windowStartUnixMs: 9000, windowEndUnixMs: 13_000,
                       incidents: [raceIncident()], coreChecks: [1: CoreCheck(exists: true, gdbThreads: 5)],
                       samples: load.sendsRequests ? samples() : [])
    }
}
