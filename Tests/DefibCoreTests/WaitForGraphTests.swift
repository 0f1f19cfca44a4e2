import DefibCore
import Testing

/// The pthread wait-for graph: reading a mutex, finding a cycle, and what it proves.
struct WaitForGraphTests {
    static func thread(_ tid: Int32, _ name: String, state: String = "S", ns: UInt64 = 1000) -> ThreadSample {
        ThreadSample(tid: tid, name: name, state: state, cpuTicks: 0, onCpuNs: ns, syscall: Syscalls.futex)
    }
    static func sample(_ threads: [ThreadSample]) -> ProcessSample { ProcessSample(pid: 10, atNs: 2_000_000_000, threads: threads) }

    static let edges = [
        WaitForEdge(waiterTid: 12, waiterName: "worker-a", mutex: "0x5000", ownerTid: 13, ownerName: "worker-b", kind: "normal"),
        WaitForEdge(waiterTid: 13, waiterName: "worker-b", mutex: "0x4000", ownerTid: 12, ownerName: "worker-a", kind: "normal"),
        WaitForEdge(waiterTid: 14, waiterName: "ping", mutex: "0x4000", ownerTid: 12, ownerName: "worker-a", kind: "normal"),
    ]

    @Test func aCycleOfSleepingThreadsIsALockCycleNamingBoth() throws {
        let threads = [Self.thread(12, "worker-a"), Self.thread(13, "worker-b"), Self.thread(14, "ping")]
        let d = try #require(WaitForGraph.diagnose(edges: Self.edges, sample: Self.sample(threads), baseline: Self.sample(threads)))
        #expect(d.kind == .lockCycle)
        #expect(d.line == "lock-cycle: thread 12 (worker-a) holds 0x4000 and waits for 0x5000 held by thread 13 (worker-b), which waits for 0x4000 held by 12; 1 more thread waits behind the cycle: 14 (ping)")
        #expect(d.evidence.count == 4)
    }

    @Test func aCycleMemberThatUsedCPUIsNoProof() {
        let before = [Self.thread(12, "worker-a"), Self.thread(13, "worker-b")]
        let after = [Self.thread(12, "worker-a", ns: 5000), Self.thread(13, "worker-b")]
        #expect(WaitForGraph.diagnose(edges: Array(Self.edges.prefix(2)), sample: Self.sample(after), baseline: Self.sample(before)) == nil)
        let running = [Self.thread(12, "worker-a", state: "R"), Self.thread(13, "worker-b")]
        #expect(WaitForGraph.diagnose(edges: Array(Self.edges.prefix(2)), sample: Self.sample(running), baseline: nil) == nil)
    }

    @Test func aChainEndingInARunningOwnerIsASlowHolder() throws {
        let edges = [WaitForEdge(waiterTid: 20, waiterName: "req-1", mutex: "0x9000", ownerTid: 22, ownerName: "compactor"),
                     WaitForEdge(waiterTid: 21, waiterName: "req-2", mutex: "0x9000", ownerTid: 22, ownerName: "compactor")]
        let threads = [Self.thread(20, "req-1"), Self.thread(21, "req-2"), Self.thread(22, "compactor", state: "R")]
        let d = try #require(WaitForGraph.diagnose(edges: edges, sample: Self.sample(threads), baseline: nil))
        #expect(d.kind == .slowHolder)
        #expect(d.sentence == "thread 22 (compactor) holds mutex 0x9000 and is running; 2 threads wait behind it")
        // The same owner asleep elsewhere (I/O, a condition variable) proves nothing.
        let asleep = [Self.thread(20, "req-1"), Self.thread(21, "req-2"), Self.thread(22, "compactor")]
        #expect(WaitForGraph.diagnose(edges: edges, sample: Self.sample(asleep), baseline: Self.sample(asleep)) == nil)
    }

    @Test func cyclesOfThreeStartAtTheLowestTid() {
        let edges = [WaitForEdge(waiterTid: 7, waiterName: "c", mutex: "0x1", ownerTid: 5, ownerName: "a"),
                     WaitForEdge(waiterTid: 5, waiterName: "a", mutex: "0x2", ownerTid: 6, ownerName: "b"),
                     WaitForEdge(waiterTid: 6, waiterName: "b", mutex: "0x3", ownerTid: 7, ownerName: "c")]
        #expect(WaitForGraph.cycle(edges).map(\.waiterTid) == [5, 6, 7])
        #expect(WaitForGraph.cycle(Array(edges.prefix(2))).isEmpty)
    }

    @Test func theDiagnoserPutsAProvenCycleFirst() {
        let threads = [Self.thread(12, "worker-a"), Self.thread(13, "worker-b"), Self.thread(14, "ping")]
        var input = DiagnosisInput(cause: .missedHeartbeat(misses: 3, lastPongAt: nil, lastError: nil), locks: [],
                                   progress: .stuck("asleep"), sample: Self.sample(threads), nowUnixMs: 0)
        input.baseline = Self.sample(threads)
        #expect(Diagnoser.diagnose(input).kind == .unknown)
        input.waitFor = Self.edges
        #expect(Diagnoser.diagnose(input).line.hasPrefix("lock-cycle: thread 12 (worker-a)"))
    }

    @Test func glibcMutexFieldsGiveTheOwnerOrNothing() {
        // Locked with waiters (2), owner 4711, a normal mutex.
        #expect(GlibcMutex.owner(lockWord: 2, ownerField: 4711, kindField: 0)?.tid == 4711)
        #expect(GlibcMutex.owner(lockWord: 2, ownerField: 4711, kindField: 1)?.kind == "recursive")
        #expect(GlibcMutex.owner(lockWord: 2, ownerField: 4711, kindField: 2)?.kind == "error-checking")
        // pthread_mutexattr_settype(PTHREAD_MUTEX_NORMAL) adds PTHREAD_MUTEX_NO_ELISION_NP (0x200).
        #expect(GlibcMutex.owner(lockWord: 2, ownerField: 4711, kindField: 0x200)?.kind == "normal")
        // Unlocked, garbage kind, no owner: not a mutex wait.
        #expect(GlibcMutex.owner(lockWord: 0, ownerField: 4711, kindField: 0) == nil)
        #expect(GlibcMutex.owner(lockWord: 2, ownerField: 4711, kindField: 0x1234) == nil)
        #expect(GlibcMutex.owner(lockWord: 2, ownerField: 0, kindField: 0) == nil)
        // Robust and PI mutexes: the owner is in the futex word (with FUTEX_WAITERS set).
        let robust = GlibcMutex.owner(lockWord: Int32(bitPattern: 0x8000_0000 | 4711), ownerField: 4711, kindField: 0x10)
        #expect(robust?.tid == 4711 && robust?.kind == "normal+robust")
        #expect(GlibcMutex.owner(lockWord: Int32(bitPattern: 0x8000_0000 | 99), ownerField: 0, kindField: 0x20)?.kind == "normal+pi")
        // Waited for with a plain FUTEX_WAIT, a "PI mutex" is some other futex: the demo's NIO thread waited on a
        // word of 1 whose neighbours read as normal+pi, and was shown waiting for "owner 1 (not in the process)".
        #expect(GlibcMutex.plainWaitOwner(lockWord: 1, ownerField: 0, kindField: 0x20) == nil)
        #expect(GlibcMutex.plainWaitOwner(lockWord: 2, ownerField: 4711, kindField: 0)?.tid == 4711)
        #expect(GlibcMutex.plainWaitOwner(lockWord: Int32(bitPattern: 0x8000_0000 | 4711), ownerField: 4711, kindField: 0x10)?.kind == "normal+robust")
    }

    @Test func syscallLinesTellAMutexWaitFromOtherFutexWaits() throws {
        let mutex = try #require(SyscallLine("202 0x558f39c3f140 0x80 0x2 0x0 0x0 0x0 0x7f0defb2ee98 0x7f0defbb912b\n"))
        #expect(mutex.isMutexWait && mutex.futex?.address == 0x558f39c3f140)
        // pthread_join / condition variables wait with FUTEX_WAIT_BITSET (9), here | PRIVATE | CLOCK_REALTIME.
        #expect(SyscallLine("202 0x7f0deeb2d990 0x109 0x47c9 0x0 0x0 0xffffffff 0x7ffd2ec89da0 0x7f0defbb8f16")?.isMutexWait == false)
        #expect(SyscallLine("43 0x3 0x0 0x0 0x0 0x0 0x73 0x7f0deeb2cc30 0x7f0defc3d72f")?.isMutexWait == false)
        // FUTEX_LOCK_PI | PRIVATE (Swift's Synchronization.Mutex, glibc PI mutexes): the word names the owner.
        let pi = try #require(SyscallLine("202 0x555901c141a8 0x86 0x0 0x0 0x0 0x6814 0x7fcb88bfdd88 0x7fcb8bd46829"))
        #expect(pi.isMutexWait && pi.isPILock)
        #expect(GlibcMutex.piOwner(lockWord: Int32(bitPattern: 0x8000_0000 | 26644)) == 26644 && GlibcMutex.piOwner(lockWord: 0) == nil)
        #expect(SyscallLine("running") == nil)
        #expect(SyscallLine("-1 0x7ffd 0x7f01") == nil)
    }
}
