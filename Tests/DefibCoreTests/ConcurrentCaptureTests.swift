import DefibCore
import Testing

/// When the replacement may start while the core is written (`ConcurrentCapture`), and the machine's side of it:
/// the frozen instance is restarted past at once and killed when its core is done, or at the budget and a second.
@Suite struct ConcurrentCaptureTests {
    @Test func onlyANativeCaptureOfOneProcessWithSocketsPassedQualifies() {
        #expect(ConcurrentCapture.precondition(method: .native, socketsPassed: 1, otherProcessesToCapture: 0) == nil)
        #expect(ConcurrentCapture.precondition(method: .gcore, socketsPassed: 1, otherProcessesToCapture: 0)?.contains("gcore capture keeps the order") == true)
        #expect(ConcurrentCapture.precondition(method: .kernel, socketsPassed: 1, otherProcessesToCapture: 0) != nil)
        #expect(ConcurrentCapture.precondition(method: .none, socketsPassed: 1, otherProcessesToCapture: 0) != nil)
        #expect(ConcurrentCapture.precondition(method: .native, socketsPassed: 0, otherProcessesToCapture: 0)?.contains("binds its own listening sockets") == true)
        #expect(ConcurrentCapture.precondition(method: .native, socketsPassed: 2, otherProcessesToCapture: 1)?.contains("1 other process(es)") == true)
    }

    @Test(arguments: [
        // (RSS MiB, MemAvailable MiB, concurrent?)
        (530, 8192, true), (530, 700, true), (530, 663, true), (530, 662, false), (16, 80, true), (16, 79, false), (2048, 2559, false),
    ])
    func memoryMustHoldTheRSSAgainPlusAMargin(_ c: (rss: Int64, available: Int64, concurrent: Bool)) {
        let decision = ConcurrentCapture.decide(rssBytes: c.rss << 20, memAvailableBytes: c.available << 20)
        #expect((decision == .concurrent) == c.concurrent, "RSS \(c.rss) MiB, MemAvailable \(c.available) MiB: \(decision)")
        if case let .sequential(why) = decision { #expect(why.hasPrefix("MemAvailable \(c.available) MiB is below the hung process's RSS \(c.rss) MiB")) }
    }

    @Test func unknownMemoryKeepsTodaysOrder() {
        #expect(ConcurrentCapture.decide(rssBytes: nil, memAvailableBytes: 1 << 30) == .sequential("the hung process's RSS or MemAvailable could not be read"))
        #expect(ConcurrentCapture.decide(rssBytes: 1 << 20, memAvailableBytes: nil) != .concurrent)
    }

    typealias D = SupervisorMachineTests.Driven

    /// Capturing a hung instance (the proof machine settings: immediate first restart).
    static func capturing() -> D {
        var d = SupervisorMachineProofTests.running()
        _ = d.tick(to: 225)
        _ = d.m.hangProven(SupervisorMachineProofTests.proof, pid: 100, at: d.now)
        return d
    }

    @Test func aFrozenInstanceIsRestartedPastAndKilledWhenItsCoreIsDone() {
        var d = Self.capturing()
        let restart = d.m.captureFrozen(killBy: d.now + 2000, at: d.now)
        #expect(restart == [.scheduleRestart(delayMs: 0), .spawn])
        #expect(d.m.phase == .spawning && d.m.frozen?.pid == 100)
        #expect(d.m.nextWakeup == d.now + 2000, "the frozen instance's bound is a wake-up")
        // The replacement runs meanwhile.
        d.token = SupervisorMachineTests.token(in: d.m.spawned(pid: 200, at: d.now))!
        #expect(d.m.pongReceived(token: d.token, at: d.now).contains(.closeIncident(.recovered)))
        d.t += 150
        #expect(d.m.frozenCoreWritten(at: d.now) == [.killFrozen(pid: 100, overdue: false)])
        #expect(d.m.frozen == nil && d.m.phase == .running && d.m.pid == 200)
        #expect(d.m.frozenCoreWritten(at: d.now) == [], "once")
    }

    @Test func aFrozenInstanceNeverOutlivesItsBound() {
        var d = Self.capturing()
        _ = d.m.captureFrozen(killBy: d.now + 1500, at: d.now)
        _ = d.m.spawned(pid: 200, at: d.now)
        #expect(!d.tick(to: d.t + 1499).contains(.killFrozen(pid: 100, overdue: true)))
        #expect(d.tick(to: d.t + 1).first == .killFrozen(pid: 100, overdue: true))
        #expect(d.m.frozen == nil)
        #expect(d.m.frozenCoreWritten(at: d.now) == [], "the core coming in later kills nothing more")
    }

    @Test func shutdownKillsAFrozenInstanceFirst() {
        var d = Self.capturing()
        _ = d.m.captureFrozen(killBy: d.now + 1500, at: d.now)
        _ = d.m.spawned(pid: 200, at: d.now)
        let a = d.m.shutdown(at: d.now)
        #expect(a.first == .killFrozen(pid: 100, overdue: false) && a.contains(.terminate(pid: 200)), "\(a)")
    }

    @Test func aFreezeOutsideACaptureChangesNothing() {
        var d = SupervisorMachineProofTests.running()
        #expect(d.m.captureFrozen(killBy: d.now + 1000, at: d.now) == [])
        #expect(d.m.frozen == nil && d.m.phase == .running)
    }

    @Test func noRestartAfterAllKillsTheFrozenInstanceAtOnce() {
        var s = SupervisorMachineProofTests.settings()
        s.intensity = RestartIntensity(maxRestarts: 0, windowMs: 10_000)
        var d = SupervisorMachineProofTests.running(s)
        _ = d.tick(to: 225)
        _ = d.m.hangProven(SupervisorMachineProofTests.proof, pid: 100, at: d.now)
        let a = d.m.captureFrozen(killBy: d.now + 1500, at: d.now)
        #expect(a.first == .killFrozen(pid: 100, overdue: false) && a.last == .exit(code: 1), "\(a)")
        #expect(d.m.frozen == nil)
    }
}
