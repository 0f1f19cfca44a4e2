import FlightRecorder
/// Why a service hung, in one line, from evidence gathered without the service's help: the lock words
/// and telemetry (flight recorder, process memory), what /proc said about its threads and progress,
/// and — once gdb has read the core — its stacks. Pure: the runtime gathers, this decides.

/// The classes of hang, in the order the rules try them. The raw values start the incident's
/// `diagnosis` string ("corrupted-lock-word: …").
public enum DiagnosisKind: String, Sendable, Codable, CaseIterable {
    case corruptedLockWord = "corrupted-lock-word"
    case leakedReadLock = "leaked-read-lock"
    case selfDeadlock = "self-deadlock"
    case slowHolder = "slow-holder"
    case deadLoop = "dead-loop"
    case stopped
    case exited
    case signaled
    case unknown
    /// Threads wait for each other in a cycle (pthread mutexes read from memory, Java monitors from the JVM):
    /// a proof of deadlock. Declared last so the older kinds keep their order; the rule runs first.
    case lockCycle = "lock-cycle"
}

/// A diagnosis: the kind, one sentence for people, and the evidence behind it.
public struct HangDiagnosis: Sendable, Equatable, Codable {
    public var kind: DiagnosisKind
    public var sentence: String
    public var evidence: [String]

    public init(kind: DiagnosisKind, sentence: String, evidence: [String] = []) {
        self.kind = kind; self.sentence = sentence; self.evidence = evidence
    }

    /// "kind: sentence", the incident's `diagnosis` field.
    public var line: String { "\(kind.rawValue): \(sentence)" }

    /// Reads back a stored `line` ("kind: sentence"); nil when it does not start with a kind.
    public init?(line: String, evidence: [String] = []) {
        guard let colon = line.range(of: ": "), let kind = DiagnosisKind(rawValue: String(line[..<colon.lowerBound])) else { return nil }
        self.init(kind: kind, sentence: String(line[colon.upperBound...]), evidence: evidence)
    }
}

/// One slow-lock event, as the flight recorder keeps them (newest last).
public struct LockEventRecord: Sendable, Equatable, Codable {
    /// "parked-read", "parked-write", "parked-write-for-readers", "write-timed-out", "long-hold",
    /// "write-while-holding-read", …
    public var kind: String
    public var tid: Int32
    public var unixMs: Int64
    /// The lock word right after the event, "0x…".
    public var wordAfter: String
    public var label: String
    /// CLOCK_MONOTONIC of the event (the flight recorder's), when known: orders it against a hold precisely.
    public var monotonicNs: UInt64?
    public init(kind: String, tid: Int32, unixMs: Int64, wordAfter: String, label: String, monotonicNs: UInt64? = nil) {
        self.kind = kind; self.tid = tid; self.unixMs = unixMs; self.wordAfter = wordAfter; self.label = label
        self.monotonicNs = monotonicNs
    }

    /// Whether the event happened after a hold that began at `sinceUnixMs` / `sinceMonotonicNs`: by the
    /// monotonic clock when both have it (the wall clock's milliseconds cannot order a park and a hand-off
    /// in the same millisecond), else strictly later by the wall clock.
    public func isAfter(holdSinceUnixMs: Int64?, monotonicNs since: UInt64?) -> Bool {
        if let mine = monotonicNs, let since { return mine > since }
        guard let ms = holdSinceUnixMs else { return false }
        return unixMs > ms
    }
}

/// Everything the rules look at.
public struct DiagnosisInput: Sendable {
    public var cause: IncidentCause
    public var locks: [LockState]
    public var progress: ProgressVerdict?
    /// /proc at the time of the hang.
    public var sample: ProcessSample?
    /// /proc at the start of the window `progress` was judged over (with `sample`, it gives CPU rates).
    public var baseline: ProcessSample?
    /// `thread apply all bt` from the core, when it is there.
    public var stacks: String?
    /// Wall clock of the detection, ms since the epoch (for "held for N s").
    public var nowUnixMs: Int64
    /// A live write hold longer than this is "slow".
    public var slowHoldMs: Int64
    /// The pthread mutex wait-for graph read from the hung process (empty when none was read).
    public var waitFor: [WaitForEdge] = []

    public init(cause: IncidentCause, locks: [LockState], progress: ProgressVerdict? = nil, sample: ProcessSample? = nil,
                stacks: String? = nil, nowUnixMs: Int64, slowHoldMs: Int64 = 1000) {
        self.cause = cause; self.locks = locks; self.progress = progress; self.sample = sample
        self.stacks = stacks; self.nowUnixMs = nowUnixMs; self.slowHoldMs = slowHoldMs
    }
}

public enum Diagnoser {
    /// Applies the rules in order; the first that explains the evidence wins.
    public static func diagnose(_ input: DiagnosisInput) -> HangDiagnosis {
        switch input.cause {
        case let .exited(code):
            return HangDiagnosis(kind: .exited, sentence: "the service exited on its own with code \(code)")
        case let .signaled(signal, core):
            return HangDiagnosis(kind: .signaled, sentence: "the service was killed by \(signalName(signal))"
                                 + (core ? "; the kernel dumped a core" : ""))
        case let .spawnFailed(message):
            return HangDiagnosis(kind: .exited, sentence: "the program could not be started: \(message)")
        case .missedHeartbeat, .startTimeout, .triggered, .stall:
            break
        }
        let threads = input.sample?.threads ?? []
        let stateText = input.sample.map { " (threads: \($0.stateSummary))" } ?? ""

        // Stopped: SIGSTOP or a debugger. Nothing else matters while it is frozen.
        if case let .stopped(reason)? = input.progress {
            return HangDiagnosis(kind: .stopped, sentence: "the process is stopped (SIGSTOP or a debugger): \(reason)")
        }

        // A cycle of threads each waiting for a mutex the next one owns, all asleep: proven, whatever else holds.
        let graph = WaitForGraph.diagnose(edges: input.waitFor, sample: input.sample, baseline: input.baseline)
        if let graph, graph.kind == .lockCycle { return graph }

        let words = input.locks.compactMap { lock in LockWord.parse(lock.word).map { (lock, $0) } }

        // A corrupted word: flags and a reader count no sequence of lock operations produces.
        if let (lock, word) = words.first(where: { LockWord.isCorrupt($0.1) }) {
            let readers = lock.readersWaiting ?? 0
            let writers = lock.writersWaiting ?? 0
            var evidence = ["lock '\(lock.name)' at \(lock.address): \(LockWord.describe(word)) (read from \(lock.source))"]
            let timeouts = lock.events?.filter { $0.kind == "write-timed-out" } ?? []
            // The recorder pins the timeout whose revert corrupted the word; later timeouts on the
            // corrupted lock only show it already broken.
            if let corrupting = timeouts.first(where: { LockWord.parse($0.wordAfter).map(LockWord.isCorrupt) ?? false }) {
                evidence.append("timed-out writer whose revert corrupted the word: '\(corrupting.label)' tid \(corrupting.tid), word after its revert \(corrupting.wordAfter)")
            } else if let timedOut = timeouts.last {
                evidence.append("last timed-out writer: '\(timedOut.label)' tid \(timedOut.tid), word after its revert \(timedOut.wordAfter)")
            }
            if let last = lock.lastHolder { evidence.append("last write holder: \(last)") }
            return HangDiagnosis(kind: .corruptedLockWord,
                                 sentence: "no thread in the critical section of '\(lock.name)'; \(readers) reader\(readers == 1 ? "" : "s") and \(writers) writer\(writers == 1 ? "" : "s") waiting; word \(hexUpper(word))",
                                 evidence: evidence)
        }

        // Self-deadlock: a thread asked for the write lock while holding the read lock (the recorder's
        // event), or the pending writer is itself one of the read holders it waits for.
        for (lock, word) in words {
            let readHolderTids = lock.readHolders.map { Set($0.map(\.tid)) }
            var suspect: (tid: Int32, label: String)?
            if let event = lock.events?.last(where: { $0.kind == "write-while-holding-read" }) {
                suspect = (event.tid, event.label)
            } else if lock.holderWaitingForReaders == true, let tid = lock.holderTid, readHolderTids?.contains(tid) == true {
                suspect = (tid, Self.label(of: lock.holder ?? ""))
            }
            guard let suspect else { continue }
            // Still stuck: WRITER taken and readers counted (a timed write that gave up left neither).
            guard word & LockWord.writer != 0, LockWord.readerCount(word) > 0 else { continue }
            guard threads.isEmpty || threads.contains(where: { $0.tid == suspect.tid }) else { continue }
            // It has let go of its read lock since: no longer waiting for itself.
            if let tids = readHolderTids, !tids.contains(suspect.tid), (lock.moreReadHolders ?? 0) == 0 { continue }
            var evidence = ["lock '\(lock.name)': \(lock.word) (\(LockWord.describe(word)))",
                            "the waiting writer is one of the readers it waits for, so the reader count never reaches 0"]
            if let thread = threads.first(where: { $0.tid == suspect.tid }) {
                evidence.append("thread \(suspect.tid) is '\(thread.name)', \(Self.activity(of: thread))")
            }
            if let held = lock.readHolders?.first(where: { $0.tid == suspect.tid }) {
                evidence.append("read holder \(held), for \(seconds(input.nowUnixMs - held.sinceUnixMs)) s")
            }
            let who = threads.first(where: { $0.tid == suspect.tid }).map { "thread '\($0.name)'" } ?? "it"
            let queued = lock.readersWaiting ?? 0
            return HangDiagnosis(kind: .selfDeadlock,
                                 sentence: "thread \(suspect.tid) waits for the write lock of '\(lock.name)' while holding its read lock ('\(suspect.label)'): \(who) waits for itself, and \(queued) reader\(queued == 1 ? "" : "s") queue behind it",
                                 evidence: evidence)
        }

        // Self-deadlock by re-entry: the thread that holds the write lock parked on the same lock again (a
        // read, or a second write, from inside its write section): it waits for itself.
        for (lock, word) in words {
            guard lock.holderWaitingForReaders != true, let tid = lock.holderTid, word & LockWord.writer != 0 else { continue }
            // Parked after it took the lock (a park before it, then the hand-off, is how it got the lock).
            guard let again = lock.events?.last(where: {
                ($0.kind == "parked-read" || $0.kind == "parked-write") && $0.tid == tid
                    && $0.isAfter(holdSinceUnixMs: lock.holderSinceUnixMs, monotonicNs: lock.holderSinceMonotonicNs)
            }) else { continue }
            // And still asleep on it (a futex wait), when /proc says.
            guard threads.isEmpty || threads.contains(where: { $0.tid == tid && $0.inFutexWait }) else { continue }
            let how = again.kind == "parked-read" ? "for reading" : "for writing"
            let who = threads.first(where: { $0.tid == tid }).map { "thread '\($0.name)'" } ?? "it"
            let label = Self.label(of: lock.holder ?? "")
            var evidence = ["lock '\(lock.name)': \(lock.word) (\(LockWord.describe(word)))",
                            "the write holder \(lock.holder ?? "tid \(tid)") parked on the same lock \(how) (event \(again.kind), tid \(again.tid))"]
            if let thread = threads.first(where: { $0.tid == tid }) { evidence.append("thread \(tid) is '\(thread.name)', \(Self.activity(of: thread))") }
            return HangDiagnosis(kind: .selfDeadlock,
                                 sentence: "thread \(tid) holds the write lock of '\(lock.name)' ('\(label)') and waits to take it again \(how): \(who) waits for itself; \(lock.readersWaiting ?? 0) reader(s) and \(lock.writersWaiting ?? 0) writer(s) waiting in all",
                                 evidence: evidence)
        }

        // Leaked read lock: readers counted, a writer waiting for them, and none of the threads holding
        // a read lock is running inside its read section (they are idle, parked or gone).
        let allAsleep = !threads.isEmpty && threads.allSatisfy { $0.state != "R" && $0.state != "D" }
        for (lock, word) in words {
            let readers = LockWord.readerCount(word)
            let writerWaits = lock.holderWaitingForReaders == true || word & LockWord.writerParked != 0 || (lock.writersWaiting ?? 0) > 0
            guard readers > 0, writerWaits else { continue }
            let writer = lock.holder ?? lock.events?.last(where: { $0.kind == "parked-write-for-readers" }).map { "'\($0.label)' tid \($0.tid)" } ?? "a writer"
            let waited = lock.holderSinceUnixMs.map { " for \(seconds(input.nowUnixMs - $0)) s" } ?? ""
            let queue = "writer \(writer) has waited\(waited) for them and \(lock.readersWaiting ?? 0) new reader(s) queue behind it"
            var evidence = ["lock '\(lock.name)': \(hexUpper(word)) (\(LockWord.describe(word)))"]
            let holders = lock.readHolders ?? []
            if holders.isEmpty {
                // No read-holder record (an older recorder, or every hold untracked): judge the whole process.
                guard allAsleep || input.progress?.kind == "stuck" else { continue }
                evidence.append("a read guard was taken and never released; the hang began at the next write")
                return HangDiagnosis(kind: .leakedReadLock,
                                     sentence: "'\(lock.name)' counts \(readers) reader\(readers == 1 ? "" : "s") but no thread is running inside it\(stateText); \(queue)",
                                     evidence: evidence)
            }
            let places = holders.map { holder in (holder, Self.whereIs(holder, lock: lock, threads: threads, progress: input.progress)) }
            guard places.allSatisfy({ !$0.1.running }) else { continue }
            let named = places.prefix(3).map { holder, place in
                "thread \(holder.tid)\(place.name.map { " ('\($0)')" } ?? "") \(place.activity), holding it for \(seconds(input.nowUnixMs - holder.sinceUnixMs)) s"
            }
            let unnamed = holders.count - named.count + (lock.moreReadHolders ?? 0)
            let holderText = named.joined(separator: "; ") + (unnamed > 0 ? "; and \(unnamed) more" : "")
            for (holder, place) in places {
                evidence.append("read holder \(holder): \(place.activity)")
            }
            evidence.append("a read guard was taken and never released; the hang began at the next write")
            return HangDiagnosis(kind: .leakedReadLock,
                                 sentence: "'\(lock.name)' counts \(readers) reader\(readers == 1 ? "" : "s") but no thread is running inside it: \(holderText); \(queue)",
                                 evidence: evidence)
        }

        // Slow holder: a live write holder that has held the lock for long.
        // (A writer still waiting for readers holds nothing yet.)
        if let (lock, since) = input.locks.filter({ $0.holderWaitingForReaders != true }).compactMap({ l in l.holderSinceUnixMs.map { (l, $0) } })
            .filter({ input.nowUnixMs - $0.1 >= input.slowHoldMs }).min(by: { $0.1 < $1.1 }) {
            return HangDiagnosis(kind: .slowHolder,
                                 sentence: "\(lock.holder ?? "a writer") has held the write lock of '\(lock.name)' for \(seconds(input.nowUnixMs - since)) s; \(lock.readersWaiting ?? 0) reader(s) and \(lock.writersWaiting ?? 0) writer(s) waiting",
                                 evidence: ["lock '\(lock.name)': \(lock.word)"])
        }

        // A chain of pthread mutex waits ending in a live owner.
        if let graph { return graph }

        // Dead loop: CPU time advancing and nobody waiting on a lock. Also when the process also waited
        // for a CPU ("starved"): spinning threads of its own compete for the cores, and a process that
        // still got half a CPU or more over the whole window was not kept from answering by starvation.
        let lockWaits = input.locks.reduce(0) { $0 + ($1.readersWaiting ?? 0) + ($1.writersWaiting ?? 0) }
        if lockWaits == 0 {
            let hot = threads.filter { $0.state == "R" }.map(\.name)
            let running = hot.isEmpty ? [] : ["running threads: " + hot.prefix(8).joined(separator: ", ")]
            if case let .busy(reason)? = input.progress {
                return HangDiagnosis(kind: .deadLoop, sentence: "CPU time keeps advancing with no lock waits: \(reason)", evidence: running)
            }
            if case let .starved(reason)? = input.progress, let share = Self.cpuShare(input), share >= ProgressThresholds().busyCPUShare {
                return HangDiagnosis(kind: .deadLoop,
                                     sentence: "CPU time keeps advancing with no lock waits, \(Double(Int(share * 100)) / 100) CPUs' worth while also waiting for a CPU: \(reason)",
                                     evidence: running)
            }
            // Starved, but not silent for want of CPU: threads that never slept through the silence (always
            // on a CPU or queued for one) while the process got hundreds of milliseconds of CPU, and still no
            // answer. Under heavy contention a spinning loop gets only its fair share of a core, far below
            // the share above; what gives it away is that it never blocks. (The kill decision was made from
            // the verdict alone; this only names what was killed.)
            if case let .starved(reason)? = input.progress, let spin = Self.spinning(input) {
                let names = spin.threads.prefix(8).map(\.name).joined(separator: ", ")
                return HangDiagnosis(kind: .deadLoop,
                                     sentence: "\(spin.threads.count) thread(s) never slept in \(Self.ms(spin.windowMs)) ms of silence (always running or queued for a CPU) and the process got \(Self.ms(spin.cpuMs)) ms of CPU without answering: not silent for want of CPU; it also waited for one: \(reason)",
                                     evidence: ["threads that never slept: " + names] + running)
            }
        }
        if case let .starved(reason)? = input.progress {
            return HangDiagnosis(kind: .unknown, sentence: "no lock explains the silence and the process was starved for CPU or I/O: \(reason)")
        }
        if let p = input.progress {
            return HangDiagnosis(kind: .unknown, sentence: "no lock explains the silence; the process was \(p.kind): \(p.reason)")
        }
        return HangDiagnosis(kind: .unknown, sentence: "no lock explains the silence" + stateText)
    }

    /// What the core's stacks add once gdb has read them (after the restart): evidence naming where the
    /// blocked threads wait (or, with none blocked, where the running ones are), and for a hang no rule
    /// explained, a sentence that points at them. The kind never changes: the rules decided it from the
    /// live process.
    public static func refine(_ d: HangDiagnosis, stacks: String) -> HangDiagnosis {
        let (groups, blocked) = IncidentSignature.threadGroups(stacks)
        guard !groups.isEmpty else { return d }
        var out = d
        let shown = groups.prefix(3).map { "\($0.threads) × \(demangleHint($0.frames))" }
        let line = "stacks: " + (blocked ? "blocked threads wait in " : "no thread is blocked; running threads are in ") + shown.joined(separator: "; ")
            + (groups.count > 3 ? "; and \(groups.count - 3) more" : "")
        out.evidence.removeAll { $0.hasPrefix("stacks: ") }
        out.evidence.append(line)
        if d.kind == .unknown, !d.sentence.contains("; the core shows ") {
            let total = groups.reduce(0) { $0 + $1.threads }
            out.sentence += "; the core shows \(total) thread(s) \(blocked ? "blocked" : "running"), most in \(demangleHint(groups[0].frames))"
        }
        return out
    }

    /// Shortens a frame chain for one line: Swift mangled names keep their last identifier-ish part.
    static func demangleHint(_ frames: String) -> String {
        frames.split(separator: " < ").map { frame -> String in
            let f = String(frame)
            guard f.hasPrefix("$s"), f.count > 40 else { return f }
            return String(f.prefix(40)) + "…"
        }.joined(separator: " < ")
    }

    /// CPU time per wall time of the process between `baseline` and `sample` (1.0 = one core busy).
    static func cpuShare(_ input: DiagnosisInput) -> Double? {
        guard let before = input.baseline, let after = input.sample, before.pid == after.pid, after.atNs > before.atNs,
              after.cpuNs >= before.cpuNs else { return nil }
        return Double(after.cpuNs - before.cpuNs) / Double(after.atNs - before.atNs)
    }

    /// The threads that spun through the judged window and the CPU the process got in it, when some
    /// thread never slept and that CPU is at least `spinningMinimumCPUMs`; nil otherwise (or without a
    /// baseline, or without schedstat).
    static func spinning(_ input: DiagnosisInput) -> (threads: [ThreadSample], cpuMs: Double, windowMs: Double)? {
        guard let before = input.baseline, let after = input.sample, before.pid == after.pid, after.atNs > before.atNs,
              after.cpuNs >= before.cpuNs else { return nil }
        let t = ProgressThresholds()
        let cpuMs = Double(after.cpuNs - before.cpuNs) / 1e6
        let threads = ProgressJudge.alwaysRunnable(before: before, after: after, thresholds: t)
        guard !threads.isEmpty, cpuMs >= t.spinningMinimumCPUMs else { return nil }
        return (threads, cpuMs, Double(after.atNs - before.atNs) / 1e6)
    }

    static func ms(_ v: Double) -> String { String((v * 10).rounded() / 10) }

    /// Where a read-holding thread is, per the /proc sample and the lock's events.
    struct HolderPlace {
        /// The thread's name, when it still exists.
        var name: String?
        /// e.g. "is idle in epoll_wait", "has exited".
        var activity: String
        /// Running or in uninterruptible I/O: plausibly still inside its read section.
        var running: Bool
    }

    static func whereIs(_ holder: LockReadHolderRecord, lock: LockState, threads: [ThreadSample], progress: ProgressVerdict?) -> HolderPlace {
        if holder.threadExited { return HolderPlace(activity: "has exited", running: false) }
        guard !threads.isEmpty else {
            // No sample: only a stuck process says the holder is not running.
            return HolderPlace(activity: "(no thread sample)", running: progress?.kind != "stuck")
        }
        guard let thread = threads.first(where: { $0.tid == holder.tid }) else {
            return HolderPlace(activity: "no longer exists", running: false)
        }
        if thread.state == "R" || thread.state == "D" {
            return HolderPlace(name: thread.name, activity: activity(of: thread), running: true)
        }
        if lock.events?.contains(where: { $0.kind == "parked-read" && $0.tid == holder.tid && $0.unixMs >= holder.sinceUnixMs }) == true {
            return HolderPlace(name: thread.name, activity: "is parked on another read of it, behind the writer", running: false)
        }
        return HolderPlace(name: thread.name, activity: activity(of: thread), running: false)
    }

    /// "is idle in epoll_wait", "is asleep in a futex wait", "is running", …
    static func activity(of thread: ThreadSample) -> String {
        switch thread.state {
        case "R": return "is running"
        case "D": return "is in uninterruptible sleep (I/O)"
        case "T", "t": return "is stopped"
        case "Z", "X": return "has exited"
        default: break
        }
        if thread.inFutexWait { return "is asleep in a futex wait" }
        if let call = thread.syscall, epollWaits.contains(call) { return "is idle in epoll_wait (back in its event loop)" }
        if let call = thread.syscall { return "is asleep (state \(thread.state), system call \(call))" }
        return "is asleep (state \(thread.state))"
    }

    #if arch(x86_64)
    static let epollWaits: Set<Int> = [232, 281, 441]   // epoll_wait, epoll_pwait, epoll_pwait2
    #elseif arch(arm64)
    static let epollWaits: Set<Int> = [22, 441]          // epoll_pwait, epoll_pwait2
    #else
    static let epollWaits: Set<Int> = []
    #endif

    /// "catalog.reload tid=77" → "catalog.reload" (the form the supervisor stores holders in).
    static func label(of holder: String) -> String {
        guard let range = holder.range(of: " tid=", options: .backwards) else { return holder }
        return String(holder[..<range.lowerBound])
    }

    static func hexUpper(_ w: UInt64) -> String {
        let digits = String(w, radix: 16, uppercase: true)
        return "0x" + String(repeating: "0", count: max(0, 16 - digits.count)) + digits
    }

    static func seconds(_ ms: Int64) -> String {
        let tenths = (Double(ms) / 100).rounded() / 10
        return String(tenths)
    }
}

/// A short stable hash so repeats of the same hang group together: the cause, the diagnosis kind, the
/// locks involved, and the top frames of the blocked threads (addresses and arguments stripped).
public enum IncidentSignature {
    public static func compute(causeKind: String, diagnosisKind: String, lockNames: [String], stacks: String?) -> String {
        var parts = [causeKind, diagnosisKind] + lockNames.sorted()
        if let stacks { parts += topFrames(stacks) }
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325   // FNV-1a 64
        for byte in parts.joined(separator: "\n").utf8 {
            hash ^= UInt64(byte)
            hash = hash &* 0x0000_0100_0000_01b3
        }
        let digits = String(hash, radix: 16)
        return String(repeating: "0", count: 16 - digits.count) + digits
    }

    /// The blocked threads of `thread apply all bt` output — those waiting to acquire a lock (`isBlockingWait`;
    /// an idle event loop or a worker waiting for work is not blocked) — each as its first three frames outside libc and the
    /// kernel-call wrappers; the distinct, sorted set. With no blocked thread (a dead loop), the threads
    /// running in user code (innermost frame not a wrapper) stand in; with none of those either, every thread.
    public static func topFrames(_ stacks: String) -> [String] {
        Array(Set(chosenThreads(stacks).threads)).sorted()
    }

    /// The same threads, grouped: each distinct top-frame chain with how many threads show it, most first;
    /// `blocked` says whether they are blocked threads (or, with none blocked, the running ones).
    public static func threadGroups(_ stacks: String) -> (groups: [(frames: String, threads: Int)], blocked: Bool) {
        let chosen = chosenThreads(stacks)
        let counts = Dictionary(grouping: chosen.threads, by: { $0 }).map { (frames: $0.key, threads: $0.value.count) }
        return (counts.sorted { ($0.threads, $1.frames) > ($1.threads, $0.frames) }, chosen.blocked)
    }

    static func chosenThreads(_ stacks: String) -> (threads: [String], blocked: Bool) {
        struct ThreadFrames { var top: [String] = []; var blocked = false; var innermostIsWrapper: Bool?; }
        var threads: [ThreadFrames] = []
        var current: ThreadFrames? = nil
        for line in stacks.split(separator: "\n", omittingEmptySubsequences: false) {
            if line.hasPrefix("Thread ") {
                if let c = current { threads.append(c) }
                current = ThreadFrames()
            } else if line.hasPrefix("#"), current != nil, let name = functionName(String(line)) {
                let wrapper = isWrapper(name)
                if current!.innermostIsWrapper == nil { current!.innermostIsWrapper = wrapper }
                if isBlockingWait(name) { current!.blocked = true }
                if !wrapper && current!.top.count < 3 { current!.top.append(name) }
            }
        }
        if let c = current { threads.append(c) }
        let withFrames = threads.filter { !$0.top.isEmpty }
        var chosen = withFrames.filter(\.blocked)
        let blocked = !chosen.isEmpty
        if chosen.isEmpty { chosen = withFrames.filter { $0.innermostIsWrapper == false } }
        if chosen.isEmpty { chosen = withFrames }
        return (chosen.map { $0.top.joined(separator: " < ") }, blocked)
    }

    /// A frame that means the thread waits to acquire a lock: a mutex or rwlock of libc, or a parking_lot-style
    /// parker. A bare futex or condition-variable wait is not enough: that is also how idle workers (a thread
    /// pool, an update queue) wait for work, and they are no part of a hang.
    static func isBlockingWait(_ name: String) -> Bool {
        let prefixes = ["__lll_lock", "pthread_mutex_lock", "__pthread_mutex_lock", "___pthread_mutex_lock",
                        "pthread_rwlock_rdlock", "pthread_rwlock_wrlock", "__pthread_rwlock_rdlock", "__pthread_rwlock_wrlock"]
        return prefixes.contains { name.hasPrefix($0) } || name.contains("Parker") || name.contains("ParkingLot")
    }

    /// "#3  0x000055d1 in $s11ParkingLock6RwLockC4read… (self=…) at …" → "$s11ParkingLock6RwLockC4read…".
    static func functionName(_ frame: String) -> String? {
        var rest = Substring(frame)
        if let inRange = rest.range(of: " in ") { rest = rest[inRange.upperBound...] } else {
            // "#0  futex_wait (…) at …": no address when the frame is the innermost with source.
            rest = rest.drop { $0 != " " }.drop { $0 == " " }
        }
        let name = rest.prefix { $0 != " " && $0 != "(" }
        return name.isEmpty || name == "??" ? nil : String(name)
    }

    static func isWrapper(_ name: String) -> Bool {
        let wrappers = ["futex", "__futex", "syscall", "pthread_cond", "___pthread_cond", "__pthread_cond", "__GI_", "epoll_wait",
                        "pthread_mutex_lock", "__pthread_mutex_lock", "___pthread_mutex_lock", "pthread_rwlock", "__pthread_rwlock",
                        "__lll_lock", "nanosleep", "clock_nanosleep", "__internal_syscall", "start_thread", "clone"]
        return wrappers.contains { name.hasPrefix($0) }
    }
}
