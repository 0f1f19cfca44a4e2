import DefibCore
import Foundation
import Testing

/// The real supervisor loop (`DefibRuntime.Supervisor` over `Supervision`) driven through fake effects and a
/// manual clock: each test follows an instance's life and checks the incident as stored and the effects
/// performed, in order. Timings follow `testConfig()`: a ping answered within 1 ms goes out every 100 ms, so
/// an instance that hangs 300 ms after its start leaves the ping sent at 303 ms unanswered; misses follow at
/// 428, 553 (suspect), 678, and the hang is judged at 803 ms.
@Suite struct SupervisorLoopTests {
    /// A start timeout of `seconds` on the control channel, with the last error the pings met (what the incident's
    /// cause_detail quotes).
    static func isStartTimeout(_ cause: IncidentCause, seconds: Double) -> Bool {
        guard case let .startTimeout(s, heartbeat, lastError) = cause else { return false }
        return s == seconds && heartbeat == nil && lastError?.isEmpty == false && cause.summary.hasSuffix(" (last: \(lastError!))")
    }

    @Test func aHangIsJudgedRecordedCapturedKilledRestartedAndClosed() throws {
        let fake = FakeEffects()
        fake.behaviours = [.hangs(afterMs: 300), .healthy]
        let run = Run(fake)
        #expect(run.code == 0)
        #expect(fake.actions == [
            // Ready: who it runs as, then its locks.
            "spawn 100", "observe 100 none identity", "locks",
            // miss 1: a baseline; suspect: soft evidence (the flight recorder too); the deadline: a verdict.
            "observe 100 one", "observe 100 one recorder", "observe 100 one",
            // Recorded before anything is done to the process, then the evidence (stored), the core (stored), the kill.
            "insert 1", "observe 100 none capture", "update 1", "writeCore 100 native first=100", "update 1",
            "signal 100 SIGKILL", "update 1", "killLeftovers 100",
            // The replacement: restarted (stored), ready: closed (stored); then the stacks, off the critical path.
            "spawn 101", "update 1", "observe 101 none identity", "update 1", "startStacks /state/cores/core.svc.1.100", "locks",
            "readStacks", "remove /state/cores/core.svc.1.100.stacks.txt", "update 1", "scanCores",
            "signal 101 SIGTERM", "killLeftovers 101",
        ])
        let incident = try #require(run.incidents.first)
        #expect(run.incidents.count == 1)
        #expect(incident.id == 1 && incident.pid == 100 && incident.newPid == 101 && incident.outcome == .recovered)
        #expect(incident.cause == .missedHeartbeat(misses: 4, lastPongAt: fake.wallBase.addingTimeInterval(0.203), lastError: "no reply within 500 ms"))
        #expect(incident.silenceMs == 500 && incident.extendedMs == 0)
        #expect(incident.progress?.kind == "stuck" && incident.threadStates == "3 S (3 in futex)" && incident.threads == 3)
        #expect(incident.capture == CaptureRecord(method: "native", path: "/state/cores/core.svc.1.100", bytes: 3_000_000, durationMs: 40, error: nil))
        #expect(incident.detectedAt == fake.wallBase.addingTimeInterval(0.803))
        #expect(incident.killedAt == fake.wallBase.addingTimeInterval(0.843))
        #expect(incident.restartedAt == fake.wallBase.addingTimeInterval(0.944))
        #expect(incident.readyAt == fake.wallBase.addingTimeInterval(0.945))
        #expect(incident.notes == [
            "miss 1 after 125 ms of silence: no reply within 125 ms",
            "miss 2 after 250 ms of silence: no reply within 250 ms",
            "suspect after 250 ms of silence: threads 3 S (3 in futex); progress since the first miss: no CPU progress (CPU +0 ms in 125 ms) and every thread asleep: 3 S (3 in futex)",
            "miss 3 after 375 ms of silence: no reply within 375 ms",
            "miss 4 after 500 ms of silence: no reply within 500 ms",
            "native core: 3 threads stopped in 1.5 ms, 2000000 bytes allocated of 3000000",
        ])
        #expect(incident.diagnosis.hasPrefix("unknown: no lock explains the silence; the process was stuck"))
        // The stacks landed after the close, in the same incident: the diagnosis points at them, the signature counts them.
        #expect(incident.stacks == fake.stacksText)
        #expect(incident.diagnosisEvidence?.last?.hasPrefix("stacks: ") == true)
        #expect(incident.signature == incident.computedSignature())
        #expect(run.logs.contains("incident 1 opened: control channel silent: 4 heartbeat(s) missed"))
        #expect(run.logs.contains("incident 1 closed: recovered in 142 ms"))
        #expect(fake.files["/state/cores/core.svc.1.100"] != nil, "the core stays")
    }

    @Test func aCaptureThatFailsIsRecordedAndTheKillAndRestartGoAhead() throws {
        let fake = FakeEffects()
        fake.behaviours = [.hangs(afterMs: 300), .healthy]
        fake.coreFailure = "ptrace(PTRACE_SEIZE, 100): Operation not permitted"
        let run = Run(fake)
        expectInOrder(fake.actions, ["insert 1", "writeCore 100 native first=100", "update 1", "signal 100 SIGKILL", "spawn 101", "scanCores"])
        #expect(!fake.actions.contains { $0.hasPrefix("startStacks") }, "no core, no stacks")
        let incident = try #require(run.incidents.first)
        #expect(incident.capture?.path == nil && incident.capture?.error == "ptrace(PTRACE_SEIZE, 100): Operation not permitted")
        #expect(incident.outcome == .recovered && incident.killedAt != nil)
        #expect(run.logs.contains("error core capture (native) failed: ptrace(PTRACE_SEIZE, 100): Operation not permitted"))
    }

    /// A replacement that never becomes ready closes the open incident (replacement-failed) and gets its own,
    /// with its own judgement, evidence and core: nothing overwrites the first one's.
    @Test func aReplacementThatHangsBeforeItIsReadyGetsItsOwnIncident() throws {
        let fake = FakeEffects()
        fake.behaviours = [.hangs(afterMs: 300), .neverListens, .healthy]
        let run = Run(fake, stopAtMs: 6000)
        #expect(run.code == 0)
        #expect(run.incidents.count == 2)
        let first = try #require(run.incidents.first), second = try #require(run.incidents.last)
        #expect(first.outcome == .replacementFailed && first.newPid == 101)
        #expect(first.notes.last == "the replacement pid 101 failed too before it was ready: not ready within 2000 ms (last: no control socket (nothing listening yet)); the next incident holds its evidence")
        #expect(first.capture?.path == "/state/cores/core.svc.1.100")
        #expect(Self.isStartTimeout(second.cause, seconds: 2) && second.pid == 101 && second.outcome == .recovered && second.newPid == 102, "\(second.cause)")
        #expect(second.progress?.kind == "stuck", "never ready is judged too")
        #expect(second.notes.first == "last control-channel error: no control socket (nothing listening yet)")
        #expect(second.capture?.path == "/state/cores/core.svc.2.101")
        // The second incident is judged (two samples, no baseline) before it is recorded, then captured.
        expectInOrder(fake.actions, ["spawn 101", "update 1", "observe 101 pair", "insert 2", "observe 101 none capture",
                                     "writeCore 101 native first=101", "signal 101 SIGKILL", "spawn 102"])
    }

    @Test func aCrashLoopIsOneIncidentUntilTheSupervisorGivesUpWithExitCode1() throws {
        let fake = FakeEffects()
        fake.behaviours = [.exits(afterMs: 0, .exited(code: 3))]
        let run = Run(fake, stopAtMs: nil)
        #expect(run.code == 1)
        // Each replacement dies before it is ready: noted in the one incident (restarted, then "failed too"),
        // until the intensity limit closes it (gave-up) and the supervisor exits.
        #expect(fake.actions == [
            "spawn 100", "killLeftovers 100", "insert 1",
            "spawn 101", "update 1", "killLeftovers 101", "update 1",
            "spawn 102", "update 1", "killLeftovers 102", "update 1",
            "spawn 103", "update 1", "killLeftovers 103", "update 1", "update 1", "update 1", "scanCores",
        ])
        #expect(fake.actions.filter { $0.hasPrefix("spawn ") }.count == 4)
        #expect(!fake.actions.contains { $0.hasPrefix("writeCore") || $0.hasPrefix("observe") }, "a death needs no capture")
        #expect(run.incidents.count == 1)
        let incident = try #require(run.incidents.first)
        #expect(incident.cause == .exited(code: 3) && incident.outcome == .gaveUp)
        #expect(incident.diagnosis == "exited: the service exited on its own with code 3")
        #expect(incident.notes == Array(repeating: "the replacement failed too: exited with code 3", count: 3)
                + ["restart intensity exceeded: 3 restarts within 10000 ms"])
        #expect(run.logs.contains("error giving up on svc: restart intensity exceeded"))
    }

    @Test func aShutdownDuringTheCaptureStopsInsteadOfRestarting() throws {
        let fake = FakeEffects()
        fake.behaviours = [.hangs(afterMs: 300), .healthy]
        fake.coreDurationMs = 400
        // The capture runs from 803 to 1203 ms; SIGTERM comes in the middle of it.
        let run = Run(fake, stopAtMs: 900)
        #expect(run.code == 0)
        let incident = try #require(run.incidents.first)
        #expect(incident.outcome == .shutdown && incident.capture?.path != nil && incident.killedAt != nil)
        #expect(!fake.actions.contains("spawn 101"), "no replacement once asked to stop")
        expectInOrder(fake.actions, ["writeCore 100 native first=100", "signal 100 SIGKILL", "killLeftovers 100", "update 1",
                                     "startStacks /state/cores/core.svc.1.100", "readStacks", "scanCores"])
        #expect(!fake.actions.contains("signal 100 SIGTERM"), "the capture's kill stands: no SIGTERM after it")
    }

    /// STOPPING=1 from the service: no heartbeat is expected while it winds down; when it ends, the incident
    /// says the stop was announced.
    @Test func stoppingAnnouncedByTheServiceSuspendsHeartbeatsAndIsNotedWhenItEnds() throws {
        let fake = FakeEffects()
        fake.behaviours = [.exits(afterMs: 1300, .exited(code: 0)), .healthy]
        fake.schedule(at: 500, .notify(NotifyMessage(pid: 100, text: "STOPPING=1")))
        let run = Run(fake)
        #expect(run.logs.contains("service says: STOPPING=1: the service is stopping by itself; no heartbeat expected for up to 1000 ms"))
        #expect(!run.logs.contains("heartbeat missed"))
        let pingsBefore = fake.calls.prefix { $0 != "killLeftovers 100" }.filter { $0.hasPrefix("ping ") }.count
        #expect(pingsBefore == 5, "pings at 0, 101, 202, 303, 404; none after STOPPING=1 at 500")
        let incident = try #require(run.incidents.first)
        #expect(incident.cause == .exited(code: 0) && incident.outcome == .recovered)
        #expect(incident.notes == ["the service had announced STOPPING=1 800 ms before it ended"])
    }

    @Test func aProgramThatCannotStartIsAnIncidentAndIsRetried() throws {
        let fake = FakeEffects()
        fake.spawnFailures = ["execute /usr/bin/fake-service: No such file or directory"]
        let run = Run(fake, stopAtMs: 1000)
        #expect(Array(fake.actions.prefix(7)) == ["spawn failed", "insert 1", "spawn 100", "update 1", "observe 100 none identity", "update 1", "scanCores"])
        let incident = try #require(run.incidents.first)
        #expect(incident.cause == .spawnFailed(message: "execute /usr/bin/fake-service: No such file or directory"))
        #expect(incident.diagnosis == "exited: the program could not be started: execute /usr/bin/fake-service: No such file or directory")
        #expect(incident.signature != nil && incident.outcome == .recovered && incident.newPid == 100)
        #expect(incident.process == nil, "a start that failed had no process")
        #expect(run.logs.contains("error could not start svc: execute /usr/bin/fake-service: No such file or directory"))
    }

    @Test func anInstanceThatNeverAnswersIsJudgedAtTheStartTimeoutAndCaptured() throws {
        let fake = FakeEffects()
        fake.behaviours = [.neverListens, .healthy]
        let run = Run(fake, config: testConfig { $0.heartbeat.mode = .ping }, stopAtMs: 4000)
        expectInOrder(fake.actions, ["spawn 100", "observe 100 pair", "insert 1", "observe 100 none capture", "writeCore 100 native first=100",
                                     "signal 100 SIGKILL", "spawn 101"])
        let incident = try #require(run.incidents.first)
        #expect(Self.isStartTimeout(incident.cause, seconds: 2) && incident.outcome == .recovered, "\(incident.cause)")
        #expect(incident.progress?.kind == "stuck" && incident.threadStates == "3 S (3 in futex)")
        #expect(incident.notes.first == "last control-channel error: no control socket (nothing listening yet)")
        #expect(incident.detectedAt == fake.wallBase.addingTimeInterval(2))
    }

    /// A service that pauses past the suspect stage and answers again: no incident, no kill, and what was
    /// gathered for that silence is forgotten (the next hang's incident does not carry it).
    @Test func aLateAnswerAfterTheSuspectStageRecoversWithoutAKillAndIsForgotten() throws {
        // A stall that ends by itself is an incident of its own by default (SupervisorStallTests); with
        // stall_incidents_per_hour = 0 stalls are only counted, and this is what remains of the silence.
        let noStalls = testConfig { $0.escalation.stallIncidentsPerHour = 0 }
        let fake = FakeEffects()
        fake.behaviours = [.pauses(fromMs: 300, forMs: 400)]
        let run = Run(fake, config: noStalls, stopAtMs: 1500)
        #expect(run.incidents.isEmpty)
        #expect(!fake.actions.contains { $0.hasPrefix("insert") || $0.hasPrefix("signal 100 SIGKILL") })
        #expect(run.logs.contains("warning heartbeat back after 397 ms of silence (3 missed); no kill"))
        #expect(run.logs.contains("suspect after 250 ms of silence"))

        // Asked to be treated as hung later: the incident starts from what is known then, not from the silence that ended.
        let again = FakeEffects()
        again.behaviours = [.pauses(fromMs: 300, forMs: 400), .healthy]
        again.schedule(at: 1200, .notify(NotifyMessage(pid: 100, text: "WATCHDOG=trigger")))
        let triggered = Run(again, config: noStalls, stopAtMs: 2500)
        let incident = try #require(triggered.incidents.first)
        #expect(incident.cause == .triggered(reason: "the service sent WATCHDOG=trigger"))
        #expect(incident.notes.allSatisfy { !$0.hasPrefix("miss ") && !$0.hasPrefix("suspect ") }, "\(incident.notes)")
    }

    @Test func aStarvedProcessGetsBoundedExtensionsBeforeItIsDeclaredHung() throws {
        let fake = FakeEffects()
        fake.behaviours = [.starves(afterMs: 300), .healthy]
        let run = Run(fake, stopAtMs: 4000)
        let incident = try #require(run.incidents.first)
        #expect(incident.extendedMs == 1000 && incident.silenceMs == 1500)
        #expect(incident.progress?.kind == "starved")
        #expect(incident.notes.filter { $0.hasPrefix("deadline extended by 250 ms") }.count == 4)
        #expect(incident.detectedAt == fake.wallBase.addingTimeInterval(1.803))
    }

    /// A death needs no capture: it is diagnosed and signed when recorded, and what the instance left behind
    /// is killed first (the lines land in the incident that follows).
    @Test func aDeathIsDiagnosedAtOnceAndItsLeftoversKilled() throws {
        let fake = FakeEffects()
        fake.behaviours = [.exits(afterMs: 200, .signaled(signal: SIGSEGV, coreDumped: true)), .healthy]
        fake.leftovers = [KilledProcess(pid: 555, name: "sleep"), KilledProcess(pid: 1, name: "init")]
        let run = Run(fake, stopAtMs: 1000)
        #expect(Array(fake.actions.prefix(10)) == ["spawn 100", "observe 100 none identity", "locks", "killLeftovers 100", "insert 1", "spawn 101",
                                                   "update 1", "observe 101 none identity", "update 1", "scanCores"])
        let incident = try #require(run.incidents.first)
        #expect(incident.cause == .signaled(signal: SIGSEGV, coreDumped: true))
        #expect(incident.diagnosis == "signaled: the service was killed by SIGSEGV; the kernel dumped a core")
        #expect(incident.signature != nil && incident.binaryPath == nil && incident.startedAt == fake.wallBase)
        #expect(incident.notes == ["killed pid 555 (sleep), left behind by the instance pid 100"], "a child we had before is never a leftover")
    }

    /// The kernel's dump kills by design: the capture reaps the instance; no SIGKILL follows.
    @Test func theKernelMethodReapsTheInstanceWithinTheCapture() throws {
        let fake = FakeEffects()
        fake.behaviours = [.hangs(afterMs: 300), .healthy]
        let run = Run(fake, config: testConfig { $0.capture.method = .kernel })
        expectInOrder(fake.actions, ["insert 1", "writeCore 100 kernel first=100", "killLeftovers 100", "update 1", "spawn 101"])
        #expect(!fake.actions.contains("signal 100 SIGKILL"))
        let incident = try #require(run.incidents.first)
        #expect(incident.killedAt == fake.wallBase.addingTimeInterval(0.803))
        #expect(incident.notes.suffix(2) == ["the process ended during evidence capture: killed by SIGSYS (core dumped)",
                                             "killed with SIGSYS so the kernel dumps its core (the kernel method kills by design)"])
        #expect(incident.capture?.method == "kernel" && incident.outcome == .recovered)
    }
}
