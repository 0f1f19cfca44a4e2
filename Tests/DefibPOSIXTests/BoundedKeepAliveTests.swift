import DefibPOSIX
import Glibc
import Synchronization
import Testing

/// The helper that keeps systemd's watchdog fed while the loop writes a core: it sends until told to stop,
/// and never past its bound (a capture that wedges must still let the watchdog fire).
@Suite struct BoundedKeepAliveTests {
    final class Counter: Sendable {
        let sent = Atomic<Int>(0)
    }

    @Test func sendsUntilFinishedAndNothingAfter() {
        let counter = Counter()
        let helper = BoundedKeepAlive(periodNs: 20_000_000, untilNs: monotonicNanoseconds() + 60_000_000_000) {
            counter.sent.add(1, ordering: .relaxed)
        }
        // Wait (bounded) for a few sends rather than for an amount of time: no timing is asserted.
        let deadline = monotonicNanoseconds() + 10_000_000_000
        while counter.sent.load(ordering: .relaxed) < 3 && monotonicNanoseconds() < deadline { usleep(5000) }
        #expect(counter.sent.load(ordering: .relaxed) >= 3, "the helper sends while the loop is busy")
        helper.finish()
        let atFinish = counter.sent.load(ordering: .relaxed)
        usleep(100_000)
        #expect(counter.sent.load(ordering: .relaxed) == atFinish, "nothing is sent after finish()")
        helper.finish()   // a second finish is harmless
    }

    @Test func stopsByItselfAtItsBound() {
        let counter = Counter()
        let helper = BoundedKeepAlive(periodNs: 10_000_000, untilNs: monotonicNanoseconds() + 50_000_000) {
            counter.sent.add(1, ordering: .relaxed)
        }
        // Past the bound the thread ends on its own: finish() only joins it.
        let deadline = monotonicNanoseconds() + 10_000_000_000
        var last = -1
        while monotonicNanoseconds() < deadline {
            usleep(200_000)
            let now = counter.sent.load(ordering: .relaxed)
            if now == last { break }
            last = now
        }
        #expect(last >= 1, "it sent while within its bound")
        usleep(100_000)
        #expect(counter.sent.load(ordering: .relaxed) == last, "and nothing once past it, without finish()")
        helper.finish()
    }
}
