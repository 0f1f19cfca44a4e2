// Encoding onto raw memory (the writer's mapping or a byte array) and decoding from a byte copy.

/// Encoders for the pieces of a flight record. The writer in ParkingLock uses them on its mapping,
/// inside its own seqlock; `FlightRecord.encode()` uses them to build a whole image.
public enum FlightRecordEncoder {
    /// Writes the static header fields (everything in 8..<48 but the seqlocked block); not the magic.
    public static func writeHeaderStatics(into base: UnsafeMutableRawPointer, pid: Int32, pageSize: UInt32,
                                          slotCount: Int, createdUnixMs: Int64) {
        typealias H = FlightRecordLayout.Header
        put(FlightRecordLayout.version, base, H.version)
        put(UInt32(FlightRecordLayout.headerSize), base, H.headerSize)
        put(pageSize, base, H.pageSize)
        put(UInt32(slotCount), base, H.slotCount)
        put(UInt32(FlightRecordLayout.slotSize), base, H.slotSize)
        put(UInt32(FlightRecordLayout.eventCapacity), base, H.eventCapacity)
        put(UInt32(bitPattern: pid), base, H.pid)
        put(UInt64(bitPattern: createdUnixMs), base, H.createdUnixMs)
    }

    /// Writes the magic (last, once everything else is in place).
    public static func writeMagic(into base: UnsafeMutableRawPointer) {
        for (i, b) in FlightRecordLayout.magic.enumerated() { base.storeBytes(of: b, toByteOffset: i, as: UInt8.self) }
    }

    /// Writes the seqlocked header fields, without touching the sequences.
    public static func writeHeaderDynamic(into base: UnsafeMutableRawPointer, generation: UInt64,
                                          lastUpdateMonotonicNs: UInt64, lastUpdateUnixMs: Int64) {
        typealias H = FlightRecordLayout.Header
        put(generation, base, H.generation)
        put(lastUpdateMonotonicNs, base, H.lastUpdateMonotonicNs)
        put(UInt64(bitPattern: lastUpdateUnixMs), base, H.lastUpdateUnixMs)
    }

    /// Writes a slot's fixed part (state through last holder); not the sequences, not the ring.
    public static func writeSlotFixed(_ lock: FlightRecord.Lock, into slot: UnsafeMutableRawPointer) {
        typealias S = FlightRecordLayout.Slot
        put(UInt32(1), slot, S.state)
        put(revertCode(lock.revert), slot, S.revert)
        put(UInt8(lock.holder == nil ? 0 : 1), slot, S.hasHolder)
        put(UInt8(lock.lastHolder == nil ? 0 : 1), slot, S.hasLastHolder)
        put(UInt8(0), slot, S.hasLastHolder + 1)
        put(lock.address, slot, S.address)
        put(lock.word, slot, S.word)
        put(lock.readersWaiting, slot, S.readersWaiting)
        put(lock.writersWaiting, slot, S.writersWaiting)
        put(lock.updatedMonotonicNs, slot, S.updatedMonotonicNs)
        put(UInt64(bitPattern: lock.updatedUnixMs), slot, S.updatedUnixMs)
        put(lock.eventCount, slot, S.eventCount)
        putString(lock.name, slot + S.name, capacity: FlightRecordLayout.nameCapacity)
        writeHolder(lock.holder, into: slot + S.holder)
        writeHolder(lock.lastHolder, into: slot + S.lastHolder)
    }

    /// Marks a slot empty (its lock is gone). Sequences untouched.
    public static func writeSlotEmpty(into slot: UnsafeMutableRawPointer) {
        let fixed = FlightRecordLayout.Slot.fixedRange
        (slot + fixed.lowerBound).initializeMemory(as: UInt8.self, repeating: 0, count: fixed.count)
    }

    /// Writes event number `ordinal` (0-based, in recording order) into its ring position.
    public static func writeEvent(_ event: FlightRecord.Event, ordinal: UInt64, into slot: UnsafeMutableRawPointer) {
        typealias E = FlightRecordLayout.EventField
        let p = slot + FlightRecordLayout.eventOffset(ordinal: ordinal)
        put(event.kind.rawValue, p, E.kind)
        put(UInt16(0), p, E.kind + 2)
        put(UInt32(bitPattern: event.tid), p, E.tid)
        put(event.monotonicNs, p, E.monotonicNs)
        put(UInt64(bitPattern: event.unixMs), p, E.unixMs)
        put(event.wordAfter, p, E.wordAfter)
        putString(event.label, p + E.label, capacity: FlightRecordLayout.labelCapacity)
    }

    /// Stores a sequence value at `offset` (plain store: the writer adds its own atomics and fences).
    public static func writeSequence(_ value: UInt64, into base: UnsafeMutableRawPointer, at offset: Int) {
        put(value, base, offset)
    }

    /// The on-disk code of a revert strategy name ("fixed" 0, "buggy" 1).
    public static func revertCode(_ name: String) -> UInt8 {
        switch name {
        case "fixed": 0
        case "buggy": 1
        default:
            if name.hasPrefix("unknown("), name.hasSuffix(")"), let n = UInt8(name.dropFirst(8).dropLast()) { n } else { 255 }
        }
    }

    /// The name of a revert strategy code.
    public static func revertName(_ code: UInt8) -> String {
        switch code {
        case 0: "fixed"
        case 1: "buggy"
        default: "unknown(\(code))"
        }
    }

    static func writeHolder(_ holder: FlightRecord.Holder?, into p: UnsafeMutableRawPointer) {
        typealias H = FlightRecordLayout.HolderField
        guard let holder else {
            p.initializeMemory(as: UInt8.self, repeating: 0, count: FlightRecordLayout.holderSize)
            return
        }
        put(UInt32(bitPattern: holder.tid), p, H.tid)
        put(UInt32(0), p, H.tid + 4)
        put(holder.sinceMonotonicNs, p, H.sinceMonotonicNs)
        put(UInt64(bitPattern: holder.sinceUnixMs), p, H.sinceUnixMs)
        putString(holder.label, p + H.label, capacity: FlightRecordLayout.labelCapacity)
    }

    @inline(__always)
    static func put<T: FixedWidthInteger>(_ value: T, _ base: UnsafeMutableRawPointer, _ offset: Int) {
        base.storeBytes(of: value.littleEndian, toByteOffset: offset, as: T.self)
    }

    /// NUL-padded UTF-8, cut at a character boundary so the stored bytes are always valid UTF-8.
    static func putString(_ string: String, _ p: UnsafeMutableRawPointer, capacity: Int) {
        var n = 0
        for scalar in string.unicodeScalars {
            let width = UTF8.width(scalar)
            if n + width > capacity { break }
            for b in UTF8.encode(scalar)! { p.storeBytes(of: b, toByteOffset: n, as: UInt8.self); n += 1 }
        }
        if n < capacity { (p + n).initializeMemory(as: UInt8.self, repeating: 0, count: capacity - n) }
    }
}

extension FlightRecord {
    /// The whole file image for this record: header, then each lock in its `slot`, stable (even)
    /// sequences, events laid out in their ring positions. Locks whose `slot` is out of range are dropped.
    public func encode() -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: FlightRecordLayout.fileSize(slotCount: slotCount))
        bytes.withUnsafeMutableBytes { raw in
            let base = raw.baseAddress!
            FlightRecordEncoder.writeHeaderStatics(into: base, pid: pid, pageSize: pageSize, slotCount: slotCount,
                                                   createdUnixMs: createdUnixMs)
            FlightRecordEncoder.put(version, base, FlightRecordLayout.Header.version)
            FlightRecordEncoder.put(UInt32(eventCapacity), base, FlightRecordLayout.Header.eventCapacity)
            FlightRecordEncoder.writeHeaderDynamic(into: base, generation: generation,
                                                   lastUpdateMonotonicNs: lastUpdateMonotonicNs,
                                                   lastUpdateUnixMs: lastUpdateUnixMs)
            let headerSeq = generation &* 2
            FlightRecordEncoder.writeSequence(headerSeq, into: base, at: FlightRecordLayout.Header.seqBegin)
            FlightRecordEncoder.writeSequence(headerSeq, into: base, at: FlightRecordLayout.Header.seqEnd)
            for var lock in locks where lock.slot >= 0 && lock.slot < slotCount {
                // The ring can only hold events that were counted.
                lock.eventCount = max(lock.eventCount, UInt64(lock.events.count))
                let slot = base + FlightRecordLayout.slotOffset(lock.slot)
                FlightRecordEncoder.writeSlotFixed(lock, into: slot)
                let first = lock.eventCount - UInt64(lock.events.count)
                for (i, event) in lock.events.suffix(FlightRecordLayout.eventCapacity).enumerated() {
                    let skipped = UInt64(max(0, lock.events.count - FlightRecordLayout.eventCapacity))
                    FlightRecordEncoder.writeEvent(event, ordinal: first + skipped + UInt64(i), into: slot)
                }
                let seq = lock.sequence & ~1
                FlightRecordEncoder.writeSequence(seq, into: slot, at: FlightRecordLayout.Slot.seqBegin)
                FlightRecordEncoder.writeSequence(seq, into: slot, at: FlightRecordLayout.Slot.seqEnd)
            }
            FlightRecordEncoder.writeMagic(into: base)
        }
        return bytes
    }

    /// Decodes a copy of a flight-record file, rejecting any torn slot.
    public static func decode(_ bytes: [UInt8]) throws(FlightRecordError) -> FlightRecord {
        try decode(bytes, torn: .reject)
    }

    /// Decodes a copy of a flight-record file. Throws `FlightRecordError` for a bad magic, an
    /// unsupported version, too few bytes, an impossible field, or (per `torn`) a torn header or slot.
    public static func decode(_ bytes: [UInt8], torn: TornSlotPolicy) throws(FlightRecordError) -> FlightRecord {
        let reader = ByteReader(bytes: bytes)
        typealias H = FlightRecordLayout.Header
        let magic = FlightRecordLayout.magic
        guard bytes.count >= magic.count else {
            throw FlightRecordError(kind: .truncated, detail: "\(bytes.count) bytes, not even the \(magic.count)-byte magic")
        }
        guard Array(bytes[0..<magic.count]) == magic else {
            let found = bytes[0..<magic.count].map { b in b >= 0x20 && b < 0x7F ? String(UnicodeScalar(b)) : "." }.joined()
            throw FlightRecordError(kind: .badMagic, detail: "found \"\(found)\", expected \"DEFIBFLR\"")
        }
        guard bytes.count >= H.usedSize else {
            throw FlightRecordError(kind: .truncated, detail: "\(bytes.count) bytes, header needs \(H.usedSize)")
        }
        let version: UInt32 = reader.get(H.version)
        guard version == FlightRecordLayout.version else {
            throw FlightRecordError(kind: .unsupportedVersion,
                                    detail: "version \(version), this decoder reads \(FlightRecordLayout.version)")
        }
        let headerSize = Int(reader.get(H.headerSize) as UInt32)
        let slotSize = Int(reader.get(H.slotSize) as UInt32)
        let slotCount = Int(reader.get(H.slotCount) as UInt32)
        let eventCapacity = Int(reader.get(H.eventCapacity) as UInt32)
        guard headerSize == FlightRecordLayout.headerSize else {
            throw FlightRecordError(kind: .malformed, detail: "headerSize \(headerSize), version 1 has \(FlightRecordLayout.headerSize)")
        }
        guard slotSize == FlightRecordLayout.slotSize else {
            throw FlightRecordError(kind: .malformed, detail: "slotSize \(slotSize), version 1 has \(FlightRecordLayout.slotSize)")
        }
        guard eventCapacity == FlightRecordLayout.eventCapacity else {
            throw FlightRecordError(kind: .malformed,
                                    detail: "eventCapacity \(eventCapacity), version 1 has \(FlightRecordLayout.eventCapacity)")
        }
        guard slotCount <= FlightRecordLayout.maxSlotCount else {
            throw FlightRecordError(kind: .malformed, detail: "slotCount \(slotCount) above \(FlightRecordLayout.maxSlotCount)")
        }
        let needed = FlightRecordLayout.fileSize(slotCount: slotCount)
        guard bytes.count >= needed else {
            throw FlightRecordError(kind: .truncated, detail: "\(bytes.count) bytes, \(slotCount) slots need \(needed)")
        }
        let headerSeq: UInt64 = reader.get(H.seqBegin)
        let headerSeqEnd: UInt64 = reader.get(H.seqEnd)
        guard headerSeq & 1 == 0, headerSeq == headerSeqEnd else {
            throw FlightRecordError(kind: .torn, detail: "header sequence \(headerSeq) at begin, \(headerSeqEnd) at end")
        }
        var record = FlightRecord(
            version: version, pid: Int32(bitPattern: reader.get(H.pid)), pageSize: reader.get(H.pageSize),
            slotCount: slotCount, eventCapacity: eventCapacity,
            createdUnixMs: Int64(bitPattern: reader.get(H.createdUnixMs)), generation: reader.get(H.generation),
            lastUpdateMonotonicNs: reader.get(H.lastUpdateMonotonicNs),
            lastUpdateUnixMs: Int64(bitPattern: reader.get(H.lastUpdateUnixMs)))
        for index in 0..<slotCount {
            do {
                if let lock = try decodeSlot(reader, index: index) { record.locks.append(lock) }
            } catch where error.kind == .torn && torn == .skip {
                record.tornSlots.append(index)
            }
        }
        return record
    }

    static func decodeSlot(_ reader: ByteReader, index: Int) throws(FlightRecordError) -> Lock? {
        typealias S = FlightRecordLayout.Slot
        let base = FlightRecordLayout.slotOffset(index)
        let seqBegin: UInt64 = reader.get(base + S.seqBegin)
        let seqEnd: UInt64 = reader.get(base + S.seqEnd)
        guard seqBegin & 1 == 0, seqBegin == seqEnd else {
            throw FlightRecordError(kind: .torn, slot: index,
                                    detail: "slot \(index): sequence \(seqBegin) at begin, \(seqEnd) at end")
        }
        let state: UInt32 = reader.get(base + S.state)
        switch state {
        case 0: return nil
        case 1: break
        default: throw FlightRecordError(kind: .malformed, slot: index, detail: "slot \(index): state \(state)")
        }
        let eventCount: UInt64 = reader.get(base + S.eventCount)
        let kept = min(eventCount, UInt64(FlightRecordLayout.eventCapacity))
        var events: [Event] = []
        events.reserveCapacity(Int(kept))
        for ordinal in (eventCount - kept)..<eventCount {
            typealias E = FlightRecordLayout.EventField
            let p = base + FlightRecordLayout.eventOffset(ordinal: ordinal)
            events.append(Event(kind: EventKind(rawValue: reader.get(p + E.kind)),
                                tid: Int32(bitPattern: reader.get(p + E.tid)),
                                monotonicNs: reader.get(p + E.monotonicNs),
                                unixMs: Int64(bitPattern: reader.get(p + E.unixMs)),
                                wordAfter: reader.get(p + E.wordAfter),
                                label: reader.string(p + E.label, capacity: FlightRecordLayout.labelCapacity)))
        }
        return Lock(slot: index, sequence: seqBegin,
                    name: reader.string(base + S.name, capacity: FlightRecordLayout.nameCapacity),
                    address: reader.get(base + S.address), word: reader.get(base + S.word),
                    revert: FlightRecordEncoder.revertName(reader.get(base + S.revert)),
                    holder: (reader.get(base + S.hasHolder) as UInt8) != 0 ? reader.holder(base + S.holder) : nil,
                    lastHolder: (reader.get(base + S.hasLastHolder) as UInt8) != 0 ? reader.holder(base + S.lastHolder) : nil,
                    readersWaiting: reader.get(base + S.readersWaiting), writersWaiting: reader.get(base + S.writersWaiting),
                    updatedMonotonicNs: reader.get(base + S.updatedMonotonicNs),
                    updatedUnixMs: Int64(bitPattern: reader.get(base + S.updatedUnixMs)),
                    eventCount: eventCount, events: events)
    }
}

/// Little-endian field access on a byte copy whose length has already been checked.
struct ByteReader {
    let bytes: [UInt8]

    func get<T: FixedWidthInteger>(_ offset: Int) -> T {
        bytes.withUnsafeBytes { T(littleEndian: $0.loadUnaligned(fromByteOffset: offset, as: T.self)) }
    }

    func string(_ offset: Int, capacity: Int) -> String {
        let field = bytes[offset..<(offset + capacity)]
        let end = field.firstIndex(of: 0) ?? field.endIndex
        return String(decoding: field[field.startIndex..<end], as: UTF8.self)
    }

    func holder(_ offset: Int) -> FlightRecord.Holder {
        typealias H = FlightRecordLayout.HolderField
        return FlightRecord.Holder(label: string(offset + H.label, capacity: FlightRecordLayout.labelCapacity),
                                   tid: Int32(bitPattern: get(offset + H.tid)),
                                   sinceMonotonicNs: get(offset + H.sinceMonotonicNs),
                                   sinceUnixMs: Int64(bitPattern: get(offset + H.sinceUnixMs)))
    }
}
