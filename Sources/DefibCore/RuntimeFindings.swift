import Foundation

/// The runtime a process runs, and what showed it (`libjvm.so is mapped`, `forced by capture.runtime`).
public struct DetectedRuntime: Sendable, Equatable {
    public var runtime: ServiceRuntime
    public var reason: String
    /// `[capture] runtime` named it (nothing was detected).
    public var forced = false
    public init(runtime: ServiceRuntime, reason: String) { self.runtime = runtime; self.reason = reason }

    /// The runtime whose evidence is read: the forced one, else what the observation detected (native when
    /// nothing was detected: gdb's stacks and the wait-for graph still hold for any program).
    public static func chosen(_ setting: RuntimeSetting, detected: DetectedRuntime?) -> DetectedRuntime {
        if let runtime = setting.forced {
            var forced = DetectedRuntime(runtime: runtime, reason: "forced by capture.runtime")
            forced.forced = true
            return forced
        }
        return detected ?? DetectedRuntime(runtime: .native, reason: "not detected")
    }
}

/// The pthread mutex wait-for graph as read from a hung process (`ObservationRequest.waitForGraph`): the
/// edges seen in both of two reads a few milliseconds apart, and what could not be read.
public struct WaitForReading: Sendable, Equatable {
    public var edges: [WaitForEdge]
    public var notes: [String]
    public init(edges: [WaitForEdge], notes: [String] = []) { self.edges = edges; self.notes = notes }
}

/// Reading a runtime's own stacks before the kill (`Effect.readRuntimeStacks`): py-spy for Python, jcmd for
/// Java, within `budgetMs` (the part of the capture budget the runtime may take). For Go nothing runs before
/// the kill (its goroutines are read from the core after the restart); the answer only says whether delve is
/// there to do it.
public struct RuntimeStacksRequest: Sendable, Equatable {
    public var pid: Int32
    public var runtime: ServiceRuntime
    public var budgetMs: Int
    /// HOME for the tool: a directory defib made (the JVM's attach files, delve's config).
    public var home: String?
    /// While the tool runs, keep the service manager's watchdog fed every `periodNs` until the monotonic
    /// `untilNs`, never longer (the loop does not turn while it waits for the tool).
    public var managerKeepAlive: (periodNs: Int64, untilNs: Int64)?
    public init(pid: Int32, runtime: ServiceRuntime, budgetMs: Int, home: String?) {
        self.pid = pid; self.runtime = runtime; self.budgetMs = budgetMs; self.home = home
    }
    public static func == (a: RuntimeStacksRequest, b: RuntimeStacksRequest) -> Bool {
        a.pid == b.pid && a.runtime == b.runtime && a.budgetMs == b.budgetMs && a.home == b.home
            && a.managerKeepAlive?.periodNs == b.managerKeepAlive?.periodNs && a.managerKeepAlive?.untilNs == b.managerKeepAlive?.untilNs
    }
}

/// What the runtime's tool read: the grouped stacks (or why there are none), and a diagnosis only the
/// runtime can give (the JVM's deadlock report).
public struct RuntimeStacksOutcome: Sendable, Equatable {
    public var evidence: RuntimeEvidence
    public var diagnosis: HangDiagnosis?
    public init(evidence: RuntimeEvidence, diagnosis: HangDiagnosis? = nil) { self.evidence = evidence; self.diagnosis = diagnosis }
}

/// delve over a Go service's core after the restart (`Effect.startGoroutines`): its script, init commands and
/// output live in `directory` (defib's own run directory, 0700, also delve's HOME); `timeout` kills it past
/// `timeLimitSeconds`.
public struct GoroutinesRequest: Sendable, Equatable {
    public var binary: String
    public var core: String
    public var directory: String
    public var incidentID: Int64
    public var timeLimitSeconds = 60
    public init(binary: String, core: String, directory: String, incidentID: Int64) {
        self.binary = binary; self.core = core; self.directory = directory; self.incidentID = incidentID
    }

    /// One name per incident, so two closed incidents' jobs never share a file.
    var base: String { "\(directory)/goroutines.\(incidentID)" }
    /// The Starlark script delve sources.
    public var scriptPath: String { base + ".star" }
    /// delve's init commands (source the script, exit).
    public var initPath: String { base + ".init" }
    /// What delve prints (stdout and stderr), read once it has ended.
    public var outputPath: String { base + ".out" }
    /// Every file the job writes, removed once it is read (or stopped).
    public var files: [String] { [outputPath, scriptPath, initPath] }
}

/// What delve printed, read: the goroutines grouped, and the RWMutex diagnosis when they show one. Pure.
public enum GoroutinesReport {
    /// `ended` says how delve ended when not with 0 (`timedOut`: it was killed at its time limit);
    /// `elapsedMs` is the time since the job started.
    public static func read(_ text: String, ended: String?, timedOut: Bool, elapsedMs: Double, timeLimitSeconds: Int) -> RuntimeStacksOutcome {
        var evidence = RuntimeEvidence(runtime: .go, tool: String(format: "dlv core, %.0f ms after the restart", elapsedMs))
        do {
            let dump = try GoCoreDump.parse(text)
            evidence.groups = RuntimeStacks.group(dump.goroutines, runtime: .go)
            evidence.total = dump.goroutines.count
            if let ended { evidence.error = "dlv ended \(ended) (output kept)" }
            return RuntimeStacksOutcome(evidence: evidence, diagnosis: RuntimeDiagnoser.goRWMutex(dump))
        } catch {
            let tail = text.split(separator: "\n").suffix(3).joined(separator: " / ")
            evidence.error = timedOut ? "dlv did not finish within \(timeLimitSeconds) s" : "\(error)\(tail.isEmpty ? "" : " (dlv said: \(tail))")"
            return RuntimeStacksOutcome(evidence: evidence)
        }
    }
}

/// What the runtime evidence before the kill adds to an incident: the wait-for graph, the runtime and its
/// stacks, a diagnosis only the runtime gives, and notes on what could not be read. Pure: built from the
/// observation and the tool's answer, like `LockEvidence`.
public struct RuntimeFindings: Sendable, Equatable {
    /// One edge per thread blocked on a pthread mutex (the incident's `wait_for`).
    public var waitFor: [WaitForEdge] = []
    /// The runtime and its stacks (for Go: still to be read from the core).
    public var evidence: RuntimeEvidence
    /// A diagnosis only the runtime can give, used when the native evidence explains nothing.
    public var diagnosis: HangDiagnosis?
    /// What could not be read, and which runtime was chosen and why.
    public var notes: [String] = []

    /// `stacks` is the tool's answer (nil for a native program: no tool runs).
    public init(observation: Observation, runtime: DetectedRuntime, stacks: RuntimeStacksOutcome?) {
        if let reading = observation.waitFor {
            waitFor = reading.edges
            notes += reading.notes
        }
        evidence = stacks?.evidence ?? RuntimeEvidence(runtime: runtime.runtime)
        diagnosis = stacks?.diagnosis
        // A detected native program needs no note (its `runtime` says native); a runtime, or a forced setting, does.
        if runtime.runtime != .native || runtime.forced {
            notes.append("runtime: \(runtime.runtime.rawValue) (\(runtime.reason))")
        }
        if let error = evidence.error { notes.append("runtime stacks: \(error)") }
    }
}
