import CDefibShims
import FlightRecorder
import Synchronization

/// Telemetry guarded by the lock's telemetry mutex. That mutex is a leaf (nothing blocks while holding
/// it), taken only on write acquire/release, slow paths and snapshots, never on the read fast path.
struct Telemetry {
    var holder: LockHolder?
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

    init(writer: FlightRecorderWriter, index: Int) {
        self.writer = writer
        self.index = index
    }
}

extension RwLock {
    /// The lock's state now, read without taking the lock (only its telemetry mutex, which is never
    /// held across a wait), so it works while the lock itself is wedged.
    public func snapshot() -> LockSnapshot {
        let (holder, lastHolder) = telemetry.withLock { ($0.holder, $0.lastHolder) }
        return LockSnapshot(name: name, address: wordAddress, word: rawWord, revert: revert, holder: holder,
                            lastHolder: lastHolder, readersWaiting: readersParked.load(ordering: .relaxed),
                            writersWaiting: writersParked.load(ordering: .relaxed))
    }

    func didAcquireWrite(label: String) {
        let holder = LockHolder(label: label, tid: defib_lock_tid(), sinceMonotonicNs: defib_monotonic_ns(),
                                sinceUnixMs: defib_realtime_ms())
        telemetry.withLock { t in
            t.holder = holder
            writeSlot(&t, event: nil)
        }
    }

    func willReleaseWrite() {
        let threshold = longHoldNs.load(ordering: .relaxed)
        telemetry.withLock { t in
            guard let holder = t.holder else { return }
            t.lastHolder = holder
            t.holder = nil
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

    /// Rewrites the slot (fixed part, plus `event` in the ring). Call with the telemetry mutex held.
    private func writeSlot(_ t: inout Telemetry, event: FlightRecord.Event?) {
        guard let slot = t.slot else { return }
        var ordinal: UInt64?
        if event != nil {
            ordinal = slot.eventCount
            slot.eventCount += 1
        }
        let image = FlightRecord.Lock(
            slot: slot.index, name: name, address: UInt64(wordAddress), word: rawWord, revert: revert.rawValue,
            holder: t.holder.map(Self.recorded), lastHolder: t.lastHolder.map(Self.recorded),
            readersWaiting: UInt32(clamping: readersParked.load(ordering: .relaxed)),
            writersWaiting: UInt32(clamping: writersParked.load(ordering: .relaxed)),
            updatedMonotonicNs: defib_monotonic_ns(), updatedUnixMs: defib_realtime_ms(),
            eventCount: slot.eventCount)
        slot.writer.writeSlot(slot.index, image: image, event: event.map { ($0, ordinal!) })
    }

    private static func recorded(_ h: LockHolder) -> FlightRecord.Holder {
        FlightRecord.Holder(label: h.label, tid: h.tid, sinceMonotonicNs: h.sinceMonotonicNs, sinceUnixMs: h.sinceUnixMs)
    }

}
