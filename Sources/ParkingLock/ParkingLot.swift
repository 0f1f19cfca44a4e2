import CDefibShims
import Glibc

// The parking lot, after parking_lot_core 0.9: a global table of wait queues keyed by address.
// Queues live in buckets chosen by hashing the key; each bucket has its own lock, under which the
// validate / timed-out / unpark callbacks run. That is what makes a lock word's slow paths
// race-free, and what the buggy `try_write_for` revert failed to use.

/// What a parked thread learns when `park` returns (parking_lot_core's `ParkResult`).
enum ParkResult: Equatable {
    /// An unparker dequeued us and handed over this token.
    case unparked(token: UInt)
    /// `validate` returned false; we never slept.
    case invalid
    /// The deadline passed and nobody had dequeued us; `timedOut` ran under the queue lock.
    case timedOut
}

/// What an unpark found (parking_lot_core's `UnparkResult`).
struct UnparkResult {
    /// Threads dequeued by this call.
    var unparkedThreads: Int
    /// Whether threads are still parked on the key.
    var haveMoreThreads: Bool
    /// Eventual fairness: set about every 0.5 ms per bucket, telling the unlocker to hand the lock over.
    var beFair: Bool
}

/// A filter's verdict on one parked thread (parking_lot_core's `FilterOp`).
enum FilterOp { case unpark, skip, stop }

/// The unpark token telling a woken thread to just retry.
let tokenNormal: UInt = 0
/// The unpark token telling a woken thread the lock was handed to it.
let tokenHandoff: UInt = 1

/// One parked thread: its key, its park token, and the futex word it sleeps on.
final class ParkedThread {
    let key: UInt
    let parkToken: UInt
    /// 1 while the thread should sleep; the unparker stores 0 under the queue lock.
    let futex: UnsafeMutablePointer<UInt32>
    /// Written by the unparker before it clears the futex word (release), read after (acquire).
    var unparkToken: UInt = tokenNormal

    init(key: UInt, parkToken: UInt) {
        self.key = key
        self.parkToken = parkToken
        futex = .allocate(capacity: 1)
        futex.initialize(to: 0)
        defib_parker_prepare(futex)
    }

    // The unparker keeps a reference until after its FUTEX_WAKE, so the word outlives every wake.
    deinit { futex.deallocate() }
}

/// One hash bucket: a lock and a FIFO queue of parked threads (for any keys hashing here).
final class ParkingBucket: @unchecked Sendable {
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    var queue: [ParkedThread] = []
    private var fairTimeoutNs: UInt64
    private var seed: UInt32

    init(seed: UInt32) {
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        var attr = pthread_mutexattr_t()
        pthread_mutexattr_init(&attr)
        // parking_lot's bucket lock (WordLock) spins before sleeping; an adaptive mutex does too.
        pthread_mutexattr_settype(&attr, Int32(PTHREAD_MUTEX_ADAPTIVE_NP))
        pthread_mutex_init(mutex, &attr)
        pthread_mutexattr_destroy(&attr)
        self.seed = seed
        fairTimeoutNs = defib_monotonic_ns()
    }

    func lock() { pthread_mutex_lock(mutex) }
    func unlock() { pthread_mutex_unlock(mutex) }

    /// parking_lot_core's FairTimeout: true about every 0.5 ms (a random 0–1 ms apart). Call with the bucket locked.
    func shouldBeFair() -> Bool {
        let now = defib_monotonic_ns()
        guard now > fairTimeoutNs else { return false }
        // xorshift32, as parking_lot_core.
        seed ^= seed << 13
        seed ^= seed >> 17
        seed ^= seed << 5
        fairTimeoutNs = now + UInt64(seed % 1_000_000)
        return true
    }

    func hasThreads(key: UInt) -> Bool { queue.contains { $0.key == key } }
}

/// The global parking lot.
enum ParkingLot {
    static let buckets: [ParkingBucket] = (0..<256).map { ParkingBucket(seed: UInt32($0) &+ 1) }

    static func bucket(for key: UInt) -> ParkingBucket {
        // Fibonacci hashing, as parking_lot_core does.
        let hash = (UInt64(key) &* 0x9E37_79B9_7F4A_7C15) >> 56
        return buckets[Int(hash)]
    }

    /// Parks the calling thread on `key` if `validate()` holds (checked under the bucket lock), after
    /// calling `beforeSleep` outside the lock. On the deadline, if no unparker dequeued us first, we
    /// dequeue ourselves and call `timedOut(key, wasLastThread)` under the bucket lock. A late unpark
    /// is never a timeout.
    static func park(key: UInt, validate: () -> Bool, beforeSleep: () -> Void,
                     timedOut: (UInt, Bool) -> Void, parkToken: UInt, deadline: UInt64?) -> ParkResult {
        let bucket = bucket(for: key)
        let me = ParkedThread(key: key, parkToken: parkToken)
        bucket.lock()
        guard validate() else {
            bucket.unlock()
            return .invalid
        }
        bucket.queue.append(me)
        bucket.unlock()
        beforeSleep()
        if defib_parker_park(me.futex, deadline.map { Int64(clamping: $0) } ?? -1) == 1 {
            return .unparked(token: me.unparkToken)
        }
        bucket.lock()
        if defib_parker_still_parked(me.futex) == 0 {
            // An unparker dequeued us between the deadline and now: that is a wake-up, not a timeout.
            bucket.unlock()
            return .unparked(token: me.unparkToken)
        }
        if let index = bucket.queue.firstIndex(where: { $0 === me }) { bucket.queue.remove(at: index) }
        timedOut(key, !bucket.hasThreads(key: key))
        bucket.unlock()
        return .timedOut
    }

    /// Unparks the first thread parked on `key`. `callback` runs under the bucket lock **even when no
    /// thread was found**; its result is the token the woken thread receives.
    @discardableResult
    static func unparkOne(key: UInt, callback: (UnparkResult) -> UInt) -> UnparkResult {
        let bucket = bucket(for: key)
        bucket.lock()
        var result = UnparkResult(unparkedThreads: 0, haveMoreThreads: false, beFair: false)
        var woken: ParkedThread?
        if let index = bucket.queue.firstIndex(where: { $0.key == key }) {
            woken = bucket.queue.remove(at: index)
            result.unparkedThreads = 1
            result.haveMoreThreads = bucket.hasThreads(key: key)
            result.beFair = bucket.shouldBeFair()
        }
        let token = callback(result)
        if let woken {
            woken.unparkToken = token
            defib_parker_unpark_lock(woken.futex)
        }
        bucket.unlock()
        if let woken { defib_parker_wake(woken.futex) }
        return result
    }

    /// Walks the threads parked on `key` in queue order, letting `filter` (given each one's park
    /// token) unpark it, skip it, or stop; then runs `callback` under the bucket lock.
    @discardableResult
    static func unparkFilter(key: UInt, filter: (UInt) -> FilterOp, callback: (UnparkResult) -> UInt) -> UnparkResult {
        let bucket = bucket(for: key)
        bucket.lock()
        var woken: [ParkedThread] = []
        var kept: [ParkedThread] = []
        kept.reserveCapacity(bucket.queue.count)
        var stopped = false
        for thread in bucket.queue {
            guard thread.key == key, !stopped else { kept.append(thread); continue }
            switch filter(thread.parkToken) {
            case .unpark: woken.append(thread)
            case .skip: kept.append(thread)
            case .stop: stopped = true; kept.append(thread)
            }
        }
        bucket.queue = kept
        var result = UnparkResult(unparkedThreads: woken.count, haveMoreThreads: bucket.hasThreads(key: key), beFair: false)
        if !woken.isEmpty { result.beFair = bucket.shouldBeFair() }
        let token = callback(result)
        for thread in woken {
            thread.unparkToken = token
            defib_parker_unpark_lock(thread.futex)
        }
        bucket.unlock()
        for thread in woken { defib_parker_wake(thread.futex) }
        return result
    }

    /// Threads parked on `key` right now.
    static func parkedCount(key: UInt) -> Int {
        let bucket = bucket(for: key)
        bucket.lock()
        defer { bucket.unlock() }
        return bucket.queue.reduce(0) { $0 + ($1.key == key ? 1 : 0) }
    }
}

/// parking_lot_core's SpinWait: a few rounds of exponential busy waiting, then yields, then give up.
struct SpinWait {
    private var counter: UInt32 = 0

    /// Spins or yields once; false once it is time to park instead.
    mutating func spin() -> Bool {
        if counter >= 10 { return false }
        counter += 1
        if counter <= 3 {
            defib_cpu_relax(1 << counter)
        } else {
            sched_yield()
        }
        return true
    }

    /// Busy-waits without ever yielding (used between CAS retries on the reader count).
    mutating func spinNoYield() {
        counter += 1
        if counter > 10 { counter = 10 }
        defib_cpu_relax(1 << counter)
    }

    mutating func reset() { counter = 0 }
}

/// CLOCK_MONOTONIC now, in nanoseconds.
@inline(__always) func monotonicNow() -> UInt64 { defib_monotonic_ns() }

extension Duration {
    /// Whole nanoseconds, clamped to 0 for negative durations and to UInt64.max.
    var clampedNanoseconds: UInt64 {
        let (seconds, attoseconds) = components
        if seconds < 0 || (seconds == 0 && attoseconds <= 0) { return 0 }
        let (whole, overflow) = UInt64(seconds).multipliedReportingOverflow(by: 1_000_000_000)
        if overflow { return .max }
        return whole &+ UInt64(attoseconds / 1_000_000_000)
    }

    /// The CLOCK_MONOTONIC deadline this far from now.
    var deadlineFromNow: UInt64 {
        let (deadline, overflow) = monotonicNow().addingReportingOverflow(clampedNanoseconds)
        return overflow ? .max : deadline
    }
}
