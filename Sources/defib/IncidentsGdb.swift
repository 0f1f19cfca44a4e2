import ArgumentParser
import DefibCore
import DefibPOSIX
import DefibStore
import Foundation
import Glibc

/// `defib incidents gdb ID|last`: replaces itself with gdb on the incident's binary and core.
struct IncidentsGdbCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gdb",
        abstract: "Run gdb on the incident's binary and core.",
        discussion: """
            Arguments after -- go to gdb, e.g. a non-interactive backtrace:
              defib incidents gdb last --state-dir D -- -batch -ex 'thread apply all bt'
            """)

    @Argument(help: "The incident number, or 'last' for the newest.", completion: .custom(StateCompletion.incidentIDs))
    var id: String

    @OptionGroup var location: StoreLocationOptions

    @Option(name: .long, help: "The gdb to run (default: gdb from PATH).")
    var gdb: String = "gdb"

    @Argument(parsing: .postTerminator, help: "Extra arguments for gdb (after --).")
    var gdbArguments: [String] = []

    func validate() throws { _ = try IncidentSelector.parse(id) }

    func run() throws {
        let store = try location.openStore()
        let incident = try IncidentSelector.parse(id).resolve(in: store)
        let argv = try Self.gdbArgv(for: incident, gdb: gdb, extra: gdbArguments)
        guard let program = resolveExecutable(argv[0]) else {
            throw CLIError("\(argv[0]) not found\(argv[0].contains("/") ? "" : " in PATH"): install gdb or give --gdb PATH")
        }
        try Self.exec(program, argv)
    }

    /// `gdb [extra…] BINARY CORE`, or `gdb [extra…] --core=CORE` when the binary is no longer there.
    static func gdbArgv(for incident: Incident, gdb: String, extra: [String]) throws -> [String] {
        let id = incident.id.map(String.init) ?? "?"
        guard let capture = incident.capture, let stored = capture.path else {
            var why = "capture method \(incident.capture?.method ?? "none")"
            if let error = incident.capture?.error { why = "the capture failed: \(error)" }
            throw CLIError("incident \(id) has no core (\(why))")
        }
        guard FileManager.default.fileExists(atPath: stored) else {
            throw CLIError("the core of incident \(id) is gone: \(stored) no longer exists")
        }
        let core = try decompressedIfNeeded(stored, id: id)
        if let binary = incident.binaryPath, FileManager.default.fileExists(atPath: binary) {
            return [gdb] + extra + [binary, core]
        }
        printError("defib: the binary of incident \(id) (\(incident.binaryPath ?? "not recorded")) is not there; gdb reads the core alone")
        return [gdb] + extra + ["--core=\(core)"]
    }

    /// gdb reads plain cores only: a .gz or .zst core is decompressed once into the temp dir (and reused).
    static func decompressedIfNeeded(_ core: String, id: String) throws -> String {
        let tool: [String]
        if core.hasSuffix(".gz") { tool = ["gzip", "-dc", core] } else if core.hasSuffix(".zst") { tool = ["zstd", "-dcq", core] } else { return core }
        let tmp = ProcessInfo.processInfo.environment["TMPDIR"] ?? "/tmp"
        let out = "\(tmp)/defib-core-\(id)-\((core as NSString).lastPathComponent.split(separator: ".").dropLast().joined(separator: "."))"
        if FileManager.default.fileExists(atPath: out) { return out }
        printError("defib: decompressing \(core) into \(out)")
        let fd = open(out + ".part", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw CLIError("cannot create \(out).part: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var request = SpawnRequest(argv: tool, environment: currentEnvironment())
        request.stdoutFD = fd
        request.stdinFromDevNull = true
        request.parentDeathSignal = 0
        let child = try spawnProcess(request)
        defer { child.closePidfd() }
        guard waitForChild(child, timeoutMs: 600_000) == .exited(code: 0), rename(out + ".part", out) == 0 else {
            unlink(out + ".part")
            throw CLIError("could not decompress \(core) with \(tool[0])")
        }
        return out
    }

    /// execv with a clean signal mask (gdb must get ^C), flushing our output first. Returns only by throwing.
    static func exec(_ program: String, _ argv: [String]) throws -> Never {
        fflush(nil)
        var none = sigset_t()
        sigemptyset(&none)
        pthread_sigmask(SIG_SETMASK, &none, nil)
        var cArgs: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) } + [nil]
        execv(program, &cArgs)
        let message = String(cString: strerror(errno))
        throw CLIError("execv(\(program)): \(message)")
    }
}
