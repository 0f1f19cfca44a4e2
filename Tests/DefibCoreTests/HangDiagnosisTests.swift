import DefibCore
import Foundation
import Testing
import FlightRecorder

@Suite struct HangDiagnosisTests {
    static let hang = IncidentCause.missedHeartbeat(misses: 4, lastPongAt: nil, lastError: "no reply within 250 ms")
    static let now: Int64 = 1_800_000_000_000

    static func sample(_ states: [String], futex: Bool = true) -> ProcessSample {
        ProcessSample(pid: 1, atNs: 0, threads: states.enumerated().map { i, s in
            ThreadSample(tid: Int32(100 + i), name: "t\(i)", state: s, cpuTicks: 0, syscall: futex && s == "S" ? Syscalls.futex : nil)
        })
    }

    static func lock(_ word: String, holder: String? = nil, holderSince: Int64? = nil, readers: Int = 0, writers: Int = 0,
                     events: [LockEventRecord]? = nil) -> LockState {
        var l = LockState(name: "catalog", address: "0x00007f0000001000", word: word, source: "memory", holder: holder,
                          readersWaiting: readers, writersWaiting: writers)
        l.holderSinceUnixMs = holderSince
        l.events = events
        return l
    }

    @Test func theTimeoutRaceWordIsACorruptedLockWord() {
        let events = [LockEventRecord(kind: "write-timed-out", tid: 4242, unixMs: Self.now - 900, wordAfter: "0xfffffffffffffffe",
                                      label: "catalog.update app=shop machine=m2")]
        let d = Diagnoser.diagnose(DiagnosisInput(cause: Self.hang, locks: [Self.lock("0xfffffffffffffffe", readers: 5, writers: 1, events: events)],
                                                  progress: .stuck("asleep"), sample: Self.sample(["S", "S", "S"]), nowUnixMs: Self.now))
        #expect(d.kind == .corruptedLockWord)
        #expect(d.line == "corrupted-lock-word: no thread in the critical section of 'catalog'; 5 readers and 1 writer waiting; word 0xFFFFFFFFFFFFFFFE")
        #expect(d.evidence.contains { $0.contains("catalog.update app=shop machine=m2") && $0.contains("4242") })
        #expect(Diagnoser.diagnose(DiagnosisInput(cause: Self.hang, locks: [Self.lock("0xffffffffffffffff")], nowUnixMs: Self.now)).kind == .corruptedLockWord)
    }

    @Test func aReaderCountWithAParkedWriterAndNobodyRunningIsALeakedReadLock() {
        // 1 reader, WRITER | WRITER_PARKED | PARKED: the Go RWMutex story.
        let d = Diagnoser.diagnose(DiagnosisInput(cause: Self.hang,
                                                  locks: [Self.lock("0x000000000000001b", holder: "catalog.reload tid=77", holderSince: Self.now - 3000, readers: 4, writers: 1)],
                                                  progress: .stuck("asleep"), sample: Self.sample(["S", "S", "S", "S"]), nowUnixMs: Self.now))
        #expect(d.kind == .leakedReadLock, "\(d)")
        #expect(d.sentence.contains("counts 1 reader") && d.sentence.contains("catalog.reload tid=77") && d.sentence.contains("3.0 s"))
    }

    @Test func aWriterThatHoldsTheReadLockIsASelfDeadlock() {
        let events = [LockEventRecord(kind: "write-while-holding-read", tid: 101, unixMs: Self.now - 500, wordAfter: "0x000000000000001a",
                                      label: "catalog.update app=shop machine=m3")]
        let d = Diagnoser.diagnose(DiagnosisInput(cause: Self.hang, locks: [Self.lock("0x000000000000001b", readers: 2, writers: 1, events: events)],
                                                  progress: .stuck("asleep"), sample: Self.sample(["S", "S", "S"]), nowUnixMs: Self.now))
        #expect(d.kind == .selfDeadlock)
        #expect(d.sentence.hasPrefix("thread 101 waits for the write lock of 'catalog' while holding its read lock"))
    }

    /// Re-entry: the write holder parks on its own lock again (a read inside the write section).
    @Test func aWriteHolderParkedOnItsOwnLockIsASelfDeadlock() {
        var held = Self.lock("0x0000000000000009", holder: "catalog.update app=shop machine=m2 tid=77", holderSince: Self.now - 3000, readers: 3)
        held.holderTid = 77
        held.holderSinceMonotonicNs = 5_000_000
        // In the same wall-clock millisecond as the hold began: the monotonic clock orders them.
        held.events = [LockEventRecord(kind: "parked-read", tid: 77, unixMs: Self.now - 3000, wordAfter: "0x0000000000000009", label: "",
                                       monotonicNs: 5_000_400)]
        let threads = [ThreadSample(tid: 77, name: "catalog-updates", state: "S", cpuTicks: 1, syscall: Syscalls.futex)]
        let d = Diagnoser.diagnose(DiagnosisInput(cause: Self.hang, locks: [held], progress: .stuck("asleep"),
                                                  sample: ProcessSample(pid: 1, atNs: 0, threads: threads), nowUnixMs: Self.now))
        #expect(d.kind == .selfDeadlock, "\(d)")
        #expect(d.sentence.hasPrefix("thread 77 holds the write lock of 'catalog' ('catalog.update app=shop machine=m2') and waits to take it again for reading: thread 'catalog-updates' waits for itself"), "\(d.sentence)")
        // Another thread parked on it, or the holder's park before it became the holder: a slow holder, not a re-entry.
        var other = held
        other.events = [LockEventRecord(kind: "parked-read", tid: 78, unixMs: Self.now - 2999, wordAfter: "0x9", label: "")]
        #expect(Diagnoser.diagnose(DiagnosisInput(cause: Self.hang, locks: [other], nowUnixMs: Self.now)).kind == .slowHolder)
        // The holder's own park just before the hand-off that gave it the lock (same millisecond): how it got the lock.
        var earlier = held
        earlier.events = [LockEventRecord(kind: "parked-write", tid: 77, unixMs: Self.now - 3000, wordAfter: "0x9", label: "", monotonicNs: 4_999_900)]
        #expect(Diagnoser.diagnose(DiagnosisInput(cause: Self.hang, locks: [earlier], nowUnixMs: Self.now)).kind == .slowHolder)
        // Without monotonic times, the same millisecond is not "after".
        var coarse = earlier
        coarse.holderSinceMonotonicNs = nil
        coarse.events = [LockEventRecord(kind: "parked-write", tid: 77, unixMs: Self.now - 3000, wordAfter: "0x9", label: "")]
        #expect(Diagnoser.diagnose(DiagnosisInput(cause: Self.hang, locks: [coarse], nowUnixMs: Self.now)).kind == .slowHolder)
        // A holder that is running (not asleep in a futex wait) is not waiting for itself.
        let running = [ThreadSample(tid: 77, name: "catalog-updates", state: "S", cpuTicks: 1, syscall: 35)]   // nanosleep
        #expect(Diagnoser.diagnose(DiagnosisInput(cause: Self.hang, locks: [held], sample: ProcessSample(pid: 1, atNs: 0, threads: running),
                                                  nowUnixMs: Self.now)).kind == .slowHolder)
    }

    @Test func aLongLiveHoldIsASlowHolder() {
        let d = Diagnoser.diagnose(DiagnosisInput(cause: Self.hang,
                                                  locks: [Self.lock("0x0000000000000009", holder: "catalog.update app=big tid=9", holderSince: Self.now - 12_300, readers: 3)],
                                                  progress: .unclear("?"), sample: Self.sample(["R", "S"]), nowUnixMs: Self.now))
        #expect(d.line == "slow-holder: catalog.update app=big tid=9 has held the write lock of 'catalog' for 12.3 s; 3 reader(s) and 0 writer(s) waiting")
    }

    @Test func cpuWithoutLockWaitsIsADeadLoop() {
        let d = Diagnoser.diagnose(DiagnosisInput(cause: Self.hang, locks: [Self.lock("0x0000000000000000")],
                                                  progress: .busy("CPU +1980 ms in 1000 ms"), sample: Self.sample(["R", "R", "S"]), nowUnixMs: Self.now))
        #expect(d.kind == .deadLoop)
        #expect(d.sentence.contains("CPU +1980 ms"))
    }

    @Test func stoppedExitedSignaledAndUnknown() {
        #expect(Diagnoser.diagnose(DiagnosisInput(cause: Self.hang, locks: [], progress: .stopped("1 of 1 threads stopped"), nowUnixMs: 0)).kind == .stopped)
        #expect(Diagnoser.diagnose(DiagnosisInput(cause: .exited(code: 3), locks: [], nowUnixMs: 0)).line == "exited: the service exited on its own with code 3")
        #expect(Diagnoser.diagnose(DiagnosisInput(cause: .signaled(signal: 11, coreDumped: true), locks: [], nowUnixMs: 0)).line
                == "signaled: the service was killed by SIGSEGV; the kernel dumped a core")
        #expect(Diagnoser.diagnose(DiagnosisInput(cause: Self.hang, locks: [Self.lock("0x0000000000000000")], progress: .stuck("asleep"), nowUnixMs: 0)).kind == .unknown)
    }

    @Test func diagnosisKindsAreTheContractsPrefixes() {
        #expect(DiagnosisKind.allCases.map(\.rawValue) == ["corrupted-lock-word", "leaked-read-lock", "self-deadlock", "slow-holder",
                                                           "dead-loop", "stopped", "exited", "signaled", "unknown", "lock-cycle"])
    }

    @Test func signaturesGroupRepeatsAndIgnoreAddresses() {
        let a = """
        Thread 2 (LWP 11):
        #0  0x00007f01 in syscall () from /lib/x86_64-linux-gnu/libc.so.6
        #1  0x000055aa in $s11ParkingLock10ThreadParkerC4park () at ParkingLot.swift:40
        #2  0x000055ab in $s11ParkingLock6RwLockC10lockSharedyyF () at RwLock.swift:90
        Thread 1 (LWP 10):
        #0  0x00007f02 in epoll_wait () from /lib/x86_64-linux-gnu/libc.so.6
        #1  0x000055cc in main () at main.swift:3
        """
        let b = a.replacingOccurrences(of: "0x000055aa", with: "0x000066aa").replacingOccurrences(of: "LWP 11", with: "LWP 99")
        let sa = IncidentSignature.compute(causeKind: "missed-heartbeat", diagnosisKind: "corrupted-lock-word", lockNames: ["catalog"], stacks: a)
        let sb = IncidentSignature.compute(causeKind: "missed-heartbeat", diagnosisKind: "corrupted-lock-word", lockNames: ["catalog"], stacks: b)
        #expect(sa == sb && sa.count == 16)
        #expect(sa != IncidentSignature.compute(causeKind: "missed-heartbeat", diagnosisKind: "leaked-read-lock", lockNames: ["catalog"], stacks: a))
        // Only the blocked thread counts: the idle event loop (epoll_wait) is no part of the hang.
        #expect(IncidentSignature.topFrames(a) == ["$s11ParkingLock10ThreadParkerC4park < $s11ParkingLock6RwLockC10lockSharedyyF"])
        let moreIdle = a + "\nThread 3 (LWP 12):\n#0  0x00007f03 in epoll_wait () from libc.so.6\n#1  0x000055dd in idleLoop () at x.swift:9\n"
            + "Thread 4 (LWP 13):\n#0  0x00007f04 in __futex_abstimed_wait_common64 () from libc.so.6\n#1  0x00007f05 in ___pthread_cond_wait () from libc.so.6\n"
            + "#2  0x000055ee in $s10DefibProxy14CatalogUpdaterC4nextyyF () at CatalogUpdater.swift:61\n"
        #expect(IncidentSignature.compute(causeKind: "missed-heartbeat", diagnosisKind: "corrupted-lock-word", lockNames: ["catalog"], stacks: moreIdle) == sa,
                "extra idle threads (an event loop, a worker waiting on a condition variable) do not split the group")
    }

    @Test func aDeadLoopWithNoBlockedThreadIsSignedByTheSpinningThreads() {
        let stacks = """
        Thread 2 (LWP 21):
        #0  0x000055aa in $s10DefibProxy6FaultsC4spinyyF () at Faults.swift:190
        #1  0x000055ab in $s7NIOCore9EventLoopC3runyyF () at EventLoop.swift:12
        Thread 3 (LWP 22):
        #0  0x00007f04 in __futex_abstimed_wait_common64 () from /lib/x86_64-linux-gnu/libc.so.6
        #1  0x00007f05 in ___pthread_cond_wait () from /lib/x86_64-linux-gnu/libc.so.6
        #2  0x000055ee in $s10DefibProxy14CatalogUpdaterC4nextyyF () at CatalogUpdater.swift:61
        Thread 1 (LWP 20):
        #0  0x00007f02 in epoll_wait () from /lib/x86_64-linux-gnu/libc.so.6
        #1  0x000055cc in main () at main.swift:3
        """
        // The idle updater waiting on its condition variable is not "blocked": the spinning thread signs it.
        #expect(IncidentSignature.topFrames(stacks) == ["$s10DefibProxy6FaultsC4spinyyF < $s7NIOCore9EventLoopC3runyyF"])
    }

    @Test func stacksRefineTheEvidenceAndPointAnUnexplainedHangAtTheBlockedThreads() {
        let stacks = """
        Thread 3 (LWP 12):
        #0  0x00007f01 in __lll_lock_wait () from /lib/x86_64-linux-gnu/libc.so.6
        #1  0x00007f02 in pthread_mutex_lock () from /lib/x86_64-linux-gnu/libc.so.6
        #2  0x000055aa in cache_lookup () at cache.c:40
        Thread 2 (LWP 11):
        #0  0x00007f01 in __lll_lock_wait () from /lib/x86_64-linux-gnu/libc.so.6
        #1  0x00007f02 in pthread_mutex_lock () from /lib/x86_64-linux-gnu/libc.so.6
        #2  0x000055aa in cache_lookup () at cache.c:40
        Thread 1 (LWP 10):
        #0  0x00007f03 in epoll_wait () from /lib/x86_64-linux-gnu/libc.so.6
        #1  0x000055cc in main () at main.c:3
        """
        let unknown = HangDiagnosis(kind: .unknown, sentence: "no lock explains the silence; the process was stuck: asleep")
        let refined = Diagnoser.refine(unknown, stacks: stacks)
        #expect(refined.kind == .unknown)
        #expect(refined.sentence == "no lock explains the silence; the process was stuck: asleep; the core shows 2 thread(s) blocked, most in cache_lookup", "\(refined.sentence)")
        #expect(refined.evidence == ["stacks: blocked threads wait in 2 × cache_lookup"])
        // Refining twice changes nothing more; a diagnosed kind keeps its sentence and gains the evidence line.
        #expect(Diagnoser.refine(refined, stacks: stacks) == refined)
        let known = HangDiagnosis(kind: .slowHolder, sentence: "x has held it", evidence: ["lock 'catalog': 0x9"])
        #expect(Diagnoser.refine(known, stacks: stacks) == HangDiagnosis(kind: .slowHolder, sentence: "x has held it",
                                                                         evidence: ["lock 'catalog': 0x9", "stacks: blocked threads wait in 2 × cache_lookup"]))
    }

    @Test func corruptedWordsAreRecognised() {
        #expect(LockWord.isCorrupt(0xFFFF_FFFF_FFFF_FFFE))
        #expect(LockWord.isCorrupt(0xFFFF_FFFF_FFFF_FFFF))
        #expect(!LockWord.isCorrupt(0x1A))
        #expect(!LockWord.isCorrupt(0))
    }
}

/// The rules that use the flight recorder's version 2 evidence: the pending writer, the read holders, and
/// the events pinned outside the ring.
@Suite struct LockEvidenceDiagnosisTests {
    static let now = HangDiagnosisTests.now
    static let hang = HangDiagnosisTests.hang
    static let epollWait = 232

    /// A reload writer (tid 100) parked waiting for readers, one read holder (tid 101) since 5.2 s.
    static func leakedLock(holders: [LockReadHolderRecord] = [LockReadHolderRecord(tid: 101, sinceUnixMs: now - 5200)],
                           events: [LockEventRecord]? = nil) -> LockState {
        var l = LockState(name: "catalog", address: "0x00007f0000001000", word: "0x000000000000001b", source: "memory",
                          holder: "catalog.reload tid=100", readersWaiting: 3, writersWaiting: 1)
        l.holderTid = 100
        l.holderSinceUnixMs = now - 3000
        l.holderWaitingForReaders = true
        l.readHolders = holders
        l.moreReadHolders = 0
        l.events = events
        return l
    }

    static func sample(_ threads: [ThreadSample]) -> ProcessSample { ProcessSample(pid: 1, atNs: 0, threads: threads) }

    static func thread(_ tid: Int32, _ name: String, _ state: String = "S", syscall: Int? = Syscalls.futex) -> ThreadSample {
        ThreadSample(tid: tid, name: name, state: state, cpuTicks: 0, syscall: state == "S" ? syscall : nil)
    }

    static func diagnose(_ lock: LockState, _ threads: [ThreadSample], progress: ProgressVerdict? = .stuck("asleep")) -> HangDiagnosis {
        Diagnoser.diagnose(DiagnosisInput(cause: hang, locks: [lock], progress: progress, sample: sample(threads), nowUnixMs: now))
    }

    static let reloader = thread(100, "catalog-reload")
    static let parkedReader = thread(102, "NIO-ELT-0-#1")

    @Test func anIdleReadHolderBehindAWaitingWriterIsALeakedReadNamedWithItsHoldTime() {
        let d = Self.diagnose(Self.leakedLock(), [Self.reloader, Self.thread(101, "NIO-ELT-0-#0", syscall: Self.epollWait), Self.parkedReader])
        #expect(d.kind == .leakedReadLock, "\(d)")
        #expect(d.sentence.hasPrefix("'catalog' counts 1 reader but no thread is running inside it: thread 101 ('NIO-ELT-0-#0') is idle in epoll_wait"), "\(d.sentence)")
        #expect(d.sentence.contains("holding it for 5.2 s"))
        #expect(d.sentence.contains("writer catalog.reload tid=100 has waited for 3.0 s for them and 3 new reader(s) queue behind it"))
        #expect(d.evidence.contains { $0.hasPrefix("read holder tid 101 since ") && $0.contains("idle in epoll_wait") })
    }

    @Test func aHolderParkedOnAnotherReadOrGoneIsNotInsideItsReadSection() {
        let parked = Self.diagnose(Self.leakedLock(events: [LockEventRecord(kind: "parked-read", tid: 101, unixMs: Self.now - 100, wordAfter: "0x1b", label: "")]),
                                   [Self.reloader, Self.thread(101, "NIO-ELT-0-#0"), Self.parkedReader])
        #expect(parked.kind == .leakedReadLock)
        #expect(parked.sentence.contains("thread 101 ('NIO-ELT-0-#0') is parked on another read of it, behind the writer"), "\(parked.sentence)")

        let exited = Self.diagnose(Self.leakedLock(holders: [LockReadHolderRecord(tid: 101, sinceUnixMs: Self.now - 800, threadExited: true)]),
                                   [Self.reloader, Self.parkedReader])
        #expect(exited.kind == .leakedReadLock)
        #expect(exited.sentence.contains("thread 101 has exited, holding it for 0.8 s"), "\(exited.sentence)")

        let vanished = Self.diagnose(Self.leakedLock(), [Self.reloader, Self.parkedReader])
        #expect(vanished.kind == .leakedReadLock)
        #expect(vanished.sentence.contains("thread 101 no longer exists"), "\(vanished.sentence)")
    }

    @Test func aReadHolderStillRunningIsASlowReaderNotALeak() {
        for state in ["R", "D"] {
            let d = Self.diagnose(Self.leakedLock(), [Self.reloader, Self.thread(101, "worker", state), Self.parkedReader], progress: .unclear("?"))
            #expect(d.kind != .leakedReadLock, "\(state): \(d)")
            #expect(d.kind != .slowHolder, "a writer waiting for readers holds nothing yet: \(d)")
        }
    }

    @Test func manyHoldersAreNamedUpToThreeAndCounted() {
        let holders = (0..<5).map { LockReadHolderRecord(tid: 110 + $0, sinceUnixMs: Self.now - 4000 + Int64($0)) }
        var lock = Self.leakedLock(holders: holders)
        lock.word = "0x000000000000007b"   // 7 readers: 5 listed, 2 more
        lock.moreReadHolders = 2
        let d = Self.diagnose(lock, [Self.reloader] + holders.map { Self.thread($0.tid, "w\($0.tid)", syscall: Self.epollWait) })
        #expect(d.kind == .leakedReadLock)
        #expect(d.sentence.contains("counts 7 readers"))
        #expect(d.sentence.contains("thread 112 ('w112')") && !d.sentence.contains("thread 113"))
        #expect(d.sentence.contains("; and 4 more;"), "\(d.sentence)")
    }

    @Test func thePendingWriterAmongTheReadHoldersIsASelfDeadlockEvenWithoutTheEvent() {
        var lock = Self.leakedLock(holders: [LockReadHolderRecord(tid: 100, sinceUnixMs: Self.now - 2500)])
        lock.holder = "catalog.update app=shop machine=defib-fault tid=100"
        lock.word = "0x000000000000001a"
        let d = Self.diagnose(lock, [Self.thread(100, "catalog-updates"), Self.parkedReader])
        #expect(d.kind == .selfDeadlock, "\(d)")
        #expect(d.sentence == "thread 100 waits for the write lock of 'catalog' while holding its read lock ('catalog.update app=shop machine=defib-fault'): thread 'catalog-updates' waits for itself, and 3 readers queue behind it")
        #expect(d.evidence.contains { $0.hasPrefix("read holder tid 100 since ") && $0.hasSuffix("for 2.5 s") })
        #expect(d.evidence.contains("thread 100 is 'catalog-updates', is asleep in a futex wait"))
    }

    @Test func aWriteWhileHoldingReadThatLetGoIsNotASelfDeadlockAnyMore() {
        let event = LockEventRecord(kind: "write-while-holding-read", tid: 101, unixMs: Self.now - 9000, wordAfter: "0x10", label: "catalog.update retry")
        // It timed out, released its read lock; another thread now leaks one.
        let d = Self.diagnose(Self.leakedLock(holders: [LockReadHolderRecord(tid: 102, sinceUnixMs: Self.now - 4000)], events: [event]),
                              [Self.reloader, Self.thread(101, "catalog-updates"), Self.thread(102, "NIO-ELT-0-#1", syscall: Self.epollWait)])
        #expect(d.kind == .leakedReadLock, "\(d)")
        // And with the lock idle again the old event explains nothing.
        var idle = Self.leakedLock(holders: [], events: [event])
        idle.word = "0x0000000000000000"
        idle.holder = nil
        idle.holderTid = nil
        idle.holderSinceUnixMs = nil
        idle.holderWaitingForReaders = false
        #expect(Self.diagnose(idle, [Self.thread(101, "catalog-updates")]).kind == .unknown)
    }

    @Test func theCorruptingTimeoutIsNamedRatherThanTheLatest() {
        let events = [
            LockEventRecord(kind: "write-timed-out", tid: 4242, unixMs: Self.now - 900, wordAfter: "0xfffffffffffffffe", label: "catalog.update app=shop machine=m2"),
            LockEventRecord(kind: "parked-read", tid: 7, unixMs: Self.now - 800, wordAfter: "0xffffffffffffffff", label: ""),
            LockEventRecord(kind: "write-timed-out", tid: 4243, unixMs: Self.now - 100, wordAfter: "0xffffffffffffffff", label: "catalog.update app=blog machine=m1"),
        ]
        var lock = LockState(name: "catalog", address: "0x1000", word: "0xffffffffffffffff", source: "memory", readersWaiting: 5, writersWaiting: 1)
        lock.events = events
        let d = Self.diagnose(lock, [Self.reloader])
        #expect(d.kind == .corruptedLockWord)
        #expect(d.evidence.contains("timed-out writer whose revert corrupted the word: 'catalog.update app=shop machine=m2' tid 4242, word after its revert 0xfffffffffffffffe"))
    }

    @Test func readHolderRecordsDescribeThemselves() {
        #expect(LockReadHolderRecord(tid: 7, depth: 2, sinceUnixMs: 1_795_000_000_000).description == "tid 7 since 2026-11-18T11:06:40.000Z depth 2")
        #expect(LockReadHolderRecord(tid: 8, sinceUnixMs: 0, threadExited: true).description == "tid 8 since 1970-01-01T00:00:00.000Z (exited)")
    }
}

/// Dead loops on a machine whose cores the loop itself fills.
@Suite struct DeadLoopDiagnosisTests {
    /// Two samples 2 s apart: `cpuMs` of CPU between them, two spinning threads (R) and three asleep.
    static func samples(cpuMs: UInt64) -> (ProcessSample, ProcessSample) {
        func sample(atNs: Int64, spun: UInt64) -> ProcessSample {
            ProcessSample(pid: 7, atNs: atNs, threads: [
                ThreadSample(tid: 7, name: "defib-proxy", state: "S", cpuTicks: 0, onCpuNs: 5_000_000, runDelayNs: 0, syscall: Syscalls.futex),
                ThreadSample(tid: 8, name: "NIO-ELT-0-#0", state: "R", cpuTicks: 0, onCpuNs: spun / 2, runDelayNs: 0),
                ThreadSample(tid: 9, name: "NIO-ELT-0-#1", state: "R", cpuTicks: 0, onCpuNs: spun / 2, runDelayNs: 0),
                ThreadSample(tid: 10, name: "catalog-reload", state: "S", cpuTicks: 0, onCpuNs: 1_000_000, runDelayNs: 0, syscall: Syscalls.futex),
            ])
        }
        return (sample(atNs: 1_000_000_000, spun: 100_000_000), sample(atNs: 3_000_000_000, spun: 100_000_000 + cpuMs * 1_000_000))
    }

    @Test func aLoopThatAlsoWaitsForACPUIsStillADeadLoop() {
        let (before, after) = Self.samples(cpuMs: 3200)
        let starved = ProgressVerdict.starved("run-queue wait +1055.9 ms in 2000 ms; CPU +3200 ms in 2000 ms; threads: 2 S (2 in futex), 2 R")
        var input = DiagnosisInput(cause: HangDiagnosisTests.hang, locks: [HangDiagnosisTests.lock("0x0000000000000000")],
                                   progress: starved, sample: after, nowUnixMs: HangDiagnosisTests.now)
        input.baseline = before
        let d = Diagnoser.diagnose(input)
        #expect(d.kind == .deadLoop, "\(d)")
        #expect(d.sentence.hasPrefix("CPU time keeps advancing with no lock waits, 1.6 CPUs' worth while also waiting for a CPU"), "\(d.sentence)")
        #expect(d.evidence == ["running threads: NIO-ELT-0-#0, NIO-ELT-0-#1"])
    }

    @Test func aStarvedProcessThatGotLittleCPUIsNotCalledADeadLoop() {
        let (before, after) = Self.samples(cpuMs: 300)
        var input = DiagnosisInput(cause: HangDiagnosisTests.hang, locks: [], progress: .starved("run-queue wait +1500 ms in 2000 ms"),
                                   sample: after, nowUnixMs: HangDiagnosisTests.now)
        input.baseline = before
        #expect(Diagnoser.diagnose(input).kind == .unknown)
        // Without a baseline there is no rate to judge by.
        input.baseline = nil
        input.sample = Self.samples(cpuMs: 3200).1
        #expect(Diagnoser.diagnose(input).kind == .unknown)
        // Lock waits point elsewhere even while the CPU burns.
        input.baseline = Self.samples(cpuMs: 3200).0
        input.locks = [HangDiagnosisTests.lock("0x0000000000000009", readers: 2)]
        #expect(Diagnoser.diagnose(input).kind != .deadLoop)
    }
}
