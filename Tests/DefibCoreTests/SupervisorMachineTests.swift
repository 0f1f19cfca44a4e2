import DefibCore
import Testing

/// Drives `SupervisorMachine` with a manual clock through every phase × event pair.
@Suite struct SupervisorMachineTests {
    typealias Phase = SupervisorMachine.Phase

    static func settings(intensityMax: Int = 3) -> SupervisorMachine.Settings {
        .init(intervalMs: 100, deadlineMs: 500, missesBeforeHang: 2, startTimeoutMs: 2000, startRetryMs: 25,
              killRetryMs: 5000, stopTimeoutMs: 1000,
              backoff: Backoff(initialMs: 100, maxMs: 1000, multiplier: 2, resetAfterMs: 10_000),
              intensity: RestartIntensity(maxRestarts: intensityMax, windowMs: 10_000))
    }

    /// A machine in `phase`, with the clock at `t` (ms).
    struct Driven {
        var m: SupervisorMachine
        var t: Int64
        var token: UInt64 = 0
        var now: MonoTime { .milliseconds(t) }
    }

    static func drive(to phase: Phase, intensityMax: Int = 3) -> Driven {
        var d = Driven(m: SupervisorMachine(settings: settings(intensityMax: intensityMax)), t: 0)
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
        // Miss twice: ping at +100, deadline +600; second ping at +600, deadline +1100.
        d.t += 100; d.token = token(in: d.m.tick(at: d.now))!
        d.t += 500; d.token = token(in: d.m.tick(at: d.now))!
        d.t += 500; _ = d.m.tick(at: d.now)
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
        }
    }

    /// The expected phase after each event, per phase. `nil` = unchanged.
    static let table: [Phase: [Event: Phase]] = [
        .idle: [.start: .spawning, .shutdown: .stopped],
        .spawning: [.spawned: .starting, .spawnFailed: .backoff],
        .starting: [.tickFar: .capturing, .pong: .running, .childExited: .backoff, .shutdown: .shuttingDown],
        .running: [.childExited: .backoff, .shutdown: .shuttingDown],
        .capturing: [.captureFinished: .stopping],
        .stopping: [.childExited: .backoff],
        .backoff: [.tickFar: .spawning, .shutdown: .stopped],
        .gaveUp: [.shutdown: .stopped],
        .shuttingDown: [.childExited: .stopped],
        .stopped: [:],
    ]

    @Test(arguments: [Phase.idle, .spawning, .starting, .running, .capturing, .stopping, .backoff, .shuttingDown, .stopped])
    func everyEventInEveryPhase(phase: Phase) {
        for event in Event.allCases {
            var d = Self.drive(to: phase)
            #expect(d.m.phase == phase)
            _ = Self.apply(event, to: &d)
            let expected = Self.table[phase]?[event] ?? phase
            #expect(d.m.phase == expected, "\(phase) × \(event): got \(d.m.phase), expected \(expected)")
        }
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
            (.idle, .spawned), (.idle, .pong), (.idle, .childExited), (.idle, .captureFinished), (.idle, .tickFar),
            (.spawning, .start), (.spawning, .pong), (.spawning, .captureFinished), (.spawning, .tickFar),
            (.starting, .start), (.starting, .stalePong), (.starting, .captureFinished), (.starting, .spawned),
            (.running, .start), (.running, .stalePong), (.running, .captureFinished), (.running, .spawned),
            (.capturing, .start), (.capturing, .pong), (.capturing, .tickFar), (.capturing, .shutdown),
            (.stopping, .start), (.stopping, .pong), (.stopping, .captureFinished), (.stopping, .shutdown),
            (.backoff, .start), (.backoff, .pong), (.backoff, .childExited), (.backoff, .captureFinished),
            (.stopped, .start), (.stopped, .tickFar), (.stopped, .shutdown), (.stopped, .childExited),
        ]
        for (phase, event) in quiet {
            var d = Self.drive(to: phase)
            #expect(Self.apply(event, to: &d) == [], "\(phase) × \(event)")
        }
    }

    @Test func hangIsRecordedBeforeCaptureThenKilledRestartedAndClosed() {
        var d = Self.drive(to: .running)
        d.t += 100
        let ping = Self.token(in: d.m.tick(at: d.now))!
        d.t += 499
        #expect(d.m.tick(at: d.now) == [], "one ms before the deadline nothing happens")
        d.t += 1
        let afterFirstMiss = d.m.tick(at: d.now)
        #expect(d.m.misses == 1)
        #expect(Self.token(in: afterFirstMiss) == ping + 1, "a miss sends the next ping at once")
        d.t += 500
        let hang = d.m.tick(at: d.now)
        #expect(hang == [.openIncident(.missedHeartbeat(misses: 2, msSinceLastPong: 1100, lastError: "no reply within 500 ms")),
                         .captureEvidence(pid: 100)])
        #expect(d.m.captureFinished(at: d.now) == [.kill(pid: 100)])
        #expect(d.m.childExited(.signaled(signal: 9, coreDumped: false), at: d.now) == [.scheduleRestart(delayMs: 100)])
        #expect(d.m.nextWakeup == d.now + 100)
        d.t += 100
        #expect(d.m.tick(at: d.now) == [.spawn])
        let restarted = d.m.spawned(pid: 101, at: d.now)
        #expect(restarted.first == .incidentRestarted(newPid: 101))
        let t = Self.token(in: restarted)!
        #expect(d.m.pongReceived(token: t, at: d.now) == [.instanceReady(pid: 101), .closeIncident(.recovered)])
        #expect(!d.m.incidentOpen)
    }

    @Test func pongResetsMisses() {
        var d = Self.drive(to: .running)
        d.t += 100; _ = d.m.tick(at: d.now)
        d.t += 500; let next = Self.token(in: d.m.tick(at: d.now))!
        #expect(d.m.misses == 1)
        _ = d.m.pongReceived(token: next, at: d.now)
        #expect(d.m.misses == 0)
        #expect(d.m.nextWakeup == d.now + 100)
    }

    @Test func badReplyCountsAsMiss() {
        var d = Self.drive(to: .running)
        d.t += 100; let t = Self.token(in: d.m.tick(at: d.now))!
        _ = d.m.pingFailed(token: t, reason: "unexpected reply 'hello'", at: d.now)
        #expect(d.m.misses == 1)
        let t2 = d.m.pingInFlight!
        let hang = d.m.pingFailed(token: t2, reason: "unexpected reply 'hello'", at: d.now)
        #expect(hang.first == .openIncident(.missedHeartbeat(misses: 2, msSinceLastPong: 100, lastError: "unexpected reply 'hello'")))
    }

    @Test func refusedConnectionsWhileStartingAreRetriedUntilTheStartTimeout() {
        var d = Self.drive(to: .starting)
        _ = d.m.pingFailed(token: d.token, reason: "no control socket", at: d.now)
        #expect(d.m.phase == .starting)
        #expect(d.m.nextWakeup == d.now + 25)
        d.t += 25
        #expect(Self.token(in: d.m.tick(at: d.now)) != nil)
        d.t = 2000
        let timeout = d.m.tick(at: d.now)
        #expect(timeout == [.openIncident(.startTimeout(ms: 2000, lastError: "no control socket")), .captureEvidence(pid: 100)])
    }

    @Test func crashOpensIncidentWithoutCaptureAndRestarts() {
        var d = Self.drive(to: .running)
        let a = d.m.childExited(.signaled(signal: 11, coreDumped: true), at: d.now)
        #expect(a == [.openIncident(.died(.signaled(signal: 11, coreDumped: true))), .scheduleRestart(delayMs: 100)])
    }

    @Test func exitDuringCaptureSkipsTheKill() {
        var d = Self.drive(to: .capturing)
        let note = d.m.childExited(.exited(code: 1), at: d.now)
        #expect(note.count == 1)
        #expect(d.m.captureFinished(at: d.now) == [.scheduleRestart(delayMs: 100)])
    }

    @Test func unkillableChildIsKilledAgainAndNeverDuplicated() {
        var d = Self.drive(to: .stopping)
        d.t += 5000
        let again = d.m.tick(at: d.now)
        #expect(again.last == .kill(pid: 100))
        #expect(d.m.phase == .stopping, "no new instance while the old one lives")
        #expect(!again.contains(.spawn))
    }

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
                d.t += Int64(delay)
                #expect(d.m.tick(at: d.now) == [.spawn])
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
        d.t += 1000
        #expect(d.m.tick(at: d.now) == [.kill(pid: 100)])
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

    @Test func spawnFailureOpensOneIncidentAndRetries() {
        var d = Self.drive(to: .spawning)
        let a = d.m.spawnFailed(message: "execve /nope: No such file or directory", at: d.now)
        #expect(a == [.openIncident(.spawnFailed(message: "execve /nope: No such file or directory")), .scheduleRestart(delayMs: 100)])
        d.t += 100
        _ = d.m.tick(at: d.now)
        let again = d.m.spawnFailed(message: "again", at: d.now)
        #expect(again.first == .noteIncident("restart failed: again"))
    }

    @Test func diagnosisRecognisesTheCorruptedWord() {
        #expect(Diagnosis.isCorrupted(0xFFFF_FFFF_FFFF_FFFE))
        #expect(Diagnosis.isCorrupted(0xFFFF_FFFF_FFFF_FFFF))
        #expect(!Diagnosis.isCorrupted(0x1A))
        #expect(!Diagnosis.isCorrupted(0))
        #expect(Diagnosis.fromLocks([("catalog", "0xfffffffffffffffe")])?.hasPrefix("corrupted-lock-word: ") == true)
        #expect(Diagnosis.fromLocks([("catalog", "0x0000000000000010")]) == nil)
    }
}
