import DefibCore
import DefibPOSIX
import Foundation
import Glibc

/// A benchmark that could not run (as opposed to a target it missed, which is a FAIL line in the report).
struct BenchError: Error, CustomStringConvertible, Equatable {
    /// What kind of failure.
    enum Kind: String, Equatable { case badArgument, spawn, startup, capture, io, verification }
    /// The kind of failure.
    var kind: Kind
    /// What failed, naming the call, the file or the value.
    var message: String
    /// Same as `message`.
    var description: String { message }
}

// MARK: - /proc readers

/// The lines of /proc/PID/status a benchmark needs.
struct ProcessStatus: Codable, Equatable {
    /// VmRSS in bytes.
    var rssBytes: Int64 = 0
    /// VmHWM (peak RSS) in bytes.
    var hwmBytes: Int64 = 0
    /// Threads.
    var threads: Int = 0
    /// voluntary_ctxt_switches: how often the process went to sleep on its own (each wake-up of a loop counts).
    var voluntarySwitches: Int64 = 0

    /// Parses the text of /proc/PID/status; missing lines stay 0.
    static func parse(_ text: String) -> ProcessStatus {
        var s = ProcessStatus()
        for line in text.split(separator: "\n") {
            let parts = line.split(whereSeparator: { $0 == ":" || $0 == " " || $0 == "\t" })
            guard parts.count >= 2, let value = Int64(parts[1]) else { continue }
            switch parts[0] {
            case "VmRSS": s.rssBytes = value * 1024       // the kernel prints kB
            case "VmHWM": s.hwmBytes = value * 1024
            case "Threads": s.threads = Int(value)
            case "voluntary_ctxt_switches": s.voluntarySwitches = value
            default: break
            }
        }
        return s
    }

    /// /proc/PID/status now, or nil when the process is gone. The context switches are summed over every thread:
    /// the process's own status counts only its main thread's.
    static func read(pid: Int32) -> ProcessStatus? {
        guard var s = readTextFile("/proc/\(pid)/status").map(parse) else { return nil }
        let perThread = threadIDs(pid: pid).compactMap { readTextFile("/proc/\(pid)/task/\($0)/status").map(parse) }
        if !perThread.isEmpty { s.voluntarySwitches = perThread.reduce(0) { $0 + $1.voluntarySwitches } }
        return s
    }
}

/// utime + stime of the whole process (every thread, living or ended), in clock ticks; nil when it is gone.
func cpuTicks(pid: Int32) -> UInt64? {
    readTextFile("/proc/\(pid)/stat").flatMap(ProcParse.stat)?.cpuTicks
}

/// The children of `pid` (every thread's /proc/PID/task/TID/children).
func childPIDs(of pid: Int32) -> [Int32] {
    threadIDs(pid: pid).flatMap { tid in
        (readTextFile("/proc/\(pid)/task/\(tid)/children") ?? "").split(separator: " ").compactMap { Int32($0) }
    }
}

/// The machine: what it is and how busy it is right now (the report states both).
struct MachineState: Codable, Equatable {
    /// Online CPUs.
    var nproc: Int
    /// MemTotal, MemAvailable and MemFree, in bytes.
    var memTotalBytes, memAvailableBytes, memFreeBytes: Int64
    /// Page cache (Cached), and the part of it dirty (not yet written back), in bytes.
    var cachedBytes, dirtyBytes: Int64
    /// Load averages over 1, 5 and 15 minutes.
    var load: [Double]
    /// uname -r.
    var kernel: String
    /// The first "model name" of /proc/cpuinfo.
    var cpuModel: String
    /// /proc/pressure/cpu "some" total: µs during which some runnable task waited for a CPU (nil without PSI).
    var cpuSomeStallUs: UInt64? = nil
    /// When this was read (monotonic clock), to turn two readings into a share of time.
    var atMonotonicNs: Int64 = 0

    /// Reads it now.
    static func now() -> MachineState {
        let mem = parseMeminfo(readTextFile("/proc/meminfo") ?? "")
        let load = (readTextFile("/proc/loadavg") ?? "").split(separator: " ").prefix(3).compactMap { Double($0) }
        var uts = utsname()
        uname(&uts)
        let kernel = withUnsafeBytes(of: uts.release) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
        let cpu = (readTextFile("/proc/cpuinfo") ?? "").split(separator: "\n")
            .first { $0.hasPrefix("model name") }
            .map { String($0.split(separator: ":", maxSplits: 1).last ?? "").trimmingCharacters(in: .whitespaces) } ?? "unknown"
        return MachineState(nproc: Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))),
                            memTotalBytes: mem["MemTotal"] ?? 0, memAvailableBytes: mem["MemAvailable"] ?? 0,
                            memFreeBytes: mem["MemFree"] ?? 0, cachedBytes: mem["Cached"] ?? 0, dirtyBytes: mem["Dirty"] ?? 0,
                            load: load, kernel: kernel, cpuModel: cpu,
                            cpuSomeStallUs: readTextFile("/proc/pressure/cpu").flatMap(ProcParse.pressure)?.someTotalUs,
                            atMonotonicNs: monotonicNanoseconds())
    }

    /// The share of the time between two readings during which some task waited for a CPU (the machine's contention
    /// while a part ran: the other users of this shared machine, and the part's own processes), in percent.
    static func cpuStallPercent(from a: MachineState, to b: MachineState) -> Double? {
        guard let s0 = a.cpuSomeStallUs, let s1 = b.cpuSomeStallUs, b.atMonotonicNs > a.atMonotonicNs, s1 >= s0 else { return nil }
        return Double(s1 - s0) * 1000 / Double(b.atMonotonicNs - a.atMonotonicNs) * 100
    }

    /// "CPU pressure while it ran: 23% of the time some task waited for a CPU." or "".
    static func pressureLine(from a: MachineState, to b: MachineState) -> String {
        guard let p = cpuStallPercent(from: a, to: b) else { return "" }
        return String(format: "CPU pressure while it ran (/proc/pressure/cpu): some task waited for a CPU %.0f%% of the time.", p)
    }

    /// /proc/meminfo as bytes by key.
    static func parseMeminfo(_ text: String) -> [String: Int64] {
        var out: [String: Int64] = [:]
        for line in text.split(separator: "\n") {
            let parts = line.split(whereSeparator: { $0 == ":" || $0 == " " })
            guard parts.count >= 2, let kb = Int64(parts[1]) else { continue }
            out[String(parts[0])] = kb * 1024
        }
        return out
    }

    /// "free 21.0 GiB of 23.5 GiB (cache 2.4 GiB, dirty 1 MiB), load 1.51 2.85 2.80".
    var summary: String {
        "available \(formatBytes(memAvailableBytes)) of \(formatBytes(memTotalBytes)) (free \(formatBytes(memFreeBytes)), "
            + "page cache \(formatBytes(cachedBytes)), dirty \(formatBytes(dirtyBytes))), load average "
            + load.map { String(format: "%.2f", $0) }.joined(separator: " ")
    }
}

// MARK: - files and time

/// Wall-clock time as ISO 8601 in UTC, for the report's dates.
func isoNow() -> String { RFC3339.string(Date(), fractionalSeconds: false) }

/// Creates `path` and its parents.
func makeDirectories(_ path: String) throws {
    do { try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true) } catch {
        throw BenchError(kind: .io, message: "mkdir -p \(path): \(error.localizedDescription)")
    }
}

/// Removes a file or a directory tree; a missing one is fine.
func removeTree(_ path: String) {
    try? FileManager.default.removeItem(atPath: path)
}

/// File size and allocated size (st_blocks × 512) of `path`.
func fileSizes(_ path: String) -> (size: Int64, allocated: Int64)? {
    var st = stat()
    guard stat(path, &st) == 0 else { return nil }
    return (Int64(st.st_size), Int64(st.st_blocks) * 512)
}

/// The directory of this executable: the release binaries sit side by side.
func ownDirectory() -> String {
    var buf = [CChar](repeating: 0, count: 4096)
    let n = readlink("/proc/self/exe", &buf, buf.count - 1)
    guard n > 0 else { return "." }
    let exe = String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    return (exe as NSString).deletingLastPathComponent
}

/// An executable file at `path`, or a clear error naming the option.
func requireExecutable(_ path: String, option: String) throws -> String {
    guard access(path, X_OK) == 0 else {
        throw BenchError(kind: .badArgument, message: "\(option) \(path): not an executable file (build it: swift build -c release)")
    }
    return path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
}

/// Sleeps `ms` milliseconds.
func sleepMs(_ ms: Int) {
    var want = timespec(tv_sec: ms / 1000, tv_nsec: (ms % 1000) * 1_000_000)
    var left = timespec()
    while nanosleep(&want, &left) != 0 && errno == EINTR { want = left }
}

/// A TCP port on 127.0.0.1 that nobody listens on right now (bind to port 0, read it back, close).
func freeLoopbackPort() throws -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw BenchError(kind: .io, message: "\(SystemError("socket(AF_INET)"))") }
    defer { close(fd) }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_port = 0
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    let bound = withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard bound == 0 else { throw BenchError(kind: .io, message: "\(SystemError("bind(127.0.0.1:0)"))") }
    var len = socklen_t(MemoryLayout<sockaddr_in>.size)
    let named = withUnsafeMutablePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
    }
    guard named == 0 else { throw BenchError(kind: .io, message: "\(SystemError("getsockname(127.0.0.1:0)"))") }
    return Int(UInt16(bigEndian: addr.sin_port))
}

// MARK: - children

/// A child this benchmark started. It is stopped through its pidfd, never by name.
final class ManagedChild {
    /// What it is, for messages ("defib-proxy (idle)").
    let name: String
    /// The running child.
    let child: ChildProcess
    /// Its stdout and stderr.
    let logPath: String
    /// Its end, once reaped.
    private(set) var status: ChildStatus?

    /// The pid.
    var pid: Int32 { child.pid }

    /// Starts `argv` with stdout/stderr into `logPath`, in `workingDirectory`, with `extraEnvironment` on top of ours.
    /// It gets SIGKILL if this benchmark dies, so nothing outlives an interrupted run.
    init(name: String, argv: [String], workingDirectory: String, logPath: String,
         extraEnvironment: [String: String] = [:], removing: [String] = []) throws {
        var env = currentEnvironment()
        for key in removing { env.removeValue(forKey: key) }
        for (k, v) in extraEnvironment { env[k] = v }
        var request = SpawnRequest(argv: argv, environment: env, workingDirectory: workingDirectory)
        let log = open(logPath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard log >= 0 else { throw BenchError(kind: .io, message: "\(SystemError("open(\(logPath))"))") }
        defer { close(log) }
        request.stdoutFD = log; request.stderrFD = log; request.stdinFromDevNull = true
        request.parentDeathSignal = SIGKILL
        do { child = try spawnProcess(request) } catch {
            throw BenchError(kind: .spawn, message: "starting \(name) (\(argv.joined(separator: " "))): \(error)")
        }
        self.name = name; self.logPath = logPath
    }

    /// Its end if it has ended (reaps it), nil while it runs.
    func poll() -> ChildStatus? {
        if status == nil { status = waitForChild(child, timeoutMs: 0) }
        return status
    }

    /// Waits at most `timeoutMs` for its end (reaps it).
    func wait(timeoutMs: Int) -> ChildStatus? {
        if status == nil { status = waitForChild(child, timeoutMs: timeoutMs) }
        return status
    }

    /// Records an end that someone else's wait already reaped (the kernel core method).
    func markReaped(_ s: ChildStatus?) { if status == nil { status = s } }

    /// SIGTERM, up to `graceMs` to go, then SIGKILL; always reaped and the pidfd closed afterwards.
    @discardableResult
    func stop(graceMs: Int = 5000) -> ChildStatus? {
        if poll() == nil {
            try? child.signal(SIGTERM)
            if wait(timeoutMs: graceMs) == nil {
                try? child.signal(SIGKILL)
                _ = wait(timeoutMs: 10_000)
            }
        }
        child.closePidfd()
        return status
    }

    /// The last lines of its log, for error messages.
    var logTail: String {
        let tail = tailOfFile(logPath, maxLines: 4)
        return tail.isEmpty ? "(it wrote nothing to \(logPath))" : tail
    }
}

/// How a child ended, in words.
func describe(_ status: ChildStatus) -> String {
    switch status {
    case let .exited(code): "exited with code \(code)"
    case let .signaled(sig, core): "killed by \(signalName(sig))\(core ? " (core dumped)" : "")"
    }
}

// MARK: - the reference proxy

/// Starting the reference proxy and waiting until its control channel answers.
enum ProxyLauncher {
    /// Starts `defib-proxy` listening on a free loopback port, its control socket and its cwd (where the kernel
    /// writes its core) in `directory`.
    static func start(binary: String, name: String, directory: String, ballastMB: Int, extraThreads: Int) throws
        -> (child: ManagedChild, controlSocket: String)
    {
        try makeDirectories(directory)
        let port = try freeLoopbackPort()
        let socket = directory + "/control.sock"
        var argv = [binary, "--listen", "127.0.0.1:\(port)", "--route", "bench.test=127.0.0.1:9", "--control-socket", socket]
        if ballastMB > 0 { argv += ["--ballast", String(ballastMB)] }
        if extraThreads > 0 { argv += ["--extra-threads", String(extraThreads)] }
        // The Swift runtime would swallow a first SIGABRT/SIGQUIT to print a backtrace; keep dumps plain.
        let child = try ManagedChild(name: name, argv: argv, workingDirectory: directory, logPath: directory + "/proxy.log",
                                     extraEnvironment: ["SWIFT_BACKTRACE": "enable=no"],
                                     removing: ["NOTIFY_SOCKET", "DEFIB_CONTROL_SOCKET", "LISTEN_FDS", "LISTEN_PID"])
        return (child, socket)
    }

    /// Pings until "pong"; returns the milliseconds since `sinceNs`. Throws when the child dies or `timeoutMs` passes.
    static func waitForPong(_ child: ManagedChild, socket: String, sinceNs: Int64, timeoutMs: Int = 60_000) throws -> Double {
        let deadline = sinceNs + Int64(timeoutMs) * 1_000_000
        var last = "no reply yet"
        while monotonicNanoseconds() < deadline {
            if let status = child.poll() {
                throw BenchError(kind: .startup, message: "\(child.name) (pid \(child.pid)) \(describe(status)) before answering a ping: \(child.logTail)")
            }
            switch ControlRequest.roundTrip(path: socket, line: "ping", timeoutMs: 1000) {
            case let .success(reply) where reply.hasPrefix("pong"):
                return Double(monotonicNanoseconds() - sinceNs) / 1e6
            case let .success(reply): last = "unexpected reply '\(reply)'"
            case let .failure(error): last = "\(error)"
            }
            sleepMs(2)
        }
        throw BenchError(kind: .startup, message: "\(child.name) (pid \(child.pid)) did not answer 'ping' on \(socket) within \(timeoutMs) ms: \(last)")
    }
}
