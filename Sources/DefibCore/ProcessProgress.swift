/// What /proc says about a process at one instant, and what two such samples say about its progress.
/// Parsing and judging are pure; `DefibPOSIX.ProcSampler` reads the files.

/// One thread at one instant.
public struct ThreadSample: Sendable, Equatable, Codable {
    public var tid: Int32
    /// `comm`, e.g. "NIO-ELT-0-#1".
    public var name: String
    /// The one-letter state from /proc/TID/stat: R running/runnable, S sleeping, D uninterruptible, T stopped, t traced, Z zombie, I idle.
    public var state: String
    /// utime + stime in clock ticks.
    public var cpuTicks: UInt64
    /// /proc/TID/schedstat: time on a CPU and time waiting on a run queue, in ns.
    public var onCpuNs: UInt64?
    public var runDelayNs: UInt64?
    /// The system call the thread is blocked in (/proc/TID/syscall), nil when running in user space or unknown.
    public var syscall: Int?
    /// The first argument of that call (the futex address for futex waits), as "0x…".
    public var syscallArg0: String?

    public init(tid: Int32, name: String, state: String, cpuTicks: UInt64, onCpuNs: UInt64? = nil, runDelayNs: UInt64? = nil,
                syscall: Int? = nil, syscallArg0: String? = nil) {
        self.tid = tid; self.name = name; self.state = state; self.cpuTicks = cpuTicks
        self.onCpuNs = onCpuNs; self.runDelayNs = runDelayNs; self.syscall = syscall; self.syscallArg0 = syscallArg0
    }

    /// Asleep in a futex wait: how a thread blocked on a lock (or a condition variable) looks from outside.
    public var inFutexWait: Bool { syscall == Syscalls.futex && state != "R" }
}

/// A pressure-stall line pair from /proc/pressure/{cpu,io} (or a cgroup's cpu.pressure).
public struct PressureSample: Sendable, Equatable, Codable {
    /// Share of time (%) at least one task was stalled, averaged over 10 s.
    public var someAvg10: Double
    /// Total stall time, µs.
    public var someTotalUs: UInt64
    public var fullAvg10: Double?
    public var fullTotalUs: UInt64?
    public init(someAvg10: Double, someTotalUs: UInt64, fullAvg10: Double? = nil, fullTotalUs: UInt64? = nil) {
        self.someAvg10 = someAvg10; self.someTotalUs = someTotalUs; self.fullAvg10 = fullAvg10; self.fullTotalUs = fullTotalUs
    }
}

/// A cgroup's CPU bandwidth limit: `quotaUs` of CPU time every `periodUs`.
public struct CPUQuota: Sendable, Equatable, Codable {
    public var quotaUs: UInt64
    public var periodUs: UInt64
    public init(quotaUs: UInt64, periodUs: UInt64) { self.quotaUs = quotaUs; self.periodUs = periodUs }
    /// The share of one CPU it allows.
    public var share: Double { Double(quotaUs) / Double(max(1, periodUs)) }
    public var text: String {
        func ms(_ us: UInt64) -> String { us % 1000 == 0 ? "\(us / 1000)" : String(Double(us) / 1000) }
        return "\(ms(quotaUs)) ms of CPU per \(ms(periodUs)) ms"
    }
}

/// Everything sampled about a process at one instant.
public struct ProcessSample: Sendable, Equatable, Codable {
    public var pid: Int32
    /// Monotonic time of the sample, ns.
    public var atNs: Int64
    public var threads: [ThreadSample]
    public var cpuPressure: PressureSample?
    public var ioPressure: PressureSample?
    /// cgroup CPU throttling (cpu.stat): time throttled, µs, and the number of throttled periods.
    public var throttledUs: UInt64?
    public var throttledPeriods: UInt64?
    /// The cgroup's CPU quota (v1 cpu.cfs_quota_us/cfs_period_us, v2 cpu.max), µs per period; nil when unlimited.
    public var cpuQuota: CPUQuota?
    /// sysconf(_SC_CLK_TCK).
    public var ticksPerSecond: Int
    /// Online CPUs (sysconf(_SC_NPROCESSORS_ONLN)).
    public var cpuCount: Int = 1

    public init(pid: Int32, atNs: Int64, threads: [ThreadSample], cpuPressure: PressureSample? = nil, ioPressure: PressureSample? = nil,
                throttledUs: UInt64? = nil, throttledPeriods: UInt64? = nil, ticksPerSecond: Int = 100, cpuCount: Int = 1) {
        self.pid = pid; self.atNs = atNs; self.threads = threads; self.cpuPressure = cpuPressure; self.ioPressure = ioPressure
        self.throttledUs = throttledUs; self.throttledPeriods = throttledPeriods; self.ticksPerSecond = ticksPerSecond
        self.cpuCount = max(1, cpuCount)
    }

    /// CPU time of all threads, ns (schedstat when every thread has it, else clock ticks).
    public var cpuNs: UInt64 {
        if threads.allSatisfy({ $0.onCpuNs != nil }) { return threads.reduce(0) { $0 + $1.onCpuNs! } }
        return threads.reduce(0) { $0 + $1.cpuTicks } * UInt64(1_000_000_000 / max(1, ticksPerSecond))
    }

    public var runDelayNs: UInt64 { threads.reduce(0) { $0 + ($1.runDelayNs ?? 0) } }

    /// Threads per state letter, e.g. ["S": 7, "R": 1].
    public var stateCounts: [String: Int] { threads.reduce(into: [:]) { $0[$1.state, default: 0] += 1 } }

    /// "7 S (6 in futex), 1 R".
    public var stateSummary: String {
        let futex = threads.filter(\.inFutexWait).count
        return stateCounts.sorted { $0.value > $1.value || ($0.value == $1.value && $0.key < $1.key) }.map { state, n in
            state == "S" && futex > 0 ? "\(n) S (\(futex) in futex)" : "\(n) \(state)"
        }.joined(separator: ", ")
    }
}

/// What two samples of the same process, some time apart, say about it.
public enum ProgressVerdict: Sendable, Equatable, Codable {
    /// No CPU progress and every thread asleep: a deadlock or a lost wake-up. Never extend a deadline for it.
    case stuck(String)
    /// Runnable threads waiting for a CPU, or throttled, or stalled on I/O: slow, not stuck.
    case starved(String)
    /// Burning CPU without being starved: a dead loop, or real work that stopped answering.
    case busy(String)
    /// Stopped (SIGSTOP, a debugger).
    case stopped(String)
    /// The process is gone.
    case gone
    /// Not enough to tell.
    case unclear(String)

    /// `stuck`, `starved`, `busy`, `stopped`, `gone`, `unclear`.
    public var kind: String {
        switch self {
        case .stuck: "stuck"
        case .starved: "starved"
        case .busy: "busy"
        case .stopped: "stopped"
        case .gone: "gone"
        case .unclear: "unclear"
        }
    }

    /// The evidence sentence.
    public var reason: String {
        switch self {
        case let .stuck(r), let .starved(r), let .busy(r), let .stopped(r), let .unclear(r): r
        case .gone: "the process is gone"
        }
    }
}

/// Thresholds for `ProgressJudge`; the defaults were chosen so an idle service is never "starved" and
/// a loaded machine (load twice the cores) is.
public struct ProgressThresholds: Sendable, Equatable {
    /// Run-queue wait per wall second (summed over threads) at or above which the process is starved.
    public var runDelayShare: Double = 0.25
    /// CPU pressure (some, avg10, %) at or above which a process with a runnable thread is starved.
    public var cpuPressureAvg10: Double = 40
    /// I/O pressure (some, avg10, %) at or above which a process with a thread in D state is starved for I/O.
    public var ioPressureAvg10: Double = 40
    /// CPU used per wall second at or below which there is "no progress".
    public var idleCPUShare: Double = 0.02
    /// CPU used per wall second at or above which the process is "busy".
    public var busyCPUShare: Double = 0.5
    /// Share of all the machine's CPUs the process keeps busy by itself at or above which it is not
    /// starved but the cause of the contention (a dead loop on every core queues for a CPU too).
    public var saturationShare: Double = 0.75
    /// Share of a window a thread must have been runnable (on a CPU or queued for one, per schedstat) to
    /// count as never having slept in it: a spinning thread, where a healthy one blocks between bits of work.
    public var spinningRunnableShare: Double = 0.9
    /// CPU the process must have received in the window before its silence is no longer put down to
    /// starvation: answering a ping takes microseconds, so hundreds of milliseconds spent elsewhere mean
    /// the answering path is not progressing.
    public var spinningMinimumCPUMs: Double = 100
    public init() {}
}

/// Judges progress from two samples. Pure.
public enum ProgressJudge {
    /// The shortest window a verdict is drawn over: below it, scheduling granularity alone (a runnable thread
    /// that simply has not been picked yet, a tick not yet accounted) reads as starvation.
    public static let minimumWindowMs = 100

    public static func judge(before: ProcessSample, after: ProcessSample, thresholds t: ProgressThresholds = .init()) -> ProgressVerdict {
        if after.threads.isEmpty { return .gone }
        let wallNs = max(1, after.atNs - before.atNs)
        let wallMs = Double(wallNs) / 1e6
        let cpuNs = after.cpuNs >= before.cpuNs ? after.cpuNs - before.cpuNs : 0
        let cpuShare = Double(cpuNs) / Double(wallNs)
        let delayNs = after.runDelayNs >= before.runDelayNs ? after.runDelayNs - before.runDelayNs : 0
        let delayShare = Double(delayNs) / Double(wallNs)
        let counts = after.stateCounts
        let runnable = counts["R", default: 0]
        let blockedIO = counts["D", default: 0]
        let cpuText = "CPU +\(fmt(Double(cpuNs) / 1e6)) ms in \(fmt(wallMs)) ms"
        let states = after.stateSummary

        let stoppedThreads = counts["T", default: 0] + counts["t", default: 0]
        if stoppedThreads > 0 && runnable == 0 {
            return .stopped("\(stoppedThreads) of \(after.threads.count) threads stopped (state T); \(cpuText)")
        }
        let cpus = Double(max(1, after.cpuCount))
        if cpuShare >= t.saturationShare * cpus, after.throttledPeriods == before.throttledPeriods || after.throttledPeriods == nil {
            return .busy("\(cpuText): the process itself keeps \(fmt(cpuShare)) of \(Int(cpus)) CPUs busy (it is the contention, not its victim); threads: \(states)")
        }
        var starvedBecause: [String] = []
        if delayShare >= t.runDelayShare {
            starvedBecause.append("run-queue wait +\(fmt(Double(delayNs) / 1e6)) ms in \(fmt(wallMs)) ms")
        }
        if runnable > 0, let p = after.cpuPressure, p.someAvg10 >= t.cpuPressureAvg10 {
            starvedBecause.append("CPU pressure some avg10=\(fmt(p.someAvg10))%")
        }
        // Throttling is the cgroup's (every process in it, the supervisor's neighbours too): it starves this
        // process only if this process wanted a CPU — a thread runnable in either sample, time on a run
        // queue, or CPU used. Every thread asleep with no CPU is stuck, however throttled the group.
        let wantedCPU = runnable > 0 || before.stateCounts["R", default: 0] > 0 || delayShare >= t.runDelayShare
            || cpuShare > t.idleCPUShare
        if wantedCPU, let a = after.throttledPeriods, let b = before.throttledPeriods, a > b {
            starvedBecause.append("cgroup throttled \(a - b) period(s)")
        }
        // Runnable in both samples yet (next to) no CPU in between: the thread wants to run and is not
        // let — throttled by a cgroup quota, or outcompeted.
        let beforeByTid = Dictionary(before.threads.map { ($0.tid, $0) }, uniquingKeysWith: { a, _ in a })
        let waiting = after.threads.filter { t in
            guard t.state == "R", let b = beforeByTid[t.tid], b.state == "R", let now = t.onCpuNs, let then = b.onCpuNs else { return false }
            return Double(now &- then) < 0.05 * Double(wallNs)
        }
        if !waiting.isEmpty {
            // A quota throttles a group until its next period, so the throttling often began before the
            // window (nr_throttled counts it once, at its start; throttled time is added only at its end):
            // a runnable thread held off the CPU in a group with a quota is throttled by it.
            let quota = after.cpuQuota.map { "; the cgroup's CPU quota is \($0.text)" } ?? ""
            starvedBecause.append("\(waiting.count) runnable thread(s) got next to no CPU in \(fmt(wallMs)) ms\(quota)")
        }
        if blockedIO > 0, let p = after.ioPressure, p.someAvg10 >= t.ioPressureAvg10 {
            starvedBecause.append("\(blockedIO) thread(s) in D state, I/O pressure some avg10=\(fmt(p.someAvg10))%")
        }
        if !starvedBecause.isEmpty {
            return .starved(starvedBecause.joined(separator: "; ") + "; \(cpuText); threads: \(states)")
        }
        if cpuShare <= t.idleCPUShare && runnable == 0 && blockedIO == 0 {
            return .stuck("no CPU progress (\(cpuText)) and every thread asleep: \(states)")
        }
        if cpuShare >= t.busyCPUShare {
            return .busy("\(cpuText) without waiting for a CPU; threads: \(states)")
        }
        return .unclear("\(cpuText); threads: \(states)")
    }

    /// Threads that were runnable — running, or queued for a CPU — for nearly all of the window between the
    /// two samples and are still runnable: they never blocked, which is how a spinning thread looks under
    /// contention (a healthy thread sleeps between pieces of work, however starved). Needs schedstat in both
    /// samples; threads without it are left out.
    public static func alwaysRunnable(before: ProcessSample, after: ProcessSample, thresholds t: ProgressThresholds = .init()) -> [ThreadSample] {
        let wallNs = after.atNs - before.atNs
        guard wallNs > 0 else { return [] }
        let beforeByTid = Dictionary(before.threads.map { ($0.tid, $0) }, uniquingKeysWith: { a, _ in a })
        return after.threads.filter { thread in
            guard thread.state == "R", let b = beforeByTid[thread.tid],
                  let cpuNow = thread.onCpuNs, let cpuThen = b.onCpuNs, let delayNow = thread.runDelayNs, let delayThen = b.runDelayNs,
                  cpuNow >= cpuThen, delayNow >= delayThen else { return false }
            return Double((cpuNow - cpuThen) + (delayNow - delayThen)) >= t.spinningRunnableShare * Double(wallNs)
        }
    }

    private static func fmt(_ v: Double) -> String {
        let r = (v * 10).rounded() / 10
        return r == r.rounded() ? String(Int(r)) : String(r)
    }
}

/// System call numbers the judges look for.
public enum Syscalls {
    #if arch(x86_64)
    public static let futex = 202
    #elseif arch(arm64)
    public static let futex = 98
    #else
    public static let futex = -1
    #endif
}

/// Parsers for the /proc and cgroup files the sampler reads. Each returns nil on text it does not recognise.
public enum ProcParse {
    /// /proc/PID/task/TID/stat: "tid (comm) S ppid … utime stime …". comm may contain spaces and parentheses.
    public static func stat(_ text: String) -> (name: String, state: String, cpuTicks: UInt64)? {
        guard let open = text.firstIndex(of: "("), let close = text.lastIndex(of: ")"), open < close else { return nil }
        let name = String(text[text.index(after: open)..<close])
        let rest = text[text.index(after: close)...].split(separator: " ", omittingEmptySubsequences: true)
        // rest[0] = state (field 3), utime = field 14, stime = field 15 → rest[11], rest[12].
        guard rest.count > 12, let utime = UInt64(rest[11]), let stime = UInt64(rest[12]) else { return nil }
        return (name, String(rest[0]), utime + stime)
    }

    /// The parent pid (field 4) of /proc/PID/stat.
    public static func parentPID(_ text: String) -> Int32? {
        guard let close = text.lastIndex(of: ")") else { return nil }
        let rest = text[text.index(after: close)...].split(separator: " ", omittingEmptySubsequences: true)
        return rest.count > 1 ? Int32(rest[1]) : nil
    }

    /// /proc/PID/task/TID/schedstat: "on_cpu_ns run_delay_ns timeslices".
    public static func schedstat(_ text: String) -> (onCpuNs: UInt64, runDelayNs: UInt64)? {
        let f = text.split(whereSeparator: { $0 == " " || $0 == "\n" })
        guard f.count >= 2, let a = UInt64(f[0]), let b = UInt64(f[1]) else { return nil }
        return (a, b)
    }

    /// /proc/PID/task/TID/syscall: "202 0x7f… …" while blocked, "running", or "-1 …" when not in a call.
    public static func syscall(_ text: String) -> (number: Int, arg0: String?)? {
        let f = text.split(whereSeparator: { $0 == " " || $0 == "\n" })
        guard let first = f.first, let n = Int(first), n >= 0 else { return nil }
        return (n, f.count > 1 ? String(f[1]) : nil)
    }

    /// /proc/pressure/{cpu,io}: "some avg10=… avg60=… avg300=… total=…" and an optional "full …" line.
    public static func pressure(_ text: String) -> PressureSample? {
        var some: (Double, UInt64)?
        var full: (Double, UInt64)?
        for line in text.split(separator: "\n") {
            let f = line.split(separator: " ")
            guard let kind = f.first else { continue }
            var avg10: Double?
            var total: UInt64?
            for field in f.dropFirst() {
                let kv = field.split(separator: "=", maxSplits: 1)
                guard kv.count == 2 else { continue }
                if kv[0] == "avg10" { avg10 = Double(kv[1]) }
                if kv[0] == "total" { total = UInt64(kv[1]) }
            }
            guard let avg10, let total else { continue }
            if kind == "some" { some = (avg10, total) } else if kind == "full" { full = (avg10, total) }
        }
        guard let some else { return nil }
        return PressureSample(someAvg10: some.0, someTotalUs: some.1, fullAvg10: full?.0, fullTotalUs: full?.1)
    }

    /// A cgroup cpu.stat (v2: nr_throttled, throttled_usec; v1: nr_throttled, throttled_time in ns).
    public static func cgroupCPUStat(_ text: String) -> (periods: UInt64, throttledUs: UInt64)? {
        var periods: UInt64?
        var us: UInt64?
        for line in text.split(separator: "\n") {
            let f = line.split(separator: " ")
            guard f.count == 2, let v = UInt64(f[1]) else { continue }
            switch f[0] {
            case "nr_throttled": periods = v
            case "throttled_usec": us = v
            case "throttled_time": us = v / 1000
            default: break
            }
        }
        guard let periods else { return nil }
        return (periods, us ?? 0)
    }

    /// A cgroup's CPU limit: v2 `cpu.max` ("max 100000" or "20000 700000"), or v1's `cpu.cfs_quota_us`
    /// ("-1" or "20000") with `cpu.cfs_period_us`. Nil when unlimited or unreadable.
    public static func cpuQuota(v2 cpuMax: String) -> CPUQuota? {
        let f = cpuMax.split(whereSeparator: { $0 == " " || $0 == "\n" })
        guard f.count == 2, let q = UInt64(f[0]), let p = UInt64(f[1]), q > 0, p > 0 else { return nil }
        return CPUQuota(quotaUs: q, periodUs: p)
    }

    public static func cpuQuota(v1Quota quota: String, period: String) -> CPUQuota? {
        func word(_ s: String) -> Substring { s.split(whereSeparator: { $0 == " " || $0 == "\n" }).first ?? "" }
        guard let q = Int64(word(quota)), q > 0, let p = UInt64(word(period)), p > 0 else { return nil }
        return CPUQuota(quotaUs: UInt64(q), periodUs: p)
    }

    /// /proc/PID/cgroup → the path of the cgroup that limits CPU: the v2 line ("0::/path") or the v1 "cpu" controller's.
    public static func cpuCgroup(_ text: String) -> (version: Int, path: String)? {
        var v2: String?
        for line in text.split(separator: "\n") {
            let f = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
            guard f.count == 3 else { continue }
            if f[1].split(separator: ",").contains("cpu") { return (1, String(f[2])) }
            if f[0] == "0" && f[1].isEmpty { v2 = String(f[2]) }
        }
        return v2.map { (2, $0) }
    }
}
