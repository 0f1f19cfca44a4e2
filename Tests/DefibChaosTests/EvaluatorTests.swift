@testable import DefibChaos
import DefibCore
import Testing

@Suite struct EvaluatorTests {
    @Test func aRecoveredRaceWithFullEvidencePasses() {
        let r = RunEvaluator.evaluate(Canned.raceObservation())
        #expect(r.recovered)
        #expect(r.passed, "\(r.checksFailed)")
        #expect(r.detectMs == 1000 && r.killMs == 1030 && r.readyMs == 1180)
        // The first success completed after the detection is the backlog's answer at 11 200 + 1.
        #expect(r.restoreMs == 1201)
        #expect(r.coreOK == true && r.stacksOK == true && r.diagnosisOK == true && r.lockWordOK == true)
        #expect(r.lockWord == "0xfffffffffffffffe", "the word right after the revert is the one reported")
        #expect(r.falseKill == false)
        #expect(r.incidentID == 1)
    }

    @Test func requestsAreCountedFromTheOnsetByOutcome() {
        let r = RunEvaluator.evaluate(Canned.raceObservation())
        // 300 ok requests due in [10 000, 13 000), plus the refused, failed and timed-out ones.
        #expect(r.requestsOK == 300)
        #expect(r.requestsRefused == 1)
        #expect(r.requestsFailed == 2, "a timeout counts as failed")
        #expect(r.requestsTimedOut == 1)
    }

    @Test func successesBeforeTheDetectionDoNotCountAsRestored() {
        var o = Canned.raceObservation()
        // The natural race: requests keep succeeding for a while after the onset, until the word corrupts.
        o.samples = [RequestSample(scheduledUnixMs: 10_100, latencyMs: 2, outcome: .ok, status: 200),
                     RequestSample(scheduledUnixMs: 11_300, latencyMs: 4, outcome: .ok, status: 200)]
        let r = RunEvaluator.evaluate(o)
        #expect(r.restoreMs == 1304)
    }

    @Test func idleRestoreIsReady() {
        let r = RunEvaluator.evaluate(Canned.raceObservation(load: .idle))
        #expect(r.recovered && r.restoreMs == r.readyMs)
        #expect(r.requestsOK == 0)
    }

    @Test func underLoadRecoveryNeedsASuccessAfterTheDetection() {
        var o = Canned.raceObservation()
        o.samples = o.samples.filter { $0.completedUnixMs < 11_000 }
        let r = RunEvaluator.evaluate(o)
        #expect(!r.recovered)
        #expect(r.reason?.contains("no request succeeded after the detection") == true)
        #expect(r.restoreMs == nil)
    }

    @Test func missingCoreMismatchedThreadsAndMissingStacksAreEachNamed() {
        var o = Canned.raceObservation()
        o.incidents = [Canned.raceIncident(core: nil)]
        var r = RunEvaluator.evaluate(o)
        #expect(r.coreOK == false && r.stacksOK == false)
        #expect(r.checksFailed.contains { $0.hasPrefix("core: none written") })
        #expect(r.checksFailed.contains("stacks: none stored"))

        o = Canned.raceObservation()
        o.coreChecks = [1: CoreCheck(exists: true, gdbThreads: 4)]
        r = RunEvaluator.evaluate(o)
        #expect(r.coreOK == false)
        #expect(r.checksFailed.contains("core: gdb lists 4 threads, the incident recorded 5"))

        o.coreChecks = [1: CoreCheck(exists: false, gdbThreads: nil)]
        #expect(RunEvaluator.evaluate(o).checksFailed.contains("core: /cores/core.1 is missing"))
        #expect(r.recovered, "evidence failures do not make a recovery fail")
    }

    @Test func aWrongDiagnosisIsReportedHonestly() {
        var o = Canned.raceObservation()
        o.incidents = [Canned.raceIncident(diagnosis: "leaked-read-lock: 'catalog' counts 1 reader")]
        let r = RunEvaluator.evaluate(o)
        #expect(r.diagnosisOK == false)
        #expect(r.checksFailed.contains("diagnosis: expected corrupted-lock-word, got 'leaked-read-lock: 'catalog' counts 1 reader'"))
        o.incidents = [Canned.raceIncident(diagnosis: "")]
        #expect(RunEvaluator.evaluate(o).checksFailed.contains("diagnosis: expected corrupted-lock-word, got '(none)'"))
    }

    @Test func aRaceWithAValidWordFailsTheLockCheck() {
        var o = Canned.raceObservation()
        var i = Canned.raceIncident()
        i.lockWords = ["0x0000000000000019"]
        o.incidents = [i]
        let r = RunEvaluator.evaluate(o)
        #expect(r.lockWordOK == false && r.lockWord == "0x0000000000000019")
    }

    @Test func aCrashExpectsNoCoreButTheSignaledDiagnosis() {
        let crash = IncidentFacts(id: 3, cause: "signaled", diagnosis: "signaled: the service was killed by SIGABRT", detectedUnixMs: 10_004, readyUnixMs: 10_130)
        let o = RunObservation(scenario: .crash, load: .idle, run: 1, onsetUnixMs: Canned.onset, windowStartUnixMs: 9000, windowEndUnixMs: 11_000,
                               incidents: [crash])
        let r = RunEvaluator.evaluate(o)
        #expect(r.passed, "\(r.checksFailed)")
        #expect(r.coreOK == nil && r.stacksOK == nil && r.lockWordOK == nil && r.killMs == nil)
        #expect(r.diagnosisOK == true && r.detectMs == 4 && r.restoreMs == 130)
    }

    @Test func anyIncidentInAControlRunIsAFalseKill() {
        let quiet = RunObservation(scenario: .control, load: .overload, run: 1, onsetUnixMs: nil, windowStartUnixMs: 9000, windowEndUnixMs: 13_000,
                                   samples: Canned.samples())
        let ok = RunEvaluator.evaluate(quiet)
        #expect(ok.passed && !ok.falseKill && ok.recovered)
        #expect(ok.requestsOK == 400, "a control run counts the whole window")
        var noisy = quiet
        noisy.incidents = [IncidentFacts(id: 7, diagnosis: "slow-holder: …", detectedUnixMs: 12_000, readyUnixMs: 12_200)]
        let r = RunEvaluator.evaluate(noisy)
        #expect(r.falseKill && !r.passed && r.incidentCount == 1)
        #expect(r.checksFailed.first == "false kill: incident #7 (missed-heartbeat, slow-holder) in a control run")
    }

    @Test func noIncidentIsNotRecoveredWithTheHarnessReason() {
        let o = RunObservation(scenario: .deadLoop, load: .steady, run: 2, onsetUnixMs: Canned.onset, windowStartUnixMs: 9000, windowEndUnixMs: 30_000,
                               problems: ["no incident within 8100 ms of the fault"])
        let r = RunEvaluator.evaluate(o)
        #expect(!r.recovered && r.reason == "no incident recorded")
        #expect(r.checksFailed == ["no incident within 8100 ms of the fault", "not recovered: no incident recorded"])
        #expect(r.progressSummary.contains("no incident"))
    }

    @Test func captureTurnedOffMeansNoCoreExpected() {
        var o = Canned.raceObservation()
        o.incidents = [Canned.raceIncident(core: nil)]
        o.captureEnabled = false
        let r = RunEvaluator.evaluate(o)
        #expect(r.coreOK == nil && r.stacksOK == nil && r.passed)
    }

    @Test func gdbThreadLinesAreCounted() {
        let output = """
          Id   Target Id                         Frame
        * 1    Thread 0x7f41f75ce6c0 (LWP 2463) __futex_abstimed_wait_common64 (private=0) at ./nptl/futex-internal.c:57
          2    Thread 0x7f41f80a3c80 (LWP 2455) warning: Section `.reg-xstate/2455' in core file too small.
        0x00007f41f785ac82 in __GI___sigtimedwait (set=0x7fffe0bc7f60) at ../sysdeps/unix/sysv/linux/sigtimedwait.c:31
          10   Thread 0x7f41f5d696c0 (LWP 2464) epoll_wait (epfd=4) at ../sysdeps/unix/sysv/linux/epoll_wait.c:30
        #1 0x0000 in main ()
        """
        #expect(countGdbThreads(output) == 3)
        #expect(countGdbThreads("No threads.\n") == 0)
    }

    @Test func httpResponsesAreCompleteByLengthOrAtEOF() {
        let full = Array("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n".utf8)
        #expect(LoadGenerator.complete(full)?.0 == .ok)
        #expect(LoadGenerator.complete(Array(full.dropLast())) == nil)
        #expect(LoadGenerator.completeAtEOF(Array(full.dropLast()))?.0 == .failed, "a short body is a failure")
        let closeDelimited = Array("HTTP/1.0 200 OK\r\n\r\nhello".utf8)
        #expect(LoadGenerator.complete(closeDelimited) == nil)
        #expect(LoadGenerator.completeAtEOF(closeDelimited)?.0 == .ok)
        let gateway = Array("HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n".utf8)
        #expect(LoadGenerator.complete(gateway).map { $0.0 == .failed && $0.1 == 502 } == true)
    }
}
