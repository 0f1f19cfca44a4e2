import CDefibShims
import FlightRecorder
import Glibc
import ParkingLock
import Synchronization
import Testing

/// Thread ids collected from worker threads.
final class TidList: Sendable {
    private let tids = Mutex<[Int32]>([])
    func append(_ tid: Int32) { tids.withLock { $0.append(tid) } }
    var all: [Int32] { tids.withLock { $0 } }
}

/// The slot named `name` in the recorder file at `path`.
func recordedSlot(_ path: String, _ name: String) throws -> FlightRecord.Lock {
    let record = try FlightRecord.decode(readWholeFile(path))
    return try #require(record.locks.first { $0.name == name }, "no slot for \(name)")
}

extension ParkingLockSuite {
    /// The telemetry that tells a leaked read lock from a self-deadlock: the pending writer, the
    /// write-while-holding-read event, the read holders, and the events pinned outside the ring.
    @Suite(.serialized) struct LockEvidence {
        @Test func aWriterWaitingForReadersIsThePendingHolderThenTheHolder() throws {
            let lock = RwLock(name: "pending-test", register: false)
            lock.lockShared()
            let writerTid = SharedInt(0)
            let insideSnapshot = Mutex<LockSnapshot?>(nil)
            let writer = TestThread {
                writerTid.set(Int(defib_gettid()))
                lock.write(label: "catalog.reload") { insideSnapshot.withLock { $0 = lock.snapshot() } }
            }
            // 1 reader, WRITER, WRITER_PARKED: the writer owns WRITER and sleeps waiting for us.
            try #require(waitUntil(timeout: .seconds(10)) { lock.rawWord == 0x1A })
            var snapshot = lock.snapshot()
            #expect(snapshot.holderWaitingForReaders)
            #expect(snapshot.holder?.label == "catalog.reload")
            #expect(snapshot.holder?.tid == Int32(writerTid.value))
            #expect(snapshot.readHolders.map(\.tid) == [defib_gettid()])
            #expect(snapshot.readHolders.first?.depth == 1)
            #expect(snapshot.readHolders.first?.threadExited == false)
            #expect(snapshot.moreReadHolders == 0)
            lock.unlockShared()
            try #require(writer.join(timeout: .seconds(10)))
            // Inside, the same writer is the holder and no longer waiting.
            let inside = try #require(insideSnapshot.withLock { $0 })
            #expect(inside.holder?.tid == Int32(writerTid.value) && !inside.holderWaitingForReaders)
            #expect(inside.readHolders.isEmpty)
            snapshot = lock.snapshot()
            #expect(snapshot.holder == nil && !snapshot.holderWaitingForReaders)
            #expect(snapshot.lastHolder?.label == "catalog.reload")
            #expect(snapshot.readHolders.isEmpty && snapshot.moreReadHolders == 0)
            #expect(lock.rawWord == 0)
        }

        @Test(arguments: RevertStrategy.allCases)
        func aTimedWriterThatGivesUpStopsBeingTheHolder(revert: RevertStrategy) throws {
            let lock = RwLock(name: "pending-timeout-\(revert)", revert: revert, register: false)
            lock.lockShared()
            let wrote = SharedInt(-1)
            let writer = TestThread { wrote.set(lock.tryWrite(for: .milliseconds(300), label: "catalog.update") { 1 } ?? 0) }
            try #require(waitUntil(timeout: .seconds(10)) { lock.snapshot().holderWaitingForReaders })
            #expect(lock.snapshot().holder?.label == "catalog.update")
            try #require(writer.join(timeout: .seconds(10)))
            #expect(wrote.value == 0)
            let after = lock.snapshot()
            #expect(after.holder == nil && !after.holderWaitingForReaders)
            #expect(after.lastHolder == nil, "it never held the lock")
            #expect(lock.rawWord == LockWord.oneReader)
            lock.unlockShared()
        }

        @Test func aWriteAskedWhileHoldingTheReadLockIsRecordedAndDeadlocksAsParkingLotWould() throws {
            let dir = try makeTempDirectory()
            defer { removeTempDirectory(dir) }
            let path = dir + "/self-deadlock.rec"
            let writer = try FlightRecorderWriter.open(path: path)
            defer { writer.close() }
            let lock = leakedLock("fr-guard-across-else", revert: .fixed, register: true)
            let tid = SharedInt(0)
            // `if let x = lock.read().get(k) { … } else { lock.write(…) }` with the guard alive in the else arm.
            let stuck = TestThread {
                tid.set(Int(defib_gettid()))
                lock.lockShared()
                lock.lockExclusive(label: "catalog.update app=shop machine=defib-fault")
                lock.unlockExclusive()
                lock.unlockShared()
            }
            stuck.detach()
            try #require(waitUntil(timeout: .seconds(10)) { lock.rawWord == 0x1A })
            let me = Int32(tid.value)
            let snapshot = lock.snapshot()
            #expect(snapshot.holder?.tid == me && snapshot.holderWaitingForReaders, "the pending writer is the stuck thread")
            #expect(snapshot.readHolders.map(\.tid) == [me], "… and so is the only reader it waits for")
            sleepFor(.milliseconds(200))
            #expect(!stuck.isFinished, "faithful to parking_lot: the thread waits for itself forever")

            var slot = try recordedSlot(path, "fr-guard-across-else")
            let event = try #require(slot.events.first { $0.kind == .writeWhileHoldingRead })
            #expect(event.tid == me)
            #expect(event.label == "catalog.update app=shop machine=defib-fault")
            #expect(event.wordAfter == LockWord.oneReader, "recorded as it asked, before it took WRITER")
            #expect(slot.pinnedWriteWhileHoldingRead == event)
            #expect(slot.holder?.tid == me && slot.holderWaitingForReaders)
            #expect(slot.readHolders?.map(\.tid) == [me])
            #expect(slot.events.contains { $0.kind == .parkedWriteForReaders && $0.tid == me })

            // Every reader now queues behind it; enough of them push the event out of the ring, not out of the slot.
            for _ in 0..<20 { #expect(lock.tryRead(for: .milliseconds(1)) { true } == nil) }
            slot = try recordedSlot(path, "fr-guard-across-else")
            #expect(!slot.events.contains { $0.kind == .writeWhileHoldingRead }, "the ring has moved on")
            #expect(slot.pinnedWriteWhileHoldingRead == event)
            #expect(slot.allEvents.contains(event))
        }

        @Test func aTimedWriteWhileHoldingReadTimesOutAndAnOrdinaryWriteRecordsNothing() throws {
            let dir = try makeTempDirectory()
            defer { removeTempDirectory(dir) }
            let path = dir + "/timed-self.rec"
            let writer = try FlightRecorderWriter.open(path: path)
            defer { writer.close() }
            let lock = RwLock(name: "fr-timed-self")
            let me = defib_gettid()
            lock.lockShared()
            #expect(lock.tryWrite(for: .milliseconds(30), label: "catalog.update retry") { 1 } == nil, "it waits for itself until the timeout")
            #expect(lock.rawWord == LockWord.oneReader)
            lock.unlockShared()
            #expect(lock.rawWord == 0)
            var slot = try recordedSlot(path, "fr-timed-self")
            #expect(slot.events.map(\.kind).first == .writeWhileHoldingRead)
            #expect(slot.events.contains { $0.kind == .writeTimedOut && $0.tid == me })
            #expect(slot.pinnedWriteWhileHoldingRead?.tid == me)
            #expect(slot.pinnedWriteWhileHoldingRead?.label == "catalog.update retry")
            let counted = slot.eventCount

            // Reads (nested too) fully released: the same thread's writes are ordinary.
            lock.read { lock.read {} }
            try lock.readRecursive {}
            lock.write(label: "ordinary") {}
            #expect(lock.tryWrite(for: .milliseconds(30), label: "ordinary timed") { 2 } == 2)
            slot = try recordedSlot(path, "fr-timed-self")
            #expect(slot.eventCount == counted, "no event for writes that hold no read lock: \(slot.events.suffix(3))")
            #expect(slot.readHolders == [], "rewritten by the last write")
        }

        @Test func readHoldersAreListedOldestFirstBoundedAndCleared() throws {
            let lock = RwLock(name: "holders-test", register: false)
            let release = Flag()
            let holding = Counter()
            let tids = TidList()
            func holder(depth: Int) -> TestThread {
                TestThread {
                    tids.append(defib_gettid())
                    for _ in 0..<depth { lock.lockShared() }
                    holding.increment()
                    while !release.isSet { sleepFor(.milliseconds(1)) }
                    for _ in 0..<depth { lock.unlockShared() }
                }
            }
            // The first holder, twice over, clearly older than the rest (the clock is coarse).
            var threads = [holder(depth: 2)]
            try #require(waitUntil(timeout: .seconds(10)) { holding.count == 1 })
            sleepFor(.milliseconds(30))
            threads += (0..<11).map { _ in holder(depth: 1) }
            try #require(waitUntil(timeout: .seconds(10)) { holding.count == 12 })

            let snapshot = lock.snapshot()
            #expect(LockWord.readerCount(snapshot.word) == 13)
            #expect(snapshot.readHolders.count == 8, "bounded to 8 rows")
            #expect(snapshot.moreReadHolders == 4, "and 4 more")
            #expect(Set(snapshot.readHolders.map(\.tid)).count == 8)
            #expect(snapshot.readHolders.allSatisfy { tids.all.contains($0.tid) })
            #expect(snapshot.readHolders.first?.tid == tids.all.first, "oldest first")
            #expect(snapshot.readHolders.first?.depth == 2)
            #expect(snapshot.readHolders.dropFirst().allSatisfy { $0.depth == 1 })
            let since = snapshot.readHolders.map(\.sinceMonotonicNs)
            #expect(since == since.sorted())
            #expect(since.allSatisfy { $0 <= defib_monotonic_ns() })
            let now = defib_realtime_ms()
            #expect(snapshot.readHolders.allSatisfy { $0.sinceUnixMs <= now && $0.sinceUnixMs > now - 60_000 })

            release.set()
            for thread in threads { #expect(thread.join(timeout: .seconds(10))) }
            let after = lock.snapshot()
            #expect(after.readHolders.isEmpty && after.moreReadHolders == 0)
            #expect(after.word == 0)
        }

        @Test func aThreadThatExitsHoldingAReadLockStaysListedAsExited() throws {
            let lock = leakedLock("exited-holder", revert: .fixed)
            let tid = SharedInt(0)
            let leaker = TestThread {
                tid.set(Int(defib_gettid()))
                lock.lockShared()
            }
            try #require(leaker.join(timeout: .seconds(10)))
            let holders = lock.snapshot().readHolders
            #expect(holders.count == 1)
            #expect(holders.first?.tid == Int32(tid.value))
            #expect(holders.first?.threadExited == true, "a leak nobody can release any more")
        }

        @Test func readsPastSixteenLocksOnOneThreadCountAsMore() async throws {
            // A fresh thread, so that no read hold left by another test shares its table.
            let outcome = try await onDedicatedThread { () -> [String] in
                var problems: [String] = []
                let locks = (0..<18).map { RwLock(name: "many-\($0)", register: false) }
                let me = defib_gettid()
                for lock in locks { lock.lockShared() }
                for (i, lock) in locks.enumerated() {
                    let s = lock.snapshot()
                    let tracked = i < 16
                    if s.readHolders.map(\.tid) != (tracked ? [me] : []) { problems.append("lock \(i): holders \(s.readHolders)") }
                    if s.moreReadHolders != (tracked ? 0 : 1) { problems.append("lock \(i): more \(s.moreReadHolders)") }
                }
                for lock in locks.reversed() { lock.unlockShared() }
                // The rows freed, a seventeenth lock is tracked again.
                for (i, lock) in locks.enumerated() {
                    let s = lock.snapshot()
                    if !s.readHolders.isEmpty || s.moreReadHolders != 0 || s.word != 0 { problems.append("lock \(i) after: \(s)") }
                }
                locks[17].read {
                    if locks[17].snapshot().readHolders.map(\.tid) != [me] { problems.append("lock 17 not tracked after the others left") }
                }
                return problems
            }
            #expect(outcome.isEmpty, "\(outcome)")
        }

        @Test func theCorruptingWriteTimeoutSurvivesAThousandLaterEvents() throws {
            let dir = try makeTempDirectory()
            defer { removeTempDirectory(dir) }
            let path = dir + "/sticky.rec"
            let writer = try FlightRecorderWriter.open(path: path)
            defer { writer.close() }
            let lock = leakedLock("fr-sticky", revert: .buggy, register: true)
            let writerTid = SharedInt(0)
            lock.lockShared()
            lock.timeoutGate.arm()
            let racer = TestThread {
                writerTid.set(Int(defib_gettid()))
                _ = lock.tryLockExclusive(for: .milliseconds(50), label: "catalog.update app=shop machine=m2")
            }
            try #require(lock.timeoutGate.waitUntilReached(timeout: .seconds(10)))
            lock.unlockShared()
            try #require(racer.join(timeout: .seconds(10)))
            try #require(lock.rawWord == 0xFFFF_FFFF_FFFF_FFFE)
            let corrupting = try #require(try recordedSlot(path, "fr-sticky").pinnedWriteTimeout)
            #expect(corrupting.label == "catalog.update app=shop machine=m2")
            #expect(corrupting.tid == Int32(writerTid.value))
            #expect(corrupting.wordAfter == 0xFFFF_FFFF_FFFF_FFFE)

            // Timed readers park and give up (two events each); timed writers time out on the corrupted word.
            for _ in 0..<500 { #expect(lock.tryRead(for: .zero) { true } == nil) }
            for attempt in 0..<3 { #expect(lock.tryWrite(for: .milliseconds(1), label: "catalog.update attempt=\(attempt)") { true } == nil) }
            let slot = try recordedSlot(path, "fr-sticky")
            #expect(slot.eventCount >= 1000)
            #expect(!slot.events.contains(corrupting), "long gone from the ring")
            #expect(slot.events.contains { $0.kind == .writeTimedOut && $0.label == "catalog.update attempt=2" })
            #expect(slot.pinnedWriteTimeout == corrupting, "later timeouts on the corrupted word do not replace it")
            #expect(slot.allEvents.contains(corrupting))
        }

        @Test func withoutACorruptionThePinnedTimeoutIsTheLatest() throws {
            let dir = try makeTempDirectory()
            defer { removeTempDirectory(dir) }
            let path = dir + "/latest.rec"
            let writer = try FlightRecorderWriter.open(path: path)
            defer { writer.close() }
            let lock = RwLock(name: "fr-latest")
            for label in ["first", "second"] {
                lock.lockShared()
                let t = TestThread { _ = lock.tryWrite(for: .milliseconds(20), label: label) {} }
                #expect(t.join(timeout: .seconds(10)))
                lock.unlockShared()
            }
            let slot = try recordedSlot(path, "fr-latest")
            #expect(slot.pinnedWriteTimeout?.label == "second")
            #expect(slot.pinnedWriteTimeout?.wordAfter == LockWord.oneReader, "the word right after the clean revert")
            #expect(slot.pinnedWriteWhileHoldingRead == nil)
        }

        @Test func readHolderRowsInTheLiveFileStayConsistentUnderChurn() async throws {
            let dir = try makeTempDirectory()
            defer { removeTempDirectory(dir) }
            let path = dir + "/holders-churn.rec"
            // Default slot count: locks leaked (registered) by earlier tests take slots too.
            let writer = try FlightRecorderWriter.open(path: path)
            defer { writer.close() }
            let lock = RwLock(name: "fr-holders-churn")
            try #require(try FlightRecord.decode(readWholeFile(path)).locks.contains { $0.name == "fr-holders-churn" })
            let stop = Flag()
            let readerTids = TidList()
            var threads = (0..<3).map { i in
                TestThread {
                    readerTids.append(defib_gettid())
                    while !stop.isSet {
                        lock.read {
                            // Nested reads must be recursive ones: a plain one would queue behind the writer.
                            if i == 0 { try? lock.readRecursive { _ = sched_yield() } } else { _ = sched_yield() }
                        }
                    }
                }
            }
            // A timed writer keeps the slow paths (and so the mirrored rows) going, with pauses in which
            // the file can be read whole.
            threads.append(TestThread {
                while !stop.isSet {
                    _ = lock.tryWrite(for: .microseconds(200), label: "churn writer") { _ = sched_yield() }
                    sleepFor(.microseconds(500))
                }
            })
            try #require(waitUntil(timeout: .seconds(10)) { readerTids.all.count == 3 })
            let known = Set(readerTids.all)
            let outcome = try await onDedicatedThread { () -> (good: Int, withRows: Int, problems: [String]) in
                var good = 0, withRows = 0
                var problems: [String] = []
                // A second of reads, longer (up to 10 s) on a loaded machine until the mirror has shown a read
                // holder and enough reads were consistent: the threads may get little CPU while others build.
                let start = defib_monotonic_ns()
                while defib_monotonic_ns() < start + 1_000_000_000
                        || (defib_monotonic_ns() < start + 10_000_000_000 && (withRows == 0 || good < 20)) {
                    let record: FlightRecord
                    do { record = try FlightRecord.decode(readWholeFile(path)) } catch let error as FlightRecordError where error.kind == .torn { continue }
                    guard let slot = record.locks.first(where: { $0.name == "fr-holders-churn" }) else { continue }
                    good += 1
                    let rows = slot.readHolders ?? []
                    if !rows.isEmpty { withRows += 1 }
                    for row in rows where !known.contains(row.tid) || !(1...2).contains(row.depth) || row.threadExited {
                        problems.append("row \(row)")
                    }
                    if Set(rows.map(\.tid)).count != rows.count { problems.append("duplicate rows \(rows)") }
                    if let pinned = slot.pinnedWriteTimeout, pinned.kind != .writeTimedOut || pinned.label != "churn writer" {
                        problems.append("pinned \(pinned)")
                    }
                    if slot.pinnedWriteWhileHoldingRead != nil { problems.append("write-while-holding-read without one") }
                }
                return (good, withRows, problems)
            }
            stop.set()
            for thread in threads { #expect(thread.join(timeout: .seconds(10))) }
            print("read-holder churn: \(outcome.good) consistent reads, \(outcome.withRows) showing read holders")
            #expect(outcome.problems.isEmpty, "\(outcome.problems.prefix(5))")
            #expect(outcome.good >= 20, "too few consistent reads: \(outcome.good)")
            #expect(outcome.withRows > 0, "the mirror never showed a read holder")
            #expect(lock.snapshot().readHolders.isEmpty)
        }
    }
}
