import DefibSystem
import Glibc
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import ParkingLock
import Synchronization
import FlightRecorder

/// The running proxy: event loops, HTTP listeners, control channel, update stream, churn, reloads.
/// `start` is the builder the executable and the tests share.
public final class ProxyServer: @unchecked Sendable {
    /// The routing table and its lock.
    public let catalog: Catalog
    /// Counters.
    public let stats: ProxyStats
    /// Fault injection.
    public let faults: FaultInjector
    /// The event loops serving HTTP and the control channel.
    public let group: MultiThreadedEventLoopGroup
    /// Where HTTP is served (resolved, so `--listen 127.0.0.1:0` shows its port).
    public let httpAddresses: [SocketAddress]
    /// The control socket path, if any.
    public let controlSocket: String?

    private let configuration: ProxyConfiguration
    private let logger: Logger
    private let channels: [Channel]
    private let updater: CatalogUpdater
    private let reloader: CatalogReloader
    private let follower: UpdateFileFollower?
    private let churn: ChurnGenerator?
    private let unixSockets: [String]
    private let stopping = Atomic<Bool>(false)

    private init(configuration: ProxyConfiguration, logger: Logger, catalog: Catalog, stats: ProxyStats, faults: FaultInjector,
                 group: MultiThreadedEventLoopGroup, channels: [Channel], httpAddresses: [SocketAddress], updater: CatalogUpdater,
                 reloader: CatalogReloader, follower: UpdateFileFollower?, churn: ChurnGenerator?, unixSockets: [String]) {
        self.configuration = configuration; self.logger = logger; self.catalog = catalog; self.stats = stats
        self.faults = faults; self.group = group; self.channels = channels; self.httpAddresses = httpAddresses
        self.updater = updater; self.reloader = reloader; self.follower = follower; self.churn = churn
        self.unixSockets = unixSockets; controlSocket = configuration.controlSocket
    }

    /// Builds and starts everything; on failure nothing is left running.
    public static func start(_ config: ProxyConfiguration, logger: Logger) throws(ProxyStartError) -> ProxyServer {
        func configuration(_ e: some Error) -> ProxyStartError { ProxyStartError(kind: .configuration, message: "\(e)") }
        do { try config.validate() } catch { throw configuration(error) }

        // Routes: flags then file; any problem is fatal at startup (file:line in the message).
        let flagRoutes: [RouteUpdate]
        let table: CatalogTable
        do {
            flagRoutes = try RouteGrammar.parseRouteFlags(config.routeFlags)
            let fileRoutes = try config.routesFile.map { path throws(RouteError) in try RouteGrammar.parseRoutesFile(atPath: path) } ?? []
            table = try CatalogTable(flagRoutes + fileRoutes)
        } catch {
            throw configuration(error)
        }

        let flightRecorder = openFlightRecorder(logger: logger)
        let catalog = Catalog(table, revert: config.revert, register: config.registerLock)
        let stats = ProxyStats()
        Ballast.allocate(megabytes: config.ballastMB)
        Ballast.startIdleThreads(config.extraThreads)

        let updater = CatalogUpdater(catalog: catalog, timeout: config.updateTimeout, stats: stats, logger: logger)
        let faults = FaultInjector(catalog: catalog, updater: updater, logger: logger)
        let group = MultiThreadedEventLoopGroup(numberOfThreads: config.eventLoopThreads)
        var channels: [Channel] = []
        var unixSockets: [String] = []
        func fail(_ error: ProxyStartError) -> ProxyStartError {
            for c in channels { try? c.close().wait() }
            try? group.syncShutdownGracefully()
            for path in unixSockets { unlink(path) }
            return error
        }

        // HTTP.
        let env = ProxyContext(catalog: catalog, stats: stats, faults: faults, group: group, flightRecorderPath: flightRecorder,
                               connectTimeout: .milliseconds(Int64(config.connectTimeoutMs)),
                               responseTimeout: .milliseconds(Int64(config.responseTimeoutMs)),
                               maxRequestBody: config.maxRequestBodyBytes, logger: logger)
        let http = ServerBootstrap(group: group)
            .serverChannelOption(ChannelOptions.backlog, value: 512)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(ChannelOptions.tcpOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                    try channel.pipeline.syncOperations.addHandler(HTTPProxyHandler(env))
                }
            }
        var httpAddresses: [SocketAddress] = []
        if config.listen != nil && !config.passedSockets.isEmpty {
            logger.warning("--listen given: the \(config.passedSockets.count) socket(s) passed by the parent (LISTEN_FDS: \(config.passedSockets.map(\.name).joined(separator: ", "))) are not used")
        }
        if let listen = config.listen {
            do {
                let channel = try http.bind(host: listen.host, port: listen.port).wait()
                channels.append(channel)
                if let a = channel.localAddress { httpAddresses.append(a) }
            } catch {
                throw fail(ProxyStartError(kind: .bind, message: "bind(\(listen)): \(error)"))
            }
        } else {
            for socket in config.passedSockets {
                do {
                    let channel = try http.withBoundSocket(socket.fd).wait()
                    channels.append(channel)
                    if let a = channel.localAddress { httpAddresses.append(a) }
                } catch {
                    throw fail(ProxyStartError(kind: .bind, message: "adopting passed socket fd \(socket.fd) ('\(socket.name)'): \(error)"))
                }
            }
        }

        // Control channel, on the same event loops as HTTP: a dead loop silences it too.
        if let path = config.controlSocket {
            do {
                channels.append(try bindUnixLineServer(path: path, group: group) { ControlHandler(env) })
                unixSockets.append(path)
            } catch {
                throw fail(ProxyStartError(kind: .socket, message: "control socket \(path): \(error)"))
            }
        }

        // Update sources.
        var follower: UpdateFileFollower?
        switch config.updates {
        case let .file(path)?:
            follower = UpdateFileFollower(path: path, updater: updater, logger: logger)
        case let .unixSocket(path)?:
            do {
                channels.append(try bindUnixLineServer(path: path, group: group) {
                    UpdateSocketHandler(updater: updater, logger: logger, source: "unix:\(path)")
                })
                unixSockets.append(path)
            } catch {
                throw fail(ProxyStartError(kind: .socket, message: "updates socket \(path): \(error)"))
            }
        case nil: break
        }
        let churn = config.churnRate > 0 ? ChurnGenerator(catalog: catalog, updater: updater, rate: config.churnRate) : nil
        let reloader = CatalogReloader(catalog: catalog, updater: updater, routesFile: config.routesFile, routeFlags: flagRoutes,
                                       intervalMs: config.reloadIntervalMs, stats: stats, logger: logger)
        updater.start()
        reloader.start()
        follower?.start()
        churn?.start()

        let server = ProxyServer(configuration: config, logger: logger, catalog: catalog, stats: stats, faults: faults, group: group,
                                 channels: channels, httpAddresses: httpAddresses, updater: updater, reloader: reloader,
                                 follower: follower, churn: churn, unixSockets: unixSockets)
        logger.info("defib-proxy pid \(getpid()) serving HTTP on \(httpAddresses.map { "\($0)" }.joined(separator: ", ")); catalog: \(table.appCount) apps, \(table.machineCount) machines; control: \(config.controlSocket ?? "none"); revert: \(config.revert.rawValue)")
        if let kind = config.fault { server.armAtStart(kind, afterMs: config.faultDelayMs) }
        return server
    }

    private static func openFlightRecorder(logger: Logger) -> String? {
        do {
            guard let writer = try FlightRecorderWriter.openFromEnvironment() else { return nil }
            logger.info("flight recorder at \(writer.path)")
            return writer.path
        } catch {
            // The recorder is evidence for the supervisor, not a reason to refuse to serve.
            logger.error("flight recorder not opened: \(error)")
            return nil
        }
    }

    /// A Unix stream socket server for a line protocol: the directory is created 0700 if missing, a stale
    /// socket file is removed, and the socket is made 0600.
    static func bindUnixLineServer(path: String, group: EventLoopGroup,
                                   handler: @escaping @Sendable () -> any ChannelHandler) throws -> Channel {
        try makePrivateDirectory(parentDirectory(path))
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(ChannelOptions.backlog, value: 64)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(LineFrameDecoder(maxLength: ControlCommand.maxLineBytes)))
                    try channel.pipeline.syncOperations.addHandler(handler())
                }
            }
        // The socket file is created by bind(2) with the umask; make it private from the first instant.
        let previous = umask(0o177)
        defer { umask(previous) }
        let channel = try bootstrap.bind(unixDomainSocketPath: path, cleanupExistingSocketFile: true).wait()
        if chmod(path, 0o600) != 0 { throw SystemError("chmod(\(path), 0600)") }
        return channel
    }

    private func armAtStart(_ kind: FaultKind, afterMs: Int) {
        let faults = self.faults, group = self.group
        startThread(name: "fault-at-start") {
            if afterMs > 0 { sleepNanoseconds(UInt64(afterMs) * 1_000_000) }
            let (_, followUp) = faults.arm(kind)
            switch followUp {
            case .none: break
            case let .terminate(k): FaultInjector.terminate(k)
            case .spinEventLoops: FaultInjector.spinForever(on: group)
            }
        }
    }

    /// Runs a full reload now (SIGHUP): an untimed catalog write.
    public func reloadNow() { reloader.requestReload() }

    /// Stops accepting, closes connections and the event loops. Returns false when that did not finish
    /// within `timeoutMs` (event loops stuck in a fault); the sockets' files are removed either way.
    @discardableResult
    public func shutdown(timeoutMs: Int = 2000) -> Bool {
        guard !stopping.exchange(true, ordering: .relaxed) else { return true }
        follower?.stop(); churn?.stop(); reloader.stop()
        for path in unixSockets { unlink(path) }
        let done = ThreadEvent()
        let channels = self.channels, group = self.group
        startThread(name: "proxy-shutdown") {
            for c in channels { try? c.close().wait() }
            try? group.syncShutdownGracefully()
            done.set()
        }
        let finished = done.wait(timeoutNs: Int64(timeoutMs) * 1_000_000)
        if !finished { logger.warning("shutdown did not finish within \(timeoutMs) ms (event loops blocked: catalog lock word \(LockWord.hex(catalog.lock.rawWord)))") }
        return finished
    }
}

/// `--ballast` and `--extra-threads`: grow the process like a big proxy for core-capture benchmarks.
enum Ballast {
    nonisolated(unsafe) private static var blocks: [UnsafeMutableRawPointer] = []
    private static let idle = ThreadCondition()

    /// Allocates and touches `megabytes` MiB (one page at a time, so it is resident, not just reserved).
    static func allocate(megabytes: Int) {
        guard megabytes > 0 else { return }
        for _ in 0..<megabytes {
            guard let p = malloc(1 << 20) else { break }
            // Non-zero so pages cannot be shared zero pages.
            memset(p, 0xA5, 1 << 20)
            blocks.append(p)
        }
    }

    /// Starts `count` threads that wait on a condition nobody signals.
    static func startIdleThreads(_ count: Int) {
        for i in 0..<count {
            startThread(name: "idle-\(i)") {
                idle.locked { while true { idle.wait(untilMonotonicNs: nil) } }
            }
        }
    }
}
