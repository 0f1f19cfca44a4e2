import ArgumentParser
import DefibCore
import DefibPOSIX
import DefibRuntime
import DefibStore
import Foundation
import Logging

/// `defib run`: supervise one program.
struct RunCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Start PROGRAM and supervise it (flags override the config file).")

    @Option(name: .long, help: "State directory: incidents.sqlite, cores/, run/.")
    var stateDir: String?

    @Option(name: .long, help: "TOML config file (see units/example.toml).")
    var config: String?

    @Option(name: .long, help: "Service name used in incidents and paths (default: program's base name).")
    var name: String?

    @Option(name: .long, help: "Heartbeat interval in milliseconds.")
    var interval: Int?

    @Option(name: .long, help: "How long one ping may go unanswered, in milliseconds.")
    var deadline: Int?

    @Option(name: .long, help: "Consecutive missed pings that make a hang.")
    var misses: Int?

    @Option(name: .long, help: "Core capture method: gcore or none.")
    var capture: CaptureMethod?

    @Option(name: .long, help: "Core capture time budget in milliseconds.")
    var captureBudget: Int?

    @Option(name: .long, help: "Control socket path (default: STATE_DIR/run/NAME/control.sock).")
    var controlSocket: String?

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
        if let captureBudget { cfg.capture.budgetMs = captureBudget }
        if let controlSocket { cfg.heartbeat.controlSocket = controlSocket }
        if cfg.stateDirectory.isEmpty { throw ValidationError("missing --state-dir (or state_dir in the config file)") }
        if cfg.service.argv.isEmpty { throw ValidationError("nothing to run: give the program after --, or service.argv in the config file") }
        do { try cfg.validate() } catch { throw ValidationError("\(error)") }
        return cfg
    }

    func run() throws {
        let signals = try Supervisor.takeOverSignals()
        let cfg = try makeConfig()
        var logger = Logger(label: "defib")
        logger.logLevel = verbose ? .debug : .info
        let store: IncidentStore
        do {
            try makeDirectory(cfg.stateDirectory, mode: 0o700)
            store = try IncidentStore.open(stateDirectory: cfg.stateDirectory)
        } catch {
            throw ValidationError("cannot open the incident store in \(cfg.stateDirectory): \(error)")
        }
        let supervisor = try Supervisor(config: cfg, recorder: store, logger: logger, signals: signals)
        logger.info("supervising \(cfg.service.name): \(cfg.service.argv.joined(separator: " ")); heartbeat every \(cfg.heartbeat.intervalMs) ms, deadline \(cfg.heartbeat.deadlineMs) ms, capture \(cfg.capture.method.rawValue)")
        let code = supervisor.run()
        if code != 0 { throw ExitCode(code) }
    }
}

extension CaptureMethod: ExpressibleByArgument {}
extension IncidentStore: IncidentRecorder, IncidentReader {}
