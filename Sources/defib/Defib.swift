import ArgumentParser

/// `defib`: a watchdog supervisor that turns a hung service into a short outage and keeps the evidence.
@main
struct Defib: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "defib",
        abstract: "Supervise a service through its control channel; on a hang capture a core, restart it, record an incident.",
        version: DefibVersion.string,
        subcommands: [RunCommand.self, CtlCommand.self, IncidentsCommand.self, CheckConfigCommand.self, ChaosCommand.self,
                      FleetCommand.self])

    /// `defib incidents` accepts coredumpctl's `--json MODE` beside defib's older bare `--json`.
    static func main() {
        main(Array(IncidentsCommand.normalizedArguments(Array(CommandLine.arguments.dropFirst()))))
    }
}
