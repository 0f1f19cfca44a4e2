import ArgumentParser
import DefibCore
import DefibPOSIX
import Foundation

/// `defib ctl`: the operator's one-shot REPL on the supervised service's control channel.
struct CtlCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ctl",
        abstract: "Send one line to the supervised service's control channel and print the reply.",
        discussion: "Example: defib ctl --state-dir /var/lib/defib fault timeout-race")

    @Option(name: .long, help: "The supervisor's state directory (finds the control socket).")
    var stateDir: String?

    @Option(name: .long, help: "Control socket path (default: the only one under STATE_DIR/run/).")
    var socket: String?

    @Option(name: .long, help: "Service name, when the state directory holds several.")
    var name: String?

    @Option(name: .long, help: "How long to wait for the reply, in milliseconds.")
    var timeout: Int = 5000

    @Argument(help: "The line to send, e.g. ping, locks, stats, fault timeout-race.")
    var line: [String]

    func validate() throws {
        if line.isEmpty { throw ValidationError("nothing to send: give a line such as 'ping' or 'fault timeout-race'") }
        if stateDir == nil && socket == nil { throw ValidationError("missing --state-dir (or --socket)") }
        if timeout <= 0 { throw ValidationError("--timeout must be positive") }
    }

    /// The socket to talk to: --socket; or STATE_DIR/run/NAME/control.sock (a symlink when the config puts the
    /// socket elsewhere). Without --name: the one service whose supervisor is alive (its supervisor.pid names a
    /// running defib) — a run directory a gone supervisor left behind does not count, and a live service that
    /// is restarting (no socket for a moment) still does, so a line is never sent to the wrong one.
    func socketPath() throws -> String {
        if let socket { return socket }
        let runDir = "\(stateDir!)/run"
        if let name { return "\(runDir)/\(name)/control.sock" }
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: runDir)) ?? []).filter { name in
            var isDir: ObjCBool = false
            return FileManager.default.fileExists(atPath: "\(runDir)/\(name)", isDirectory: &isDir) && isDir.boolValue
        }.sorted()
        if names.isEmpty { throw CtlError("no service under \(runDir): is `defib run --state-dir \(stateDir!)` running?") }
        let live = names.filter { Self.supervisorAlive(runDirectory: "\(runDir)/\($0)") }
        switch live.count {
        case 1: return "\(runDir)/\(live[0])/control.sock"
        case 0: throw CtlError("no supervisor is running for \(names.joined(separator: ", ")) under \(runDir): is `defib run --state-dir \(stateDir!)` running?")
        default: throw CtlError("several services under \(runDir) (\(live.joined(separator: ", "))): pick one with --name")
        }
    }

    /// Whether RUN_DIR/supervisor.pid names a running defib (an older supervisor without the file: whether
    /// something accepts on its socket).
    static func supervisorAlive(runDirectory: String) -> Bool {
        guard let text = try? String(contentsOfFile: runDirectory + "/supervisor.pid", encoding: .utf8) else {
            return ControlRequest.accepts(path: runDirectory + "/control.sock")
        }
        guard let pid = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)), pid > 0 else { return false }
        return processName(pid) == "defib"
    }

    func run() throws {
        let path: String
        do { path = try socketPath() } catch let error as CtlError {
            FileHandle.standardError.write(Data("defib ctl: \(error.message)\n".utf8))
            throw ExitCode(2)
        }
        switch ControlRequest.roundTrip(path: path, line: line.joined(separator: " "), timeoutMs: timeout) {
        case let .success(reply):
            print(reply)
            if reply.hasPrefix("error") { throw ExitCode(1) }
        case let .failure(error):
            FileHandle.standardError.write(Data("defib ctl: \(error)\n".utf8))
            throw ExitCode(2)
        }
    }
}

/// No socket to talk to: exit 2 (cannot be reached), with the reason.
struct CtlError: Error {
    var message: String
    init(_ message: String) { self.message = message }
}
