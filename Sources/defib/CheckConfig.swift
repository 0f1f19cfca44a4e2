import ArgumentParser
import DefibCore
import Foundation

/// `defib check-config FILE`: validate a config file as `defib run --config FILE` would use it.
struct CheckConfigCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check-config",
        abstract: "Check a TOML config file and print the effective settings, or every problem found.",
        discussion: "Exit status: 0 when the file is usable, 1 when it is not (each problem is printed as FILE:LINE: KEY: MESSAGE).")

    @Argument(help: "The config file (see units/example.toml).")
    var file: String

    func run() throws {
        let parsed: SupervisorConfig
        do {
            parsed = try SupervisorConfig.load(path: file)
        } catch let error as ConfigError {
            Self.report(error.issues)
            throw ExitCode(1)
        }
        let config = parsed.withDerivedDefaults()
        let issues = config.validationIssues().map { issue -> ConfigIssue in
            var i = issue
            i.file = file
            return i
        }
        if !issues.isEmpty {
            Self.report(issues)
            throw ExitCode(1)
        }
        print("\(file): ok")
        print(Self.summary(config))
    }

    static func report(_ issues: [ConfigIssue]) {
        for issue in issues { printError(issue.description) }
        printError("\(issues.count) problem\(issues.count == 1 ? "" : "s") found")
    }

    /// The effective settings, defaults included, in words.
    static func summary(_ c: SupervisorConfig) -> String {
        let h = c.heartbeat, cap = c.capture, r = c.restart
        var rows: [[String]] = [
            ["state_dir", c.stateDirectory],
            ["service", "\(c.service.name): \(c.service.argv.joined(separator: " "))"],
        ]
        if !c.service.environment.isEmpty {
            rows.append(["  env", c.service.environment.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")])
        }
        rows.append(["  working dir", c.service.workingDirectory ?? "(defib's)"])
        rows.append(["heartbeat", "ping every \(h.intervalMs) ms; a reply later than \(h.deadlineMs) ms is a miss; "
            + "\(h.misses) miss\(h.misses == 1 ? "" : "es") in a row make\(h.misses == 1 ? "s" : "") a hang; first pong within \(h.startTimeoutMs) ms"])
        rows.append(["  control", c.controlSocketPath])
        rows.append(["capture", cap.method == .none ? "none (no core)"
            : "\(cap.method.rawValue), budget \(cap.budgetMs) ms, into \(c.coreDirectory), stacks \(cap.stacks ? "on" : "off")"])
        rows.append(["restart", "backoff \(r.backoffInitialMs) ms ×\(r.backoffMultiplier) up to \(r.backoffMaxMs) ms, reset after \(r.backoffResetMs) ms ready"])
        rows.append(["  give up", "after more than \(r.intensityMax) restart\(r.intensityMax == 1 ? "" : "s") within \(r.intensityWindowMs) ms"])
        rows.append(["  stop", "SIGTERM, then SIGKILL after \(r.stopTimeoutMs) ms"])
        rows.append(["incidents", c.databasePath])
        return Format.table(rows, indent: "  ")
    }
}
