import ParkingLock

/// Everything `ProxyServer.start` needs; the executable fills it from flags and the environment.
public struct ProxyConfiguration: Sendable {
    /// `--listen HOST:PORT` (port 0 picks a free port; see `ProxyServer.httpAddresses`).
    public var listen: BackendAddress?
    /// Sockets passed by the parent (LISTEN_FDS), used when `listen` is nil.
    public var passedSockets: [PassedSocket] = []
    /// `--routes FILE`: `up` lines.
    public var routesFile: String?
    /// `--route APP=HOST:PORT`, repeatable.
    public var routeFlags: [String] = []
    /// `--updates PATH|unix:PATH`.
    public var updates: UpdateSource?
    /// Timeout of each `tryWrite(for:)` of an update (retried on timeout).
    public var updateTimeout: Duration = .milliseconds(200)
    /// `--churn RATE`: built-in updates per second (0 = off).
    public var churnRate: Double = 0
    /// `--race-churn`: from the start, timeout-race-natural's readers and timed writer on the `--revert` given
    /// (with `fixed`, writers time out constantly and the word never corrupts: a control for false proofs).
    public var raceChurn = false
    /// `--reload-interval MS`: periodic full reload with an untimed write (0 = only on SIGHUP).
    public var reloadIntervalMs: Int = 5000
    /// `--control-socket PATH` or `DEFIB_CONTROL_SOCKET`; nil = no control channel.
    public var controlSocket: String?
    /// `--fault KIND` or `DEFIB_FAULT`: armed once serving.
    public var fault: FaultKind?
    /// `--fault-after MS`: delay before arming `fault` (lets a supervisor see the proxy healthy first).
    public var faultDelayMs: Int = 0
    /// `--revert`: the catalog lock's timeout revert.
    public var revert: RevertStrategy = .fixed
    /// Event loop threads (HTTP and control share them).
    public var eventLoopThreads: Int = 2
    /// `--ballast MB`: heap allocated and touched at start.
    public var ballastMB: Int = 0
    /// `--extra-threads N`: idle threads parked in a condition wait.
    public var extraThreads: Int = 0
    /// Backend connect timeout.
    public var connectTimeoutMs: Int = 2000
    /// Time a backend has to send its response head.
    public var responseTimeoutMs: Int = 30_000
    /// Largest request body forwarded (aggregated); larger gets 413.
    public var maxRequestBodyBytes: Int = 8 << 20
    /// Register the catalog lock in `LockRegistry.shared` (tests running several proxies pass false).
    public var registerLock = true

    /// Defaults; set at least `listen` (or `passedSockets`) and some routes.
    public init() {}

    /// Checks ranges and combinations; the error names the option and value.
    public func validate() throws(ProxyConfigError) {
        if listen == nil && passedSockets.isEmpty {
            throw ProxyConfigError(option: "--listen", value: "", problem: "nothing to listen on: give --listen HOST:PORT, or start under a supervisor that passes sockets (LISTEN_FDS)")
        }
        if churnRate < 0 || churnRate > 100_000 || churnRate.isNaN { throw ProxyConfigError(option: "--churn", value: "\(churnRate)", problem: "must be 0…100000 updates per second") }
        if reloadIntervalMs < 0 { throw ProxyConfigError(option: "--reload-interval", value: "\(reloadIntervalMs)", problem: "must be ≥ 0 ms (0 disables)") }
        if updateTimeout <= .zero { throw ProxyConfigError(option: "--update-timeout", value: "\(updateTimeout)", problem: "must be > 0") }
        if eventLoopThreads < 1 || eventLoopThreads > 256 { throw ProxyConfigError(option: "--threads", value: "\(eventLoopThreads)", problem: "must be 1…256") }
        if ballastMB < 0 || ballastMB > 1 << 20 { throw ProxyConfigError(option: "--ballast", value: "\(ballastMB)", problem: "must be 0…1048576 MB") }
        if extraThreads < 0 || extraThreads > 4096 { throw ProxyConfigError(option: "--extra-threads", value: "\(extraThreads)", problem: "must be 0…4096") }
        if faultDelayMs < 0 { throw ProxyConfigError(option: "--fault-after", value: "\(faultDelayMs)", problem: "must be ≥ 0 ms") }
        if let controlSocket {
            if controlSocket.isEmpty { throw ProxyConfigError(option: "--control-socket", value: controlSocket, problem: "empty path") }
            if controlSocket.utf8.count > maxUnixSocketPath {
                throw ProxyConfigError(option: "--control-socket", value: controlSocket, problem: "longer than \(maxUnixSocketPath) bytes (the Unix socket limit)")
            }
        }
    }
}

/// A bad option value.
public struct ProxyConfigError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The option (or environment variable).
    public var option: String
    /// The value given.
    public var value: String
    /// What is wrong with it.
    public var problem: String

    /// A bad option value.
    public init(option: String, value: String, problem: String) { self.option = option; self.value = value; self.problem = problem }

    /// "--churn '-1': must be …".
    public var description: String { value.isEmpty ? "\(option): \(problem)" : "\(option) '\(value)': \(problem)" }
}

/// Why the proxy could not start. `exitCode` is 2 for configuration problems, 1 for the rest.
public struct ProxyStartError: Error, Sendable, CustomStringConvertible {
    /// The class of problem.
    public enum Kind: String, Sendable {
        /// Bad flags, routes or environment: exit 2.
        case configuration
        /// A socket could not be bound or adopted.
        case bind
        /// The control or updates socket could not be set up.
        case socket
    }
    /// The class of problem.
    public var kind: Kind
    /// What failed, naming the file, address or call.
    public var message: String
    /// The process exit code for this failure.
    public var exitCode: Int32 { kind == .configuration ? 2 : 1 }
    /// The message.
    public var description: String { message }
}
