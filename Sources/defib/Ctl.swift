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
    /// socket elsewhere). Without --name, the one service whose socket accepts connections — a socket left
    /// behind by a supervisor that is gone (nothing listening) does not count.
    func socketPath() throws -> String {
        if let socket { return socket }
        let runDir = "\(stateDir!)/run"
        if let name { return "\(runDir)/\(name)/control.sock" }
        let names = (try? FileManager.default.contentsOfDirectory(atPath: runDir))?
            .filter { FileManager.default.fileExists(atPath: "\(runDir)/\($0)/control.sock") }.sorted() ?? []
        if names.count == 1 { return "\(runDir)/\(names[0])/control.sock" }
        if names.isEmpty { throw CtlError("no control socket under \(runDir): is `defib run --state-dir \(stateDir!)` running?") }
        let live = names.filter { ControlRequest.accepts(path: "\(runDir)/\($0)/control.sock") }
        switch live.count {
        case 1: return "\(runDir)/\(live[0])/control.sock"
        case 0: throw CtlError("no service answers under \(runDir) (stale sockets of \(names.joined(separator: ", "))): is `defib run --state-dir \(stateDir!)` running?")
        default: throw CtlError("several services under \(runDir) (\(live.joined(separator: ", "))): pick one with --name")
        }
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
