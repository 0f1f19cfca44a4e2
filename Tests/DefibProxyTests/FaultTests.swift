@testable import DefibProxy
import ParkingLock
import Testing
import FlightRecorder

private let corrupted: UInt64 = 0xFFFF_FFFF_FFFF_FFFE

private func twoMachineCatalog(revert: RevertStrategy) throws -> Catalog {
    let a = BackendAddress(host: "127.0.0.1", port: 1), b = BackendAddress(host: "127.0.0.1", port: 2)
    return Catalog(try CatalogTable([.up(app: "shop", machine: "m1", address: a), .up(app: "shop", machine: "m2", address: b)]),
                   revert: revert, register: false)
}

/// True when a thread that reads the catalog is still blocked after `ms` (it is left parked; the
/// catalog must be leaked).
private func readerStaysBlocked(_ catalog: Catalog, ms: Int64 = 300) -> Bool {
    let done = onThread { _ = catalog.route(host: "shop") }
    return !done.wait(timeoutNs: ms * 1_000_000)
}

/// Each fault's effect on the catalog lock, in-process, with real threads.
@Suite(.serialized, .timeLimit(.minutes(2)))
struct FaultTests {
    @Test func stagedTimeoutRaceCorruptsTheWordWithTheBuggyRevert() throws {
        let catalog = try twoMachineCatalog(revert: .buggy)
        leak(catalog)
        let update = FaultInjector.stagedUpdate(catalog.snapshot())
        #expect(update == .up(app: "shop", machine: "m1", address: BackendAddress(host: "127.0.0.1", port: 1)))
        #expect(FaultInjector.runStagedRace(catalog: catalog, update: update) == corrupted)
        #expect(catalog.lock.rawWord == corrupted, "word \(LockWord.hex(catalog.lock.rawWord))")
        #expect(catalog.lock.snapshot().holder == nil, "nobody holds the lock, yet …")
        #expect(readerStaysBlocked(catalog), "… every reader parks forever")
        #expect(eventually(timeoutMs: 2000) { catalog.lock.rawWord == 0xFFFF_FFFF_FFFF_FFFF }, "the parked reader sets PARKED")
        for _ in 0..<3 {
            #expect(catalog.apply(.down(app: "shop", machine: "m2"), timeout: .milliseconds(20)) == .timedOut)
        }
    }

    @Test func stagedScheduleWithTheFixedRevertLeavesACleanLock() throws {
        let catalog = try twoMachineCatalog(revert: .fixed)
        #expect(FaultInjector.runStagedRace(catalog: catalog, update: FaultInjector.stagedUpdate(catalog.snapshot())) == nil)
        #expect(catalog.lock.rawWord == 0)
        #expect(catalog.route(host: "shop") != .unknownHost)
        #expect(catalog.apply(.down(app: "shop", machine: "m2"), timeout: .seconds(1)) == .applied(changed: true))
    }

    @Test func armingTimeoutRaceSwitchesToTheBuggyRevertAndCorruptsEveryTime() throws {
        for _ in 0..<3 {
            let catalog = try twoMachineCatalog(revert: .fixed)
            leak(catalog)
            let faults = FaultInjector(catalog: catalog, updater: nil, logger: quietLogger)
            #expect(faults.arm(.timeoutRace).reply == "ok fault timeout-race armed")
            #expect(faults.armed?.kind == .timeoutRace)
            #expect(catalog.lock.revert == .buggy)
            #expect(eventually(timeoutMs: 10_000) { catalog.lock.rawWord == corrupted }, "word \(LockWord.hex(catalog.lock.rawWord))")
            let cleared = faults.arm(.none).reply
            #expect(cleared.hasPrefix("ok fault none armed (was timeout-race"), "\(cleared)")
            #expect(cleared.contains("is corrupted and cannot be repaired"), "\(cleared)")
            #expect(faults.armed == nil)
        }
    }

    @Test func leakedReadGuardHurtsOnlyOnceAWriterWaits() throws {
        let catalog = try twoMachineCatalog(revert: .fixed)
        leak(catalog)
        let faults = FaultInjector(catalog: catalog, updater: nil, logger: quietLogger)
        #expect(faults.arm(.leakedRead).reply == "ok fault leaked-read armed")
        #expect(catalog.lock.rawWord == 0x10, "one reader that never leaves")
        // Nothing breaks yet: readers come and go.
        #expect(!readerStaysBlocked(catalog))
        #expect(catalog.summary().apps == 1)
        // The periodic reload's untimed write waits for the leaked reader forever …
        let reload = onThread { catalog.reload(catalog.snapshot()) }
        #expect(eventually(timeoutMs: 2000) { catalog.lock.rawWord & LockWord.writer != 0 })
        #expect(!reload.wait(timeoutNs: 200_000_000))
        // … and every new reader queues behind it.
        #expect(readerStaysBlocked(catalog))
        #expect(eventually(timeoutMs: 2000) { catalog.lock.snapshot().readersWaiting >= 1 })
    }

    @Test func guardHeldAcrossElseDeadlocksTheUpdaterAndThenEveryone() throws {
        let catalog = try twoMachineCatalog(revert: .fixed)
        leak(catalog)
        let updater = CatalogUpdater(catalog: catalog, timeout: .milliseconds(100), stats: ProxyStats(), logger: quietLogger)
        leak(updater)
        updater.start()
        let faults = FaultInjector(catalog: catalog, updater: updater, logger: quietLogger)
        #expect(FaultInjector.elseBranchTrigger(catalog.snapshot()) == .up(app: "shop", machine: "defib-fault", address: BackendAddress(host: "127.0.0.1", port: 1)))
        #expect(faults.arm(.guardAcrossElse).reply == "ok fault guard-across-else armed")
        // The updater holds one read lock and waits, as the writer, for the readers to drain: itself.
        #expect(eventually(timeoutMs: 5000) { catalog.lock.rawWord & ~LockWord.parked == 0x1A }, "word \(LockWord.hex(catalog.lock.rawWord))")
        #expect(readerStaysBlocked(catalog))
        #expect(eventually(timeoutMs: 2000) { catalog.lock.snapshot().readersWaiting >= 1 })
        // The updater is the writer parked waiting for readers, and the one reader it waits for.
        let snapshot = catalog.lock.snapshot()
        #expect(snapshot.writersWaiting >= 1)
        #expect(snapshot.holderWaitingForReaders && snapshot.holder?.label == "catalog.update app=shop machine=defib-fault")
        #expect(snapshot.readHolders.map(\.tid) == [try #require(snapshot.holder?.tid)])
    }

    @Test func guardAcrossElseIsHarmlessWhenTheIfArmIsTaken() throws {
        let catalog = try twoMachineCatalog(revert: .fixed)
        // The table already says so: the guard is dropped in the if arm and nothing waits.
        catalog.applyHoldingReadGuardAcrossElse(.up(app: "shop", machine: "m1", address: BackendAddress(host: "127.0.0.1", port: 1)))
        #expect(catalog.lock.rawWord == 0)
    }

    @Test func naturalRaceCorruptsByItselfWithTheBuggyRevert() throws {
        let catalog = try twoMachineCatalog(revert: .fixed)
        leak(catalog)
        let race = NaturalRace(catalog: catalog, logger: quietLogger)
        leak(race)
        race.start()
        defer { race.stop() }
        #expect(catalog.lock.revert == .buggy)
        // The spec measured medians of 1–5 s and a max near 33 s; allow 100 s on a shared machine
        // (the whole test suite runs in parallel on two cores).
        let hit = eventually(timeoutMs: 100_000) { isCorruptedWord(catalog.lock.rawWord) }
        #expect(hit, "no corruption within 100 s after \(race.writerTimeouts.load(ordering: .relaxed)) writer timeouts; word \(LockWord.hex(catalog.lock.rawWord))")
        #expect(race.writerTimeouts.load(ordering: .relaxed) > 0)
    }

    @Test func faultKindsParseAndUnknownOnesAreListed() {
        #expect(FaultKind.allCases.map(\.rawValue) == ["none", "timeout-race", "timeout-race-natural", "leaked-read", "guard-across-else", "write-then-read", "slow-holder", "dead-loop", "crash", "exit"])
        do {
            _ = try FaultKind.parse("melt")
            Issue.record("expected an error")
        } catch {
            #expect(error.kind == .unknownFault)
            #expect(error.message.contains("known: none, timeout-race"))
        }
    }

    @Test func corruptionPredicate() {
        #expect(isCorruptedWord(0xFFFF_FFFF_FFFF_FFFE))
        #expect(isCorruptedWord(0xFFFF_FFFF_FFFF_FFFF))
        #expect(!isCorruptedWord(0x1A))
        #expect(!isCorruptedWord(0))
        #expect(!isCorruptedWord(0xFFFF_FFFF_FFFF_FFF0), "a huge reader count alone is not the signature")
    }
}
