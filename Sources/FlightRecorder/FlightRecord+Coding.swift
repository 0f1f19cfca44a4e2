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
        put(UInt8(lock.holder != nil && lock.holderWaitingForReaders ? 1 : 0), slot, S.holderWaitingForReaders)
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

    /// Marks a slot empty (its lock is gone): the fixed part and the version 2 extras are zeroed, so a
    /// lock that gets the slot later inherits neither pinned events nor read holders. Sequences untouched.
    public static func writeSlotEmpty(into slot: UnsafeMutableRawPointer) {
        for range in [FlightRecordLayout.Slot.fixedRange, FlightRecordLayout.Slot.extrasRange] {
            (slot + range.lowerBound).initializeMemory(as: UInt8.self, repeating: 0, count: range.count)
        }
    }

    /// Writes event number `ordinal` (0-based, in recording order) into its ring position.
    public static func writeEvent(_ event: FlightRecord.Event, ordinal: UInt64, into slot: UnsafeMutableRawPointer) {
        writeEvent(event, at: slot + FlightRecordLayout.eventOffset(ordinal: ordinal))
    }

    /// Writes (or, with nil, clears) the pinned write-timed-out event (v2).
    public static func writePinnedWriteTimeout(_ event: FlightRecord.Event?, into slot: UnsafeMutableRawPointer) {
        writePinned(event, at: slot + FlightRecordLayout.Slot.pinnedWriteTimeout)
    }

    /// Writes (or, with nil, clears) the pinned write-while-holding-read event (v2).
    public static func writePinnedWriteWhileHoldingRead(_ event: FlightRecord.Event?, into slot: UnsafeMutableRawPointer) {
        writePinned(event, at: slot + FlightRecordLayout.Slot.pinnedWriteWhileHoldingRead)
    }

    /// Writes the read-holder rows (the first `readHolderCapacity` of `holders`) and their counts (v2).
    /// Holders past the capacity are added to `more`.
    public static func writeReadHolders(_ holders: [FlightRecord.ReadHolder], more: UInt32, into slot: UnsafeMutableRawPointer) {
        typealias S = FlightRecordLayout.Slot
        typealias R = FlightRecordLayout.ReadHolderField
        let rows = holders.prefix(FlightRecordLayout.readHolderCapacity)
        put(UInt32(rows.count), slot, S.readHolderCount)
        put(more &+ UInt32(clamping: holders.count - rows.count), slot, S.moreReadHolders)
        for (index, h) in rows.enumerated() {
            let p = slot + FlightRecordLayout.readHolderOffset(index)
            put(UInt32(bitPattern: h.tid), p, R.tid)
            put(h.depth, p, R.depth)
            put(UInt16(h.threadExited ? 1 : 0), p, R.flags)
            put(h.sinceMonotonicNs, p, R.sinceMonotonicNs)
            put(UInt64(bitPattern: h.sinceUnixMs), p, R.sinceUnixMs)
        }
        let unused = FlightRecordLayout.readHolderCapacity - rows.count
        (slot + FlightRecordLayout.readHolderOffset(rows.count))
            .initializeMemory(as: UInt8.self, repeating: 0, count: unused * FlightRecordLayout.readHolderSize)
    }

    static func writePinned(_ event: FlightRecord.Event?, at p: UnsafeMutableRawPointer) {
        guard let event else {
            p.initializeMemory(as: UInt8.self, repeating: 0, count: FlightRecordLayout.eventSize)
            return
        }
        writeEvent(event, at: p)
    }

    static func writeEvent(_ event: FlightRecord.Event, at p: UnsafeMutableRawPointer) {
        typealias E = FlightRecordLayout.EventField
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
                if version >= 2 {
                    FlightRecordEncoder.writePinnedWriteTimeout(lock.pinnedWriteTimeout, into: slot)
                    FlightRecordEncoder.writePinnedWriteWhileHoldingRead(lock.pinnedWriteWhileHoldingRead, into: slot)
                    FlightRecordEncoder.writeReadHolders(lock.readHolders ?? [], more: lock.moreReadHolders, into: slot)
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
        guard FlightRecordLayout.readableVersions.contains(version) else {
            let readable = FlightRecordLayout.readableVersions
            throw FlightRecordError(kind: .unsupportedVersion,
                                    detail: "version \(version), this decoder reads \(readable.lowerBound) to \(readable.upperBound)")
        }
        let headerSize = Int(reader.get(H.headerSize) as UInt32)
        let slotSize = Int(reader.get(H.slotSize) as UInt32)
        let slotCount = Int(reader.get(H.slotCount) as UInt32)
        let eventCapacity = Int(reader.get(H.eventCapacity) as UInt32)
        guard headerSize == FlightRecordLayout.headerSize else {
            throw FlightRecordError(kind: .malformed, detail: "headerSize \(headerSize), version \(version) has \(FlightRecordLayout.headerSize)")
        }
        guard slotSize == FlightRecordLayout.slotSize else {
            throw FlightRecordError(kind: .malformed, detail: "slotSize \(slotSize), version \(version) has \(FlightRecordLayout.slotSize)")
        }
        guard eventCapacity == FlightRecordLayout.eventCapacity else {
            throw FlightRecordError(kind: .malformed,
                                    detail: "eventCapacity \(eventCapacity), version \(version) has \(FlightRecordLayout.eventCapacity)")
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
                if let lock = try decodeSlot(reader, index: index, version: version) { record.locks.append(lock) }
            } catch where error.kind == .torn && torn == .skip {
                record.tornSlots.append(index)
            }
        }
        return record
    }

    static func decodeSlot(_ reader: ByteReader, index: Int, version: UInt32) throws(FlightRecordError) -> Lock? {
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
            events.append(reader.event(base + FlightRecordLayout.eventOffset(ordinal: ordinal)))
        }
        var pinnedWriteTimeout: Event?
        var pinnedWriteWhileHoldingRead: Event?
        var readHolders: [ReadHolder]?
        var moreReadHolders: UInt32 = 0
        var holderWaiting = false
        if version >= 2 {
            pinnedWriteTimeout = reader.pinnedEvent(base + S.pinnedWriteTimeout)
            pinnedWriteWhileHoldingRead = reader.pinnedEvent(base + S.pinnedWriteWhileHoldingRead)
            let count: UInt32 = reader.get(base + S.readHolderCount)
            guard count <= UInt32(FlightRecordLayout.readHolderCapacity) else {
                throw FlightRecordError(kind: .malformed, slot: index,
                                        detail: "slot \(index): readHolderCount \(count) above \(FlightRecordLayout.readHolderCapacity)")
            }
            readHolders = (0..<Int(count)).map { reader.readHolder(base + FlightRecordLayout.readHolderOffset($0)) }
            moreReadHolders = reader.get(base + S.moreReadHolders)
            holderWaiting = (reader.get(base + S.holderWaitingForReaders) as UInt8) != 0
        }
        let hasHolder = (reader.get(base + S.hasHolder) as UInt8) != 0
        return Lock(slot: index, sequence: seqBegin,
                    name: reader.string(base + S.name, capacity: FlightRecordLayout.nameCapacity),
                    address: reader.get(base + S.address), word: reader.get(base + S.word),
                    revert: FlightRecordEncoder.revertName(reader.get(base + S.revert)),
                    holder: hasHolder ? reader.holder(base + S.holder) : nil, holderWaitingForReaders: hasHolder && holderWaiting,
                    lastHolder: (reader.get(base + S.hasLastHolder) as UInt8) != 0 ? reader.holder(base + S.lastHolder) : nil,
                    readersWaiting: reader.get(base + S.readersWaiting), writersWaiting: reader.get(base + S.writersWaiting),
                    updatedMonotonicNs: reader.get(base + S.updatedMonotonicNs),
                    updatedUnixMs: Int64(bitPattern: reader.get(base + S.updatedUnixMs)),
                    eventCount: eventCount, events: events, pinnedWriteTimeout: pinnedWriteTimeout,
                    pinnedWriteWhileHoldingRead: pinnedWriteWhileHoldingRead, readHolders: readHolders,
                    moreReadHolders: moreReadHolders)
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

    func event(_ offset: Int) -> FlightRecord.Event {
        typealias E = FlightRecordLayout.EventField
        return FlightRecord.Event(kind: FlightRecord.EventKind(rawValue: get(offset + E.kind)),
                                  tid: Int32(bitPattern: get(offset + E.tid)),
                                  monotonicNs: get(offset + E.monotonicNs),
                                  unixMs: Int64(bitPattern: get(offset + E.unixMs)),
                                  wordAfter: get(offset + E.wordAfter),
                                  label: string(offset + E.label, capacity: FlightRecordLayout.labelCapacity))
    }

    /// A pinned event, or nil where its kind is 0 (none recorded).
    func pinnedEvent(_ offset: Int) -> FlightRecord.Event? {
        (get(offset + FlightRecordLayout.EventField.kind) as UInt16) == 0 ? nil : event(offset)
    }

    func readHolder(_ offset: Int) -> FlightRecord.ReadHolder {
        typealias R = FlightRecordLayout.ReadHolderField
        return FlightRecord.ReadHolder(tid: Int32(bitPattern: get(offset + R.tid)), depth: get(offset + R.depth),
                                       threadExited: (get(offset + R.flags) as UInt16) & 1 != 0,
                                       sinceMonotonicNs: get(offset + R.sinceMonotonicNs),
                                       sinceUnixMs: Int64(bitPattern: get(offset + R.sinceUnixMs)))
    }

    func holder(_ offset: Int) -> FlightRecord.Holder {
        typealias H = FlightRecordLayout.HolderField
        return FlightRecord.Holder(label: string(offset + H.label, capacity: FlightRecordLayout.labelCapacity),
                                   tid: Int32(bitPattern: get(offset + H.tid)),
                                   sinceMonotonicNs: get(offset + H.sinceMonotonicNs),
                                   sinceUnixMs: Int64(bitPattern: get(offset + H.sinceUnixMs)))
    }
}
