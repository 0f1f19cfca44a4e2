@_exported import DefibFaults
import DefibSystem
import Glibc
import Logging
import NIOCore
import ParkingLock
import Synchronization
import FlightRecorder

extension FaultKind {
    /// Parses a kind; the error lists the known ones.
    public static func parse(_ text: String) throws(FaultError) -> FaultKind {
        guard let kind = FaultKind(rawValue: text) else { throw FaultError(kind: .unknownFault, message: "unknown fault '\(text)' (known: \(names))") }
        return kind
    }
}
/// A fault that cannot be armed.
public struct FaultError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The class of problem.
    public enum Kind: String, Sendable { case unknownFault = "unknown-fault", alreadyHung = "already-hung", unavailable }
    /// The class of problem.
    public var kind: Kind
    /// What went wrong, for the reply line.
    public var message: String
    /// The message.
    public var description: String { message }
}

/// What the control handler must do after replying to a `fault` command.
public enum FaultFollowUp: Sendable, Equatable {
    /// Nothing: the fault runs on its own threads.
    case none
    /// Terminate the process once the reply is flushed (`crash`, `exit`).
    case terminate(FaultKind)
    /// Make every event loop spin once the reply is flushed (`dead-loop`).
    case spinEventLoops
}

/// The fault currently armed, for `stats`.
public struct ArmedFault: Sendable, Equatable {
    /// Its kind.
    public var kind: FaultKind
    /// When it was armed (Unix ms).
    public var armedAtUnixMs: Int64
}

/// Arms faults against the catalog and the event loops, and remembers what was armed.
public final class FaultInjector: @unchecked Sendable {
    let catalog: Catalog
    private let updater: CatalogUpdater?
    private let logger: Logger
    private let current = Mutex<ArmedFault?>(nil)
    private let naturalRace = Mutex<NaturalRace?>(nil)

    /// `--race-churn`: kept as the natural race is, so `fault none` stops it too.
    func keepRaceChurn(_ race: NaturalRace) { naturalRace.withLock { $0?.stop(); $0 = race } }

    /// How long the `slow-holder` update blocks inside its write section.
    public static let slowHolderHold: Duration = .seconds(3600)

    /// Timeout of the staged writer in `timeout-race` (the story's `try_write_for(50 ms)`).
    public static let stagedWriterTimeout: Duration = .milliseconds(50)

    init(catalog: Catalog, updater: CatalogUpdater?, logger: Logger) {
        self.catalog = catalog; self.updater = updater; self.logger = logger
    }

    /// The armed fault, if any.
    public var armed: ArmedFault? { current.withLock { $0 } }

    /// Arms `kind`. Returns the reply line and what to do after sending it.
    /// `holdFor` bounds the `slow-holder` update's hold (a stall rather than a hang); nil = `slowHolderHold`.
    public func arm(_ kind: FaultKind, holdFor: Duration? = nil) -> (reply: String, followUp: FaultFollowUp) {
        let now = unixMilliseconds()
        let word = catalog.lock.rawWord
        logger.warning("fault \(kind.rawValue) armed at \(now) ms (catalog lock word \(LockWord.hex(word)))")
        if kind != .none { current.withLock { $0 = ArmedFault(kind: kind, armedAtUnixMs: now) } }
        switch kind {
        case .none:
            var cleared: [String] = []
            if catalog.lock.timeoutGate.isArmed { catalog.lock.timeoutGate.disarm(); cleared.append("timeout gate") }
            if let race = naturalRace.withLock({ r -> NaturalRace? in defer { r = nil }; return r }) { race.stop(); cleared.append("natural race churn") }
            if updater?.disarmGuardAcrossElse() == true { cleared.append("guard-across-else") }
            let previous = current.withLock { c -> ArmedFault? in defer { c = nil }; return c }
            var reply = "ok fault none armed"
            if let previous { reply += " (was \(previous.kind.rawValue)\(cleared.isEmpty ? "" : "; cleared \(cleared.joined(separator: ", "))"))" }
            if isCorruptedWord(catalog.lock.rawWord) {
                reply += "; the catalog lock word \(LockWord.hex(catalog.lock.rawWord)) is corrupted and cannot be repaired: restart the proxy"
            }
            return (reply, .none)
        case .timeoutRace:
            stageTimeoutRace()
        case .timeoutRaceNatural:
            let race = NaturalRace(catalog: catalog, logger: logger)
            naturalRace.withLock { $0?.stop(); $0 = race }
            race.start()
        case .leakedRead:
            // A request for a host nobody serves goes down the early-return path that forgets the guard.
            _ = catalog.routeLeakingReadGuard(host: "leaked-read.fault.invalid")
            logger.warning("fault leaked-read: a read guard leaked; the next catalog write (reload or SIGHUP) will wait forever and queue every reader behind it")
        case .guardAcrossElse:
            guard let updater else { return ("error fault guard-across-else needs the catalog updater", .none) }
            updater.armGuardAcrossElse()
            // Trigger it now with an update that takes the else path (a machine the table does not have).
            updater.submit(Self.elseBranchTrigger(catalog.published.apps > 0 ? catalog.snapshot() : CatalogTable()), source: "fault guard-across-else")
        case .writeThenRead:
            if let error = startWriteLockFault(kind, thread: "catalog-check", { catalog, update, holding in
                catalog.applyValidatingUnderWriteLock(update, whileHolding: holding)
            }) { return (error, .none) }
        case .slowHolder:
            if let error = startWriteLockFault(kind, thread: "catalog-slow-update", { catalog, update, holding in
                catalog.applyHoldingWriteLock(update, holdFor: holdFor ?? Self.slowHolderHold, whileHolding: holding)
            }) { return (error, .none) }
        case .deadLoop:
            return ("ok fault dead-loop armed", .spinEventLoops)
        case .crash, .exit:
            return ("ok fault \(kind.rawValue) armed", .terminate(kind))
        }
        return ("ok fault \(kind.rawValue) armed", .none)
    }

    /// Starts a thread that runs `body` (a faulty update that takes the catalog's write lock) on a harmless real
    /// update, and returns once it holds the write lock — so whoever armed the fault knows the hang has begun —
    /// or an error reply if it did not get it within 10 s.
    private func startWriteLockFault(_ kind: FaultKind, thread name: String,
                                     _ body: @escaping @Sendable (Catalog, RouteUpdate, () -> Void) -> Void) -> String? {
        let update = Self.stagedUpdate(catalog.published.apps > 0 ? catalog.snapshot() : CatalogTable())
        let catalog = self.catalog
        let holding = ThreadEvent()
        startThread(name: name) { body(catalog, update, { holding.set() }) }
        guard holding.wait(timeoutNs: 10_000_000_000) else {
            return "error fault \(kind.rawValue): the update did not get the write lock within 10 s (word \(LockWord.hex(catalog.lock.rawWord)))"
        }
        logger.warning("fault \(kind.rawValue): '\(Catalog.updateLabel(update))' holds the catalog write lock and will not let go")
        return nil
    }

    /// An update the table does not already reflect: a new machine on the first app.
    static func elseBranchTrigger(_ table: CatalogTable) -> RouteUpdate {
        guard let app = table.apps.keys.sorted().first, let m = table.apps[app]?.machines.first else {
            return .up(app: "fault.invalid", machine: "defib-fault", address: BackendAddress(host: "127.0.0.1", port: 9))
        }
        return .up(app: app, machine: "defib-fault", address: m.address)
    }

    /// Stages the spec's interleaving with two real threads and the TimeoutGate. Retries (bounded) if
    /// a concurrent request reader kept the reader count above one so the revert happened to land
    /// cleanly; every attempt is the genuine race, never a direct write of the final value.
    func stageTimeoutRace() {
        let lock = catalog.lock
        let update = Self.stagedUpdate(catalog.published.apps > 0 ? catalog.snapshot() : CatalogTable())
        lock.revert = .buggy
        let catalog = self.catalog, logger = self.logger
        startThread(name: "fault-race") {
            for attempt in 1...20 {
                if let word = FaultInjector.runStagedRace(catalog: catalog, update: update) {
                    logger.warning("fault timeout-race: catalog lock word corrupted to \(LockWord.hex(word)) (attempt \(attempt))")
                    return
                }
                logger.info("fault timeout-race: attempt \(attempt) left the word at \(LockWord.hex(lock.rawWord)) (a concurrent reader); staging again")
            }
            logger.error("fault timeout-race: the staged race did not corrupt the word in 20 attempts (word \(LockWord.hex(lock.rawWord)))")
        }
    }

    /// One run of the forced schedule: T1 holds a read lock; T2's `tryWrite(for: 50 ms)` times out and
    /// parks at the gate; T1 unlocks (its unpark callback clears WRITER_PARKED); T2's blind revert
    /// lands. Returns the corrupted word seen right after the revert, or nil when the word came out
    /// valid. Blocks until both threads are done.
    static func runStagedRace(catalog: Catalog, update: RouteUpdate) -> UInt64? {
        let lock = catalog.lock
        let readerHolds = ThreadEvent()
        let writerDone = ThreadEvent()
        let readerDone = ThreadEvent()
        lock.timeoutGate.arm()
        startThread(name: "fault-reader-t1") {
            lock.lockShared()
            readerHolds.set()
            _ = lock.timeoutGate.waitUntilReached(timeout: .seconds(10))
            lock.unlockShared()
            readerDone.set()
        }
        let wordAfterRevert = Atomic<UInt64>(0)
        startThread(name: "fault-writer-t2") {
            _ = readerHolds.wait(timeoutNs: 10_000_000_000)
            _ = catalog.apply(update, timeout: stagedWriterTimeout)
            // As close to the revert as we can see it: a request reader parking later sets PARKED (…ff).
            wordAfterRevert.store(lock.rawWord, ordering: .relaxed)
            writerDone.set()
        }
        // The writer cannot finish before the reader unlocked (the gate), so both are done after this.
        _ = readerDone.wait(timeoutNs: 15_000_000_000)
        _ = writerDone.wait(timeoutNs: 15_000_000_000)
        lock.timeoutGate.disarm()
        let word = wordAfterRevert.load(ordering: .relaxed)
        return isCorruptedWord(word) ? word : nil
    }

    /// A harmless real update for the staged writer: re-announce the first machine as it is.
    static func stagedUpdate(_ table: CatalogTable) -> RouteUpdate {
        guard let app = table.apps.keys.sorted().first, let m = table.apps[app]?.machines.first else {
            return .up(app: "fault.invalid", machine: "m1", address: BackendAddress(host: "127.0.0.1", port: 9))
        }
        return .up(app: app, machine: m.name, address: m.address)
    }

    /// Makes every event loop thread spin forever (no locks, pure CPU).
    public static func spinForever(on group: EventLoopGroup) {
        for loop in group.makeIterator() {
            loop.execute { deadLoopSpin() }
        }
    }

    /// Ends the process the way `kind` says (`crash`: SIGABRT with the default action; `exit`: code 3).
    public static func terminate(_ kind: FaultKind) -> Never {
        fflush(nil)
        if kind == .exit { Glibc.exit(3) }
        // The Swift runtime (or a library) may have a SIGABRT handler; the fault must really kill us.
        signal(SIGABRT, SIG_DFL)
        abort()
    }
}

private let spinCounter = Atomic<UInt64>(0)

// A CPU-bound loop the optimizer cannot delete: every iteration is an atomic add.
@inline(never) func deadLoopSpin() -> Never {
    while true { spinCounter.wrappingAdd(1, ordering: .relaxed) }
}

/// WRITER and WRITER_PARKED set with a saturated reader count: the word no valid sequence produces.
public func isCorruptedWord(_ word: UInt64) -> Bool {
    word & 0b1010 == 0b1010 && (word >> 4) >= (UInt64(1) << 59)
}

/// `timeout-race-natural`: reader threads hold the read lock for a random 0–2T while a writer loops on
/// `tryWrite(for: T)` with real catalog updates, buggy revert, no gate: the spec's measured setup.
final class NaturalRace: @unchecked Sendable {
    private let catalog: Catalog
    private let logger: Logger
    private let stopped = Atomic<Bool>(false)
    /// The writer timeout T.
    let writerTimeout: Duration
    let readers: Int
    /// Writer timeouts seen (progress evidence).
    let writerTimeouts = Atomic<Int>(0)

    /// Race on the lock's configured revert instead of switching it to the buggy one (`--race-churn`).
    let keepRevert: Bool

    init(catalog: Catalog, logger: Logger, writerTimeout: Duration = .microseconds(500), readers: Int = 3, keepRevert: Bool = false) {
        self.catalog = catalog; self.logger = logger; self.writerTimeout = writerTimeout; self.readers = readers; self.keepRevert = keepRevert
    }

    func start() {
        if !keepRevert { catalog.lock.revert = .buggy }
        let lock = catalog.lock
        let holdNs = UInt64(writerTimeout.components.attoseconds / 1_000_000_000) + UInt64(writerTimeout.components.seconds) * 1_000_000_000
        for i in 0..<readers {
            startThread(name: "race-reader-\(i)") { [self] in
                var rng = SystemRandomNumberGenerator()
                while !stopped.load(ordering: .relaxed) {
                    lock.lockShared()
                    sleepNanoseconds(UInt64.random(in: 0...(2 * holdNs), using: &rng))
                    lock.unlockShared()
                }
            }
        }
        let table = catalog.snapshot()
        let flips = Self.flips(table)
        startThread(name: "race-writer") { [self] in
            var i = 0
            while !stopped.load(ordering: .relaxed) {
                if case .timedOut = catalog.apply(flips[i % flips.count], timeout: writerTimeout) {
                    writerTimeouts.wrappingAdd(1, ordering: .relaxed)
                }
                i += 1
                if isCorruptedWord(lock.rawWord) {
                    logger.warning("fault timeout-race-natural: catalog lock word corrupted to \(LockWord.hex(lock.rawWord)) after \(writerTimeouts.load(ordering: .relaxed)) writer timeouts")
                    return
                }
            }
        }
    }

    func stop() { stopped.store(true, ordering: .relaxed) }

    /// A cycle of real updates that keeps every app routable: down/up of a second machine, or a no-op re-up.
    static func flips(_ table: CatalogTable) -> [RouteUpdate] {
        if let (app, routes) = table.apps.sorted(by: { $0.key < $1.key }).first(where: { $0.value.machines.count >= 2 }) {
            let m = routes.machines[1]
            return [.down(app: app, machine: m.name), .up(app: app, machine: m.name, address: m.address)]
        }
        return [stagedUpdateFor(table)]
    }

    private static func stagedUpdateFor(_ table: CatalogTable) -> RouteUpdate { FaultInjector.stagedUpdate(table) }
}
