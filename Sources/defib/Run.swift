import ArgumentParser
import DefibCore
import DefibFleet
import DefibRuntime
import Foundation
import Logging

/// `defib run`: supervise one program.
struct RunCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Start PROGRAM and supervise it (flags override the config file).")

    @Option(name: .long, help: "State directory: incidents.sqlite, cores/, run/.", completion: .directory)
    var stateDir: String?

    @Option(name: .long, help: "TOML config file (see units/example.toml).", completion: .file(extensions: ["toml"]))
    var config: String?

    @Option(name: .long, help: "Service name used in incidents and paths (default: program's base name).")
    var name: String?

    @Option(name: .long, parsing: .unconditional, help: "Heartbeat interval in milliseconds.")
    var interval: Int?

    @Option(name: .long, parsing: .unconditional, help: "Silence (ms) that makes a hang, unless the process is starved rather than stuck.")
    var deadline: Int?

    @Option(name: .long, parsing: .unconditional, help: "Missed pings a hang needs at least.")
    var misses: Int?

    @Option(name: .long, help: "Where heartbeats come from: auto (the default: what the program speaks, else its exit only), ping, notify (sd_notify WATCHDOG=1), both, http, tcp, exec (a probe, with --probe) or none (its exit only).")
    var heartbeat: HeartbeatMode?

    @Option(name: .long, help: ArgumentHelp("The probe for --heartbeat http (a URL), tcp (HOST:PORT) or exec (a command).", valueName: "TARGET"))
    var probe: String?

    @Option(name: .long, help: "Run the service as this user (name or uid).")
    var user: String?

    @Option(name: .long, help: "Run the service with this group (name or gid; default: the user's).")
    var group: String?

    @Option(name: .long, help: "Core capture method: native, kernel, gcore or none.")
    var capture: CaptureMethod?

    @Option(name: .long, parsing: .unconditional, help: "Core capture time budget in milliseconds.")
    var captureBudget: Int?

    @Option(name: .long, help: "Control socket path (default: STATE_DIR/run/NAME/control.sock).")
    var controlSocket: String?

    @Option(name: .customLong("socket"), help: ArgumentHelp("A listening socket to bind once and pass to every instance (repeatable).", valueName: "NAME=HOST:PORT"))
    var sockets: [String] = []

    @Option(name: .long, help: ArgumentHelp("Serve Prometheus metrics on this loopback address.", valueName: "HOST:PORT"))
    var metrics: String?

    @OptionGroup(title: "Fleet")
    var fleet: FleetRunOptions

    @Flag(name: .long, help: "Log debug details.")
    var verbose = false

    @Argument(parsing: .postTerminator, help: "The program to supervise and its arguments (after --).")
    var command: [String] = []

    func makeConfig() throws -> SupervisorConfig {
        var cfg: SupervisorConfig
        if let config {
            do { cfg = try SupervisorConfig.load(path: config) } catch {
                throw ValidationError("\(error)")
            }
        } else {
            cfg = SupervisorConfig(service: .init(name: "", argv: []), stateDirectory: "")
        }
        if !command.isEmpty { cfg.service.argv = command }
        if let stateDir { cfg.stateDirectory = stateDir }
        if let name { cfg.service.name = name }
        if cfg.service.name.isEmpty, let first = cfg.service.argv.first {
            cfg.service.name = (first as NSString).lastPathComponent
        }
        if let interval { cfg.heartbeat.intervalMs = interval }
        if let deadline { cfg.heartbeat.deadlineMs = deadline }
        if let misses { cfg.heartbeat.misses = misses }
        if let capture { cfg.capture.method = capture }
        if let heartbeat { cfg.heartbeat.mode = heartbeat }
        if let probe { cfg.heartbeat.probe = probe }
        if let user { cfg.service.user = user }
        if let group { cfg.service.group = group }
        if let metrics { cfg.metricsListen = metrics }
        for spec in sockets {
            guard let eq = spec.firstIndex(of: "="), let address = SocketSpec.parseAddress(String(spec[spec.index(after: eq)...])) else {
                throw ValidationError("--socket \(spec): expected NAME=HOST:PORT (e.g. http=127.0.0.1:8080)")
            }
            let name = String(spec[..<eq])
            cfg.sockets.removeAll { $0.name == name }
            cfg.sockets.append(SocketSpec(name: name, host: address.host, port: address.port))
        }
        if let captureBudget { cfg.capture.budgetMs = captureBudget }
        if let controlSocket { cfg.heartbeat.controlSocket = controlSocket }
        try fleet.apply(to: &cfg)
        if cfg.stateDirectory.isEmpty { throw ValidationError("missing --state-dir (or state_dir in the config file)") }
        // Paths the service is told about (DEFIB_CONTROL_SOCKET, NOTIFY_SOCKET) or that a link points at must not
        // depend on the working directory: relative ones are taken from defib's and made absolute here.
        let cwd = FileManager.default.currentDirectoryPath
        func absolute(_ p: String) -> String { p.hasPrefix("/") ? p : (cwd as NSString).appendingPathComponent(p) }
        cfg.stateDirectory = absolute(cfg.stateDirectory)
        if let socket = cfg.heartbeat.controlSocket, !socket.isEmpty { cfg.heartbeat.controlSocket = absolute(socket) }
        if let dir = cfg.capture.directory, !dir.isEmpty { cfg.capture.directory = absolute(dir) }
        if cfg.service.argv.isEmpty { throw ValidationError("nothing to run: give the program after --, or service.argv in the config file") }
        do { try cfg.validate() } catch { throw ValidationError("\(error)") }
        return cfg
    }

    func run() throws {
        // A configuration that cannot work is named on one line, exit 64 — not followed by the top-level usage
        // ArgumentParser prints for errors thrown here (the options parsed fine; their values do not work).
        do { try supervise() } catch let error as ValidationError {
            FileHandle.standardError.write(Data("defib run: \(error.message)\n".utf8))
            throw ExitCode(64)
        }
    }

    private func supervise() throws {
        let signals = try Supervisor.takeOverSignals()
        let cfg = try makeConfig()
        DefibLogging.bootstrap(level: verbose ? .debug : .info)
        let logger = Logger(label: "defib")
        // Shipping is independent of supervision (it reads the store's outbox): started while the supervisor is
        // set up, so a password file that cannot be used is refused before any child starts.
        var shipper: FleetShipper?
        defer { stopFleetShipper(shipper) }
        let (supervisor, endpoint) = try withSetupErrorsAsValidation {
            try Supervisor.make(config: cfg, signals: signals, logger: logger) { store in
                shipper = try startFleetShipper(cfg, store: store, logger: logger)
                return shipper
            }
        }
        defer { endpoint?.close() }
        logger.info("supervising \(cfg.service.name): \(cfg.service.argv.joined(separator: " ")); heartbeat every \(cfg.heartbeat.intervalMs) ms, deadline \(cfg.heartbeat.deadlineMs) ms, capture \(cfg.capture.method.rawValue)")
        let code = supervisor.run()
        if code != 0 { throw ExitCode(code) }
    }

    private func withSetupErrorsAsValidation<T>(_ body: () throws -> T) throws -> T {
        do { return try body() } catch let error as SupervisorSetupError { throw ValidationError(error.description) }
    }
}

extension CaptureMethod: ExpressibleByArgument {}
extension HeartbeatSource: ExpressibleByArgument {}
extension HeartbeatMode: ExpressibleByArgument {}
