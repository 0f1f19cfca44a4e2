import CDefibShims
import DefibSystem
import Synchronization

/// The fault-injection point at the top of a writer's timed-out branch: after it has dequeued itself
/// from the readers queue and decided it timed out, before it reverts the lock word. When armed, the
/// next writer that gets there waits until a reader has unlocked the lock, which forces the
/// interleaving of parking_lot issue 465 every time.
public final class TimeoutGate: @unchecked Sendable {
    private let armed = Atomic<Bool>(false)
    /// True while a writer waits at the gate; lets `readerUnlocked` stay a single load otherwise.
    private let writerWaiting = Atomic<Bool>(false)
    private let condition = ThreadCondition()
    // Guarded by `condition`.
    private var reached = false
    private var released = false
    private var releaseAfterStorage: Duration = .seconds(5)

    /// Makes a disarmed gate.
    public init() {}

    /// How long a writer stays at the gate if no reader unlocks (so a test never hangs here). Default 5 s.
    public var releaseAfter: Duration {
        get { condition.locked { releaseAfterStorage } }
        set { condition.locked { releaseAfterStorage = newValue } }
    }

    /// One-shot: the next writer that times out waiting for readers parks at the gate.
    public func arm() {
        condition.locked {
            reached = false
            released = false
            armed.store(true, ordering: .releasing)
        }
    }

    /// Disarms the gate and lets a writer waiting at it go on.
    public func disarm() {
        condition.locked {
            armed.store(false, ordering: .releasing)
            released = true
            condition.broadcast()
        }
    }

    /// Whether the next timed-out writer will stop at the gate.
    public var isArmed: Bool { armed.load(ordering: .acquiring) }

    /// Waits up to `timeout` for a writer to reach the gate since the last `arm()`; true once one has.
    public func waitUntilReached(timeout: Duration) -> Bool {
        let deadline = timeout.deadlineFromNow
        return condition.locked {
            while !reached, monotonicNow() < deadline { condition.wait(untilMonotonicNs: Int64(clamping: deadline)) }
            return reached
        }
    }

    /// The writer's side, at the top of its timed-out branch.
    func writerTimedOut() {
        guard armed.load(ordering: .relaxed) else { return }
        condition.locked {
            guard armed.exchange(false, ordering: .acquiringAndReleasing) else { return }
            reached = true
            released = false
            writerWaiting.store(true, ordering: .releasing)
            condition.broadcast()
            let deadline = releaseAfterStorage.deadlineFromNow
            while !released, monotonicNow() < deadline { condition.wait(untilMonotonicNs: Int64(clamping: deadline)) }
            writerWaiting.store(false, ordering: .releasing)
        }
    }

    /// A reader's side, at the end of `unlockShared` when the word had WRITER set.
    func readerUnlocked() {
        guard writerWaiting.load(ordering: .acquiring) else { return }
        condition.locked {
            released = true
            condition.broadcast()
        }
    }
}
