import DefibCore
import Glibc

/// Opens (creating, truncating) a file for a helper tool's output.
func openLog(_ path: String) -> Int32 {
    open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
}

/// The last `maxLines` non-empty lines of a small text file.
public func tailOfFile(_ path: String, maxLines: Int = 5) -> String {
    guard let f = fopen(path, "r") else { return "" }
    defer { fclose(f) }
    var lines: [String] = []
    var buf = [CChar](repeating: 0, count: 4096)
    while fgets(&buf, Int32(buf.count), f) != nil {
        let line = String(cString: buf).trimmingCharacters(in: "\n\r ")
        if !line.isEmpty { lines.append(line) }
        if lines.count > 200 { lines.removeFirst(100) }
    }
    return lines.suffix(maxLines).joined(separator: " | ")
}

extension String {
    func trimmingCharacters(in set: String) -> String {
        var s = Substring(self)
        while let c = s.first, set.contains(c) { s = s.dropFirst() }
        while let c = s.last, set.contains(c) { s = s.dropLast() }
        return String(s)
    }
}

/// Size of a file, or nil.
public func fileSize(_ path: String) -> Int64? {
    var st = stat()
    return stat(path, &st) == 0 ? Int64(st.st_size) : nil
}

/// Takes a core of a live process with gdb's `gcore`, within a time budget.
public enum GcoreCapture {
    /// Writes `<prefix>.<pid>`. On failure or overrun no partial core is left and the record says why.
    public static func capture(pid: Int32, prefix: String, budgetMs: Int) -> CaptureRecord {
        let started = monotonicNanoseconds()
        func elapsed() -> Double { Double(monotonicNanoseconds() - started) / 1e6 }
        let path = "\(prefix).\(pid)"
        let logPath = "\(prefix).gcore.log"
        let log = openLog(logPath)
        defer { if log >= 0 { close(log) }; unlink(logPath) }
        guard let gcore = resolveExecutable("gcore") else {
            return CaptureRecord(method: "gcore", path: nil, bytes: 0, durationMs: elapsed(),
                                 error: "gcore not found in PATH (install gdb)")
        }
        var request = SpawnRequest(argv: [gcore, "-o", prefix, String(pid)], environment: helperEnvironment())
        request.stdoutFD = log; request.stderrFD = log; request.stdinFromDevNull = true
        let child: ChildProcess
        do { child = try spawnProcess(request) } catch {
            return CaptureRecord(method: "gcore", path: nil, bytes: 0, durationMs: elapsed(), error: "\(error)")
        }
        defer { child.closePidfd() }
        guard let status = waitForChild(child, timeoutMs: budgetMs) else {
            child.signalGroup(SIGKILL)
            try? child.signal(SIGKILL)
            _ = waitForChild(child, timeoutMs: 5000)
            unlink(path)
            return CaptureRecord(method: "gcore", path: nil, bytes: 0, durationMs: elapsed(),
                                 error: "gcore did not finish within the \(budgetMs) ms budget; abandoned, partial core removed")
        }
        let bytes = fileSize(path)
        guard status == .exited(code: 0), let bytes, bytes > 0 else {
            unlink(path)
            let detail = tailOfFile(logPath)
            return CaptureRecord(method: "gcore", path: nil, bytes: 0, durationMs: elapsed(),
                                 error: "gcore failed (\(status)): \(detail.isEmpty ? "no output" : detail)")
        }
        // gcore exits 0 with a truncated core when the disk fills: check the file, not the status.
        if let problem = CoreFileCheck.deleteIfUnusable(path: path) {
            return CaptureRecord(method: "gcore", path: nil, bytes: 0, durationMs: elapsed(),
                                 error: "gcore exited 0 but \(problem); deleted (\(bytes) bytes)\(Self.diskNote(prefix))")
        }
        chmod(path, 0o600)
        return CaptureRecord(method: "gcore", path: path, bytes: bytes, durationMs: elapsed(), error: nil)
    }
}

extension GcoreCapture {
    /// "; the file system is full (N KiB left)" when the core's directory has next to no space left (less
    /// than a MiB: gcore stops at the first chunk that does not fit), the usual reason for a cut core.
    static func diskNote(_ prefix: String) -> String {
        var fs = statvfs()
        let dir = prefix.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
        guard statvfs(dir.isEmpty ? "/" : dir, &fs) == 0 else { return "" }
        let free = Int64(fs.f_bavail) * Int64(fs.f_frsize)
        return free < 1 << 20 ? "; the file system is full (\(free >> 10) KiB left)" : ""
    }
}

/// `gdb -batch … -ex 'thread apply all bt' BINARY CORE`, run in the background after the restart.
public enum GdbStacks {
    /// Starts gdb writing to `outputPath` (created 0600); the caller reaps it.
    public static func start(binary: String, core: String, outputPath: String) throws -> ChildProcess {
        guard let gdb = resolveExecutable("gdb") else { throw SpawnError(program: "gdb", stage: "resolve in PATH", errno: ENOENT) }
        let out = openLog(outputPath)
        if out < 0 { throw SystemError("open(\(outputPath))") }
        defer { close(out) }
        var request = SpawnRequest(argv: [gdb, "-batch", "-nx", "-q",
                                          "-ex", "set pagination off", "-ex", "set width 0", "-ex", "set complaints 0",
                                          "-ex", "thread apply all bt", binary, core],
                                   environment: helperEnvironment())
        request.stdoutFD = out; request.stderrFD = out; request.stdinFromDevNull = true
        return try spawnProcess(request)
    }

    /// The output, once gdb has ended: the threads and their frames, without gdb's chatter about
    /// debug info (kept only when there are no frames at all, so a failure still explains itself).
    public static func read(outputPath: String, maxBytes: Int = 4 << 20) -> String {
        guard let f = fopen(outputPath, "r") else { return "" }
        defer { fclose(f) }
        var data = [UInt8](repeating: 0, count: maxBytes)
        let n = fread(&data, 1, maxBytes, f)
        return stacksOnly(String(decoding: data[0..<n], as: UTF8.self))
    }

    /// Keeps "Thread …" headers, "#N …" frames and the blank lines between threads.
    public static func stacksOnly(_ text: String) -> String {
        // Frames before the first "Thread" header are gdb's report of the current frame while loading.
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false).drop { !$0.hasPrefix("Thread ") }
        let kept = lines.filter { $0.hasPrefix("Thread ") || $0.hasPrefix("#") || $0.isEmpty }
        guard kept.contains(where: { $0.hasPrefix("#") }) else { return text }
        var out = kept.map(String.init).joined(separator: "\n")
        while out.hasPrefix("\n") { out.removeFirst() }
        return out
    }
}

/// The environment for helper tools (gcore, gdb, gzip/zstd) and the base of the service's own: ours, without
/// what the service manager meant for this process alone — NOTIFY_SOCKET, WATCHDOG_*, LISTEN_* — so a helper that speaks sd_notify
/// (or a library inside it that does) cannot talk to systemd in defib's name.
public func helperEnvironment() -> [String: String] {
    var env = currentEnvironment()
    for key in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "LISTEN_PID"] { env.removeValue(forKey: key) }
    return env
}

/// The supervisor's own environment as a dictionary.
public func currentEnvironment() -> [String: String] {
    var env: [String: String] = [:]
    var p = environ
    while let entry = p.pointee {
        let s = String(cString: entry)
        if let eq = s.firstIndex(of: "=") { env[String(s[..<eq])] = String(s[s.index(after: eq)...]) }
        p += 1
    }
    return env
}
