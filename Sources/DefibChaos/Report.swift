import DefibCore
import Foundation

/// The settings a chaos run used, as the report states them.
public struct ChaosSettings: Sendable, Equatable {
    /// quick, full or soak.
    public var mode: ChaosMode
    /// Heartbeat interval (effective).
    public var intervalMs: Int
    /// Hang deadline (effective).
    public var deadlineMs: Int
    /// The supervisor's default deadline, for the overload verdict.
    public var defaultDeadlineMs: Int
    /// Starvation extension step and bound (effective).
    public var extensionStepMs: Int
    /// The most the deadline may be extended in all.
    public var maxExtensionMs: Int
    /// native, kernel, gcore or none.
    public var captureMethod: String
    /// Restart backoff and intensity, as one sentence.
    public var restart: String
    /// The supervisor config file used (the harness's own, or the operator's --config).
    public var configFile: String
    /// Whether that file is the operator's.
    public var operatorConfig: Bool
    /// Requests per second of the steady load.
    public var ratePerSecond: Double
    /// A request with no response after this long is a timeout.
    public var requestTimeoutMs: Int
    /// Load before the fault, and after the first success.
    public var warmupMs: Int
    /// Load kept up after recovery.
    public var postMs: Int
    /// Length of a control run.
    public var controlDurationMs: Int
    /// stress-ng's command line under overload (nil when no overload run was planned).
    public var stressCommand: String?
    /// The executables.
    public var defibPath: String
    /// The proxy executable.
    public var proxyPath: String
    /// Runs per scenario (full) or iterations (soak).
    public var runs: Int

    /// Makes settings.
    public init(mode: ChaosMode, intervalMs: Int, deadlineMs: Int, defaultDeadlineMs: Int, extensionStepMs: Int, maxExtensionMs: Int,
                captureMethod: String, restart: String, configFile: String, operatorConfig: Bool, ratePerSecond: Double,
                requestTimeoutMs: Int, warmupMs: Int, postMs: Int, controlDurationMs: Int, stressCommand: String?,
                defibPath: String, proxyPath: String, runs: Int) {
        self.mode = mode; self.intervalMs = intervalMs; self.deadlineMs = deadlineMs; self.defaultDeadlineMs = defaultDeadlineMs
        self.extensionStepMs = extensionStepMs; self.maxExtensionMs = maxExtensionMs; self.captureMethod = captureMethod
        self.restart = restart; self.configFile = configFile; self.operatorConfig = operatorConfig; self.ratePerSecond = ratePerSecond
        self.requestTimeoutMs = requestTimeoutMs; self.warmupMs = warmupMs; self.postMs = postMs; self.controlDurationMs = controlDurationMs
        self.stressCommand = stressCommand; self.defibPath = defibPath; self.proxyPath = proxyPath; self.runs = runs
    }

    /// The longest a real deadlock may stay undetected: deadline plus the most extension starvation can earn.
    public var detectionBoundMs: Int { deadlineMs + maxExtensionMs }
    /// What the overload verdict allows on top of the bound: one heartbeat interval (the silence starts at the
    /// first unanswered ping, up to an interval after the hang) and 250 ms for the progress judgement and polling.
    public var detectionToleranceMs: Int { intervalMs + 250 }
}

/// The machine the harness ran on.
public struct MachineInfo: Sendable, Equatable {
    /// Online CPUs.
    public var cpus: Int
    /// `uname -r`.
    public var kernel: String
    /// MemTotal in MiB.
    public var memoryMiB: Int
    /// /proc/loadavg's first three fields when the harness started.
    public var loadAverage: String
    /// Makes the record.
    public init(cpus: Int, kernel: String, memoryMiB: Int, loadAverage: String) {
        self.cpus = cpus; self.kernel = kernel; self.memoryMiB = memoryMiB; self.loadAverage = loadAverage
    }
}

/// What a soak established beyond its runs.
public struct SoakSummary: Sendable, Equatable {
    /// Faults asked for.
    public var requested: Int
    /// Faults injected.
    public var injected: Int
    /// Incidents in the store at the end.
    public var incidents: Int
    /// Incidents that ended recovered.
    public var recoveries: Int
    /// Processes the harness or defib started that outlived the soak ("pid comm"), found through the harness's
    /// environment tag in /proc.
    public var orphans: [String]
    /// The supervisor's pid.
    public var defibPid: Int32
    /// How many times the supervisor was restarted or exited before the harness stopped it (must be 0).
    public var supervisorRestarts: Int
    /// How the supervisor ended when it was stopped.
    public var defibExit: String
    /// Anything else worth reading.
    public var notes: [String]
    /// Makes a summary.
    public init(requested: Int, injected: Int, incidents: Int, recoveries: Int, orphans: [String], defibPid: Int32,
                supervisorRestarts: Int, defibExit: String, notes: [String] = []) {
        self.requested = requested; self.injected = injected; self.incidents = incidents; self.recoveries = recoveries
        self.orphans = orphans; self.defibPid = defibPid; self.supervisorRestarts = supervisorRestarts; self.defibExit = defibExit; self.notes = notes
    }

    /// Whether the soak held: N incidents, N recoveries, no orphans, no supervisor restarts.
    public var verdict: Verdict {
        var problems: [String] = []
        if injected != requested { problems.append("\(injected) of \(requested) faults injected") }
        if incidents != requested { problems.append("\(incidents) incidents for \(requested) faults") }
        if recoveries != requested { problems.append("\(recoveries) recoveries for \(requested) faults") }
        if !orphans.isEmpty { problems.append("\(orphans.count) orphaned process(es): \(orphans.joined(separator: ", "))") }
        if supervisorRestarts != 0 { problems.append("the supervisor (pid \(defibPid)) ended before the harness stopped it") }
        let text = "soak: \(requested) faults → \(incidents) incidents, \(recoveries) recoveries, \(orphans.count) orphaned processes, "
            + "\(supervisorRestarts) supervisor restarts (one defib, pid \(defibPid), \(defibExit))"
        return Verdict(name: "soak", passed: problems.isEmpty, text: problems.isEmpty ? text : text + " — " + problems.joined(separator: "; "))
    }
}

/// One explicit yes/no the report states.
public struct Verdict: Sendable, Equatable {
    /// Short name.
    public var name: String
    /// PASS or FAIL.
    public var passed: Bool
    /// The sentence with the figures.
    public var text: String
    /// Makes a verdict.
    public init(name: String, passed: Bool, text: String) { self.name = name; self.passed = passed; self.text = text }
}

/// The issue-6 checks, when their runs were part of the plan.
public enum Verdicts {
    /// Control runs under overload: no kill at all, stated with the deadline in force.
    public static func overloadControl(_ results: [RunResult], settings: ChaosSettings) -> Verdict? {
        let runs = results.filter { $0.scenario == .control && $0.load == .overload }
        guard !runs.isEmpty else { return nil }
        let kills = runs.reduce(0) { $0 + $1.incidentCount }
        let atDefault = settings.deadlineMs == settings.defaultDeadlineMs
        let deadline = "deadline \(settings.deadlineMs) ms" + (atDefault ? " (the default)" : " (NOT the default \(settings.defaultDeadlineMs) ms)")
        let seconds = Double(runs.count * settings.controlDurationMs) / 1000
        let passed = kills == 0 && runs.allSatisfy(\.recovered)
        var text = "overload control: \(runs.count) run(s), \(String(format: "%.0f", seconds)) s under stress-ng with steady load, \(kills) kill(s) at \(deadline)"
        if let r = runs.first(where: { !$0.recovered }), let reason = r.reason { text += "; \(reason)" }
        return Verdict(name: "overload-control", passed: passed, text: text)
    }

    /// Real deadlocks under overload: detected within deadline + max extension (+ the stated tolerance).
    public static func overloadDeadlock(_ results: [RunResult], settings: ChaosSettings) -> Verdict? {
        let runs = results.filter { $0.scenario.isImmediateDeadlock && $0.load == .overload }
        guard !runs.isEmpty else { return nil }
        let limit = Double(settings.detectionBoundMs + settings.detectionToleranceMs)
        var late: [String] = []
        for r in runs {
            guard let d = r.detectMs else { late.append("\(r.scenario.rawValue) run \(r.run): not detected"); continue }
            if d > limit { late.append("\(r.scenario.rawValue) run \(r.run): \(Int(d)) ms") }
        }
        let worst = runs.compactMap(\.detectMs).max()
        let worstRun = runs.first { $0.detectMs == worst }
        let kinds = ChaosScenario.allCases.filter { k in k.isImmediateDeadlock && runs.contains { $0.scenario == k } }.map(\.rawValue)
        var text = "deadlock under overload: \(runs.count) run(s) (\(kinds.joined(separator: "/"))), slowest detection "
            + (worst.map { "\(Int($0.rounded())) ms" } ?? "none")
        if let w = worstRun { text += " (silence \(w.silenceMs.map { "\(Int($0.rounded())) ms" } ?? "?"), extended \(w.extendedMs.map { "\($0) ms" } ?? "0 ms"))" }
        text += "; bound: deadline \(settings.deadlineMs) + max extension \(settings.maxExtensionMs) = \(settings.detectionBoundMs) ms"
            + " (+ \(settings.detectionToleranceMs) ms tolerance: one interval and the progress judgement)"
        if !late.isEmpty { text += "; too late: " + late.joined(separator: ", ") }
        return Verdict(name: "overload-deadlock", passed: late.isEmpty, text: text)
    }
}

/// report.json, summary.json and report.md. Pure: everything comes in as arguments.
public enum ChaosReport {
    /// report.json: an array with one object per run, in execution order.
    public static func json(_ results: [RunResult]) -> String {
        JSONValue.array(results.map(\.json)).rendered(pretty: true) + "\n"
    }

    /// Every verdict that applies.
    public static func verdicts(_ results: [RunResult], settings: ChaosSettings, soak: SoakSummary?) -> [Verdict] {
        [Verdicts.overloadControl(results, settings: settings), Verdicts.overloadDeadlock(results, settings: settings), soak?.verdict].compactMap { $0 }
    }

    /// Whether everything passed: every run's checks and every verdict.
    public static func passed(_ results: [RunResult], verdicts: [Verdict]) -> Bool {
        results.allSatisfy(\.passed) && verdicts.allSatisfy(\.passed)
    }

    /// The sentences that explain a non-zero exit status (empty when everything passed).
    public static func failures(_ results: [RunResult], verdicts: [Verdict]) -> [String] {
        results.filter { !$0.passed }.map { r in "\(r.scenario.rawValue) \(r.load.rawValue) run \(r.run): \(r.checksFailed.joined(separator: "; "))" }
            + verdicts.filter { !$0.passed }.map { "verdict \($0.name): \($0.text)" }
    }

    /// summary.json: settings, machine, verdicts, the soak and the exit status.
    public static func summaryJSON(_ results: [RunResult], settings: ChaosSettings, machine: MachineInfo, soak: SoakSummary?, generatedAt: Date) -> String {
        let verdicts = verdicts(results, settings: settings, soak: soak)
        let ok = passed(results, verdicts: verdicts)
        var members: [JSONMember] = [
            .init("generated_at", .string(RFC3339.string(generatedAt))),
            .init("mode", .string(settings.mode.rawValue)),
            .init("passed", .bool(ok)),
            .init("runs", .int(Int64(results.count))),
            .init("runs_passed", .int(Int64(results.filter(\.passed).count))),
            .init("settings", .object([
                .init("interval_ms", .int(Int64(settings.intervalMs))), .init("deadline_ms", .int(Int64(settings.deadlineMs))),
                .init("extension_step_ms", .int(Int64(settings.extensionStepMs))), .init("max_extension_ms", .int(Int64(settings.maxExtensionMs))),
                .init("capture", .string(settings.captureMethod)), .init("restart", .string(settings.restart)),
                .init("config_file", .string(settings.configFile)), .init("operator_config", .bool(settings.operatorConfig)),
                .init("rate_per_s", .double(settings.ratePerSecond)), .init("request_timeout_ms", .int(Int64(settings.requestTimeoutMs))),
                .init("warmup_ms", .int(Int64(settings.warmupMs))), .init("post_ms", .int(Int64(settings.postMs))),
                .init("control_duration_ms", .int(Int64(settings.controlDurationMs))),
                .init("stress", settings.stressCommand.map { .string($0) } ?? .null),
                .init("defib", .string(settings.defibPath)), .init("proxy", .string(settings.proxyPath)),
            ])),
            .init("machine", .object([
                .init("cpus", .int(Int64(machine.cpus))), .init("kernel", .string(machine.kernel)),
                .init("memory_mib", .int(Int64(machine.memoryMiB))), .init("load_average", .string(machine.loadAverage)),
            ])),
            .init("verdicts", .array(verdicts.map { .object([.init("name", .string($0.name)), .init("passed", .bool($0.passed)), .init("text", .string($0.text))]) })),
            .init("failures", .array(failures(results, verdicts: verdicts).map { .string($0) })),
        ]
        if let soak {
            members.append(.init("soak", .object([
                .init("requested", .int(Int64(soak.requested))), .init("injected", .int(Int64(soak.injected))),
                .init("incidents", .int(Int64(soak.incidents))), .init("recoveries", .int(Int64(soak.recoveries))),
                .init("orphans", .array(soak.orphans.map { .string($0) })), .init("defib_pid", .int(Int64(soak.defibPid))),
                .init("supervisor_restarts", .int(Int64(soak.supervisorRestarts))), .init("defib_exit", .string(soak.defibExit)),
                .init("notes", .array(soak.notes.map { .string($0) })),
            ])))
        }
        return JSONValue.object(members).rendered(pretty: true) + "\n"
    }

    /// report.md: verdicts, then per scenario and load a table of median / p95 / max for each duration and the
    /// totals of the counts, then the settings, the machine, the failed checks and the definitions.
    public static func markdown(_ results: [RunResult], settings: ChaosSettings, machine: MachineInfo, soak: SoakSummary?,
                                generatedAt: Date, timelines: [ChaosScenario: String] = [:]) -> String {
        let verdicts = verdicts(results, settings: settings, soak: soak)
        let ok = passed(results, verdicts: verdicts)
        var md = "# defib chaos report\n\n"
        md += "Generated \(RFC3339.string(generatedAt)) by `defib chaos` (\(settings.mode.rawValue)): \(results.count) run(s), "
        md += "\(results.filter(\.passed).count) passed. **Result: \(ok ? "PASS" : "FAIL")**"
        md += ok ? " (exit status 0).\n\n" : " (exit status 1: see *Failed checks*).\n\n"

        if !verdicts.isEmpty {
            md += "## Verdicts\n\n"
            for v in verdicts { md += "- **\(v.passed ? "PASS" : "FAIL")** — \(v.text)\n" }
            md += "\n"
        }

        var scenarios: [ChaosScenario] = []
        for r in results where !scenarios.contains(r.scenario) { scenarios.append(r.scenario) }
        for scenario in scenarios {
            md += "## \(scenario.rawValue)\n\n"
            md += "Fault: \(scenario.fault == "none" ? "none (control: any incident is a false kill)" : "`\(scenario.fault)`")"
            if let d = scenario.expectedDiagnosis { md += "; expected diagnosis `\(d.rawValue)`" }
            if let c = scenario.expectsCorruptedWord { md += c ? "; lock word must be corrupted" : "; lock word must be valid (held)" }
            md += scenario.expectsCore ? "; a core and stacks are expected.\n\n" : "; no core expected.\n\n"
            var loads: [ChaosLoad] = []
            for r in results where r.scenario == scenario && !loads.contains(r.load) { loads.append(r.load) }
            for load in loads {
                let runs = results.filter { $0.scenario == scenario && $0.load == load }
                md += "### \(scenario.rawValue) under \(load.rawValue) load (\(runs.count) run\(runs.count == 1 ? "" : "s"))\n\n"
                if scenario != .control {
                    md += "| duration (from fault onset) | median | p95 | max | runs |\n|---|---:|---:|---:|---:|\n"
                    for (name, values) in [("detect_ms", runs.compactMap(\.detectMs)), ("kill_ms", runs.compactMap(\.killMs)),
                                           ("ready_ms", runs.compactMap(\.readyMs)), ("restore_ms", runs.compactMap(\.restoreMs))] {
                        if let s = Stats.summary(values) {
                            md += "| \(name) | \(Int(s.median.rounded())) | \(Int(s.p95.rounded())) | \(Int(s.max.rounded())) | \(s.count) |\n"
                        } else {
                            md += "| \(name) | – | – | – | 0 |\n"
                        }
                    }
                    md += "\n"
                }
                md += "| count | total |\n|---|---:|\n"
                md += "| recovered | \(runs.filter(\.recovered).count) / \(runs.count) |\n"
                if load.sendsRequests {
                    let okN = runs.reduce(0) { $0 + $1.requestsOK }, failed = runs.reduce(0) { $0 + $1.requestsFailed }
                    let refused = runs.reduce(0) { $0 + $1.requestsRefused }, timedOut = runs.reduce(0) { $0 + $1.requestsTimedOut }
                    md += "| requests ok | \(okN) |\n| requests failed (of which timed out) | \(failed) (\(timedOut)) |\n| requests refused | \(refused) |\n"
                }
                if scenario == .control {
                    md += "| false kills | \(runs.filter(\.falseKill).count) runs, \(runs.reduce(0) { $0 + $1.incidentCount }) incidents |\n"
                } else {
                    func tally(_ v: [Bool?]) -> String {
                        let applicable = v.compactMap { $0 }
                        return applicable.isEmpty ? "n/a" : "\(applicable.filter { $0 }.count) / \(applicable.count)"
                    }
                    md += "| core ok (gdb thread count = incident's) | \(tally(runs.map(\.coreOK))) |\n"
                    md += "| stacks stored | \(tally(runs.map(\.stacksOK))) |\n"
                    let kinds = Dictionary(grouping: runs.map { IncidentFacts(id: 0, diagnosis: $0.diagnosis, detectedUnixMs: 0).diagnosisKind }, by: { $0 })
                        .map { "\($0.key.isEmpty ? "(none)" : $0.key) ×\($0.value.count)" }.sorted().joined(separator: ", ")
                    md += "| diagnosis ok | \(tally(runs.map(\.diagnosisOK))) (\(kinds)) |\n"
                    if scenario == .stall {
                        let pauses = runs.compactMap(\.stallPauseMs)
                        md += "| stall incidents (2 per run expected) | \(runs.compactMap(\.stalls).reduce(0, +)) |\n"
                        md += "| kills (none allowed) | \(runs.compactMap(\.kills).reduce(0, +)) |\n"
                        md += "| pause the evidence cost the service (longest per run: median, max) | "
                            + (Stats.summary(pauses).map { String(format: "%.2f ms, %.2f ms", $0.median, $0.max) } ?? "–") + " |\n"
                    }
                    if scenario.expectsCorruptedWord != nil {
                        let words = Set(runs.compactMap(\.lockWord)).sorted().joined(separator: ", ")
                        md += "| lock word ok | \(tally(runs.map(\.lockWordOK))) (\(words.isEmpty ? "none" : words)) |\n"
                    }
                    let ext = runs.compactMap(\.extendedMs).filter { $0 > 0 }
                    if !ext.isEmpty { md += "| deadline extended (starved) | \(ext.count) runs, up to \(ext.max()!) ms |\n" }
                }
                md += "\n"
            }
            if let svg = timelines[scenario] { md += "Timeline: [\(svg)](\(svg))\n\n" }
        }

        md += "## Settings\n\n| setting | value |\n|---|---|\n"
        md += "| mode | \(settings.mode.rawValue)\(settings.mode == .quick ? "" : " (\(settings.runs) \(settings.mode == .soak ? "faults" : "runs per scenario and load"))") |\n"
        md += "| heartbeat | every \(settings.intervalMs) ms, deadline \(settings.deadlineMs) ms (default \(settings.defaultDeadlineMs) ms) |\n"
        md += "| starvation extension | \(settings.extensionStepMs) ms steps, at most \(settings.maxExtensionMs) ms |\n"
        md += "| core capture | \(settings.captureMethod) |\n| restart | \(settings.restart) |\n"
        md += "| supervisor config | `\(settings.configFile)`\(settings.operatorConfig ? " (the operator's, with --state-dir/--socket/--name/--control-socket from the harness)" : " (written by the harness)") |\n"
        md += "| load | open loop, \(fmt(settings.ratePerSecond)) requests/s, one connection each, timeout \(settings.requestTimeoutMs) ms |\n"
        md += "| windows | \(settings.warmupMs) ms of load before the fault, \(settings.postMs) ms after the first success; control runs \(settings.controlDurationMs) ms |\n"
        if let stress = settings.stressCommand { md += "| overload | `\(stress)` |\n" }
        md += "| binaries | `\(settings.defibPath)`, `\(settings.proxyPath)` |\n\n"

        md += "## Machine\n\n\(machine.cpus) CPUs, \(machine.memoryMiB) MiB, Linux \(machine.kernel), load average \(machine.loadAverage) at the start.\n\n"

        let failures = failures(results, verdicts: verdicts)
        if !failures.isEmpty {
            md += "## Failed checks\n\n"
            for f in failures { md += "- \(f)\n" }
            md += "\n"
        }
        md += runTable(results)
        if let soak, !soak.notes.isEmpty {
            md += "## Soak notes\n\n"
            for n in soak.notes { md += "- \(n)\n" }
            md += "\n"
        }
        md += """
        ## Definitions

        - Times are measured from the **fault onset**, the moment the harness injected the fault (the `fault` \
        command sent on the control channel, SIGSTOP sent; for leaked-read the reload that makes the leaked guard \
        bite follows at once). detect/kill/ready are the incident's `detected_at`, `killed_at` and `ready_at` \
        (the new instance's first pong). **restore_ms** is the first successful response completed after the \
        detection (idle runs: ready_at).
        - Requests are counted from the onset to the end of the run (control runs: the whole run); each request \
        is one connection, scheduled open-loop and timed from when it was due. *refused* = ECONNREFUSED; \
        *failed* = anything but a 200 (a timeout counts as failed).
        - **core ok**: the incident has a core and `gdb -batch -nx -ex 'info threads' BINARY CORE` lists as many \
        threads as the incident recorded. **stacks**: gdb backtraces stored in the incident. A crash leaves no \
        live process to capture, so no core is expected there.
        - p95 is the nearest-rank percentile (an observed value).

        """
        return md
    }

    /// Most rows of the per-run table (a soak has a row per fault; report.json has them all).
    public static let maxRunRows = 200

    /// One row per run: what happened and which evidence held.
    static func runTable(_ results: [RunResult]) -> String {
        guard !results.isEmpty else { return "" }
        func ms(_ d: Double?) -> String { d.map { String(Int($0.rounded())) } ?? "–" }
        func mark(_ b: Bool?) -> String { b.map { $0 ? "yes" : "**no**" } ?? "n/a" }
        var md = "## Runs\n\n| # | scenario | load | run | recovered | detect ms | restore ms | ok / failed / refused | core | stacks | diagnosis | incident |\n"
        md += "|---:|---|---|---:|---|---:|---:|---|---|---|---|---:|\n"
        for (n, r) in results.prefix(maxRunRows).enumerated() {
            let kind = IncidentFacts(id: 0, diagnosis: r.diagnosis, detectedUnixMs: 0).diagnosisKind
            let diagnosis = r.diagnosisOK == false ? "**\(kind.isEmpty ? "(none)" : kind)**" : (kind.isEmpty ? "–" : kind)
            md += "| \(n + 1) | \(r.scenario.rawValue) | \(r.load.rawValue) | \(r.run) | \(r.recovered ? "yes" : "**no**")"
            md += " | \(ms(r.detectMs)) | \(ms(r.restoreMs)) | \(r.requestsOK) / \(r.requestsFailed) / \(r.requestsRefused)"
            md += " | \(mark(r.coreOK)) | \(mark(r.stacksOK)) | \(diagnosis) | \(r.incidentID.map { "#\($0)" } ?? (r.falseKill ? "**false kill**" : "–")) |\n"
        }
        if results.count > maxRunRows { md += "\n\(results.count - maxRunRows) more run(s) in report.json.\n" }
        return md + "\n"
    }

    static func fmt(_ d: Double) -> String {
        d == d.rounded() ? String(Int(d)) : String(format: "%.1f", d)
    }
}
