import DefibCore
import Testing

/// Drives `SupervisorMachine` with a manual clock through every phase × event pair and through each
/// escalation stage.
///
/// The settings used throughout: interval 100, deadline 500, at least 2 misses before a hang, hence
/// (EscalationDefaults) a miss after 125 ms, suspect at 250 ms of silence, starvation extensions of
/// 250 ms up to 1000 ms in all.
@Suite struct SupervisorMachineTests {
    typealias Phase = SupervisorMachine.Phase

    static func settings(intensityMax: Int = 3, killJitterMs: Int = 0) -> SupervisorMachine.Settings {
        .init(intervalMs: 100, deadlineMs: 500, missesBeforeHang: 2, killJitterMs: killJitterMs, startTimeoutMs: 2000,
              startRetryMs: 25, killRetryMs: 5000, stopTimeoutMs: 1000,
              backoff: Backoff(initialMs: 100, maxMs: 1000, multiplier: 2, resetAfterMs: 10_000),
              intensity: RestartIntensity(maxRestarts: intensityMax, windowMs: 10_000))
    }

    /// A machine in some phase, with the clock at `t` (ms).
    struct Driven {
        var m: SupervisorMachine
        var t: Int64
        var token: UInt64 = 0
        var now: MonoTime { .milliseconds(t) }
        mutating func tick(to ms: Int64) -> [SupervisorAction] { t = ms; return m.tick(at: now) }
    }

    static let stuck = ProgressVerdict.stuck("no CPU progress and every thread asleep")
    static let starved = ProgressVerdict.starved("run-queue wait +600 ms in 1000 ms")

    static func drive(to phase: Phase, intensityMax: Int = 3, killJitterMs: Int = 0) -> Driven {
        var d = Driven(m: SupervisorMachine(settings: settings(intensityMax: intensityMax, killJitterMs: killJitterMs)), t: 0)
        if phase == .idle { return d }
        _ = d.m.start(at: d.now)
        if phase == .spawning { return d }
        let a = d.m.spawned(pid: 100, at: d.now)
        d.token = token(in: a)!
        if phase == .starting { return d }
        _ = d.m.pongReceived(token: d.token, at: d.now)
        if phase == .running { return d }
        if phase == .shuttingDown { _ = d.m.shutdown(at: d.now); return d }
        if phase == .stopped { _ = d.m.shutdown(at: d.now); _ = d.m.childExited(.signaled(signal: 15, coreDumped: false), at: d.now); return d }
        // Silence from t=100 (one ping, still awaited): misses at 225, 350 (suspect), 475, 600 (hang deadline: judge).
        for ms: Int64 in [100, 225, 350] { if let t = token(in: d.tick(to: ms)) { d.token = t } }
        if phase == .suspect { return d }
        _ = d.tick(to: 475); _ = d.tick(to: 600)
        _ = d.m.progressJudged(stuck, at: d.now)
        if phase == .capturing { return d }
        _ = d.m.captureFinished(at: d.now)
        if phase == .stopping { return d }
        _ = d.m.childExited(.signaled(signal: 9, coreDumped: false), at: d.now)
        if phase == .backoff || phase == .gaveUp { return d }
        fatalError("no route to \(phase)")
    }

    static func token(in actions: [SupervisorAction]) -> UInt64? {
        for a in actions { if case let .sendPing(t) = a { return t } }
        return nil
    }

    enum Event: String, CaseIterable, Sendable {
        case start, spawned, spawnFailed, tickNow, tickFar, pong, stalePong, pingFailed, childExited, captureFinished, shutdown
        case judgedStuck, judgedStarved
    }

    static func apply(_ e: Event, to d: inout Driven) -> [SupervisorAction] {
        switch e {
        case .start: return d.m.start(at: d.now)
        case .spawned: return d.m.spawned(pid: 200, at: d.now)
        case .spawnFailed: return d.m.spawnFailed(message: "execve: No such file", at: d.now)
        case .tickNow: return d.m.tick(at: d.now)
        case .tickFar: d.t += 60_000; return d.m.tick(at: d.now)
        case .pong: return d.m.pongReceived(token: d.m.pingInFlight ?? d.token, at: d.now)
        case .stalePong: return d.m.pongReceived(token: 9999, at: d.now)
        case .pingFailed: return d.m.pingFailed(token: d.m.pingInFlight ?? d.token, reason: "connection refused", at: d.now)
        case .childExited: return d.m.childExited(.exited(code: 3), at: d.now)
        case .captureFinished: return d.m.captureFinished(at: d.now)
        case .shutdown: return d.m.shutdown(at: d.now)
        case .judgedStuck: return d.m.progressJudged(stuck, at: d.now)
        case .judgedStarved: return d.m.progressJudged(starved, at: d.now)
        }
    }

    /// The expected phase and actions after each event, per phase. Missing = unchanged and no action.
    static let table: [Phase: [Event: (Phase, [SupervisorAction])]] = [
        .idle: [.start: (.spawning, [.spawn]), .shutdown: (.stopped, [.exit(code: 0)])],
        .spawning: [.spawned: (.starting, [.sendPing(token: 1)]),
                    .spawnFailed: (.backoff, [.openIncident(.spawnFailed(message: "execve: No such file")), .scheduleRestart(delayMs: 100)])],
        .starting: [.tickFar: (.capturing, [.openIncident(.startTimeout(ms: 60_000, lastError: nil)), .captureEvidence(pid: 100)]),
                    .pong: (.running, [.instanceReady(pid: 100)]),
                    .childExited: (.backoff, [.openIncident(.died(.exited(code: 3))), .scheduleRestart(delayMs: 100)]),
                    .shutdown: (.shuttingDown, [.terminate(pid: 100)])],
        .running: [.tickFar: (.running, [.sendPing(token: 2)]),
                   .childExited: (.backoff, [.openIncident(.died(.exited(code: 3))), .scheduleRestart(delayMs: 100)]),
                   .shutdown: (.shuttingDown, [.terminate(pid: 100)])],
        .suspect: [.tickFar: (.suspect, [.heartbeatMissed(misses: 3, silenceMs: 60_250, reason: "no reply within 60250 ms"), .judgeProgress(pid: 100)]),
                   .pong: (.running, [.heartbeatRecovered(silenceMs: 250, misses: 2, wasSuspect: true)]),
                   .pingFailed: (.suspect, [.heartbeatMissed(misses: 3, silenceMs: 250, reason: "connection refused")]),
                   .childExited: (.backoff, [.openIncident(.died(.exited(code: 3))), .scheduleRestart(delayMs: 100)]),
                   .shutdown: (.shuttingDown, [.terminate(pid: 100)])],
        .capturing: [.childExited: (.capturing, [.noteIncident("the process ended during evidence capture: exited with code 3")]),
                     .captureFinished: (.stopping, [.kill(pid: 100)])],
        .stopping: [.tickFar: (.stopping, [.noteIncident("pid 100 still alive 5000 ms after SIGKILL; sending it again"), .kill(pid: 100)]),
                    .childExited: (.backoff, [.scheduleRestart(delayMs: 100)])],
        .backoff: [.tickFar: (.spawning, [.spawn]), .shutdown: (.stopped, [.closeIncident(.shutdown), .exit(code: 0)])],
        .gaveUp: [.shutdown: (.stopped, [.exit(code: 0)])],
        // Driven there by one shutdown already: a second one escalates to SIGKILL.
        .shuttingDown: [.tickFar: (.shuttingDown, [.kill(pid: 100)]), .shutdown: (.shuttingDown, [.kill(pid: 100)]),
                        .childExited: (.stopped, [.exit(code: 0)])],
        .stopped: [:],
    ]

    @Test(arguments: Phase.allCases)
    func everyEventInEveryPhase(phase: Phase) {
        for event in Event.allCases {
            var d = phase == .gaveUp ? Self.drive(to: .backoff, intensityMax: 0) : Self.drive(to: phase)
            #expect(d.m.phase == phase)
            let actions = Self.apply(event, to: &d)
            let (expected, expectedActions) = Self.table[phase]?[event] ?? (phase, [])
            #expect(d.m.phase == expected, "\(phase) × \(event): got \(d.m.phase), expected \(expected)")
            #expect(actions == expectedActions, "\(phase) × \(event): got \(actions), expected \(expectedActions)")
        }
    }

    @Test func everyPhaseIsCoveredByTheTable() {
        #expect(Set(Self.table.keys) == Set(Phase.allCases))
    }

    @Test func gaveUpIgnoresEverythingButShutdown() {
        var d = Self.drive(to: .backoff, intensityMax: 0)
        #expect(d.m.phase == .gaveUp)
        for event in Event.allCases where event != .shutdown {
            var copy = d
            #expect(Self.apply(event, to: &copy) == [], "\(event)")
            #expect(copy.m.phase == .gaveUp)
        }
        #expect(Self.apply(.shutdown, to: &d) == [.exit(code: 0)])
    }

    @Test func invalidEventsReturnNoActions() {
        let quiet: [(Phase, Event)] = [
            (.idle, .spawned), (.idle, .pong), (.idle, .childExited), (.idle, .captureFinished), (.idle, .tickFar), (.idle, .judgedStuck),
            (.spawning, .start), (.spawning, .pong), (.spawning, .captureFinished), (.spawning, .tickFar), (.spawning, .judgedStarved),
            (.starting, .start), (.starting, .stalePong), (.starting, .captureFinished), (.starting, .spawned), (.starting, .judgedStuck),
            (.running, .start), (.running, .stalePong), (.running, .captureFinished), (.running, .spawned), (.running, .judgedStuck),
            (.running, .judgedStarved),
            (.suspect, .start), (.suspect, .stalePong), (.suspect, .captureFinished), (.suspect, .judgedStuck), (.suspect, .tickNow),
            (.capturing, .start), (.capturing, .pong), (.capturing, .tickFar), (.capturing, .shutdown), (.capturing, .judgedStuck),
            (.stopping, .start), (.stopping, .pong), (.stopping, .captureFinished), (.stopping, .shutdown), (.stopping, .judgedStarved),
            (.backoff, .start), (.backoff, .pong), (.backoff, .childExited), (.backoff, .captureFinished), (.backoff, .judgedStuck),
            (.stopped, .start), (.stopped, .tickFar), (.stopped, .shutdown), (.stopped, .childExited),
        ]
        for (phase, event) in quiet {
            var d = Self.drive(to: phase)
            #expect(Self.apply(event, to: &d) == [], "\(phase) × \(event)")
        }
    }

    // MARK: the stages

    @Test func stagesMissThenSuspectThenHangAreRecordedBeforeCaptureThenKilledRestartedAndClosed() {
        var d = Self.drive(to: .running)
        let ping = Self.token(in: d.tick(to: 100))!
        #expect(d.tick(to: 224) == [], "one ms before the miss nothing happens")
        // Stage miss: counted, a baseline sample; the same ping keeps waiting (no new connection).
        #expect(d.tick(to: 225) == [.heartbeatMissed(misses: 1, silenceMs: 125, reason: "no reply within 125 ms"),
                                    .sampleProgress(pid: 100)])
        #expect(d.m.pingInFlight == ping)
        #expect(d.m.phase == .running)
        // Stage suspect at 250 ms of silence: soft evidence, no kill.
        #expect(d.tick(to: 350) == [.heartbeatMissed(misses: 2, silenceMs: 250, reason: "no reply within 250 ms"),
                                    .collectSoftEvidence(pid: 100, silenceMs: 250)])
        #expect(d.m.phase == .suspect)
        _ = d.tick(to: 475)
        // Stage hang at 500 ms: judge progress first.
        let judge = d.tick(to: 600)
        #expect(judge.last == .judgeProgress(pid: 100))
        #expect(Self.token(in: judge) == nil, "no new ping while the verdict is pending")
        #expect(d.m.nextWakeup == nil, "the runtime answers the judgement at once")
        let hang = d.m.progressJudged(Self.stuck, at: d.now)
        #expect(hang == [.openIncident(.missedHeartbeat(misses: 4, msSinceLastPong: 600, lastError: "no reply within 500 ms",
                                                        silenceMs: 500, extendedMs: 0, verdict: Self.stuck)),
                         .captureEvidence(pid: 100)])
        #expect(d.m.captureFinished(at: d.now) == [.kill(pid: 100)])
        #expect(d.m.childExited(.signaled(signal: 9, coreDumped: false), at: d.now) == [.scheduleRestart(delayMs: 100)])
        #expect(d.m.nextWakeup == d.now + 100)
        #expect(d.tick(to: d.t + 100) == [.spawn])
        let restarted = d.m.spawned(pid: 101, at: d.now)
        #expect(restarted.first == .incidentRestarted(newPid: 101))
        let t = Self.token(in: restarted)!
        #expect(d.m.pongReceived(token: t, at: d.now) == [.instanceReady(pid: 101), .closeIncident(.recovered)])
        #expect(!d.m.incidentOpen)
    }

    @Test func aStarvedProcessGetsBoundedExtensionsAndIsStillDeclaredHung() {
        var d = Self.drive(to: .running)
        _ = d.tick(to: 100)
        var extensions: [SupervisorAction] = []
        var t: Int64 = 100
        var hang: [SupervisorAction] = []
        while hang.isEmpty && t < 10_000 {
            t += 25
            let actions = d.tick(to: t)
            guard actions.contains(.judgeProgress(pid: 100)) else { continue }
            let answer = d.m.progressJudged(Self.starved, at: d.now)
            if answer.contains(where: { if case .openIncident = $0 { true } else { false } }) { hang = answer } else { extensions += answer.filter { if case .deadlineExtended = $0 { true } else { false } } }
        }
        #expect(extensions == [.deadlineExtended(byMs: 250, totalMs: 250, reason: Self.starved.reason),
                               .deadlineExtended(byMs: 250, totalMs: 500, reason: Self.starved.reason),
                               .deadlineExtended(byMs: 250, totalMs: 750, reason: Self.starved.reason),
                               .deadlineExtended(byMs: 250, totalMs: 1000, reason: Self.starved.reason)])
        // Declared hung at the deadline plus the maximum extension, never later.
        #expect(t == 100 + 500 + 1000)
        guard case let .openIncident(.missedHeartbeat(_, _, _, silence, extended, verdict))? = hang.first else {
            Issue.record("no incident: \(hang)"); return
        }
        #expect(silence == 1500 && extended == 1000 && verdict == Self.starved)
    }

    @Test func aStuckProcessIsNeverExtended() {
        var d = Self.drive(to: .running)
        for ms: Int64 in [100, 225, 350, 475] { _ = d.tick(to: ms) }
        #expect(d.tick(to: 600).last == .judgeProgress(pid: 100))
        #expect(d.m.progressJudged(Self.stuck, at: d.now).first.map { if case .openIncident = $0 { true } else { false } } == true)
        for verdict in [ProgressVerdict.busy("CPU +990 ms in 1000 ms"), .stopped("1 of 1 threads stopped"), .unclear("?"), .gone] {
            var e = Self.drive(to: .running)
            for ms: Int64 in [100, 225, 350, 475, 600] { _ = e.tick(to: ms) }
            #expect(e.m.progressJudged(verdict, at: e.now).last == .captureEvidence(pid: 100), "\(verdict)")
        }
    }

    /// Starved at the first deadline (extended), stuck at the extended one: declared then, not extended again.
    @Test func aStarvedThenStuckProcessIsDeclaredAtTheExtendedDeadline() {
        var d = Self.drive(to: .running)
        for ms: Int64 in [100, 225, 350, 475] { _ = d.tick(to: ms) }
        #expect(d.tick(to: 600).last == .judgeProgress(pid: 100))
        #expect(d.m.progressJudged(Self.starved, at: d.now).first == .deadlineExtended(byMs: 250, totalMs: 250, reason: Self.starved.reason))
        #expect(d.m.phase == .suspect && d.m.nextWakeup == .milliseconds(725))
        #expect(!d.tick(to: 700).contains(.judgeProgress(pid: 100)), "the extended deadline has not passed")
        #expect(d.tick(to: 850).contains(.judgeProgress(pid: 100)))
        let hang = d.m.progressJudged(Self.stuck, at: d.now)
        guard case let .openIncident(.missedHeartbeat(_, _, _, silence, extended, verdict))? = hang.first else {
            Issue.record("no incident: \(hang)"); return
        }
        #expect(silence == 750 && extended == 250 && verdict == Self.stuck)
        #expect(hang.last == .captureEvidence(pid: 100) && d.m.phase == .capturing)
    }

    /// A replacement that hangs before it is ready closes the open incident and opens its own (its own core,
    /// locks and diagnosis, nothing overwritten); one that dies is noted in the same incident (one crash loop, one incident).
    @Test func aReplacementThatHangsGetsItsOwnIncidentOneThatDiesDoesNot() {
        var d = Self.drive(to: .backoff)
        #expect(d.m.incidentOpen)
        #expect(d.tick(to: d.t + 1000) == [.spawn])
        #expect(d.m.spawned(pid: 300, at: d.now).first == .incidentRestarted(newPid: 300))
        let hung = d.tick(to: d.t + 2000)
        #expect(hung.count == 4, "\(hung)")
        guard hung.count == 4, case .noteIncident = hung[0], case .openIncident(.startTimeout) = hung[2] else {
            Issue.record("\(hung)"); return
        }
        #expect(hung[1] == .closeIncident(.replacementFailed))
        #expect(hung[3] == .captureEvidence(pid: 300))
        #expect(d.m.incidentOpen && d.m.phase == .capturing)

        var e = Self.drive(to: .backoff)
        _ = e.tick(to: e.t + 1000)
        _ = e.m.spawned(pid: 300, at: e.now)
        let died = e.m.childExited(.exited(code: 1), at: e.now)
        #expect(died.first == .noteIncident("the replacement failed too: exited with code 1"))
        #expect(!died.contains { if case .openIncident = $0 { true } else { false } })
        #expect(!died.contains { if case .closeIncident = $0 { true } else { false } })
    }

    @Test func aLatePongAfterSuspectRecoversWithoutAKill() {
        var d = Self.drive(to: .suspect)
        let recovered = d.m.pongReceived(token: d.m.pingInFlight!, at: .milliseconds(400))
        #expect(recovered == [.heartbeatRecovered(silenceMs: 300, misses: 2, wasSuspect: true)])
        #expect(d.m.phase == .running && d.m.misses == 0 && !d.m.incidentOpen)
        #expect(d.m.nextWakeup == .milliseconds(500))
    }

    @Test func anExtensionIsForgottenOnceTheHeartbeatIsBack() {
        var d = Self.drive(to: .running)
        for ms: Int64 in [100, 225, 350, 475, 600] { _ = d.tick(to: ms) }
        _ = d.m.progressJudged(Self.starved, at: d.now)
        #expect(d.m.extendedMs == 250)
        _ = d.m.pongReceived(token: d.m.pingInFlight!, at: .milliseconds(610))
        #expect(d.m.extendedMs == 0 && d.m.phase == .running)
    }

    @Test func theMinimumMissCountHoldsTheHangBack() {
        var d = Driven(m: SupervisorMachine(settings: .init(intervalMs: 100, deadlineMs: 500, missesBeforeHang: 1, missMs: 2000,
                                                            startTimeoutMs: 2000, stopTimeoutMs: 1000,
                                                            backoff: Backoff(initialMs: 100, maxMs: 100, multiplier: 1, resetAfterMs: 1),
                                                            intensity: RestartIntensity(maxRestarts: 3, windowMs: 1000))), t: 0)
        _ = d.m.start(at: d.now)
        _ = d.m.pongReceived(token: Self.token(in: d.m.spawned(pid: 5, at: d.now))!, at: d.now)
        _ = d.tick(to: 100)
        // Silence passes the deadline at 600, but the single ping in flight is not missed until 2100.
        #expect(!d.tick(to: 700).contains(.judgeProgress(pid: 5)))
        #expect(d.tick(to: 2100).contains(.judgeProgress(pid: 5)))
    }

    @Test func pongResetsMisses() {
        var d = Self.drive(to: .running)
        let ping = Self.token(in: d.tick(to: 100))!
        _ = d.tick(to: 225)
        #expect(d.m.misses == 1)
        #expect(d.m.pongReceived(token: ping, at: d.now) == [.heartbeatRecovered(silenceMs: 125, misses: 1, wasSuspect: false)],
                "a late answer to the first ping ends the silence")
        #expect(d.m.misses == 0)
        #expect(d.m.nextWakeup == d.now + 100)
    }

    @Test func badRepliesAreMissesAndRetriedAfterAPause() {
        var d = Self.drive(to: .running)
        let t = Self.token(in: d.tick(to: 100))!
        let first = d.m.pingFailed(token: t, reason: "unexpected reply 'hello'", at: d.now)
        #expect(first == [.heartbeatMissed(misses: 1, silenceMs: 0, reason: "unexpected reply 'hello'"), .sampleProgress(pid: 100)])
        #expect(d.m.nextWakeup == d.now + 25, "a refused or wrong answer is retried after the retry pause, not in a tight loop")
        var now: Int64 = 100
        var hang: [SupervisorAction] = []
        while now < 2000 {
            now += 25
            let a = d.tick(to: now)
            if let t = Self.token(in: a) { _ = d.m.pingFailed(token: t, reason: "unexpected reply 'hello'", at: d.now) }
            if a.contains(.judgeProgress(pid: 100)) || d.m.nextWakeup == nil { hang = d.m.progressJudged(Self.stuck, at: d.now); break }
        }
        guard case let .openIncident(.missedHeartbeat(misses, _, error, silence, _, _))? = hang.first else { Issue.record("\(hang)"); return }
        #expect(misses >= 2 && error == "unexpected reply 'hello'" && silence >= 500 && silence < 550)
    }

    @Test func refusedConnectionsWhileStartingAreRetriedUntilTheStartTimeout() {
        var d = Self.drive(to: .starting)
        _ = d.m.pingFailed(token: d.token, reason: "no control socket", at: d.now)
        #expect(d.m.phase == .starting)
        #expect(d.m.nextWakeup == d.now + 25)
        #expect(Self.token(in: d.tick(to: 25)) != nil)
        let timeout = d.tick(to: 2000)
        #expect(timeout == [.openIncident(.startTimeout(ms: 2000, lastError: "no control socket")), .captureEvidence(pid: 100)])
    }

    @Test func crashOpensIncidentWithoutCaptureAndRestarts() {
        var d = Self.drive(to: .running)
        let a = d.m.childExited(.signaled(signal: 11, coreDumped: true), at: d.now)
        #expect(a == [.openIncident(.died(.signaled(signal: 11, coreDumped: true))), .scheduleRestart(delayMs: 100)])
        var s = Self.drive(to: .suspect)
        #expect(s.m.childExited(.exited(code: 1), at: s.now).first == .openIncident(.died(.exited(code: 1))))
    }

    @Test func exitDuringCaptureSkipsTheKill() {
        var d = Self.drive(to: .capturing)
        let note = d.m.childExited(.exited(code: 1), at: d.now)
        #expect(note.count == 1)
        #expect(d.m.captureFinished(at: d.now) == [.scheduleRestart(delayMs: 100)])
    }

    @Test func unkillableChildIsKilledAgainAndNeverDuplicated() {
        var d = Self.drive(to: .stopping)
        let again = d.tick(to: d.t + 5000)
        #expect(again.last == .kill(pid: 100))
        #expect(d.m.phase == .stopping, "no new instance while the old one lives")
        #expect(!again.contains(.spawn))
    }

    @Test func killJitterDelaysTheKillByTheDrawAndShutdownCutsItShort() {
        var d = Self.drive(to: .capturing, killJitterMs: 1000)
        #expect(d.m.captureFinished(at: d.now, jitterDraw: 0.25) == [.killDelayed(ms: 250, maxMs: 1000)])
        #expect(d.m.nextWakeup == d.now + 250)
        #expect(d.tick(to: d.t + 249) == [])
        #expect(d.tick(to: d.t + 1) == [.kill(pid: 100)])
        var e = Self.drive(to: .capturing, killJitterMs: 1000)
        _ = e.m.captureFinished(at: e.now, jitterDraw: 0.9)
        #expect(e.m.shutdown(at: e.now) == [.kill(pid: 100)])
        #expect(e.m.childExited(.signaled(signal: 9, coreDumped: false), at: e.now) == [.closeIncident(.shutdown), .exit(code: 0)])
        var f = Self.drive(to: .capturing, killJitterMs: 0)
        #expect(f.m.captureFinished(at: f.now, jitterDraw: 0.9) == [.kill(pid: 100)], "off by default")
    }

    // MARK: restart policy and shutdown

    @Test func backoffGrowsAndResetsAfterAHealthyRun() {
        var b = Backoff(initialMs: 100, maxMs: 1000, multiplier: 2, resetAfterMs: 10_000)
        #expect([b.take(), b.take(), b.take(), b.take(), b.take()] == [100, 200, 400, 800, 1000])
        b.instanceWasHealthy(forMs: 9_999)
        #expect(b.take() == 1000)
        b.instanceWasHealthy(forMs: 10_000)
        #expect(b.take() == 100)
    }

    @Test func intensityLimitGivesUpWithExitCode1() {
        var d = Self.drive(to: .running)
        var delays: [Int] = []
        for round in 0..<4 {
            let a = d.m.childExited(.exited(code: 2), at: d.now)
            if round < 3 {
                guard case let .scheduleRestart(delay)? = a.last else { Issue.record("round \(round): \(a)"); return }
                delays.append(delay)
                #expect(d.tick(to: d.t + Int64(delay)) == [.spawn])
                _ = d.m.spawned(pid: Int32(200 + round), at: d.now)
            } else {
                #expect(a.suffix(2) == [.closeIncident(.gaveUp), .exit(code: 1)])
                #expect(d.m.phase == .gaveUp)
            }
        }
        #expect(delays == [100, 200, 400])
    }

    @Test func intensityWindowForgetsOldRestarts() {
        var r = RestartIntensity(maxRestarts: 2, windowMs: 1000)
        r.record(at: .milliseconds(0)); r.record(at: .milliseconds(500))
        #expect(!r.allows(at: .milliseconds(999)))
        #expect(r.allows(at: .milliseconds(1000)))
    }

    @Test func shutdownTerminatesThenKillsAfterTheStopTimeout() {
        var d = Self.drive(to: .running)
        #expect(d.m.shutdown(at: d.now) == [.terminate(pid: 100)])
        #expect(d.tick(to: 1000) == [.kill(pid: 100)])
        #expect(d.m.childExited(.signaled(signal: 9, coreDumped: false), at: d.now) == [.exit(code: 0)])
    }

    @Test func shutdownDuringCaptureStopsInsteadOfRestarting() {
        var d = Self.drive(to: .capturing)
        #expect(d.m.shutdown(at: d.now) == [])
        #expect(d.m.captureFinished(at: d.now) == [.kill(pid: 100)])
        #expect(d.m.childExited(.signaled(signal: 9, coreDumped: false), at: d.now) == [.closeIncident(.shutdown), .exit(code: 0)])
    }

    @Test func shutdownWhileSpawningStopsTheNewInstance() {
        var d = Self.drive(to: .spawning)
        #expect(d.m.shutdown(at: d.now) == [])
        #expect(d.m.spawned(pid: 7, at: d.now) == [.terminate(pid: 7)])
        #expect(d.m.phase == .shuttingDown)
    }

    @Test func shutdownWhileAwaitingAVerdictStopsCleanly() {
        var d = Self.drive(to: .running)
        for ms: Int64 in [100, 225, 350, 475, 600] { _ = d.tick(to: ms) }
        #expect(d.m.shutdown(at: d.now) == [.terminate(pid: 100)])
        #expect(d.m.progressJudged(Self.stuck, at: d.now) == [], "a late verdict changes nothing")
    }

    @Test func spawnFailureOpensOneIncidentAndRetries() {
        var d = Self.drive(to: .spawning)
        let a = d.m.spawnFailed(message: "execve /nope: No such file or directory", at: d.now)
        #expect(a == [.openIncident(.spawnFailed(message: "execve /nope: No such file or directory")), .scheduleRestart(delayMs: 100)])
        _ = d.tick(to: 100)
        let again = d.m.spawnFailed(message: "again", at: d.now)
        #expect(again.first == .noteIncident("restart failed: again"))
    }

    @Test func escalationDefaultsFollowTheDeadline() {
        let s = EscalationDefaults.stages(deadlineMs: 1000, missesBeforeHang: 1)
        #expect(s.missMs == 250 && s.suspectMs == 500 && s.extensionStepMs == 500 && s.maxExtensionMs == 2000)
        #expect(EscalationDefaults.stages(deadlineMs: 1000, missesBeforeHang: 8).missMs == 125)
    }
}
