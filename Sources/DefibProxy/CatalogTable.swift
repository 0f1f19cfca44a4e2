import Synchronization

/// One backend machine of an app.
public struct Machine: Sendable, Equatable {
    /// The machine's name, unique within its app.
    public var name: String
    /// Where it listens.
    public var address: BackendAddress
    /// Whether requests may be routed to it.
    public var isUp: Bool

    /// A machine entry.
    public init(name: String, address: BackendAddress, isUp: Bool) {
        self.name = name; self.address = address; self.isUp = isUp
    }
}

/// A round-robin position shared by every copy of an app entry. Advanced with one relaxed atomic
/// add under the catalog's *read* lock, so concurrent requests never need the write lock to pick.
final class RoundRobinCursor: Sendable {
    let next = Atomic<UInt>(0)
    func advance() -> UInt { next.wrappingAdd(1, ordering: .relaxed).oldValue }
}

/// An app: its machines in the order they were first announced, and the cursor.
public struct AppRoutes: Sendable {
    /// Machines in announcement order.
    public private(set) var machines: [Machine] = []
    /// Indices into `machines` of those that are up, kept in step so picking is O(1).
    private(set) var upIndices: [Int] = []
    let cursor = RoundRobinCursor()

    mutating func set(_ machine: Machine) {
        if let i = machines.firstIndex(where: { $0.name == machine.name }) { machines[i] = machine } else { machines.append(machine) }
        upIndices = machines.indices.filter { machines[$0].isUp }
    }

    /// Number of machines that are up.
    public var upCount: Int { upIndices.count }
}

/// Where a request for a host goes.
public enum RouteDecision: Sendable, Equatable {
    /// Forward to this machine.
    case backend(app: String, machine: String, address: BackendAddress)
    /// No app has this name.
    case unknownHost
    /// The app exists but every machine is down.
    case noMachineUp(app: String)
}

/// A catalog update that cannot be applied to the current table.
public struct CatalogError: Error, Equatable, Sendable, CustomStringConvertible {
    /// What class of problem it is.
    public enum Kind: String, Sendable { case unknownApp = "unknown-app", unknownMachine = "unknown-machine" }
    /// The class of problem.
    public var kind: Kind
    /// The update that failed.
    public var update: RouteUpdate
    /// "down shop m9: app 'shop' has no machine 'm9' (known: m1, m2)".
    public var description: String
}

/// The routing table: apps → machines → addresses, with a version counter. A plain value with no
/// locking of its own; `Catalog` puts it behind the RwLock.
public struct CatalogTable: Sendable {
    /// Apps by (lower-case) name.
    public private(set) var apps: [String: AppRoutes] = [:]
    /// Bumped by every update that changed something.
    public private(set) var version: UInt64 = 0

    /// An empty table.
    public init() {}

    /// A table built from `up` statements (a routes file plus `--route` flags).
    public init(_ updates: [RouteUpdate]) throws(CatalogError) {
        for u in updates { try apply(u) }
    }

    /// Applies one statement. Returns whether it changed anything (the version moves only then).
    @discardableResult
    public mutating func apply(_ update: RouteUpdate) throws(CatalogError) -> Bool {
        switch update {
        case let .up(app, name, address):
            let wanted = Machine(name: name, address: address, isUp: true)
            if apps[app]?.machines.first(where: { $0.name == name }) == wanted { return false }
            apps[app, default: AppRoutes()].set(wanted)
        case let .down(app, name):
            guard var routes = apps[app] else {
                throw CatalogError(kind: .unknownApp, update: update,
                                   description: "\(update): no app '\(app)' (known: \(apps.keys.sorted().prefix(10).joined(separator: ", ")))")
            }
            guard var machine = routes.machines.first(where: { $0.name == name }) else {
                throw CatalogError(kind: .unknownMachine, update: update,
                                   description: "\(update): app '\(app)' has no machine '\(name)' (known: \(routes.machines.map(\.name).joined(separator: ", ")))")
            }
            if !machine.isUp { return false }
            machine.isUp = false
            routes.set(machine)
            apps[app] = routes
        }
        version &+= 1
        return true
    }

    /// Replaces the contents with `other`'s, keeping the version monotonic (a reload is one more version).
    public mutating func replace(with other: CatalogTable) {
        let next = version &+ 1
        self = other
        version = next
    }

    /// Round-robin choice among the machines of `host`'s app that are up. `host` must already be
    /// lower-case without a port.
    @inline(__always)
    public func route(host: String) -> RouteDecision {
        guard let routes = apps[host] else { return .unknownHost }
        let up = routes.upIndices
        if up.isEmpty { return .noMachineUp(app: host) }
        let m = routes.machines[up[Int(routes.cursor.advance() % UInt(up.count))]]
        return .backend(app: host, machine: m.name, address: m.address)
    }

    /// Number of apps.
    public var appCount: Int { apps.count }
    /// Number of machines, up or down.
    public var machineCount: Int { apps.values.reduce(0) { $0 + $1.machines.count } }
    /// Number of machines that are up.
    public var machinesUp: Int { apps.values.reduce(0) { $0 + $1.upCount } }
}

/// Picks the churn generator's next flip: a machine of an app with at least two machines goes down
/// if another one stays up, or a down machine comes back up. Never leaves an app with no machine up.
/// Pure: the caller supplies the table and a random source.
public enum ChurnPlanner {
    /// The next update, or nil when no app has two machines (nothing can flip safely).
    public static func next<R: RandomNumberGenerator>(in table: CatalogTable, using rng: inout R) -> RouteUpdate? {
        let candidates = table.apps.filter { $0.value.machines.count >= 2 }.keys.sorted()
        guard let app = candidates.randomElement(using: &rng), let routes = table.apps[app] else { return nil }
        let machine = routes.machines.randomElement(using: &rng)!
        if !machine.isUp { return .up(app: app, machine: machine.name, address: machine.address) }
        if routes.upCount >= 2 { return .down(app: app, machine: machine.name) }
        // The only machine up: bring another one up instead of downing it.
        let down = routes.machines.first { !$0.isUp }!
        return .up(app: app, machine: down.name, address: down.address)
    }
}
