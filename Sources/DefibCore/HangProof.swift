import FlightRecorder

/// Evidence that a hang can never end by itself: a deadlock proven, not guessed. A silence past the deadline
/// is a guess (a slow holder, a dead loop and a starved process are silent too); the evidence below is not,
/// so the machine may declare the hang at the miss it was read, without waiting for the deadline.
public struct HangProof: Sendable, Equatable {
    /// What the proof is.
    public enum Kind: String, Sendable, Equatable {
        /// A parking_lot lock word no valid sequence of operations produces (the `try_write_for` revert
        /// underflow), unchanged over two reads while no thread of the process ran.
        case corruptedLockWord = "corrupted-lock-word"
        /// Threads each asleep on a pthread mutex the next one owns, in a cycle, none of them running.
        case lockCycle = "lock-cycle"
    }

    public var kind: Kind
    /// One sentence for the incident: what was read, twice, and why it cannot resolve.
    public var sentence: String

    public init(kind: Kind, sentence: String) { self.kind = kind; self.sentence = sentence }

    /// "kind: sentence".
    public var line: String { "\(kind.rawValue): \(sentence)" }
}

/// What a proof is read from, taken at a miss without touching the process: a /proc sample, the lock words,
/// a pause, the lock words again and the wait-for graph (itself read twice), then a second /proc sample. The
/// two samples bracket every read, so "no thread ran between the samples" covers the reads too.
public struct ProofReading: Sendable, Equatable {
    /// /proc before the first read and after the last.
    public var before: ProcessSample
    public var after: ProcessSample
    /// The lock words at the first and at the second read (address → word; a word that could not be read is
    /// left out).
    public var firstWords: [UInt64: UInt64]
    public var secondWords: [UInt64: UInt64]
    /// The locks' names, by address (the flight recorder's, or the ones the healthy service reported).
    public var lockNames: [UInt64: String]
    /// The wait-for edges seen in both of the reader's reads.
    public var waitFor: [WaitForEdge]

    public init(before: ProcessSample, after: ProcessSample, firstWords: [UInt64: UInt64] = [:], secondWords: [UInt64: UInt64] = [:],
                lockNames: [UInt64: String] = [:], waitFor: [WaitForEdge] = []) {
        self.before = before; self.after = after; self.firstWords = firstWords; self.secondWords = secondWords
        self.lockNames = lockNames; self.waitFor = waitFor
    }
}

/// The rules that turn a `ProofReading` into a proof, or say why it is none. Each rule asks for the state to
/// hold at two instants with nothing running in between, because a single read can catch a valid state in
/// passing: a word between two atomic steps of a lock operation, a thread between its futex wake and its
/// run, an edge of a lock that is being handed over.
///
/// - **Corrupted lock word**: a word `LockWord.isCorrupt` holds (WRITER and WRITER_PARKED with a reader count
///   near 2^60: no sequence of lock and unlock operations produces it), the same word at both reads, and the
///   whole process frozen: the same threads in both samples, every one asleep (`S`) in both, and not one
///   nanosecond of CPU (schedstat) between them.
/// - **Lock cycle**: the wait-for graph's cycle, every member asleep in the futex wait of a mutex lock in both
///   samples with no CPU time between them, none of them waiting with a timeout (a timed lock gives up and
///   breaks the cycle).
///
/// Not proof, and so left to the deadline and the progress judgement: a leaked read lock (a valid word: the
/// leaking thread might still release it), a slow holder, a dead loop, a thread in D state or stopped, a word
/// that changed between the reads, a cycle with a running or timed member, and anything read from a process
/// whose CPU time cannot be measured to the nanosecond.
public enum ProofRule {
    /// The verdict on one reading.
    public enum Finding: Sendable, Equatable {
        case proven(HangProof)
        /// Why the reading proves nothing (for the incident's notes).
        case notProven(String)
    }

    /// The shortest gap between the two samples that counts: long enough for a thread woken at the first
    /// to have been scheduled by the second on a loaded machine.
    public static let minimumGapMs = 10

    public static func evaluate(_ r: ProofReading) -> Finding {
        guard r.before.pid == r.after.pid, !r.before.threads.isEmpty, !r.after.threads.isEmpty else {
            return .notProven("no threads sampled")
        }
        let gapMs = Double(r.after.atNs - r.before.atNs) / 1e6
        guard gapMs >= Double(minimumGapMs) else {
            return .notProven("the two samples are \(formatted(gapMs)) ms apart, less than \(minimumGapMs) ms")
        }
        let before = Dictionary(r.before.threads.map { ($0.tid, $0) }, uniquingKeysWith: { a, _ in a })
        let after = Dictionary(r.after.threads.map { ($0.tid, $0) }, uniquingKeysWith: { a, _ in a })

        // A thread that used CPU between the samples, or is not asleep at one of them (nil: it is frozen).
        func moved(_ tid: Int32) -> String? {
            guard let a = before[tid], let b = after[tid] else { return "thread \(tid) appeared or ended between the samples" }
            guard a.state == "S", b.state == "S" else { return "thread \(tid) (\(b.name)) is \(b.state == "S" ? a.state : b.state), not asleep" }
            guard let x = a.onCpuNs, let y = b.onCpuNs else { return "thread \(tid) has no schedstat: its CPU time cannot be measured exactly" }
            guard y == x else { return "thread \(tid) (\(b.name)) ran \(y > x ? y - x : 0) ns between the samples" }
            return nil
        }

        var reasons: [String] = []

        // A lock cycle: its members frozen (the rest of the process may run; it cannot free them).
        let cycle = WaitForGraph.cycle(r.waitFor)
        if !cycle.isEmpty {
            let members = cycle.map(\.waiterTid)
            if let timed = cycle.first(where: { $0.timed == true }) {
                reasons.append("lock cycle: thread \(timed.waiterTid) waits with a timeout")
            } else if let problem = members.lazy.compactMap(moved).first {
                reasons.append("lock cycle: \(problem)")
            } else if let awake = members.first(where: { !(before[$0]!.inFutexWait && after[$0]!.inFutexWait) }) {
                reasons.append("lock cycle: thread \(awake) is not in a futex wait")
            } else {
                let chain = cycle.map { "\($0.waiterTid) (\($0.waiterName)) waits for \($0.mutex) held by \($0.ownerTid)" }.joined(separator: ", ")
                return .proven(HangProof(kind: .lockCycle, sentence: "\(chain); all \(members.count) asleep in a futex wait, no CPU time in "
                                         + "\(formatted(gapMs)) ms, the same in two reads"))
            }
        }

        // A corrupted word: the whole process frozen.
        let corrupt = r.firstWords.filter { LockWord.isCorrupt($0.value) }.sorted { $0.key < $1.key }
        if let (address, word) = corrupt.first {
            let name = r.lockNames[address].map { "'\($0)'" } ?? LockWord.hex(address)
            let sameThreads = Set(before.keys) == Set(after.keys)
            if r.secondWords[address] != word {
                reasons.append("lock \(name): word \(LockWord.hex(word)) changed to \(r.secondWords[address].map(LockWord.hex) ?? "unreadable") at the second read")
            } else if !sameThreads {
                reasons.append("lock \(name): threads appeared or ended between the samples")
            } else if let problem = after.keys.sorted().lazy.compactMap(moved).first {
                reasons.append("lock \(name) corrupted, but \(problem)")
            } else {
                let futex = r.after.threads.filter(\.inFutexWait).count
                return .proven(HangProof(kind: .corruptedLockWord,
                                         sentence: "lock \(name) word \(LockWord.hex(word)) (\(LockWord.describe(word))), which no valid operation "
                                         + "sequence produces, in two reads; all \(r.after.threads.count) threads asleep (\(futex) in futex), "
                                         + "no CPU time in \(formatted(gapMs)) ms"))
            }
        } else if !r.firstWords.isEmpty {
            reasons.append("every lock word read is valid (\(r.firstWords.sorted { $0.key < $1.key }.map { LockWord.hex($0.value) }.joined(separator: ", ")))")
        }
        if cycle.isEmpty && r.firstWords.isEmpty { reasons.append("no lock word and no lock cycle to read") }
        else if cycle.isEmpty { reasons.append("no lock cycle") }
        return .notProven(reasons.joined(separator: "; "))
    }

    static func formatted(_ ms: Double) -> String {
        let tenths = (ms * 10).rounded() / 10
        return tenths == tenths.rounded() ? String(Int(tenths)) : String(tenths)
    }
}
