import ArgumentParser
import DefibCore
import Foundation

/// `defib check-config FILE`: validate a config file as `defib run --config FILE` would use it.
struct CheckConfigCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check-config",
        abstract: "Check a TOML config file and print the effective settings, or every problem found.",
        discussion: "Exit status: 0 when the file is usable, 1 when it is not (each problem is printed as FILE:LINE: KEY: MESSAGE).")

    @Argument(help: "The config file (see units/example.toml).", completion: .file(extensions: ["toml"]))
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
        let issues = (config.validationIssues() + Self.resolutionIssues(config)).map { issue -> ConfigIssue in
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
        if let identity = identitySummary(c) { rows.append(["  runs as", identity]) }
        let stages = SupervisorMachine.Settings(c)
        rows.append(["heartbeat", "\(heartbeatSummary(h)); first answer within \(h.startTimeoutMs) ms"])
        rows.append(["  stages", "miss after \(stages.missMs) ms, suspect at \(stages.suspectMs) ms of silence, hang at \(h.deadlineMs) ms"
            + (h.misses > 1 ? " and \(h.misses) misses" : "")])
        rows.append(["  starved", stages.maxExtensionMs == 0 ? "never extended"
            : "deadline extended by \(stages.extensionStepMs) ms at a time, up to \(stages.maxExtensionMs) ms (never when stuck)"])
        if stages.killJitterMs > 0 { rows.append(["  jitter", "kill delayed by up to \(stages.killJitterMs) ms"]) }
        rows.append(["  control", c.controlSocketPath])
        rows.append(["capture", cap.method == .none ? "none (no core)"
            : "\(cap.method.rawValue), budget \(cap.budgetMs) ms, into \(c.coreDirectory), stacks \(cap.stacks ? "on" : "off")"
              + (cap.compress == .none ? "" : ", then \(cap.compress.rawValue)")
              + (cap.method == .none ? "" : cap.announceToCoredumpctl.map { $0 ? ", announced to coredumpctl" : ", not announced to coredumpctl" }
                 ?? ", announced to coredumpctl under journald")])
        rows.append(["  runtime", (cap.runtime == .auto ? "detected (Go, Python, Java or native)" : cap.runtime.rawValue)
            + ", its tool within \(cap.effectiveRuntimeBudgetMs) ms of the capture budget"])
        let ret = c.retention
        rows.append(["retention", "\(ret.maxPerService) cores per service; at most \(ret.maxUseBytes.map { "\($0 >> 20) MiB" } ?? "10 % of the disk"), "
            + "keeping \(ret.keepFreeBytes.map { "\($0 >> 20) MiB" } ?? "15 % of the disk") free"])
        rows.append(["restart", "backoff \(r.backoffInitialMs) ms ×\(r.backoffMultiplier) up to \(r.backoffMaxMs) ms, reset after \(r.backoffResetMs) ms ready"])
        rows.append(["  give up", "after more than \(r.intensityMax) restart\(r.intensityMax == 1 ? "" : "s") within \(r.intensityWindowMs) ms"])
        rows.append(["  stop", "SIGTERM, then SIGKILL after \(r.stopTimeoutMs) ms"])
        for socket in c.sockets { rows.append(["socket", "\(socket.name) = \(socket.host):\(socket.port), passed as LISTEN_FDS"]) }
        if let listen = c.metricsListen { rows.append(["metrics", "http://\(listen)/metrics"]) }
        if let fleet = c.fleet {
            let url = (try? FleetDatabaseURL.parse(fleet.url)).map(\.description) ?? fleet.url
            rows.append(["fleet", "\(url) as \(fleet.host ?? "the hostname"); password from \(fleet.passwordFile ?? "PGPASSWORD")"
                         + "; fleet event at \(fleet.alertHosts) hosts within \(fleet.alertWindowSeconds) s"])
        }
        rows.append(["incidents", c.databasePath])
        return Format.table(rows, indent: "  ")
    }
}
