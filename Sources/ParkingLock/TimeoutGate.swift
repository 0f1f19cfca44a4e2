import CDefibShims
import Glibc
import Synchronization

/// The fault-injection point at the top of a writer's timed-out branch: after it has dequeued itself
/// from the readers queue and decided it timed out, before it reverts the lock word. When armed, the
/// next writer that gets there waits until a reader has unlocked the lock, which forces the
/// interleaving of parking_lot issue 465 every time.
public final class TimeoutGate: @unchecked Sendable {
    private let armed = Atomic<Bool>(false)
    /// True while a writer waits at the gate; lets `readerUnlocked` stay a single load otherwise.
    private let writerWaiting = Atomic<Bool>(false)
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let cond: UnsafeMutablePointer<pthread_cond_t>
    // Guarded by `mutex`.
    private var reached = false
    private var released = false
    private var releaseAfterStorage: Duration = .seconds(5)

    /// Makes a disarmed gate.
    public init() {
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        pthread_mutex_init(mutex, nil)
        cond = .allocate(capacity: 1)
        cond.initialize(to: pthread_cond_t())
        var attr = pthread_condattr_t()
        pthread_condattr_init(&attr)
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC)
        pthread_cond_init(cond, &attr)
        pthread_condattr_destroy(&attr)
    }

    deinit {
        pthread_cond_destroy(cond)
        pthread_mutex_destroy(mutex)
        cond.deallocate()
        mutex.deallocate()
    }

    /// How long a writer stays at the gate if no reader unlocks (so a test never hangs here). Default 5 s.
    public var releaseAfter: Duration {
        get { withMutex { releaseAfterStorage } }
        set { withMutex { releaseAfterStorage = newValue } }
    }

    /// One-shot: the next writer that times out waiting for readers parks at the gate.
    public func arm() {
        withMutex {
            reached = false
            released = false
            armed.store(true, ordering: .releasing)
        }
    }

    /// Disarms the gate and lets a writer waiting at it go on.
    public func disarm() {
        withMutex {
            armed.store(false, ordering: .releasing)
            released = true
            pthread_cond_broadcast(cond)
        }
    }

    /// Whether the next timed-out writer will stop at the gate.
    public var isArmed: Bool { armed.load(ordering: .acquiring) }

    /// Waits up to `timeout` for a writer to reach the gate since the last `arm()`; true once one has.
    public func waitUntilReached(timeout: Duration) -> Bool {
        let deadline = timeout.deadlineFromNow
        return withMutex {
            while !reached, monotonicNow() < deadline { waitOnCond(until: deadline) }
            return reached
        }
    }

    /// The writer's side, at the top of its timed-out branch.
    func writerTimedOut() {
        guard armed.load(ordering: .relaxed) else { return }
        withMutex {
            guard armed.exchange(false, ordering: .acquiringAndReleasing) else { return }
            reached = true
            released = false
            writerWaiting.store(true, ordering: .releasing)
            pthread_cond_broadcast(cond)
            let deadline = releaseAfterStorage.deadlineFromNow
            while !released, monotonicNow() < deadline { waitOnCond(until: deadline) }
            writerWaiting.store(false, ordering: .releasing)
        }
    }

    /// A reader's side, at the end of `unlockShared` when the word had WRITER set.
    func readerUnlocked() {
        guard writerWaiting.load(ordering: .acquiring) else { return }
        withMutex {
            released = true
            pthread_cond_broadcast(cond)
        }
    }

    private func withMutex<R>(_ body: () throws -> R) rethrows -> R {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body()
    }

    private func waitOnCond(until deadline: UInt64) {
        var ts = timespec(tv_sec: Int(deadline / 1_000_000_000), tv_nsec: Int(deadline % 1_000_000_000))
        _ = pthread_cond_timedwait(cond, mutex, &ts)
    }
}
