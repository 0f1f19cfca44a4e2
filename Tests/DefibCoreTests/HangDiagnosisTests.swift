import DefibCore
import Foundation
import Testing

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
                                                           "dead-loop", "stopped", "exited", "signaled", "unknown"])
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
        #expect(IncidentSignature.topFrames(a) == ["$s11ParkingLock10ThreadParkerC4park < $s11ParkingLock6RwLockC10lockSharedyyF", "main"])
    }

    @Test func corruptedWordsAreRecognised() {
        #expect(Diagnosis.isCorrupted(0xFFFF_FFFF_FFFF_FFFE))
        #expect(Diagnosis.isCorrupted(0xFFFF_FFFF_FFFF_FFFF))
        #expect(!Diagnosis.isCorrupted(0x1A))
        #expect(!Diagnosis.isCorrupted(0))
    }
}
