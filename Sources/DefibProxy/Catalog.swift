import ParkingLock
import Synchronization

/// What the catalog looked like at one moment, read under its lock (for `/healthz` and `ping`).
public struct CatalogSummary: Sendable, Equatable {
    /// Number of apps.
    public var apps: Int
    /// Number of machines, up or down.
    public var machines: Int
    /// Number of machines up.
    public var machinesUp: Int
    /// The table's version.
    public var version: UInt64
}

/// How one timed catalog update ended.
public enum UpdateOutcome: Sendable, Equatable {
    /// Applied; `changed` is false when the table already said so.
    case applied(changed: Bool)
    /// The update makes no sense against the current table (e.g. `down` of an unknown machine).
    case rejected(CatalogError)
    /// `tryWrite(for:)` gave up waiting for the lock.
    case timedOut
}

/// The routing table behind a parking_lot-faithful `RwLock` named "catalog".
///
/// Readers (request handlers, `ping`, `/healthz`) take the read lock on whatever thread they run on,
/// NIO event loops included: a catalog deadlock stalls the proxy the way it stalled the real one.
/// Updates take the write lock with a timeout (`tryWrite(for:)`) and full reloads take it untimed.
public final class Catalog: @unchecked Sendable {
    /// The lock guarding the table: a real `ParkingLock.RwLock`, visible in `locks` and in a core.
    public let lock: RwLock
    // Only touched with `lock` held (shared for reads, exclusive for writes).
    private var table: CatalogTable
    // Published after every write so `stats` can answer without the lock (it must, during a deadlock).
    private let publishedVersion = Atomic<UInt64>(0)
    private let publishedApps = Atomic<Int>(0)
    private let publishedMachinesUp = Atomic<Int>(0)

    /// A catalog holding `table`. `register` puts its lock in `LockRegistry.shared` (and the flight
    /// recorder); tests that build many catalogs pass false.
    public init(_ table: CatalogTable = CatalogTable(), revert: RevertStrategy = .fixed, register: Bool = true) {
        self.table = table
        lock = RwLock(name: "catalog", revert: revert, register: register)
        publish()
    }

    private func publish() {
        publishedVersion.store(table.version, ordering: .relaxed)
        publishedApps.store(table.appCount, ordering: .relaxed)
        publishedMachinesUp.store(table.machinesUp, ordering: .relaxed)
    }

    /// Picks a backend for `host` (lower-case, no port) under the read lock.
    @inline(__always)
    public func route(host: String) -> RouteDecision {
        lock.read { table.route(host: host) }
    }

    /// Counts under the read lock.
    public func summary() -> CatalogSummary {
        lock.read { CatalogSummary(apps: table.appCount, machines: table.machineCount, machinesUp: table.machinesUp, version: table.version) }
    }

    /// A copy of the table under the read lock (for the churn planner and tests).
    public func snapshot() -> CatalogTable {
        lock.read { table }
    }

    /// The last published counts, read without the lock.
    public var published: (version: UInt64, apps: Int, machinesUp: Int) {
        (publishedVersion.load(ordering: .relaxed), publishedApps.load(ordering: .relaxed), publishedMachinesUp.load(ordering: .relaxed))
    }

    /// The write label for an update, e.g. "catalog.update app=shop machine=m2": what `locks` and a core show.
    public static func updateLabel(_ update: RouteUpdate) -> String {
        "catalog.update app=\(update.app) machine=\(update.machine)"
    }

    /// Applies one update with `tryWrite(for: timeout)`; the caller decides whether to retry a timeout.
    public func apply(_ update: RouteUpdate, timeout: Duration) -> UpdateOutcome {
        let result: Result<Bool, CatalogError>? = lock.tryWrite(for: timeout, label: Self.updateLabel(update)) {
            let r = Result { () throws(CatalogError) -> Bool in try table.apply(update) }
            publish()
            return r
        }
        switch result {
        case nil: return .timedOut
        case let .success(changed)?: return .applied(changed: changed)
        case let .failure(e)?: return .rejected(e)
        }
    }

    /// Replaces the whole table with an untimed `write` (like a Go table reload calling `Lock`).
    public func reload(_ new: CatalogTable) {
        lock.write(label: "catalog.reload") {
            table.replace(with: new)
            publish()
        }
    }

    // MARK: the faulty code shapes (fault injection only)

    /// The leaked-read-guard bug: a request path that takes the read guard and returns early on an
    /// unknown host without releasing it. Harmless until the next writer that waits for readers.
    func routeLeakingReadGuard(host: String) -> RouteDecision {
        lock.lockShared()
        guard let routes = table.apps[host] else {
            return .unknownHost   // the bug: no unlockShared() on this path
        }
        defer { lock.unlockShared() }
        return routes.upCount == 0 ? .noMachineUp(app: host) : table.route(host: host)
    }

    /// The guard-held-across-else bug: `if let m = catalog.read().get(key) { … } else { catalog.write(…) }`
    /// keeps the read guard alive in the else arm, so this thread asks for the write lock while it
    /// still holds a read lock and parks forever waiting for itself.
    func applyHoldingReadGuardAcrossElse(_ update: RouteUpdate) {
        lock.lockShared()
        if let current = table.apps[update.app]?.machines.first(where: { $0.name == update.machine }), matches(current, update) {
            lock.unlockShared()   // nothing to do: the "if" arm drops the guard
            return
        }
        // The "else" arm, with the read guard still alive.
        lock.lockExclusive(label: Self.updateLabel(update))
        _ = try? table.apply(update)
        publish()
        lock.unlockExclusive()
        lock.unlockShared()
    }

    /// The slow-holder bug: an update that, inside its write section, makes a blocking call with no timeout
    /// (a health check of the new backend, say) that does not come back for `holdFor`. Every reader — request
    /// handlers, the control channel's ping — queues behind the live holder.
    func applyHoldingWriteLock(_ update: RouteUpdate, holdFor: Duration, whileHolding: () -> Void = {}) {
        lock.write(label: Self.updateLabel(update) + " (backend health check)") {
            whileHolding()
            sleepNanoseconds(UInt64(holdFor.components.seconds) * 1_000_000_000 + UInt64(holdFor.components.attoseconds / 1_000_000_000))
            _ = try? table.apply(update)
            publish()
        }
    }

    /// The write-then-read bug: an update that, inside its write section, validates the result through the
    /// public read path (`summary()`), which takes the read lock this thread blocks by holding the write lock.
    /// parking_lot's RwLock is not re-entrant: the thread parks waiting for itself.
    func applyValidatingUnderWriteLock(_ update: RouteUpdate, whileHolding: () -> Void = {}) {
        lock.write(label: Self.updateLabel(update) + " (validates the new table)") {
            _ = try? table.apply(update)
            whileHolding()
            _ = summary()   // the bug: a read of the lock this thread holds for writing
            publish()
        }
    }

    private func matches(_ m: Machine, _ u: RouteUpdate) -> Bool {
        switch u {
        case let .up(_, _, address): m.isUp && m.address == address
        case .down: !m.isUp
        }
    }
}
