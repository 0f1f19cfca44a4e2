import DefibCore
import Foundation
import Testing

/// The loop with the heartbeats a service that speaks neither ping nor sd_notify gets — probes, `auto`,
/// `none` — and with services of several processes, through the fake effects and the manual clock of
/// `testConfig()` (interval 100, deadline 500 with 2 misses, start timeout 2000, capture budget 1000).
@Suite struct AnyServiceLoopTests {
    static let url = "http://127.0.0.1:8000/health"
    static let probeName = "http probe GET http://127.0.0.1:8000/health"

    /// An http probe every 100 ms, each given 250 ms.
    static func httpProbe(_ change: (inout SupervisorConfig) -> Void = { _ in }) -> SupervisorConfig {
        testConfig {
            $0.heartbeat.mode = .http
            $0.heartbeat.probe = url
            $0.heartbeat.probeTimeoutMs = 250
            change(&$0)
        }
    }

    @Test func aProbeThatStopsAnsweringGoesThroughTheSameStagesAndTheIncidentNamesIt() throws {
        let fake = FakeEffects()
        fake.behaviours = [.hangs(afterMs: 300), .healthy]
        let run = Run(fake, config: Self.httpProbe())
        #expect(run.code == 0)
        // Probes, not pings, and no `locks` query: the service has no control channel.
        #expect(fake.calls.contains("probe 1") && !fake.calls.contains { $0.hasPrefix("ping ") || $0 == "locks" })
        // The first beat made it ready; the attempt that found it hung timed out (the supervision's deadline),
        // then the same escalation as a ping's: a baseline at the first miss, suspect evidence, the verdict.
        #expect(run.logs.contains("service svc pid 100 is ready"))
        expectInOrder(fake.actions, ["spawn 100", "observe 100 one", "observe 100 one recorder", "observe 100 one", "insert 1",
                                     "observe 100 none capture", "writeCore 100 native first=100", "signal 100 SIGKILL", "spawn 101"])
        let timedOut = try #require(fake.calls.first { $0.hasPrefix("probeTimedOut ") })
        #expect(fake.calls.firstIndex(of: timedOut)! < fake.calls.firstIndex(of: "insert 1")!)
        let incident = try #require(run.incidents.first)
        #expect(run.incidents.count == 1 && incident.outcome == .recovered && incident.newPid == 101)
        guard case let .missedHeartbeat(misses, lastBeat, lastError, heartbeat) = incident.cause else {
            Issue.record("\(incident.cause)")
            return
        }
        #expect(misses >= 2 && lastBeat != nil && heartbeat == Self.probeName)
        #expect(lastError == "timed out after 250 ms waiting for the status line", "the attempt's own failure, not the machine's 'no reply'")
        #expect(incident.cause.kind == "missed-heartbeat")
        #expect(incident.cause.summary.hasPrefix("\(Self.probeName) failing: \(misses) heartbeat(s) missed, last beat "))
        #expect(incident.cause.summary.hasSuffix("(timed out after 250 ms waiting for the status line)"))
        #expect(incident.silenceMs == 500 && incident.progress?.kind == "stuck")
        #expect(incident.processes == nil, "one process: no per-process list")
        #expect(incident.notes.contains { $0.hasPrefix("suspect after 250 ms of silence") })
        // The replacement's first beat closes it.
        #expect(run.logs.contains("service svc pid 101 is ready"))
    }

    @Test func aProbeAnsweredWithAnErrorStatusIsAMissNamingTheStatus() throws {
        let fake = FakeEffects()
        fake.behaviours = [.hangs(afterMs: 300), .healthy]
        fake.hungProbeAnswer = .status(code: 503, reason: "Service Unavailable", expected: nil)
        let run = Run(fake, config: Self.httpProbe())
        let incident = try #require(run.incidents.first)
        #expect(incident.cause.summary.hasSuffix("(status 503 Service Unavailable (expected 2xx or 3xx))"), "\(incident.cause.summary)")
        #expect(!fake.calls.contains { $0.hasPrefix("probeTimedOut ") }, "every attempt answered")
        #expect(run.logs.contains("heartbeat missed (1 in a row"))
    }

    /// A starved server answers its probe late or not at all, like a starved pinger: bounded extensions, not a kill.
    @Test func aStarvedServerBehindAProbeGetsTheSameBoundedExtensions() throws {
        let fake = FakeEffects()
        fake.behaviours = [.starves(afterMs: 300), .healthy]
        let run = Run(fake, config: Self.httpProbe(), stopAtMs: 4000)
        let incident = try #require(run.incidents.first)
        #expect(incident.progress?.kind == "starved" && incident.extendedMs == 1000 && incident.silenceMs == 1500)
        #expect(incident.notes.filter { $0.hasPrefix("deadline extended by 250 ms") }.count == 4)
    }

    /// Before its first beat a probe that is refused is retried an interval later (an exec probe is a process,
    /// an HTTP probe a request the service logs); never ready is a start timeout that names the probe.
    @Test func aServerThatNeverAnswersItsProbeIsAStartTimeoutNamingIt() throws {
        let fake = FakeEffects()
        fake.behaviours = [.neverListens, .healthy]
        let run = Run(fake, config: Self.httpProbe(), stopAtMs: 3000)
        let incident = try #require(run.incidents.first)
        #expect(incident.cause == .startTimeout(seconds: 2, heartbeat: Self.probeName, lastError: "connection refused"))
        #expect(incident.cause.summary == "\(Self.probeName): no first beat within 2.0 s of start (last: connection refused)")
        #expect(incident.notes.first == "last error of the \(Self.probeName): connection refused")
        let attemptsBeforeTimeout = fake.calls.prefix { $0 != "insert 1" }.filter { $0.hasPrefix("probe ") }.count
        #expect((19...21).contains(attemptsBeforeTimeout), "one attempt an interval: \(attemptsBeforeTimeout)")
    }

    /// A first answer slower than the retry pause still counts: the running attempt answers the retry.
    @Test func aSlowFirstAnswerIsNotCutShortByTheStartRetry() throws {
        let fake = FakeEffects()
        fake.probeLatencyMs = 200
        let run = Run(fake, config: Self.httpProbe(), stopAtMs: 1000)
        #expect(run.incidents.isEmpty)
        #expect(run.logs.contains("service svc pid 100 is ready"))
        // The machine's retry at 125 ms (ping 2) is answered by the attempt still running (started as 1), whose
        // beat at 200 ms makes the instance ready; the next attempt is the next ping (3), an interval later.
        #expect(Array(fake.calls.filter { $0.hasPrefix("probe ") }.prefix(2)) == ["probe 1", "probe 3"])
        #expect(!fake.calls.prefix { $0 != "probe 3" }.contains("cancelProbe"))
    }

    /// No heartbeat flag (`auto`) and a program that speaks neither protocol: supervised for its exit only,
    /// one warning naming the options, no incident while it runs; its pings go on, and none is a miss.
    @Test func autoSupervisesAProgramThatSpeaksNeitherProtocolForItsExitOnly() throws {
        let fake = FakeEffects()
        fake.behaviours = [.neverListens]
        let run = Run(fake, stopAtMs: 6000)
        #expect(run.incidents.isEmpty && run.code == 0)
        let warnings = run.logs.lines.filter { $0.hasPrefix("warning pid 100 has neither listened on DEFIB_CONTROL_SOCKET nor sent WATCHDOG=1 within 2000 ms") }
        #expect(warnings.count == 1, "\(run.logs.lines)")
        #expect(warnings.first?.contains("--heartbeat http|tcp|exec with --probe TARGET") == true)
        #expect(warnings.first?.contains("--heartbeat ping|notify") == true)
        // (Who the process runs as is read at its start: that is not a miss's evidence.)
        #expect(!run.logs.contains("heartbeat missed") && !fake.actions.contains { $0.hasPrefix("observe") && !$0.hasSuffix(" identity") },
                "\(fake.actions.filter { $0.hasPrefix("observe") })")
        // Pings still go out after the start window, an interval apart (a service that starts listening is heard).
        let pings = fake.calls.filter { $0.hasPrefix("ping ") }.count
        #expect(pings > 80 + 35, "25 ms retries while starting, then every 100 ms: \(pings)")
    }

    /// `auto` with a program that says READY=1 but sends no keep-alive (redis-server --supervised systemd):
    /// ready at once, then supervised for its exit only, with the warning at the end of the start window.
    @Test func autoTakesReadinessFromReadyAndWarnsWhenNoHeartbeatFollows() throws {
        let fake = FakeEffects()
        fake.behaviours = [.neverListens]
        fake.schedule(at: 50, .notify(NotifyMessage(pid: 100, text: "READY=1\nSTATUS=Ready to accept connections")))
        let run = Run(fake, stopAtMs: 3000)
        #expect(run.incidents.isEmpty)
        let ready = try #require(run.logs.lines.firstIndex { $0.contains("service svc pid 100 is ready") })
        let warning = try #require(run.logs.lines.firstIndex { $0.hasPrefix("warning pid 100 has neither listened") })
        #expect(ready < warning)
        #expect(run.logs.contains("within 2000 ms of its start"))
    }

    /// `auto` with a service that says READY=1 before it answers its first ping: ready at READY=1, and the
    /// first pong still adopts pings and asks for the locks.
    @Test func autoReadyBeforeTheFirstPongStillLearnsPingsAndAsksForLocks() throws {
        let fake = FakeEffects()
        fake.schedule(at: 0, .notify(NotifyMessage(pid: 100, text: "READY=1")))
        let run = Run(fake, stopAtMs: 1000)
        #expect(run.incidents.isEmpty)
        let ready = try #require(run.logs.lines.firstIndex { $0.contains("service svc pid 100 is ready") })
        let adopted = try #require(run.logs.lines.firstIndex { $0.contains("pid 100 answers pings") })
        #expect(ready < adopted)
        #expect(fake.actions.filter { $0 == "locks" }.count == 1)
    }

    /// `auto` learns sd_notify from the first WATCHDOG=1: from then on the keep-alives are due, and their
    /// silence is a hang like `--heartbeat notify`'s.
    @Test func autoHoldsAServiceToTheKeepAlivesOnceItSendsOne() throws {
        let fake = FakeEffects()
        fake.behaviours = [.neverListens, .healthy]
        fake.schedule(at: 50, .notify(NotifyMessage(pid: 100, text: "READY=1\nWATCHDOG=1")))
        for ms in stride(from: Int64(150), through: 650, by: 100) { fake.schedule(at: ms, .notify(NotifyMessage(pid: 100, text: "WATCHDOG=1"))) }
        let run = Run(fake, stopAtMs: 3000)
        #expect(run.logs.contains("pid 100 sends WATCHDOG=1: its keep-alives are its heartbeat from now on (heartbeat auto)"))
        let incident = try #require(run.incidents.first)
        guard case let .missedHeartbeat(_, _, lastError, heartbeat) = incident.cause else { Issue.record("\(incident.cause)"); return }
        // Named as what went silent (the keep-alives), not as a control channel.
        #expect(lastError?.hasPrefix("no WATCHDOG=1 for ") == true && heartbeat == "sd_notify keep-alive (WATCHDOG=1)", "\(incident.cause)")
        #expect(incident.cause.summary.hasPrefix("sd_notify keep-alive (WATCHDOG=1) failing: "), "\(incident.cause.summary)")
        #expect(incident.pid == 100 && incident.capture?.path == "/state/cores/core.svc.1.100")
        #expect(!run.logs.contains("has neither listened"))
    }

    /// `auto` learns ping from the first pong, and holds every later instance to it.
    @Test func autoHoldsAServiceToPingsOnceItAnswersOne() throws {
        let fake = FakeEffects()
        fake.behaviours = [.exits(afterMs: 300, .exited(code: 1)), .neverListens, .healthy]
        let run = Run(fake, stopAtMs: 5000)
        #expect(run.logs.contains("pid 100 answers pings on /state/run/svc/control.sock: pings are its heartbeat from now on (heartbeat auto)"))
        // The replacement never listens: as with --heartbeat ping, that is a start timeout with a capture.
        #expect(run.incidents.count == 2)
        let second = try #require(run.incidents.last)
        #expect(SupervisorLoopTests.isStartTimeout(second.cause, seconds: 2) && second.pid == 101 && second.capture?.path == "/state/cores/core.svc.2.101",
                "\(second.cause)")
    }

    /// `none`: exit-only on purpose — no ping, no warning, no incident while it runs; its death still is one.
    @Test func noneSupervisesTheExitOnlyWithoutAWarning() throws {
        let fake = FakeEffects()
        fake.behaviours = [.exits(afterMs: 2500, .exited(code: 2)), .neverListens]
        let run = Run(fake, config: testConfig { $0.heartbeat.mode = .none }, stopAtMs: 6000)
        #expect(!fake.calls.contains { $0.hasPrefix("ping ") || $0.hasPrefix("probe ") })
        #expect(!run.logs.contains("has neither listened") && !run.logs.contains("heartbeat missed"))
        #expect(run.incidents.count == 1)
        let incident = try #require(run.incidents.first)
        #expect(incident.cause == .exited(code: 2) && incident.outcome == .recovered && incident.newPid == 101)
        // The replacement is ready at the end of its start window (2000 ms after its spawn), which closes the incident.
        #expect(incident.readyAt.map { $0.timeIntervalSince(incident.restartedAt!) } == 2.0)
    }

    /// A master idle in epoll_wait whose workers are stopped: the workers decide the verdict, the incident lists
    /// every process, the main core comes first and the stopped workers' cores follow within the budget; then
    /// the whole instance is killed and restarted.
    @Test func stoppedWorkersBehindAnIdleMasterAreCapturedAndNamed() throws {
        let fake = FakeEffects()
        fake.behaviours = [.hangs(afterMs: 300), .healthy]
        fake.mainWaitsForEvents = true
        fake.workers = [.idle, .stopped, .stopped]
        let run = Run(fake, config: Self.httpProbe())
        expectInOrder(fake.actions, ["insert 1", "observe 100 none capture", "writeCore 100 native", "writeCore 1002 native",
                                     "writeCore 1003 native", "signal 100 SIGKILL", "killLeftovers 100", "spawn 101"])
        #expect(!fake.actions.contains("writeCore 1001 native"), "an idle worker is not captured")
        let incident = try #require(run.incidents.first)
        #expect(incident.progress?.kind == "stopped")
        #expect(incident.progress?.reason.hasPrefix("processes 1002 (worker), 1003 (worker) of the instance stopped") == true)
        #expect(incident.diagnosis.hasPrefix("stopped: "), "\(incident.diagnosis)")
        let processes = try #require(incident.processes)
        #expect(processes.map(\.pid) == [100, 1001, 1002, 1003])
        #expect(processes.map(\.diagnosis) == ["idle", "idle", "stopped", "stopped"])
        #expect(processes.map(\.main) == [true, false, false, false])
        #expect(processes.map(\.corePath) == ["/state/cores/core.svc.1.100", nil, "/state/cores/core.svc.1.1002", "/state/cores/core.svc.1.1003"])
        #expect(processes[2].state == "T" && processes[2].comm == "worker")
        #expect(incident.capture?.path == "/state/cores/core.svc.1.100", "the incident's core is the main process's")
        #expect(incident.notes.contains("4 processes: main 100 worker-0 idle; 1001 worker idle; 1002 worker stopped; 1003 worker stopped"))
        #expect(incident.notes.contains("core of pid 1002 (worker): /state/cores/core.svc.1.1002 (3000000 bytes, 40 ms)"))
    }

    @Test func coresOfOtherProcessesStopWhenTheBudgetIsSpent() throws {
        let fake = FakeEffects()
        fake.behaviours = [.hangs(afterMs: 300), .healthy]
        fake.workers = [.stuck, .stopped, .stopped]
        fake.coreDurationMs = 600
        let run = Run(fake, config: Self.httpProbe(), stopAtMs: 5000)
        let incident = try #require(run.incidents.first)
        // The main one (600 ms), then the deadlocked worker first (most stuck), then the budget is gone.
        #expect(fake.actions.filter { $0.hasPrefix("writeCore") } == ["writeCore 100 native first=100", "writeCore 1001 native"])
        #expect(incident.notes.contains("no core of pid 1002: the capture budget (1000 ms) is spent"))
        #expect(incident.notes.contains("no core of pid 1003: the capture budget (1000 ms) is spent"))
        #expect(incident.processes?.first { $0.pid == 1001 }?.corePath == "/state/cores/core.svc.1.1001")
        #expect(incident.progress?.kind == "stuck", "the main process itself is stuck in futex waits: its own verdict")
    }

    /// Retention deletes an incident's cores together: the main process's and its workers'.
    @Test func retentionRemovesTheWorkersCoresWithTheIncidents() throws {
        let fake = FakeEffects()
        fake.behaviours = [.hangs(afterMs: 300), .hangs(afterMs: 300), .healthy]
        fake.mainWaitsForEvents = true
        fake.workers = [.stopped]
        let run = Run(fake, config: Self.httpProbe { $0.retention.maxPerService = 1 }, stopAtMs: 5000)
        #expect(run.incidents.count >= 2)
        expectInOrder(fake.actions, ["writeCore 100 native", "writeCore 1001 native", "writeCore 101 native", "writeCore 1011 native",
                                     "scanCores", "remove /state/cores/core.svc.1.100", "remove /state/cores/core.svc.1.1001", "coreRemoved 1"])
        #expect(fake.files["/state/cores/core.svc.1.1001"] == nil && fake.files["/state/cores/core.svc.2.1011"] != nil)
    }

    /// A starved worker behind an idle master is starved, not stuck: the deadline is extended as for one process.
    @Test func aStarvedWorkerExtendsTheDeadline() throws {
        let fake = FakeEffects()
        fake.behaviours = [.hangs(afterMs: 300), .healthy]
        fake.mainWaitsForEvents = true
        fake.workers = [.starved]
        let run = Run(fake, config: Self.httpProbe(), stopAtMs: 4000)
        let incident = try #require(run.incidents.first)
        #expect(incident.progress?.kind == "starved" && incident.extendedMs == 1000)
        #expect(incident.notes.contains { $0.hasPrefix("deadline extended by 250 ms (250 ms in all): starved, not stuck: process 1001 (worker) of the instance starved") })
        #expect(incident.processes?.map(\.diagnosis) == ["idle", "starved"])
    }
}
