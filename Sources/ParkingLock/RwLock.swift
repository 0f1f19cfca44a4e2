import CDefibShims
import FlightRecorder
import Synchronization

// A reader-writer lock that follows parking_lot 0.12's raw_rwlock.rs step for step, including the
// `try_write_for` timeout revert of 0.8.0–0.12.3 (`.buggy`) next to the 0.12.4 fix (`.fixed`).
// Two wait queues: the main one at the word's address, and one at address + 1 for the writer that
// holds WRITER and waits for the remaining readers to leave.

private let PARKED = LockWord.parked
private let WRITER_PARKED = LockWord.writerParked
private let UPGRADABLE = LockWord.upgradable
private let WRITER = LockWord.writer
private let READERS_MASK = LockWord.readersMask
private let ONE_READER = LockWord.oneReader

// Ids for the per-thread read-hold bookkeeping: never reused, so a row left by a lock that is gone
// cannot be mistaken for a hold on a new lock at the same address.
private let nextHoldID = Atomic<UInt64>(1)

// Park tokens: what a queued thread wants, added to the word by `wakeParkedThreads`.
private let TOKEN_SHARED = UInt(ONE_READER)
private let TOKEN_EXCLUSIVE = UInt(WRITER)

/// A parking_lot-faithful reader-writer lock with labelled writes and telemetry.
public final class RwLock: @unchecked Sendable {
    /// The lock's name (e.g. "catalog"), shown in snapshots and the flight recorder.
    public let name: String
    /// The fault-injection gate at the top of a writer's timed-out branch.
    public let timeoutGate = TimeoutGate()

    // The word lives in its own allocation so its address never moves: it is the parking key, and a
    // supervisor reads it there with process_vm_readv or finds it in a core.
    let word: UnsafeMutablePointer<Atomic<UInt64>>
    private let revertCode: Atomic<UInt8>
    let readersParked = Atomic<Int>(0)
    let writersParked = Atomic<Int>(0)
    let longHoldNs = Atomic<UInt64>(250_000_000)
    /// Set while a flight-recorder slot is attached, so slow paths skip the telemetry mutex otherwise.
    let recording = Atomic<Bool>(false)
    let telemetry = Mutex(Telemetry())
    /// This lock's key in the per-thread read-hold tables (CDefibShims read_holds.c).
    let holdID: UInt64

    /// Makes a lock. With `register`, it joins `LockRegistry.shared` (and gets a flight-recorder slot if one is open).
    public init(name: String, revert: RevertStrategy = .fixed, register: Bool = true) {
        self.name = name
        word = .allocate(capacity: 1)
        word.initialize(to: Atomic(0))
        revertCode = Atomic(revert == .buggy ? 1 : 0)
        holdID = nextHoldID.wrappingAdd(1, ordering: .relaxed).oldValue
        if register { LockRegistry.shared.register(self) }
    }

    deinit {
        LockRegistry.shared.unregister(self)
        word.deinitialize(count: 1)
        word.deallocate()
    }

    /// The timeout-revert strategy; switchable at run time (fault injection), atomically.
    public var revert: RevertStrategy {
        get { revertCode.load(ordering: .relaxed) == 1 ? .buggy : .fixed }
        set {
            revertCode.store(newValue == .buggy ? 1 : 0, ordering: .relaxed)
            noteChange(event: nil)
        }
    }

    /// A write held at least this long is recorded as a `long-hold` event at release. Default 250 ms.
    public var longHoldThreshold: Duration {
        get { .nanoseconds(Int64(clamping: longHoldNs.load(ordering: .relaxed))) }
        set { longHoldNs.store(newValue.clampedNanoseconds, ordering: .relaxed) }
    }

    /// Where the lock word lives: an allocation that never moves.
    public var wordAddress: UInt { UInt(bitPattern: word) }

    /// The raw lock word.
    public var rawWord: UInt64 { word.pointee.load(ordering: .acquiring) }

    private var key: UInt { UInt(bitPattern: word) }
    private var writerKey: UInt { UInt(bitPattern: word) + 1 }

    // MARK: Scoped API

    /// Runs `body` holding a read lock.
    public func read<R>(_ body: () throws -> R) rethrows -> R {
        lockShared()
        defer { unlockShared() }
        return try body()
    }

    /// Runs `body` holding a recursive read lock (which may skip ahead of a waiting writer). Throws
    /// `.readerCountOverflow` where parking_lot would panic.
    public func readRecursive<R>(_ body: () throws -> R) throws -> R {
        try lockSharedRecursive()
        defer { unlockShared() }
        return try body()
    }

    /// Runs `body` holding the write lock, recorded under `label`.
    public func write<R>(label: String, _ body: () throws -> R) rethrows -> R {
        lockExclusive(label: label)
        defer { unlockExclusive() }
        return try body()
    }

    /// Runs `body` holding the write lock if it can be had within `timeout`; nil if it timed out.
    public func tryWrite<R>(for timeout: Duration, label: String, _ body: () throws -> R) rethrows -> R? {
        guard tryLockExclusive(for: timeout, label: label) else { return nil }
        defer { unlockExclusive() }
        return try body()
    }

    /// Runs `body` holding a read lock if it can be had within `timeout`; nil if it timed out.
    public func tryRead<R>(for timeout: Duration, _ body: () throws -> R) rethrows -> R? {
        guard tryLockShared(for: timeout) else { return nil }
        defer { unlockShared() }
        return try body()
    }

    // MARK: Guard-style API

    /// Takes a read lock, parking while a writer holds or waits for the lock. Traps, as parking_lot
    /// panics, if the reader count would overflow (`lockSharedRecursive` throws instead).
    public func lockShared() {
        if tryLockSharedFast(recursive: false) {
            defib_read_hold_enter(holdID)
            return
        }
        if case .overflow(let w) = lockSharedSlow(recursive: false, deadline: nil) {
            fatalError("RwLock \(name): \(RwLockError.readerCountOverflow(word: w))")
        }
        defib_read_hold_enter(holdID)
    }

    /// Takes a read lock within `timeout`; false if it timed out. Traps like `lockShared` on overflow.
    public func tryLockShared(for timeout: Duration) -> Bool {
        if tryLockSharedFast(recursive: false) {
            defib_read_hold_enter(holdID)
            return true
        }
        switch lockSharedSlow(recursive: false, deadline: timeout.deadlineFromNow) {
        case .acquired:
            defib_read_hold_enter(holdID)
            return true
        case .timedOut:
            record(.readTimedOut, label: "")
            return false
        case .overflow(let w): fatalError("RwLock \(name): \(RwLockError.readerCountOverflow(word: w))")
        }
    }

    /// Takes a recursive read lock: allowed past a writer that is waiting for readers. Throws
    /// `.readerCountOverflow` instead of wrapping the reader count.
    public func lockSharedRecursive() throws {
        if tryLockSharedFast(recursive: true) {
            defib_read_hold_enter(holdID)
            return
        }
        if case .overflow(let w) = lockSharedSlow(recursive: true, deadline: nil) {
            record(.readerCountOverflow, label: "")
            throw RwLockError.readerCountOverflow(word: w)
        }
        defib_read_hold_enter(holdID)
    }

    /// Releases a read lock. Release it on the thread that took it (parking_lot's guards cannot move
    /// between threads either): the per-thread read-hold record is kept by the taker.
    public func unlockShared() {
        // The hold record goes first: once the word drops the reader, a waiting writer may look.
        defib_read_hold_exit(holdID)
        let state = word.pointee.wrappingSubtract(ONE_READER, ordering: .releasing).oldValue
        if state & (READERS_MASK | WRITER_PARKED) == (ONE_READER | WRITER_PARKED) {
            unlockSharedSlow()
        }
        // Only a lock with a writer in it can have one waiting at the gate: no extra load otherwise.
        if state & WRITER != 0 {
            timeoutGate.readerUnlocked()
            // A writer is parked waiting for readers that are not all gone: keep the recorder's read
            // holders current while it waits (the last reader wakes it, and it records itself then).
            if state & WRITER_PARKED != 0, state & READERS_MASK > ONE_READER { noteChange(event: nil) }
        }
    }

    /// Takes the write lock, recorded under `label`. A thread that holds a read lock on this lock
    /// deadlocks here, as with parking_lot; it is recorded (`write-while-holding-read`) first.
    public func lockExclusive(label: String) {
        noteIfHoldingRead(label: label)
        if !word.pointee.weakCompareExchange(expected: 0, desired: WRITER, successOrdering: .acquiring,
                                             failureOrdering: .relaxed).exchanged {
            let acquired = lockExclusiveSlow(deadline: nil, label: label)
            assert(acquired)
        }
        didAcquireWrite(label: label)
    }

    /// Takes the write lock within `timeout`, recorded under `label`; false if it timed out.
    public func tryLockExclusive(for timeout: Duration, label: String) -> Bool {
        noteIfHoldingRead(label: label)
        let acquired = word.pointee.weakCompareExchange(expected: 0, desired: WRITER, successOrdering: .acquiring,
                                                        failureOrdering: .relaxed).exchanged
            || lockExclusiveSlow(deadline: timeout.deadlineFromNow, label: label)
        if acquired { didAcquireWrite(label: label) }
        return acquired
    }

    /// Releases the write lock.
    public func unlockExclusive() {
        // Telemetry first: once the word is released another writer may record itself as holder.
        willReleaseWrite()
        if word.pointee.compareExchange(expected: WRITER, desired: 0, successOrdering: .releasing,
                                        failureOrdering: .relaxed).exchanged {
            return
        }
        unlockExclusiveSlow(forceFair: false)
    }

    // MARK: Slow paths (raw_rwlock.rs)

    private enum TryLock { case acquired, blocked, overflow(UInt64) }
    private enum Acquire { case acquired, timedOut, overflow(UInt64) }

    @inline(__always)
    private func tryLockSharedFast(recursive: Bool) -> Bool {
        let state = word.pointee.load(ordering: .relaxed)
        // No new reader while a writer holds or waits, except a recursive one past a writer that is
        // still waiting for readers (else it would deadlock on itself).
        if state & WRITER != 0, !recursive || state & READERS_MASK == 0 { return false }
        let (newState, overflow) = state.addingReportingOverflow(ONE_READER)
        if overflow { return false }
        return word.pointee.weakCompareExchange(expected: state, desired: newState, successOrdering: .acquiring,
                                                failureOrdering: .relaxed).exchanged
    }

    private func lockSharedSlow(recursive: Bool, deadline: UInt64?) -> Acquire {
        lockCommon(deadline: deadline, parkToken: TOKEN_SHARED, parkedKind: .parkedRead, label: "",
                   validateFlags: WRITER) { state in
            var spin = SpinWait()
            while true {
                if state & WRITER != 0, !recursive || state & READERS_MASK == 0 { return .blocked }
                let (newState, overflow) = state.addingReportingOverflow(ONE_READER)
                if overflow { return .overflow(state) }
                let (exchanged, original) = word.pointee.weakCompareExchange(
                    expected: state, desired: newState, successOrdering: .acquiring, failureOrdering: .relaxed)
                if exchanged { return .acquired }
                // Heavy contention on the reader count: leave the others some room.
                spin.spinNoYield()
                state = original
            }
        }
    }

    private func unlockSharedSlow() {
        // WRITER_PARKED was set and we were the last reader: wake the writer waiting at address + 1.
        // The callback clears WRITER_PARKED whether or not it found the writer still queued.
        ParkingLot.unparkOne(key: writerKey) { _ in
            word.pointee.bitwiseAnd(~WRITER_PARKED, ordering: .relaxed)
            return tokenNormal
        }
    }

    private func lockExclusiveSlow(deadline: UInt64?, label: String) -> Bool {
        // Step 1: take WRITER (even with threads parked).
        let step1 = lockCommon(deadline: deadline, parkToken: TOKEN_EXCLUSIVE, parkedKind: .parkedWrite, label: label,
                               validateFlags: WRITER | UPGRADABLE) { state in
            while true {
                if state & (WRITER | UPGRADABLE) != 0 { return .blocked }
                let (exchanged, original) = word.pointee.weakCompareExchange(
                    expected: state, desired: state | WRITER, successOrdering: .acquiring, failureOrdering: .relaxed)
                if exchanged { return .acquired }
                state = original
            }
        }
        guard case .acquired = step1 else {
            record(.writeTimedOut, label: label)
            return false
        }
        // Step 2: wait for the readers still inside to leave (as the lock's pending writer).
        return waitForReaders(deadline: deadline, prevValue: 0, label: label)
    }

    private func unlockExclusiveSlow(forceFair: Bool) {
        wakeParkedThreads(newState: 0) { newState, result in
            if result.unparkedThreads != 0, forceFair || result.beFair {
                // Fair unlock: keep the lock held and hand it to the woken threads.
                var handed = newState
                if result.haveMoreThreads { handed |= PARKED }
                word.pointee.store(handed, ordering: .releasing)
                return tokenHandoff
            }
            word.pointee.store(result.haveMoreThreads ? PARKED : 0, ordering: .releasing)
            return tokenNormal
        }
    }

    /// Wakes the threads parked on the main queue that can run together: all readers up to the first
    /// writer, or one writer. `newState` accumulates their tokens (the word they will hold).
    private func wakeParkedThreads(newState start: UInt64, callback: (UInt64, UnparkResult) -> UInt) {
        var newState = start
        ParkingLot.unparkFilter(key: key, filter: { token in
            let s = newState
            if s & WRITER != 0 { return .stop }
            if UInt64(token) & (UPGRADABLE | WRITER) != 0, s & UPGRADABLE != 0 { return .skip }
            newState = s + UInt64(token)
            return .unpark
        }, callback: { result in callback(newState, result) })
    }

    /// With WRITER held, waits for the readers to leave; on timeout, reverts per `revert`.
    private func waitForReaders(deadline: UInt64?, prevValue: UInt64, label: String) -> Bool {
        var spin = SpinWait()
        var state = word.pointee.load(ordering: .acquiring)
        if state & READERS_MASK != 0 { notePendingWriter(label: label) }
        while state & READERS_MASK != 0 {
            if spin.spin() {
                state = word.pointee.load(ordering: .acquiring)
                continue
            }
            if state & WRITER_PARKED == 0 {
                let (exchanged, original) = word.pointee.weakCompareExchange(
                    expected: state, desired: state | WRITER_PARKED, successOrdering: .acquiring,
                    failureOrdering: .acquiring)
                if !exchanged {
                    state = original
                    continue
                }
            }
            // One strategy for the whole attempt, so a switch mid-park cannot mix callback and revert.
            let strategy = revert
            var slept = false
            let result = ParkingLot.park(
                key: writerKey,
                validate: {
                    let s = word.pointee.load(ordering: .relaxed)
                    return s & READERS_MASK != 0 && s & WRITER_PARKED != 0
                },
                beforeSleep: {
                    slept = true
                    noteParked(.parkedWriteForReaders, label: label)
                },
                timedOut: { _, _ in
                    // 0.12.4: clear WRITER_PARKED under the queue lock (only this thread parks here).
                    // 0.8.0–0.12.3 did nothing here.
                    if strategy == .fixed { word.pointee.bitwiseAnd(~WRITER_PARKED, ordering: .relaxed) }
                },
                parkToken: TOKEN_EXCLUSIVE, deadline: deadline)
            if slept { writersParked.subtract(1, ordering: .relaxed) }
            switch result {
            case .unparked, .invalid:
                // A writer that timed out earlier may have let a reader in before we parked: re-check.
                state = word.pointee.load(ordering: .acquiring)
                continue
            case .timedOut:
                timeoutGate.writerTimedOut()
                // Release WRITER and go back to `prevValue`, waking whoever waits on WRITER.
                let delta = strategy == .buggy
                    ? prevValue &- (WRITER | WRITER_PARKED)  // assumes WRITER_PARKED is still set
                    : prevValue &- WRITER
                let old = word.pointee.wrappingAdd(delta, ordering: .relaxed).oldValue
                // The event carries the word exactly as the revert (and the wake of parked readers, which
                // clears PARKED when it wakes them all) left it, from the atomic operations' own results —
                // not a later re-read, which a woken reader re-parking would already have changed:
                // 0x…fe for the corruption, parked readers or not.
                var after = old &+ delta
                if old & PARKED != 0 {
                    wakeParkedThreads(newState: prevValue) { _, result in
                        if !result.haveMoreThreads {
                            after = word.pointee.bitwiseAnd(~PARKED, ordering: .relaxed).oldValue & ~PARKED
                        }
                        return tokenNormal
                    }
                }
                pendingWriterGaveUp(label: label, wordAfterRevert: after)
                return false
            }
        }
        return true
    }

    /// Spin, set PARKED, park on the main queue; repeat until `tryLock` succeeds or the deadline passes.
    private func lockCommon(deadline: UInt64?, parkToken: UInt, parkedKind: FlightRecord.EventKind, label: String,
                            validateFlags: UInt64, tryLock: (inout UInt64) -> TryLock) -> Acquire {
        var spin = SpinWait()
        var state = word.pointee.load(ordering: .relaxed)
        while true {
            switch tryLock(&state) {
            case .acquired: return .acquired
            case .overflow(let w): return .overflow(w)
            case .blocked: break
            }
            if state & (PARKED | WRITER_PARKED) == 0, spin.spin() {
                state = word.pointee.load(ordering: .relaxed)
                continue
            }
            if state & PARKED == 0 {
                let (exchanged, original) = word.pointee.weakCompareExchange(
                    expected: state, desired: state | PARKED, successOrdering: .relaxed, failureOrdering: .relaxed)
                if !exchanged {
                    state = original
                    continue
                }
            }
            var slept = false
            let result = ParkingLot.park(
                key: key,
                validate: {
                    let s = word.pointee.load(ordering: .relaxed)
                    return s & PARKED != 0 && s & validateFlags != 0
                },
                beforeSleep: {
                    slept = true
                    noteParked(parkedKind, label: label)
                },
                timedOut: { _, wasLastThread in
                    if wasLastThread { word.pointee.bitwiseAnd(~PARKED, ordering: .relaxed) }
                },
                parkToken: parkToken, deadline: deadline)
            if slept {
                if parkedKind == .parkedRead {
                    readersParked.subtract(1, ordering: .relaxed)
                } else {
                    writersParked.subtract(1, ordering: .relaxed)
                }
            }
            switch result {
            case .unparked(let token) where token == tokenHandoff: return .acquired
            case .unparked, .invalid: break
            case .timedOut: return .timedOut
            }
            spin.reset()
            state = word.pointee.load(ordering: .relaxed)
        }
    }
}
