import ParkingLock
import Testing
import FlightRecorder

extension ParkingLockSuite {
    /// The interleaving of parking_lot issue 465, forced with the timeout gate: the writer times out
    /// waiting for a reader, stops at the gate, the reader unlocks, then the writer reverts.
    @Suite(.serialized) struct ForcedRace {
        /// Steps 1–4 of the spec's table, up to the writer parked at the gate. Returns the writer thread
        /// and where it will put tryLockExclusive's result.
        private func writerAtGate(_ lock: RwLock) throws -> (TestThread, SharedInt) {
            lock.lockShared()                                           // step 1
            #expect(lock.rawWord == 0x10)
            lock.timeoutGate.arm()
            let result = SharedInt(-1)
            let writer = TestThread {                        // steps 2–4
                let ok = lock.tryLockExclusive(for: .milliseconds(50), label: "catalog.update app=shop")
                result.set(ok ? 1 : 0)
            }
            try #require(lock.timeoutGate.waitUntilReached(timeout: .seconds(10)), "the writer never reached the gate")
            return (writer, result)
        }

        @Test func buggyRevertCorruptsTheWordToFFFE() throws {
            let lock = leakedLock("forced-buggy", revert: .buggy)
            let (writer, result) = try writerAtGate(lock)
            // Buggy: the timed-out callback left WRITER_PARKED set.
            #expect(lock.rawWord == 0x1A)
            lock.unlockShared()                                         // steps 5–6
            try #require(writer.join(timeout: .seconds(10)), "writer stuck after the reader unlocked")
            #expect(result.value == 0, "tryLockExclusive must report a timeout")
            #expect(lock.rawWord == 0xFFFF_FFFF_FFFF_FFFE)              // step 7
            #expect(lock.snapshot().holder == nil, "no thread holds the lock")
            #expect(lock.timeoutGate.isArmed == false, "the gate is one-shot")

            // From now on every plain read parks for good (step 8).
            let readerGotIn = Flag()
            let reader = TestThread { lock.read { readerGotIn.set() } }
            reader.detach()
            #expect(waitUntil(timeout: .seconds(5)) { lock.snapshot().readersWaiting == 1 })
            sleepFor(.milliseconds(300))
            #expect(!readerGotIn.isSet, "a reader got into a corrupted lock")
            #expect(lock.rawWord == 0xFFFF_FFFF_FFFF_FFFF)

            // A recursive read overflows the reader count instead of wrapping it.
            #expect(throws: RwLockError.readerCountOverflow(word: 0xFFFF_FFFF_FFFF_FFFF)) {
                try lock.readRecursive {}
            }
            // Timed writers and readers keep timing out.
            for attempt in 0..<4 {
                let wrote = lock.tryWrite(for: .milliseconds(20), label: "catalog.update attempt=\(attempt)") { true }
                #expect(wrote == nil)
            }
            #expect(lock.tryRead(for: .milliseconds(20)) { true } == nil)
            #expect(LockWord.isCorrupt(lock.rawWord))
            #expect(lock.snapshot().lastHolder == nil, "no write ever succeeded")
        }

        @Test func fixedRevertLeavesTheWordAtZero() throws {
            let lock = leakedLock("forced-fixed", revert: .fixed)
            let (writer, result) = try writerAtGate(lock)
            // Fixed: the timed-out callback cleared WRITER_PARKED under the queue lock.
            #expect(lock.rawWord == 0x18)
            lock.unlockShared()
            try #require(writer.join(timeout: .seconds(10)))
            #expect(result.value == 0)
            #expect(lock.rawWord == 0)
            // And the lock works.
            #expect(lock.tryRead(for: .seconds(5)) { true } == true)
            #expect(lock.tryWrite(for: .seconds(5), label: "after") { true } == true)
            #expect(lock.rawWord == 0)
        }

        @Test func revertStrategySwitchedAtRunTimeApplies() throws {
            let lock = leakedLock("forced-switched", revert: .fixed)
            lock.revert = .buggy
            #expect(lock.snapshot().revert == .buggy)
            let (writer, _) = try writerAtGate(lock)
            lock.unlockShared()
            try #require(writer.join(timeout: .seconds(10)))
            #expect(lock.rawWord == 0xFFFF_FFFF_FFFF_FFFE)
        }

        /// Variant: a reader already parked on the main queue when the writer times out.
        @Test(arguments: RevertStrategy.allCases)
        func withAReaderAlreadyParked(revert: RevertStrategy) throws {
            let lock = leakedLock("forced-parked-\(revert)", revert: revert)
            let (writer, result) = try writerAtGate(lock)
            let readerGotIn = Flag()
            let reader = TestThread { lock.read { readerGotIn.set() } }
            try #require(waitUntil(timeout: .seconds(10)) { lock.snapshot().readersWaiting == 1 })
            #expect(lock.rawWord == (revert == .buggy ? 0x1B : 0x19))
            lock.unlockShared()
            try #require(writer.join(timeout: .seconds(10)))
            #expect(result.value == 0)
            switch revert {
            case .buggy:
                // 0x0B after the unlock, 0x09 after its callback; the add lands on all ones. The woken
                // reader finds WRITER set and parks again.
                #expect(waitUntil(timeout: .seconds(5)) {
                    lock.rawWord == 0xFFFF_FFFF_FFFF_FFFF && lock.snapshot().readersWaiting == 1
                })
                sleepFor(.milliseconds(300))
                #expect(!readerGotIn.isSet)
                #expect(lock.rawWord == 0xFFFF_FFFF_FFFF_FFFF)
                reader.detach()
            case .fixed:
                #expect(reader.join(timeout: .seconds(10)), "the parked reader was never let in")
                #expect(readerGotIn.isSet)
                #expect(lock.rawWord == 0)
            }
        }
    }
}
