import CDefibShims
import DefibCore
import Glibc

/// Where the kernel sends a core, from /proc/sys/kernel/core_pattern.
public enum CoreDestination: Sendable, Equatable, CustomStringConvertible {
    /// A file; `candidates` are the possible paths (more than one only when the pattern has %t and the second the
    /// kernel wrote it is not known exactly).
    case file(candidates: [String])
    /// A pipe to a helper program (systemd-coredump, apport …): the core is not ours to find.
    case pipe(handler: String)
    /// The pattern is empty: the kernel writes nothing.
    case none

    /// The first candidate path, "handed to HANDLER" or "nowhere …".
    public var description: String {
        switch self {
        case let .file(candidates): candidates.first ?? "(no path)"
        case let .pipe(handler): "handed to \(handler)"
        case .none: "nowhere (core_pattern is empty)"
        }
    }
}

/// The facts core_pattern specifiers expand to (man 5 core).
public struct CorePatternContext: Sendable, Equatable {
    /// %p, %P, %i, %I (one pid namespace assumed).
    public var pid: Int32
    /// %u: real uid.
    public var uid: UInt32
    /// %g: real gid.
    public var gid: UInt32
    /// %s: the signal that dumps.
    public var signal: Int32
    /// Seconds since the epoch when the kernel wrote the core.
    public var time: Int64
    /// %h.
    public var hostname: String
    /// The process's comm (%e).
    public var comm: String
    /// /proc/PID/exe (%E, %f).
    public var executable: String
    /// /proc/PID/cwd: a relative pattern is relative to it.
    public var cwd: String
    /// RLIMIT_CORE soft limit (%c); nil = unlimited.
    public var coreLimit: UInt64?

    /// A context with every field given.
    public init(pid: Int32, uid: UInt32, gid: UInt32, signal: Int32, time: Int64, hostname: String, comm: String,
                executable: String, cwd: String, coreLimit: UInt64?) {
        self.pid = pid; self.uid = uid; self.gid = gid; self.signal = signal; self.time = time
        self.hostname = hostname; self.comm = comm; self.executable = executable; self.cwd = cwd; self.coreLimit = coreLimit
    }
}

/// Expands /proc/sys/kernel/core_pattern the way fs/coredump.c `format_corename` does. Pure.
public enum CorePattern {
    /// The destination for `pattern` (trailing newline ignored) given `context`; `usesPid` is
    /// /proc/sys/kernel/core_uses_pid (appends ".PID" to a file pattern without %p).
    public static func resolve(_ rawPattern: String, usesPid: Bool, context: CorePatternContext) -> CoreDestination {
        var pattern = Substring(rawPattern)
        while pattern.last == "\n" { pattern = pattern.dropLast() }
        if pattern.isEmpty { return .none }
        if pattern.hasPrefix("|") {
            let handler = pattern.dropFirst().split(separator: " ").first.map(String.init) ?? ""
            return .pipe(handler: handler)
        }
        var name = expand(pattern, context: context)
        if usesPid && !pattern.contains("%p") { name += ".\(context.pid)" }
        if !name.hasPrefix("/") { name = (context.cwd.hasSuffix("/") ? context.cwd : context.cwd + "/") + name }
        return .file(candidates: [name])
    }

    static func expand(_ pattern: Substring, context c: CorePatternContext) -> String {
        // Values put into the name have '/' replaced with '!' (the kernel's cn_esc_printf), so they stay one component.
        func esc(_ s: String) -> String { String(s.map { $0 == "/" ? "!" : $0 }) }
        var out = ""
        var i = pattern.startIndex
        while i < pattern.endIndex {
            let ch = pattern[i]
            i = pattern.index(after: i)
            guard ch == "%" else { out.append(ch); continue }
            guard i < pattern.endIndex else { break }
            let spec = pattern[i]
            i = pattern.index(after: i)
            switch spec {
            case "%": out += "%"
            case "p", "P", "i", "I": out += String(c.pid)   // one pid namespace; the dumping thread is not known: use the pid
            case "u": out += String(c.uid)
            case "g": out += String(c.gid)
            case "d": out += "1"                            // SUID_DUMP_USER, the normal dumpable mode
            case "s": out += String(c.signal)
            case "t": out += String(c.time)
            case "h": out += esc(c.hostname)
            case "e": out += esc(c.comm)
            case "f": out += esc(String(c.executable.split(separator: "/").last ?? ""))
            case "E": out += esc(c.executable)
            case "c": out += c.coreLimit.map(String.init) ?? String(UInt64.max)
            default: break                                  // unknown specifiers expand to nothing, as in the kernel
            }
        }
        return out
    }
}

/// What the kernel-dump method did. The process is dead afterwards by design.
public struct KernelCoreResult: Sendable, Equatable {
    /// Method "kernel"; `path` is the core when it was found; `error` says why there is none.
    public var record: CaptureRecord
    /// Where core_pattern says the core goes.
    public var destination: CoreDestination
    /// The signal sent (SIGSYS unless the process catches, ignores or blocks it).
    public var signal: Int32?
    /// The death the caller's wait reported; nil when it did not die within the budget (or no signal was sent).
    public var status: ChildStatus?
    /// Decisions worth keeping with the incident ("killed by SIGSYS to make the kernel dump it" …).
    public var notes: [String]
}

/// The kernel's own core of a live process: raise its RLIMIT_CORE, send a core-dumping signal, let the caller reap
/// it. Kills the process by design. The caller does the waiting, because only one waitpid(-1) loop may reap.
public enum KernelCoreCapture {
    /// Signals whose default action dumps core, in order of preference. SIGSYS first: the Swift runtime installs
    /// handlers for SIGQUIT, SIGABRT, SIGBUS, SIGFPE, SIGILL, SIGSEGV and SIGTRAP and returns from them, so those
    /// would not kill a Swift service.
    public static let coreSignals: [Int32] = [SIGSYS, SIGXCPU, SIGXFSZ, SIGQUIT, SIGABRT, SIGTRAP, SIGILL, SIGFPE, SIGBUS, SIGSEGV]

    /// Prepares and fires: reads what the pattern needs (before the kill: /proc/PID/cwd dies with the process),
    /// raises RLIMIT_CORE, sends the signal through `pidfd` when given. On failure nothing was sent.
    public static func begin(pid: Int32, pidfd: Int32? = nil) -> Result<KernelCoreRequest, KernelCoreError> {
        let started = monotonicNanoseconds()
        guard pid > 0 else { return .failure(KernelCoreError(kind: .badArgument, message: "invalid pid \(pid)")) }
        let patternText: String
        do { patternText = try readProcText("/proc/sys/kernel/core_pattern") } catch {
            return .failure(KernelCoreError(kind: .setup, message: "reading core_pattern: \(error)"))
        }
        let usesPid = ((try? readProcText("/proc/sys/kernel/core_uses_pid")) ?? "0").hasPrefix("1")
        let status: String
        do { status = try readProcText("/proc/\(pid)/status") } catch {
            return .failure(KernelCoreError(kind: .processGone, message: "process \(pid) not found (\(error))"))
        }
        guard let signal = deliverableCoreSignal(pid: pid, status: status) else {
            return .failure(KernelCoreError(kind: .noSignal, message:
                "process \(pid) catches, ignores or blocks every core-dumping signal; not killed"))
        }
        var oldSoft: UInt64 = 0, newSoft: UInt64 = 0, hard: UInt64 = 0
        if defib_prlimit_core_raise(pid, &oldSoft, &newSoft, &hard) != 0 {
            let e = SystemError("prlimit(\(pid), RLIMIT_CORE)")
            return .failure(KernelCoreError(kind: e.errno == ESRCH ? .processGone : .setup, message: "\(e)"))
        }
        if hard == 0 {
            return .failure(KernelCoreError(kind: .setup, message:
                "process \(pid) has a hard RLIMIT_CORE of 0: the kernel would write nothing; not killed"))
        }
        var notes: [String] = []
        if oldSoft != newSoft { notes.append("raised RLIMIT_CORE of \(pid) from \(limitText(oldSoft)) to \(limitText(newSoft))") }
        if hard != UInt64.max { notes.append("the core is limited to \(hard) bytes by the hard RLIMIT_CORE") }
        let parsed = ProcStatus.parse(status)
        var uts = utsname()
        uname(&uts)
        let hostname = withUnsafeBytes(of: uts.nodename) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
        let context = CorePatternContext(
            pid: pid, uid: parsed.uid, gid: parsed.gid, signal: signal, time: Int64(Glibc.time(nil)), hostname: hostname,
            comm: (try? ProcStat.read("/proc/\(pid)/stat"))?.comm ?? "",
            executable: readLink("/proc/\(pid)/exe") ?? "", cwd: readLink("/proc/\(pid)/cwd") ?? "/",
            coreLimit: newSoft == UInt64.max ? nil : newSoft)
        let destination = CorePattern.resolve(patternText, usesPid: usesPid, context: context)
        // What was at the destination before: an old core of the same name must not pass for the new one.
        var before: [String: FileIdentity] = [:]
        if case let .file(candidates) = destination {
            for path in candidates { before[path] = FileIdentity(path: path) }
        }
        let sent: Int32 = pidfd.map { defib_pidfd_send_signal($0, signal) } ?? Glibc.kill(pid, signal)
        if sent != 0 {
            let e = SystemError(pidfd != nil ? "pidfd_send_signal(\(pid), \(signalName(signal)))" : "kill(\(pid), \(signalName(signal)))")
            return .failure(KernelCoreError(kind: e.errno == ESRCH ? .processGone : .setup, message: "\(e)"))
        }
        notes.append("killed with \(signalName(signal)) so the kernel dumps its core (the kernel method kills by design)")
        return .success(KernelCoreRequest(pid: pid, signal: signal, destination: destination, pattern: patternText,
                                          context: context, startedNs: started, filesBefore: before, notes: notes))
    }

    /// Once the caller has reaped the process: did the kernel dump, and where is the core.
    public static func finish(_ request: KernelCoreRequest, status: ChildStatus?) -> KernelCoreResult {
        let durationMs = Double(monotonicNanoseconds() - request.startedNs) / 1e6
        func result(path: String?, bytes: Int64, error: String?) -> KernelCoreResult {
            KernelCoreResult(record: CaptureRecord(method: "kernel", path: path, bytes: bytes, durationMs: durationMs, error: error),
                             destination: request.destination, signal: request.signal, status: status, notes: request.notes)
        }
        guard let status else {
            return result(path: nil, bytes: 0, error:
                "process \(request.pid) did not die after \(signalName(request.signal)) within the budget (stuck in the kernel?)")
        }
        guard case let .signaled(signal, coreDumped) = status, coreDumped else {
            return result(path: nil, bytes: 0, error:
                "the kernel did not dump a core (\(describeStatus(status))): not dumpable, RLIMIT_CORE, or core_pattern")
        }
        _ = signal
        switch request.destination {
        case .none:
            return result(path: nil, bytes: 0, error: "core_pattern is empty: the kernel wrote no core")
        case let .pipe(handler):
            return result(path: nil, bytes: 0, error: "core handed to \(handler) (core_pattern is a pipe); not stored by defib")
        case .file:
            // %t is the second the kernel wrote: try each second from the signal to now.
            var candidates: [String] = []
            if request.pattern.contains("%t") {
                let now = Int64(Glibc.time(nil))
                for t in (request.context.time - 1)...(now + 1) {
                    var c = request.context; c.time = t
                    if case let .file(paths) = CorePattern.resolve(request.pattern, usesPid: false, context: c) {
                        candidates += paths
                    }
                }
            } else if case let .file(paths) = request.destination {
                candidates = paths
            }
            for path in candidates {
                guard let now = FileIdentity(path: path), now != request.filesBefore[path] else { continue }
                // The kernel writes what fits: a full file system leaves a truncated core. This one is new and
                // was dumped on our signal, for this incident: junk is removed rather than counted as a core.
                if let problem = CoreFileCheck.deleteIfUnusable(path: path) {
                    return result(path: nil, bytes: 0, error: "the kernel dumped a core, but \(problem); deleted (\(now.size) bytes)")
                }
                return result(path: path, bytes: now.size, error: nil)
            }
            return result(path: nil, bytes: 0, error: "the kernel reported a core dump but no new file is at \(request.destination)")
        }
    }

    /// `begin`, then `awaitExit(timeoutMs)` (which reaps the process and returns its status, or nil on timeout),
    /// then `finish`. A failure before the signal leaves the process untouched.
    public static func capture(pid: Int32, pidfd: Int32? = nil, budgetMs: Int,
                               awaitExit: (_ timeoutMs: Int) -> ChildStatus?) -> KernelCoreResult {
        let started = monotonicNanoseconds()
        switch begin(pid: pid, pidfd: pidfd) {
        case let .failure(error):
            return KernelCoreResult(
                record: CaptureRecord(method: "kernel", path: nil, bytes: 0,
                                      durationMs: Double(monotonicNanoseconds() - started) / 1e6, error: error.description),
                destination: .none, signal: nil, status: nil, notes: [])
        case let .success(request):
            let left = max(1, budgetMs - Int((monotonicNanoseconds() - started) / 1_000_000))
            return finish(request, status: awaitExit(left))
        }
    }

    /// The first signal of `coreSignals` that some thread would take with its default (dumping) action.
    static func deliverableCoreSignal(pid: Int32, status: String) -> Int32? {
        var caught: UInt64 = 0, ignored: UInt64 = 0
        for line in status.split(separator: "\n") {
            let parts = line.split(whereSeparator: { $0 == ":" || $0 == "\t" || $0 == " " })
            guard parts.count >= 2 else { continue }
            if parts[0] == "SigCgt" { caught = UInt64(parts[1], radix: 16) ?? 0 }
            if parts[0] == "SigIgn" { ignored = UInt64(parts[1], radix: 16) ?? 0 }
        }
        // A process-directed signal goes to any thread that does not block it.
        var blockedEverywhere = UInt64.max
        for tid in StoppedProcess.threadIDs(of: pid) {
            let text = (try? readProcText("/proc/\(pid)/task/\(tid)/status")) ?? ""
            blockedEverywhere &= ProcStatus.parse(text).blocked
        }
        for sig in coreSignals {
            let bit = UInt64(1) << UInt64(sig - 1)
            if caught & bit == 0 && ignored & bit == 0 && blockedEverywhere & bit == 0 { return sig }
        }
        return nil
    }

    static func limitText(_ v: UInt64) -> String { v == UInt64.max ? "unlimited" : String(v) }

    static func describeStatus(_ s: ChildStatus) -> String {
        switch s {
        case let .exited(code): "exited with code \(code)"
        case let .signaled(sig, core): "killed by \(signalName(sig))\(core ? ", core dumped" : ", no core")"
        }
    }
}

/// A kernel dump that has been fired: pass it to `KernelCoreCapture.finish` with the reaped status.
public struct KernelCoreRequest: Sendable {
    /// The process the signal went to.
    public let pid: Int32
    /// The core-dumping signal sent.
    public let signal: Int32
    /// Where core_pattern says the core goes.
    public let destination: CoreDestination
    let pattern: String
    let context: CorePatternContext
    let startedNs: Int64
    let filesBefore: [String: FileIdentity]
    /// Decisions so far (limit raised, signal sent).
    public let notes: [String]
}

/// Why the kernel method could not be started. Nothing was sent to the process.
public struct KernelCoreError: Error, Equatable, CustomStringConvertible, Sendable {
    /// What kind of failure.
    public enum Kind: String, Sendable { case badArgument, processGone, noSignal, setup }
    /// The kind of failure.
    public var kind: Kind
    /// What failed, naming the call or the value.
    public var message: String
    /// Same as `message`.
    public var description: String { message }
}

/// Enough of a file's identity to tell a freshly written core from an old one with the same name.
struct FileIdentity: Equatable, Sendable {
    var inode: UInt64
    var size: Int64
    var mtimeNs: Int64
    init?(path: String) {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        inode = UInt64(st.st_ino); size = Int64(st.st_size)
        mtimeNs = Int64(st.st_mtim.tv_sec) * 1_000_000_000 + Int64(st.st_mtim.tv_nsec)
    }
}

/// readlink(2) as a String.
func readLink(_ path: String) -> String? {
    var buf = [CChar](repeating: 0, count: 4096)
    let n = readlink(path, &buf, buf.count - 1)
    guard n > 0 else { return nil }
    return String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
}
