import DefibCore
import DefibPOSIX
import Foundation
import Glibc
import Synchronization

/// Every process the harness started, so all of them can be killed by pidfd at the end, on an error,
/// or when SIGINT/SIGTERM arrives.
public final class ProcessRegistry: @unchecked Sendable {
    private struct Entry { var child: ChildProcess; var killGroup: Bool }
    private let entries = Mutex<[Int32: Entry]>([:])

    /// An empty registry.
    public init() {}

    /// Remembers a child; `killGroup` also kills its process group (stress-ng's workers).
    func register(_ child: ChildProcess, killGroup: Bool = false) {
        entries.withLock { $0[child.pid] = Entry(child: child, killGroup: killGroup) }
    }

    /// Forgets a child that has been reaped (its pidfd is closed here).
    func forget(_ child: ChildProcess) {
        if entries.withLock({ $0.removeValue(forKey: child.pid) }) != nil { child.closePidfd() }
    }

    /// SIGKILL to every registered child (through its pidfd, never a recycled pid) and its group when asked.
    public func killAll() {
        for e in entries.withLock({ Array($0.values) }) {
            if e.killGroup { e.child.signalGroup(SIGKILL) }
            try? e.child.signal(SIGKILL)
        }
    }
}

/// Set by the signal watcher; every wait loop of the harness checks it.
public final class InterruptFlag: Sendable {
    private let flag = Atomic<Int32>(0)
    /// Not interrupted.
    public init() {}
    /// The signal that arrived, if any.
    public var signal: Int32? { let s = flag.load(ordering: .acquiring); return s == 0 ? nil : s }
    /// Records `sig`.
    public func raise(_ sig: Int32) { flag.store(sig, ordering: .releasing) }
    /// Throws `.interrupted` once a signal has arrived.
    public func check() throws(ChaosError) {
        if let s = signal { throw ChaosError(.interrupted, "interrupted by \(signalName(s))") }
    }
}

/// Watches SIGINT/SIGTERM: the first one asks the harness to wind down (it tears its processes down and
/// writes what it has); if that takes longer than `graceMs`, or a second signal arrives, every process is
/// killed and the harness exits 130.
public enum SignalWatcher {
    /// Blocks SIGINT and SIGTERM in the calling thread (call before any other thread starts, so every thread
    /// inherits the mask) and watches them on a thread of its own.
    public static func start(flag: InterruptFlag, registry: ProcessRegistry, graceMs: Int = 20_000,
                             cleanup: @escaping @Sendable () -> Void = {}) throws {
        let queue = try SignalQueue(signals: [SIGINT, SIGTERM])
        let thread = Thread {
            var firstAt: Int64?
            while true {
                var pfd = pollfd(fd: queue.fd, events: Int16(POLLIN), revents: 0)
                _ = poll(&pfd, 1, 200)
                for sig in queue.drain() {
                    if firstAt == nil {
                        firstAt = monotonicNanoseconds()
                        flag.raise(sig)
                        FileHandle.standardError.write(Data("defib chaos: \(signalName(sig)): stopping every process the harness started\n".utf8))
                    } else {
                        registry.killAll(); cleanup(); _exit(130)
                    }
                }
                if let t = firstAt, monotonicNanoseconds() - t > Int64(graceMs) * 1_000_000 {
                    registry.killAll(); cleanup(); _exit(130)
                }
            }
        }
        thread.name = "chaos-signals"
        thread.start()
    }
}

/// /proc lookups the harness needs.
enum ProcFS {
    /// Children of every thread of `pid` (/proc/PID/task/TID/children).
    static func children(of pid: Int32) -> [Int32] {
        let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
        var out: [Int32] = []
        for t in tasks {
            let text = readTextFile("/proc/\(pid)/task/\(t)/children") ?? ""
            out += text.split(separator: " ").compactMap { Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
        }
        return Array(Set(out)).sorted()
    }

    /// The executable of `pid` (readlink /proc/PID/exe).
    static func executable(of pid: Int32) -> String? {
        var buf = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/\(pid)/exe", &buf, buf.count - 1)
        guard n > 0 else { return nil }
        return String(cString: Array(buf[0..<n]) + [0])
    }

    /// The command name of `pid`.
    static func comm(of pid: Int32) -> String {
        (readTextFile("/proc/\(pid)/comm") ?? "?").trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// State letter from /proc/PID/stat (R, S, D, T, Z, …); nil when the process is gone.
    static func state(of pid: Int32) -> Character? {
        guard let stat = readTextFile("/proc/\(pid)/stat"), let close = stat.lastIndex(of: ")") else { return nil }
        return stat[stat.index(after: close)...].first { !$0.isWhitespace }
    }

    /// Whether `pid` exists and is not a zombie.
    static func isAlive(_ pid: Int32) -> Bool {
        guard let s = state(of: pid) else { return false }
        return s != "Z" && s != "X"
    }

    /// Live processes whose environment carries `NAME=value` (the harness tags everything it starts;
    /// children inherit the tag, so this finds defib's children and stress-ng's workers too).
    static func tagged(_ name: String, _ value: String, excluding: Set<Int32> = []) -> [Int32] {
        let needle = Array("\(name)=\(value)".utf8) + [0]
        let me = getpid()
        var out: [Int32] = []
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
            guard let pid = Int32(entry), pid != me, !excluding.contains(pid) else { continue }
            guard let env = readFileBytes("/proc/\(pid)/environ", maxBytes: 1 << 20), !env.isEmpty else { continue }
            if contains(env + [0], needle) && isAlive(pid) { out.append(pid) }
        }
        return out.sorted()
    }

    private static func contains(_ hay: [UInt8], _ needle: [UInt8]) -> Bool {
        guard hay.count >= needle.count else { return false }
        var i = 0
        while i <= hay.count - needle.count {
            if (i == 0 || hay[i - 1] == 0) && hay[i] == needle[0] && Array(hay[i..<(i + needle.count)]) == needle { return true }
            i += 1
        }
        return false
    }
}

/// A child run to completion with its stdout in a file.
struct ToolRun {
    var status: ChildStatus?
    var stdout: String
    var stderr: String
}

/// Runs `argv` (no shell) with stdout/stderr captured, killing it after `timeoutMs`.
func runTool(_ argv: [String], timeoutMs: Int, registry: ProcessRegistry, environment: [String: String]) -> Result<ToolRun, ChaosError> {
    let dir = "/tmp/defib-chaos-tool-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    mkdir(dir, 0o700)
    defer { unlink("\(dir)/out"); unlink("\(dir)/err"); rmdir(dir) }
    let out = open("\(dir)/out", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
    let err = open("\(dir)/err", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
    var request = SpawnRequest(argv: argv, environment: environment)
    request.stdoutFD = out; request.stderrFD = err; request.stdinFromDevNull = true
    request.parentDeathSignal = SIGKILL
    let child: ChildProcess
    do { child = try spawnProcess(request) } catch {
        close(out); close(err)
        return .failure(ChaosError(.missing, "\(argv[0]): \(error)"))
    }
    close(out); close(err)
    registry.register(child)
    var status = waitForChild(child, timeoutMs: timeoutMs)
    if status == nil { try? child.signal(SIGKILL); status = waitForChild(child, timeoutMs: 5000) }
    registry.forget(child)
    return .success(ToolRun(status: status, stdout: readTextFile("\(dir)/out", maxBytes: 16 << 20) ?? "",
                            stderr: readTextFile("\(dir)/err", maxBytes: 1 << 20) ?? ""))
}

/// Counts gdb's `info threads` lines ("  2    Thread 0x… (LWP 123) …", the current one starred).
public func countGdbThreads(_ output: String) -> Int {
    output.split(separator: "\n").reduce(0) { n, line in
        var s = line.drop { $0 == " " || $0 == "*" }
        let digits = s.prefix { $0.isNumber }
        guard !digits.isEmpty else { return n }
        s = s.dropFirst(digits.count)
        let rest = s.drop { $0 == " " || $0 == "\t" }
        return rest.count < s.count && rest.hasPrefix("Thread ") ? n + 1 : n
    }
}
