import DefibCore
import Testing

/// `ProofRule`, table-driven: what proves a deadlock at a miss, and the near-misses that must not (a word read
/// mid-update, a thread between its futex wake and its run, a timed waiter, a valid word of a leaked read lock).
@Suite struct HangProofTests {
    static let corrupt: UInt64 = 0xFFFF_FFFF_FFFF_FFFE
    static let corruptParked: UInt64 = 0xFFFF_FFFF_FFFF_FFFF
    static let lock: UInt64 = 0x5555_0000_1000
    static let futex = Syscalls.futex

    /// A thread of the proxy: asleep in a futex wait by default.
    static func thread(_ tid: Int32, _ state: String = "S", cpu: UInt64 = 1_000_000, syscall: Int? = futex, name: String? = nil) -> ThreadSample {
        ThreadSample(tid: tid, name: name ?? "t\(tid)", state: state, cpuTicks: cpu / 10_000_000, onCpuNs: cpu, runDelayNs: 0, syscall: syscall,
                     syscallArg0: syscall == nil ? nil : "0x1000")
    }

    static func sample(_ threads: [ThreadSample], atMs: Int64) -> ProcessSample {
        ProcessSample(pid: 100, atNs: atMs * 1_000_000, threads: threads)
    }

    /// Five frozen threads (three in futex, two in epoll) 25 ms apart.
    static let frozen = [thread(100, syscall: 232), thread(101), thread(102), thread(103), thread(104, syscall: 232)]

    static func reading(before: [ThreadSample] = frozen, after: [ThreadSample] = frozen, gapMs: Int64 = 25,
                        first: [UInt64: UInt64] = [lock: corrupt], second: [UInt64: UInt64]? = nil, waitFor: [WaitForEdge] = []) -> ProofReading {
        ProofReading(before: sample(before, atMs: 1000), after: sample(after, atMs: 1000 + gapMs), firstWords: first, secondWords: second ?? first,
                     lockNames: [lock: "catalog"], waitFor: waitFor)
    }

    static func edge(_ waiter: Int32, waitsFor mutex: String, ownedBy owner: Int32, timed: Bool? = false) -> WaitForEdge {
        WaitForEdge(waiterTid: waiter, waiterName: "w\(waiter)", mutex: mutex, ownerTid: owner, ownerName: "w\(owner)", kind: "normal", timed: timed)
    }

    static let cycle = [edge(101, waitsFor: "0xa", ownedBy: 102), edge(102, waitsFor: "0xb", ownedBy: 101)]

    struct Case: Sendable, CustomTestStringConvertible {
        var name: String
        var reading: ProofReading
        /// The proof's kind, or nil when it must not be a proof; `because` is part of the finding's text.
        var proves: HangProof.Kind?
        var because: String
        var testDescription: String { name }
    }

    static let cases: [Case] = {
        let ran = frozen.map { $0.tid == 102 ? thread(102, cpu: 1_000_400) : $0 }
        let woke = frozen.map { $0.tid == 103 ? thread(103, "R", syscall: nil) : $0 }
        let disk = frozen.map { $0.tid == 101 ? thread(101, "D", syscall: 0) : $0 }
        let stopped = frozen.map { $0.tid == 101 ? thread(101, "t") : $0 }
        let noSchedstat = frozen.map { t in ThreadSample(tid: t.tid, name: t.name, state: t.state, cpuTicks: 0, syscall: t.syscall) }
        let spawned = frozen + [thread(105)]
        let unrelatedRunner = frozen.map { $0.tid == 104 ? thread(104, "R", cpu: 9_000_000, syscall: nil) : $0 }
        let cycleMemberAwake = frozen.map { $0.tid == 102 ? thread(102, "S", syscall: 7) : $0 }
        return [
            Case(name: "corrupted word, every thread asleep, no CPU, twice", reading: reading(), proves: .corruptedLockWord,
                 because: "lock 'catalog' word 0xfffffffffffffffe"),
            Case(name: "corrupted word after a reader parked (…ffff)", reading: reading(first: [lock: corruptParked]), proves: .corruptedLockWord,
                 because: "0xffffffffffffffff"),
            Case(name: "a word read mid-update: corrupt at the first read, valid at the second", reading: reading(second: [lock: 0x18]), proves: nil,
                 because: "changed to 0x0000000000000018"),
            Case(name: "the second read of the word failed", reading: reading(second: [:]), proves: nil, because: "changed to unreadable"),
            Case(name: "a thread ran 400 ns between the samples", reading: reading(after: ran), proves: nil, because: "thread 102 (t102) ran 400 ns"),
            Case(name: "a thread between its futex wake and its run (R)", reading: reading(after: woke), proves: nil, because: "thread 103 (t103) is R"),
            Case(name: "a thread in D state (I/O may complete)", reading: reading(before: disk, after: disk), proves: nil, because: "is D, not asleep"),
            Case(name: "a thread stopped by a debugger", reading: reading(before: stopped, after: stopped), proves: nil, because: "is t, not asleep"),
            Case(name: "a thread appeared between the samples", reading: reading(after: spawned), proves: nil, because: "threads appeared or ended"),
            Case(name: "samples too close together", reading: reading(gapMs: 5), proves: nil, because: "5 ms apart, less than 10 ms"),
            Case(name: "no schedstat: CPU time not exact", reading: reading(before: noSchedstat, after: noSchedstat), proves: nil,
                 because: "has no schedstat"),
            Case(name: "an unrelated thread running: the corrupted word is not enough", reading: reading(before: unrelatedRunner, after: unrelatedRunner),
                 proves: nil, because: "thread 104 (t104) is R"),
            Case(name: "leaked read lock: a valid word (1 reader, writer waiting)", reading: reading(first: [lock: 0x1b]), proves: nil,
                 because: "every lock word read is valid (0x000000000000001b)"),
            Case(name: "slow holder: a writer holds the lock", reading: reading(first: [lock: 0x08]), proves: nil, because: "valid"),
            Case(name: "reader count high but flags clear (not the revert underflow)", reading: reading(first: [lock: 0xFFFF_FFFF_FFFF_FFF0]), proves: nil,
                 because: "valid"),
            Case(name: "dead loop: no lock, a thread burning CPU", reading: reading(after: frozen.map { $0.tid == 100 ? thread(100, "R", cpu: 30_000_000, syscall: nil) : $0 },
                                                                                first: [:]),
                 proves: nil, because: "no lock word and no lock cycle"),
            Case(name: "pthread lock cycle, members frozen in futex", reading: reading(first: [:], waitFor: cycle), proves: .lockCycle,
                 because: "101 (w101) waits for 0xa held by 102, 102 (w102) waits for 0xb held by 101"),
            Case(name: "lock cycle while an unrelated thread runs", reading: reading(before: unrelatedRunner, after: unrelatedRunner, first: [:], waitFor: cycle),
                 proves: .lockCycle, because: "all 2 asleep"),
            Case(name: "lock cycle through a timed waiter", reading: reading(first: [:], waitFor: [cycle[0], edge(102, waitsFor: "0xb", ownedBy: 101, timed: true)]),
                 proves: nil, because: "thread 102 waits with a timeout"),
            Case(name: "lock cycle with a member that ran", reading: reading(after: ran, first: [:], waitFor: cycle), proves: nil,
                 because: "lock cycle: thread 102 (t102) ran 400 ns"),
            Case(name: "lock cycle with a member not in a futex wait", reading: reading(before: cycleMemberAwake, after: cycleMemberAwake, first: [:], waitFor: cycle),
                 proves: nil, because: "thread 102 is not in a futex wait"),
            Case(name: "a chain to a live owner, no cycle", reading: reading(first: [:], waitFor: [edge(101, waitsFor: "0xa", ownedBy: 104)]), proves: nil,
                 because: "no lock cycle"),
            Case(name: "nothing sampled (the process is gone)", reading: reading(before: [], after: []), proves: nil, because: "no threads sampled"),
        ]
    }()

    @Test(arguments: cases)
    func rule(_ c: Case) {
        switch ProofRule.evaluate(c.reading) {
        case let .proven(proof):
            #expect(proof.kind == c.proves, "\(c.name): proven \(proof.line)")
            #expect(proof.sentence.contains(c.because), "\(proof.sentence)")
        case let .notProven(why):
            #expect(c.proves == nil, "\(c.name): not proven: \(why)")
            #expect(why.contains(c.because), "\(why)")
        }
    }

    @Test func proofSentenceNamesTheWordTheThreadsAndTheWindow() {
        guard case let .proven(proof) = ProofRule.evaluate(Self.reading()) else { Issue.record("no proof"); return }
        #expect(proof.line == "corrupted-lock-word: lock 'catalog' word 0xfffffffffffffffe (WRITER|UPGRADABLE|WRITER_PARKED, reader count 1152921504606846975 (saturated)), which no valid operation sequence produces, in two reads; all 5 threads asleep (3 in futex), no CPU time in 25 ms")
    }
}
