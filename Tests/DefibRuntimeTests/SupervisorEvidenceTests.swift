import DefibCore
import FlightRecorder
import Foundation
import Testing

/// The evidence around an incident through the real loop and fake effects: lock words from telemetry or
/// the flight recorder, what lands after the close (stacks, compression, retention), helpers at shutdown,
/// the service manager, the store refusing a write.
@Suite struct SupervisorEvidenceTests {
    static let catalogAddress: UInt64 = 0x7F00_0000_1000
    static let corrupted: UInt64 = 0xFFFF_FFFF_FFFF_FFFE

    /// Stacks, then compression, then retention, each landing in the closed incident as it arrives: the
    /// ledger's copy is updated and stored, never read back. An older core of an incident this supervisor no
    /// longer holds is removed by retention and the store is told directly.
    @Test func evidenceLandsAfterTheCloseInOrder() throws {
        let fake = FakeEffects()
        fake.behaviours = [.hangs(afterMs: 300), .healthy]
        fake.olderCores = [StoredCore(incidentID: 7, path: "/state/cores/core.svc.7.50", bytes: 5_000_000, service: "svc", signature: "aa",
                                      detectedUnixMs: 1_700_000_000_000)]
        let config = testConfig {
            $0.capture.compress = .gzip
            $0.retention.maxPerService = 1
        }
        let run = Run(fake, config: config)
        let core = "/state/cores/core.svc.1.100"
        let tail = fake.actions.drop { !$0.hasPrefix("startStacks") }
        #expect(Array(tail) == [
            "startStacks \(core)", "locks", "readStacks", "remove \(core).stacks.txt", "update 1",
            "startCompression gzip", "remove \(core)", "update 1",
            "scanCores", "remove /state/cores/core.svc.7.50", "coreRemoved 7",
            "signal 101 SIGTERM", "killLeftovers 101",
        ])
        let incident = try #require(run.incidents.first)
        #expect(incident.stacks == fake.stacksText)
        #expect(incident.capture?.path == core + ".gz" && incident.capture?.bytes == 1_000_000)
        #expect(incident.notes.last == "core compressed with gzip: 3000000 → 1000000 bytes")
        #expect(run.logs.contains("retention (max-per-service): removed /state/cores/core.svc.7.50 of incident 7"))
        #expect(fake.files[core + ".gz"] != nil && fake.files[core] == nil)
    }

    /// Helpers still running when the supervisor stops get a bounded wait (8 s), then are killed; the incident
    /// says so and the core stays.
    @Test func shutdownWaitsForHelpersThenStopsThemAndNotesIt() throws {
        let fake = FakeEffects()
        fake.behaviours = [.hangs(afterMs: 300), .healthy]
        fake.helperNeverEnds = true
        let run = Run(fake, stopAtMs: 2000)
        #expect(run.code == 0)
        #expect(fake.nowMs >= 2000 + 8000 && fake.nowMs < 2000 + 8000 + 1000)
        expectInOrder(fake.actions, ["startStacks /state/cores/core.svc.1.100", "signal 101 SIGTERM", "killLeftovers 101",
                                     "stopHelper 9000", "remove /state/cores/core.svc.1.100.stacks.txt", "update 1"])
        #expect(run.logs.contains("waiting up to 8000 ms for 1 background job(s) (gdb, compression)"))
        let incident = try #require(run.incidents.first)
        #expect(incident.notes.last == "stacks not taken: defib stopped before gdb finished (the core stays; `defib incidents gdb 1` reads it)")
        #expect(incident.stacks == nil && incident.capture?.path == "/state/cores/core.svc.1.100")
    }

    /// defib under a service manager: READY=1 once the service answers, STATUS= when it changes, WATCHDOG=1
    /// from the loop at 40 % of WATCHDOG_USEC (and fed while a core is written), STOPPING=1 at the end.
    @Test func theServiceManagerHearsReadyStatusKeepAlivesAndStopping() throws {
        let fake = FakeEffects()
        fake.behaviours = [.hangs(afterMs: 300), .healthy]
        let run = Run(fake, stopAtMs: 2000, managerWatchdogUsec: 1_000_000, managerListening: true)
        let messages = fake.managerMessages
        #expect(messages.filter { $0.hasPrefix("READY=1") } == ["READY=1\nSTATUS=svc: running pid 100; 0 restart(s)"])
        #expect(messages.contains("STATUS=svc: running pid 101; 1 restart(s); last incident #1 missed-heartbeat at 2027-01-15T08:00:00.803Z"))
        #expect(messages.contains("STOPPING=1\nSTATUS=stopping (SIGTERM)"))
        // One keep-alive at the start, then one every 400 ms of the 2 s: never a gap longer than that.
        #expect(messages.filter { $0 == "WATCHDOG=1" }.count >= 5)
        #expect(fake.actions.contains("writeCore 100 native first=100 keeping the manager's watchdog fed"))
        #expect(run.code == 0)
    }

    @Test func onlyTheServicesOwnPidIsHeardOnTheNotifySocket() throws {
        let fake = FakeEffects()
        fake.behaviours = [.healthy]
        fake.schedule(at: 300, .notify(NotifyMessage(pid: 999, text: "WATCHDOG=trigger")))
        fake.schedule(at: 600, .notify(NotifyMessage(pid: 100, text: "STATUS=draining\nWATCHDOG=trigger")))
        let run = Run(fake, stopAtMs: 1500)
        #expect(run.logs.contains("warning ignored sd_notify message from pid 999 (only the service's main pid 100 is heard): WATCHDOG=trigger"))
        let incident = try #require(run.incidents.first)
        #expect(run.incidents.count == 1)
        #expect(incident.cause == .triggered(reason: "the service sent WATCHDOG=trigger") && incident.detectedAt == fake.wallBase.addingTimeInterval(0.6))
        #expect(run.logs.contains("service says: STATUS=draining"))
        expectInOrder(fake.actions, ["insert 1", "observe 100 one capture", "writeCore 100 native first=100", "signal 100 SIGKILL", "spawn 101"])
    }

    /// A store that refuses the incident: the supervision goes on (capture, kill, restart), the log says why.
    @Test func aStoreThatRefusesTheIncidentDoesNotStopTheSupervision() throws {
        let fake = FakeEffects()
        fake.behaviours = [.hangs(afterMs: 300), .healthy]
        fake.storeFails = true
        let run = Run(fake)
        #expect(run.incidents.isEmpty)
        #expect(run.logs.contains("error could not record incident: store svc: disk I/O error"))
        expectInOrder(fake.actions, ["insert failed", "writeCore 100 native first=100", "signal 100 SIGKILL", "spawn 101"])
        #expect(!fake.actions.contains { $0.hasPrefix("update") || $0.hasPrefix("startStacks") }, "nothing stored, nothing to update")
        #expect(run.logs.contains("incident ? closed: recovered"))
        #expect(run.code == 0)
    }

    /// Without a flight recorder, the lock addresses the healthy service reported (`locks`) are read from the
    /// hung process's memory.
    @Test func lockTelemetryFromTheHealthyServiceLetsTheWordsBeReadOnceItHangs() throws {
        let fake = FakeEffects()
        fake.behaviours = [.hangs(afterMs: 300), .healthy]
        fake.locksReply = #"{"locks":[{"name":"catalog","address":"0x7f0000001000","word":"0x0","readers_waiting":0,"writers_waiting":0}]}"#
        fake.lockWords = [Self.catalogAddress: Self.corrupted]
        let run = Run(fake)
        let incident = try #require(run.incidents.first)
        #expect(incident.lockState.map(\.source) == ["memory"])
        #expect(incident.lockState.first?.word == "0xfffffffffffffffe" && incident.lockState.first?.address == "0x00007f0000001000")
        #expect(incident.diagnosis.hasPrefix("corrupted-lock-word: "))
    }

    /// With a flight recorder: its slots, each word read again from memory, the word right after the writer
    /// timeout that corrupted it, and the core's first thread is the newest one parked that still waits.
    @Test func theFlightRecorderGivesTheLocksHoldersAndTheCoresFirstThread() throws {
        let fake = FakeEffects()
        fake.behaviours = [.hangs(afterMs: 300), .healthy]
        let parked = FlightRecord.Event(kind: .parkedRead, tid: 102, monotonicNs: 9_000, unixMs: 1_800_000_000_500, wordAfter: Self.corrupted | 1,
                                        label: "GET /shop")
        let timeout = FlightRecord.Event(kind: .writeTimedOut, tid: 101, monotonicNs: 8_000, unixMs: 1_800_000_000_400, wordAfter: Self.corrupted,
                                         label: "catalog.update app=shop")
        let lock = FlightRecord.Lock(slot: 0, name: "catalog", address: Self.catalogAddress, word: Self.corrupted | 1, revert: "buggy", holder: nil,
                                     holderWaitingForReaders: false, lastHolder: .init(label: "catalog.update app=shop", tid: 101, sinceMonotonicNs: 7_000,
                                                                                      sinceUnixMs: 1_800_000_000_300),
                                     readersWaiting: 2, writersWaiting: 0, eventCount: 2, events: [timeout, parked])
        fake.recorder = FlightRecord(pid: 100, generation: 12, locks: [lock])
        fake.lockWords = [Self.catalogAddress: Self.corrupted | 1]
        let run = Run(fake)
        let incident = try #require(run.incidents.first)
        #expect(incident.flightRecorder == "/state/run/svc/flight-recorder: 1 lock(s), generation 12")
        #expect(incident.lockState.map(\.source) == ["memory", "flight-recorder: right after 'catalog.update app=shop' (tid 101) timed out and reverted"])
        #expect(incident.lockState.map(\.word) == ["0xffffffffffffffff", "0xfffffffffffffffe"])
        #expect(incident.diagnosis.hasPrefix("corrupted-lock-word: no thread in the critical section of 'catalog'"))
        #expect(fake.actions.contains("writeCore 100 native first=102"), "the reader parked last, still in a futex wait")
        #expect(run.logs.contains("suspect after 250 ms of silence: threads 3 S (3 in futex); progress since the first miss: no CPU progress (CPU +0 ms in 125 ms) and every thread asleep: 3 S (3 in futex); locks: 'catalog' 0xffffffffffffffff, 2 reader(s) and 0 writer(s) waiting"))
    }
}
