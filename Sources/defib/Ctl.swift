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

    @Option(name: .long, help: "The supervisor's state directory (finds the control socket).", completion: .directory)
    var stateDir: String?

    @Option(name: .long, help: "Control socket path (default: the only one under STATE_DIR/run/).")
    var socket: String?

    @Option(name: .long, help: "Service name, when the state directory holds several.", completion: .custom(StateCompletion.runningServices))
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
    /// running defib, in whichever PID namespace it runs) — a run directory a gone supervisor left behind does
    /// not count, and a live service that is restarting (no socket for a moment) still does, so a line is never
    /// sent to the wrong one.
    func socketPath() throws -> String {
        if let socket { return socket }
        let runDir = "\(stateDir!)/run"
        if let name { return "\(runDir)/\(name)/control.sock" }
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: runDir)) ?? []).filter { name in
            var isDir: ObjCBool = false
            return FileManager.default.fileExists(atPath: "\(runDir)/\(name)", isDirectory: &isDir) && isDir.boolValue
        }.sorted()
        if names.isEmpty { throw CtlError("no service under \(runDir): is `defib run --state-dir \(stateDir!)` running?") }
        let states = names.map { (name: $0, state: Self.supervisorState(runDirectory: "\(runDir)/\($0)")) }
        let live = states.filter { $0.state.isRunning }.map(\.name)
        switch live.count {
        case 1: return "\(runDir)/\(live[0])/control.sock"
        case 0:
            let why = states.map { "\($0.name): \($0.state.reason)" }.joined(separator: "; ")
            throw CtlError("no supervisor is running for \(names.joined(separator: ", ")) under \(runDir) (\(why)): is `defib run --state-dir \(stateDir!)` running?")
        default: throw CtlError("several services under \(runDir) (\(live.joined(separator: ", "))): pick one with --name")
        }
    }

    /// Whether a run directory's supervisor runs, and if not, why it is taken as gone.
    enum SupervisorState: Equatable {
        case running
        case gone(String)

        var isRunning: Bool { self == .running }
        var reason: String { if case let .gone(why) = self { return why }; return "running" }
    }

    /// Whether the defib recorded in RUN_DIR/supervisor.pid runs. One in another PID namespace (defib as a
    /// container's PID 1, ctl on the host) is looked up by that namespace and its pid there, not by the bare
    /// pid (which names another process here); one whose namespace cannot be seen from here counts when its
    /// control socket accepts. Without the file (an older supervisor): whether something accepts on the socket.
    static func supervisorState(runDirectory: String) -> SupervisorState {
        let socket = runDirectory + "/control.sock"
        guard let record = SupervisorPidFile.read(runDirectory: runDirectory) else {
            return ControlRequest.accepts(path: socket) ? .running : .gone("no \(SupervisorPidFile.fileName), and nothing accepts on \(socket)")
        }
        let ours = SupervisorPidFile.pidNamespace(of: "self") ?? "an unknown PID namespace"
        let namespace = record.pidNamespace.map { " in PID namespace \($0)" } ?? ""
        switch record.locate() {
        case .running: return .running
        case .gone: return .gone("\(SupervisorPidFile.fileName) names pid \(record.pid)\(namespace), which is not a running defib")
        case .notVisible:
            if ControlRequest.accepts(path: socket) { return .running }
            return .gone("\(SupervisorPidFile.fileName) names pid \(record.pid)\(namespace), but no process of that namespace is visible from this one (\(ours)): it has ended, or it runs outside this container; and nothing accepts on \(socket)")
        }
    }

    /// For an error talking to the socket: where the supervisor runs, when that is another PID namespace.
    static func namespaceHint(socketPath: String) -> String {
        let runDirectory = (socketPath as NSString).deletingLastPathComponent
        guard let record = SupervisorPidFile.read(runDirectory: runDirectory), let namespace = record.pidNamespace,
              namespace != SupervisorPidFile.pidNamespace(of: "self") else { return "" }
        switch record.locate() {
        case let .running(pid, _):
            return " (its supervisor runs in another PID namespace, \(namespace), as pid \(record.pid) there and \(pid) here)"
        case .gone:
            return " (its supervisor ran in another PID namespace, \(namespace), as pid \(record.pid), and has ended)"
        case .notVisible:
            return " (its supervisor runs or ran in another PID namespace, \(namespace), as pid \(record.pid), not visible from here)"
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
            FileHandle.standardError.write(Data("defib ctl: \(error)\(Self.namespaceHint(socketPath: path))\n".utf8))
            throw ExitCode(2)
        }
    }
}

/// No socket to talk to: exit 2 (cannot be reached), with the reason.
struct CtlError: Error {
    var message: String
    init(_ message: String) { self.message = message }
}
