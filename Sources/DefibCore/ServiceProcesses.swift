/// Multi-process services (nginx, postgres, gunicorn: a master and workers): which of an instance's processes
/// are stuck when its heartbeat is silent, which to capture first within the capture budget, and how they are
/// listed in the incident. Pure: `DefibPOSIX.ServiceProcesses` lists and samples the processes.

/// What two samples say about one process of an instance.
public enum ProcessCondition: String, Sendable, Codable, CaseIterable {
    /// No CPU progress, every thread asleep, at least one not waiting for events (a lock, a pipe, a disk).
    case stuck
    /// Stopped (SIGSTOP, a debugger).
    case stopped
    /// Burning CPU without being starved (a dead loop, or work that no longer answers).
    case busy
    /// No CPU progress with every thread waiting for events (epoll, poll, accept, a signal, a child): how an
    /// idle worker looks, not a stuck one.
    case idle
    /// Runnable but not let to run (CPU contention, throttling, I/O pressure).
    case starved
    /// Gone between the samples.
    case gone
    /// Not enough to tell.
    case unclear

    /// Whether the process is a candidate for a core: it makes no progress (stuck, stopped) or spins (busy).
    public var isStuck: Bool { self == .stuck || self == .stopped || self == .busy }
}

/// One process of an instance, judged from two samples.
public struct ProcessJudgement: Sendable, Equatable {
    public var pid: Int32
    /// The process's `comm` (its main thread's name).
    public var comm: String
    /// The main thread's state letter in the second sample (R, S, D, T, t, Z …; "?" when gone).
    public var state: String
    /// The instance's main process (defib's child).
    public var isMain: Bool
    public var condition: ProcessCondition
    /// The evidence sentence (ProgressJudge's, or why it is idle).
    public var reason: String
    /// CPU used between the samples, ns.
    public var cpuNs: UInt64
    /// Threads asleep in a futex wait in the second sample.
    public var futexWaits: Int

    public init(pid: Int32, comm: String, state: String, isMain: Bool, condition: ProcessCondition, reason: String,
                cpuNs: UInt64 = 0, futexWaits: Int = 0) {
        self.pid = pid; self.comm = comm; self.state = state; self.isMain = isMain; self.condition = condition
        self.reason = reason; self.cpuNs = cpuNs; self.futexWaits = futexWaits
    }
}

/// A process of the instance as the incident lists it (`processes`).
public struct ServiceProcessRecord: Sendable, Equatable, Codable {
    public var pid: Int32
    public var comm: String
    /// The main thread's state letter when the hang was declared.
    public var state: String
    /// The core written of it, nil when none was (not stuck, or past the capture budget).
    public var corePath: String?
    /// `ProcessCondition` raw value: stuck, stopped, busy, idle, starved, gone, unclear.
    public var diagnosis: String
    /// Why, in one sentence.
    public var evidence: String
    /// The instance's main process.
    public var main: Bool

    public init(pid: Int32, comm: String, state: String, corePath: String?, diagnosis: String, evidence: String, main: Bool) {
        self.pid = pid; self.comm = comm; self.state = state; self.corePath = corePath; self.diagnosis = diagnosis
        self.evidence = evidence; self.main = main
    }
}

/// Judges every process of an instance and orders the stuck ones for capture. Pure.
public enum ServiceProgressJudge {
    /// Every process in `after` (and those of `before` that are gone), main first, then by pid. A process that
    /// appeared between the samples is `unclear` (one sample says nothing about progress).
    public static func judge(before: [ProcessSample], after: [ProcessSample], mainPID: Int32,
                             thresholds: ProgressThresholds = .init()) -> [ProcessJudgement] {
        let earlier = Dictionary(before.map { ($0.pid, $0) }, uniquingKeysWith: { a, _ in a })
        var out: [ProcessJudgement] = []
        var seen: Set<Int32> = []
        for sample in after where seen.insert(sample.pid).inserted {
            let leader = sample.threads.first { $0.tid == sample.pid } ?? sample.threads.first
            let comm = leader?.name ?? "?"
            let state = leader?.state ?? "?"
            let futex = sample.threads.filter(\.inFutexWait).count
            guard let b = earlier[sample.pid] else {
                out.append(ProcessJudgement(pid: sample.pid, comm: comm, state: state, isMain: sample.pid == mainPID,
                                            condition: sample.threads.isEmpty ? .gone : .unclear,
                                            reason: sample.threads.isEmpty ? "the process is gone" : "appeared between the samples",
                                            futexWaits: futex))
                continue
            }
            let cpu = sample.cpuNs >= b.cpuNs ? sample.cpuNs - b.cpuNs : 0
            let verdict = ProgressJudge.judge(before: b, after: sample, thresholds: thresholds)
            var condition: ProcessCondition
            var reason = verdict.reason
            switch verdict {
            case .stuck:
                if let waits = eventWaits(sample) {
                    condition = .idle
                    reason = "no CPU progress and every thread waits for events (\(waits)): idle, not stuck"
                } else {
                    condition = .stuck
                }
            case .stopped: condition = .stopped
            case .busy: condition = .busy
            case .starved: condition = .starved
            case .gone: condition = .gone
            case .unclear: condition = .unclear
            }
            out.append(ProcessJudgement(pid: sample.pid, comm: comm, state: state, isMain: sample.pid == mainPID,
                                        condition: condition, reason: reason, cpuNs: cpu, futexWaits: futex))
        }
        for b in before where !seen.contains(b.pid) {
            let leader = b.threads.first { $0.tid == b.pid } ?? b.threads.first
            out.append(ProcessJudgement(pid: b.pid, comm: leader?.name ?? "?", state: "?", isMain: b.pid == mainPID,
                                        condition: .gone, reason: "the process is gone"))
        }
        return out.sorted { ($0.isMain ? 0 : 1, $0.pid) < ($1.isMain ? 0 : 1, $1.pid) }
    }

    /// The processes to capture, in order: the main process first (its core is the incident's), then the stuck
    /// ones most-stuck first — deadlocked (asleep, not waiting for events; more threads in futex waits first),
    /// then stopped, then busy (most CPU first) — at most `maxCores` in all when given. The runtime captures
    /// down the list while the capture budget lasts.
    public static func captureOrder(_ judgements: [ProcessJudgement], maxCores: Int? = nil) -> [ProcessJudgement] {
        let main = judgements.filter(\.isMain)
        let rank: [ProcessCondition: Int] = [.stuck: 0, .stopped: 1, .busy: 2]
        let stuck = judgements.filter { !$0.isMain && $0.condition.isStuck }.sorted { a, b in
            let ra = rank[a.condition]!, rb = rank[b.condition]!
            if ra != rb { return ra < rb }
            switch a.condition {
            case .busy: if a.cpuNs != b.cpuNs { return a.cpuNs > b.cpuNs }
            default:
                if a.futexWaits != b.futexWaits { return a.futexWaits > b.futexWaits }
                if a.cpuNs != b.cpuNs { return a.cpuNs < b.cpuNs }
            }
            return a.pid < b.pid
        }
        let ordered = main + stuck
        return maxCores.map { Array(ordered.prefix(max(0, $0))) } ?? ordered
    }

    /// The process a stall's evidence is taken of: the main one, unless it makes progress or waits for events
    /// (an idle master, a healthy parent) while another process of the instance is stuck, stopped or busy — then
    /// that one, most stuck first (`captureOrder`): the stacks of an nginx master in sigsuspend say nothing about
    /// its stalled worker. Nil when nothing was judged.
    public static func stallTarget(_ judgements: [ProcessJudgement]) -> ProcessJudgement? {
        guard let main = judgements.first(where: \.isMain) else { return judgements.first }
        if main.condition.isStuck { return main }
        return captureOrder(judgements).first { !$0.isMain } ?? main
    }

    /// The incident's `processes`: every judged process, with the core written of it when there is one.
    public static func records(_ judgements: [ProcessJudgement], corePaths: [Int32: String] = [:]) -> [ServiceProcessRecord] {
        judgements.map {
            ServiceProcessRecord(pid: $0.pid, comm: $0.comm, state: $0.state, corePath: corePaths[$0.pid],
                                 diagnosis: $0.condition.rawValue, evidence: $0.reason, main: $0.isMain)
        }
    }

    /// The verdict on the instance as a whole, from its main process's verdict and every process's judgement.
    /// The main process decides when it is itself the problem (stopped, busy, or asleep outside event waits).
    /// When it is merely idle — a master waiting for its workers — the workers decide, most decisive first:
    /// stopped, stuck, busy; then a starved process anywhere means starved (the deadline is extended, as for a
    /// single process). A single-process instance keeps its main verdict.
    public static func instanceVerdict(main: ProgressVerdict, _ judgements: [ProcessJudgement]) -> ProgressVerdict {
        guard judgements.count > 1 else { return main }
        switch main {
        case .stopped, .busy: return main
        case .stuck, .starved, .gone, .unclear: break
        }
        let mainJudgement = judgements.first(where: \.isMain)
        if mainJudgement?.condition == .stuck { return main }
        let others = judgements.filter { !$0.isMain }
        let mainState = mainJudgement.map { "; main \($0.pid) (\($0.comm)) \($0.condition.rawValue)" } ?? ""
        func listed(_ condition: ProcessCondition) -> [ProcessJudgement] { others.filter { $0.condition == condition } }
        func names(_ list: [ProcessJudgement]) -> String {
            (list.count == 1 ? "process " : "processes ") + list.map { "\($0.pid) (\($0.comm))" }.joined(separator: ", ")
        }
        let stopped = listed(.stopped), stuck = listed(.stuck), busy = listed(.busy), starved = listed(.starved)
        if !stopped.isEmpty { return .stopped("\(names(stopped)) of the instance stopped: \(stopped[0].reason)\(mainState)") }
        if !stuck.isEmpty { return .stuck("\(names(stuck)) of the instance stuck: \(stuck[0].reason)\(mainState)") }
        if !busy.isEmpty { return .busy("\(names(busy)) of the instance busy: \(busy[0].reason)\(mainState)") }
        if case .starved = main { return main }
        if !starved.isEmpty { return .starved("\(names(starved)) of the instance starved: \(starved[0].reason)\(mainState)") }
        return main
    }

    /// One line for the incident's notes: "3 processes: main 1200 nginx idle; 1201 nginx stopped; 1202 nginx stopped".
    public static func summary(_ judgements: [ProcessJudgement]) -> String {
        "\(judgements.count) process\(judgements.count == 1 ? "" : "es"): "
            + judgements.map { "\($0.isMain ? "main " : "")\($0.pid) \($0.comm) \($0.condition.rawValue)" }.joined(separator: "; ")
    }

    /// When every thread of `sample` is asleep in a call that waits for events, those calls counted
    /// ("epoll_wait ×2, rt_sigsuspend"); nil when any thread is elsewhere (or its call is unknown).
    static func eventWaits(_ sample: ProcessSample) -> String? {
        guard !sample.threads.isEmpty else { return nil }
        var counts: [String: Int] = [:]
        for t in sample.threads {
            guard t.state == "S", let call = t.syscall, let name = Syscalls.eventWaits[call] else { return nil }
            counts[name, default: 0] += 1
        }
        return counts.sorted { $0.key < $1.key }.map { $0.value > 1 ? "\($0.key) ×\($0.value)" : $0.key }.joined(separator: ", ")
    }
}

extension Syscalls {
    /// Calls a thread sleeps in while it waits for something to happen rather than for a lock or a resource:
    /// an idle server's threads sit in these.
    public static let eventWaits: [Int: String] = {
        #if arch(x86_64)
        return [7: "poll", 23: "select", 34: "pause", 35: "nanosleep", 43: "accept", 61: "wait4", 128: "rt_sigtimedwait",
                130: "rt_sigsuspend", 230: "clock_nanosleep", 232: "epoll_wait", 247: "waitid", 270: "pselect6", 271: "ppoll",
                281: "epoll_pwait", 288: "accept4", 441: "epoll_pwait2"]
        #elseif arch(arm64)
        return [22: "epoll_pwait", 72: "pselect6", 73: "ppoll", 95: "waitid", 101: "nanosleep", 115: "clock_nanosleep",
                133: "rt_sigsuspend", 137: "rt_sigtimedwait", 202: "accept", 242: "accept4", 260: "wait4", 441: "epoll_pwait2"]
        #else
        return [:]
        #endif
    }()
}
