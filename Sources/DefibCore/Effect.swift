import Foundation

/// Something the supervision asks the world to do. `Supervision.handle` returns these; the runtime carries
/// them out in order through `SupervisorEffects` and feeds every answer straight back as an event. The
/// decisions never touch a process, a file or a clock themselves. The large payloads are boxed, so the
/// loop's common values (a ping, a metric) stay a few words.
public enum Effect: Sendable, Equatable {
    // The service.
    /// Start an instance; answered by `spawned` or `spawnFailed`.
    indirect case spawn(SpawnPlan)
    /// A signal to the instance (through its pidfd) and its process group.
    case signal(pid: Int32, signal: Int32)
    /// Kill the processes the ended instance `pid` left behind (re-parented to us), except `sparing`;
    /// answered by `leftoversKilled`.
    case killLeftovers(of: Int32, sparing: Set<Int32>)

    // The control channel.
    /// Send `ping TOKEN`; a failure to send is answered by `pingFailed` at once, the reply comes later.
    case sendPing(token: UInt64)
    /// Drop the ping in flight (the machine gave up on it, or the instance is gone).
    case cancelPing
    /// Ask the healthy service where its locks are (`locks`); the reply comes later.
    case queryLocks
    case cancelLocksQuery

    // Probes (`http`, `tcp`, `exec`): the heartbeat of a service that speaks no protocol of ours.
    /// Start one attempt of the configured probe, its result reported as `probeResult(token:)`; a failure to
    /// even start (refused at once, no process) is answered by `probeResult` at once.
    case startProbe(token: UInt64)
    /// The attempt's time is up: end it (an exec probe's process group is killed); answered by `probeResult`
    /// with what it was still waiting for.
    case timeOutProbe(token: UInt64)
    /// Drop the attempt in flight without a verdict (the machine gave up on it, the instance is gone).
    case cancelProbe

    // Evidence.
    /// Read /proc, the flight recorder and lock words; answered by `observed`.
    indirect case observe(ObservationRequest)
    /// Write a core; answered by `coreWritten`.
    indirect case writeCore(CoreRequest)
    /// Native capture, restart while the core is written: ptrace-stop every thread of the hung process, read its
    /// registers and mappings, open the core file; answered by `coreFrozen`.
    indirect case freezeForCore(CoreRequest)
    /// Write the core of the process `freezeForCore` froze: at once (answered by `coreWritten`, the process
    /// detached), or in the background (no answer now: `wait` reports `frozenCoreWritten` when it is done; the
    /// process stays frozen until it is killed).
    case writeFrozenCore(background: Bool)
    /// The replacement is ready: the background writer, which left the machine to it until then (waiting, at most
    /// half the capture budget, at nice 19), writes the core at the supervisor's own priority.
    case hurryFrozenCore
    /// A stalled service's stacks (or core) at the suspect stage, frozen for at most the request's budget;
    /// answered by `stallEvidenceTaken`.
    indirect case takeStallEvidence(StallEvidenceRequest)
    /// gdb over a core in the background, its output to `output`; answered by `helperStarted` or `helperFailed`.
    case startStacks(binary: String, core: String, output: String)
    /// A compressor in the background; answered by `helperStarted` or `helperFailed`.
    case startCompression(argv: [String])
    /// The stacks gdb wrote to `path`; answered by `stacksRead`.
    case readStacks(path: String)
    /// The runtime's own stacks from the live process (py-spy, jcmd) within the request's budget; answered by
    /// `runtimeStacksRead`.
    indirect case readRuntimeStacks(RuntimeStacksRequest)
    /// delve over a Go service's core in the background; answered by `helperStarted` or `helperFailed`.
    indirect case startGoroutines(GoroutinesRequest)
    /// What delve wrote to `path`; answered by `goroutinesRead`.
    case readGoroutines(path: String)
    /// SIGKILL a helper still running at shutdown and reap it.
    case stopHelper(pid: Int32)
    /// Answered by `fileMeasured`.
    case measureFile(path: String)
    /// Remove a file defib wrote (a core, a helper's output); a missing file is not an error.
    case removeFile(path: String)
    /// The stored cores and the space of `directory`'s file system; answered by `coresScanned`.
    case scanCores(directory: String)

    // The record.
    /// Answered by `incidentStored`.
    indirect case insertIncident(Incident)
    /// Replace the stored incident with the same id; a failure is answered by `storeFailed`.
    indirect case updateIncident(Incident)
    /// An incident no longer in memory lost its core to retention: the store notes it (`note`) and forgets
    /// the path; a failure is answered by `storeFailed`.
    case recordCoreRemoved(incidentID: Int64, note: String)
    /// A final core announced to the journal in systemd-coredump's form (`CoredumpEntry`), so coredumpctl
    /// lists it; answered by `coreAnnounced`.
    case announceCore([JournalField])

    // People and the service manager.
    case log(LogEntry)
    case metric(MetricEvent)
    /// sd_notify to the service manager that started defib ("READY=1", "STATUS=…", "WATCHDOG=1").
    case notifyManager(String)
    /// Ask the fleet shipper how far behind it is (for STATUS=); answered by `shippingReported`.
    case readShipping
    /// The supervision is over: exit with this code.
    case exit(code: Int32)
}

/// How to start an instance: the program and what the service adds to the supervisor's environment (the
/// runtime starts from its own, without what the service manager meant for defib alone).
public struct SpawnPlan: Sendable, Equatable {
    public var argv: [String]
    public var workingDirectory: String?
    /// Set whatever the environment holds.
    public var environment: [String: String]
    /// Set only when the environment does not have them.
    public var environmentDefaults: [String: String]
    /// A stale socket the new instance will bind (removed first).
    public var removeFirst: String?
    public init(argv: [String], workingDirectory: String?, environment: [String: String], environmentDefaults: [String: String], removeFirst: String?) {
        self.argv = argv; self.workingDirectory = workingDirectory; self.environment = environment
        self.environmentDefaults = environmentDefaults; self.removeFirst = removeFirst
    }
}

/// A log line with its structured fields (journald gets them as fields: `incident_id` → INCIDENT_ID).
public struct LogEntry: Sendable, Equatable {
    /// swift-log's levels.
    public enum Level: String, Sendable, Equatable { case trace, debug, info, notice, warning, error, critical }
    public var level: Level
    public var message: String
    public var fields: [String: String]
    public init(_ level: Level, _ message: String, fields: [String: String] = [:]) {
        self.level = level; self.message = message; self.fields = fields
    }
}

/// A measurement for the metrics endpoint.
public enum MetricEvent: Sendable, Equatable {
    case pingRoundTrip(nanoseconds: Int64)
    case heartbeatMissed
    case suspect
    case deadlineExtended
    case restart
    case recovery
    case notifyRejected
    case killJitter(ms: Int)
    case captureDuration(nanoseconds: Int64)
    case captureBytes(Int64)
    /// An incident opened, by cause kind.
    case incident(cause: String)
    /// A progress verdict, by kind.
    case verdict(String)
    /// The machine's phase changed.
    case phase(SupervisorMachine.Phase)
    /// A stall ended by itself after `silenceMs` (stored in full or only counted).
    case stall(silenceMs: Double)
    /// The freeze a stall's evidence cost the service.
    case stallEvidencePause(ms: Double)
}

/// Every OS interaction the supervisor's loop needs: implemented for real by `DefibPOSIX.SystemEffects`
/// (with `DefibStore` behind `IncidentPersistence`), and by a deterministic fake in the runtime's tests
/// (a manual clock, scripted events, recorded calls). The runtime maps each `Effect` to one call here.
public protocol SupervisorEffects: AnyObject {
    /// Both clocks, now.
    func now() -> Instant
    /// Blocks until something happens, `deadline` passes, or a second has gone by; returns what
    /// happened, in order (signals and children's ends first, then datagrams, then replies).
    func wait(until deadline: MonoTime?) -> [SupervisorEvent]
    /// Starts an instance: `spawned` or `spawnFailed`.
    func spawn(_ plan: SpawnPlan) -> SupervisorEvent
    /// A signal to the instance `pid` (through its pidfd) and its process group; nothing once it is reaped.
    func signal(pid: Int32, signal: Int32)
    /// Kills our children that are not `sparing`'s (remnants of the instance `pid`); the ones killed.
    func killLeftovers(of pid: Int32, sparing: Set<Int32>) -> [KilledProcess]
    /// nil when sent; else why it could not be.
    func sendPing(token: UInt64) -> String?
    /// Closes the ping in flight, if any.
    func cancelPing()
    /// nil when sent; else why it could not be.
    func queryLocks() -> String?
    /// Closes the `locks` query, if any.
    func cancelLocksQuery()
    /// Starts a probe attempt whose result `wait` reports as `probeResult(token:)`; nil when it started, else
    /// why it failed at once (that failure is its result).
    func startProbe(token: UInt64) -> ProbeFailure?
    /// Ends the attempt `token` whose time is up; what it was waiting for (nil when no such attempt runs).
    func timeOutProbe(token: UInt64) -> ProbeFailure?
    /// Ends the attempt in flight, if any, without a verdict.
    func cancelProbe()
    /// Reads what `request` asks for, without touching the process.
    func observe(_ request: ObservationRequest) -> Observation
    /// Writes a core within its budget (the kernel method reaps the process).
    func writeCore(_ request: CoreRequest) -> CoreOutcome
    /// Freezes the process for its core (native writer): every thread stopped, registers read, file open.
    func freezeForCore(_ request: CoreRequest) -> CoreFreeze
    /// Writes the frozen process's core: now (its outcome), or in a writer thread (nil; `wait` reports
    /// `frozenCoreWritten` later).
    func writeFrozenCore(background: Bool) -> CoreOutcome?
    /// The replacement is ready: the background writer starts (it waits for this, at most half the capture budget,
    /// so that the replacement's start has the machine) at the supervisor's priority.
    func hurryFrozenCore()
    /// Freezes the stalled process within the request's budget for its stacks (or a full core); never throws
    /// (what failed is in the record's `error`).
    func takeStallEvidence(_ request: StallEvidenceRequest) -> StallCapture
    /// The helper's pid, or why it could not start.
    func startStacks(binary: String, core: String, output: String) -> Result<Int32, EffectFailure>
    func startCompression(argv: [String]) -> Result<Int32, EffectFailure>
    /// gdb's output at `path`, reduced to threads and frames.
    func readStacks(path: String) -> String
    /// The runtime's tool run against the live process, bounded by the request's budget; never throws (what
    /// failed is in the evidence's `error`).
    func readRuntimeStacks(_ request: RuntimeStacksRequest) -> RuntimeStacksOutcome
    /// delve's pid, or why it could not start.
    func startGoroutines(_ request: GoroutinesRequest) -> Result<Int32, EffectFailure>
    /// What delve wrote to `path` (bounded).
    func readGoroutines(path: String) -> String
    /// SIGKILLs and reaps a helper still running.
    func stopHelper(pid: Int32)
    /// The size of a file, nil when it is not there.
    func fileSize(path: String) -> Int64?
    /// Removes a file defib wrote; a missing one is fine.
    func removeFile(path: String)
    /// The stored cores with what each takes on disk, and the space of `directory`'s file system.
    func scanCores(directory: String) -> CoreInventory
    /// Stores a new incident; its id.
    func insert(_ incident: Incident) -> Result<Int64, EffectFailure>
    /// Replaces the stored incident with the same id.
    func update(_ incident: Incident) -> EffectFailure?
    /// Notes a retention deletion in an incident the supervisor no longer holds.
    func recordCoreRemoved(incidentID: Int64, note: String) -> EffectFailure?
    /// sd_notify to the service manager (a no-op when none listens).
    func notifyManager(_ state: String)
    /// Sends one entry to the journal; nil when it took it, else why not (no journal here, refused).
    func announceCore(_ fields: [JournalField]) -> EffectFailure?
    /// How far the fleet shipper is behind; nil when none runs. Never blocks.
    func shippingReport() -> ShippingReport?
}

/// One field of a journal entry: its name in the journal's upper-case form, and its value.
public struct JournalField: Sendable, Equatable {
    public var name: String
    public var value: String
    public init(_ name: String, _ value: String) { self.name = name; self.value = value }
}

/// Where incidents are kept (DefibStore's SQLite store): what the supervisor's loop writes, and the cores
/// retention weighs.
public protocol IncidentPersistence: Sendable {
    /// Records a new incident; its id.
    func insert(_ incident: Incident) throws -> Int64
    /// Replaces the stored incident with the same id.
    func update(_ incident: Incident) throws
    /// Every stored incident that still has a core path, oldest first.
    func storedCores() throws -> [StoredCore]
    /// Appends `note` to incident `id` and forgets its core path (retention deleted the file).
    func recordCoreRemoved(id: Int64, note: String) throws
}
