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

    /// `defib run … -- PROGRAM ARGS…`: the program's arguments are set aside before ArgumentParser parses the
    /// rest, and given to the command afterwards. ArgumentParser copies a repeating argument's whole array
    /// for each element it adds, so 10 000 service arguments took 25 s of CPU before the first start (0.02 s now).
    /// `defib incidents` accepts coredumpctl's `--json MODE` beside defib's older bare `--json`.
    static func main() {
        let arguments = IncidentsCommand.normalizedArguments(Array(CommandLine.arguments.dropFirst()))
        guard arguments.first == "run", let terminator = arguments.firstIndex(of: "--") else {
            main(arguments)
            return
        }
        do {
            var command = try parseAsRoot(Array(arguments[...terminator]))
            if var run = command as? RunCommand {
                run.command = Array(arguments[(terminator + 1)...])
                command = run
            }
            try command.run()
            exit()
        } catch {
            exit(withError: error)
        }
    }
}
