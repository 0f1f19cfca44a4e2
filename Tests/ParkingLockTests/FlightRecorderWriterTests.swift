import CDefibShims
import FlightRecorder
import Glibc
import ParkingLock
import Testing

/// A fresh directory under /tmp for one test.
func makeTempDirectory() throws -> String {
    var template = Array("/tmp/parkinglock-test-XXXXXX".utf8CString)
    let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
    try #require(made != nil, "mkdtemp: \(String(cString: strerror(errno)))")
    return String(cString: made!)
}

/// Removes a flat directory made by `makeTempDirectory` and the files in it.
func removeTempDirectory(_ dir: String) {
    guard let stream = opendir(dir) else { return }
    while let entry = readdir(stream) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        if name != ".", name != ".." { unlink(dir + "/" + name) }
    }
    closedir(stream)
    rmdir(dir)
}

/// A failed system call in a test helper.
struct SystemCallFailure: Error, CustomStringConvertible {
    var call: String
    var path: String
    var errno: Int32
    var description: String { "\(call)(\(path)): \(String(cString: strerror(errno)))" }
}

/// The whole file, with plain read(2) calls (which copy front to back, as the format requires).
func readWholeFile(_ path: String) throws -> [UInt8] {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { throw SystemCallFailure(call: "open", path: path, errno: errno) }
    defer { close(fd) }
    var st = stat()
    guard fstat(fd, &st) == 0 else { throw SystemCallFailure(call: "fstat", path: path, errno: errno) }
    var bytes = [UInt8](repeating: 0, count: Int(st.st_size))
    var done = 0
    while done < bytes.count {
        let n = bytes.withUnsafeMutableBytes { read(fd, $0.baseAddress! + done, $0.count - done) }
        if n < 0, errno == EINTR { continue }
        guard n > 0 else { throw SystemCallFailure(call: "read", path: path, errno: n == 0 ? EIO : errno) }
        done += n
    }
    return bytes
}

/// What a reader of the live file saw.
struct ChurnReadOutcome: Sendable {
    var good = 0
    var torn = 0
    var problems: [String] = []
    var lastGeneration: UInt64 = 0
}

extension ParkingLockSuite {
    /// The mmapped writer: file creation, what registered locks mirror into it, and consistency of
    /// reads taken while threads churn.
    @Suite(.serialized) struct FlightRecorderWriting {
        @Test func openMakesA0600FileAndRegisteredLocksMirrorIntoIt() throws {
            let dir = try makeTempDirectory()
            defer { removeTempDirectory(dir) }
            let path = dir + "/flight.rec"
            // A stale file with a looser mode: open must replace it with a 0600 one.
            let stale = open(path, O_WRONLY | O_CREAT, 0o644)
            _ = write(stale, "stale", 5)
            close(stale)

            let writer = try FlightRecorderWriter.open(path: path, slotCount: 8)
            defer { writer.close() }
            #expect(FlightRecorderWriter.current === writer)
            #expect(writer.path == path)
            var st = stat()
            #expect(stat(path, &st) == 0)
            #expect(st.st_mode & 0o777 == 0o600)
            #expect(Int(st.st_size) == FlightRecordLayout.fileSize(slotCount: 8))

            let lock = RwLock(name: "fr-catalog", revert: .buggy)
            var record = try FlightRecord.decode(readWholeFile(path))
            #expect(record.pid == getpid())
            #expect(record.slotCount == 8)
            var slot = try #require(record.locks.first { $0.name == "fr-catalog" })
            #expect(slot.address == UInt64(lock.wordAddress))
            #expect(slot.revert == "buggy")
            #expect(slot.word == 0)
            #expect(slot.holder == nil)

            try lock.write(label: "catalog.update app=shop") {
                let during = try FlightRecord.decode(readWholeFile(path))
                let held = try #require(during.locks.first { $0.name == "fr-catalog" })
                #expect(held.holder?.label == "catalog.update app=shop")
                #expect(held.holder?.tid == defib_gettid())
                #expect(held.word == LockWord.writer)
            }
            record = try FlightRecord.decode(readWholeFile(path))
            slot = try #require(record.locks.first { $0.name == "fr-catalog" })
            #expect(slot.holder == nil)
            #expect(slot.lastHolder?.label == "catalog.update app=shop")
            lock.revert = .fixed
            #expect(try FlightRecord.decode(readWholeFile(path)).locks.first { $0.name == "fr-catalog" }?.revert == "fixed")

            // A write held past the long-hold threshold is recorded when released.
            lock.longHoldThreshold = .milliseconds(20)
            lock.write(label: "catalog.reload slow") { sleepFor(.milliseconds(40)) }
            let longHold = try FlightRecord.decode(readWholeFile(path)).locks.first { $0.name == "fr-catalog" }?.events.last
            #expect(longHold?.kind == .longHold)
            #expect(longHold?.label == "catalog.reload slow")
            #expect(longHold?.tid == defib_gettid())

            // A lock that goes away frees its slot.
            var transient: RwLock? = RwLock(name: "fr-transient")
            #expect(try FlightRecord.decode(readWholeFile(path)).locks.contains { $0.name == "fr-transient" })
            _ = transient
            transient = nil
            #expect(try !FlightRecord.decode(readWholeFile(path)).locks.contains { $0.name == "fr-transient" })

            // Reopening the same path replaces the file and moves the locks to the new one.
            let second = try FlightRecorderWriter.open(path: path, slotCount: 2)
            defer { second.close() }
            #expect(FlightRecorderWriter.current === second)
            lock.write(label: "catalog.update app=after-reopen") {}
            record = try FlightRecord.decode(readWholeFile(path))
            #expect(record.slotCount == 2)
            #expect(record.locks.first { $0.name == "fr-catalog" }?.lastHolder?.label == "catalog.update app=after-reopen")
            second.close()
            #expect(FlightRecorderWriter.current == nil)
            let generation = try FlightRecord.decode(readWholeFile(path)).generation
            lock.write(label: "catalog.update app=after-close") {}
            #expect(try FlightRecord.decode(readWholeFile(path)).generation == generation, "a closed recorder was written")
        }

        @Test func theForcedRaceLeavesItsTraceInTheRecorder() throws {
            let dir = try makeTempDirectory()
            defer { removeTempDirectory(dir) }
            let path = dir + "/race.rec"
            let writer = try FlightRecorderWriter.open(path: path)
            defer { writer.close() }
            let lock = leakedLock("fr-forced", revert: .buggy, register: true)
            lock.lockShared()
            lock.timeoutGate.arm()
            let writerThread = TestThread {
                _ = lock.tryLockExclusive(for: .milliseconds(50), label: "catalog.update app=shop")
            }
            try #require(lock.timeoutGate.waitUntilReached(timeout: .seconds(10)))
            lock.unlockShared()
            try #require(writerThread.join(timeout: .seconds(10)))
            let reader = TestThread { lock.read {} }
            reader.detach()
            try #require(waitUntil(timeout: .seconds(10)) { lock.snapshot().readersWaiting == 1 })

            let record = try FlightRecord.decode(readWholeFile(path))
            let slot = try #require(record.locks.first { $0.name == "fr-forced" })
            #expect(slot.readersWaiting == 1)
            #expect(LockWord.isCorrupt(slot.word))
            let kinds = slot.events.map(\.kind)
            #expect(kinds.contains(.parkedWriteForReaders))
            #expect(kinds.contains(.parkedRead))
            let timedOut = try #require(slot.events.first { $0.kind == .writeTimedOut })
            #expect(timedOut.label == "catalog.update app=shop")
            #expect(timedOut.wordAfter == 0xFFFF_FFFF_FFFF_FFFE)
            #expect(slot.eventCount == UInt64(slot.events.count))

            #expect(throws: RwLockError.self) { try lock.readRecursive {} }
            #expect(lock.tryRead(for: .milliseconds(10)) { true } == nil)
            let later = try #require(try FlightRecord.decode(readWholeFile(path)).locks.first { $0.name == "fr-forced" })
            #expect(later.events.suffix(3).map(\.kind) == [.readerCountOverflow, .parkedRead, .readTimedOut])
        }

        @Test func locksComingAndGoingWhileRecordersOpenAndClose() async throws {
            let dir = try makeTempDirectory()
            defer { removeTempDirectory(dir) }
            let stop = Flag()
            let made = Counter()
            let churners = (0..<2).map { t in
                TestThread {
                    while !stop.isSet {
                        let lock = RwLock(name: "fr-transient-\(t)")
                        lock.write(label: "transient") {}
                        made.increment()
                    }
                }
            }
            let opened = try await onDedicatedThread {
                var opened = 0
                let end = defib_monotonic_ns() + 500_000_000
                while defib_monotonic_ns() < end {
                    let writer = try FlightRecorderWriter.open(path: dir + "/cycle.rec", slotCount: 2)
                    opened += 1
                    if opened % 2 == 0 { writer.close() }
                }
                FlightRecorderWriter.current?.close()
                return opened
            }
            stop.set()
            for churner in churners { #expect(churner.join(timeout: .seconds(10))) }
            #expect(opened > 10 && made.count > 10, "opened \(opened) recorders, made \(made.count) locks")
            #expect(FlightRecorderWriter.current == nil)
            let record = try FlightRecord.decode(readWholeFile(dir + "/cycle.rec"), torn: .skip)
            #expect(record.slotCount == 2)
        }

        @Test func openFromEnvironmentDoesNothingWhenUnset() throws {
            guard getenv(FlightRecordLayout.environmentVariable) == nil else { return }
            let before = FlightRecorderWriter.current
            #expect(try FlightRecorderWriter.openFromEnvironment() == nil)
            #expect(FlightRecorderWriter.current === before)
        }

        @Test func openErrorsNameTheCallPathAndReason() {
            let missing = #expect(throws: FlightRecorderWriterError.self) {
                try FlightRecorderWriter.open(path: "/nonexistent-dir-for-defib/x.rec")
            }
            #expect(missing?.kind == .system)
            #expect(missing?.call == "open")
            #expect(missing?.path.hasPrefix("/nonexistent-dir-for-defib/x.rec") == true)
            #expect(missing?.description.hasPrefix("open(/nonexistent-dir-for-defib/x.rec") == true)
            #expect(missing?.description.hasSuffix("): No such file or directory") == true)
            let zero = #expect(throws: FlightRecorderWriterError.self) {
                try FlightRecorderWriter.open(path: "/tmp/unused.rec", slotCount: 0)
            }
            #expect(zero?.kind == .invalidArgument)
            #expect(zero?.description.contains("slotCount") == true)
        }

        @Test func readingTheMappedFileWhileThreadsChurnNeverYieldsAnInconsistentRecord() async throws {
            let dir = try makeTempDirectory()
            defer { removeTempDirectory(dir) }
            let path = dir + "/churn.rec"
            let writer = try FlightRecorderWriter.open(path: path, slotCount: 4)
            defer { writer.close() }
            let locks = (0..<3).map { RwLock(name: "fr-churn-\($0)") }
            let addresses = Dictionary(uniqueKeysWithValues: locks.map { ($0.name, UInt64($0.wordAddress)) })
            let stop = Flag()
            var threads: [TestThread] = []
            for lock in locks {
                for _ in 0..<2 {
                    threads.append(TestThread {
                        let tid = defib_gettid()
                        var n = 0
                        while !stop.isSet {
                            n += 1
                            // The label names the thread, so a record mixing two updates shows up as a
                            // label whose tid differs from the tid stored beside it.
                            lock.write(label: "fr.churn tid=\(tid) n=\(n)") { _ = sched_yield() }
                            _ = lock.tryWrite(for: .microseconds(50), label: "fr.churn tid=\(tid) timed=\(n)") {}
                        }
                    })
                }
                threads.append(TestThread {
                    while !stop.isSet { lock.read { _ = sched_yield() } }
                })
            }

            let outcome = try await onDedicatedThread {
                var outcome = ChurnReadOutcome()
                let end = defib_monotonic_ns() + 2_000_000_000
                while defib_monotonic_ns() < end {
                    let bytes = try readWholeFile(path)
                    let record: FlightRecord
                    do {
                        record = try FlightRecord.decode(bytes)
                    } catch let error as FlightRecordError where error.kind == .torn {
                        outcome.torn += 1
                        continue
                    } catch {
                        outcome.problems.append("decode: \(error)")
                        continue
                    }
                    outcome.good += 1
                    if record.generation < outcome.lastGeneration {
                        outcome.problems.append("generation went back: \(record.generation)")
                    }
                    outcome.lastGeneration = record.generation
                    for slot in record.locks where slot.name.hasPrefix("fr-churn-") {
                        outcome.problems += Self.inconsistencies(in: slot, address: addresses[slot.name])
                    }
                }
                return outcome
            }
            stop.set()
            for thread in threads { #expect(thread.join(timeout: .seconds(10))) }
            print("flight recorder churn read: \(outcome.good) consistent reads, \(outcome.torn) torn reads rejected, "
                + "generation \(outcome.lastGeneration)")
            #expect(outcome.problems.isEmpty, "\(outcome.problems.prefix(5))")
            #expect(outcome.good >= 50, "too few consistent reads (\(outcome.good)) to mean anything")
            #expect(outcome.lastGeneration > 1000, "the writers hardly wrote: generation \(outcome.lastGeneration)")
        }

        /// What would betray a read mixing two updates of a slot.
        static func inconsistencies(in slot: FlightRecord.Lock, address: UInt64?) -> [String] {
            var problems: [String] = []
            func labelMatches(_ label: String, _ tid: Int32) -> Bool { label.hasPrefix("fr.churn tid=\(tid) ") }
            if slot.address != address { problems.append("\(slot.name): address \(slot.address)") }
            if let holder = slot.holder {
                if !labelMatches(holder.label, holder.tid) { problems.append("\(slot.name): holder \(holder)") }
                if slot.word & LockWord.writer == 0 { problems.append("\(slot.name): holder without WRITER in \(slot.word)") }
            }
            if let last = slot.lastHolder, !labelMatches(last.label, last.tid) {
                problems.append("\(slot.name): last holder \(last)")
            }
            if slot.events.count != Int(min(slot.eventCount, UInt64(FlightRecordLayout.eventCapacity))) {
                problems.append("\(slot.name): \(slot.events.count) events for count \(slot.eventCount)")
            }
            for event in slot.events {
                switch event.kind {
                case .parkedRead, .readTimedOut:
                    if !event.label.isEmpty { problems.append("\(slot.name): reader event \(event)") }
                case .parkedWrite, .parkedWriteForReaders, .writeTimedOut, .longHold:
                    if !labelMatches(event.label, event.tid) { problems.append("\(slot.name): writer event \(event)") }
                default:
                    problems.append("\(slot.name): unexpected event \(event)")
                }
            }
            return problems
        }
    }
}
