import DefibCore
import Foundation
import Testing

/// Stalls through the real loop and fake effects: the suspect stage's capture, gdb over it in the background,
/// the stall incident when the heartbeat comes back (no kill, no restart), its evidence joining a hang's incident
/// when it does not, the hourly limit, a kept core, and `none`.
@Suite struct SupervisorStallTests {
    /// Pings every 100 ms, a miss after 125 ms, suspect at 250 ms of silence, deadline 500 ms; stall evidence on
    /// (`stacks`, 20 ms).
    static func stallConfig(_ change: (inout SupervisorConfig) -> Void = { _ in }) -> SupervisorConfig {
        testConfig {
            $0.escalation.stallEvidence = .stacks
            change(&$0)
        }
    }

    @Test func aPausePastTheSuspectStageIsAStallIncidentWithStacksAndNoKill() throws {
        let fake = FakeEffects()
        fake.behaviours = [.pauses(fromMs: 300, forMs: 400)]
        let run = Run(fake, config: Self.stallConfig(), stopAtMs: 1500)
        let capture = "/state/cores/stall.svc.1.100"
        expectInOrder(fake.actions, ["spawn 100", "observe 100 one", "takeStallEvidence 100 stacks budget=20", "startStacks \(capture)",
                                     "readStacks", "remove \(capture).stacks.txt", "remove \(capture)", "insert 1", "signal 100 SIGTERM"])
        #expect(!fake.actions.contains { $0.hasPrefix("spawn 101") || $0 == "signal 100 SIGKILL" || $0.hasPrefix("writeCore") }, "\(fake.actions)")
        let incident = try #require(run.incidents.first)
        #expect(run.incidents.count == 1)
        #expect(incident.cause.kind == "stall" && incident.outcome == .selfRecovered)
        #expect(incident.pid == 100 && incident.newPid == nil && incident.killedAt == nil && incident.capture == nil)
        #expect(incident.stacks == fake.stacksText && incident.stallEvidence?.stacks == fake.stacksText)
        #expect(incident.stallEvidence?.pauseMs == 2 && incident.stallEvidence?.mode == .stacks && incident.stallEvidence?.threads == 3)
        #expect(incident.notes.contains { $0.hasPrefix("suspect after 250 ms of silence") })
        #expect(incident.notes.contains { $0.hasPrefix("stall evidence: stacks of 3 thread(s), service paused 2.00 ms") })
        guard case let .stall(silence, misses, _) = incident.cause else { Issue.record("\(incident.cause)"); return }
        #expect(silence >= 390 && silence <= 410 && misses == 3, "\(incident.cause)")
        #expect(run.logs.contains("incident 1: heartbeat silent for"))
        #expect(fake.files[capture] == nil, "the stacks-only capture is removed once read")
    }

    @Test func stacksThatLandAfterTheStallIsStoredUpdateIt() throws {
        let fake = FakeEffects()
        fake.behaviours = [.pauses(fromMs: 300, forMs: 400)]
        fake.helperDurationMs = 900   // gdb still reading when the heartbeat comes back
        let run = Run(fake, config: Self.stallConfig(), stopAtMs: 2500)
        let capture = "/state/cores/stall.svc.1.100"
        expectInOrder(fake.actions, ["takeStallEvidence 100 stacks budget=20", "startStacks \(capture)", "insert 1", "readStacks",
                                     "remove \(capture).stacks.txt", "remove \(capture)", "update 1"])
        let incident = try #require(run.incidents.first)
        #expect(incident.stacks == fake.stacksText && incident.outcome == .selfRecovered)
        #expect(run.incidents.count == 1)
    }

    @Test func aStallThatBecomesAHangGivesItsFirstMomentToTheHangsIncident() throws {
        let fake = FakeEffects()
        fake.behaviours = [.hangs(afterMs: 300), .healthy]
        fake.stallPauseMs = 1
        let run = Run(fake, config: Self.stallConfig(), stopAtMs: 3000)
        let capture = "/state/cores/stall.svc.1.100"
        expectInOrder(fake.actions, ["takeStallEvidence 100 stacks budget=20", "startStacks \(capture)", "readStacks", "remove \(capture)",
                                     "insert 1", "writeCore 100 native first=100", "signal 100 SIGKILL", "spawn 101"])
        let incident = try #require(run.incidents.first)
        #expect(run.incidents.count == 1, "one incident: the stall was the hang's beginning")
        #expect(incident.cause.kind == "missed-heartbeat" && incident.outcome == .recovered && incident.newPid == 101)
        #expect(incident.stallEvidence?.stacks == fake.stacksText && incident.stallEvidence?.pauseMs == 1)
        #expect(incident.notes.contains { $0.hasPrefix("the stall's evidence from the suspect stage joins this incident") })
        #expect(incident.stacks == fake.stacksText, "the hang's own core's stacks, read after the restart")
    }

    @Test func pastTheHourlyLimitAStallIsCountedNotStoredAndItsCaptureRemoved() throws {
        let fake = FakeEffects()
        fake.behaviours = [.pauses(fromMs: 300, forMs: 400)]
        fake.helperDurationMs = 900
        let run = Run(fake, config: Self.stallConfig { $0.escalation.stallIncidentsPerHour = 0 }, stopAtMs: 2500)
        #expect(run.incidents.isEmpty)
        #expect(run.logs.contains("counted, not stored: stall_incidents_per_hour (0) reached"))
        expectInOrder(fake.actions, ["takeStallEvidence 100 stacks budget=20", "readStacks", "remove /state/cores/stall.svc.1.100"])
        #expect(!fake.actions.contains { $0.hasPrefix("insert") || $0.hasPrefix("update") })
    }

    @Test func aKeptCoreFollowsRetentionAndIsNeverAnnounced() throws {
        let fake = FakeEffects()
        fake.behaviours = [.pauses(fromMs: 300, forMs: 400)]
        let run = Run(fake, config: Self.stallConfig { $0.escalation.stallEvidence = .core; $0.capture.announceToCoredumpctl = true }, stopAtMs: 1500)
        let capture = "/state/cores/stall-core.svc.1.100"
        expectInOrder(fake.actions, ["takeStallEvidence 100 core budget=20", "startStacks \(capture)", "readStacks", "remove \(capture).stacks.txt",
                                     "insert 1", "scanCores"])
        #expect(!fake.actions.contains("remove \(capture)") && !fake.actions.contains { $0.hasPrefix("announceCore") }, "\(fake.actions)")
        let incident = try #require(run.incidents.first)
        #expect(incident.capture?.path == capture && incident.stallEvidence?.corePath == capture && incident.stallEvidence?.mode == .core)
        #expect(incident.stacks == fake.stacksText)
    }

    @Test func withNoStallEvidenceTheStallIsStillRecordedFromSoftEvidence() throws {
        let fake = FakeEffects()
        fake.behaviours = [.pauses(fromMs: 300, forMs: 400)]
        let run = Run(fake, config: testConfig(), stopAtMs: 1500)
        #expect(!fake.actions.contains { $0.hasPrefix("takeStallEvidence") || $0.hasPrefix("startStacks") })
        let incident = try #require(run.incidents.first)
        #expect(incident.cause.kind == "stall" && incident.stallEvidence == nil && incident.stacks == nil)
        #expect(incident.threadStates == "3 S (3 in futex)", "\(incident.threadStates ?? "nil")")
    }

    /// A starved service (runnable, no CPU) that answers late is starvation, not a stall: no capture (its threads
    /// would not stop in time), no stall incident; the judge and the extensions say what happened.
    @Test func aStarvedServiceThatAnswersLateIsNoStall() throws {
        let fake = FakeEffects()
        fake.behaviours = [.starves(afterMs: 300)]
        let run = Run(fake, config: Self.stallConfig { $0.restart.intensityMax = 10 }, stopAtMs: 3000)
        #expect(!fake.actions.contains { $0.hasPrefix("takeStallEvidence") }, "\(fake.actions)")
        #expect(run.incidents.allSatisfy { $0.cause.kind != "stall" }, "\(run.incidents.map(\.cause))")
    }

    @Test func aCaptureThatFailsIsSaidAndTheStallStillRecorded() throws {
        let fake = FakeEffects()
        fake.behaviours = [.pauses(fromMs: 300, forMs: 400)]
        fake.stallCaptureFailure = "ptrace(PTRACE_SEIZE, 100): Operation not permitted"
        let run = Run(fake, config: Self.stallConfig(), stopAtMs: 1500)
        #expect(!fake.actions.contains { $0.hasPrefix("startStacks") })
        let incident = try #require(run.incidents.first)
        #expect(incident.stallEvidence?.error == "ptrace(PTRACE_SEIZE, 100): Operation not permitted" && incident.stacks == nil)
    }
}
