import CDefibShims
import Glibc
import ParkingLock
import Testing
import FlightRecorder

/// A counter deliberately without synchronization: only the lock protects it.
final class UnguardedCounter: @unchecked Sendable {
    var a = 0
    var b = 0
}

extension ParkingLockSuite {
    /// Ordinary reader-writer lock behaviour under contention, and its telemetry.
    @Suite(.serialized) struct Behaviour {
        @Test func writersAreMutuallyExclusiveAndReadersSeeWholeWrites() {
            let lock = RwLock(name: "mutex-test", register: false)
            let shared = UnguardedCounter()
            let torn = Counter()
            let stop = Flag()
            let writers = (0..<4).map { w in
                TestThread {
                    for i in 0..<1000 {
                        lock.write(label: "counter w=\(w) i=\(i)") {
                            // Read, yield the CPU, write back: without exclusion updates get lost.
                            let a = shared.a
                            sched_yield()
                            shared.a = a + 1
                            shared.b += 1
                        }
                    }
                }
            }
            let readers = (0..<2).map { _ in
                TestThread {
                    while !stop.isSet {
                        lock.read { if shared.a != shared.b { torn.increment() } }
                    }
                }
            }
            for writer in writers { #expect(writer.join(timeout: .seconds(60))) }
            stop.set()
            for reader in readers { #expect(reader.join(timeout: .seconds(10))) }
            #expect(shared.a == 4000)
            #expect(shared.b == 4000)
            #expect(torn.count == 0, "a reader saw a write half done")
            #expect(lock.rawWord == 0)
        }

        @Test func twoReadersAreInsideAtOnce() {
            let lock = RwLock(name: "shared-test", register: false)
            let sawBoth = Counter()
            let bump = Counter()
            let readers = (0..<2).map { _ in
                TestThread {
                    lock.read {
                        bump.increment()
                        if waitUntil(timeout: .seconds(10), { bump.count == 2 }) { sawBoth.increment() }
                    }
                }
            }
            for reader in readers { #expect(reader.join(timeout: .seconds(20))) }
            #expect(sawBoth.count == 2, "each reader should see the other inside")
            #expect(lock.rawWord == 0)
        }

        @Test func aWriterExcludesReadersUntilItLeaves() throws {
            let lock = RwLock(name: "exclusion-test", register: false)
            lock.lockExclusive(label: "exclusion holder")
            #expect(lock.rawWord == LockWord.writer)
            let readerIn = Flag()
            let reader = TestThread { lock.read { readerIn.set() } }
            try #require(waitUntil(timeout: .seconds(10)) { lock.snapshot().readersWaiting == 1 })
            #expect(lock.rawWord == LockWord.writer | LockWord.parked)
            sleepFor(.milliseconds(200))
            #expect(!readerIn.isSet, "a reader got in while a writer held the lock")
            let timedRead = SharedInt(-1)
            let timedReader = TestThread { timedRead.set(lock.tryRead(for: .milliseconds(20)) { 1 } ?? 0) }
            #expect(timedReader.join(timeout: .seconds(10)))
            #expect(timedRead.value == 0, "tryRead must time out behind a writer")
            lock.unlockExclusive()
            #expect(reader.join(timeout: .seconds(10)))
            #expect(readerIn.isSet)
            #expect(lock.rawWord == 0)
            #expect(lock.snapshot().readersWaiting == 0)
        }

        @Test func aWaitingWriterHoldsOffNewReadersButNotRecursiveOnes() throws {
            let lock = RwLock(name: "preference-test", register: false)
            lock.lockShared()
            let writerIn = Flag()
            let writer = TestThread { lock.write(label: "pending writer") { writerIn.set() } }
            try #require(waitUntil(timeout: .seconds(10)) { lock.rawWord == 0x1A })  // 1 reader, WRITER, WRITER_PARKED
            #expect(lock.snapshot().writersWaiting == 1)
            // A recursive read may pass the waiting writer (else a reader re-entering would deadlock).
            try lock.readRecursive { #expect(lock.rawWord == 0x2A) }
            // A plain one may not.
            let lateReaderIn = Flag()
            let lateReader = TestThread { lock.read { lateReaderIn.set() } }
            try #require(waitUntil(timeout: .seconds(10)) { lock.snapshot().readersWaiting == 1 })
            #expect(lock.rawWord == 0x1B)
            #expect(!writerIn.isSet && !lateReaderIn.isSet)
            lock.unlockShared()
            #expect(writer.join(timeout: .seconds(10)))
            #expect(lateReader.join(timeout: .seconds(10)))
            #expect(writerIn.isSet && lateReaderIn.isSet)
            #expect(lock.rawWord == 0)
        }

        @Test func timedAttemptsTimeOutAndLeaveTheWordClean() {
            let lock = RwLock(name: "timeouts-test", register: false)
            // A writer timing out behind a reader (both revert strategies are clean without the race).
            for revert in RevertStrategy.allCases {
                lock.revert = revert
                lock.lockShared()
                let wrote = SharedInt(-1)
                let writer = TestThread { wrote.set(lock.tryWrite(for: .milliseconds(30), label: "timed \(revert)") { 1 } ?? 0) }
                #expect(writer.join(timeout: .seconds(10)))
                #expect(wrote.value == 0, "\(revert): tryWrite must time out behind a reader")
                #expect(lock.rawWord == LockWord.oneReader, "\(revert): \(LockWord.hex(lock.rawWord))")
                lock.unlockShared()
                #expect(lock.rawWord == 0)
            }
            // A reader and a writer timing out behind a writer.
            lock.lockExclusive(label: "holder")
            let read = SharedInt(-1), wrote = SharedInt(-1)
            let others = [
                TestThread { read.set(lock.tryRead(for: .milliseconds(30)) { 1 } ?? 0) },
                TestThread { wrote.set(lock.tryWrite(for: .milliseconds(30), label: "second") { 1 } ?? 0) },
            ]
            for other in others { #expect(other.join(timeout: .seconds(10))) }
            #expect(read.value == 0 && wrote.value == 0, "both must time out behind a writer")
            #expect(lock.rawWord == LockWord.writer)
            lock.unlockExclusive()
            #expect(lock.rawWord == 0)
            // Uncontended, the timed forms succeed at once.
            #expect(lock.tryWrite(for: .zero, label: "free") { 7 } == 7)
            #expect(lock.tryRead(for: .zero) { 8 } == 8)
            #expect(lock.rawWord == 0)
        }

        @Test func holderLabelsTidsAndWaiterCountsAreRecorded() throws {
            let lock = RwLock(name: "telemetry-test", register: false)
            let before = defib_realtime_ms()
            var snapshot = lock.snapshot()
            #expect(snapshot.name == "telemetry-test")
            #expect(snapshot.address == lock.wordAddress)
            #expect(snapshot.holder == nil && snapshot.lastHolder == nil)
            #expect(snapshot.revert == .fixed)

            lock.lockExclusive(label: "catalog.update app=shop")
            snapshot = lock.snapshot()
            let holder = try #require(snapshot.holder)
            #expect(holder.label == "catalog.update app=shop")
            #expect(holder.tid == defib_gettid())
            #expect(holder.sinceUnixMs >= before && holder.sinceUnixMs <= defib_realtime_ms())
            #expect(holder.sinceMonotonicNs <= defib_monotonic_ns())
            #expect(snapshot.word == LockWord.writer)

            // Parked waiters: two readers and a writer behind the holder.
            let waiters = [
                TestThread { lock.read {} },
                TestThread { lock.read {} },
                TestThread { lock.write(label: "catalog.update app=blog") {} },
            ]
            try #require(waitUntil(timeout: .seconds(10)) {
                let s = lock.snapshot()
                return s.readersWaiting == 2 && s.writersWaiting == 1
            })
            lock.unlockExclusive()
            for waiter in waiters { #expect(waiter.join(timeout: .seconds(10))) }
            snapshot = lock.snapshot()
            #expect(snapshot.holder == nil)
            #expect(snapshot.readersWaiting == 0 && snapshot.writersWaiting == 0)
            // The waiting writer went in after the holder left, so it is the last holder.
            let last = try #require(snapshot.lastHolder)
            #expect(last.label == "catalog.update app=blog")
            #expect(last.tid != holder.tid)
            #expect(snapshot.word == 0)

            lock.write(label: "catalog.update app=final") {}
            #expect(lock.snapshot().lastHolder?.label == "catalog.update app=final")
            #expect(lock.snapshot().lastHolder?.tid == defib_gettid())
        }

        @Test func registryListsRegisteredLocksOnly() {
            let registered = RwLock(name: "registry-test-\(defib_gettid())-yes")
            let unregistered = RwLock(name: "registry-test-\(defib_gettid())-no", register: false)
            let names = LockRegistry.shared.snapshots().map(\.name)
            #expect(names.contains(registered.name))
            #expect(!names.contains(unregistered.name))
            #expect(LockRegistry.shared.locks.contains { $0 === registered })
            var transient: RwLock? = RwLock(name: "registry-test-transient")
            #expect(LockRegistry.shared.locks.contains { $0 === transient })
            transient = nil
            #expect(!LockRegistry.shared.locks.contains { $0.name == "registry-test-transient" })
        }

        @Test func errorAndWordFormatting() {
            #expect(RwLockError.readerCountOverflow(word: 0xFFFF_FFFF_FFFF_FFFE).description
                == "reader count overflow (lock word 0xfffffffffffffffe)")
            #expect(LockWord.hex(0x1A) == "0x000000000000001a")
            #expect(LockWord.isCorrupt(0xFFFF_FFFF_FFFF_FFFE))
            #expect(LockWord.isCorrupt(0xFFFF_FFFF_FFFF_FFFF))
            #expect(!LockWord.isCorrupt(0x1A))
            #expect(!LockWord.isCorrupt(0xFFFF_FFFF_FFFF_FFF0), "no WRITER bit: just many readers")
        }
    }
}
