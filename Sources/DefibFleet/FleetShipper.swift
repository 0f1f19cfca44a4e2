import DefibCore
import DefibStore
import Foundation
import Logging
import Metrics
import NIOCore
import NIOPosix
import Synchronization

/// What the shipper is doing, for STATUS= and `/metrics`.
public struct FleetShipperStatus: Sendable, Equatable {
    /// Changes recorded locally and not yet committed by the fleet database.
    public var backlog = 0
    /// Changes the fleet database has committed since start.
    public var shipped = 0
    /// The last failure, while it lasts (nil once a shipment succeeds).
    public var lastError: String?
    /// When the current run of failures began.
    public var failingSince: Date?
    /// Fleet events this host recorded since start.
    public var events = 0

    /// What defib's STATUS= line shows of it (`fleet: 0 pending` or `fleet: 12 pending, failing: …`).
    public var report: ShippingReport { ShippingReport(pending: backlog, failing: lastError) }
}

/// Ships the local store's outbox to the fleet database, forever, on its own task and event loop: never
/// on the supervision loop, which only writes incidents (and with them their outbox rows) as it always did.
///
/// At least once: a change is acknowledged (and later deleted from the outbox) only after the database
/// committed it; a crash in between ships it again, which the upsert's version check makes harmless. A
/// database that is down, slow or partitioned away costs retries with backoff (0.5 s doubling to 5 s, ±20 %),
/// a bounded wait per operation (the connection is closed when it runs out), and a growing backlog in the
/// outbox — reported as `defib_fleet_backlog` and in STATUS= — never a delay of the supervisor.
public final class FleetShipper: Sendable {
    /// How the shipper is set up.
    public struct Settings: Sendable {
        /// Where to ship.
        public var endpoint: FleetEndpoint
        /// This host's name in the fleet.
        public var host: String
        /// /etc/machine-id, when present.
        public var machineID: String?
        /// When a signature on many hosts is a fleet event.
        public var alert: FleetAlertRule
        /// Changes per transaction.
        public var batchSize = 1000
        /// How often an idle shipper looks for new changes.
        public var pollInterval: Duration = .milliseconds(250)
        /// Longest any one database operation may take before the connection is dropped.
        public var operationDeadlineSeconds: Double = 20
        /// An idle connection is closed after this long: a fleet of quiet hosts holds no connections, and
        /// the database's max_connections bounds only hosts shipping at the same moment.
        public var idleCloseSeconds: Double = 30

        /// Settings from `[fleet]` (password resolved now: a bad password file is a configuration error).
        public init(_ fleet: FleetSettings, environment: [String: String] = ProcessInfo.processInfo.environment) throws {
            host = FleetHostIdentity.name(configured: fleet.host)
            endpoint = try FleetEndpoint(url: fleet.url, passwordFile: fleet.passwordFile,
                                         applicationName: "defib-fleet \(host)", environment: environment)
            machineID = FleetHostIdentity.machineID()
            alert = FleetAlertRule(hosts: fleet.alertHosts, windowSeconds: fleet.alertWindowSeconds)
        }

        /// Settings given piece by piece (benchmarks, tests).
        public init(endpoint: FleetEndpoint, host: String, machineID: String?, alert: FleetAlertRule) {
            self.endpoint = endpoint; self.host = host; self.machineID = machineID; self.alert = alert
        }
    }

    let store: IncidentStore
    /// The settings it ships with.
    public let settings: Settings
    let logger: Logger
    private let state = Mutex(FleetShipperStatus())
    private let cursor = Mutex<Int64>(0)
    /// Set by `stop`: ship what is pending until then, then end.
    private let stopBy = Mutex<Date?>(nil)
    private let finished = DispatchSemaphore(value: 0)
    private let started = Atomic<Bool>(false)
    private let storeID: String
    private let backlogGauge: Gauge
    private let shippedCounter: Counter
    private let failureCounter: Counter
    private let eventCounter: Counter

    /// A shipper for `store` (not started).
    public init(store: IncidentStore, settings: Settings, logger: Logger) throws {
        self.store = store; self.settings = settings; self.logger = logger
        do { storeID = try store.fleetStoreID() } catch { throw FleetError(.store, "read the local store", "\(error)") }
        let dims = [("host", settings.host)]
        backlogGauge = Gauge(label: "defib_fleet_backlog", dimensions: dims)
        shippedCounter = Counter(label: "defib_fleet_shipped_total", dimensions: dims)
        failureCounter = Counter(label: "defib_fleet_ship_failures_total", dimensions: dims)
        eventCounter = Counter(label: "defib_fleet_events_total", dimensions: dims)
    }

    /// A snapshot of what it is doing (cheap: a lock and a copy; safe from the supervision loop).
    public var status: FleetShipperStatus { state.withLock { $0 } }

    // MARK: Running in the background

    /// Starts shipping in the background (once): its loop on a `FleetThread`, its connection on an event loop
    /// thread of its own.
    public func start() {
        guard !started.exchange(true, ordering: .relaxed) else { return }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let thread = FleetThread(name: "defib-fleet")
        Task(executorPreference: thread) { [self] in
            await run(on: group.next())
            try? await group.shutdownGracefully()
            thread.shutdown()
            finished.signal()
        }
    }

    /// Stops: one last attempt to ship what is pending, bounded by `flushWithin`, then returns. What is not
    /// shipped stays in the outbox for the next start.
    public func stop(flushWithin: Duration = .seconds(3)) {
        guard started.load(ordering: .relaxed) else { return }
        let seconds = Double(flushWithin.components.seconds) + Double(flushWithin.components.attoseconds) / 1e18
        stopBy.withLock { $0 = Date().addingTimeInterval(seconds) }
        if finished.wait(timeout: .now() + seconds + 1) == .timedOut {
            logger.warning("fleet shipper: still busy after \(seconds) s at shutdown; \(status.backlog) change(s) stay in the outbox for the next start")
        }
    }

    private func run(on eventLoop: any EventLoop) async {
        var connection: FleetConnection?
        var backoff = FleetBackoff()
        var lastBacklogCount = Date.distantPast
        var lastFailureLog = Date.distantPast
        var lastUsed = Date()
        // Set once a pass found nothing to ship; the first pass connects whatever the backlog, so a database
        // that cannot be reached or used is reported at start-up rather than at the first incident.
        var idle = false
        logger.info("fleet: shipping incidents to \(settings.endpoint.url) as host '\(settings.host)'")
        while true {
            let stopDeadline = stopBy.withLock { $0 }
            if let stopDeadline, Date() >= stopDeadline { break }
            do {
                if idle {
                    refreshBacklog()
                    if status.backlog == 0 {
                        if stopDeadline != nil { break }   // nothing left to flush
                        if let c = connection, Date().timeIntervalSince(lastUsed) > settings.idleCloseSeconds {
                            await c.close()
                            connection = nil
                        }
                        try? await Task.sleep(for: settings.pollInterval)
                        continue
                    }
                }
                if connection == nil || connection!.isClosed {
                    await connection?.close()
                    connection = nil
                    let c = try await FleetConnection.open(settings.endpoint, logger: quietLogger, on: eventLoop)
                    do { try await FleetSchema.checkShippable(c) } catch { await c.close(); throw error }
                    connection = c
                }
                let shipped = try await shipBatch(on: connection!)
                lastUsed = Date()
                idle = shipped == 0
                if backoff.failures > 0 {
                    logger.info("fleet: database reachable again; shipping the backlog (\(status.backlog) pending)")
                }
                backoff.succeeded()
                state.withLock { $0.lastError = nil; $0.failingSince = nil }
                if Date().timeIntervalSince(lastBacklogCount) > 2 {
                    refreshBacklog()
                    lastBacklogCount = Date()
                }
            } catch {
                await connection?.close()
                connection = nil
                idle = false
                let message = (error as? FleetError)?.description ?? "\(error)"
                failureCounter.increment()
                let firstOrChanged = state.withLock { s -> Bool in
                    let changed = s.lastError != message
                    s.lastError = message
                    if s.failingSince == nil { s.failingSince = Date() }
                    return changed
                }
                refreshBacklog()
                if firstOrChanged || Date().timeIntervalSince(lastFailureLog) > 60 {
                    logger.warning("fleet: \(message); \(status.backlog) change(s) wait in the outbox, retrying")
                    lastFailureLog = Date()
                }
                if stopDeadline != nil { break }
                let wait = backoff.failed(random: Double.random(in: 0..<1))
                var waited = 0
                while waited < wait && stopBy.withLock({ $0 }) == nil {
                    try? await Task.sleep(for: .milliseconds(min(100, wait - waited)))
                    waited += 100
                }
            }
        }
        await connection?.close()
        pruneAcknowledged()
    }

    /// PostgresNIO logs every connection failure at error level itself; ours already says it once.
    private var quietLogger: Logger {
        var l = logger
        l.logLevel = .critical
        return l
    }

    // MARK: Shipping

    /// Ships every pending change over `connection` (a benchmark's or a one-off command's), returning how
    /// many changes it shipped.
    @discardableResult
    public func drain(on connection: FleetConnection) async throws -> Int {
        var total = 0
        while true {
            let n = try await shipBatch(on: connection)
            if n == 0 { break }
            total += n
        }
        pruneAcknowledged()
        refreshBacklog()
        return total
    }

    /// Ships one batch; returns how many outbox entries it covered (0: nothing pending).
    func shipBatch(on connection: FleetConnection) async throws -> Int {
        let after = cursor.withLock { $0 }
        let entries: [IncidentStore.OutboxEntry]
        do { entries = try store.outboxBatch(after: after, limit: settings.batchSize) } catch {
            throw FleetError(.store, "read the outbox", "\(error)")
        }
        guard let last = entries.last else { return 0 }
        let rows = entries.compactMap { e in
            e.incident.map { FleetIncidentRow(incident: $0, version: e.version, host: settings.host, storeID: storeID, machineID: settings.machineID) }
        }
        let result = try await FleetWriter.ship(rows, on: connection, alert: settings.alert, raisedBy: settings.host,
                                                deadlineSeconds: settings.operationDeadlineSeconds)
        store.acknowledgeOutbox(entries.map(\.version))
        cursor.withLock { $0 = max($0, last.version) }
        shippedCounter.increment(by: entries.count)
        state.withLock { $0.shipped += entries.count; $0.events += result.events.count }
        for event in result.events {
            eventCounter.increment()
            logger.critical("\(event.summary)", metadata: ["fleet_event": "\(event.id)", "signature": "\(event.signature)",
                                                           "suspect": "\(event.suspect ?? "")", "hosts": "\(event.hosts)"])
        }
        logger.debug("fleet: shipped \(entries.count) change(s): \(result.inserted) new, \(result.updated) updated, \(result.unchanged) already there")
        return entries.count
    }

    /// Deletes the acknowledged outbox rows now: only when the shipper stops (the supervisor is done) or a
    /// one-off drain ends. While supervising it never writes to the store itself: its acknowledgements are
    /// deleted inside the supervisor's own incident writes (a few rows each), so the supervisor's write never
    /// waits for a transaction of the shipper's. Rows acknowledged but not yet deleted are tiny, never read again
    /// by this shipper (its cursor is past them), and shipped once more after a restart at worst (harmlessly).
    private func pruneAcknowledged() {
        guard store.acknowledgedOutbox.count > 0 else { return }
        do { try store.pruneAcknowledgedOutbox() } catch {
            logger.warning("fleet: could not prune the outbox (the rows ship again after a restart, harmlessly): \(error)")
        }
    }

    private func refreshBacklog() {
        let after = cursor.withLock { $0 }
        guard let backlog = try? store.outboxBacklog(after: after) else { return }
        state.withLock { $0.backlog = backlog.count }
        backlogGauge.record(backlog.count)
    }
}

extension FleetShipper: ShippingReporter {
    /// The backlog and the failure, for the supervisor's STATUS= (a lock and a copy: never blocks the loop).
    public var shippingReport: ShippingReport { status.report }
}
