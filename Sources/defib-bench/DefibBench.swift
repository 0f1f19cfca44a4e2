import ArgumentParser
import DefibCore
import DefibPOSIX
import Foundation
import Glibc

/// `defib-bench`: the benchmarks behind `make bench`. Each part writes OUT/PART.json; `report` assembles REPORT.md.
@main
struct DefibBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "defib-bench",
        abstract: "Benchmarks: core capture (native, gcore, kernel), the supervisor's own cost, and defib against its peers.",
        discussion: """
        Usually run through scripts/bench.sh (make bench). Each part writes OUT/PART.json with the keys part, status \
        ("ok" or "FAIL"), reason, targets and markdown; `report` turns the named parts into OUT/REPORT.md.
        """,
        subcommands: [CoreCommand.self, OverheadCommand.self, PeersCommand.self, FleetBenchCommand.self, StallCommand.self, ReportCommand.self,
                      FailCommand.self])
}

/// Options every part shares.
struct PartOptions: ParsableArguments {
    @Option(help: "Directory for the JSON (and REPORT.md).")
    var out: String = "bench"

    @Option(help: "The release defib-proxy (default: next to defib-bench).")
    var proxy: String?

    @Option(help: "Scratch directory for processes' files and cores (default: OUT/.work-PART; removed afterwards).")
    var work: String?

    func proxyPath() throws -> String {
        try requireExecutable(proxy ?? ownDirectory() + "/defib-proxy", option: "--proxy")
    }

    func workDirectory(part: String) -> String {
        let dir = work ?? "\(out)/.work-\(part)"
        return dir.hasPrefix("/") ? dir : FileManager.default.currentDirectoryPath + "/" + dir
    }
}

/// defib's heartbeat in the parts that run it (`defib run --interval/--deadline`).
struct HeartbeatOptions: ParsableArguments {
    @Option(help: "defib's heartbeat interval in ms (defib run --interval).")
    var interval: Int = 100

    @Option(help: "defib's hang deadline in ms (defib run --deadline).")
    var deadline: Int = 1000

    func validate() throws {
        guard interval > 0 else { throw ValidationError("--interval must be positive, got \(interval)") }
        guard deadline > interval else { throw ValidationError("--deadline (\(deadline)) must exceed --interval (\(interval))") }
    }
}

/// `value` within `range`, else an error naming the option: "--reps must be 1…50, got 0".
func requireRange(_ value: Int, _ range: ClosedRange<Int>, _ option: String, unit: String = "") throws {
    guard range.contains(value) else {
        throw ValidationError("\(option) must be \(range.lowerBound)…\(range.upperBound)\(unit.isEmpty ? "" : " " + unit), got \(value)")
    }
}

/// Progress on stderr, unbuffered, so a long run shows where it is.
func progress(_ line: String) {
    FileHandle.standardError.write(Data((line + "\n").utf8))
}

/// Writes a FAIL envelope for `part` (the reason is the report's explanation) and exits 1.
func failPart(_ part: String, reason: String, startedAt: String, outDirectory: String) throws -> Never {
    let envelope = PartEnvelope(part: part, status: "FAIL", reason: reason, startedAt: startedAt, targets: [],
                                markdown: "## \(part)\n\nThis part could not run: \(reason)\n")
    try writePartJSON(envelope, part: part, outDirectory: outDirectory)
    progress("\(part): FAIL: \(reason)")
    throw ExitCode(1)
}

/// `defib-bench core`.
struct CoreCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "core",
        abstract: "Core capture of the reference proxy, idle and with ballast: native writer vs gcore vs the kernel's dump.")

    @OptionGroup var options: PartOptions

    @Option(help: "Timed repetitions per method and scenario.")
    var reps: Int = 5

    @Option(help: "Untimed native and gcore captures before the timed ones.")
    var warmups: Int = 1

    @Option(help: "MiB of heap the big proxy allocates and touches (--ballast).")
    var ballast: Int = 512

    @Option(help: "Extra idle threads of the big proxy (--extra-threads).")
    var extraThreads: Int = 8

    @Option(help: "Time budget of each capture in ms (generous: a truncated core is a failed run).")
    var budgetMs: Int = 120_000

    func validate() throws {
        try requireRange(reps, 1...50, "--reps")
        try requireRange(warmups, 0...5, "--warmups")
        try requireRange(ballast, 1...16384, "--ballast", unit: "MiB")
        try requireRange(extraThreads, 0...256, "--extra-threads")
        guard budgetMs > 0 else { throw ValidationError("--budget-ms must be positive, got \(budgetMs)") }
    }

    func run() throws {
        let startedAt = isoNow()
        let machineBefore = MachineState.now()
        let work = options.workDirectory(part: "core")
        let proxy: String
        do {
            proxy = try options.proxyPath()
            guard resolveExecutable("gdb") != nil, resolveExecutable("gcore") != nil else {
                throw BenchError(kind: .badArgument, message: "gdb and gcore are not in PATH (scripts/setup.sh installs gdb)")
            }
            removeTree(work)
            try makeDirectories(work)
        } catch {
            try failPart("core", reason: "\(error)", startedAt: startedAt, outDirectory: options.out)
        }
        defer { removeTree(work) }
        let gdbVersion = toolVersion(["gdb", "--version"], work: work)
        progress("core: \(reps) reps per method, \(warmups) warm-up(s); \(gdbVersion); proxy \(proxy)")
        let bench = CoreBench(proxy: proxy, workDirectory: work, reps: reps, warmups: warmups, budgetMs: budgetMs, log: progress)
        let idle = bench.run(.init(id: "idle", title: "Idle proxy", ballastMB: 0, extraThreads: 0))
        let big = bench.run(.init(id: "ballast", title: "Proxy grown to \(ballast) MiB RSS with \(extraThreads) extra threads",
                                  ballastMB: ballast, extraThreads: extraThreads))
        var report = CoreReport(part: "core", startedAt: startedAt, finishedAt: isoNow(), machineBefore: machineBefore, machineAfter: MachineState.now(),
                                figures: CoreFigures(gdbVersion: gdbVersion, reps: reps, warmups: warmups, scenarios: [idle, big]))
        report.targets = CoreTargets.evaluate(idle: idle, ballast: big)
        if idle.samples.isEmpty && big.samples.isEmpty {
            report.status = "FAIL"
            report.reason = "no capture ran: \(idle.error ?? "") \(big.error ?? "")"
        }
        report.markdown = CoreMarkdown.render(report)
        try writePartJSON(report, part: "core", outDirectory: options.out)
        for t in report.targets { progress("  \(t.pass ? "PASS" : "FAIL")  \(t.target): \(t.measured)") }
        if report.status != "ok" { throw ExitCode(1) }
    }
}

/// The first line a tool prints for `argv` ("GNU gdb (Debian 13.1-3) 13.1"), or why there is none.
func toolVersion(_ argv: [String], work: String) -> String {
    let out = "\(work)/version.out"
    defer { unlink(out) }
    guard let child = try? ManagedChild(name: argv[0], argv: argv, workingDirectory: work, logPath: out) else {
        return "\(argv[0]): not found"
    }
    guard child.wait(timeoutMs: 30_000) != nil else { child.stop(); return "\(argv[0]): no answer to --version" }
    child.stop()
    return (readTextFile(out) ?? "").split(separator: "\n").first.map(String.init) ?? "\(argv[0]): no version"
}

/// `defib-bench overhead`.
struct OverheadCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "overhead",
        abstract: "defib supervising the idle proxy at a 10 Hz heartbeat: its CPU, RSS and start-up time.")

    @OptionGroup var options: PartOptions

    @Option(help: "The release defib (default: next to defib-bench).")
    var defib: String?

    @Option(help: "Seconds of measurement.")
    var duration: Int = 60

    @Option(help: "Seconds between READY=1 and the start of the measurement.")
    var settle: Int = 2

    @Option(help: "Start-up measurements of defib and of the proxy alone (the measured run adds one for defib).")
    var startupRuns: Int = 3

    @OptionGroup var heartbeat: HeartbeatOptions

    func validate() throws {
        try requireRange(duration, 1...3600, "--duration", unit: "s")
        try requireRange(settle, 0...60, "--settle", unit: "s")
        try requireRange(startupRuns, 0...20, "--startup-runs")
    }

    func run() throws {
        let startedAt = isoNow()
        let machineBefore = MachineState.now()
        let work = options.workDirectory(part: "overhead")
        let proxy: String, defibPath: String
        do {
            proxy = try options.proxyPath()
            defibPath = try requireExecutable(defib ?? ownDirectory() + "/defib", option: "--defib")
            // Orphans of a defib that died are re-parented to us, so they can be killed and reaped by pid.
            try becomeChildSubreaper()
            removeTree(work)
            try makeDirectories(work)
        } catch {
            try failPart("overhead", reason: "\(error)", startedAt: startedAt, outDirectory: options.out)
        }
        defer { removeTree(work) }
        var report = OverheadReport(part: "overhead", startedAt: startedAt, finishedAt: "", machineBefore: machineBefore, machineAfter: machineBefore,
                                    figures: OverheadFigures(intervalMs: heartbeat.interval, deadlineMs: heartbeat.deadline, settleSeconds: settle))
        let bench = OverheadBench(defib: defibPath, proxy: proxy, workDirectory: work, intervalMs: heartbeat.interval, deadlineMs: heartbeat.deadline,
                                  durationSeconds: duration, settleSeconds: settle, startupRuns: startupRuns, log: progress)
        progress("overhead: defib \(defibPath), \(duration) s window at --interval \(heartbeat.interval)")
        do { try bench.run(into: &report) } catch {
            report.status = "FAIL"
            report.reason = "\(error)"
            if report.targets.isEmpty { report.targets = OverheadChecks.evaluate(report, restarted: nil) }
        }
        report.finishedAt = isoNow()
        report.machineAfter = MachineState.now()
        report.markdown = OverheadMarkdown.render(report)
        try writePartJSON(report, part: "overhead", outDirectory: options.out)
        if let d = report.defib {
            progress(String(format: "  defib: %.2f %% of one core, VmRSS %@, VmHWM %@", d.cpuPercent, formatBytes(d.rssEndBytes), formatBytes(d.hwmBytes)))
        }
        for t in report.targets { progress("  \(t.pass ? "PASS" : "FAIL")  \(t.target): \(t.measured)") }
        if report.status != "ok" { progress("overhead: FAIL: \(report.reason ?? "")"); throw ExitCode(1) }
    }
}

/// `defib-bench report`.
struct ReportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "report",
        abstract: "Assemble OUT/REPORT.md from the named parts' OUT/PART.json.")

    @Option(help: "Directory holding the parts' JSON; REPORT.md is written there.")
    var out: String = "bench"

    @Option(help: "The command that produced the figures, quoted in the report.")
    var command: String

    @Option(help: "The toolchain, quoted in the report (e.g. the first line of swift --version).")
    var toolchain: String?

    @Argument(help: "The parts, in report order.")
    var parts: [String]

    func validate() throws {
        if parts.isEmpty { throw ValidationError("name at least one part (e.g. core overhead)") }
        if let bad = parts.first(where: { $0.isEmpty || $0.contains("/") }) { throw ValidationError("bad part name '\(bad)'") }
    }

    func run() throws {
        let envelopes = parts.map { ReportAssembler.load(part: $0, outDirectory: out) }
        let text = ReportAssembler.render(parts: envelopes, command: command, generatedAt: isoNow(), machine: MachineState.now(),
                                          toolchain: toolchain, outDirectory: out)
        let path = "\(out)/REPORT.md"
        do { try text.write(toFile: path, atomically: true, encoding: .utf8) } catch {
            throw BenchError(kind: .io, message: "writing \(path): \(error)")
        }
        progress("wrote \(path)")
    }
}

/// `defib-bench fail`: records a part that could not run (scripts/bench.sh uses it when a part died without a report).
struct FailCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "fail", abstract: "Write OUT/PART.json saying PART failed, and why.")

    @Option(help: "Directory for the JSON.")
    var out: String = "bench"

    @Option(help: "The part.")
    var part: String

    @Option(help: "Why it failed.")
    var reason: String

    func run() throws {
        let envelope = PartEnvelope(part: part, status: "FAIL", reason: reason, startedAt: isoNow(), targets: [],
                                    markdown: "## \(part)\n\nThis part could not run: \(reason)\n")
        try writePartJSON(envelope, part: part, outDirectory: out)
    }
}
