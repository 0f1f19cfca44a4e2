import ArgumentParser
import DefibCore
import DefibPOSIX
import DefibStore
import Foundation
import Glibc

/// What `debug` and `gdb` share: the newest matching incident's binary and core, handed to a debugger.
struct DebuggerOptions: ParsableArguments {
    @Argument(help: "MATCHES (the newest incident they select): an id or pid, `last`, a path, a process name, or FIELD=VALUE.", completion: .custom(StateCompletion.incidentIDs))
    var matches: [String] = []

    @OptionGroup var location: StoreLocationOptions

    @Option(name: .long, help: "The debugger to run (default: $SYSTEMD_DEBUGGER, else gdb).")
    var debugger: String?

    @Option(name: [.customShort("A"), .customLong("debugger-arguments")], parsing: .unconditional,
            help: "Arguments for the debugger, one string split like a shell's words, e.g. -A '-batch -ex bt'.")
    var debuggerArguments: String?

    /// What followed `--` on the command line (see `IncidentsCommand.normalizedArguments`).
    @Option(name: .customLong("debugger-extra"), parsing: .unconditionalSingleValue, help: .hidden)
    var extra: [String] = []

    /// Finds the incident and its core, then runs `DEBUGGER ARGS… EXE -c CORE` (the core alone when the
    /// binary is gone). A plain core: the debugger replaces us. A compressed one: decompressed into a private
    /// temporary file, the debugger runs as our child, the file is removed when it ends.
    func run(defaultDebugger: String) throws -> Never {
        let store = try location.openStore()
        let incident = try selectOne(matches, in: store)
        let id = incident.id.map(String.init) ?? "?"
        let core = try CoreFile.open(incident)
        let program = debugger ?? ProcessInfo.processInfo.environment["SYSTEMD_DEBUGGER"] ?? defaultDebugger
        guard let executable = resolveExecutable(program) else {
            throw CLIError("\(program) not found\(program.contains("/") ? "" : " in PATH"): install it or give --debugger PATH")
        }
        let arguments = try splitWords(debuggerArguments ?? "") + extra
        var binary: [String] = []
        if let path = incident.binaryPath, FileManager.default.fileExists(atPath: path) {
            binary = [path]
        } else {
            printError("defib: the binary of incident \(id) (\(incident.binaryPath ?? "not recorded")) is not there; the debugger reads the core alone")
        }
        guard core.compression != nil else {
            try core.checkPlainHeader()
            core.close()
            try execDebugger(executable, [program] + arguments + binary + ["-c", core.path])
        }
        // Decompressed into a private file, validated as an ELF core on the way.
        let tmp = ProcessInfo.processInfo.environment["TMPDIR"].flatMap { $0.isEmpty ? nil : $0 } ?? "/var/tmp"
        var template = Array("\(tmp)/defib-core-\(id)-XXXXXX".utf8CString)
        let fd = mkstemp(&template)
        guard fd >= 0 else { throw CLIError("mkstemp in \(tmp): \(String(cString: strerror(errno)))") }
        let plain = String(decoding: template.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
        printError("defib: decompressing \(core.path) into \(plain) (removed when the debugger ends)")
        do {
            _ = try core.copyPlain(to: fd)
            core.close()
            close(fd)
        } catch {
            close(fd); unlink(plain)
            throw error
        }
        var request = SpawnRequest(argv: [executable] + arguments + binary + ["-c", plain], environment: currentEnvironment())
        request.argv[0] = program
        request.newSession = false   // the debugger keeps our terminal
        let child: ChildProcess
        do { child = try spawnProcess(request) } catch {
            unlink(plain)
            throw CLIError("cannot run \(program): \(error)")
        }
        // ^C belongs to the debugger; we only wait for it.
        signal(SIGINT, SIG_IGN)
        signal(SIGQUIT, SIG_IGN)
        var status: ChildStatus?
        while status == nil { status = waitForChild(child, timeoutMs: 3_600_000) }
        child.closePidfd()
        unlink(plain)
        switch status! {
        case let .exited(code): throw ExitCode(code)
        case let .signaled(sig, _): throw ExitCode(128 + sig)
        }
    }
}

/// `defib incidents debug [MATCHES…]`: coredumpctl's `debug`.
struct IncidentsDebugCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "debug",
        abstract: "Run a debugger (gdb) on the newest matching incident's binary and core.",
        discussion: """
            Runs DEBUGGER [ARGS…] EXE -c CORE, as coredumpctl debug does; arguments after -- are added to ARGS. A compressed core is decompressed into a private temporary file first (removed afterwards); a core that is not an ELF core is refused.

            Examples:
              defib incidents debug --state-dir D
              defib incidents debug 7 --state-dir D -A '-batch -ex "thread apply all bt"'
              defib incidents debug --state-dir D --debugger lldb COMM=defib-proxy
            """)

    @OptionGroup var options: DebuggerOptions

    func run() throws { try options.run(defaultDebugger: "gdb") }
}

/// `defib incidents gdb [MATCHES…]`: `debug` with gdb, as coredumpctl's `gdb`; `--gdb PATH` kept from before.
struct IncidentsGdbCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gdb",
        abstract: "Run gdb on the incident's binary and core (the same as debug).",
        discussion: """
            Arguments after -- go to gdb, e.g. a non-interactive backtrace:
              defib incidents gdb last --state-dir D -- -batch -ex 'thread apply all bt'
            """)

    @OptionGroup var options: DebuggerOptions

    @Option(name: .long, help: "The gdb to run (default: gdb from PATH); same as --debugger.")
    var gdb: String?

    func run() throws {
        var options = options
        if let gdb { options.debugger = gdb }
        try options.run(defaultDebugger: "gdb")
    }
}

/// execv with a clean signal mask (the debugger must get ^C), flushing our output first. Returns only by throwing.
func execDebugger(_ program: String, _ argv: [String]) throws -> Never {
    fflush(nil)
    var none = sigset_t()
    sigemptyset(&none)
    pthread_sigmask(SIG_SETMASK, &none, nil)
    var cArgs: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) } + [nil]
    execv(program, &cArgs)
    let message = String(cString: strerror(errno))
    throw CLIError("execv(\(program)): \(message)")
}

/// Splits `text` into words as a shell would, without expanding anything: whitespace separates, single
/// quotes keep everything, double quotes keep all but `\"` and `\\`, a backslash outside quotes escapes
/// the next character. (coredumpctl splits -A the same way.)
func splitWords(_ text: String) throws -> [String] {
    var words: [String] = []
    var current = ""
    var inWord = false
    var quote: Character?
    var escaped = false
    for c in text {
        if escaped { current.append(c); escaped = false; inWord = true; continue }
        if let q = quote {
            if c == q { quote = nil; continue }
            if c == "\\" && q == "\"" { escaped = true; continue }
            current.append(c)
            continue
        }
        switch c {
        case "'", "\"": quote = c; inWord = true
        case "\\": escaped = true
        case " ", "\t", "\n":
            if inWord { words.append(current); current = ""; inWord = false }
        default: current.append(c); inWord = true
        }
    }
    if quote != nil { throw ValidationError("unterminated quote in debugger arguments: \(text)") }
    if escaped { current.append("\\") }
    if inWord { words.append(current) }
    return words
}
