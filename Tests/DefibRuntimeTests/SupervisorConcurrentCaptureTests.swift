import DefibCore
import Foundation
import Testing

/// Restart while the core is written, through the real loop and fake effects: with a native capture and the
/// listening socket passed by defib, the hung instance is frozen, the replacement spawned, the core written by a
/// writer thread while the loop serves the new instance, then the frozen one killed; the fallbacks keep today's
/// order (core, kill, restart) and say why. Timings as in `SupervisorProofTests` (hang declared on proof at 448 ms).
@Suite struct SupervisorConcurrentCaptureTests {
    static func config(_ change: (inout SupervisorConfig) -> Void = { _ in }) -> SupervisorConfig {
        SupervisorProofTests.proofConfig {
            $0.sockets = [SocketSpec(name: "http", host: "127.0.0.1", port: 8080)]
            change(&$0)
        }
    }

    static func fake() -> FakeEffects { SupervisorProofTests.fake(word: 0xFFFF_FFFF_FFFF_FFFE) }

    @Test func freezeThenSpawnThenWriteThenKill() throws {
        let fake = Self.fake()
        fake.frozenCoreDurationMs = 300
        let run = Run(fake, config: Self.config())
        let incident = try #require(run.incidents.first)
        // The order: the replacement is spawned (and answers) before the frozen instance is killed.
        expectInOrder(fake.actions, ["insert 1", "observe 100 none capture", "freeze 100 first=100", "writeFrozenCore background", "spawn 101",
                                     "hurryFrozenCore", "observe 101 none identity", "signal 100 SIGKILL"])
        #expect(fake.actions.filter { $0 == "hurryFrozenCore" }.count == 1, "the writer yields the CPU until the replacement is ready, once")
        #expect(!fake.actions.contains("killLeftovers 100"), "the frozen instance's end is no instance's end")
        #expect(incident.captureOrder == .restartWhileWriting)
        #expect(incident.notes.contains("capture order: the replacement starts while the core is written from the frozen process (3 threads stopped in 0.3 ms)"))
        // The timeline: detected → replacement started → ready, all before the core is done and the kill.
        let detected = incident.detectedAt
        let restarted = try #require(incident.restartedAt), ready = try #require(incident.readyAt)
        let done = try #require(incident.captureDoneAt), killed = try #require(incident.killedAt)
        #expect(restarted < done && ready < done && done == killed, "\(restarted) \(ready) \(done) \(killed)")
        #expect(restarted.timeIntervalSince(detected) < 0.01, "the restart waits neither for the core nor for a backoff")
        #expect(abs(done.timeIntervalSince(restarted) - 0.3) < 0.01, "the core took the writer 300 ms, the loop went on")
        #expect(incident.capture?.path == "/state/cores/core.svc.1.100" && incident.outcome == .recovered)
        // The after-close evidence waited for the core: gdb ran on it after the kill.
        expectInOrder(fake.actions, ["signal 100 SIGKILL", "startStacks /state/cores/core.svc.1.100"])
        #expect(incident.stacks == fake.stacksText)
        #expect(run.logs.contains("killing the frozen instance pid 100 (SIGKILL), its core written"))
        // The closing entry waits for the core, so that it names it (CORE_PATH in the journal).
        let closing = try #require(run.logs.lines.first { $0.contains("incident 1 closed: recovered") })
        #expect(closing.contains("core_path=/state/cores/core.svc.1.100"), "\(closing)")
        let lines = run.logs.lines
        let kill = try #require(lines.firstIndex { $0.contains("killing the frozen instance pid 100") })
        let closed = try #require(lines.firstIndex { $0.contains("incident 1 closed: recovered") })
        #expect(kill < closed)
    }

    @Test func theLoopServesTheReplacementWhileTheCoreIsWritten() throws {
        let fake = Self.fake()
        fake.frozenCoreDurationMs = 900
        let run = Run(fake, config: Self.config())
        // Pings went to the replacement and were answered while the writer worked: it is ready, no second incident.
        let incident = try #require(run.incidents.first)
        #expect(run.incidents.count == 1)
        let ready = try #require(incident.readyAt), done = try #require(incident.captureDoneAt)
        #expect(done.timeIntervalSince(ready) > 0.8)
        let between = fake.calls.drop { $0 != "spawn 101" }.prefix { $0 != "signal 100 SIGKILL" }
        #expect(between.filter { $0.hasPrefix("ping ") }.count >= 5, "the heartbeat went on: \(Array(between))")
    }

    @Test func aWriterThatNeverEndsIsKilledAtTheBudgetAndASecond() throws {
        let fake = Self.fake()
        fake.frozenCoreNeverEnds = true
        let run = Run(fake, config: Self.config(), stopAtMs: 4000)
        let incident = try #require(run.incidents.first)
        let killed = try #require(incident.killedAt)
        // The capture began at 448 ms; its budget is 1000 ms: killed at 2448 ms.
        #expect(killed == fake.wallBase.addingTimeInterval(2.448), "\(killed.timeIntervalSince(fake.wallBase))")
        #expect(incident.notes.contains("the frozen instance pid 100 outlived the capture budget (1000 ms) and a second: killed, core or not"))
    }

    @Test func notEnoughMemoryWritesTheCoreFirstAndSaysWhy() throws {
        let fake = Self.fake()
        fake.rssBytes = 512 << 20
        fake.memAvailableBytes = 600 << 20
        let run = Run(fake, config: Self.config())
        let incident = try #require(run.incidents.first)
        expectInOrder(fake.actions, ["freeze 100 first=100", "writeFrozenCore now", "signal 100 SIGKILL", "killLeftovers 100", "spawn 101"])
        #expect(incident.captureOrder == .writeThenRestart)
        #expect(incident.notes.contains("capture order: core first, then the kill and the restart (MemAvailable 600 MiB is below the hung process's RSS 512 MiB plus a 128 MiB margin)"))
        let restarted = try #require(incident.restartedAt), done = try #require(incident.captureDoneAt)
        #expect(done < restarted)
    }

    @Test func withoutPassedSocketsOrANativeCaptureTodaysOrderStands() throws {
        for change: (inout SupervisorConfig) -> Void in [{ $0.sockets = [] }, { $0.capture.method = .gcore }] {
            let fake = Self.fake()
            let run = Run(fake, config: Self.config(change))
            let incident = try #require(run.incidents.first)
            #expect(!fake.actions.contains { $0.hasPrefix("freeze") })
            expectInOrder(fake.actions, ["writeCore 100", "signal 100 SIGKILL", "spawn 101"].map { prefix in fake.actions.first { $0.hasPrefix(prefix) } ?? prefix })
            #expect(incident.captureOrder == nil)
        }
    }

    @Test func aFreezeThatFailsIsRecordedAndTheKillAndRestartGoAhead() throws {
        let fake = Self.fake()
        fake.freezeFailure = "ptrace(PTRACE_SEIZE, 100): Operation not permitted"
        let run = Run(fake, config: Self.config())
        let incident = try #require(run.incidents.first)
        #expect(incident.capture?.error == "ptrace(PTRACE_SEIZE, 100): Operation not permitted")
        expectInOrder(fake.actions, ["freeze 100 first=100", "signal 100 SIGKILL", "spawn 101"])
        #expect(incident.outcome == .recovered)
    }
}

extension SupervisorConcurrentCaptureTests {
    /// A writer that reports only after the frozen instance was killed (overdue): its cut-short core still lands in
    /// the incident, and the stacks follow it.
    @Test func aCoreThatComesAfterAnOverdueKillIsStillRecorded() throws {
        let fake = Self.fake()
        fake.frozenCoreDurationMs = 2500   // past the budget (1000 ms) and a second
        let run = Run(fake, config: Self.config(), stopAtMs: 6000)
        let incident = try #require(run.incidents.first)
        #expect(incident.killedAt == fake.wallBase.addingTimeInterval(2.448))
        #expect(incident.notes.contains { $0.hasPrefix("the frozen instance pid 100 outlived the capture budget") })
        #expect(incident.captureDoneAt == fake.wallBase.addingTimeInterval(2.948), "recorded when the writer reported")
        #expect(incident.capture?.path == "/state/cores/core.svc.1.100")
        expectInOrder(fake.actions, ["signal 100 SIGKILL", "startStacks /state/cores/core.svc.1.100"])
    }

    /// The replacement hangs while its predecessor is still frozen: one frozen instance at a time, so its core is
    /// written first (today's order).
    @Test func aSecondHangWhileACoreIsWrittenKeepsTodaysOrder() throws {
        let fake = SupervisorProofTests.fake(word: 0xFFFF_FFFF_FFFF_FFFE, behaviours: [.hangs(afterMs: 300), .hangs(afterMs: 10), .healthy])
        fake.frozenCoreDurationMs = 1400
        let run = Run(fake, config: Self.config(), stopAtMs: 5000)
        #expect(run.incidents.count >= 2, "\(run.incidents.map(\.notes))")
        #expect(run.incidents.first?.captureOrder == .restartWhileWriting)
        let second = try #require(run.incidents.dropFirst().first)
        #expect(fake.actions.filter { $0.hasPrefix("freeze") }.count == 1, "\(fake.actions)")
        #expect(second.capture?.path != nil && second.captureOrder == nil)
    }
}
