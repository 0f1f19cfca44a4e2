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

/// A thread holding a read lock, for telemetry: the same record the flight recorder keeps.
public typealias LockReadHolder = FlightRecord.ReadHolder

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
        self.name = name; self.address = address; self.word = word; self.revert = revert
        self.holder = holder; self.holderWaitingForReaders = holderWaitingForReaders; self.lastHolder = lastHolder
        self.readersWaiting = readersWaiting; self.writersWaiting = writersWaiting
        self.readHolders = readHolders; self.moreReadHolders = moreReadHolders
    }
}
