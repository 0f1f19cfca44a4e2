import DefibPOSIX
import Foundation

/// What `defib incidents` says when the incidents it shows were recorded by a supervisor in another PID
/// namespace (defib as a container's PID 1, read from the host): their pids are that namespace's, and a
/// reader comparing them with `ps` here would be looking at other processes.
enum SupervisorNamespaces {
    /// One note per service of `stateDirectory` whose supervisor records a PID namespace other than this
    /// process's; empty when there is none (the usual case).
    static func notes(stateDirectory: String) -> [String] {
        guard let ours = SupervisorPidFile.pidNamespace(of: "self") else { return [] }
        return StateCompletion.runDirectoryNames(stateDirectory).compactMap { service in
            guard let record = SupervisorPidFile.read(runDirectory: "\(stateDirectory)/run/\(service)"),
                  let theirs = record.pidNamespace, theirs != ours else { return nil }
            let whereNow: String = switch record.locate() {
            case let .running(pid, _): "runs in PID namespace \(theirs) as pid \(record.pid) (pid \(pid) here)"
            case .gone: "ran in PID namespace \(theirs) as pid \(record.pid) (it has ended)"
            case .notVisible: "runs or ran in PID namespace \(theirs) as pid \(record.pid), whose processes are not visible from here"
            }
            return "\(service)'s supervisor \(whereNow): the pids it recorded are counted in that namespace, not in this one (\(ours))"
        }
    }

    /// Prints the notes on standard error (the command's output stays as it is, for scripts).
    static func printNotes(stateDirectory: String) {
        for note in notes(stateDirectory: stateDirectory) { printError("defib: note: \(note)") }
    }
}
