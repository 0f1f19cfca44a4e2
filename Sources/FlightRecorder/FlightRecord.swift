/// A decoded flight-record file: the header and every live lock slot.
public struct FlightRecord: Sendable, Equatable {
    /// Format version of the file.
    public var version: UInt32
    /// Pid of the process that wrote it.
    public var pid: Int32
    /// Page size of the writer.
    public var pageSize: UInt32
    /// Slots in the file (live or empty).
    public var slotCount: Int
    /// Ring entries per slot.
    public var eventCapacity: Int
    /// When the file was created (Unix ms).
    public var createdUnixMs: Int64
    /// Completed slot updates since creation; a reader can tell whether anything moved between two reads.
    public var generation: UInt64
    /// Writer's CLOCK_MONOTONIC at the last update.
    public var lastUpdateMonotonicNs: UInt64
    /// Wall clock at the last update (Unix ms).
    public var lastUpdateUnixMs: Int64
    /// The live slots, in slot order.
    public var locks: [Lock]
    /// Slots that were being written when the bytes were copied (only with `TornSlotPolicy.skip`).
    public var tornSlots: [Int]

    /// Makes a record (mostly for tests and tools that encode one).
    public init(version: UInt32 = FlightRecordLayout.version, pid: Int32, pageSize: UInt32 = 4096,
                slotCount: Int = FlightRecordLayout.defaultSlotCount,
                eventCapacity: Int = FlightRecordLayout.eventCapacity, createdUnixMs: Int64 = 0,
                generation: UInt64 = 0, lastUpdateMonotonicNs: UInt64 = 0, lastUpdateUnixMs: Int64 = 0,
                locks: [Lock] = [], tornSlots: [Int] = []) {
        self.version = version
        self.pid = pid
        self.pageSize = pageSize
        self.slotCount = slotCount
        self.eventCapacity = eventCapacity
        self.createdUnixMs = createdUnixMs
        self.generation = generation
        self.lastUpdateMonotonicNs = lastUpdateMonotonicNs
        self.lastUpdateUnixMs = lastUpdateUnixMs
        self.locks = locks
        self.tornSlots = tornSlots
    }

    /// One lock's slot.
    public struct Lock: Sendable, Equatable {
        /// Index of the slot in the file.
        public var slot: Int
        /// The slot's (even) seqlock sequence when it was read; it grows by 2 per update.
        public var sequence: UInt64
        /// The lock's name.
        public var name: String
        /// Address of the lock's 64-bit word in the writer's address space.
        public var address: UInt64
        /// The lock word as of the last update (read `address` for the live value).
        public var word: UInt64
        /// The timeout-revert strategy: "fixed", "buggy", or "unknown(N)".
        public var revert: String
        /// The current write holder, if any: a writer that owns WRITER, inside the lock or (see
        /// `holderWaitingForReaders`) still waiting for the readers to leave.
        public var holder: Holder?
        /// True when `holder` owns WRITER but waits for readers still inside (parked on address + 1);
        /// its `since` is when it took WRITER. False when it is inside (or there is no holder).
        public var holderWaitingForReaders: Bool
        /// The previous write holder, if any.
        public var lastHolder: Holder?
        /// Readers parked on the lock.
        public var readersWaiting: UInt32
        /// Writers parked on the lock.
        public var writersWaiting: UInt32
        /// Writer's CLOCK_MONOTONIC at this slot's last update.
        public var updatedMonotonicNs: UInt64
        /// Wall clock at this slot's last update (Unix ms).
        public var updatedUnixMs: Int64
        /// Events ever recorded for this lock (the ring keeps the last `eventCapacity`).
        public var eventCount: UInt64
        /// The events still in the ring, oldest first.
        public var events: [Event]
        /// The `write-timed-out` event kept outside the ring, never evicted: the first one whose
        /// revert left a corrupted word (the moment of a parking_lot corruption), else the latest one.
        /// Nil in a version 1 file.
        public var pinnedWriteTimeout: Event?
        /// The latest `write-while-holding-read` event (a self-deadlock's signature), kept outside the
        /// ring. Nil in a version 1 file.
        public var pinnedWriteWhileHoldingRead: Event?
        /// Threads holding a read lock, oldest hold first, at most `FlightRecordLayout.readHolderCapacity`;
        /// nil in a version 1 file (which did not track them).
        public var readHolders: [ReadHolder]?
        /// Read holds not in `readHolders`: threads past the listed ones, plus reads counted in the
        /// word that no thread's row accounts for.
        public var moreReadHolders: UInt32

        /// Makes a slot record.
        public init(slot: Int, sequence: UInt64 = 0, name: String, address: UInt64, word: UInt64,
                    revert: String = "fixed", holder: Holder? = nil, holderWaitingForReaders: Bool = false,
                    lastHolder: Holder? = nil,
                    readersWaiting: UInt32 = 0, writersWaiting: UInt32 = 0, updatedMonotonicNs: UInt64 = 0,
                    updatedUnixMs: Int64 = 0, eventCount: UInt64 = 0, events: [Event] = [],
                    pinnedWriteTimeout: Event? = nil, pinnedWriteWhileHoldingRead: Event? = nil,
                    readHolders: [ReadHolder]? = [], moreReadHolders: UInt32 = 0) {
            self.slot = slot
            self.sequence = sequence
            self.name = name
            self.address = address
            self.word = word
            self.revert = revert
            self.holder = holder
            self.holderWaitingForReaders = holderWaitingForReaders
            self.lastHolder = lastHolder
            self.readersWaiting = readersWaiting
            self.writersWaiting = writersWaiting
            self.updatedMonotonicNs = updatedMonotonicNs
            self.updatedUnixMs = updatedUnixMs
            self.eventCount = eventCount
            self.events = events
            self.pinnedWriteTimeout = pinnedWriteTimeout
            self.pinnedWriteWhileHoldingRead = pinnedWriteWhileHoldingRead
            self.readHolders = readHolders
            self.moreReadHolders = moreReadHolders
        }

        /// The ring's events plus the pinned ones that the ring no longer holds, oldest first.
        public var allEvents: [Event] {
            var all = events
            for pinned in [pinnedWriteTimeout, pinnedWriteWhileHoldingRead].compactMap({ $0 }) where !all.contains(pinned) {
                all.append(pinned)
            }
            return all.sorted { $0.monotonicNs < $1.monotonicNs }
        }
    }

    /// A thread holding a read lock, as recorded.
    public struct ReadHolder: Sendable, Equatable {
        /// Kernel thread id of the holder.
        public var tid: Int32
        /// Read locks this thread holds on the lock (recursive depth).
        public var depth: UInt16
        /// The thread has exited while holding the read lock: nobody can ever release it.
        public var threadExited: Bool
        /// CLOCK_MONOTONIC (coarse: a few ms resolution) when the thread took its first read lock.
        public var sinceMonotonicNs: UInt64
        /// Wall clock when the thread took its first read lock (Unix ms), derived from the monotonic time.
        public var sinceUnixMs: Int64

        /// Makes a read-holder record.
        public init(tid: Int32, depth: UInt16 = 1, threadExited: Bool = false, sinceMonotonicNs: UInt64, sinceUnixMs: Int64) {
            self.tid = tid
            self.depth = depth
            self.threadExited = threadExited
            self.sinceMonotonicNs = sinceMonotonicNs
            self.sinceUnixMs = sinceUnixMs
        }
    }

    /// A write holder as recorded.
    public struct Holder: Sendable, Equatable {
        /// What the holder was doing, with context (e.g. "catalog.update app=shop").
        public var label: String
        /// Kernel thread id of the holder.
        public var tid: Int32
        /// CLOCK_MONOTONIC when it took the lock.
        public var sinceMonotonicNs: UInt64
        /// Wall clock when it took the lock (Unix ms).
        public var sinceUnixMs: Int64

        /// Makes a holder record.
        public init(label: String, tid: Int32, sinceMonotonicNs: UInt64, sinceUnixMs: Int64) {
            self.label = label
            self.tid = tid
            self.sinceMonotonicNs = sinceMonotonicNs
            self.sinceUnixMs = sinceUnixMs
        }
    }

    /// One slow-lock event.
    public struct Event: Sendable, Equatable {
        /// What happened.
        public var kind: EventKind
        /// Kernel thread id of the thread it happened to.
        public var tid: Int32
        /// CLOCK_MONOTONIC of the event.
        public var monotonicNs: UInt64
        /// Wall clock of the event (Unix ms).
        public var unixMs: Int64
        /// The lock word right after the event.
        public var wordAfter: UInt64
        /// The write label involved, or "" for readers.
        public var label: String

        /// Makes an event record.
        public init(kind: EventKind, tid: Int32, monotonicNs: UInt64, unixMs: Int64, wordAfter: UInt64, label: String) {
            self.kind = kind
            self.tid = tid
            self.monotonicNs = monotonicNs
            self.unixMs = unixMs
            self.wordAfter = wordAfter
            self.label = label
        }
    }

    /// The kind of a slow-lock event. Unknown codes from a newer writer decode as themselves.
    public struct EventKind: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
        /// The on-disk code.
        public var rawValue: UInt16
        /// Wraps a code.
        public init(rawValue: UInt16) { self.rawValue = rawValue }

        /// A reader found a writer and parked on the lock's main queue.
        public static let parkedRead = EventKind(rawValue: 1)
        /// A writer found the lock taken and parked on the main queue.
        public static let parkedWrite = EventKind(rawValue: 2)
        /// A writer holding WRITER parked waiting for readers to leave (queue address+1).
        public static let parkedWriteForReaders = EventKind(rawValue: 3)
        /// A timed writer gave up and reverted its bits.
        public static let writeTimedOut = EventKind(rawValue: 4)
        /// A timed reader gave up.
        public static let readTimedOut = EventKind(rawValue: 5)
        /// A write lock was held longer than the lock's long-hold threshold (recorded at release).
        public static let longHold = EventKind(rawValue: 6)
        /// A recursive read found the reader count full.
        public static let readerCountOverflow = EventKind(rawValue: 7)
        /// A thread asked for the write lock while holding a read lock on the same lock: it waits for
        /// itself (a self-deadlock with `write`, a certain timeout with `tryWrite`). Format version 2.
        public static let writeWhileHoldingRead = EventKind(rawValue: 8)

        /// The kind's name as used in FORMAT.md, e.g. "parked-read".
        public var description: String {
            switch rawValue {
            case 1: "parked-read"
            case 2: "parked-write"
            case 3: "parked-write-for-readers"
            case 4: "write-timed-out"
            case 5: "read-timed-out"
            case 6: "long-hold"
            case 7: "reader-count-overflow"
            case 8: "write-while-holding-read"
            default: "unknown(\(rawValue))"
            }
        }
    }

    /// What `decode` does with a slot whose seqlock shows it was copied mid-write.
    public enum TornSlotPolicy: Sendable {
        /// Throw `FlightRecordError` of kind `.torn` (read again).
        case reject
        /// Leave the slot out and list its index in `tornSlots`.
        case skip
    }
}

/// Why a flight record could not be decoded.
public struct FlightRecordError: Error, Equatable, CustomStringConvertible {
    /// The class of failure.
    public enum Kind: String, Sendable {
        /// The file does not start with "DEFIBFLR" (or is still being created).
        case badMagic
        /// A format version this decoder does not read.
        case unsupportedVersion
        /// Fewer bytes than the header says the file has.
        case truncated
        /// The header or a slot was copied while being written; read again.
        case torn
        /// A field holds an impossible value.
        case malformed
    }

    /// The class of failure.
    public var kind: Kind
    /// The slot involved (nil for the header).
    public var slot: Int?
    /// What was found, naming the field and value.
    public var detail: String

    /// Makes an error.
    public init(kind: Kind, slot: Int? = nil, detail: String) {
        self.kind = kind
        self.slot = slot
        self.detail = detail
    }

    /// "flight record: <kind>: <detail>".
    public var description: String {
        let kindText: String = switch kind {
        case .badMagic: "bad magic"
        case .unsupportedVersion: "unsupported version"
        case .truncated: "truncated"
        case .torn: "torn read"
        case .malformed: "malformed"
        }
        return "flight record: \(kindText): \(detail)"
    }
}
