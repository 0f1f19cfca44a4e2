import Foundation

/// One timed capture.
struct CaptureSample: Codable, Equatable {
    /// "native", "gcore" or "kernel".
    var method: String
    /// Repetition number, from 0.
    var rep: Int
    /// Wall time of the capture as the supervisor would spend it (DefibPOSIX's own figure: from the call until the
    /// core is complete on disk, in the page cache; for the kernel from the signal's preparation until the reaped
    /// process's core is found).
    var durationMs: Double
    /// st_size of the core.
    var fileBytes: Int64
    /// st_blocks × 512 of the core: the bytes really written (zero pages left as holes are not).
    var allocatedBytes: Int64
    /// NT_PRSTATUS notes counted in the core file.
    var threadsInCore: Int?
    /// Threads of the process just before the capture (/proc/PID/status).
    var processThreads: Int
    /// VmRSS of the process just before the capture.
    var processRSSBytes: Int64
    /// Native only: milliseconds to stop every thread.
    var stopMs: Double?
    /// Why this capture failed; nil when it succeeded.
    var error: String?

    /// Allocated bytes of the core per second of wall time: what was copied out of the process into the page cache.
    var writeRate: Double? { error == nil && durationMs > 0 ? Double(allocatedBytes) / (durationMs / 1000) : nil }
    /// The process's resident memory per second of wall time: the same numerator for every method.
    var residentRate: Double? { error == nil && durationMs > 0 ? Double(processRSSBytes) / (durationMs / 1000) : nil }
}

/// The figures of one method in one scenario. Pure.
struct MethodSummary: Codable, Equatable {
    /// "native", "gcore" or "kernel".
    var method: String
    /// Captures attempted.
    var runs: Int
    /// The errors of the captures that failed (they are left out of the figures).
    var failures: [String]
    /// Wall time in ms.
    var wallMs: Spread?
    /// Core st_size.
    var fileBytes: Spread?
    /// Core st_blocks × 512.
    var allocatedBytes: Spread?
    /// Allocated bytes per second.
    var writeRate: Spread?
    /// Process RSS per second.
    var residentRate: Spread?
    /// The distinct thread counts found in the cores.
    var threadsInCore: [Int]
    /// The distinct thread counts of the processes.
    var processThreads: [Int]

    /// Summarizes the samples of `method`.
    static func of(_ method: String, in samples: [CaptureSample]) -> MethodSummary {
        let mine = samples.filter { $0.method == method }
        let ok = mine.filter { $0.error == nil }
        return MethodSummary(
            method: method, runs: mine.count, failures: mine.compactMap(\.error),
            wallMs: Spread(ok.map(\.durationMs)), fileBytes: Spread(ok.map { Double($0.fileBytes) }),
            allocatedBytes: Spread(ok.map { Double($0.allocatedBytes) }), writeRate: Spread(ok.compactMap(\.writeRate)),
            residentRate: Spread(ok.compactMap(\.residentRate)),
            threadsInCore: Array(Set(ok.compactMap(\.threadsInCore))).sorted(),
            processThreads: Array(Set(mine.map(\.processThreads))).sorted())
    }
}

/// Whether gdb opened a native core with every thread.
struct GdbCheck: Codable, Equatable {
    /// Threads of the process right before the capture.
    var processThreads: Int
    /// NT_PRSTATUS notes in the core.
    var coreThreads: Int
    /// Threads gdb listed with `info threads`.
    var gdbThreads: Int
    /// Every count agrees and gdb exited 0.
    var pass: Bool
    /// gdb's exit and its first warnings or errors.
    var detail: String
}

/// One kind of process captured with every method.
struct ScenarioResult: Codable, Equatable {
    /// "idle" or "ballast".
    var id: String
    /// "idle proxy", "proxy grown to 512 MiB RSS with 8 extra threads".
    var title: String
    /// --ballast.
    var ballastMB: Int
    /// --extra-threads.
    var extraThreads: Int
    /// VmRSS of the long-lived process once ready.
    var processRSSBytes: Int64
    /// Its threads once ready.
    var processThreads: Int
    /// Every timed capture, in the order they ran.
    var samples: [CaptureSample]
    /// The untimed warm-up captures (the first of each method on the long-lived process), kept for the record.
    var warmupSamples: [CaptureSample] = []
    /// Per method, in the order native, gcore, kernel.
    var summaries: [MethodSummary]
    /// The gdb check of a native core (an extra, untimed capture).
    var gdb: GdbCheck?
    /// Why the scenario stopped early; nil when it ran through.
    var error: String?

    /// The summary of `method`.
    func summary(_ method: String) -> MethodSummary? { summaries.first { $0.method == method } }
}

/// bench/core.json: the envelope every part writes plus these figures.
typealias CoreReport = BenchReport<CoreFigures>

/// The core part's figures.
struct CoreFigures: Codable {
    /// `gdb --version`, first line.
    var gdbVersion: String
    /// Timed repetitions per method and scenario.
    var reps: Int
    /// Untimed captures per method before the timed ones.
    var warmups: Int
    var scenarios: [ScenarioResult]
}

/// The core capture's targets, checked against the figures. Pure.
enum CoreTargets {
    /// The targets: idle: native ≥ 20× faster than gcore; 512 MiB: native ≥ 5× faster than gcore and faster than
    /// the kernel's dump; native core no larger than 1.1× the kernel's (file size and allocated size, both
    /// scenarios); ≥ 3 GB/s into the page cache (512 MiB); gdb opens each native core with all threads.
    static func evaluate(idle: ScenarioResult?, ballast: ScenarioResult?) -> [TargetCheck] {
        var out: [TargetCheck] = []
        let big = "\(ballast?.ballastMB ?? 512) MiB proxy"
        out.append(speedup(idle, id: "idle.native-vs-gcore", target: "idle proxy: native ≥ 20× faster than gcore (median wall time)",
                           other: "gcore", atLeast: 20))
        out.append(speedup(ballast, id: "ballast.native-vs-gcore",
                           target: "\(big): native ≥ 5× faster than gcore (median wall time)", other: "gcore", atLeast: 5))
        out.append(speedup(ballast, id: "ballast.native-vs-kernel",
                           target: "\(big): native faster than the kernel's dump (median wall time)", other: "kernel",
                           atLeast: 1, strictly: true))
        for scenario in [idle, ballast] {
            let name = scenario?.id ?? "?"
            let label = scenario.map { $0.id == "idle" ? "idle proxy" : "\($0.ballastMB) MiB proxy" } ?? "scenario"
            out.append(sizeCheck(scenario, id: "\(name).size-vs-kernel", what: "file size (st_size)",
                                 target: "\(label): native core file no larger than 1.1× the kernel's", value: \.fileBytes))
            out.append(sizeCheck(scenario, id: "\(name).allocated-vs-kernel", what: "allocated (st_blocks×512)",
                                 target: "\(label): native core's allocated size no larger than 1.1× the kernel's",
                                 value: \.allocatedBytes))
        }
        out.append(throughput(ballast, label: big))
        for scenario in [idle, ballast] {
            let id = "\(scenario?.id ?? "?").gdb-threads"
            let target = "gdb opens the native core of the \(scenario.map { $0.id == "idle" ? "idle proxy" : "\($0.ballastMB) MiB proxy" } ?? "scenario") with all threads"
            guard let scenario, let gdb = scenario.gdb else {
                out.append(TargetCheck(id: id, target: target, measured: "not checked: \(scenario?.error ?? "scenario did not run")", pass: false))
                continue
            }
            out.append(TargetCheck(id: id, target: target,
                                   measured: "process \(gdb.processThreads) threads, core \(gdb.coreThreads) NT_PRSTATUS, gdb `info threads` \(gdb.gdbThreads); \(gdb.detail)",
                                   pass: gdb.pass))
        }
        return out
    }

    /// Failures of the methods involved, in words, or "".
    static func failureNote(_ summaries: [MethodSummary?]) -> String {
        let notes = summaries.compactMap { $0 }.filter { !$0.failures.isEmpty }
            .map { "\($0.method): \($0.failures.count) of \($0.runs) runs failed (\($0.failures[0]))" }
        return notes.isEmpty ? "" : "; " + notes.joined(separator: "; ")
    }

    static func speedup(_ s: ScenarioResult?, id: String, target: String, other: String, atLeast: Double,
                        strictly: Bool = false) -> TargetCheck {
        let native = s?.summary("native"), slower = s?.summary(other)
        guard let n = native?.wallMs, let o = slower?.wallMs else {
            return TargetCheck(id: id, target: target, measured: "no figures: \(missing(s, ["native", other]))", pass: false)
        }
        let ratio = o.median / n.median
        let pass = strictly ? n.median < o.median : ratio >= atLeast
        return TargetCheck(id: id, target: target,
                           measured: "\(other) \(formatMs(o.median)) / native \(formatMs(n.median)) = \(formatRatio(ratio))"
                               + failureNote([native, slower]),
                           pass: pass)
    }

    static func sizeCheck(_ s: ScenarioResult?, id: String, what: String, target: String,
                          value: KeyPath<MethodSummary, Spread?>) -> TargetCheck {
        let native = s?.summary("native"), kernel = s?.summary("kernel")
        guard let n = native?[keyPath: value], let k = kernel?[keyPath: value], k.median > 0 else {
            return TargetCheck(id: id, target: target, measured: "no figures: \(missing(s, ["native", "kernel"]))", pass: false)
        }
        let ratio = n.median / k.median
        return TargetCheck(id: id, target: target,
                           measured: "\(what): native \(formatBytes(Int64(n.median))) / kernel \(formatBytes(Int64(k.median))) = "
                               + String(format: "%.3f×", ratio) + failureNote([native, kernel]),
                           pass: ratio <= 1.1)
    }

    static func throughput(_ s: ScenarioResult?, label: String) -> TargetCheck {
        let id = "ballast.native-throughput"
        let target = "\(label): native writes ≥ 3 GB/s into the page cache (median of allocated bytes / wall time)"
        guard let native = s?.summary("native"), let rate = native.writeRate else {
            return TargetCheck(id: id, target: target, measured: "no figures: \(missing(s, ["native"]))", pass: false)
        }
        return TargetCheck(id: id, target: target,
                           measured: "\(formatRate(rate.median)) (min \(formatRate(rate.min)), max \(formatRate(rate.max)))"
                               + failureNote([native]),
                           pass: rate.median >= 3e9)
    }

    /// Why figures are missing: the scenario's error or the methods' first failures.
    static func missing(_ s: ScenarioResult?, _ methods: [String]) -> String {
        guard let s else { return "the scenario did not run" }
        var parts: [String] = []
        for m in methods {
            guard let summary = s.summary(m) else { parts.append("\(m) did not run"); continue }
            if summary.wallMs == nil {
                parts.append("\(m): every run failed" + (summary.failures.first.map { " (\($0))" } ?? " (no runs)"))
            }
        }
        if let e = s.error { parts.append("scenario stopped: \(e)") }
        return parts.isEmpty ? "unknown" : parts.joined(separator: "; ")
    }
}
