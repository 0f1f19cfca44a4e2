import DefibCore
import Foundation
import FlightRecorder

/// How one HTTP request of the load ended.
public enum RequestOutcome: String, Sendable, Codable, CaseIterable {
    /// A complete 200 response.
    case ok
    /// Any other status, a reset, a short read, or another socket error.
    case failed
    /// The connection was refused (ECONNREFUSED): nobody was listening.
    case refused
    /// No complete response within the request timeout.
    case timedOut = "timeout"
}

/// One request of the open-loop load, timestamped.
public struct RequestSample: Sendable, Equatable {
    /// When the request was due (Unix ms). The load is open-loop: latency counts from here, so a
    /// generator that fell behind shows it instead of hiding it.
    public var scheduledUnixMs: Double
    /// Due time → outcome, in ms.
    public var latencyMs: Double
    /// How it ended.
    public var outcome: RequestOutcome
    /// The HTTP status, 0 when there was none.
    public var status: Int
    /// When it ended (Unix ms).
    public var completedUnixMs: Double { scheduledUnixMs + latencyMs }
    /// Makes a sample.
    public init(scheduledUnixMs: Double, latencyMs: Double, outcome: RequestOutcome, status: Int = 0) {
        self.scheduledUnixMs = scheduledUnixMs; self.latencyMs = latencyMs; self.outcome = outcome; self.status = status
    }
}

/// What the harness needs from one incident, read from the store (times as Unix ms).
public struct IncidentFacts: Sendable, Equatable {
    /// Row id.
    public var id: Int64
    /// The failing instance.
    public var pid: Int32
    /// Its replacement.
    public var newPid: Int32?
    /// The cause kind (missed-heartbeat, signaled, …).
    public var cause: String
    /// open, recovered, gave-up, shutdown.
    public var outcome: String
    /// "kind: sentence" (may be empty).
    public var diagnosis: String
    /// Timeline.
    public var detectedUnixMs: Double
    /// When the kill was sent (nil for a process that died by itself).
    public var killedUnixMs: Double?
    /// When the replacement answered its first ping.
    public var readyUnixMs: Double?
    /// Valid lock words, "0x" + 16 hex digits.
    public var lockWords: [String]
    /// Threads in the core (or /proc).
    public var threads: Int?
    /// The executable of the failing instance.
    public var binary: String?
    /// The core file, when one was written.
    public var corePath: String?
    /// Its size.
    public var coreBytes: Int64
    /// Capture wall time.
    public var captureMs: Double?
    /// Why the capture failed or was cut short.
    public var captureError: String?
    /// Whether gdb stacks were stored.
    public var hasStacks: Bool
    /// Silence at detection.
    public var silenceMs: Double?
    /// Deadline extension granted (starvation).
    public var extendedMs: Int?
    /// A stall's evidence: the pause it cost the service (nil when none was taken).
    public var stallPauseMs: Double?

    /// Memberwise, for tests and canned reports.
    public init(id: Int64, pid: Int32 = 0, newPid: Int32? = nil, cause: String = "missed-heartbeat", outcome: String = "recovered",
                diagnosis: String = "", detectedUnixMs: Double, killedUnixMs: Double? = nil, readyUnixMs: Double? = nil,
                lockWords: [String] = [], threads: Int? = nil, binary: String? = nil, corePath: String? = nil, coreBytes: Int64 = 0,
                captureMs: Double? = nil, captureError: String? = nil, hasStacks: Bool = false, silenceMs: Double? = nil, extendedMs: Int? = nil) {
        self.id = id; self.pid = pid; self.newPid = newPid; self.cause = cause; self.outcome = outcome; self.diagnosis = diagnosis
        self.detectedUnixMs = detectedUnixMs; self.killedUnixMs = killedUnixMs; self.readyUnixMs = readyUnixMs
        self.lockWords = lockWords; self.threads = threads; self.binary = binary; self.corePath = corePath; self.coreBytes = coreBytes
        self.captureMs = captureMs; self.captureError = captureError; self.hasStacks = hasStacks
        self.silenceMs = silenceMs; self.extendedMs = extendedMs
    }

    /// The facts of a stored incident.
    public init(_ i: Incident) {
        func ms(_ d: Date?) -> Double? { d.map { $0.timeIntervalSince1970 * 1000 } }
        self.init(id: i.id ?? 0, pid: i.pid, newPid: i.newPid, cause: i.cause.kind, outcome: i.outcome.rawValue, diagnosis: i.diagnosis,
                  detectedUnixMs: i.detectedAt.timeIntervalSince1970 * 1000, killedUnixMs: ms(i.killedAt), readyUnixMs: ms(i.readyAt),
                  lockWords: IncidentJSON.lockWords(i), threads: i.threads, binary: i.binaryPath, corePath: i.capture?.path,
                  coreBytes: i.capture?.path == nil ? 0 : i.capture?.bytes ?? 0, captureMs: i.capture?.durationMs, captureError: i.capture?.error,
                  hasStacks: (i.stacks ?? "").contains("Thread"), silenceMs: i.silenceMs, extendedMs: i.extendedMs)
        stallPauseMs = i.stallEvidence?.pauseMs
    }

    /// The diagnosis kind: the text before the first colon.
    public var diagnosisKind: String {
        String(diagnosis.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false).first ?? "").trimmingCharacters(in: .whitespaces)
    }
}

/// What gdb made of an incident's core.
public struct CoreCheck: Sendable, Equatable {
    /// Whether the file was there.
    public var exists: Bool
    /// Threads `gdb -batch -nx -ex 'info threads' BINARY CORE` listed (nil when gdb failed).
    public var gdbThreads: Int?
    /// Why the check could not be made.
    public var problem: String?
    /// Makes a check result.
    public init(exists: Bool, gdbThreads: Int?, problem: String? = nil) { self.exists = exists; self.gdbThreads = gdbThreads; self.problem = problem }
}

/// Everything the harness saw during one run, as data: the input of `RunEvaluator`.
public struct RunObservation: Sendable {
    /// Which scenario, under which load, which repetition (1-based).
    public var scenario: ChaosScenario
    /// The load.
    public var load: ChaosLoad
    /// Repetition number, 1-based (the iteration in a soak).
    public var run: Int
    /// When the harness injected the fault (Unix ms); nil for a control run or when injection failed.
    public var onsetUnixMs: Double?
    /// Start and end of the observed window (Unix ms): from the load's start to its end.
    public var windowStartUnixMs: Double
    /// End of the window.
    public var windowEndUnixMs: Double
    /// The incidents recorded during the run, oldest first.
    public var incidents: [IncidentFacts]
    /// gdb's view of each incident's core, by incident id.
    public var coreChecks: [Int64: CoreCheck]
    /// The load's requests.
    public var samples: [RequestSample]
    /// Whether the service answered (ping) when the run ended.
    public var servingAtEnd: Bool
    /// Problems the harness met (fault not injected, no incident within the bound, …).
    public var problems: [String]
    /// Whether the supervisor was configured to capture cores (`capture.method` is not `none`).
    public var captureEnabled: Bool = true
    /// Whether it was configured to store gdb stacks (`capture.stacks`).
    public var stacksEnabled: Bool = true

    /// Makes an observation.
    public init(scenario: ChaosScenario, load: ChaosLoad, run: Int, onsetUnixMs: Double?, windowStartUnixMs: Double, windowEndUnixMs: Double,
                incidents: [IncidentFacts] = [], coreChecks: [Int64: CoreCheck] = [:], samples: [RequestSample] = [],
                servingAtEnd: Bool = true, problems: [String] = []) {
        self.scenario = scenario; self.load = load; self.run = run; self.onsetUnixMs = onsetUnixMs
        self.windowStartUnixMs = windowStartUnixMs; self.windowEndUnixMs = windowEndUnixMs; self.incidents = incidents
        self.coreChecks = coreChecks; self.samples = samples; self.servingAtEnd = servingAtEnd; self.problems = problems
    }
}

/// One run's verdict and measurements: one object of report.json.
public struct RunResult: Sendable, Equatable {
    /// Scenario name.
    public var scenario: ChaosScenario
    /// What was injected ("timeout-race", "SIGSTOP", "none", …).
    public var fault: String
    /// The load.
    public var load: ChaosLoad
    /// Repetition number, 1-based.
    public var run: Int
    /// Fault runs: the incident closed as recovered (and, under load, a request succeeded after detection).
    /// Control runs: the service kept answering.
    public var recovered: Bool
    /// Why not, when `recovered` is false.
    public var reason: String?
    /// Fault onset (Unix ms).
    public var onsetUnixMs: Double?
    /// Onset → the incident's detected_at.
    public var detectMs: Double?
    /// Onset → killed_at (nil when the process died by itself).
    public var killMs: Double?
    /// Onset → ready_at (the new instance's first pong).
    public var readyMs: Double?
    /// Onset → the first successful response completed after detection (idle: → ready_at).
    public var restoreMs: Double?
    /// Requests scheduled in the window (from onset; the whole run for control runs) by outcome.
    public var requestsOK: Int
    /// Everything but a 200 or a refusal: other statuses, resets, short reads, timeouts.
    public var requestsFailed: Int
    /// ECONNREFUSED.
    public var requestsRefused: Int
    /// The part of `requestsFailed` that got no response within the request timeout.
    public var requestsTimedOut: Int
    /// Core present and gdb sees the incident's thread count; nil when no core is expected.
    public var coreOK: Bool?
    /// Threads gdb listed in the core.
    public var gdbThreads: Int?
    /// Threads the incident recorded.
    public var threads: Int?
    /// Stacks stored; nil when no core is expected.
    public var stacksOK: Bool?
    /// The incident's diagnosis line.
    public var diagnosis: String
    /// The kind the scenario must produce.
    public var expectedDiagnosis: String?
    /// diagnosis kind == expected; nil for control runs.
    public var diagnosisOK: Bool?
    /// The catalog lock word the verdict looked at.
    public var lockWord: String?
    /// Corrupted for the races, valid for the other lock bugs; nil where the lock is not involved.
    public var lockWordOK: Bool?
    /// Control runs: any incident is a false kill.
    public var falseKill: Bool
    /// The run's incident (the first one).
    public var incidentID: Int64?
    /// Incidents recorded in the run.
    public var incidentCount: Int
    /// The incident's silence at detection and deadline extension.
    public var silenceMs: Double?
    /// Deadline extension granted because the process was starved.
    public var extendedMs: Int?
    /// Core capture wall time.
    public var captureMs: Double?
    /// Core size.
    public var coreBytes: Int64
    /// Every check that failed, one sentence each (empty when the run passed).
    public var checksFailed: [String]
    /// Timeline marks (Unix ms) for the SVG.
    public var detectedUnixMs: Double?
    /// When the kill was sent.
    public var killedUnixMs: Double?
    /// When the replacement answered.
    public var readyUnixMs: Double?
    /// When the first successful response after detection arrived.
    public var firstSuccessUnixMs: Double?
    /// `stall`: the stall incidents recorded, the kills (there must be none), and the longest pause a stall's
    /// evidence cost the service.
    public var stalls: Int?
    public var kills: Int?
    public var stallPauseMs: Double?

    /// Whether every check passed.
    public var passed: Bool { checksFailed.isEmpty }

    /// The report.json object (keys in a fixed order).
    public var json: JSONValue {
        func num(_ d: Double?) -> JSONValue { d.map { .int(Int64($0.rounded())) } ?? .null }
        func bool(_ b: Bool?) -> JSONValue { b.map { .bool($0) } ?? .null }
        func str(_ s: String?) -> JSONValue { s.map { .string($0) } ?? .null }
        return .object([
            .init("scenario", .string(scenario.rawValue)),
            .init("fault", .string(fault)),
            .init("load", .string(load.rawValue)),
            .init("run", .int(Int64(run))),
            .init("recovered", .bool(recovered)),
            .init("reason", str(reason)),
            .init("onset_at", onsetUnixMs.map { .string(RFC3339.string(Date(timeIntervalSince1970: $0 / 1000))) } ?? .null),
            .init("detect_ms", num(detectMs)),
            .init("kill_ms", num(killMs)),
            .init("ready_ms", num(readyMs)),
            .init("restore_ms", num(restoreMs)),
            .init("requests_ok", .int(Int64(requestsOK))),
            .init("requests_failed", .int(Int64(requestsFailed))),
            .init("requests_refused", .int(Int64(requestsRefused))),
            .init("requests_timed_out", .int(Int64(requestsTimedOut))),
            // core_ok and diagnosis_ok are always booleans: "the evidence is what the scenario calls for".
            // Where it calls for none (a crash leaves no live process to capture, a control run no incident),
            // that is none, and *_expected says which case it was.
            .init("core_ok", .bool(coreOK ?? true)),
            .init("core_expected", .bool(coreOK != nil)),
            .init("core_bytes", .int(coreBytes)),
            .init("capture_ms", captureMs.map { .double(($0 * 10).rounded() / 10) } ?? .null),
            .init("threads", threads.map { .int(Int64($0)) } ?? .null),
            .init("gdb_threads", gdbThreads.map { .int(Int64($0)) } ?? .null),
            .init("stacks_ok", bool(stacksOK)),
            .init("diagnosis", .string(diagnosis)),
            .init("expected_diagnosis", str(expectedDiagnosis)),
            .init("diagnosis_ok", .bool(diagnosisOK ?? (incidentCount == 0))),
            .init("diagnosis_expected", .bool(diagnosisOK != nil)),
            .init("lock_word", str(lockWord)),
            .init("lock_word_ok", bool(lockWordOK)),
            .init("false_kill", .bool(falseKill)),
            .init("incident_id", incidentID.map { .int($0) } ?? .null),
            .init("incidents", .int(Int64(incidentCount))),
            .init("silence_ms", num(silenceMs)),
            .init("extended_ms", extendedMs.map { .int(Int64($0)) } ?? .null),
            .init("stalls", stalls.map { .int(Int64($0)) } ?? .null),
            .init("kills", kills.map { .int(Int64($0)) } ?? .null),
            .init("stall_pause_ms", stallPauseMs.map { .double(($0 * 100).rounded() / 100) } ?? .null),
            .init("passed", .bool(passed)),
            .init("checks_failed", .array(checksFailed.map { .string($0) })),
        ])
    }

    /// The one-line progress summary ("detected in 1020 ms, restored in 1210 ms").
    public var progressSummary: String {
        if scenario == .control {
            return falseKill ? "FALSE KILL (\(incidentCount) incident(s))" : "no kill" + (passed ? "" : "; FAILED: \(checksFailed.joined(separator: "; "))")
        }
        var parts: [String] = []
        if scenario == .stall {
            parts.append("\(stalls ?? 0) stall incident(s), \(kills ?? 0) kill(s)")
            if let p = stallPauseMs { parts.append(String(format: "the evidence paused the service %.2f ms at most", p)) }
            if !passed { parts.append("FAILED: \(checksFailed.joined(separator: "; "))") }
            return parts.joined(separator: ", ")
        }
        if let d = detectMs { parts.append("detected in \(Int(d.rounded())) ms") }
        if let r = restoreMs { parts.append("restored in \(Int(r.rounded())) ms") }
        if parts.isEmpty { parts.append("no incident") }
        if !passed { parts.append("FAILED: \(checksFailed.joined(separator: "; "))") }
        return parts.joined(separator: ", ")
    }
}

/// Turns what the harness saw into a verdict. Pure: no clock, no I/O.
public enum RunEvaluator {
    /// The verdict for one run.
    public static func evaluate(_ o: RunObservation) -> RunResult {
        let s = o.scenario
        var checks: [String] = o.problems
        let incident = o.incidents.first
        let onset = o.onsetUnixMs
        func since(_ t: Double?) -> Double? {
            guard let t, let onset else { return nil }
            return t - onset
        }
        // Requests in the window: from the onset for a fault run, the whole run for a control run.
        let windowStart = (s == .control ? nil : onset) ?? o.windowStartUnixMs
        let window = o.samples.filter { $0.scheduledUnixMs >= windowStart && $0.scheduledUnixMs <= o.windowEndUnixMs }
        func count(_ k: RequestOutcome) -> Int { window.reduce(0) { $0 + ($1.outcome == k ? 1 : 0) } }
        let firstSuccess: Double? = incident.flatMap { inc in
            o.samples.filter { $0.outcome == .ok && $0.completedUnixMs >= inc.detectedUnixMs }.map(\.completedUnixMs).min()
        }

        var result = RunResult(
            scenario: s, fault: s.fault, load: o.load, run: o.run, recovered: false, reason: nil, onsetUnixMs: onset,
            detectMs: since(incident?.detectedUnixMs), killMs: since(incident?.killedUnixMs), readyMs: since(incident?.readyUnixMs),
            restoreMs: nil, requestsOK: count(.ok), requestsFailed: count(.failed) + count(.timedOut), requestsRefused: count(.refused),
            requestsTimedOut: count(.timedOut), coreOK: nil, gdbThreads: nil, threads: incident?.threads, stacksOK: nil,
            diagnosis: incident?.diagnosis ?? "", expectedDiagnosis: s.expectedDiagnosis?.rawValue, diagnosisOK: nil,
            lockWord: nil, lockWordOK: nil, falseKill: false, incidentID: incident?.id, incidentCount: o.incidents.count,
            silenceMs: incident?.silenceMs, extendedMs: incident?.extendedMs, captureMs: incident?.captureMs,
            coreBytes: incident?.coreBytes ?? 0, checksFailed: [], detectedUnixMs: incident?.detectedUnixMs,
            killedUnixMs: incident?.killedUnixMs, readyUnixMs: incident?.readyUnixMs, firstSuccessUnixMs: firstSuccess)

        if s == .stall { return evaluateStall(o, result: result, checks: checks) }

        if s == .control {
            result.falseKill = !o.incidents.isEmpty
            for i in o.incidents {
                checks.append("false kill: incident #\(i.id) (\(i.cause)\(i.diagnosis.isEmpty ? "" : ", \(i.diagnosisKind)")) in a control run")
            }
            var why: [String] = []
            if !o.servingAtEnd { why.append("the service did not answer a ping at the end of the run") }
            if let open = o.incidents.first(where: { $0.outcome != IncidentOutcome.recovered.rawValue }) {
                why.append("incident #\(open.id) ended \(open.outcome)")
            }
            result.recovered = why.isEmpty
            if !why.isEmpty { result.reason = why.joined(separator: "; "); checks.append("not recovered: \(result.reason!)") }
            result.checksFailed = checks
            return result
        }

        // Recovery.
        var why: [String] = []
        if onset == nil { why.append("the fault was not injected") }
        if let incident {
            if incident.outcome != IncidentOutcome.recovered.rawValue || incident.readyUnixMs == nil {
                why.append("incident #\(incident.id) ended \(incident.outcome) without a ready replacement")
            }
            if o.load.sendsRequests && firstSuccess == nil { why.append("no request succeeded after the detection") }
        } else if onset != nil {
            why.append("no incident recorded")
        }
        result.recovered = why.isEmpty
        if !why.isEmpty { result.reason = why.joined(separator: "; "); checks.append("not recovered: \(result.reason!)") }
        if result.recovered {
            result.restoreMs = o.load.sendsRequests ? since(firstSuccess) : result.readyMs
        }
        if o.incidents.count > 1 {
            let extra = o.incidents.dropFirst().map { "#\($0.id) (\($0.cause))" }.joined(separator: ", ")
            checks.append("unexpected extra incident(s) after the first: \(extra)")
        }
        guard let incident else {
            result.checksFailed = checks
            return result
        }

        // Evidence: the core and gdb's view of it.
        if s.expectsCore && o.captureEnabled {
            let check = o.coreChecks[incident.id]
            result.gdbThreads = check?.gdbThreads
            if incident.corePath == nil {
                result.coreOK = false
                checks.append("core: none written\(incident.captureError.map { " (\($0))" } ?? "")")
            } else if let check, check.exists, let gdb = check.gdbThreads, let threads = incident.threads, gdb == threads {
                result.coreOK = true
            } else {
                result.coreOK = false
                if let check, !check.exists { checks.append("core: \(incident.corePath!) is missing") }
                else if let problem = check?.problem { checks.append("core: \(problem)") }
                else if check == nil { checks.append("core: not checked with gdb") }
                else { checks.append("core: gdb lists \(check?.gdbThreads.map(String.init) ?? "no") threads, the incident recorded \(incident.threads.map(String.init) ?? "none")") }
            }
            if o.stacksEnabled {
                result.stacksOK = incident.hasStacks
                if !incident.hasStacks { checks.append("stacks: none stored") }
            }
        }

        // Diagnosis.
        if let expected = s.expectedDiagnosis {
            result.diagnosisOK = incident.diagnosisKind == expected.rawValue
            if result.diagnosisOK == false {
                checks.append("diagnosis: expected \(expected.rawValue), got '\(incident.diagnosis.isEmpty ? "(none)" : incident.diagnosis)'")
            }
        }

        // The lock word.
        let corrupted = incident.lockWords.filter { LockWord.parse($0).map(LockWord.isCorrupt) ?? false }
        result.lockWord = corrupted.contains("0xfffffffffffffffe") ? "0xfffffffffffffffe" : corrupted.first ?? incident.lockWords.first
        switch s.expectsCorruptedWord {
        case true?:
            result.lockWordOK = !corrupted.isEmpty
            if corrupted.isEmpty { checks.append("lock word: expected a corrupted catalog word, got \(incident.lockWords.isEmpty ? "none" : incident.lockWords.joined(separator: ", "))") }
        case false?:
            result.lockWordOK = !incident.lockWords.isEmpty && corrupted.isEmpty
            if result.lockWordOK == false {
                checks.append("lock word: expected a valid (held) catalog word, got \(incident.lockWords.isEmpty ? "none" : incident.lockWords.joined(separator: ", "))")
            }
        case nil:
            break
        }
        result.checksFailed = checks
        return result
    }
}

extension RunEvaluator {
    /// `stall`: two stalls shorter than the deadline, each a `stall` incident that ended by itself (same pid, no
    /// replacement) with stacks; no kill at all; the service answering at the end.
    static func evaluateStall(_ o: RunObservation, result first: RunResult, checks failed: [String]) -> RunResult {
        var result = first
        var checks = failed
        let stalls = o.incidents.filter { $0.cause == "stall" }
        let killed = o.incidents.filter { $0.killedUnixMs != nil }
        result.stalls = stalls.count
        result.kills = killed.count
        result.falseKill = !killed.isEmpty
        result.stallPauseMs = stalls.compactMap(\.stallPauseMs).max()
        result.stacksOK = !stalls.isEmpty && stalls.allSatisfy(\.hasStacks)
        result.diagnosisOK = nil
        var why: [String] = []
        if o.onsetUnixMs == nil { why.append("the stall was not injected") }
        if stalls.count != 2 { why.append("\(stalls.count) stall incident(s), expected 2 (the SIGSTOP and the held write lock)") }
        for i in stalls where i.outcome != IncidentOutcome.selfRecovered.rawValue || i.newPid != nil {
            why.append("stall #\(i.id) ended \(i.outcome)\(i.newPid.map { " with a new pid \($0)" } ?? "")")
        }
        if !killed.isEmpty { why.append("\(killed.count) kill(s): " + killed.map { "#\($0.id) (\($0.cause))" }.joined(separator: ", ")) }
        if !o.servingAtEnd { why.append("the service did not answer a ping at the end of the run") }
        result.recovered = why.isEmpty
        if !why.isEmpty { result.reason = why.joined(separator: "; "); checks.append("not recovered: \(result.reason!)") }
        for i in stalls where !i.hasStacks { checks.append("stacks: none stored for stall #\(i.id)") }
        for i in stalls where i.stallPauseMs == nil { checks.append("stall #\(i.id): no pause recorded (no evidence taken)") }
        if let first = stalls.first, let onset = o.onsetUnixMs {
            result.detectMs = first.detectedUnixMs - onset
            result.readyMs = first.readyUnixMs.map { $0 - onset }
        }
        result.checksFailed = checks
        return result
    }
}
