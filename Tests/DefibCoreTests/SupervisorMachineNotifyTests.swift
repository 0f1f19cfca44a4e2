import DefibCore
import Testing

/// Heartbeats from sd_notify (`WATCHDOG=1`) instead of, or as well as, pings. Same settings as
/// SupervisorMachineTests: interval 100, deadline 500, misses 2 → a miss 125 ms after a keep-alive was due.
@Suite struct SupervisorMachineNotifyTests {
    static func machine(_ source: HeartbeatSource) -> SupervisorMachine {
        SupervisorMachine(settings: .init(source: source, intervalMs: 100, deadlineMs: 500, missesBeforeHang: 2, startTimeoutMs: 2000,
                                          stopTimeoutMs: 1000, backoff: Backoff(initialMs: 100, maxMs: 1000, multiplier: 2, resetAfterMs: 10_000),
                                          intensity: RestartIntensity(maxRestarts: 3, windowMs: 10_000)))
    }
    static let stuck = ProgressVerdict.stuck("asleep")
    static func ms(_ v: Int64) -> MonoTime { .milliseconds(v) }

    @Test func readyThenKeepAlivesThenSilenceEscalatesThroughTheSameStages() {
        var m = Self.machine(.notify)
        _ = m.start(at: Self.ms(0))
        #expect(m.spawned(pid: 100, at: Self.ms(0)) == [], "no pings with sd_notify only")
        #expect(m.nextWakeup == Self.ms(2000), "only the start timeout")
        #expect(m.pongReceived(token: 1, at: Self.ms(0)) == [])
        #expect(m.notifyReceived([.ready], at: Self.ms(10)) == [.instanceReady(pid: 100)])
        #expect(m.notifyReceived([.watchdog], at: Self.ms(90)) == [])
        #expect(m.nextWakeup == Self.ms(90 + 100 + 125))
        #expect(m.tick(at: Self.ms(314)) == [])
        #expect(m.tick(at: Self.ms(315)) == [.heartbeatMissed(misses: 1, silenceMs: 125, reason: "no WATCHDOG=1 for 225 ms"), .sampleProgress(pid: 100)])
        #expect(m.tick(at: Self.ms(440)) == [.heartbeatMissed(misses: 2, silenceMs: 250, reason: "no WATCHDOG=1 for 350 ms"),
                                             .collectSoftEvidence(pid: 100, silenceMs: 250)])
        #expect(m.phase == .suspect)
        _ = m.tick(at: Self.ms(565))
        #expect(m.tick(at: Self.ms(690)).last == .judgeProgress(pid: 100))
        let hang = m.progressJudged(Self.stuck, at: Self.ms(690))
        #expect(hang == [.openIncident(.missedHeartbeat(misses: 4, msSinceLastPong: 600, lastError: "no WATCHDOG=1 for 600 ms",
                                                        silenceMs: 500, extendedMs: 0, verdict: Self.stuck)), .captureEvidence(pid: 100)])
    }

    @Test func aLateKeepAliveRecovers() {
        var m = Self.machine(.notify)
        _ = m.start(at: Self.ms(0)); _ = m.spawned(pid: 100, at: Self.ms(0)); _ = m.notifyReceived([.ready], at: Self.ms(0))
        _ = m.tick(at: Self.ms(225)); _ = m.tick(at: Self.ms(350))
        #expect(m.phase == .suspect)
        #expect(m.notifyReceived([.watchdog], at: Self.ms(400)) == [.heartbeatRecovered(silenceMs: 300, misses: 2, wasSuspect: true)])
        #expect(m.phase == .running && m.misses == 0)
        #expect(m.nextWakeup == Self.ms(400 + 100 + 125))
    }

    @Test func withBothSourcesEveryOneMustAnswer() {
        var m = Self.machine(.both)
        _ = m.start(at: Self.ms(0))
        let first = m.spawned(pid: 100, at: Self.ms(0))
        guard case let .sendPing(t)? = first.first else { Issue.record("\(first)"); return }
        #expect(m.notifyReceived([.ready], at: Self.ms(0)) == [], "READY=1 alone is not enough when pings are on too")
        #expect(m.pongReceived(token: t, at: Self.ms(0)) == [.instanceReady(pid: 100)])
        // Pings keep being answered, keep-alives stop: silence from when the keep-alive was due (100).
        var now: Int64 = 0
        var judged = false
        while now < 1000 && !judged {
            now += 25
            for a in m.tick(at: Self.ms(now)) {
                if case let .sendPing(token) = a { _ = m.pongReceived(token: token, at: Self.ms(now)) }
                if a == .judgeProgress(pid: 100) { judged = true }
            }
        }
        #expect(judged && now == 600, "hang at 100 + 500 although every ping was answered (at \(now))")
        // A keep-alive then would have ended the silence.
        var n = Self.machine(.both)
        _ = n.start(at: Self.ms(0))
        guard case let .sendPing(t2)? = n.spawned(pid: 100, at: Self.ms(0)).first else { return }
        _ = n.pongReceived(token: t2, at: Self.ms(0))
        _ = n.tick(at: Self.ms(100))
        _ = n.tick(at: Self.ms(225))
        #expect(n.misses >= 1)
        let answered = n.notifyReceived([.watchdog], at: Self.ms(230))
        #expect(answered == [], "the ping sent at 225 is still out: not every source has answered yet")
        #expect(n.pongReceived(token: n.pingInFlight!, at: Self.ms(240)).first.map { if case .heartbeatRecovered = $0 { true } else { false } } == true)
    }

    @Test func watchdogTriggerIsAHangAtOnce() {
        var m = Self.machine(.notify)
        _ = m.start(at: Self.ms(0)); _ = m.spawned(pid: 100, at: Self.ms(0)); _ = m.notifyReceived([.ready], at: Self.ms(0))
        #expect(m.notifyReceived([.status("wedged"), .watchdogTrigger], at: Self.ms(50)) ==
                [.serviceNotified("STATUS=wedged"), .openIncident(.triggered(reason: "the service sent WATCHDOG=trigger")), .captureEvidence(pid: 100)])
    }

    @Test func extendTimeoutMovesTheStartDeadline() {
        var m = Self.machine(.notify)
        _ = m.start(at: Self.ms(0)); _ = m.spawned(pid: 100, at: Self.ms(0))
        _ = m.notifyReceived([.extendTimeoutUsec(1_000_000)], at: Self.ms(1900))
        #expect(m.tick(at: Self.ms(2000)) == [])
        #expect(m.tick(at: Self.ms(2900)) == [.openIncident(.startTimeout(ms: 2900, lastError: nil)), .captureEvidence(pid: 100)])
    }

    @Test func watchdogUsecChangesTheKeepAlivePeriod() {
        var m = Self.machine(.notify)
        _ = m.start(at: Self.ms(0)); _ = m.spawned(pid: 100, at: Self.ms(0)); _ = m.notifyReceived([.ready], at: Self.ms(0))
        _ = m.notifyReceived([.watchdogUsec(2_000_000)], at: Self.ms(10))
        #expect(m.keepAliveIntervalMs == 1000)
        #expect(m.tick(at: Self.ms(1000)) == [])
        #expect(m.nextWakeup == Self.ms(10 + 1000 + 125))
    }

    /// STOPPING=1 from the service: no hang is declared while it winds down (stop_timeout_ms, 1000 here, or
    /// longer with EXTEND_TIMEOUT_USEC=); still running after that, heartbeats count again; an exit after it
    /// is an incident that says the stop was announced.
    @Test func stoppingSuspendsHeartbeatsForTheStopTimeoutOnly() {
        var m = Self.machine(.notify)
        _ = m.start(at: Self.ms(0)); _ = m.spawned(pid: 100, at: Self.ms(0)); _ = m.notifyReceived([.ready], at: Self.ms(0))
        _ = m.tick(at: Self.ms(225))
        #expect(m.misses == 1)
        #expect(m.notifyReceived([.stopping], at: Self.ms(300)) ==
                [.silenceCancelled(reason: "the service announced STOPPING=1"),
                 .serviceNotified("STOPPING=1: the service is stopping by itself; no heartbeat expected for up to 1000 ms")])
        #expect(m.misses == 0 && m.phase == .running && m.nextWakeup == Self.ms(1300))
        for t: Int64 in [400, 700, 1000, 1299] { #expect(m.tick(at: Self.ms(t)) == [], "silent while stopping, at \(t)") }
        #expect(m.tick(at: Self.ms(1300)) == [.serviceNotified("still running 1000 ms after STOPPING=1: heartbeats are expected again")])
        // From then on, the usual stages: a miss 125 ms after the keep-alive due at 1400.
        #expect(m.nextWakeup == Self.ms(1300 + 100 + 125))

        var e = Self.machine(.ping)
        _ = e.start(at: Self.ms(0))
        guard case let .sendPing(t)? = e.spawned(pid: 100, at: Self.ms(0)).first else { Issue.record("no ping"); return }
        _ = e.pongReceived(token: t, at: Self.ms(0))
        _ = e.notifyReceived([.stopping], at: Self.ms(50))
        _ = e.notifyReceived([.extendTimeoutUsec(3_000_000)], at: Self.ms(60))
        #expect(e.nextWakeup == Self.ms(3060), "EXTEND_TIMEOUT_USEC= lengthens the wind-down")
        #expect(e.tick(at: Self.ms(2000)) == [])
        let ended = e.childExited(.exited(code: 0), at: Self.ms(2500))
        #expect(ended.prefix(2) == [.openIncident(.died(.exited(code: 0))), .noteIncident("the service had announced STOPPING=1 2450 ms before it ended")])
    }

    @Test func readyMeansNothingWhenOnlyPingsCount() {
        var m = Self.machine(.ping)
        _ = m.start(at: Self.ms(0)); _ = m.spawned(pid: 100, at: Self.ms(0))
        #expect(m.notifyReceived([.ready, .watchdog], at: Self.ms(5)) == [])
        #expect(m.phase == .starting)
    }
}
