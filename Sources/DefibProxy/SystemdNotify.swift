import DefibSystem
import Glibc
import Logging

/// What systemd's notify protocol asks of this process, read from its environment (`--sd-notify`).
public struct SystemdNotifySettings: Sendable, Equatable {
    /// NOTIFY_SOCKET: a path, or `@name` for the abstract namespace.
    public var socketPath: String
    /// WATCHDOG_USEC when it is meant for us (WATCHDOG_PID absent or ours): keep-alives are due every half of it.
    public var watchdogUsec: UInt64?

    /// Settings for `socketPath`, with keep-alives when `watchdogUsec` is given.
    public init(socketPath: String, watchdogUsec: UInt64? = nil) {
        self.socketPath = socketPath; self.watchdogUsec = watchdogUsec
    }

    /// The keep-alive period: half of WATCHDOG_USEC, as sd_watchdog_enabled(3) recommends.
    public var keepAliveIntervalNs: UInt64? { watchdogUsec.map { $0 * 500 } }

    /// sd_notify(3) and sd_watchdog_enabled(3) as a pure function of the environment and our pid: nil without
    /// NOTIFY_SOCKET (not started by a notify-aware manager); no keep-alives without WATCHDOG_USEC or when
    /// WATCHDOG_PID names another process (the variables leaked from an ancestor).
    public static func parse(environment: [String: String], pid: Int32) throws(ProxyConfigError) -> SystemdNotifySettings? {
        guard let socket = environment["NOTIFY_SOCKET"], !socket.isEmpty else { return nil }
        guard socket.hasPrefix("/") || socket.hasPrefix("@") else {
            throw ProxyConfigError(option: "NOTIFY_SOCKET", value: socket, problem: "expected an absolute path or @abstract-name")
        }
        guard socket.utf8.count <= maxUnixSocketPath else {
            throw ProxyConfigError(option: "NOTIFY_SOCKET", value: socket, problem: "longer than \(maxUnixSocketPath) bytes (the Unix socket limit)")
        }
        var settings = SystemdNotifySettings(socketPath: socket)
        guard let usecText = environment["WATCHDOG_USEC"] else { return settings }
        guard let usec = UInt64(usecText), usec > 0 else {
            throw ProxyConfigError(option: "WATCHDOG_USEC", value: usecText, problem: "expected a positive number of microseconds")
        }
        if let pidText = environment["WATCHDOG_PID"] {
            guard let watchdogPid = Int32(pidText), watchdogPid > 0 else {
                throw ProxyConfigError(option: "WATCHDOG_PID", value: pidText, problem: "not a process id")
            }
            if watchdogPid != pid { return settings }
        }
        settings.watchdogUsec = usec
        return settings
    }

    /// Reads NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID of this process.
    public static func fromEnvironment() throws(ProxyConfigError) -> SystemdNotifySettings? {
        var env: [String: String] = [:]
        for name in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
            if let value = getenv(name) { env[name] = String(cString: value) }
        }
        return try parse(environment: env, pid: getpid())
    }
}

/// Sends sd_notify datagrams from this process: READY=1 once serving, then WATCHDOG=1 from a thread that first
/// reads the catalog under its read lock. A catalog deadlock therefore silences the keep-alives, and systemd's
/// `WatchdogSec=` sees the hang — the same evidence of life defib's `ping` asks for.
public final class ProxyNotifier: @unchecked Sendable {
    /// What it was started with.
    public let settings: SystemdNotifySettings
    private let fd: Int32
    private let logger: Logger

    /// A datagram socket for `settings.socketPath` (not yet used).
    public init(settings: SystemdNotifySettings, logger: Logger) throws(SystemError) {
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        if fd < 0 { throw SystemError("socket(AF_UNIX, SOCK_DGRAM)") }
        self.fd = fd; self.settings = settings; self.logger = logger
    }

    deinit { close(fd) }

    /// Sends one message (e.g. "READY=1"). The sender's credentials are the kernel's: a thread of this process
    /// sends as its pid, so systemd's NotifyAccess=main accepts it.
    public func send(_ message: String) throws(SystemError) {
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        var path = Array(settings.socketPath.utf8)
        // "@name" is the abstract namespace: a leading NUL and no terminator counted in the length.
        if path.first == UInt8(ascii: "@") { path[0] = 0 }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in for (i, b) in path.enumerated() { raw[i] = b } }
        let length = socklen_t(MemoryLayout<sa_family_t>.size + path.count + (path.first == 0 ? 0 : 1))
        let bytes = Array(message.utf8)
        let sent = withUnsafePointer(to: &addr) { a in
            a.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                retryingEINTR { sendto(fd, bytes, bytes.count, Int32(MSG_NOSIGNAL), sa, length) }
            }
        }
        if sent != bytes.count { throw SystemError("sendto(NOTIFY_SOCKET \(settings.socketPath), \(message))") }
    }

    /// READY=1 now and, when WATCHDOG_USEC asks for them, keep-alives from the "sd-watchdog" thread for the rest
    /// of the process's life: every WATCHDOG_USEC/2 it reads the catalog (read lock) and then sends WATCHDOG=1.
    public func start(catalog: Catalog) {
        do { try send("READY=1") } catch {
            // The manager decides what a missing READY=1 means (a start timeout); serving goes on.
            logger.error("sd_notify READY=1: \(error)")
        }
        guard let intervalNs = settings.keepAliveIntervalNs else {
            logger.info("sd_notify: READY=1 sent to \(settings.socketPath); no WATCHDOG_USEC for this process, so no keep-alives")
            return
        }
        logger.info("sd_notify: READY=1 sent to \(settings.socketPath); WATCHDOG=1 every \(intervalNs / 1_000_000) ms after a catalog read")
        startThread(name: "sd-watchdog") { [self] in
            var failing = false
            while true {
                sleepNanoseconds(intervalNs)
                // The read lock on purpose: if the catalog is wedged, this thread parks here and systemd stops hearing us.
                _ = catalog.summary()
                do {
                    try send("WATCHDOG=1")
                    if failing { logger.notice("sd_notify WATCHDOG=1 delivered again"); failing = false }
                } catch {
                    if !failing { logger.error("sd_notify WATCHDOG=1: \(error)") }
                    failing = true
                }
            }
        }
    }
}
