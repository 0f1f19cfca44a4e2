import DefibCore
import Foundation
import Testing

/// Acting on proof through the real loop and fake effects: at every miss a proof reading (the lock words twice,
/// the wait-for graph, /proc around them); a corrupted word or a lock cycle of frozen threads declares the hang
/// there, before the deadline, and the first restart after it skips the backoff. Timings as in
/// `SupervisorLoopTests`: the ping sent at 303 ms goes unanswered, miss 1 at 428 ms; each proof reading takes the
/// fake clock 20 ms.
@Suite struct SupervisorProofTests {
    static let catalog: UInt64 = 0x7F00_0000_1000
    static let locksReply = #"{"locks":[{"name":"catalog","address":"0x7f0000001000","word":"0x0","readers_waiting":0,"writers_waiting":0}]}"#

    static func proofConfig(_ change: (inout SupervisorConfig) -> Void = { _ in }) -> SupervisorConfig {
        testConfig {
            $0.escalation.actOnProof = true
            $0.restart.immediateAfterHang = true
            change(&$0)
        }
    }

    static func fake(word: UInt64, behaviours: [FakeEffects.Behaviour] = [.hangs(afterMs: 300), .healthy]) -> FakeEffects {
        let fake = FakeEffects()
        fake.behaviours = behaviours
        fake.locksReply = locksReply
        fake.lockWords = [catalog: word]
        return fake
    }

    @Test func aCorruptedWordIsDeclaredOnProofAtTheFirstMissAndRestartedAtOnce() throws {
        let fake = Self.fake(word: 0xFFFF_FFFF_FFFF_FFFE)
        let run = Run(fake, config: Self.proofConfig())
        let incident = try #require(run.incidents.first)
        #expect(run.incidents.count == 1)
        expectInOrder(fake.actions, ["observe 100 one", "observe 100 pair proof", "insert 1", "observe 100 none capture", "writeCore 100 native first=100",
                                     "signal 100 SIGKILL", "killLeftovers 100", "spawn 101"])
        #expect(fake.actions.filter { $0.hasSuffix("pair proof") }.count == 1, "declared at the first miss: \(fake.actions)")
        #expect(incident.declaredOn == .proof)
        #expect(incident.detectedAt == fake.wallBase.addingTimeInterval(0.448), "miss 1 at 428 ms, the proof reading took 20 ms")
        #expect(incident.silenceMs == 145 && incident.cause == .missedHeartbeat(misses: 1, lastPongAt: fake.wallBase.addingTimeInterval(0.203),
                                                                               lastError: "no reply within 125 ms"))
        #expect(incident.notes.contains { $0.hasPrefix("declared on proof after 145 ms: corrupted-lock-word: lock 'catalog' word 0xfffffffffffffffe") },
                "\(incident.notes)")
        #expect(incident.progress?.kind == "stuck" && incident.progress?.reason.hasPrefix("proven: corrupted-lock-word") == true)
        #expect(incident.threadStates == "3 S (3 in futex)")
        #expect(incident.diagnosis.hasPrefix("corrupted-lock-word: "))
        // The timeline: the core is done at the kill (today's order), the replacement starts with no backoff.
        let killed = try #require(incident.killedAt), restarted = try #require(incident.restartedAt)
        #expect(incident.captureDoneAt == killed)
        #expect(restarted.timeIntervalSince(killed) < 0.05, "no backoff for the first restart after a hang: \(restarted.timeIntervalSince(killed))")
        #expect(run.logs.contains("hang declared on proof after 145 ms of silence (deadline 500 ms): corrupted-lock-word"))
        #expect(run.logs.contains("restarting svc in 0 ms"))
    }

    @Test func aValidWordIsNoProofAndTheHangWaitsForTheDeadline() throws {
        // The leaked read lock: one reader counted, a writer waiting (0x1b): valid, the reader might still let go.
        let fake = Self.fake(word: 0x1B)
        let run = Run(fake, config: Self.proofConfig())
        let incident = try #require(run.incidents.first)
        #expect(incident.declaredOn == .deadline)
        #expect((incident.silenceMs ?? 0) >= 500, "never before the deadline: \(incident.silenceMs ?? -1)")
        #expect(fake.actions.filter { $0.hasSuffix("pair proof") }.count == 4, "sought at each of the 4 misses")
        #expect(!incident.notes.contains { $0.hasPrefix("declared on proof") })
        #expect(run.logs.contains("no proof of a deadlock in pid 100: every lock word read is valid (0x000000000000001b)"))
    }

    @Test func aWordCaughtMidUpdateAtTheFirstReadIsNoProof() throws {
        let fake = Self.fake(word: 0xFFFF_FFFF_FFFF_FFFE)
        fake.lockWordsAtFirstRead = [Self.catalog: 0x1A]
        let run = Run(fake, config: Self.proofConfig())
        let incident = try #require(run.incidents.first)
        #expect(incident.declaredOn == .deadline && (incident.silenceMs ?? 0) >= 500)
        #expect(incident.diagnosis.hasPrefix("corrupted-lock-word: "), "the deadline's evidence still diagnoses it")
    }

    @Test func aPthreadLockCycleIsDeclaredOnProof() throws {
        let fake = Self.fake(word: 0x0)
        fake.waitFor = [WaitForEdge(waiterTid: 101, waiterName: "worker-1", mutex: "0x5000", ownerTid: 102, ownerName: "worker-2", kind: "normal", timed: false),
                        WaitForEdge(waiterTid: 102, waiterName: "worker-2", mutex: "0x6000", ownerTid: 101, ownerName: "worker-1", kind: "normal", timed: false)]
        let run = Run(fake, config: Self.proofConfig())
        let incident = try #require(run.incidents.first)
        #expect(incident.declaredOn == .proof && incident.silenceMs == 145)
        #expect(incident.notes.contains { $0.hasPrefix("declared on proof after 145 ms: lock-cycle: 101 (worker-1) waits for 0x5000 held by 102") },
                "\(incident.notes)")
        #expect(incident.diagnosis.hasPrefix("lock-cycle: "))
    }

    @Test func aCycleThroughATimedWaiterIsNoProof() throws {
        let fake = Self.fake(word: 0x0)
        fake.waitFor = [WaitForEdge(waiterTid: 101, waiterName: "worker-1", mutex: "0x5000", ownerTid: 102, ownerName: "worker-2", kind: "normal+pi", timed: true),
                        WaitForEdge(waiterTid: 102, waiterName: "worker-2", mutex: "0x6000", ownerTid: 101, ownerName: "worker-1", kind: "normal", timed: false)]
        let run = Run(fake, config: Self.proofConfig())
        #expect(try #require(run.incidents.first).declaredOn == .deadline)
    }

    @Test func switchedOffNoProofIsSought() throws {
        let fake = Self.fake(word: 0xFFFF_FFFF_FFFF_FFFE)
        let run = Run(fake, config: Self.proofConfig { $0.escalation.actOnProof = false })
        let incident = try #require(run.incidents.first)
        #expect(!fake.actions.contains { $0.hasSuffix("proof") })
        #expect(incident.declaredOn == .deadline && incident.silenceMs == 500)
    }

    @Test func theSecondHangWithinTheResetWindowWaitsForTheBackoff() throws {
        let fake = Self.fake(word: 0xFFFF_FFFF_FFFF_FFFE, behaviours: [.hangs(afterMs: 300), .hangs(afterMs: 300), .healthy])
        let run = Run(fake, config: Self.proofConfig())
        #expect(run.incidents.count == 2)
        let gaps = run.incidents.map { ($0.restartedAt ?? .distantPast).timeIntervalSince($0.killedAt ?? .distantFuture) }
        #expect(gaps[0] < 0.05 && gaps[1] >= 0.1, "immediate, then the 100 ms backoff: \(gaps)")
        #expect(run.incidents.allSatisfy { $0.declaredOn == .proof })
    }
}
