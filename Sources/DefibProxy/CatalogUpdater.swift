import DefibSystem
import Logging
import Synchronization
import FlightRecorder

/// Applies catalog updates, one at a time, on its own thread: each with
/// `catalog.tryWrite(for: updateTimeout, label: "catalog.update app=… machine=…")`, retried on timeout
/// (the shape of the real proxy's update path). Sources (the update stream, the churn generator) only
/// enqueue, so a stuck lock never blocks an event loop through them.
final class CatalogUpdater: @unchecked Sendable {
    private let catalog: Catalog
    private let timeout: Duration
    private let stats: ProxyStats
    private let logger: Logger
    private let queueLimit: Int
    private let condition = ThreadCondition()
    private var queue: [(update: RouteUpdate, source: String)] = []
    private var head = 0
    // What the stream and churn have changed since start, replayed on top of every full reload.
    private let overlay = Mutex<[String: RouteUpdate]>([:])
    private let guardAcrossElseArmed = Atomic<Bool>(false)
    private let started = Atomic<Bool>(false)

    init(catalog: Catalog, timeout: Duration, stats: ProxyStats, logger: Logger, queueLimit: Int = 10_000) {
        self.catalog = catalog; self.timeout = timeout; self.stats = stats; self.logger = logger; self.queueLimit = queueLimit
    }

    /// Starts the updater thread (once).
    func start() {
        guard !started.exchange(true, ordering: .relaxed) else { return }
        startThread(name: "catalog-updates") { [self] in run() }
    }

    /// Queues an update. Returns false (and counts a drop) when the queue is full: the lock is stuck.
    @discardableResult
    func submit(_ update: RouteUpdate, source: String) -> Bool {
        condition.locked {
            if queue.count - head >= queueLimit {
                stats.updatesDropped.wrappingAdd(1, ordering: .relaxed)
                return false
            }
            queue.append((update, source))
            condition.broadcast()
            return true
        }
    }

    /// Updates waiting to be applied.
    var pending: Int { condition.locked { queue.count - head } }

    /// The next update takes the guard-held-across-else code path (fault injection).
    func armGuardAcrossElse() { guardAcrossElseArmed.store(true, ordering: .relaxed) }
    /// Disarms it if no update has taken it yet; returns whether it was still armed.
    func disarmGuardAcrossElse() -> Bool { guardAcrossElseArmed.exchange(false, ordering: .relaxed) }

    /// The stream's and churn's changes, in a stable order, to replay after a reload.
    var overlayUpdates: [RouteUpdate] {
        overlay.withLock { $0.sorted { $0.key < $1.key }.map(\.value) }
    }

    private func next() -> (update: RouteUpdate, source: String) {
        condition.locked {
            while head == queue.count { condition.wait(untilMonotonicNs: nil) }
            let item = queue[head]
            head += 1
            if head > 1024 && head * 2 > queue.count { queue.removeFirst(head); head = 0 }
            return item
        }
    }

    private func run() {
        while true {
            let (update, source) = next()
            if guardAcrossElseArmed.exchange(false, ordering: .relaxed) {
                logger.warning("fault guard-across-else: applying '\(update)' with the read guard held across the else branch")
                catalog.applyHoldingReadGuardAcrossElse(update)
                continue
            }
            apply(update, source: source)
        }
    }

    private func apply(_ update: RouteUpdate, source: String) {
        var attempts = 0
        while true {
            switch catalog.apply(update, timeout: timeout) {
            case .timedOut:
                attempts += 1
                stats.updatesTimedOut.wrappingAdd(1, ordering: .relaxed)
                // Log the first few and then rarely: a stuck lock times out forever.
                if attempts <= 3 || attempts % 100 == 0 {
                    logger.warning("catalog update '\(update)' from \(source): tryWrite timed out (attempt \(attempts), lock word \(LockWord.hex(catalog.lock.rawWord))); retrying")
                }
            case .applied:
                stats.updatesApplied.wrappingAdd(1, ordering: .relaxed)
                overlay.withLock { $0["\(update.app) \(update.machine)"] = update }
                if attempts > 0 { logger.info("catalog update '\(update)' applied after \(attempts) timeout(s)") }
                return
            case let .rejected(error):
                stats.updatesRejected.wrappingAdd(1, ordering: .relaxed)
                logger.warning("catalog update from \(source) rejected: \(error)")
                return
            }
        }
    }
}
