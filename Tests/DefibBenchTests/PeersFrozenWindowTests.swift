import DefibChaos
import Foundation
import Testing
@testable import defib_bench

/// The window of a repetition where defib keeps the hung instance frozen while its replacement serves, and the
/// targets of acting on proof.
@Suite("Peers: a frozen instance beside its replacement")
struct PeersFrozenWindowTests {
    static func samples(from: Double, to: Double, _ outcome: RequestOutcome, latency: Double = 2) -> [RequestSample] {
        stride(from: from, to: to, by: 10).map { RequestSample(scheduledUnixMs: $0, latencyMs: latency, outcome: outcome, status: outcome == .ok ? 200 : 0) }
    }

    @Test func recoveryCountsFromTheReplacementWhenTheHungInstanceIsFrozen() {
        // Fault at 1000; hung from 1050; the replacement appears at 1400 and serves from 1430; the frozen one is gone at 1600.
        let all = Self.samples(from: 0, to: 1050, .ok) + Self.samples(from: 1050, to: 1430, .timedOut, latency: 5000)
            + Self.samples(from: 1430, to: 3000, .ok)
        let w = RepWindow.evaluate(samples: all, faultAtUnixMs: 1000, oldGoneAtUnixMs: 1600, replacementSeenAtUnixMs: 1400, boundMs: 30_000)
        #expect(w.recoveryMs == 432)
        #expect(w.hangShown && w.dueWhileHung == 25, "due from 1150 (the grace) until the replacement: \(w.dueWhileHung)")
        #expect(w.okWhileHung == 0, "the replacement's answers after it appeared are not the hung instance's")
        // Without the replacement's sighting: the old measure (after the end of the hung instance).
        let old = RepWindow.evaluate(samples: all, faultAtUnixMs: 1000, oldGoneAtUnixMs: 1600, boundMs: 30_000)
        #expect(old.recoveryMs == 602)
        #expect(old.okWhileHung > 0, "counted up to the end of the old instance, the new one's answers look like the old one's")
    }

    static func rep(_ n: Int, recoveryMs: Double, declaredOn: String, readyMs: Double, order: String? = nil) -> RepResult {
        var window = RepWindow(recoveryMs: recoveryMs, requests: 10, ok: 5, refused: 0, failed: 0, timedOut: 5, okWhileHung: 0, dueWhileHung: 3, lengthMs: recoveryMs)
        window.recoveryMs = recoveryMs
        var r = RepResult(rep: n, oldPid: 100, newPid: 200, faultReply: "ok", faultAtUnixMs: 0, oldGoneMs: recoveryMs, window: window,
                          core: CoreEvidence(path: "/c", bytes: 1, gdbThreads: 5, gdbDetail: ""), coreNote: nil, recorded: true,
                          record: "incident #1: missed-heartbeat, recovered; diagnosis corrupted-lock-word: …")
        r.declaredOn = declaredOn
        r.detectedToReadyMs = readyMs
        r.captureOrder = order
        return r
    }

    static func row(_ id: PeerID, _ reps: [RepResult]) -> PeerResult {
        PeerResult(id: id, status: "ok", reason: nil, version: "defib", configuration: "", reps: reps, usage: nil, notes: [])
    }

    @Test func theProofTargetsPassAndFailOnTheirFigures() {
        let fast = Self.row(.defibNative, (0..<5).map { Self.rep($0, recoveryMs: 350, declaredOn: "proof", readyMs: 60) })
        let slow = Self.row(.defibNative, (0..<5).map { Self.rep($0, recoveryMs: 1100, declaredOn: "deadline", readyMs: 60) })
        #expect(PeersChecks.proofTargets([fast], proxyStart530Ms: nil).first { $0.id == "peers.proof-idle-400ms" }?.pass == true)
        #expect(PeersChecks.proofTargets([slow], proxyStart530Ms: nil).first { $0.id == "peers.proof-idle-400ms" }?.pass == false)
        let big = Self.row(.defibNative530, (0..<5).map { Self.rep($0, recoveryMs: 500, declaredOn: "proof", readyMs: 270, order: "restart-while-writing") })
        #expect(PeersChecks.proofTargets([big], proxyStart530Ms: [250, 245, 260]).first?.pass == true, "270 ≤ 250 + 30")
        #expect(PeersChecks.proofTargets([big], proxyStart530Ms: [230, 235, 240]).first?.pass == false, "270 > 235 + 30")
        #expect(PeersChecks.proofTargets([big], proxyStart530Ms: nil).first?.pass == false, "not measured: no pass")
        let leak = Self.row(.defibLeakedRead, (0..<5).map { Self.rep($0, recoveryMs: 1200, declaredOn: "deadline", readyMs: 60) })
        let leakOnProof = Self.row(.defibLeakedRead, (0..<5).map { Self.rep($0, recoveryMs: 400, declaredOn: $0 == 3 ? "proof" : "deadline", readyMs: 60) })
        #expect(PeersChecks.proofTargets([leak], proxyStart530Ms: nil).first?.pass == true)
        #expect(PeersChecks.proofTargets([leakOnProof], proxyStart530Ms: nil).first?.pass == false)
    }
}
