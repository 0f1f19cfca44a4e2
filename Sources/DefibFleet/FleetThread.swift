import Foundation
import Synchronization

/// A thread of its own that runs Swift tasks: the shipper's loop and every task it starts (deadline races,
/// PostgresNIO continuations) run here, never on Swift's shared cooperative pool. A supervisor whose other
/// work blocks pool threads (or a test process full of blocking tests) cannot starve shipping, and shipping
/// cannot take a pool thread from anyone. The thread inherits the creator's signal mask (defib blocks its
/// signals before starting it).
public final class FleetThread: TaskExecutor, @unchecked Sendable {
    private let condition = NSCondition()
    private var jobs: [UnownedJob] = []
    private var stopping = false

    /// Starts the thread.
    public init(name: String) {
        let thread = Thread { [self] in loop() }
        thread.name = String(name.prefix(15))
        thread.start()
    }

    /// Queues a job (the TaskExecutor contract).
    public func enqueue(_ job: consuming ExecutorJob) {
        let unowned = UnownedJob(job)
        condition.lock()
        jobs.append(unowned)
        condition.signal()
        condition.unlock()
    }

    /// Lets the thread end once its queue is empty.
    public func shutdown() {
        condition.lock()
        stopping = true
        condition.signal()
        condition.unlock()
    }

    private func loop() {
        while true {
            condition.lock()
            while jobs.isEmpty && !stopping { condition.wait() }
            if jobs.isEmpty { condition.unlock(); return }
            let batch = jobs
            jobs.removeAll(keepingCapacity: true)
            condition.unlock()
            for job in batch { job.runSynchronously(on: asUnownedTaskExecutor()) }
        }
    }

    /// Runs `body` on a new FleetThread and blocks the caller until it is done: how synchronous code (the
    /// CLI, benchmarks, tests) calls the fleet's async API without needing a free thread of the shared pool.
    public static func run<T: Sendable>(name: String = "defib-fleet", _ body: @escaping @Sendable () async throws -> T) throws -> T {
        let executor = FleetThread(name: name)
        defer { executor.shutdown() }
        let result = Mutex<Result<T, any Error>?>(nil)
        let done = DispatchSemaphore(value: 0)
        Task(executorPreference: executor) {
            do { let v = try await body(); result.withLock { $0 = .success(v) } } catch { result.withLock { $0 = .failure(error) } }
            done.signal()
        }
        done.wait()
        return try result.withLock { $0! }.get()
    }
}
