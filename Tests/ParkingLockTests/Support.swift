import CDefibShims
import Glibc
import ParkingLock
import Synchronization
import Testing

/// The parent of every suite in this target. Serialized: the churn tests need the two cores to
/// themselves, and the flight-recorder tests share `LockRegistry.shared`.
@Suite(.serialized, .timeLimit(.minutes(3))) struct ParkingLockSuite {}

/// A real pthread running `body`. Threads that may park forever (on a deliberately corrupted lock)
/// are simply never joined.
final class TestThread: @unchecked Sendable {
    private final class Box {
        let body: () -> Void
        init(_ body: @escaping () -> Void) { self.body = body }
    }

    private var thread = pthread_t()
    private let finished = Atomic<Bool>(false)

    init(_ body: @escaping @Sendable () -> Void) {
        let box = Box { [self] in
            body()
            self.finished.store(true, ordering: .releasing)
        }
        let rc = pthread_create(&thread, nil, { arg in
            let box = Unmanaged<Box>.fromOpaque(arg!).takeRetainedValue()
            box.body()
            return nil
        }, Unmanaged.passRetained(box).toOpaque())
        precondition(rc == 0, "pthread_create: \(rc)")
    }

    /// Whether `body` has returned.
    var isFinished: Bool { finished.load(ordering: .acquiring) }

    /// Waits for `body` to return; false (and the thread is left alone) if it did not within `timeout`.
    func join(timeout: Duration) -> Bool {
        guard waitUntil(timeout: timeout, { self.isFinished }) else {
            pthread_detach(thread)
            return false
        }
        pthread_join(thread, nil)
        return true
    }

    /// Leaves the thread to run (or park) on its own.
    func detach() { pthread_detach(thread) }
}

/// Runs `body` on a dedicated pthread and awaits it, so that long blocking work (churn, polling)
/// does not sit on a thread of the Swift concurrency pool the other test targets share. Assertions
/// belong after the await: an `#expect` on a foreign thread is not attributed to the test.
func onDedicatedThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        TestThread { continuation.resume(with: Result { try body() }) }.detach()
    }
}

/// Polls `condition` every millisecond until it holds or `timeout` passes.
func waitUntil(timeout: Duration, _ condition: () -> Bool) -> Bool {
    let deadline = defib_monotonic_ns() + UInt64(timeout.components.seconds) * 1_000_000_000
        + UInt64(timeout.components.attoseconds / 1_000_000_000)
    while true {
        if condition() { return true }
        if defib_monotonic_ns() >= deadline { return false }
        sleepFor(.milliseconds(1))
    }
}

/// nanosleep for `duration`.
func sleepFor(_ duration: Duration) {
    let (s, atto) = duration.components
    var request = timespec(tv_sec: Int(s), tv_nsec: Int(atto / 1_000_000_000))
    var remaining = timespec()
    while nanosleep(&request, &remaining) == -1 && errno == EINTR { request = remaining }
}

/// A lock that is never freed: threads parked on a corrupted lock would otherwise touch freed memory.
func leakedLock(_ name: String, revert: RevertStrategy, register: Bool = false) -> RwLock {
    let lock = RwLock(name: name, revert: revert, register: register)
    _ = Unmanaged.passRetained(lock)
    return lock
}

/// A thread-safe counter for worker threads.
final class Counter: Sendable {
    private let value = Atomic<Int>(0)
    func increment() { value.add(1, ordering: .relaxed) }
    var count: Int { value.load(ordering: .relaxed) }
}

/// A flag for telling workers to stop.
final class Flag: Sendable {
    private let value = Atomic<Bool>(false)
    func set() { value.store(true, ordering: .releasing) }
    var isSet: Bool { value.load(ordering: .acquiring) }
}

/// An integer shared with worker threads.
final class SharedInt: Sendable {
    private let storage: Atomic<Int>
    init(_ value: Int) { storage = Atomic(value) }
    var value: Int {
        get { storage.load(ordering: .acquiring) }
    }
    func set(_ value: Int) { storage.store(value, ordering: .releasing) }
}
