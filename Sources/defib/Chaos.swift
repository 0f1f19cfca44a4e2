import ArgumentParser
import DefibChaos
import DefibCore
import DefibPOSIX
import Foundation
import Glibc

/// `defib chaos`: inject faults into a supervised defib-proxy and measure detection, recovery and evidence.
struct ChaosCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "chaos",
        abstract: "Test supervision settings: inject faults into a supervised defib-proxy under load; report detection, recovery and evidence.",
        discussion: """
        Each run starts `defib run --socket http=… -- defib-proxy` against an in-process HTTP backend, injects one fault, \
        and measures onset → detection → kill → ready → first successful request, the requests that failed or were refused, \
        and the evidence (core opened by gdb with every thread, stacks, diagnosis, lock word).
        Scenarios: \(ChaosScenario.names). Loads: \(ChaosLoad.names).
        Sizes: --quick (default: every scenario once under steady load, plus a control run); --full (--runs N of each \
        scenario under each load); --soak or --runs N alone (one long-lived defib, N faults in a row, then: N incidents, \
        N recoveries, no orphaned process, no supervisor restart).
        Writes DIR/report.json (one object per run), DIR/summary.json, DIR/report.md and DIR/timeline-SCENARIO.svg.
        Exit status: 0 when every run recovered and every check passed, 1 otherwise (report.md lists what failed), 2 for bad options.
        Examples:
          defib chaos --quick --report /tmp/chaos
          defib chaos --full --runs 5 --load steady,overload --report /tmp/chaos
          defib chaos --load overload --scenarios control --duration 600s --full --runs 1 --report /tmp/overload
          defib chaos --runs 1000 --report /tmp/soak
        """)

    @Flag(name: .long, help: "Every scenario once under steady load, plus one control run (the default).")
    var quick = false

    @Flag(name: .long, help: "--runs N of each scenario under each load.")
    var full = false

    @Flag(name: .long, help: "One long-lived supervisor, --runs N faults in a row (also implied by --runs without --quick/--full).")
    var soak = false

    @Option(name: .long, help: "Runs per scenario and load (--full, default 3) or faults in a soak (default 100).")
    var runs: Int?

    @Option(name: .long, help: ArgumentHelp("Comma-separated scenarios, or all.", valueName: "a,b,…"))
    var scenarios: String?

    @Option(name: .long, help: ArgumentHelp("Comma-separated loads (idle, steady, overload), or all.", valueName: "LOAD"))
    var load: String?

    @Option(name: .long, help: "A supervisor config file (TOML, see units/example.toml) to test instead of the harness's own policy.")
    var config: String?

    @Option(name: .long, help: "Report directory (created if needed).")
    var report: String

    @Option(name: .long, help: "Heartbeat interval in ms (overrides the config).")
    var interval: Int?

    @Option(name: .long, help: "Hang deadline in ms (overrides the config).")
    var deadline: Int?

    @Option(name: .long, help: "Core capture method: native, kernel, gcore or none (overrides the config).")
    var capture: CaptureMethod?

    @Option(name: .long, help: "Steady-load rate in requests per second.")
    var rate: Double?

    @Option(name: .long, help: "Length of each control run, e.g. 600s, 10m, 1500ms.")
    var duration: String?

    @Option(name: .long, help: "Load before each fault, e.g. 2s.")
    var warmup: String?

    @Option(name: .long, help: "Load kept up after the first successful request, e.g. 2s.")
    var post: String?

    @Option(name: .long, help: "A request with no complete response after this long is a timeout, e.g. 8s (default: deadline + max extension + 3 s).")
    var requestTimeout: String?

    @Option(name: .long, help: "stress-ng CPU workers under overload (default: twice the CPUs).")
    var stressWorkers: Int?

    @Option(name: .long, help: "The defib executable the runs use (default: this one).")
    var defib: String?

    @Option(name: .long, help: "The defib-proxy executable (default: next to this defib).")
    var proxy: String?

    @Flag(name: .long, help: "Keep the cores (by default each is deleted once gdb has checked it).")
    var keepCores = false

    func validate() throws {
        if [quick, full, soak].filter({ $0 }).count > 1 { throw ValidationError("choose one of --quick, --full and --soak") }
        if let runs, runs < 1 { throw ValidationError("--runs \(runs): must be at least 1") }
        if quick && runs != nil { throw ValidationError("--quick runs every scenario once; use --full --runs N or --soak --runs N") }
        if let rate, !(rate > 0 && rate <= 10_000) { throw ValidationError("--rate \(rate): must be between 0 and 10000 requests/s") }
        if let stressWorkers, stressWorkers < 1 { throw ValidationError("--stress-workers \(stressWorkers): must be at least 1") }
        if report.isEmpty { throw ValidationError("--report: give a directory") }
    }

    func makeOptions() throws -> ChaosOptions {
        let mode: ChaosMode = full ? .full : soak ? .soak : quick ? .quick : (runs != nil ? .soak : .quick)
        let here = (currentExecutable() as NSString).deletingLastPathComponent
        var scenarioList: [ChaosScenario]?
        var loadList: [ChaosLoad]?
        var durations: [String: Int] = [:]
        do {
            if let scenarios { scenarioList = try ChaosScenario.parseList(scenarios) }
            if let load { loadList = try ChaosLoad.parseList(load) }
            for (option, text) in [("--duration", duration), ("--warmup", warmup), ("--post", post), ("--request-timeout", requestTimeout)] {
                if let text { durations[option] = try ChaosDuration.parseMilliseconds(text, option: option) }
            }
        } catch {
            throw ValidationError(error.message)
        }
        return ChaosOptions(
            mode: mode, scenarios: scenarioList, loads: loadList,
            runs: runs ?? (mode == .soak ? 100 : mode == .full ? 3 : 1), reportDirectory: report, configFile: config,
            intervalMs: interval, deadlineMs: deadline, capture: capture, ratePerSecond: rate,
            controlDurationMs: durations["--duration"], warmupMs: durations["--warmup"], postMs: durations["--post"],
            requestTimeoutMs: durations["--request-timeout"],
            defibPath: defib ?? currentExecutable(), proxyPath: proxy ?? "\(here)/defib-proxy", keepCores: keepCores, stressWorkers: stressWorkers)
    }

    func run() throws {
        // First, before any thread exists: SIGINT/SIGTERM are taken over so every process started is cleaned up.
        let flag = InterruptFlag()
        let registry = ProcessRegistry()
        signal(SIGPIPE, SIG_IGN)
        try SignalWatcher.start(flag: flag, registry: registry)
        let options = try makeOptions()
        let harness: ChaosHarness
        do {
            harness = try ChaosHarness(options: options, flag: flag, registry: registry) { line in
                FileHandle.standardError.write(Data((line + "\n").utf8))
            }
        } catch {
            if error.kind == .badOption { throw ValidationError(error.message) }
            FileHandle.standardError.write(Data("defib chaos: \(error)\n".utf8))
            throw ExitCode(2)
        }
        FileHandle.standardError.write(Data("defib chaos: \(harness.runs.count) run(s) (\(options.mode.rawValue)), report in \(options.reportDirectory)\n".utf8))
        let outcome: ChaosOutcome
        do { outcome = try harness.run() } catch {
            registry.killAll()
            FileHandle.standardError.write(Data("defib chaos: \(error)\n".utf8))
            throw ExitCode(2)
        }
        print("report: \(outcome.reportDirectory)/report.md (\(outcome.results.filter(\.passed).count) of \(outcome.results.count) runs passed)")
        for v in outcome.verdicts { print("\(v.passed ? "PASS" : "FAIL") \(v.text)") }
        if let s = outcome.interruptedBy { throw ExitCode(128 + s) }
        if !outcome.passed {
            print("FAILED:")
            for f in outcome.failures { print("  - \(f)") }
            throw ExitCode(1)
        }
        print("PASS: every run recovered and every evidence check passed")
    }

    private func currentExecutable() -> String {
        var buf = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buf, buf.count - 1)
        return n > 0 ? String(cString: Array(buf[0..<n]) + [0]) : CommandLine.arguments[0]
    }
}
