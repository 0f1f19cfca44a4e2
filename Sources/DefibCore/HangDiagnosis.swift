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
    public init(kind: String, tid: Int32, unixMs: Int64, wordAfter: String, label: String) {
        self.kind = kind; self.tid = tid; self.unixMs = unixMs; self.wordAfter = wordAfter; self.label = label
    }
}

/// Everything the rules look at.
public struct DiagnosisInput: Sendable {
    public var cause: IncidentCause
    public var locks: [LockState]
    public var progress: ProgressVerdict?
    /// /proc at the time of the hang.
    public var sample: ProcessSample?
    /// `thread apply all bt` from the core, when it is there.
    public var stacks: String?
    /// Wall clock of the detection, ms since the epoch (for "held for N s").
    public var nowUnixMs: Int64
    /// A live write hold longer than this is "slow".
    public var slowHoldMs: Int64

    public init(cause: IncidentCause, locks: [LockState], progress: ProgressVerdict? = nil, sample: ProcessSample? = nil,
                stacks: String? = nil, nowUnixMs: Int64, slowHoldMs: Int64 = 1000) {
        self.cause = cause; self.locks = locks; self.progress = progress; self.sample = sample
        self.stacks = stacks; self.nowUnixMs = nowUnixMs; self.slowHoldMs = slowHoldMs
    }
}

/// The lock word's bits (parking_lot's RwLock).
public enum LockWord {
    public static let parked: UInt64 = 0b0001
    public static let writerParked: UInt64 = 0b0010
    public static let upgradable: UInt64 = 0b0100
    public static let writer: UInt64 = 0b1000
    public static let oneReader: UInt64 = 0b10000

    public static func readers(_ w: UInt64) -> UInt64 { w >> 4 }

    /// "0x…" → the word; nil for "unknown" or garbage.
    public static func parse(_ text: String) -> UInt64? {
        let digits = text.hasPrefix("0x") || text.hasPrefix("0X") ? String(text.dropFirst(2)) : text
        return UInt64(digits, radix: 16)
    }

    /// "WRITER|WRITER_PARKED, 1 reader".
    public static func describe(_ w: UInt64) -> String {
        var flags: [String] = []
        if w & writer != 0 { flags.append("WRITER") }
        if w & upgradable != 0 { flags.append("UPGRADABLE") }
        if w & writerParked != 0 { flags.append("WRITER_PARKED") }
        if w & parked != 0 { flags.append("PARKED") }
        let r = readers(w)
        let readerText = r >= (1 << 59) ? "reader count \(r) (saturated)" : "\(r) reader\(r == 1 ? "" : "s")"
        return (flags.isEmpty ? "no flags" : flags.joined(separator: "|")) + ", " + readerText
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
        case .missedHeartbeat, .startTimeout, .triggered:
            break
        }
        let threads = input.sample?.threads ?? []
        let stateText = input.sample.map { " (threads: \($0.stateSummary))" } ?? ""

        // Stopped: SIGSTOP or a debugger. Nothing else matters while it is frozen.
        if case let .stopped(reason)? = input.progress {
            return HangDiagnosis(kind: .stopped, sentence: "the process is stopped (SIGSTOP or a debugger): \(reason)")
        }

        let words = input.locks.compactMap { lock in LockWord.parse(lock.word).map { (lock, $0) } }

        // A corrupted word: flags and a reader count no sequence of lock operations produces.
        if let (lock, word) = words.first(where: { Diagnosis.isCorrupted($0.1) }) {
            let readers = lock.readersWaiting ?? 0
            let writers = lock.writersWaiting ?? 0
            var evidence = ["lock '\(lock.name)' at \(lock.address): \(LockWord.describe(word)) (read from \(lock.source))"]
            if let timedOut = lock.events?.last(where: { $0.kind == "write-timed-out" }) {
                evidence.append("last timed-out writer: '\(timedOut.label)' tid \(timedOut.tid), word after its revert \(timedOut.wordAfter)")
            }
            if let last = lock.lastHolder { evidence.append("last write holder: \(last)") }
            return HangDiagnosis(kind: .corruptedLockWord,
                                 sentence: "no thread in the critical section of '\(lock.name)'; \(readers) reader\(readers == 1 ? "" : "s") and \(writers) writer\(writers == 1 ? "" : "s") waiting; word \(hexUpper(word))",
                                 evidence: evidence)
        }

        // Self-deadlock: a thread asked for the write lock while holding the read lock.
        for lock in input.locks {
            guard let event = lock.events?.last(where: { $0.kind == "write-while-holding-read" }) else { continue }
            let stillThere = threads.isEmpty || threads.contains { $0.tid == event.tid }
            guard stillThere else { continue }
            return HangDiagnosis(kind: .selfDeadlock,
                                 sentence: "thread \(event.tid) waits for the write lock of '\(lock.name)' while holding its read lock ('\(event.label)')",
                                 evidence: ["lock '\(lock.name)': \(lock.word)" + (LockWord.parse(lock.word).map { " (\(LockWord.describe($0)))" } ?? ""),
                                            "the waiting writer is one of the readers it waits for, so the reader count never reaches 0"])
        }

        // Leaked read lock: readers counted, a writer parked waiting for them, and no thread running.
        let allAsleep = !threads.isEmpty && threads.allSatisfy { $0.state != "R" && $0.state != "D" }
        for (lock, word) in words {
            let readers = LockWord.readers(word)
            guard readers > 0, word & LockWord.writerParked != 0 || (lock.writersWaiting ?? 0) > 0 else { continue }
            guard allAsleep || input.progress?.kind == "stuck" else { continue }
            let writer = lock.holder ?? lock.events?.last(where: { $0.kind == "parked-write-for-readers" }).map { "'\($0.label)' tid \($0.tid)" } ?? "a writer"
            let waited = lock.holderSinceUnixMs.map { " for \(seconds(input.nowUnixMs - $0)) s" } ?? ""
            return HangDiagnosis(kind: .leakedReadLock,
                                 sentence: "'\(lock.name)' counts \(readers) reader\(readers == 1 ? "" : "s") but no thread is running inside it\(stateText); writer \(writer) has waited\(waited) for them and \(lock.readersWaiting ?? 0) new reader(s) queue behind it",
                                 evidence: ["lock '\(lock.name)': \(hexUpper(word)) (\(LockWord.describe(word)))",
                                            "a read guard was taken and never released; the hang began at the next write"])
        }

        // Slow holder: a live write holder that has held the lock for long.
        if let (lock, since) = input.locks.compactMap({ l in l.holderSinceUnixMs.map { (l, $0) } })
            .filter({ input.nowUnixMs - $0.1 >= input.slowHoldMs }).min(by: { $0.1 < $1.1 }) {
            return HangDiagnosis(kind: .slowHolder,
                                 sentence: "\(lock.holder ?? "a writer") has held the write lock of '\(lock.name)' for \(seconds(input.nowUnixMs - since)) s; \(lock.readersWaiting ?? 0) reader(s) and \(lock.writersWaiting ?? 0) writer(s) waiting",
                                 evidence: ["lock '\(lock.name)': \(lock.word)"])
        }

        // Dead loop: CPU time advancing and nobody waiting on a lock.
        let lockWaits = input.locks.reduce(0) { $0 + ($1.readersWaiting ?? 0) + ($1.writersWaiting ?? 0) }
        if case let .busy(reason)? = input.progress, lockWaits == 0 {
            let hot = threads.filter { $0.state == "R" }.map(\.name)
            return HangDiagnosis(kind: .deadLoop,
                                 sentence: "CPU time keeps advancing with no lock waits: \(reason)",
                                 evidence: hot.isEmpty ? [] : ["running threads: " + hot.prefix(8).joined(separator: ", ")])
        }
        if case let .starved(reason)? = input.progress {
            return HangDiagnosis(kind: .unknown, sentence: "no lock explains the silence and the process was starved for CPU or I/O: \(reason)")
        }
        if let p = input.progress {
            return HangDiagnosis(kind: .unknown, sentence: "no lock explains the silence; the process was \(p.kind): \(p.reason)")
        }
        return HangDiagnosis(kind: .unknown, sentence: "no lock explains the silence" + stateText)
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

    /// For each thread in `thread apply all bt` output, its first three frames outside libc/libpthread
    /// and the kernel-call wrappers, as function names; the distinct, sorted set.
    public static func topFrames(_ stacks: String) -> [String] {
        var threads: [[String]] = []
        var current: [String]? = nil
        for line in stacks.split(separator: "\n", omittingEmptySubsequences: false) {
            if line.hasPrefix("Thread ") {
                if let c = current { threads.append(c) }
                current = []
            } else if line.hasPrefix("#"), current != nil, let name = functionName(String(line)) {
                if !isWrapper(name) && current!.count < 3 { current!.append(name) }
            }
        }
        if let c = current { threads.append(c) }
        return Array(Set(threads.filter { !$0.isEmpty }.map { $0.joined(separator: " < ") })).sorted()
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
                        "__lll_lock", "nanosleep", "clock_nanosleep", "__internal_syscall", "start_thread", "clone"]
        return wrappers.contains { name.hasPrefix($0) }
    }
}
