import DefibCore
import DefibPOSIX
import Foundation
import Glibc

/// The harness's parts (load, stress-ng, core checks, pauses) and its report.
extension ChaosHarness {
    // MARK: parts

    func startLoad(port: Int) -> LoadGenerator {
        var c = LoadGenerator.Configuration(port: port, host: "app.test", ratePerSecond: settings.ratePerSecond, timeoutMs: Double(settings.requestTimeoutMs))
        c.maxDurationMs = 24 * 3_600_000
        return LoadGenerator.start(c)
    }

    func startStress(runLengthMs: Int, tag: String) -> ChildProcess? {
        guard let stressPath else { return nil }
        let workers = options.stressWorkers ?? 2 * Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))
        var env = currentEnvironment()
        env[Session.tagName] = tag
        let null = open("/dev/null", O_WRONLY | O_CLOEXEC)
        defer { close(null) }
        // --timeout is a backstop only: the harness kills it (and its workers, by process group) itself.
        var request = SpawnRequest(argv: [stressPath, "--cpu", String(workers), "--timeout", "\(runLengthMs / 1000 + 60)s", "--quiet"], environment: env)
        request.stdoutFD = null; request.stderrFD = null; request.stdinFromDevNull = true
        request.parentDeathSignal = SIGKILL
        do {
            let child = try spawnProcess(request)
            registry.register(child, killGroup: true)
            return child
        } catch {
            progress("defib chaos: could not start stress-ng: \(error)")
            return nil
        }
    }

    /// Why an overload run was not under overload: stress-ng never started, or ended before the run did.
    /// nil when it ran throughout.
    func stressProblem(_ child: ChildProcess?) -> String? {
        guard let child else { return "overload: stress-ng could not be started, so the run was not under overload" }
        let state = (try? String(contentsOfFile: "/proc/\(child.pid)/stat", encoding: .utf8)).flatMap(ProcParse.stat)?.state
        if state == nil || state == "Z" || state == "X" {
            return "overload: stress-ng (pid \(child.pid)) ended before the run did, so part of it was not under overload"
        }
        return nil
    }

    func stopStress(_ child: ChildProcess) {
        // Every signal to the group goes out while the leader is unreaped: its pid (the group id) cannot
        // have been given to another process yet.
        child.signalGroup(SIGTERM)
        var pfd = pollfd(fd: child.pidfd, events: Int16(POLLIN), revents: 0)
        _ = poll(&pfd, 1, 3000)   // the pidfd turns readable when the leader exits (still unreaped)
        // Workers that outlive their parent are still in its process group.
        child.signalGroup(SIGKILL)
        try? child.signal(SIGKILL)
        _ = waitForChild(child, timeoutMs: 5000)
        registry.forget(child)
    }

    /// gdb's thread count for the incident's core, then the core is deleted unless --keep-cores.
    func checkCore(_ i: IncidentFacts) -> CoreCheck? {
        guard let core = i.corePath else { return nil }
        var st = stat()
        guard stat(core, &st) == 0 else { return CoreCheck(exists: false, gdbThreads: nil) }
        defer { if !options.keepCores { unlink(core) } }
        guard let gdbPath else { return CoreCheck(exists: true, gdbThreads: nil, problem: "gdb not found in PATH") }
        guard let binary = i.binary else { return CoreCheck(exists: true, gdbThreads: nil, problem: "the incident names no binary") }
        switch runTool([gdbPath, "-batch", "-nx", "-ex", "info threads", binary, core], timeoutMs: 120_000, registry: registry, environment: currentEnvironment()) {
        case let .failure(e):
            return CoreCheck(exists: true, gdbThreads: nil, problem: "gdb: \(e)")
        case let .success(run):
            let n = countGdbThreads(run.stdout)
            if n == 0 { return CoreCheck(exists: true, gdbThreads: 0, problem: "gdb listed no threads (\(describe(run.status))): \(run.stderr.split(separator: "\n").prefix(3).joined(separator: " | "))") }
            return CoreCheck(exists: true, gdbThreads: n)
        }
    }

    /// Sleeps `ms`, waking every 20 ms to notice an interruption.
    func pause(ms: Int) throws(ChaosError) {
        let until = ChaosClock.nowUnixMs() + Double(ms)
        while true {
            try flag.check()
            let left = until - ChaosClock.nowUnixMs()
            if left <= 0 { return }
            ChaosClock.sleep(ms: min(left, 20))
        }
    }

    // MARK: the report

    func writeReport(machine: MachineInfo, interruptedBy: Int32?) -> ChaosOutcome {
        let now = Date()
        var timelines: [ChaosScenario: String] = [:]
        var scenarios: [ChaosScenario] = []
        for r in results where !scenarios.contains(r.scenario) { scenarios.append(r.scenario) }
        for scenario in scenarios {
            let panels = results.indices.filter { results[$0].scenario == scenario }.map { i in
                TimelinePanel.of(results[i], samples: samplesByRun[i] ?? [], windowStartUnixMs: windowStarts[i] ?? results[i].onsetUnixMs ?? 0)
            }
            let file = "timeline-\(scenario.rawValue).svg"
            let heading = "defib chaos: \(scenario.rawValue) (\(scenario.fault == "none" ? "control, no fault" : "fault \(scenario.fault)"))"
            try? TimelineSVG.render(heading: heading, panels: panels).write(toFile: "\(reportDirectory)/\(file)", atomically: true, encoding: .utf8)
            timelines[scenario] = file
        }
        let verdicts = ChaosReport.verdicts(results, settings: settings, soak: soak)
        var failures = ChaosReport.failures(results, verdicts: verdicts)
        if let s = interruptedBy { failures.append("interrupted by \(signalName(s)) after \(results.count) of \(plan.count) runs") }
        try? ChaosReport.json(results).write(toFile: "\(reportDirectory)/report.json", atomically: true, encoding: .utf8)
        try? ChaosReport.summaryJSON(results, settings: settings, machine: machine, soak: soak, generatedAt: now)
            .write(toFile: "\(reportDirectory)/summary.json", atomically: true, encoding: .utf8)
        var md = ChaosReport.markdown(results, settings: settings, machine: machine, soak: soak, generatedAt: now, timelines: timelines)
        if let s = interruptedBy { md = md.replacingOccurrences(of: "# defib chaos report\n\n", with: "# defib chaos report\n\n**Interrupted by \(signalName(s))** after \(results.count) of \(plan.count) runs.\n\n") }
        try? md.write(toFile: "\(reportDirectory)/report.md", atomically: true, encoding: .utf8)
        return ChaosOutcome(results: results, verdicts: verdicts, passed: failures.isEmpty && ChaosReport.passed(results, verdicts: verdicts),
                            failures: failures, reportDirectory: reportDirectory, interruptedBy: interruptedBy)
    }

    static func machineInfo() -> MachineInfo {
        var u = utsname()
        uname(&u)
        let kernel = withUnsafeBytes(of: &u.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        let mem = (readTextFile("/proc/meminfo") ?? "").split(separator: "\n").first { $0.hasPrefix("MemTotal:") }
            .flatMap { Int($0.split(separator: " ").dropFirst().first ?? "") } ?? 0
        let load = (readTextFile("/proc/loadavg") ?? "").split(separator: " ").prefix(3).joined(separator: " ")
        return MachineInfo(cpus: Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))), kernel: kernel, memoryMiB: mem / 1024, loadAverage: load)
    }
}
