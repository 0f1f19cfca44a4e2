import ArgumentParser
import DefibProxy
import Glibc
import Logging
import ParkingLock

/// `defib-proxy`: the reference service defib supervises. Flags map one-to-one onto `ProxyConfiguration`.
struct DefibProxyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "defib-proxy",
        abstract: "An HTTP/1.1 reverse proxy routing by Host through a catalog behind a parking_lot-faithful RwLock, with lock-bug fault injection.",
        discussion: """
        Route grammar (routes file, update stream): 'up APP MACHINE HOST:PORT' / 'down APP MACHINE', one per line, '#' comments.
        Without --listen it serves on sockets passed by its parent (LISTEN_PID/LISTEN_FDS/LISTEN_FDNAMES).
        Control channel (line protocol): ping [token], locks, stats, fault KIND, help.
        Faults: \(FaultKind.names).
        Signals: SIGTERM/SIGINT shut down gracefully; SIGHUP reloads the routes (an untimed catalog write).
        """,
        version: DefibVersion.string)

    @Option(help: "Address to listen on, HOST:PORT (default: sockets passed via LISTEN_FDS).")
    var listen: String?

    @Option(help: "Routes file: 'up APP MACHINE HOST:PORT' lines.")
    var routes: String?

    @Option(name: .customLong("route"), help: "APP=HOST:PORT (repeatable; machines are named m1, m2, …).")
    var routeFlags: [String] = []

    @Option(help: "Update stream: a file followed like tail -F, or unix:PATH (a socket accepting update lines).")
    var updates: String?

    @Option(help: "Timeout of each update's tryWrite, in ms (retried on timeout).")
    var updateTimeout: Int = 200

    @Option(help: "Built-in churn: updates per second flipping machines down/up (0 = off).")
    var churn: Double = 0

    @Option(help: "Full reload period in ms, an untimed catalog write (0 = only on SIGHUP).")
    var reloadInterval: Int = 5000

    @Option(help: "Control socket path (default: $DEFIB_CONTROL_SOCKET; none when neither is set).")
    var controlSocket: String?

    @Option(help: "Fault to arm once serving (default: $DEFIB_FAULT): \(FaultKind.names).")
    var fault: String?

    @Option(help: "Delay before arming --fault, in ms.")
    var faultAfter: Int = 0

    @Option(help: "The catalog lock's timeout revert: buggy (parking_lot 0.8.0–0.12.3) or fixed (0.12.4).")
    var revert: String = "fixed"

    @Option(help: "Event loop threads (HTTP and control share them).")
    var threads: Int = max(2, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))))

    @Option(help: "Allocate and touch this many MiB of heap at start (core-capture benchmarks).")
    var ballast: Int = 0

    @Option(help: "Start this many idle threads blocked in a condition wait.")
    var extraThreads: Int = 0

    @Option(help: "Backend connect timeout in ms.")
    var connectTimeout: Int = 2000

    @Option(help: "Time a backend has to start its response, in ms.")
    var responseTimeout: Int = 30_000

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: String = "info"

    @Flag(help: "sd_notify when NOTIFY_SOCKET is set: READY=1 once serving; with WATCHDOG_USEC, WATCHDOG=1 every half of it from a thread that first reads the catalog under its read lock.")
    var sdNotify = false

    /// Parses flags; usage errors exit 2 like configuration errors (help still exits 0).
    static func runAsMain() {
        do {
            var command = try parseAsRoot()
            try command.run()
        } catch {
            if exitCode(for: error) == .success { exit(withError: error) }
            FileHandleStandardError.write(fullMessage(for: error))
            Glibc.exit(2)
        }
    }

    func run() throws {
        // Before any thread exists, so every thread inherits the mask.
        let signals = ProxySignals.block()
        guard let level = Logger.Level(rawValue: logLevel) else { fatalConfig("--log-level '\(logLevel)': expected trace, debug, info, notice, warning, error or critical") }
        LoggingSystem.bootstrap { label in
            var h = StreamLogHandler.standardError(label: label)
            h.logLevel = level
            return h
        }
        let logger = Logger(label: "defib-proxy")

        var config = ProxyConfiguration()
        var notify: SystemdNotifySettings?
        do {
            if sdNotify { notify = try SystemdNotifySettings.fromEnvironment() }
            if let listen { config.listen = try BackendAddress.parse(Substring(listen), anyPort: true) }
            config.passedSockets = try ListenFDs.takeFromEnvironment() ?? []
            config.routesFile = routes
            config.routeFlags = routeFlags
            config.updates = try updates.map { text throws(ProxyConfigError) in try UpdateSource.parse(text) }
            guard updateTimeout > 0 else { throw ProxyConfigError(option: "--update-timeout", value: "\(updateTimeout)", problem: "must be > 0 ms") }
            config.updateTimeout = .milliseconds(updateTimeout)
            config.churnRate = churn
            config.reloadIntervalMs = reloadInterval
            config.controlSocket = controlSocket ?? environment("DEFIB_CONTROL_SOCKET")
            if let text = fault ?? environment("DEFIB_FAULT") {
                do { config.fault = try FaultKind.parse(text) } catch {
                    throw ProxyConfigError(option: fault != nil ? "--fault" : "DEFIB_FAULT", value: text, problem: error.message)
                }
            }
            config.faultDelayMs = faultAfter
            guard let strategy = RevertStrategy(rawValue: revert) else {
                throw ProxyConfigError(option: "--revert", value: revert, problem: "expected 'buggy' or 'fixed'")
            }
            config.revert = strategy
            config.eventLoopThreads = threads
            config.ballastMB = ballast
            config.extraThreads = extraThreads
            guard connectTimeout > 0, responseTimeout > 0 else {
                throw ProxyConfigError(option: "--connect-timeout/--response-timeout", value: "\(connectTimeout)/\(responseTimeout)", problem: "must be > 0 ms")
            }
            config.connectTimeoutMs = connectTimeout
            config.responseTimeoutMs = responseTimeout
        } catch {
            fatalConfig("\(error)")
        }

        let server: ProxyServer
        do { server = try ProxyServer.start(config, logger: logger) } catch {
            FileHandleStandardError.write("defib-proxy: \(error)\n")
            Glibc.exit(error.exitCode)
        }
        if let notify {
            do { try ProxyNotifier(settings: notify, logger: logger).start(catalog: server.catalog) } catch {
                FileHandleStandardError.write("defib-proxy: --sd-notify: \(error)\n")
                Glibc.exit(1)
            }
        } else if sdNotify {
            logger.notice("--sd-notify: NOTIFY_SOCKET is not set, so there is no manager to notify")
        }
        while true {
            let sig = signals.next()
            if sig == SIGHUP {
                logger.info("SIGHUP: reloading the routes")
                server.reloadNow()
                continue
            }
            logger.info("\(sig == SIGTERM ? "SIGTERM" : "SIGINT"): shutting down")
            let clean = server.shutdown(timeoutMs: 2000)
            fflush(nil)
            Glibc.exit(clean ? 0 : 1)
        }
    }

    private func environment(_ name: String) -> String? {
        getenv(name).map { String(cString: $0) }.flatMap { $0.isEmpty ? nil : $0 }
    }

    private func fatalConfig(_ message: String) -> Never {
        FileHandleStandardError.write("defib-proxy: \(message)\n")
        Glibc.exit(2)
    }
}

/// Unbuffered writes to stderr without Foundation.
enum FileHandleStandardError {
    static func write(_ text: String) {
        var t = text
        if !t.hasSuffix("\n") { t += "\n" }
        t.withCString { _ = Glibc.write(2, $0, strlen($0)) }
    }
}
