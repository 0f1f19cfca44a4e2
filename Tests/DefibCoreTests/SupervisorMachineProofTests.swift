import DefibCore
import Testing

/// The machine's side of acting on proof (a `seekProof` at every miss, `hangProven` declaring the hang before the
/// deadline), and the first restart after a hang skipping the backoff. Same settings as `SupervisorMachineTests`
/// (interval 100, deadline 500, misses at 125 ms of silence), with the two switches on.
@Suite struct SupervisorMachineProofTests {
    typealias D = SupervisorMachineTests.Driven

    static func settings(actOnProof: Bool = true, immediate: Bool = true) -> SupervisorMachine.Settings {
        var s = SupervisorMachineTests.settings()
        s.actOnProof = actOnProof
        s.immediateRestartAfterHang = immediate
        return s
    }

    static let proof = HangProof(kind: .corruptedLockWord, sentence: "lock 'catalog' word 0xfffffffffffffffe")

    /// Running, one ping out at t=100 and unanswered.
    static func running(_ settings: SupervisorMachine.Settings = settings()) -> D {
        var d = D(m: SupervisorMachine(settings: settings), t: 0)
        _ = d.m.start(at: d.now)
        d.token = SupervisorMachineTests.token(in: d.m.spawned(pid: 100, at: d.now))!
        _ = d.m.pongReceived(token: d.token, at: d.now)
        _ = d.tick(to: 100)
        return d
    }

    @Test func everyMissSeeksProofOnlyWhenAskedTo() {
        var d = Self.running()
        let first = d.tick(to: 225)
        #expect(first.contains(.sampleProgress(pid: 100)) && first.last == .seekProof(pid: 100), "\(first)")
        let second = d.tick(to: 350)
        #expect(second.contains(.seekProof(pid: 100)), "\(second)")
        var off = Self.running(Self.settings(actOnProof: false))
        #expect(!off.tick(to: 225).contains(.seekProof(pid: 100)))
    }

    @Test func proofAtAMissDeclaresTheHangBeforeTheDeadline() {
        var d = Self.running()
        _ = d.tick(to: 225)
        d.t = 245
        let a = d.m.hangProven(Self.proof, pid: 100, at: d.now)
        let cause = FailureCause.missedHeartbeat(misses: 1, msSinceLastPong: 245, lastError: "no reply within 125 ms", silenceMs: 145, extendedMs: 0,
                                                 verdict: .stuck("proven: \(Self.proof.line)"))
        #expect(a == [.hangDeclaredOnProof(Self.proof, silenceMs: 145), .openIncident(cause), .captureEvidence(pid: 100)])
        #expect(d.m.phase == .capturing)
        #expect(d.m.hangProven(Self.proof, pid: 100, at: d.now) == [], "once: the instance is being captured")
    }

    @Test func proofIsIgnoredWhenItNoLongerApplies() {
        // Switched off.
        var off = Self.running(Self.settings(actOnProof: false))
        _ = off.tick(to: 225)
        #expect(off.m.hangProven(Self.proof, pid: 100, at: off.now) == [])
        #expect(off.m.phase == .running)
        // Another instance's proof.
        var other = Self.running()
        _ = other.tick(to: 225)
        #expect(other.m.hangProven(Self.proof, pid: 99, at: other.now) == [])
        // The heartbeat came back first: no silence, nothing to declare.
        var back = Self.running()
        _ = back.tick(to: 225)
        _ = back.m.pongReceived(token: back.m.pingInFlight!, at: back.now)
        #expect(back.m.hangProven(Self.proof, pid: 100, at: back.now) == [])
        // The deadline came first: the verdict is awaited, the proof changes nothing.
        var late = Self.running()
        for ms: Int64 in [225, 350, 475, 600] { _ = late.tick(to: ms) }
        #expect(late.m.hangProven(Self.proof, pid: 100, at: late.now) == [])
        #expect(late.m.phase == .suspect)
        // Not watching at all.
        var starting = D(m: SupervisorMachine(settings: Self.settings()), t: 0)
        _ = starting.m.start(at: starting.now)
        _ = starting.m.spawned(pid: 100, at: starting.now)
        #expect(starting.m.hangProven(Self.proof, pid: 100, at: starting.now) == [])
    }

    /// Hang → capture → kill → reaped.
    static func hangAndReap(_ d: inout D, pid: Int32) -> [SupervisorAction] {
        _ = d.tick(to: d.t + 100)
        _ = d.tick(to: d.t + 125)
        _ = d.m.hangProven(proof, pid: pid, at: d.now)
        _ = d.m.captureFinished(at: d.now)
        return d.m.childExited(.signaled(signal: 9, coreDumped: false), at: d.now)
    }

    @Test func firstRestartAfterAHangIsImmediateThenBackoffApplies() {
        var d = Self.running()
        let first = Self.hangAndReap(&d, pid: 100)
        #expect(first == [.scheduleRestart(delayMs: 0), .spawn])
        #expect(d.m.phase == .spawning)
        // The replacement hangs too, soon (within backoff_reset_ms): the backoff applies.
        d.token = SupervisorMachineTests.token(in: d.m.spawned(pid: 200, at: d.now))!
        _ = d.m.pongReceived(token: d.token, at: d.now)
        let second = Self.hangAndReap(&d, pid: 200)
        #expect(second == [.scheduleRestart(delayMs: 100)])
        #expect(d.m.phase == .backoff)
        #expect(d.m.restarts == 2)
    }

    @Test func aCrashFirstUsesTheBackoffForTheHangAfterIt() {
        var d = Self.running()
        #expect(d.m.childExited(.exited(code: 1), at: d.now).last == .scheduleRestart(delayMs: 100), "a crash: backoff as before")
        _ = d.tick(to: d.t + 100)
        d.token = SupervisorMachineTests.token(in: d.m.spawned(pid: 200, at: d.now))!
        _ = d.m.pongReceived(token: d.token, at: d.now)
        #expect(Self.hangAndReap(&d, pid: 200) == [.scheduleRestart(delayMs: 200)])
    }

    @Test func aLongHealthyRunMakesTheNextHangRestartImmediateAgain() {
        var d = Self.running()
        _ = Self.hangAndReap(&d, pid: 100)
        d.token = SupervisorMachineTests.token(in: d.m.spawned(pid: 200, at: d.now))!
        _ = d.m.pongReceived(token: d.token, at: d.now)
        d.t += 10_000   // backoff_reset_ms of health
        _ = d.m.pongReceived(token: d.m.pingInFlight ?? 0, at: d.now)
        #expect(Self.hangAndReap(&d, pid: 200) == [.scheduleRestart(delayMs: 0), .spawn])
    }

    @Test func withoutTheSwitchAHangWaitsForTheBackoff() {
        var d = Self.running(Self.settings(actOnProof: true, immediate: false))
        #expect(Self.hangAndReap(&d, pid: 100) == [.scheduleRestart(delayMs: 100)])
    }

    @Test func intensityStillCountsTheImmediateRestart() {
        var s = Self.settings()
        s.intensity = RestartIntensity(maxRestarts: 1, windowMs: 10_000)
        var d = Self.running(s)
        #expect(Self.hangAndReap(&d, pid: 100) == [.scheduleRestart(delayMs: 0), .spawn])
        d.token = SupervisorMachineTests.token(in: d.m.spawned(pid: 200, at: d.now))!
        _ = d.m.pongReceived(token: d.token, at: d.now)
        #expect(Self.hangAndReap(&d, pid: 200).last == .exit(code: 1), "the second restart is over the limit")
    }

    @Test func backoffTakeAfterHangIsFreeOncePerReset() {
        var b = Backoff(initialMs: 100, maxMs: 1000, multiplier: 2, resetAfterMs: 10_000)
        #expect([b.takeAfterHang(), b.takeAfterHang(), b.take(), b.takeAfterHang()] == [0, 100, 200, 400])
        b.instanceWasHealthy(forMs: 10_000)
        #expect([b.takeAfterHang(), b.take()] == [0, 100])
    }
}
