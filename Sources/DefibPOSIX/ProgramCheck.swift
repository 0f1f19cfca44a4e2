import Glibc

/// A program that cannot be started, and why: refused before the first start (exit 64) instead of being
/// retried until the restart intensity gives up.
public struct ProgramProblem: Error, Equatable, CustomStringConvertible, Sendable {
    /// The program as configured.
    public var program: String
    /// Why it cannot run.
    public var problem: String
    /// "cannot run PROGRAM: PROBLEM".
    public var description: String { "cannot run \(program): \(problem)" }
}

/// Finds the program the way `execvp(3)` will for the child, with the reason when it cannot: a name with
/// a slash is that file; a bare name is searched in PATH (the service's own PATH when its environment sets
/// one), skipping what is missing and remembering what exists but cannot be executed, as execvp does. Only
/// what can be known without running it is checked (a script whose interpreter is missing still fails at
/// exec, and is reported then).
public enum ProgramCheck {
    /// The path that will be executed, or why there is none.
    public static func resolve(_ program: String, searchPath: String? = getenv("PATH").map { String(cString: $0) }) -> Result<String, ProgramProblem> {
        func problem(_ text: String) -> Result<String, ProgramProblem> { .failure(ProgramProblem(program: program, problem: text)) }
        guard !program.isEmpty else { return problem("the program name is empty") }
        if program.contains("/") {
            switch check(program) {
            case .ok: return .success(program)
            case let .missing(why), let .unusable(why): return problem(why)
            }
        }
        let dirs = (searchPath ?? "/usr/local/bin:/usr/bin:/bin").split(separator: ":", omittingEmptySubsequences: false)
            .map { $0.isEmpty ? "." : String($0) }
        var unusable: [String] = []
        for dir in dirs {
            let candidate = dir.hasSuffix("/") ? dir + program : "\(dir)/\(program)"
            switch check(candidate) {
            case .ok: return .success(candidate)
            case .missing: continue
            case let .unusable(why): unusable.append("\(candidate) \(why)")
            }
        }
        if !unusable.isEmpty { return problem("found in PATH but not runnable: " + unusable.joined(separator: "; ")) }
        return problem("not found in PATH (\(dirs.joined(separator: ":")))")
    }

    enum Verdict: Equatable { case ok, missing(String), unusable(String) }

    static func check(_ path: String) -> Verdict {
        var st = stat()
        guard stat(path, &st) == 0 else {
            let e = errno
            switch e {
            case ENOENT: return .missing("no such file")
            case ENOTDIR: return .missing("a component of the path is not a directory")
            case EACCES: return .unusable("cannot be reached: permission denied on a directory of its path")
            default: return .unusable(String(cString: strerror(e)))
            }
        }
        if (st.st_mode & S_IFMT) == S_IFDIR { return .unusable("is a directory") }
        if (st.st_mode & S_IFMT) != S_IFREG { return .unusable("is not a regular file") }
        // access(2) with X_OK answers for our real uid; root passes it when any execute bit is set, as execve does.
        if access(path, X_OK) != 0 {
            return .unusable("is not executable (mode \(String(st.st_mode & 0o7777, radix: 8)))")
        }
        return .ok
    }
}
