import ArgumentParser
import DefibCore
import DefibStore
import Foundation
import Glibc

/// `defib incidents dump [MATCHES…] [--output FILE|-]`: the newest matching incident's core, decompressed,
/// to a file or to stdout — coredumpctl's `dump`.
struct IncidentsDumpCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dump",
        abstract: "Write the core of the newest matching incident to a file or stdout (decompressed).",
        discussion: """
            The core is checked to be an ELF core before anything is written; a .gz or .zst core is decompressed on the way out. Without --output (or with --output -) it goes to stdout, which must not be a terminal; the incident's summary goes to stderr then, to stdout otherwise. FILE must not exist yet (it is created 0600: a core is as private as the process's memory).

            Examples:
              defib incidents dump last --state-dir D --output - > core.proxy
              defib incidents dump --state-dir D COMM=defib-proxy -o /var/tmp/core.proxy
            """)

    @Argument(help: "MATCHES (the newest incident they select): an id or pid, `last`, a path, a process name, or FIELD=VALUE.", completion: .custom(StateCompletion.incidentIDs))
    var matches: [String] = []

    @OptionGroup var location: StoreLocationOptions

    @Option(name: [.short, .long], help: "Where to write the core: a new FILE, or - for stdout (the default).")
    var output: String?

    @Option(name: [.customShort("S"), .long], parsing: .unconditional, help: "Only incidents detected at or after DATE.")
    var since: String?

    @Option(name: [.customShort("U"), .long], parsing: .unconditional, help: "Only incidents detected at or before DATE.")
    var until: String?

    func validate() throws {
        if output?.isEmpty == true { throw ValidationError("--output must not be empty (use - for stdout)") }
    }

    func run() throws {
        let store = try location.openStore()
        var selection = try Selection.resolve(matches, in: store)
        selection.query.since = try since.map { try parseDateArgument($0, option: "--since") }
        selection.query.until = try until.map { try parseDateArgument($0, option: "--until") }
        selection.query.limit = 2
        let found = try storeCall { try store.incidents(matching: selection.query) }
        guard let incident = found.first else { throw noMatch(selection, store: store) }
        let toStdout = output == nil || output == "-"
        if toStdout && isatty(STDOUT_FILENO) == 1 {
            throw CLIError("refusing to write a core to a terminal: redirect stdout, or give --output FILE")
        }
        let core = try CoreFile.open(incident)
        defer { core.close() }

        let fd: Int32
        if toStdout {
            fd = STDOUT_FILENO
        } else {
            fd = open(output!, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
            if fd < 0 {
                let e = errno
                throw CLIError(e == EEXIST ? "\(output!) already exists; give a new path" : "open(\(output!)): \(String(cString: strerror(e)))")
            }
        }
        let written: Int64
        do {
            written = try core.copyPlain(to: fd)
        } catch {
            if !toStdout { close(fd); unlink(output!) }
            throw error
        }
        if !toStdout && close(fd) != 0 {
            let message = String(cString: strerror(errno))
            unlink(output!)
            throw CLIError("close(\(output!)): \(message)")
        }
        var summary = "Incident \(incident.id.map(String.init) ?? "?") · \(incident.service) · pid \(incident.pid)"
            + (incident.process.map { " (\($0.comm))" } ?? "") + " · \(incident.outcome.rawValue)\n"
        summary += incident.diagnosis.isEmpty ? "" : "Diagnosis: \(incident.diagnosis)\n"
        summary += "Core: \(core.path)\(core.compression.map { " (\($0.rawValue), decompressed)" } ?? "") → "
            + "\(toStdout ? "stdout" : output!), \(Format.bytes(written))"
        if toStdout { printError(summary) } else { print(summary) }
        if found.count > 1 { printError("More than one incident matches; dumped the newest.") }
    }
}
