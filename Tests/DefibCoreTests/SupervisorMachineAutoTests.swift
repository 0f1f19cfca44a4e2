import DefibCore
import Testing

/// The machine's `auto`, `none` and probe modes, with the settings of SupervisorMachineTests (interval 100,
/// deadline 500, misses 2 → a miss every 125 ms; start timeout 2000).
@Suite struct SupervisorMachineAutoTests {
    static func machine(_ mode: HeartbeatMode) -> SupervisorMachine {
        SupervisorMachine(settings: .init(source: mode.protocolSource ?? .ping, mode: mode, intervalMs: 100, deadlineMs: 500, missesBeforeHang: 2,
                                          startTimeoutMs: 2000, stopTimeoutMs: 1000,
                                          backoff: Backoff(initialMs: 100, maxMs: 1000, multiplier: 2, resetAfterMs: 10_000),
                                          intensity: RestartIntensity(maxRestarts: 3, windowMs: 10_000)))
    }
    static func ms(_ v: Int64) -> MonoTime { .milliseconds(v) }

    @Test func autoIgnoresARefusedSocketAndEndsTheStartWindowWithoutAnIncident() {
        var m = Self.machine(.auto)
        _ = m.start(at: Self.ms(0))
        #expect(m.spawned(pid: 100, at: Self.ms(0)) == [.sendPing(token: 1)])
        #expect(m.pingFailed(token: 1, reason: "no control socket", at: Self.ms(0)) == [])
        #expect(m.tick(at: Self.ms(25)) == [.sendPing(token: 2)])
        // The end of the start window: no incident, exit-only, the warning; pings go on (now an interval apart).
        #expect(m.tick(at: Self.ms(2000)) == [.heartbeatUnheard(pid: 100, afterMs: 2000), .instanceReady(pid: 100)])
        #expect(m.phase == .running && !m.incidentOpen)
        #expect(m.tick(at: Self.ms(2000)) == [.sendPing(token: 3)])
        #expect(m.pingFailed(token: 3, reason: "refused", at: Self.ms(2000)) == [], "not a miss")
        #expect(m.misses == 0 && m.nextWakeup == Self.ms(2100))
        #expect(m.tick(at: Self.ms(2100)) == [.sendPing(token: 4)])
        // A ping that connects but gets no answer is dropped at its deadline, not counted.
        #expect(m.tick(at: Self.ms(2225)) == [])
        #expect(m.silenceMs(at: Self.ms(2225)) == 0 && m.misses == 0)
        // The first pong: ping is the heartbeat from now on, and its silence counts.
        #expect(m.tick(at: Self.ms(2325)) == [.sendPing(token: 5)])
        #expect(m.pongReceived(token: 5, at: Self.ms(2326)) == [.heartbeatAdopted(pid: 100, source: .ping)])
        #expect(m.heardPing)
        #expect(m.tick(at: Self.ms(2426)) == [.sendPing(token: 6)])
        #expect(m.pingFailed(token: 6, reason: "refused", at: Self.ms(2426)) == [.heartbeatMissed(misses: 1, silenceMs: 0, reason: "refused"),
                                                                                    .sampleProgress(pid: 100)])
    }

    @Test func autoLearnsKeepAlivesAndHoldsLaterInstancesToTheStartTimeout() {
        var m = Self.machine(.auto)
        _ = m.start(at: Self.ms(0))
        _ = m.spawned(pid: 100, at: Self.ms(0))
        #expect(m.notifyReceived([.watchdog], at: Self.ms(5)) == [.heartbeatAdopted(pid: 100, source: .notify)], "learnt, not ready yet")
        #expect(m.phase == .starting)
        #expect(m.notifyReceived([.ready], at: Self.ms(10)) == [.instanceReady(pid: 100)])
        #expect(m.nextWakeup == Self.ms(10), "pings go on beside the keep-alives (the one in flight is dropped at ready)")
        #expect(m.tick(at: Self.ms(10)) == [.sendPing(token: 2)])
        _ = m.pingFailed(token: 2, reason: "refused", at: Self.ms(10))
        // The keep-alive due at 110 has not come by 235: a miss, as with --heartbeat notify.
        #expect(m.tick(at: Self.ms(235)).contains(.heartbeatMissed(misses: 1, silenceMs: 125, reason: "no WATCHDOG=1 for 225 ms")))
        // The service dies; its replacement says nothing: a start timeout now (the service is known to speak sd_notify).
        _ = m.childExited(.exited(code: 1), at: Self.ms(300))
        #expect(m.tick(at: Self.ms(400)) == [.spawn])
        _ = m.spawned(pid: 101, at: Self.ms(400))
        let timeout = m.tick(at: Self.ms(2400))
        #expect(timeout.contains { if case .captureEvidence(pid: 101) = $0 { true } else { false } }, "\(timeout)")
    }

    @Test func noneNeverPingsIgnoresKeepAlivesAndIsReadyAtTheEndOfItsStartWindowOrAtReady() {
        var m = Self.machine(.none)
        _ = m.start(at: Self.ms(0))
        #expect(m.spawned(pid: 100, at: Self.ms(0)) == [])
        #expect(m.notifyReceived([.watchdog], at: Self.ms(5)) == [])
        #expect(m.tick(at: Self.ms(2000)) == [.instanceReady(pid: 100)], "no warning with none")
        #expect(m.nextWakeup == nil, "nothing to wait for but the exit")
        var r = Self.machine(.none)
        _ = r.start(at: Self.ms(0)); _ = r.spawned(pid: 100, at: Self.ms(0))
        #expect(r.notifyReceived([.ready], at: Self.ms(7)) == [.instanceReady(pid: 100)])
    }

    @Test func aProbeIsHeldToLikeAPing() {
        var m = Self.machine(.http)
        _ = m.start(at: Self.ms(0))
        #expect(m.spawned(pid: 100, at: Self.ms(0)) == [.sendPing(token: 1)])
        #expect(m.pongReceived(token: 1, at: Self.ms(3)) == [.instanceReady(pid: 100)], "no adoption: the probe was asked for")
        #expect(m.tick(at: Self.ms(103)) == [.sendPing(token: 2)])
        #expect(m.pingFailed(token: 2, reason: "status 503", at: Self.ms(110)).first == .heartbeatMissed(misses: 1, silenceMs: 7, reason: "status 503"))
        // A failed start is retried an interval later (the config gives probes startRetryMs = interval).
        var never = Self.machine(.http)
        _ = never.start(at: Self.ms(0)); _ = never.spawned(pid: 100, at: Self.ms(0))
        _ = never.pingFailed(token: 1, reason: "connection refused", at: Self.ms(0))
        #expect(never.tick(at: Self.ms(2000)).contains(.openIncident(.startTimeout(ms: 2000, lastError: "connection refused"))))
    }
}
