/// How a child process ended. Data, not an error.
public enum ChildStatus: Equatable, Sendable {
    case exited(code: Int32)
    case signaled(signal: Int32, coreDumped: Bool)
}

/// Why the machine decided an instance has failed. The runtime turns it into an `IncidentCause`
/// (it knows the wall clock; the machine only knows monotonic time).
public enum FailureCause: Equatable, Sendable {
    /// The heartbeat went silent for `silenceMs` (≥ the deadline plus any extension) over `misses` missed pings.
    case missedHeartbeat(misses: Int, msSinceLastPong: Double?, lastError: String?, silenceMs: Double, extendedMs: Int, verdict: ProgressVerdict?)
    case startTimeout(ms: Int, lastError: String?)
    /// The service asked to be treated as hung (sd_notify `WATCHDOG=trigger`).
    case triggered(reason: String)
    case died(ChildStatus)
    case spawnFailed(message: String)
}

/// Something the runtime must do. The machine never performs I/O itself.
public enum SupervisorAction: Equatable, Sendable {
    /// Start a new instance, then report `spawned` or `spawnFailed`.
    case spawn
    /// Send `ping <token>` on the control channel, then report `pongReceived` or `pingFailed`.
    case sendPing(token: UInt64)
    /// The instance answered its first ping.
    case instanceReady(pid: Int32)
    /// `auto`: the service spoke `source` for the first time (a pong, a WATCHDOG=1); from now on that source
    /// is its heartbeat, held to strictly.
    case heartbeatAdopted(pid: Int32, source: HeartbeatSource)
    /// `auto`: the instance neither answered a ping nor sent WATCHDOG=1 within its start window (`afterMs`):
    /// it is supervised for its exit only (its pings go on, and the first pong or keep-alive changes that).
    case heartbeatUnheard(pid: Int32, afterMs: Int)
    /// Stage "miss": a ping went unanswered. Count it, log it; nothing else happens to the process.
    case heartbeatMissed(misses: Int, silenceMs: Double, reason: String)
    /// Take a baseline /proc sample of `pid` (the first miss of a silence), so later judgements see progress.
    case sampleProgress(pid: Int32)
    /// Stage "suspect": collect soft evidence (threads, flight recorder) without touching the process.
    case collectSoftEvidence(pid: Int32, silenceMs: Double)
    /// Judge progress (baseline vs now) and report it at once with `progressJudged(_:at:)`.
    case judgeProgress(pid: Int32)
    /// The hang deadline was extended because the process is starved, not stuck.
    case deadlineExtended(byMs: Int, totalMs: Int, reason: String)
    /// A late heartbeat came back before the hang deadline: the silence is over.
    case heartbeatRecovered(silenceMs: Double, misses: Int, wasSuspect: Bool)
    /// The service told us something for people (sd_notify STATUS=, STOPPING=1, …): log it, show it.
    case serviceNotified(String)
    /// A silence in progress no longer counts (the service announced STOPPING=1): forget what was gathered
    /// for it (miss notes, suspect evidence, the progress baseline).
    case silenceCancelled(reason: String)
    /// Record a new incident (as open) before anything else happens to the process.
    case openIncident(FailureCause)
    /// Read the lock state and take a core of `pid` within the budget, then report `captureFinished`.
    case captureEvidence(pid: Int32)
    /// SIGKILL to the instance and its process group.
    case kill(pid: Int32)
    /// SIGTERM to the instance and its process group (supervisor shutdown).
    case terminate(pid: Int32)
    /// Add a line to the open incident.
    case noteIncident(String)
    /// Kill jitter: the kill waits `ms` (drawn up to `maxMs`). Note it in the incident and a metric.
    case killDelayed(ms: Int, maxMs: Int)
    /// The replacement was spawned.
    case incidentRestarted(newPid: Int32)
    /// Finish the open incident.
    case closeIncident(IncidentOutcome)
    /// Wait `delayMs` before the next start (informational; the machine's own timer does the waiting).
    case scheduleRestart(delayMs: Int)
    /// Stop the supervisor with this exit code.
    case exit(code: Int32)
}
