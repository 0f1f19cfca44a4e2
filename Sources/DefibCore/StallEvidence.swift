import Foundation

/// `[escalation] stall_evidence`: what to take from a service that reaches the suspect stage, while it is
/// still stalled. Most stalls end by themselves (a lock held too long, a GC pause, a slow disk): what the
/// threads were doing at that moment is the only evidence there will ever be, and it must cost the service a
/// pause it does not notice.
public enum StallEvidenceMode: String, Sendable, Codable, CaseIterable {
    /// Nothing beyond the soft evidence (thread states, flight recorder).
    case none
    /// Every thread's stack: the threads frozen just long enough to copy their registers and the live part of
    /// their stacks into a private core, unwound by gdb in the background after they run again.
    case stacks
    /// A full native core (kept, under the same retention as other cores, and the first to go) — unless it
    /// would take longer than the budget, then stacks only.
    case core
}

/// What to capture at the suspect stage, and how long the service may be frozen for it.
public struct StallEvidenceRequest: Sendable, Equatable {
    public var pid: Int32
    public var mode: StallEvidenceMode
    /// The freeze allowed for the copy (`stall_evidence_budget_ms`); stopping the threads is bounded separately.
    public var budgetMs: Int
    /// The file to write (in the core directory, created 0600, never followed through a link).
    public var path: String
    /// The thread gdb should show first (one blocked in a futex).
    public var firstThread: Int32?
    public init(pid: Int32, mode: StallEvidenceMode, budgetMs: Int, path: String, firstThread: Int32? = nil) {
        self.pid = pid; self.mode = mode; self.budgetMs = budgetMs; self.path = path; self.firstThread = firstThread
    }
}

/// What capturing a stall's evidence did: the file (a stacks-only core or a full one), and the pause the
/// service saw.
public struct StallCapture: Sendable, Equatable {
    /// `stacks` or `core`: what was written (a `core` request over budget is written as `stacks`).
    public var mode: StallEvidenceMode
    /// The file written, its size and the writer's error; `path` nil when nothing was written.
    public var record: CaptureRecord
    /// From the first thread stopped until the last one ran again: what the evidence cost the service.
    public var pauseMs: Double
    /// Threads frozen and in the file.
    public var threads: Int
    /// What the writer did that the incident should say.
    public var notes: [String]
    /// The captured process's executable (/proc/PID/exe, read before the stop): what gdb reads the file with.
    public var executable: String?
    public init(mode: StallEvidenceMode, record: CaptureRecord, pauseMs: Double, threads: Int, notes: [String] = [], executable: String? = nil) {
        self.mode = mode; self.record = record; self.pauseMs = pauseMs; self.threads = threads; self.notes = notes
        self.executable = executable
    }
}

/// The evidence of one stall, taken at the suspect stage: it becomes a stall incident when the heartbeat comes
/// back, or joins the hang's incident when it does not (two moments of the same stall).
public struct StallEvidence: Sendable, Equatable, Codable {
    /// Which capture this is (the stacks gdb reads later find their incident by it).
    public var sequence: Int
    public var takenAt: Date
    /// How long the heartbeat had been silent when the evidence was taken.
    public var silenceMs: Double
    /// `none`, `stacks` or `core`: what was taken.
    public var mode: StallEvidenceMode
    /// The freeze the evidence cost the service (0 for `none`).
    public var pauseMs: Double
    /// Threads in the evidence (frozen, or in /proc for `none`).
    public var threads: Int?
    /// Thread states from /proc at that moment, e.g. "6 S (5 in futex)".
    public var threadStates: String?
    /// Every thread's backtrace (gdb over the file), demangled; nil until gdb is done, or when none was taken.
    public var stacks: String?
    /// The full core when one was kept (`core`), nil otherwise (a stacks-only file is removed once read).
    public var corePath: String?
    public var coreBytes: Int64?
    /// Why the evidence is partial or missing.
    public var error: String?
    /// The process captured when it is not the instance's main one ("pid 4711 (nginx), stopped; the main process
    /// pid 4700 was idle"): a multi-process service's stalled worker. Nil for the main process.
    public var process: String?
    /// That process's executable, when a full core of it was kept: what gdb reads the core with.
    public var executable: String?
    public init(sequence: Int, takenAt: Date, silenceMs: Double, mode: StallEvidenceMode, pauseMs: Double = 0) {
        self.sequence = sequence; self.takenAt = takenAt; self.silenceMs = silenceMs; self.mode = mode; self.pauseMs = pauseMs
    }

    /// One line for notes and logs.
    public var summary: String {
        var line: String
        switch mode {
        case .none: line = "stall evidence: soft evidence only (stall_evidence = none)"
        case .stacks: line = String(format: "stall evidence: stacks of %d thread(s), service paused %.2f ms", threads ?? 0, pauseMs)
        case .core: line = String(format: "stall evidence: a full core of %d thread(s), service paused %.2f ms", threads ?? 0, pauseMs)
        }
        if let process { line += " of \(process)" }
        line += String(format: " (taken after %.0f ms of silence)", silenceMs)
        if let error { line += "; \(error)" }
        return line
    }
}

/// What kind of incident it is, as `defib incidents list --kind` selects them: a `hang` (the heartbeat stopped
/// and the process was killed: missed heartbeats, a start that never answered, WATCHDOG=trigger), a `stall` (it
/// came back by itself: nothing was done), or an `exit` (it died, or could not start).
public enum IncidentKind: String, Sendable, CaseIterable {
    case hang, stall, exit

    /// The causes (`cause` in the JSON) of this kind.
    public var causeKinds: [String] {
        switch self {
        case .hang: ["missed-heartbeat", "start-timeout", "watchdog-trigger"]
        case .stall: ["stall"]
        case .exit: ["exited", "signaled", "spawn-failed"]
        }
    }

    /// The kind of a cause.
    public init(_ cause: IncidentCause) {
        switch cause {
        case .missedHeartbeat, .startTimeout, .triggered: self = .hang
        case .stall: self = .stall
        case .exited, .signaled, .spawnFailed: self = .exit
        }
    }
}

/// `stall_incidents_per_hour`: at most this many stall incidents stored in full per service in any hour; the
/// rest are counted (the next stored one says how many, and the `defib_stalls_total` metric counts them all).
/// Pure, on the monotonic clock.
public struct StallRateLimit: Sendable, Equatable {
    public let perHour: Int
    /// When the stored ones were recorded, oldest first, within the last hour.
    public private(set) var stored: [MonoTime] = []
    /// Stalls counted but not stored since the last stored one.
    public private(set) var notStored = 0
    public static let windowMs = 3_600_000

    public init(perHour: Int) { self.perHour = perHour }

    /// Whether a stall at `now` is stored in full; counts it either way. When it is, `notStored` says how many
    /// came before it unstored (and is reset by `takeNotStored`).
    public mutating func admit(at now: MonoTime) -> Bool {
        stored.removeAll { now.milliseconds(since: $0) >= Double(Self.windowMs) }
        guard stored.count < perHour else {
            notStored += 1
            return false
        }
        stored.append(now)
        return true
    }

    /// The unstored count since the last stored stall, reset.
    public mutating func takeNotStored() -> Int {
        defer { notStored = 0 }
        return notStored
    }
}
