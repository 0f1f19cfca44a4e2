import CDefibShims
import FlightRecorder
import Synchronization

/// Telemetry guarded by the lock's telemetry mutex. That mutex is a leaf (nothing blocks while holding
/// it), taken only on write acquire/release, slow paths and snapshots, never on the read fast path.
struct Telemetry {
    /// The writer that owns WRITER: inside, or (with `holderWaitingForReaders`) waiting for readers.
    var holder: LockHolder?
    var holderWaitingForReaders = false
    var lastHolder: LockHolder?
    /// The lock's flight-recorder slot, when a recorder is open and had a free slot.
    var slot: RecorderSlot?
}

/// A lock's slot in an open flight recorder.
/// Mutated only under the owning lock's telemetry mutex.
final class RecorderSlot: @unchecked Sendable {
    let writer: FlightRecorderWriter
    let index: Int
    /// Events recorded in this slot; the next one goes to ring position `eventCount % capacity`.
    var eventCount: UInt64 = 0
    /// The events kept outside the ring (see `FlightRecord.Lock.pinnedWriteTimeout`, `…WriteWhileHoldingRead`).
    var pinnedWriteTimeout: FlightRecord.Event?
    var pinnedWriteWhileHoldingRead: FlightRecord.Event?
    /// The pinned area must be (re)written: set when a pinned event changes, and for a fresh slot.
    var pinnedDirty = true

    init(writer: FlightRecorderWriter, index: Int) {
        self.writer = writer
        self.index = index
    }
}

extension RwLock {
    /// The lock's state now, read without taking the lock (only its telemetry mutex, which is never
    /// held across a wait), so it works while the lock itself is wedged.
    public func snapshot() -> LockSnapshot {
        let (holder, waiting, lastHolder) = telemetry.withLock { ($0.holder, $0.holderWaitingForReaders, $0.lastHolder) }
        let word = rawWord
        let (readHolders, more) = readHolders(word: word)
        var snapshot = LockSnapshot(name: name, address: wordAddress, word: word, revert: revert, holder: holder,
                                    lastHolder: lastHolder, readersWaiting: readersParked.load(ordering: .relaxed),
                                    writersWaiting: writersParked.load(ordering: .relaxed))
        snapshot.holderWaitingForReaders = holder != nil && waiting
        snapshot.readHolders = readHolders
        snapshot.moreReadHolders = more
        return snapshot
    }

    /// The threads holding a read lock on this lock, oldest first, up to `limit`; and the read holds
    /// not listed (threads past the limit, plus reads in `word`'s count that no thread row accounts for).
    func readHolders(word: UInt64, limit: Int = FlightRecordLayout.readHolderCapacity) -> ([LockReadHolder], Int) {
        // No reader counted: nothing to look for (the common case on the write path).
        if LockWord.readerCount(word) == 0 { return ([], 0) }
        var trackedDepth: UInt64 = 0
        var total = 0
        let nowMonotonic = defib_monotonic_ns()
        let nowUnixMs = defib_realtime_ms()
        let holders = withUnsafeTemporaryAllocation(of: defib_read_holder.self, capacity: limit) { rows in
            total = defib_read_holders(holdID, rows.baseAddress, limit, &trackedDepth)
            return rows.prefix(min(total, limit)).map { row in
                LockReadHolder(tid: row.tid, depth: UInt16(clamping: row.depth), threadExited: row.exited != 0, sinceMonotonicNs: row.since_ns,
                               sinceUnixMs: nowUnixMs - Int64((nowMonotonic &- min(row.since_ns, nowMonotonic)) / 1_000_000))
            }
        }
        let listed = holders.count
        // A corrupted word's reader count is not a count of anything.
        let counted = LockWord.isCorrupt(word) ? trackedDepth : LockWord.readerCount(word)
        let untracked = counted > trackedDepth ? Int(clamping: counted - trackedDepth) : 0
        return (holders, (total - listed) + untracked)
    }

    func didAcquireWrite(label: String) {
        let holder = LockHolder.callingThread(label: label)
        telemetry.withLock { t in
            t.holder = holder
            t.holderWaitingForReaders = false
            writeSlot(&t, event: nil)
        }
    }

    /// The calling thread owns WRITER and starts waiting for the readers inside: it is the lock's
    /// pending writer from now on. The recorder learns it with the next slot write: the writer's
    /// `parked-write-for-readers` event if it has to sleep, its acquisition if the readers leave first.
    func notePendingWriter(label: String) {
        let holder = LockHolder.callingThread(label: label)
        telemetry.withLock { t in
            t.holder = holder
            t.holderWaitingForReaders = true
        }
    }

    /// The pending writer timed out and reverted (WRITER is already released): it stops being the
    /// holder — unless another writer has recorded itself since — and the timeout is recorded.
    func pendingWriterGaveUp(label: String, wordAfterRevert: UInt64) {
        let tid = defib_lock_tid()
        let event = recording.load(ordering: .relaxed)
            ? FlightRecord.Event(kind: .writeTimedOut, tid: tid, monotonicNs: defib_monotonic_ns(),
                                 unixMs: defib_realtime_ms(), wordAfter: wordAfterRevert, label: label)
            : nil
        telemetry.withLock { t in
            if t.holderWaitingForReaders, t.holder?.tid == tid {
                t.holder = nil
                t.holderWaitingForReaders = false
            }
            writeSlot(&t, event: event)
        }
    }

    /// Records `write-while-holding-read` when the calling thread holds a read lock on this lock and
    /// asks for its write lock. Nothing else changes: the caller goes on to wait for itself.
    func noteIfHoldingRead(label: String) {
        guard defib_read_hold_depth(holdID) > 0 else { return }
        record(.writeWhileHoldingRead, label: label)
    }

    func willReleaseWrite() {
        let threshold = longHoldNs.load(ordering: .relaxed)
        telemetry.withLock { t in
            guard let holder = t.holder else { return }
            t.lastHolder = holder
            t.holder = nil
            t.holderWaitingForReaders = false
            var event: FlightRecord.Event?
            if t.slot != nil {
                let now = defib_monotonic_ns()
                if now &- holder.sinceMonotonicNs >= threshold {
                    event = FlightRecord.Event(kind: .longHold, tid: holder.tid, monotonicNs: now,
                                               unixMs: defib_realtime_ms(), wordAfter: rawWord, label: holder.label)
                }
            }
            writeSlot(&t, event: event)
        }
    }

    /// Counts a thread about to sleep (called after it is queued, outside the queue lock) and records it.
    func noteParked(_ kind: FlightRecord.EventKind, label: String) {
        if kind == .parkedRead {
            readersParked.add(1, ordering: .relaxed)
        } else {
            writersParked.add(1, ordering: .relaxed)
        }
        record(kind, label: label)
    }

    /// Appends a slow-lock event to the flight recorder, if one is attached.
    func record(_ kind: FlightRecord.EventKind, label: String) {
        guard recording.load(ordering: .relaxed) else { return }
        let event = FlightRecord.Event(kind: kind, tid: defib_lock_tid(), monotonicNs: defib_monotonic_ns(),
                                       unixMs: defib_realtime_ms(), wordAfter: rawWord, label: label)
        telemetry.withLock { t in writeSlot(&t, event: event) }
    }

    /// Mirrors a change that is not an event (e.g. the revert strategy) into the recorder.
    func noteChange(event: FlightRecord.Event?) {
        guard recording.load(ordering: .relaxed) else { return }
        telemetry.withLock { t in writeSlot(&t, event: event) }
    }

    /// Gives the lock a recorder slot (or takes it away with nil) and writes its current state there.
    func attachRecorder(_ slot: RecorderSlot?) {
        telemetry.withLock { t in
            if let old = t.slot { old.writer.releaseSlot(old.index) }
            t.slot = slot
            recording.store(slot != nil, ordering: .relaxed)
            writeSlot(&t, event: nil)
        }
    }

    /// Whether the lock currently writes to a slot of `writer`.
    func isAttached(to writer: FlightRecorderWriter) -> Bool {
        telemetry.withLock { $0.slot?.writer === writer }
    }

    /// Rewrites the slot (fixed part, read holders, pinned events when they changed, plus `event` in
    /// the ring). Call with the telemetry mutex held.
    private func writeSlot(_ t: inout Telemetry, event: FlightRecord.Event?) {
        guard let slot = t.slot else { return }
        var ordinal: UInt64?
        if let event {
            ordinal = slot.eventCount
            slot.eventCount += 1
            pin(event, in: slot)
        }
        let word = rawWord
        let (holders, more) = readHolders(word: word)
        let image = FlightRecord.Lock(
            slot: slot.index, name: name, address: UInt64(wordAddress), word: word, revert: revert.rawValue,
            holder: t.holder, holderWaitingForReaders: t.holderWaitingForReaders,
            lastHolder: t.lastHolder,
            readersWaiting: UInt32(clamping: readersParked.load(ordering: .relaxed)),
            writersWaiting: UInt32(clamping: writersParked.load(ordering: .relaxed)),
            updatedMonotonicNs: defib_monotonic_ns(), updatedUnixMs: defib_realtime_ms(),
            eventCount: slot.eventCount, pinnedWriteTimeout: slot.pinnedWriteTimeout,
            pinnedWriteWhileHoldingRead: slot.pinnedWriteWhileHoldingRead,
            readHolders: holders, moreReadHolders: UInt32(clamping: more))
        slot.writer.writeSlot(slot.index, image: image, event: event.map { ($0, ordinal!) }, pinned: slot.pinnedDirty)
        slot.pinnedDirty = false
    }

    /// Keeps the events the ring must not lose: the write timeout whose revert corrupted the word (once
    /// one did, later timeouts on the corrupted lock do not replace it; until then the latest), and the
    /// latest write-while-holding-read.
    private func pin(_ event: FlightRecord.Event, in slot: RecorderSlot) {
        switch event.kind {
        case .writeTimedOut:
            if let kept = slot.pinnedWriteTimeout, LockWord.isCorrupt(kept.wordAfter) { return }
            slot.pinnedWriteTimeout = event
            slot.pinnedDirty = true
        case .writeWhileHoldingRead:
            slot.pinnedWriteWhileHoldingRead = event
            slot.pinnedDirty = true
        default:
            break
        }
    }

}

extension LockHolder {
    /// The calling thread as a write holder from now on, under `label`.
    static func callingThread(label: String) -> LockHolder {
        LockHolder(label: label, tid: defib_lock_tid(), sinceMonotonicNs: defib_monotonic_ns(), sinceUnixMs: defib_realtime_ms())
    }
}
