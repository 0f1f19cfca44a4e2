import FlightRecorder

/// How a timed writer that gives up while waiting for readers reverts its bits.
public enum RevertStrategy: String, Sendable, CaseIterable {
    /// parking_lot 0.8.0–0.12.3: one blind wrapping add of `prev &- (WRITER | WRITER_PARKED)`, with a
    /// timed-out callback that does nothing. Corrupts the word when a reader's unlock clears
    /// WRITER_PARKED in the window before the add.
    case buggy
    /// parking_lot 0.12.4: the timed-out callback clears WRITER_PARKED under the queue lock; the revert
    /// subtracts only WRITER.
    case fixed
}

/// An RwLock operation that cannot proceed.
public enum RwLockError: Error, Equatable, CustomStringConvertible {
    /// A recursive read would overflow the reader count (parking_lot panics with "RwLock reader count overflow").
    case readerCountOverflow(word: UInt64)

    /// "reader count overflow (lock word 0x…)".
    public var description: String {
        switch self {
        case .readerCountOverflow(let word): "reader count overflow (lock word \(LockWord.hex(word)))"
        }
    }
}

/// One write holder, for telemetry: the same record the flight recorder keeps (label with context such
/// as "catalog.update app=shop", gettid, CLOCK_MONOTONIC and wall clock when the lock was taken).
public typealias LockHolder = FlightRecord.Holder

/// A thread holding a read lock, for telemetry.
public struct LockReadHolder: Sendable, Equatable {
    /// Kernel thread id (gettid) of the holder.
    public var tid: Int32
    /// Read locks the thread holds on the lock (recursive depth).
    public var depth: Int
    /// CLOCK_MONOTONIC_COARSE (a few ms resolution) when the thread's first read lock was taken.
    public var sinceMonotonicNs: UInt64
    /// Wall clock of `sinceMonotonicNs` (Unix ms), derived when the snapshot was taken.
    public var sinceUnixMs: Int64
    /// The thread has exited while still holding the read lock: nobody can release it any more.
    public var threadExited: Bool

    /// Makes a read-holder record.
    public init(tid: Int32, depth: Int, sinceMonotonicNs: UInt64, sinceUnixMs: Int64, threadExited: Bool = false) {
        self.tid = tid
        self.depth = depth
        self.sinceMonotonicNs = sinceMonotonicNs
        self.sinceUnixMs = sinceUnixMs
        self.threadExited = threadExited
    }
}

/// A lock's state at one moment, read without taking the lock.
public struct LockSnapshot: Sendable, Equatable {
    /// The lock's name.
    public var name: String
    /// Address of the 64-bit lock word (stable for the lock's life).
    public var address: UInt
    /// The raw lock word.
    public var word: UInt64
    /// The timeout-revert strategy in force.
    public var revert: RevertStrategy
    /// The writer that owns WRITER: inside the lock, or still waiting for readers to leave
    /// (`holderWaitingForReaders`; then `since` is when it took WRITER).
    public var holder: LockHolder?
    /// True while `holder` owns WRITER but waits for the readers inside (a reader count and a parked
    /// writer: a leaked read lock, or a thread waiting for itself).
    public var holderWaitingForReaders: Bool
    /// The previous write holder.
    public var lastHolder: LockHolder?
    /// Readers parked on the lock.
    public var readersWaiting: Int
    /// Writers parked on the lock (on either queue).
    public var writersWaiting: Int
    /// Threads holding a read lock, oldest hold first (at most 8).
    public var readHolders: [LockReadHolder]
    /// Read holds not in `readHolders`: threads past the first 8, plus reads counted in the word that
    /// no thread's record accounts for (a thread holding more than 16 locks, or a release on another thread).
    public var moreReadHolders: Int

    /// Makes a snapshot.
    public init(name: String, address: UInt, word: UInt64, revert: RevertStrategy, holder: LockHolder?,
                holderWaitingForReaders: Bool = false, lastHolder: LockHolder?, readersWaiting: Int, writersWaiting: Int,
                readHolders: [LockReadHolder] = [], moreReadHolders: Int = 0) {
        self.name = name
        self.address = address
        self.word = word
        self.revert = revert
        self.holder = holder
        self.holderWaitingForReaders = holderWaitingForReaders
        self.lastHolder = lastHolder
        self.readersWaiting = readersWaiting
        self.writersWaiting = writersWaiting
        self.readHolders = readHolders
        self.moreReadHolders = moreReadHolders
    }
}

/// The bits of the 64-bit lock word (parking_lot's raw_rwlock.rs).
public enum LockWord {
    /// Some thread is parked in the main queue (key = word address).
    public static let parked: UInt64 = 0b0001
    /// A writer holding WRITER is parked waiting for readers (key = address + 1).
    public static let writerParked: UInt64 = 0b0010
    /// An upgradable reader holds the lock (not used by this project).
    public static let upgradable: UInt64 = 0b0100
    /// With no readers: a writer holds the lock. With readers: a writer waits for them to leave.
    public static let writer: UInt64 = 0b1000
    /// The reader count's unit; the count lives in the upper 60 bits.
    public static let oneReader: UInt64 = 0b1_0000
    /// Mask of the reader-count bits.
    public static let readersMask: UInt64 = ~0b1111

    /// Readers counted in `word`.
    public static func readerCount(_ word: UInt64) -> UInt64 { word >> 4 }

    /// A reader count no real program reaches (≥ 2^59): the signature of the timeout-revert underflow.
    public static func isCorrupt(_ word: UInt64) -> Bool {
        word & (writer | writerParked) == (writer | writerParked) && readerCount(word) >= (1 << 59)
    }

    /// "0x" and 16 hex digits.
    public static func hex(_ word: UInt64) -> String {
        let digits = String(word, radix: 16)
        return "0x" + String(repeating: "0", count: 16 - digits.count) + digits
    }
}
