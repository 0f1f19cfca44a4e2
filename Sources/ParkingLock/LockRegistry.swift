import Synchronization

/// Every registered lock of the process, for telemetry (the control channel's `locks` command) and
/// for the flight recorder, which gives each registered lock a slot.
public final class LockRegistry: @unchecked Sendable {
    /// The process-wide registry that `RwLock(register: true)` joins.
    public static let shared = LockRegistry()

    private struct Entry {
        let id: ObjectIdentifier
        weak var lock: RwLock?
    }

    private struct State {
        var entries: [Entry] = []
        var recorder: FlightRecorderWriter?
    }

    private let state = Mutex(State())
    /// Serializes `install`, which attaches locks outside `state`.
    private let installing = Mutex(())

    private init() {}

    /// The registered locks still alive, in registration order.
    public var locks: [RwLock] {
        state.withLock { $0.entries.compactMap(\.lock) }
    }

    /// A snapshot of every registered lock.
    public func snapshots() -> [LockSnapshot] { locks.map { $0.snapshot() } }

    /// The flight recorder the registry routes telemetry to, if one is open.
    public var flightRecorder: FlightRecorderWriter? { state.withLock { $0.recorder } }

    func register(_ lock: RwLock) {
        state.withLock { s in
            s.entries.append(Entry(id: ObjectIdentifier(lock), lock: lock))
            if let recorder = s.recorder { Self.attach(lock, to: recorder) }
        }
    }

    /// Called from the lock's deinit: drop the entry and free its recorder slot. Never loads another
    /// entry's weak reference: a strong reference dropped here could run that lock's deinit, which
    /// would come back for this same mutex.
    func unregister(_ lock: RwLock) {
        let id = ObjectIdentifier(lock)
        state.withLock { s in
            guard let index = s.entries.firstIndex(where: { $0.id == id }) else { return }
            s.entries.remove(at: index)
            lock.attachRecorder(nil)
        }
    }

    /// Routes every registered lock (and every later one) to `recorder`; returns the one it replaces,
    /// which no lock writes to any more when this returns.
    func install(_ recorder: FlightRecorderWriter?) -> FlightRecorderWriter? {
        installing.withLock { _ in
            let (old, live) = state.withLock { s in
                let old = s.recorder
                s.recorder = recorder
                return (old, s.entries.compactMap(\.lock))
            }
            // Outside the state mutex: releasing `live` may run a lock's deinit, which unregisters.
            // Locks registered from here on attach themselves to `recorder` in `register`.
            for lock in live {
                if let recorder { Self.attach(lock, to: recorder) } else { lock.attachRecorder(nil) }
            }
            return old
        }
    }

    private static func attach(_ lock: RwLock, to recorder: FlightRecorderWriter) {
        // With every slot taken the lock keeps its in-memory telemetry; the header's slot count tells why.
        lock.attachRecorder(recorder.assignSlot().map { RecorderSlot(writer: recorder, index: $0) })
    }
}
