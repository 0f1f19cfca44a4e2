import Foundation

/// Why an incident was opened. A child's end is data, not an error.
public enum IncidentCause: Sendable, Equatable, Codable {
    /// The heartbeat stopped: `misses` consecutive pings (keep-alives, probe attempts) went unanswered.
    /// `heartbeat` names a probe when one was the source (`http probe GET http://…`); nil for the control
    /// channel and sd_notify, whose wording stays as it was.
    case missedHeartbeat(misses: Int, lastPongAt: Date?, lastError: String?, heartbeat: String? = nil)
    /// The child exited on its own with this code.
    case exited(code: Int32)
    /// The child was killed by a signal it did not get from us.
    case signaled(signal: Int32, coreDumped: Bool)
    /// The child never reached its first `pong` (or probe beat, or READY=1) within the start timeout;
    /// `heartbeat` names the probe when one was the source.
    case startTimeout(seconds: Double, heartbeat: String? = nil, lastError: String? = nil)
    /// The program could not be started at all (exec failed, bad path …).
    case spawnFailed(message: String)
    /// The service asked to be treated as hung (sd_notify `WATCHDOG=trigger`).
    case triggered(reason: String)
    /// The heartbeat went silent past the suspect stage and came back by itself before the deadline: a stall,
    /// recorded with its evidence, nothing done to the process. `heartbeat` names a probe as above.
    case stall(silenceMs: Double, misses: Int, heartbeat: String? = nil)

    /// Short machine-readable kind: `missed-heartbeat`, `exited`, `signaled`, `start-timeout`, `spawn-failed`, `watchdog-trigger`.
    public var kind: String {
        switch self {
        case .missedHeartbeat: "missed-heartbeat"
        case .exited: "exited"
        case .signaled: "signaled"
        case .startTimeout: "start-timeout"
        case .spawnFailed: "spawn-failed"
        case .triggered: "watchdog-trigger"
        case .stall: "stall"
        }
    }

    /// One human sentence.
    public var summary: String {
        switch self {
        case let .missedHeartbeat(misses, lastPong, lastError, heartbeat):
            var s = heartbeat.map { "\($0) failing: \(misses) heartbeat(s) missed" } ?? "control channel silent: \(misses) heartbeat(s) missed"
            let answer = heartbeat == nil ? "pong" : "beat"
            if let lastPong { s += ", last \(answer) \(RFC3339.string(lastPong))" } else { s += ", never answered" }
            if let lastError { s += " (\(lastError))" }
            return s
        case let .exited(code): return "exited on its own with code \(code)"
        case let .signaled(signal, core):
            return "killed by signal \(signal) (\(signalName(signal)))" + (core ? ", core dumped by the kernel" : "")
        case let .startTimeout(seconds, heartbeat, lastError):
            let line = heartbeat.map { "\($0): no first beat within \(seconds) s of start" } ?? "no first pong within \(seconds) s of start"
            return line + (lastError.map { " (last: \($0))" } ?? "")
        case let .spawnFailed(message): return "could not start: \(message)"
        case let .triggered(reason): return reason
        case let .stall(silence, misses, heartbeat):
            return (heartbeat.map { "\($0) silent" } ?? "heartbeat silent") + " for \(Int(silence)) ms (\(misses) missed), then back by itself"
        }
    }
}

/// How the evidence capture went.
public struct CaptureRecord: Sendable, Equatable, Codable {
    public var method: String          // "gcore", "none", later "native", "kernel"
    public var path: String?           // the core file, nil when none was written
    public var bytes: Int64            // size of the core file (0 when none)
    public var durationMs: Double      // wall time of the capture
    public var error: String?          // why it failed or was cut short
    public init(method: String, path: String?, bytes: Int64, durationMs: Double, error: String?) {
        self.method = method; self.path = path; self.bytes = bytes; self.durationMs = durationMs; self.error = error
    }
}

/// One lock's state as the supervisor last saw it.
public struct LockState: Sendable, Equatable, Codable {
    public var name: String
    public var address: String         // "0x…" in the child's address space
    public var word: String            // "0x…", 16 hex digits
    /// Where `word` came from: "memory" (process_vm_readv of the hung process) or "control" (last `locks` reply).
    public var source: String
    public var holder: String?         // current write holder label, when known
    public var lastHolder: String?     // last write holder label, when known
    public var readersWaiting: Int?
    public var writersWaiting: Int?
    /// The current write holder's thread and since when it holds (ms since the epoch).
    public var holderTid: Int32?
    public var holderSinceUnixMs: Int64?
    /// The same moment on CLOCK_MONOTONIC (the flight recorder's), to order it against events precisely.
    public var holderSinceMonotonicNs: UInt64?
    /// "buggy" (parking_lot 0.8.0–0.12.3) or "fixed" (0.12.4).
    public var revert: String?
    /// The last slow-lock events from the flight recorder, oldest first (with the pinned ones the ring
    /// had already lost: the write timeout that corrupted the word, the last write-while-holding-read).
    public var events: [LockEventRecord]?
    /// True when `holder` owns WRITER but still waits for the readers inside; false when it is inside.
    /// Nil when the source does not say (flight recorder version 1, control channel).
    public var holderWaitingForReaders: Bool?
    /// The threads holding a read lock, oldest hold first (at most 8); nil when the source does not track them.
    public var readHolders: [LockReadHolderRecord]?
    /// Read holds not in `readHolders` (threads past the listed ones, reads no thread record accounts for).
    public var moreReadHolders: Int?
    public init(name: String, address: String, word: String, source: String,
                holder: String? = nil, lastHolder: String? = nil, readersWaiting: Int? = nil, writersWaiting: Int? = nil) {
        self.name = name; self.address = address; self.word = word; self.source = source
        self.holder = holder; self.lastHolder = lastHolder
        self.readersWaiting = readersWaiting; self.writersWaiting = writersWaiting
    }
}

/// A thread holding a read lock, as the flight recorder saw it.
public struct LockReadHolderRecord: Sendable, Equatable, Codable, CustomStringConvertible {
    /// Kernel thread id.
    public var tid: Int32
    /// Read locks it holds on the lock (recursive depth).
    public var depth: Int
    /// When it took its first read lock (Unix ms; a few ms of resolution).
    public var sinceUnixMs: Int64
    /// The thread has exited still holding it.
    public var threadExited: Bool
    public init(tid: Int32, depth: Int = 1, sinceUnixMs: Int64, threadExited: Bool = false) {
        self.tid = tid; self.depth = depth; self.sinceUnixMs = sinceUnixMs; self.threadExited = threadExited
    }

    /// "tid 123 since 2026-11-18T11:06:40.000Z" (+ " depth 2", " (exited)").
    public var description: String {
        "tid \(tid) since \(RFC3339.string(Date(timeIntervalSince1970: Double(sinceUnixMs) / 1000)))"
            + (depth > 1 ? " depth \(depth)" : "") + (threadExited ? " (exited)" : "")
    }
}

/// Where an incident ended.
public enum IncidentOutcome: String, Sendable, Codable {
    case open            // still being handled
    case recovered       // a new instance answered its first ping
    case gaveUp = "gave-up"   // restart intensity exceeded; the supervisor stopped
    case shutdown        // the supervisor was asked to stop before recovery finished
    case replacementFailed = "replacement-failed"   // the new instance hung before it was ready: the next incident holds its evidence
    case selfRecovered = "self-recovered"   // a stall: the heartbeat came back by itself, nothing was done to the process
    /// The supervisor died (SIGKILL, a crash, the machine) while the incident was open; the next supervisor of
    /// the service closed it at its start with whatever evidence had been saved.
    case supervisorDied = "supervisor-died"
}

/// What a hang was declared on: the evidence proved a deadlock at a miss (`ProofRule`), or the silence
/// reached the deadline and the progress judgement.
public enum HangDeclaration: String, Sendable, Codable {
    case proof, deadline
}

/// The order of a native capture and the restart (see `ConcurrentCapture`).
public enum CaptureOrder: String, Sendable, Codable {
    /// Frozen, replacement started, core written, frozen instance killed.
    case restartWhileWriting = "restart-while-writing"
    /// Core written, process killed, then the replacement started (memory did not allow the other).
    case writeThenRestart = "write-then-restart"
}

/// A record of one time the supervised service stopped making progress or died.
public struct Incident: Sendable, Equatable, Codable {
    public var id: Int64?
    public var service: String
    public var pid: Int32
    public var binaryPath: String?
    public var startedAt: Date?        // when the failing instance was started
    public var detectedAt: Date
    public var killedAt: Date?
    public var restartedAt: Date?      // when the replacement was spawned
    public var readyAt: Date?          // when the replacement answered its first ping
    public var cause: IncidentCause
    public var capture: CaptureRecord?
    public var stacks: String?
    public var lockState: [LockState]
    public var newPid: Int32?
    public var outcome: IncidentOutcome
    public var diagnosis: String
    public var notes: [String]         // decisions and anything that went wrong while handling it
    /// How long the heartbeat had been silent when the hang was declared, and how much of that was a
    /// starvation extension of the deadline.
    public var silenceMs: Double?
    public var extendedMs: Int?
    /// What /proc said about the process's progress when the hang was declared (stuck, starved, busy, …).
    public var progress: ProgressVerdict?
    /// Thread states at the suspect stage and at the hang, e.g. "8 S (8 in futex)".
    public var threadStates: String?
    /// A short hash grouping repeats of the same hang (see `IncidentSignature`).
    public var signature: String?
    /// Threads in the core (or in /proc when no core was taken).
    public var threads: Int?
    /// The evidence behind `diagnosis`, one line each.
    public var diagnosisEvidence: [String]?
    /// Where the flight recorder was read from and what it said at the hang, when there was one.
    public var flightRecorder: String?
    /// Who the process was (uid, gid, comm, command line, cgroup): a hang's read before its core, a death's once ready (or at its start).
    public var process: IncidentProcess?
    /// The signal defib sent to end the process when it was not SIGKILL (the kernel method's core-dumping
    /// signal); see `endingSignal`.
    public var signal: Int32?
    /// The pthread mutex wait-for graph read before the kill: one edge per thread blocked on a mutex.
    public var waitFor: [WaitForEdge]?
    /// The runtime's own stacks (goroutines, Python or Java threads), grouped; nil when none were read.
    public var runtimeEvidence: RuntimeEvidence?
    /// Every process of a multi-process instance (master and workers) as judged at the hang, with the cores
    /// written of the stuck ones; nil when the instance was one process or they were not judged.
    public var processes: [ServiceProcessRecord]?
    /// What the hang was declared on: proof at a miss, or the deadline (nil for an incident that is no hang
    /// judgement: a death, a start that failed).
    public var declaredOn: HangDeclaration?
    /// When the core was written (or its capture ended without one); nil when no capture was made.
    public var captureDoneAt: Date?
    /// Whether the replacement started while the core was written from the frozen instance; nil when the order
    /// was never in question (no native capture with sockets passed by defib).
    public var captureOrder: CaptureOrder?
    /// A stall's evidence from the suspect stage (stacks of the frozen threads, the pause it cost): the whole
    /// evidence of a `stall` incident, or the first moment of a hang that had been a stall.
    public var stallEvidence: StallEvidence?

    public init(id: Int64? = nil, service: String, pid: Int32, binaryPath: String? = nil, startedAt: Date? = nil,
                detectedAt: Date, cause: IncidentCause) {
        self.id = id; self.service = service; self.pid = pid; self.binaryPath = binaryPath
        self.startedAt = startedAt; self.detectedAt = detectedAt; self.cause = cause
        self.killedAt = nil; self.restartedAt = nil; self.readyAt = nil; self.capture = nil
        self.stacks = nil; self.lockState = []; self.newPid = nil; self.outcome = .open
        self.diagnosis = ""; self.notes = []
    }
}

/// RFC 3339 timestamps, UTC: the one formatter for incidents, their JSON, the store, reports and benchmarks.
/// Formatters are costly to build (most of the time of listing thousands of incidents went there) and
/// ISO8601DateFormatter is documented thread-safe, so one of each precision is shared.
public enum RFC3339 {
    /// With milliseconds ("2026-11-23T10:00:00.123Z"), or to the second.
    public static func string(_ date: Date, fractionalSeconds: Bool = true) -> String {
        if fractionalSeconds, let text = millisecondsUTCString(date) { return text }
        return (fractionalSeconds ? withFraction : withoutFraction).string(from: date)
    }

    /// `yyyy-MM-ddTHH:mm:ss.SSSZ` written digit by digit, exactly as the formatter does (to the nearest
    /// millisecond) for years 1970 to 9999; nil outside them, which the formatter writes. The
    /// formatter goes through ICU for every date, and the fleet shipper writes half a dozen per incident.
    static func millisecondsUTCString(_ date: Date) -> String? {
        let msDouble = (date.timeIntervalSince1970 * 1000).rounded()
        guard msDouble >= 0, msDouble < 253_402_300_800_000 else { return nil }
        let ms = Int64(msDouble)
        let days = Int(ms / 86_400_000)
        var rest = Int(ms % 86_400_000)
        // The civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
        let z = days + 719_468
        let era = z / 146_097
        let doe = z - era * 146_097
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let day = doy - (153 * mp + 2) / 5 + 1
        let month = mp < 10 ? mp + 3 : mp - 9
        let year = yoe + era * 400 + (month <= 2 ? 1 : 0)
        let hour = rest / 3_600_000; rest %= 3_600_000
        let minute = rest / 60_000; rest %= 60_000
        let second = rest / 1000
        let milli = rest % 1000
        return String(unsafeUninitializedCapacity: 24) { b in
            func put(_ value: Int, _ at: Int, _ width: Int) {
                var v = value
                for i in stride(from: at + width - 1, through: at, by: -1) { b[i] = UInt8(48 + v % 10); v /= 10 }
            }
            put(year, 0, 4); b[4] = 45; put(month, 5, 2); b[7] = 45; put(day, 8, 2); b[10] = 84
            put(hour, 11, 2); b[13] = 58; put(minute, 14, 2); b[16] = 58; put(second, 17, 2); b[19] = 46
            put(milli, 20, 3); b[23] = 90
            return 24
        }
    }

    /// Reads either precision back; nil for anything else.
    public static func date(from text: String) -> Date? {
        millisecondsUTC(text) ?? withFraction.date(from: text) ?? withoutFraction.date(from: text)
    }

    /// `yyyy-MM-ddTHH:mm:ss.SSSZ`, the form `string` writes, read digit by digit: the formatter costs tens of
    /// microseconds a date, an incident has half a dozen, and the fleet shipper decodes every incident it
    /// ships. nil for anything else, which the formatters read.
    static func millisecondsUTC(_ text: String) -> Date? {
        let utf8 = text.utf8
        return utf8.withContiguousStorageIfAvailable { b -> Date? in
            guard b.count == 24, b[4] == 45, b[7] == 45, b[10] == 84, b[13] == 58, b[16] == 58, b[19] == 46, b[23] == 90 else { return nil }
            func n(_ from: Int, _ count: Int) -> Int? {
                var v = 0
                for i in from..<(from + count) {
                    let d = Int(b[i]) - 48
                    guard (0...9).contains(d) else { return nil }
                    v = v * 10 + d
                }
                return v
            }
            guard let y = n(0, 4), let mo = n(5, 2), let d = n(8, 2), let h = n(11, 2), let mi = n(14, 2), let s = n(17, 2), let ms = n(20, 3),
                  (1...12).contains(mo), (1...31).contains(d), h < 24, mi < 60, s < 60 else { return nil }
            // Days from the civil date (Howard Hinnant's algorithm), then seconds.
            let yy = mo <= 2 ? y - 1 : y
            let era = (yy >= 0 ? yy : yy - 399) / 400
            let yoe = yy - era * 400
            let doy = (153 * (mo + (mo > 2 ? -3 : 9)) + 2) / 5 + d - 1
            let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
            let days = era * 146_097 + doe - 719_468
            let ms64 = Int64(days) * 86_400_000 + Int64(h * 3_600_000 + mi * 60_000 + s * 1000 + ms)
            return Date(timeIntervalSince1970: Double(ms64) / 1000)
        } ?? nil
    }

    nonisolated(unsafe) private static let withFraction: ISO8601DateFormatter = {
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        f.timeZone = TimeZone(identifier: "UTC")
        return f
    }()

    nonisolated(unsafe) private static let withoutFraction: ISO8601DateFormatter = {
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime]
        f.timeZone = TimeZone(identifier: "UTC")
        return f
    }()
}

/// The conventional name of a Linux signal number ("SIGKILL"), or "signal N".
public func signalName(_ signal: Int32) -> String {
    let names: [Int32: String] = [1: "SIGHUP", 2: "SIGINT", 3: "SIGQUIT", 4: "SIGILL", 5: "SIGTRAP", 6: "SIGABRT",
                                  7: "SIGBUS", 8: "SIGFPE", 9: "SIGKILL", 10: "SIGUSR1", 11: "SIGSEGV", 12: "SIGUSR2",
                                  13: "SIGPIPE", 14: "SIGALRM", 15: "SIGTERM", 16: "SIGSTKFLT", 17: "SIGCHLD", 18: "SIGCONT",
                                  19: "SIGSTOP", 20: "SIGTSTP", 21: "SIGTTIN", 22: "SIGTTOU", 23: "SIGURG", 24: "SIGXCPU",
                                  25: "SIGXFSZ", 26: "SIGVTALRM", 27: "SIGPROF", 28: "SIGWINCH", 29: "SIGIO", 30: "SIGPWR", 31: "SIGSYS"]
    return names[signal] ?? "signal \(signal)"
}
