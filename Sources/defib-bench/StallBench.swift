import ArgumentParser
import DefibCore
import DefibPOSIX
import Foundation
import Glibc

/// `defib-bench stall`: what a stall's evidence costs the service, measured by the service itself. A C program
/// with idle threads, touched ballast and one thread that reads CLOCK_MONOTONIC in a loop records every gap
/// longer than 50 µs in a shared file; the bench takes the evidence exactly as the supervisor does
/// (`StallEvidenceCapture`) and compares the longest gap the service saw during each capture with the pause
/// defib measured (first PTRACE_SEIZE to last detach) and with the longest gap in an equal window without a
/// capture (the machine's own noise). The same for a full native core, which is what `core` would take, and for
/// the reference proxy (defib's own figure only: it has no ticker).
struct StallCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stall",
        abstract: "The pause a stall's evidence costs the service: stacks-only vs a full native core, as the service sees it.")

    @OptionGroup var options: PartOptions

    @Option(help: "Captures per scenario.")
    var reps: Int = 20

    @Option(help: "MiB of touched ballast of the large service.")
    var ballast: Int = 256

    @Option(help: "The stall evidence budget the targets hold stacks-only to (stall_evidence_budget_ms).")
    var budgetMs: Int = 20

    func validate() throws {
        try requireRange(reps, 3...200, "--reps")
        try requireRange(ballast, 1...8192, "--ballast", unit: "MiB")
        try requireRange(budgetMs, 1...10_000, "--budget-ms")
    }

    func run() throws {
        let startedAt = isoNow()
        let machineBefore = MachineState.now()
        let work = options.workDirectory(part: "stall")
        let ticker: String
        do {
            removeTree(work)
            try makeDirectories(work)
            ticker = try TickerProgram.build(in: work)
        } catch {
            try failPart("stall", reason: "\(error)", startedAt: startedAt, outDirectory: options.out)
        }
        defer { removeTree(work) }
        var scenarios: [StallScenario] = []
        let bench = StallBench(ticker: ticker, work: work, reps: reps, log: progress)
        scenarios.append(bench.run(id: "small-stacks", title: "8 threads, 1 MiB: stacks only", mode: .stacks, ballastMB: 1))
        scenarios.append(bench.run(id: "large-stacks", title: "8 threads, \(ballast) MiB: stacks only", mode: .stacks, ballastMB: ballast))
        scenarios.append(bench.run(id: "large-core", title: "8 threads, \(ballast) MiB: full native core", mode: .core, ballastMB: ballast))
        if let proxy = try? options.proxyPath() { scenarios.append(bench.runProxy(proxy)) }
        var report = StallReport(part: "stall", startedAt: startedAt, finishedAt: isoNow(), machineBefore: machineBefore,
                                 machineAfter: MachineState.now(), figures: StallFigures(reps: reps, budgetMs: budgetMs, scenarios: scenarios))
        report.targets = StallFigures.targets(scenarios, budgetMs: budgetMs)
        if scenarios.allSatisfy({ $0.samples.isEmpty }) {
            report.status = "FAIL"
            report.reason = scenarios.compactMap(\.error).joined(separator: "; ")
        }
        report.markdown = StallFigures.markdown(report)
        try writePartJSON(report, part: "stall", outDirectory: options.out)
        for t in report.targets { progress("  \(t.pass ? "PASS" : "FAIL")  \(t.target): \(t.measured)") }
        if report.status != "ok" { throw ExitCode(1) }
    }
}

/// One capture: what defib measured and what the service saw.
struct StallSample: Codable, Equatable {
    /// First PTRACE_SEIZE to last detach, as `StallCapture.pauseMs` (what the incident records).
    var defibPauseMs: Double
    /// The longest gap the service's ticker saw overlapping the capture; nil without a ticker.
    var servicePauseMs: Double?
    /// The longest gap in an equal window just before, without a capture: the machine's noise.
    var noiseMs: Double?
    /// The file written: its size and what it takes on disk.
    var bytes: Int64
    var allocatedBytes: Int64
}

struct StallScenario: Codable, Equatable {
    var id: String
    var title: String
    var mode: String
    var samples: [StallSample] = []
    var error: String?
    var defibPause: Spread? { Spread(samples.map(\.defibPauseMs)) }
    var servicePause: Spread? { Spread(samples.compactMap(\.servicePauseMs)) }
    var noise: Spread? { Spread(samples.compactMap(\.noiseMs)) }
    var allocated: Spread? { Spread(samples.map { Double($0.allocatedBytes) }) }
}

struct StallFigures: Codable {
    var reps: Int
    var budgetMs: Int
    var scenarios: [StallScenario]

    static func targets(_ scenarios: [StallScenario], budgetMs: Int) -> [TargetCheck] {
        var checks: [TargetCheck] = []
        let large = scenarios.first { $0.id == "large-stacks" }
        let core = scenarios.first { $0.id == "large-core" }
        if let seen = large?.servicePause {
            checks.append(TargetCheck(id: "stall.stacks-within-budget", target: "stacks only, large service: the pause it sees ≤ \(budgetMs) ms (median)",
                                      measured: "median \(formatMs(seen.median)) (max \(formatMs(seen.max)))", pass: seen.median <= Double(budgetMs)))
        } else {
            checks.append(TargetCheck(id: "stall.stacks-within-budget", target: "stacks only, large service: the pause it sees ≤ \(budgetMs) ms (median)",
                                      measured: "not measured: \(large?.error ?? "no samples")", pass: false))
        }
        if let stacks = large?.servicePause, let full = core?.servicePause {
            let ratio = full.median / max(stacks.median, 0.001)
            checks.append(TargetCheck(id: "stall.stacks-vs-core", target: "stacks only pauses the large service ≥ 5× less than a full core (medians)",
                                      measured: "\(formatMs(full.median)) / \(formatMs(stacks.median)) = \(formatRatio(ratio))", pass: ratio >= 5))
        }
        if let large, let defib = large.defibPause, let seen = large.servicePause {
            // defib's own figure is what the incident records: it should not understate what the service saw.
            let under = seen.median - defib.median
            checks.append(TargetCheck(id: "stall.measure-honest", target: "the incident's pause_ms is within 2 ms of the service's own view (medians)",
                                      measured: "defib \(formatMs(defib.median)), service \(formatMs(seen.median))", pass: abs(under) <= 2))
        }
        return checks
    }

    static func markdown(_ report: StallReport) -> String {
        var md = report.sectionHeading("Stall evidence: the pause it costs",
                                       note: "\(report.figures.reps) captures per scenario (`defib-bench stall`).")
        md += """
            A stall's evidence is taken while the service is stalled (at the suspect stage), from a process that may come back \
            any moment, so its pause must be one the service does not notice. The service here is a C program with 8 idle \
            threads, touched ballast and a thread reading CLOCK_MONOTONIC in a loop that records every gap over 50 µs: \
            *service* is the longest gap it saw during a capture, *noise* the longest in an equal window just before \
            (the shared machine's own scheduling), *defib* the pause defib measured (first PTRACE_SEIZE to last detach: \
            the incident's `stall_evidence.pause_ms`). Stacks only: registers and the live part of every stack, the \
            libraries' data, no heap (`stall_evidence = "stacks"`, the default); full core: what `stall_evidence = "core"` \
            takes when the budget allows it.


            | scenario | defib pause (median, max) | service saw (median, max) | noise (median, max) | file allocated (median) |
            |---|---|---|---|---|

            """
        for s in report.figures.scenarios {
            func cell(_ spread: Spread?) -> String { spread.map { "\(formatMs($0.median)), \(formatMs($0.max))" } ?? "-" }
            md += "| \(s.title) | \(cell(s.defibPause)) | \(cell(s.servicePause)) | \(cell(s.noise)) | "
                + "\(s.allocated.map { formatBytes(Int64($0.median)) } ?? "-") |\n"
            if let error = s.error { md += "\n\(s.id): \(error)\n" }
        }
        md += "\n"
        for t in report.targets { md += "- **\(t.pass ? "PASS" : "FAIL")** \(t.target): \(t.measured)\n" }
        return md
    }
}

typealias StallReport = BenchReport<StallFigures>

/// Runs the captures.
struct StallBench {
    let ticker: String
    let work: String
    let reps: Int
    let log: (String) -> Void

    func run(id: String, title: String, mode: StallEvidenceMode, ballastMB: Int) -> StallScenario {
        var scenario = StallScenario(id: id, title: title, mode: mode.rawValue)
        let dir = "\(work)/\(id)"
        let gaps = dir + "/gaps"
        do {
            try makeDirectories(dir)
            let child = try ManagedChild(name: "ticker", argv: [ticker, gaps, String(ballastMB), "8"], workingDirectory: dir, logPath: dir + "/ticker.log")
            defer { child.stop() }
            guard let reader = waitForGaps(gaps, child: child) else {
                scenario.error = "the ticker never started: \(child.logTail)"
                return scenario
            }
            defer { reader.close() }
            log("stall: \(title)")
            for rep in 0..<reps {
                let path = "\(dir)/capture.\(rep)"
                // The noise window: as long as a capture, just before it.
                let before = monotonicNanoseconds()
                let capture = StallEvidenceCapture.capture(StallEvidenceRequest(pid: child.pid, mode: mode, budgetMs: mode == .core ? 60_000 : 2000,
                                                                                path: path))
                let after = monotonicNanoseconds()
                sleepMs(20)   // let the ticker record the gap that ends when the threads run again
                let window = after - before
                guard capture.record.error == nil || capture.record.path != nil else {
                    scenario.error = capture.record.error
                    continue
                }
                let sizes = fileSizes(path)
                let seen = reader.longestGap(from: before, to: after)
                let noise = reader.longestGap(from: before - window - 50_000_000, to: before - 50_000_000)
                scenario.samples.append(StallSample(defibPauseMs: capture.pauseMs, servicePauseMs: seen, noiseMs: noise,
                                                    bytes: sizes?.size ?? 0, allocatedBytes: sizes?.allocated ?? 0))
                unlink(path)
                // The next noise window must not reach back into this capture.
                sleepMs(100 + Int(2 * window / 1_000_000))
            }
        } catch {
            scenario.error = "\(error)"
        }
        return scenario
    }

    /// The reference proxy: defib's own pause figure (the proxy has no ticker).
    func runProxy(_ proxy: String) -> StallScenario {
        var scenario = StallScenario(id: "proxy-stacks", title: "the reference proxy (Swift, idle): stacks only", mode: "stacks")
        let dir = "\(work)/proxy"
        do {
            let (child, socket) = try ProxyLauncher.start(binary: proxy, name: "defib-proxy", directory: dir, ballastMB: 0, extraThreads: 0)
            defer { child.stop() }
            _ = try ProxyLauncher.waitForPong(child, socket: socket, sinceNs: monotonicNanoseconds())
            log("stall: \(scenario.title)")
            for rep in 0..<reps {
                let path = "\(dir)/capture.\(rep)"
                let capture = StallEvidenceCapture.capture(StallEvidenceRequest(pid: child.pid, mode: .stacks, budgetMs: 2000, path: path))
                if let error = capture.record.error, capture.record.path == nil { scenario.error = error; continue }
                let sizes = fileSizes(path)
                scenario.samples.append(StallSample(defibPauseMs: capture.pauseMs, servicePauseMs: nil, noiseMs: nil,
                                                    bytes: sizes?.size ?? 0, allocatedBytes: sizes?.allocated ?? 0))
                unlink(path)
                sleepMs(100)
            }
        } catch {
            scenario.error = "\(error)"
        }
        return scenario
    }

    private func waitForGaps(_ path: String, child: ManagedChild) -> GapReader? {
        let deadline = monotonicNanoseconds() + 30_000_000_000
        while monotonicNanoseconds() < deadline {
            if child.poll() != nil { return nil }
            if let reader = GapReader(path: path), reader.ready { return reader }
            sleepMs(20)
        }
        return nil
    }
}

/// The ticker's shared file: a header (magic, ready flag, count) and a ring of {start, end} gaps in
/// CLOCK_MONOTONIC nanoseconds, written by the ticker thread, read here.
final class GapReader {
    static let slots = 65_536
    let base: UnsafeMutableRawPointer
    let length: Int

    init?(path: String) {
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
        guard fd >= 0 else { return nil }
        defer { Glibc.close(fd) }
        length = 64 + Self.slots * 16
        var st = stat()
        guard fstat(fd, &st) == 0, Int(st.st_size) >= length else { return nil }
        guard let p = mmap(nil, length, PROT_READ, MAP_SHARED, fd, 0), p != MAP_FAILED else { return nil }
        base = p
    }

    var ready: Bool { base.load(fromByteOffset: 8, as: UInt64.self) == 1 }

    /// The longest gap overlapping [from, to] (ns), in ms; 0 when none over 50 µs.
    func longestGap(from: Int64, to: Int64) -> Double {
        let count = Int(base.load(fromByteOffset: 16, as: UInt64.self))
        var longest: Int64 = 0
        for i in max(0, count - Self.slots)..<count {
            let slot = 64 + (i % Self.slots) * 16
            let start = Int64(bitPattern: base.load(fromByteOffset: slot, as: UInt64.self))
            let end = Int64(bitPattern: base.load(fromByteOffset: slot + 8, as: UInt64.self))
            if end >= from && start <= to { longest = max(longest, end - start) }
        }
        return Double(longest) / 1e6
    }

    func close() { munmap(base, length) }
}

/// The service: idle threads in condition waits, touched ballast, and the ticker thread.
enum TickerProgram {
    static func build(in work: String) throws -> String {
        let source = work + "/ticker.c"
        let binary = work + "/ticker"
        try TickerProgram.source.write(toFile: source, atomically: true, encoding: .utf8)
        let (status, output) = runToolCapturing(["cc", "-O2", "-pthread", "-o", binary, source], workDirectory: work, timeoutMs: 60_000)
        guard status == .exited(code: 0) else { throw BenchError(kind: .io, message: "cc ticker.c: \(output)") }
        return binary
    }

    static let source = #"""
        #define _GNU_SOURCE
        #include <fcntl.h>
        #include <pthread.h>
        #include <stdint.h>
        #include <stdlib.h>
        #include <string.h>
        #include <sys/mman.h>
        #include <time.h>
        #include <unistd.h>
        #define SLOTS 65536
        static volatile uint64_t *shared;
        static pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
        static pthread_cond_t c = PTHREAD_COND_INITIALIZER;
        static uint64_t now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return (uint64_t)t.tv_sec * 1000000000u + t.tv_nsec; }
        static void *idle(void *arg) { (void)arg; pthread_mutex_lock(&m); for (;;) pthread_cond_wait(&c, &m); return 0; }
        static void *tick(void *arg) {
            (void)arg;
            uint64_t last = now();
            shared[1] = 1;
            for (;;) {
                uint64_t t = now();
                if (t - last > 50000) {
                    uint64_t i = shared[2];
                    shared[8 + (i % SLOTS) * 2] = last;
                    shared[8 + (i % SLOTS) * 2 + 1] = t;
                    __atomic_store_n(&shared[2], i + 1, __ATOMIC_RELEASE);
                }
                last = t;
            }
            return 0;
        }
        int main(int argc, char **argv) {
            if (argc < 4) return 64;
            size_t len = 64 + SLOTS * 16;
            int fd = open(argv[1], O_RDWR | O_CREAT | O_TRUNC, 0600);
            if (fd < 0 || ftruncate(fd, len) != 0) return 1;
            shared = mmap(0, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
            if (shared == MAP_FAILED) return 1;
            size_t ballast = (size_t)atoi(argv[2]) << 20;
            char *b = malloc(ballast);
            for (size_t i = 0; i < ballast; i += 4096) b[i] = (char)(i >> 12) | 1;
            int threads = atoi(argv[3]);
            pthread_t t;
            for (int i = 0; i < threads; i++) pthread_create(&t, 0, idle, 0);
            pthread_create(&t, 0, tick, 0);
            for (;;) pause();
        }
        """#
}
