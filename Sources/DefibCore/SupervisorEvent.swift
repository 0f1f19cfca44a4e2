import FlightRecorder
import Foundation

/// A moment on both clocks: the monotonic one every decision uses, and the wall clock incidents record.
public struct Instant: Sendable, Equatable {
    /// CLOCK_MONOTONIC: deadlines and durations.
    public var mono: MonoTime
    /// The wall clock: what incidents record.
    public var wall: Date
    public init(mono: MonoTime, wall: Date) { self.mono = mono; self.wall = wall }
}

/// Something that happened, as the runtime reports it to `Supervision.handle`. Some arrive from the
/// outside world (`wait` returns them: a signal, a child's end, a datagram, a reply on the control
/// channel); the others are the answers to effects that return one (`spawned` after `.spawn`,
/// `observed` after `.observe`, …), fed back at once, before anything else.
public enum SupervisorEvent: Sendable, Equatable {
    /// The supervisor starts.
    case start
    /// A turn of the loop: time has passed (every turn ends with one).
    case tick
    /// SIGTERM, SIGINT or SIGHUP to the supervisor.
    case signal(Int32)
    /// A child was reaped: the instance, a helper (gdb, a compressor), or an orphan re-parented to us.
    case childExited(pid: Int32, status: ChildStatus)
    /// A datagram on the NOTIFY_SOCKET we serve, with the sender's pid.
    case notify(NotifyMessage)
    /// The line that answered `ping TOKEN`.
    case pingReply(token: UInt64, line: String)
    /// `ping TOKEN` could not be sent or got no line back (refused, closed, an error).
    case pingFailed(token: UInt64, problem: String)
    /// The answer to `locks`, or why there is none.
    case locksReply(String)
    case locksFailed(String)
    /// The probe attempt started as `token` decided: a beat, or a miss and why.
    case probeResult(token: UInt64, ProbeProgress)
    /// The core a writer thread wrote from the frozen hung instance while its replacement ran.
    indirect case frozenCoreWritten(CoreOutcome)

    // Answers to effects.
    /// `process` is who the instance runs as, read from /proc once it has exec'd (nil when it could not be
    /// read): a death's incident has nothing later to go by, its process is reaped before the incident opens.
    indirect case spawned(pid: Int32, executable: String, process: IncidentProcess? = nil)
    case spawnFailed(String)
    indirect case observed(Observation)
    indirect case coreWritten(CoreOutcome)
    /// The process is frozen for its core, or why not.
    indirect case coreFrozen(CoreFreeze)
    indirect case stallEvidenceTaken(StallCapture)
    case leftoversKilled([KilledProcess])
    /// A helper job (gdb for stacks, a compressor) started, or could not.
    case helperStarted(pid: Int32)
    case helperFailed(String)
    /// The stacks gdb wrote, reduced to threads and frames.
    case stacksRead(String)
    /// What the runtime's tool read before the kill.
    indirect case runtimeStacksRead(RuntimeStacksOutcome)
    /// What delve printed about a core's goroutines.
    case goroutinesRead(String)
    /// The size of a file, nil when it is not there.
    case fileMeasured(Int64?)
    indirect case coresScanned(CoreInventory)
    /// The store's id for the incident just inserted, or why it could not be stored.
    case incidentStored(Result<Int64, EffectFailure>)
    /// A write to the store failed (the supervision goes on; the log says so).
    case storeFailed(EffectFailure)
    /// The store refused this version of an incident it holds; when the failure may pass (a full disk),
    /// the version is written again later.
    indirect case incidentNotUpdated(Incident, EffectFailure)
    /// The journal took the core's announcement (nil), or why it did not.
    case coreAnnounced(EffectFailure?)
    /// The fleet shipper's backlog, nil when none runs.
    case shippingReported(ShippingReport?)
}

/// Why an effect failed (the store refused a write, a helper could not start, a word could not be read),
/// as the error described it.
public struct EffectFailure: Error, Sendable, Equatable, CustomStringConvertible {
    public var description: String
    /// The same call may well succeed later (a full disk, an I/O error, a busy database): what the store
    /// refused is kept and offered again rather than lost.
    public var retryLater: Bool
    public init(_ description: String, retryLater: Bool = false) { self.description = description; self.retryLater = retryLater }
}

/// An error that says whether the same call may succeed later (the store's errors do): how an effect's
/// failure learns `retryLater` without knowing the store's types.
public protocol RetryableError: Error {
    var retryLater: Bool { get }
}

/// One sd_notify datagram.
public struct NotifyMessage: Sendable, Equatable {
    /// The sender (SO_PASSCRED): only the instance's own pid is heard.
    public var pid: Int32
    /// `KEY=VALUE` lines.
    public var text: String
    /// Longer than the 4 KiB we read: cut.
    public var truncated: Bool
    /// The sender is a process of the instance other than its main one (in the instance's cgroup, or below
    /// its main process): heard with `notify_access = "all"`. Looked up only for senders that are not the main pid.
    public var senderInInstance: Bool
    public init(pid: Int32, text: String, truncated: Bool = false, senderInInstance: Bool = false) {
        self.pid = pid; self.text = text; self.truncated = truncated; self.senderInInstance = senderInInstance
    }
}

/// A process the last instance left behind, killed.
public struct KilledProcess: Sendable, Equatable {
    /// Its pid and `comm`, for the incident's note.
    public var pid: Int32
    public var name: String
    public init(pid: Int32, name: String) { self.pid = pid; self.name = name }
}

/// What to read about a process without touching it (no signal, no ptrace): /proc, its flight recorder
/// and lock words from its memory. One request gathers everything a decision needs, so the decision
/// itself stays pure.
public struct ObservationRequest: Sendable, Equatable {
    /// How many /proc samples: none, one, or a pair `apartMs` apart (a baseline taken on the spot).
    public enum Samples: Sendable, Equatable { case none, one, pair(apartMs: Int) }
    public var pid: Int32
    public var samples: Samples
    /// /proc/PID/exe.
    public var executable = false
    /// The flight recorder file to read.
    public var flightRecorder: String?
    /// Read the word of every lock the recorder lists, from the process's memory.
    public var recorderLockWords = false
    /// Lock word addresses to read as well (learnt from the `locks` telemetry while the service was healthy).
    public var lockWordAddresses: [UInt64] = []
    /// /proc/PID/task.
    public var threadIDs = false
    /// Who the process runs as (uid, gid, comm, command line, cgroup): what coredumpctl lists a core by.
    public var processIdentity = false
    /// The pthread mutex wait-for graph: which thread sleeps on which mutex, and its owner (from /proc and memory).
    public var waitForGraph = false
    /// Which runtime the process runs (its mappings and executable).
    public var detectRuntime = false
    /// Every process of the instance (the main one and its descendants), sampled as `samples` says into
    /// `Observation.instanceSamples`: a master's silence may be a worker's hang.
    public var instanceProcesses = false
    /// A proof reading (`ProofRule`) with `.pair`: the lock words are read right after the first sample and
    /// again after the pause, and the wait-for graph after them, all before the second sample.
    public var proofReads = false
    public init(pid: Int32, samples: Samples) { self.pid = pid; self.samples = samples }
}

/// What an `ObservationRequest` found.
public struct Observation: Sendable, Equatable {
    /// The flight recorder as read: decoded, not there, or there but unreadable (why).
    public enum Recorder: Sendable, Equatable { case record(FlightRecord), missing, unreadable(String) }
    public var pid: Int32
    /// Oldest first.
    public var samples: [ProcessSample] = []
    public var executable: String?
    public var flightRecorder: Recorder?
    /// Address → the word, or why it could not be read.
    public var lockWords: [UInt64: Result<UInt64, EffectFailure>] = [:]
    public var threadIDs: [Int32] = []
    /// nil when not asked for, or when the process is gone.
    public var process: IncidentProcess?
    /// The wait-for graph, when asked for: what the diagnosis proves a lock cycle from.
    public var waitFor: WaitForReading?
    /// The runtime, when asked for: which tool reads its own stacks.
    public var runtime: DetectedRuntime?
    /// With `instanceProcesses`: one round per sample, oldest first, each a sample of every process of the
    /// instance (the main one first).
    public var instanceSamples: [[ProcessSample]] = []
    /// With `proofReads`: the lock words as read at the first of the two reads (`lockWords` holds the second).
    public var firstLockWords: [UInt64: Result<UInt64, EffectFailure>] = [:]
    public init(pid: Int32) { self.pid = pid }
}

/// How to write a core of a hung process.
public struct CoreRequest: Sendable, Equatable {
    public var pid: Int32
    public var method: CaptureMethod
    /// core.NAME.INCIDENT (gcore appends the pid itself); `path` is prefix.PID.
    public var prefix: String
    public var path: String { "\(prefix).\(pid)" }
    public var budgetMs: Int
    /// The thread the core should show first (a blocked one).
    public var firstThread: Int32?
    /// While the core is written, keep the service manager's watchdog fed every `periodNs` until the
    /// monotonic `untilNs`, never longer (a capture that wedges past it lets the watchdog fire).
    public var managerKeepAlive: (periodNs: Int64, untilNs: Int64)?
    public init(pid: Int32, method: CaptureMethod, prefix: String, budgetMs: Int, firstThread: Int32? = nil) {
        self.pid = pid; self.method = method; self.prefix = prefix; self.budgetMs = budgetMs; self.firstThread = firstThread
    }
    public static func == (a: CoreRequest, b: CoreRequest) -> Bool {
        a.pid == b.pid && a.method == b.method && a.prefix == b.prefix && a.budgetMs == b.budgetMs && a.firstThread == b.firstThread
            && a.managerKeepAlive?.periodNs == b.managerKeepAlive?.periodNs && a.managerKeepAlive?.untilNs == b.managerKeepAlive?.untilNs
    }
}

/// What writing a core did.
public struct CoreOutcome: Sendable, Equatable {
    public var record: CaptureRecord
    /// Threads in the core, when the writer knows.
    public var threads: Int?
    /// What the writer did that the incident should say (threads stopped, limits raised, where the kernel put
    /// the core, …).
    public var notes: [String] = []
    /// The kernel method kills the process by design: when its signal went out, and the death it reaped.
    public var killedAt: Date?
    public var exited: ChildStatus?
    /// The signal that ended the process when the writer sent one (the kernel method's core-dumping signal,
    /// SIGSYS unless the process blocks it): what coredumpctl shows as the core's signal.
    public var signal: Int32?
    /// A number in [0, 1) for the kill jitter (the runtime draws it; the decision stays pure).
    public var jitterDraw: Double = 0
    public init(record: CaptureRecord, threads: Int? = nil) { self.record = record; self.threads = threads }
}

/// The cores the store knows of and the space around them, for retention.
public struct CoreInventory: Sendable, Equatable {
    public var cores: [StoredCore]
    /// The core directory's file system; nil when it could not be read (nothing is deleted then).
    public var space: FileSystemSpace?
    public init(cores: [StoredCore], space: FileSystemSpace?) { self.cores = cores; self.space = space }
}
