import Glibc

/// A pthread mutex + condition on CLOCK_MONOTONIC, for plain threads (the proxy's, the lock's fault gate):
/// they block for real and show up in a core as what they are.
public final class ThreadCondition: @unchecked Sendable {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let cond = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)

    public init() {
        pthread_mutex_init(mutex, nil)
        var attr = pthread_condattr_t()
        pthread_condattr_init(&attr)
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC)
        pthread_cond_init(cond, &attr)
        pthread_condattr_destroy(&attr)
    }

    deinit {
        pthread_cond_destroy(cond); pthread_mutex_destroy(mutex)
        cond.deallocate(); mutex.deallocate()
    }

    /// Runs `body` with the mutex held.
    public func locked<R>(_ body: () throws -> R) rethrows -> R {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body()
    }

    /// Waits (mutex held by the caller, inside `locked`) until signalled or `deadlineNs` (monotonic) passes.
    /// Returns false on timeout.
    @discardableResult
    public func wait(untilMonotonicNs deadlineNs: Int64?) -> Bool {
        guard let deadlineNs else { pthread_cond_wait(cond, mutex); return true }
        var ts = timespec(tv_sec: Int(deadlineNs / 1_000_000_000), tv_nsec: Int(deadlineNs % 1_000_000_000))
        return pthread_cond_timedwait(cond, mutex, &ts) != ETIMEDOUT
    }

    /// Wakes every waiter (call inside `locked`).
    public func broadcast() { pthread_cond_broadcast(cond) }
}

/// A one-shot flag threads can wait on with a timeout.
public final class ThreadEvent: @unchecked Sendable {
    private let condition = ThreadCondition()
    private var isSet = false

    /// An unset flag.
    public init() {}

    /// Sets the flag and wakes every waiter.
    public func set() { condition.locked { isSet = true; condition.broadcast() } }

    /// True once set; false if `timeoutNs` passed first.
    public func wait(timeoutNs: Int64) -> Bool {
        let deadline = monotonicNanoseconds() + timeoutNs
        return condition.locked {
            while !isSet { if !condition.wait(untilMonotonicNs: deadline) && !isSet { return false } }
            return true
        }
    }
}
