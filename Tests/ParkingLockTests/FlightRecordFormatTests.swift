import FlightRecorder
import Testing

extension ParkingLockSuite {
    /// The pure format: encode → decode, torn slots, and each decoding error.
    @Suite struct FlightRecordFormat {
        static func sample() -> FlightRecord {
            let events = (0..<20).map { i in
                FlightRecord.Event(kind: i % 2 == 0 ? .parkedRead : .writeTimedOut, tid: Int32(100 + i),
                                   monotonicNs: UInt64(1_000 + i), unixMs: 1_700_000_000_000 + Int64(i),
                                   wordAfter: UInt64(i) << 4, label: i % 2 == 0 ? "" : "catalog.update app=\(i)")
            }
            let catalog = FlightRecord.Lock(
                slot: 0, sequence: 42, name: "catalog", address: 0x7F00_1234_5678, word: 0xFFFF_FFFF_FFFF_FFFE,
                revert: "buggy",
                holder: .init(label: "catalog.update app=shop", tid: 4123, sinceMonotonicNs: 99, sinceUnixMs: 1_700_000_000_001),
                lastHolder: .init(label: "catalog.reload", tid: 4124, sinceMonotonicNs: 98, sinceUnixMs: 1_700_000_000_000),
                readersWaiting: 3, writersWaiting: 1, updatedMonotonicNs: 5_000, updatedUnixMs: 1_700_000_000_500,
                eventCount: 20, events: events)
            let other = FlightRecord.Lock(slot: 3, sequence: 2, name: "sessions", address: 0x10, word: 0,
                                          readersWaiting: 0, writersWaiting: 0, eventCount: 0, events: [])
            return FlightRecord(pid: 4100, pageSize: 4096, slotCount: 4, createdUnixMs: 1_700_000_000_000,
                                generation: 77, lastUpdateMonotonicNs: 5_000, lastUpdateUnixMs: 1_700_000_000_500,
                                locks: [catalog, other])
        }

        @Test func roundTripKeepsEveryFieldAndTheLastEventsInOrder() throws {
            let record = Self.sample()
            let bytes = record.encode()
            #expect(bytes.count == FlightRecordLayout.fileSize(slotCount: 4))
            let decoded = try FlightRecord.decode(bytes)
            var expected = record
            // The ring keeps the last 16 of the 20 events, oldest first.
            expected.locks[0].events = Array(record.locks[0].events.suffix(FlightRecordLayout.eventCapacity))
            #expect(decoded == expected)
            #expect(decoded.locks[0].events.first?.tid == 104)
            #expect(decoded.locks[0].events.last?.label == "catalog.update app=19")
            #expect(decoded.locks.map(\.slot) == [0, 3])
        }

        @Test func longStringsAreCutAtACharacterBoundary() throws {
            var record = Self.sample()
            record.locks[0].name = String(repeating: "é", count: 40)          // 80 bytes for a 64-byte field
            record.locks[0].holder?.label = String(repeating: "ab", count: 100)
            let decoded = try FlightRecord.decode(record.encode())
            #expect(decoded.locks[0].name == String(repeating: "é", count: 32))
            #expect(decoded.locks[0].holder?.label == String(repeating: "ab", count: 64))
        }

        @Test func aSlotCopiedMidWriteIsReportedTornNeverTrusted() throws {
            var bytes = Self.sample().encode()
            let slot0 = FlightRecordLayout.slotOffset(0)
            // The writer is inside: leading sequence odd.
            bytes[slot0 + FlightRecordLayout.Slot.seqBegin] = 43
            #expect {
                _ = try FlightRecord.decode(bytes)
            } throws: { error in
                let error = error as? FlightRecordError
                return error?.kind == .torn && error?.slot == 0
            }
            let lenient = try FlightRecord.decode(bytes, torn: .skip)
            #expect(lenient.tornSlots == [0])
            #expect(lenient.locks.map(\.name) == ["sessions"])

            // Both sequences even but different: a write started and finished during the copy.
            bytes[slot0 + FlightRecordLayout.Slot.seqBegin] = 44
            #expect(throws: FlightRecordError.self) { try FlightRecord.decode(bytes) }

            // A torn header.
            var header = Self.sample().encode()
            header[FlightRecordLayout.Header.seqBegin] &+= 1
            let error = #expect(throws: FlightRecordError.self) { try FlightRecord.decode(header) }
            #expect(error?.kind == .torn && error?.slot == nil)
        }

        @Test func badMagicUnsupportedVersionAndTruncationAreNamed() {
            let good = Self.sample().encode()

            var wrongMagic = good
            wrongMagic[0] = UInt8(ascii: "X")
            let magic = #expect(throws: FlightRecordError.self) { try FlightRecord.decode(wrongMagic) }
            #expect(magic?.kind == .badMagic)
            #expect(magic?.description == "flight record: bad magic: found \"XEFIBFLR\", expected \"DEFIBFLR\"")

            let zeros = [UInt8](repeating: 0, count: good.count)
            #expect((try? FlightRecord.decode(zeros)) == nil)

            var wrongVersion = good
            wrongVersion[FlightRecordLayout.Header.version] = 9
            let version = #expect(throws: FlightRecordError.self) { try FlightRecord.decode(wrongVersion) }
            #expect(version?.kind == .unsupportedVersion)
            #expect(version?.description.contains("version 9") == true)

            let short = Array(good.prefix(FlightRecordLayout.headerSize + 100))
            let truncated = #expect(throws: FlightRecordError.self) { try FlightRecord.decode(short) }
            #expect(truncated?.kind == .truncated)
            #expect(truncated?.description.contains("4 slots need \(good.count)") == true)

            let tiny = #expect(throws: FlightRecordError.self) { try FlightRecord.decode([0x44]) }
            #expect(tiny?.kind == .truncated)

            var hugeSlotCount = good
            hugeSlotCount[FlightRecordLayout.Header.slotCount + 3] = 0x7F
            let malformed = #expect(throws: FlightRecordError.self) { try FlightRecord.decode(hugeSlotCount) }
            #expect(malformed?.kind == .malformed)
        }

        @Test func eventKindsHaveTheirFormatNames() {
            #expect(FlightRecord.EventKind.parkedRead.description == "parked-read")
            #expect(FlightRecord.EventKind.writeTimedOut.description == "write-timed-out")
            #expect(FlightRecord.EventKind.longHold.description == "long-hold")
            #expect(FlightRecord.EventKind(rawValue: 99).description == "unknown(99)")
        }
    }
}
