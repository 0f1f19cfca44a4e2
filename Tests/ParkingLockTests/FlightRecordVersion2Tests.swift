import FlightRecorder
import Testing

extension ParkingLockSuite {
    /// Format version 2's additions: the pending-writer flag, the pinned events, the read holders; and
    /// version 1 files, still read.
    @Suite struct FlightRecordVersion2 {
        static func event(_ kind: FlightRecord.EventKind, tid: Int32, word: UInt64, label: String) -> FlightRecord.Event {
            FlightRecord.Event(kind: kind, tid: tid, monotonicNs: 5_000 + UInt64(tid), unixMs: 1_700_000_000_000 + Int64(tid),
                               wordAfter: word, label: label)
        }

        static func sample() -> FlightRecord {
            let holders = [
                FlightRecord.ReadHolder(tid: 301, depth: 2, sinceMonotonicNs: 1_000, sinceUnixMs: 1_700_000_000_001),
                FlightRecord.ReadHolder(tid: 302, depth: 1, threadExited: true, sinceMonotonicNs: 2_000, sinceUnixMs: 1_700_000_000_002),
                FlightRecord.ReadHolder(tid: 303, depth: 1, sinceMonotonicNs: 3_000, sinceUnixMs: 1_700_000_000_003),
            ]
            let lock = FlightRecord.Lock(
                slot: 1, sequence: 8, name: "catalog", address: 0x7F00_0000_1000, word: 0x3B, revert: "fixed",
                holder: .init(label: "catalog.reload", tid: 77, sinceMonotonicNs: 900, sinceUnixMs: 1_700_000_000_000),
                holderWaitingForReaders: true, readersWaiting: 2, writersWaiting: 1, updatedMonotonicNs: 6_000,
                updatedUnixMs: 1_700_000_000_600, eventCount: 1,
                events: [event(.parkedWriteForReaders, tid: 77, word: 0x3A, label: "catalog.reload")],
                pinnedWriteTimeout: event(.writeTimedOut, tid: 78, word: 0xFFFF_FFFF_FFFF_FFFE, label: "catalog.update app=shop"),
                pinnedWriteWhileHoldingRead: event(.writeWhileHoldingRead, tid: 79, word: 0x10, label: "catalog.update app=blog"),
                readHolders: holders, moreReadHolders: 5)
            return FlightRecord(pid: 4100, slotCount: 2, generation: 3, locks: [lock])
        }

        @Test func roundTripKeepsThePendingWriterPinnedEventsAndReadHolders() throws {
            let record = Self.sample()
            #expect(record.version == 2)
            let decoded = try FlightRecord.decode(record.encode())
            #expect(decoded == record)
            let lock = try #require(decoded.locks.first)
            #expect(lock.holderWaitingForReaders)
            #expect(lock.readHolders?.map(\.tid) == [301, 302, 303])
            #expect(lock.readHolders?[1].threadExited == true)
            #expect(lock.moreReadHolders == 5)
            #expect(lock.pinnedWriteTimeout?.wordAfter == 0xFFFF_FFFF_FFFF_FFFE)
            #expect(lock.pinnedWriteWhileHoldingRead?.kind.description == "write-while-holding-read")
            // The ring's one event plus the two pinned ones, in time order.
            #expect(lock.allEvents.map(\.tid) == [77, 78, 79])
        }

        @Test func readHoldersPastEightRowsAreCountedNotListed() throws {
            var record = Self.sample()
            record.locks[0].readHolders = (0..<11).map { FlightRecord.ReadHolder(tid: 400 + $0, sinceMonotonicNs: UInt64($0), sinceUnixMs: 0) }
            record.locks[0].moreReadHolders = 1
            let lock = try #require(try FlightRecord.decode(record.encode()).locks.first)
            #expect(lock.readHolders?.count == FlightRecordLayout.readHolderCapacity)
            #expect(lock.readHolders?.last?.tid == 407)
            #expect(lock.moreReadHolders == 4, "3 rows that did not fit + 1")
        }

        @Test func aHolderInsideAndNoPinnedEventsDecodeAsSuch() throws {
            var record = Self.sample()
            record.locks[0].holderWaitingForReaders = false
            record.locks[0].pinnedWriteTimeout = nil
            record.locks[0].pinnedWriteWhileHoldingRead = nil
            record.locks[0].readHolders = []
            record.locks[0].moreReadHolders = 0
            let lock = try #require(try FlightRecord.decode(record.encode()).locks.first)
            #expect(!lock.holderWaitingForReaders && lock.holder != nil)
            #expect(lock.pinnedWriteTimeout == nil && lock.pinnedWriteWhileHoldingRead == nil)
            #expect(lock.readHolders == [])
        }

        @Test func aVersion1FileIsReadWithTheNewPartsUnknown() throws {
            var record = Self.sample()
            record.version = 1
            let bytes = record.encode()
            let decoded = try FlightRecord.decode(bytes)
            #expect(decoded.version == 1)
            let lock = try #require(decoded.locks.first)
            #expect(lock.holder?.label == "catalog.reload")
            #expect(!lock.holderWaitingForReaders, "version 1 recorded holders only once inside")
            #expect(lock.readHolders == nil, "not tracked, which is not the same as none")
            #expect(lock.pinnedWriteTimeout == nil && lock.pinnedWriteWhileHoldingRead == nil)
            #expect(lock.events == record.locks[0].events)
        }

        @Test func newerVersionsAndImpossibleRowCountsAreNamed() {
            var bytes = Self.sample().encode()
            bytes[FlightRecordLayout.Header.version] = 3
            let version = #expect(throws: FlightRecordError.self) { try FlightRecord.decode(bytes) }
            #expect(version?.kind == .unsupportedVersion)
            #expect(version?.description == "flight record: unsupported version: version 3, this decoder reads 1 to 2")

            var rows = Self.sample().encode()
            rows[FlightRecordLayout.slotOffset(1) + FlightRecordLayout.Slot.readHolderCount] = 9
            let malformed = #expect(throws: FlightRecordError.self) { try FlightRecord.decode(rows) }
            #expect(malformed?.kind == .malformed && malformed?.slot == 1)
            #expect(malformed?.description.contains("readHolderCount 9 above 8") == true)
        }

        @Test func aSlotCopiedWhileItsReadHoldersOrPinnedEventsChangedIsTorn() throws {
            for offset in [FlightRecordLayout.readHolderOffset(2) + FlightRecordLayout.ReadHolderField.tid,
                           FlightRecordLayout.Slot.pinnedWriteTimeout + FlightRecordLayout.EventField.wordAfter] {
                var bytes = Self.sample().encode()
                let slot = FlightRecordLayout.slotOffset(1)
                // The writer was inside (odd leading sequence) while these bytes changed.
                bytes[slot + offset] ^= 0xFF
                bytes[slot + FlightRecordLayout.Slot.seqBegin] = 9
                let torn = #expect(throws: FlightRecordError.self) { try FlightRecord.decode(bytes) }
                #expect(torn?.kind == .torn && torn?.slot == 1)
                let lenient = try FlightRecord.decode(bytes, torn: .skip)
                #expect(lenient.tornSlots == [1] && lenient.locks.isEmpty)
            }
        }

        @Test func anEmptiedSlotLeavesNoPinnedEventsOrHoldersForTheNextLock() throws {
            var bytes = Self.sample().encode()
            bytes.withUnsafeMutableBytes { raw in
                FlightRecordEncoder.writeSlotEmpty(into: raw.baseAddress! + FlightRecordLayout.slotOffset(1))
            }
            #expect(try FlightRecord.decode(bytes).locks.isEmpty)
            var reused = Self.sample()
            reused.locks[0].pinnedWriteTimeout = nil
            reused.locks[0].pinnedWriteWhileHoldingRead = nil
            reused.locks[0].readHolders = []
            reused.locks[0].moreReadHolders = 0
            // A new lock writes only its fixed part (pinned events are written when they change).
            bytes.withUnsafeMutableBytes { raw in
                FlightRecordEncoder.writeSlotFixed(reused.locks[0], into: raw.baseAddress! + FlightRecordLayout.slotOffset(1))
            }
            let lock = try #require(try FlightRecord.decode(bytes).locks.first)
            #expect(lock.pinnedWriteTimeout == nil && lock.pinnedWriteWhileHoldingRead == nil)
            #expect(lock.readHolders == [] && lock.moreReadHolders == 0)
        }
    }
}
