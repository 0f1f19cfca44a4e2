import DefibCore
import Glibc

/// The helper tools that read a runtime's own stacks, found and run the way a root supervisor must: only a
/// regular executable that root owns and nobody else can write (nor its directory), with a clean environment,
/// stdin from /dev/null, its output through a pipe (no file defib did not create), bounded in size and time.
public enum RuntimeTool: String, Sendable, CaseIterable {
    case pySpy = "py-spy"
    case jcmd
    case dlv

    /// What to install when it is missing (the incident says so).
    public var installHint: String {
        switch self {
        case .pySpy: "install py-spy from PyPI (`pip install py-spy`; scripts/setup.sh puts it in /usr/local/bin)"
        case .jcmd: "install a JDK (Debian: `apt-get install openjdk-17-jdk-headless`)"
        case .dlv: "install delve (Debian: `apt-get install delve`)"
        }
    }

    /// Where it is looked for, in order: defib's PATH, then the usual system directories — or exactly the
    /// directories of `DEFIB_HELPER_PATH` when defib was started with it (tools kept in /opt, say).
    public static func searchPath() -> [String] {
        if let only = getenv("DEFIB_HELPER_PATH").map({ String(cString: $0) }) {
            return only.split(separator: ":").map(String.init).filter { $0.hasPrefix("/") }
        }
        let env = getenv("PATH").map { String(cString: $0) } ?? ""
        var dirs: [String] = []
        for d in env.split(separator: ":").map(String.init) + ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        where d.hasPrefix("/") && !dirs.contains(d) { dirs.append(d) }
        return dirs
    }

    /// The tool's resolved path, or why it cannot be used: missing (with the install hint), or not trusted
    /// (a root supervisor never runs a program someone else could have replaced).
    public func locate(in directories: [String] = searchPath()) -> Result<String, RuntimeToolError> {
        var untrusted: String?
        for dir in directories {
            let candidate = "\(dir)/\(rawValue)"
            guard access(candidate, X_OK) == 0, let real = realpath(candidate, nil) else { continue }
            let resolved = String(cString: real)
            free(real)
            if let problem = Self.trustProblem(resolved) { untrusted = untrusted ?? "\(resolved): \(problem)"; continue }
            return .success(resolved)
        }
        if let untrusted { return .failure(RuntimeToolError(tool: rawValue, problem: "not trusted: \(untrusted)")) }
        return .failure(RuntimeToolError(tool: rawValue, problem: "not found; \(installHint)"))
    }

    /// Why `path` (already resolved) is not safe to run as root, or nil.
    public static func trustProblem(_ path: String) -> String? {
        var st = stat()
        guard stat(path, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else { return "not a regular file" }
        let me = geteuid()
        if st.st_uid != 0 && st.st_uid != me { return "owned by uid \(st.st_uid)" }
        if st.st_mode & (S_IWGRP | S_IWOTH) != 0 { return "writable by group or others" }
        let dir = path.split(separator: "/").dropLast().joined(separator: "/")
        var dst = stat()
        guard stat("/" + dir, &dst) == 0 else { return "its directory cannot be read" }
        if dst.st_uid != 0 && dst.st_uid != me { return "its directory is owned by uid \(dst.st_uid)" }
        if dst.st_mode & (S_IWGRP | S_IWOTH) != 0 && dst.st_mode & S_ISVTX == 0 { return "its directory is writable by group or others" }
        return nil
    }

    /// The environment helpers get: nothing of defib's own (no NOTIFY_SOCKET, no service secrets), a fixed PATH,
    /// a C locale, and HOME in a directory defib made (delve writes its config there).
    public static func cleanEnvironment(home: String?) -> [String: String] {
        var env = ["PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"]
        if let home { env["HOME"] = home; env["XDG_CONFIG_HOME"] = home + "/.config" }
        return env
    }
}

/// A runtime tool that could not be used or failed: the tool, and what went wrong.
public struct RuntimeToolError: Error, Equatable, CustomStringConvertible, Sendable {
    public var tool: String
    public var problem: String
    public init(tool: String, problem: String) { self.tool = tool; self.problem = problem }
    public var description: String { "\(tool): \(problem)" }
}

/// The result of running a helper to completion (or to its time limit).
public struct HelperRun: Sendable {
    public var output: String
    public var status: ChildStatus?
    public var timedOut: Bool
    public var truncated: Bool
    public var elapsedMs: Double
}

public enum HelperRunner {
    /// Runs `argv` with `environment`, reading stdout and stderr through one pipe, for at most `budgetMs`; past
    /// it the helper is SIGKILLed and reaped. Output beyond `maxBytes` is dropped (and said so).
    public static func run(_ argv: [String], environment: [String: String], budgetMs: Int, maxBytes: Int = 8 << 20) throws -> HelperRun {
        let start = monotonicNanoseconds()
        var fds: [Int32] = [-1, -1]
        guard pipe(&fds) == 0 else { throw SystemError("pipe(\(argv[0]))") }
        _ = fcntl(fds[0], F_SETFD, FD_CLOEXEC)
        _ = fcntl(fds[1], F_SETFD, FD_CLOEXEC)
        _ = fcntl(fds[0], F_SETFL, fcntl(fds[0], F_GETFL) | O_NONBLOCK)
        var request = SpawnRequest(argv: argv, environment: environment)
        request.stdoutFD = fds[1]; request.stderrFD = fds[1]; request.stdinFromDevNull = true
        let child: ChildProcess
        do { child = try spawnProcess(request) } catch { close(fds[0]); close(fds[1]); throw error }
        close(fds[1])
        defer { close(fds[0]); child.closePidfd() }
        let deadline = start + Int64(budgetMs) * 1_000_000
        var data: [UInt8] = []
        var truncated = false
        var buf = [UInt8](repeating: 0, count: 65536)
        var timedOut = false
        while true {
            let left = (deadline - monotonicNanoseconds()) / 1_000_000
            if left <= 0 { timedOut = true; break }
            var pfd = pollfd(fd: fds[0], events: Int16(POLLIN), revents: 0)
            let r = poll(&pfd, 1, Int32(min(left, 200)))
            if r < 0 && errno != EINTR { break }
            if r <= 0 { continue }
            let n = buf.withUnsafeMutableBytes { read(fds[0], $0.baseAddress, $0.count) }
            if n > 0 {
                if data.count < maxBytes { data += buf[0..<min(n, maxBytes - data.count)] }
                if data.count >= maxBytes { truncated = true }
                continue
            }
            if n == 0 { break }   // EOF: every copy of the write end is closed
            if errno != EAGAIN && errno != EINTR { break }
        }
        var status: ChildStatus?
        if timedOut {
            try? child.signal(SIGKILL)
            status = waitForChild(child, timeoutMs: 2000)
        } else {
            let left = max(100, Int((deadline - monotonicNanoseconds()) / 1_000_000))
            status = waitForChild(child, timeoutMs: left)
            if status == nil { timedOut = true; try? child.signal(SIGKILL); status = waitForChild(child, timeoutMs: 2000) }
        }
        return HelperRun(output: String(decoding: data, as: UTF8.self), status: status, timedOut: timedOut, truncated: truncated,
                         elapsedMs: Double(monotonicNanoseconds() - start) / 1e6)
    }
}
