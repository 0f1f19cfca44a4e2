import Foundation
import Glibc

/// Output through a pager on a terminal, chosen as coredumpctl (systemd's pager.c) chooses it: none unless
/// stdout is a terminal and $TERM is set and not "dumb"; $SYSTEMD_PAGER, else $PAGER (empty or "cat" = no
/// pager), else `pager`, `less`, `more` from PATH; `LESS=FRSXMK` (or $SYSTEMD_LESS), so short output is
/// printed and the pager quits by itself.
final class Pager {
    private let pid: pid_t
    private var finished = false

    /// The running pager, waited for at exit whatever path the command takes.
    nonisolated(unsafe) private static var active: Pager?

    private init(pid: pid_t) { self.pid = pid }

    /// Starts the pager and points stdout at it; nil (stdout unchanged) when there should be none or it
    /// cannot start.
    static func start(environment: [String: String] = ProcessInfo.processInfo.environment) -> Pager? {
        guard active == nil, isatty(STDOUT_FILENO) == 1, let term = environment["TERM"], !term.isEmpty, term != "dumb",
              let command = command(environment: environment) else { return nil }
        var fds: [Int32] = [0, 0]
        guard cloexecPipe(&fds) else { return nil }
        var env = environment
        env["LESS"] = environment["SYSTEMD_LESS"] ?? "FRSXMK"
        if env["LESSCHARSET"] == nil { env["LESSCHARSET"] = environment["SYSTEMD_LESSCHARSET"] ?? "utf-8" }

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, fds[0], STDIN_FILENO)
        let argvStrings = ["/bin/sh", "-c", "exec \(command)"]
        let envStrings = env.map { "\($0.key)=\($0.value)" }
        let argv: [UnsafeMutablePointer<CChar>?] = argvStrings.map { strdup($0) } + [nil]
        let envp: [UnsafeMutablePointer<CChar>?] = envStrings.map { strdup($0) } + [nil]
        defer { (argv + envp).forEach { free($0) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, "/bin/sh", &actions, nil, argv, envp)
        close(fds[0])
        guard rc == 0 else { close(fds[1]); return nil }
        fflush(nil)
        dup2(fds[1], STDOUT_FILENO)
        close(fds[1])
        // ^C is for the pager (it shares our terminal); we only have output left to write.
        signal(SIGINT, SIG_IGN)
        let pager = Pager(pid: pid)
        active = pager
        atexit { Pager.active?.finish() }
        return pager
    }

    /// The pager command, or nil for none.
    static func command(environment: [String: String]) -> String? {
        if let chosen = environment["SYSTEMD_PAGER"] ?? environment["PAGER"] {
            let trimmed = chosen.trimmingCharacters(in: .whitespaces)
            return trimmed.isEmpty || trimmed == "cat" ? nil : trimmed
        }
        let path = environment["PATH"] ?? "/usr/bin:/bin"
        for name in ["pager", "less", "more"] {
            for dir in path.split(separator: ":") where access("\(dir)/\(name)", X_OK) == 0 { return "\(dir)/\(name)" }
        }
        return nil
    }

    /// Ends our output (the pager sees end of input) and waits until the user leaves the pager.
    func finish() {
        guard !finished else { return }
        finished = true
        fflush(nil)
        close(STDOUT_FILENO)
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
    }
}
