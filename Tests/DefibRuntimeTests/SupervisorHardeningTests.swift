import DefibCore
import Foundation
import Testing

/// The supervisor loop when the world misbehaves: a store that refuses writes (a full disk), a child that
/// floods its NOTIFY_SOCKET or leaves thousands of processes behind, a loop held up so that a judgement would
/// be drawn over a millisecond, and what an incident calls a heartbeat that is not the control channel.
@Suite struct SupervisorHardeningTests {
    /// The store refuses everything (a full disk) from before the hang until 2.5 s: the supervision goes on
    /// (capture, kill, restart, close); the incident is logged in full meanwhile, offered again every second,
    /// and lands — in its final version — once the store takes it; its evidence after the close follows then.
    @Test func anIncidentTheStoreRefusesIsKeptAndLandsWhenTheDiskHasRoom() throws {
        let fake = FakeEffects()
        fake.behaviours = [.hangs(afterMs: 300), .healthy]
        fake.storeFull = 0..<2500
        let run = Run(fake, stopAtMs: 4000)
        #expect(run.code == 0)
        expectInOrder(fake.actions, ["insert refused", "writeCore 100 native first=100", "signal 100 SIGKILL", "spawn 101",
                                     "insert refused", "insert 1", "startStacks /state/cores/core.svc.x.100", "scanCores"])
        let incident = try #require(run.incidents.first)
        #expect(run.incidents.count == 1)
        #expect(incident.outcome == .recovered && incident.newPid == 101 && incident.capture?.path == "/state/cores/core.svc.x.100")
        #expect(incident.killedAt != nil && incident.readyAt != nil, "the version written is the last one, closed")
        #expect(incident.stacks == fake.stacksText, "its evidence followed once it had an id")
        #expect(run.logs.contains("error could not record incident: store: database or disk is full; kept in memory and written when the store takes it"))
        #expect(run.logs.contains("error incident not stored: {"), "the incident in full, meanwhile")
        #expect(run.logs.contains("error incident not stored (closed): {"))
        #expect(run.logs.contains("notice incident 1 stored now (the store had refused it)"))
        // Offered about once a second, not on every turn of the loop.
        #expect(fake.actions.filter { $0 == "insert refused" }.count <= 4, "\(fake.actions)")
    }

    /// The store never has room: before exit the incident is offered one last time, then written to the log
    /// in full as last known — nothing is lost silently.
    @Test func anIncidentTheStoreNeverTakesIsLoggedInFullAtExit() throws {
        let fake = FakeEffects()
        fake.behaviours = [.hangs(afterMs: 300), .healthy]
        fake.storeFull = 0..<Int64.max
        let run = Run(fake, stopAtMs: 1500)
        #expect(run.code == 0)
        #expect(run.incidents.isEmpty)
        #expect(fake.actions.last == "insert refused", "a last offer before exit: \(fake.actions.suffix(3))")
        let last = try #require(run.logs.lines.last { $0.contains("could not be stored before exit") })
        #expect(last.contains("\"outcome\":\"recovered\"") && last.contains("\"pid\":100"), "\(last)")
    }

    /// Updates the store refuses are written again later, in the latest version.
    @Test func anUpdateTheStoreRefusesIsWrittenAgain() throws {
        let fake = FakeEffects()
        fake.behaviours = [.hangs(afterMs: 300), .healthy]
        // Room for the insert at 803 ms, none for the updates of the capture and the close, room again at 2 s.
        fake.storeFull = 804..<2000
        let run = Run(fake, stopAtMs: 3000)
        let incident = try #require(run.incidents.first)
        #expect(fake.actions.contains("update refused"))
        #expect(incident.outcome == .recovered && incident.capture?.path != nil && incident.readyAt != nil, "the last version landed")
        #expect(run.logs.contains("error could not update incident 1: store: database or disk is full; kept in memory and written when the store takes it"))
    }

    /// A child that floods its NOTIFY_SOCKET with messages defib rejects (wrong sender) and with STATUS= lines:
    /// a burst is logged, then one line says how many were suppressed.
    @Test func aNotifyFloodCostsABoundedLog() throws {
        let fake = FakeEffects()
        fake.behaviours = [.healthy]
        for i in 0..<5000 {
            fake.schedule(at: 200 + Int64(i % 50), .notify(NotifyMessage(pid: 4242, text: "STATUS=spam \(i)")))
            fake.schedule(at: 300 + Int64(i % 50), .notify(NotifyMessage(pid: 100, text: "STATUS=chatter \(i)")))
        }
        let run = Run(fake, stopAtMs: 32_000)
        let rejected = run.logs.lines.filter { $0.contains("ignored sd_notify message from pid 4242") }.count
        let said = run.logs.lines.filter { $0.contains("service says: STATUS=chatter") }.count
        #expect(rejected == LogRateLimiter.defaultBurst && said == LogRateLimiter.defaultBurst, "\(rejected) \(said)")
        #expect(run.logs.contains("warning 4800 rejected sd_notify messages suppressed (rate limit: a burst per 30 s)"), "\(run.logs.lines.suffix(5))")
        #expect(run.logs.contains("warning 4800 sd_notify messages suppressed (rate limit: a burst per 30 s)"), "\(run.logs.lines.suffix(5))")
        #expect(run.logs.lines.count < 1000, "\(run.logs.lines.count) lines for 10 000 datagrams")
        #expect(run.incidents.isEmpty)
    }

    /// `notify_access = "all"`: a process of the instance (as the runtime found it: its cgroup or its tree) is
    /// heard; any other pid is not. With the default (`main`), only the main pid.
    @Test func notifyAccessAllHearsTheInstanceAndNobodyElse() throws {
        for access in [NotifyAccess.all, .main] {
            let fake = FakeEffects()
            fake.behaviours = [.healthy]
            fake.schedule(at: 300, .notify(NotifyMessage(pid: 777, text: "WATCHDOG=trigger")))
            fake.schedule(at: 600, .notify(NotifyMessage(pid: 555, text: "STATUS=worker says\nWATCHDOG=trigger", senderInInstance: true)))
            let run = Run(fake, config: testConfig { $0.heartbeat.notifyAccess = access }, stopAtMs: 1500)
            #expect(run.logs.contains("ignored sd_notify message from pid 777"))
            if access == .all {
                let incident = try #require(run.incidents.first)
                #expect(incident.cause == .triggered(reason: "the service sent WATCHDOG=trigger") && incident.detectedAt == fake.wallBase.addingTimeInterval(0.6))
                #expect(run.logs.contains("service says: STATUS=worker says"))
            } else {
                #expect(run.incidents.isEmpty, "only the main pid is heard by default")
                #expect(run.logs.contains("ignored sd_notify message from pid 555 (only the service's main pid 100 is heard)"))
            }
        }
    }

    /// The loop is held up for half a second (a flood, a slow disk) just before the first miss: the miss and
    /// the deadline are handled in the same turn, right after the baseline. The verdict is not drawn over that
    /// instant (a spinning process looks starved over a millisecond): a second sample tops the window up to
    /// `ProgressJudge.minimumWindowMs`, and the process is judged busy, not extended.
    @Test func aVerdictIsNeverDrawnOverAWindowShorterThanItNeeds() throws {
        let fake = FakeEffects()
        fake.behaviours = [.spins(afterMs: 300), .healthy]
        fake.stall = (atMs: 300, forMs: 500)
        let run = Run(fake, config: testConfig { $0.heartbeat.misses = 1 }, stopAtMs: 3000)
        let incident = try #require(run.incidents.first)
        #expect(incident.progress?.kind == "busy", "\(String(describing: incident.progress))")
        #expect(incident.extendedMs == 0 && !incident.notes.contains { $0.hasPrefix("deadline extended") })
        expectInOrder(fake.actions, ["observe 100 one", "observe 100 one recorder", "observe 100 pair", "insert 1"])
    }

    /// With sd_notify only, the cause names the keep-alives and their last WATCHDOG=1, not a pong; with both
    /// sources and every ping answered, a missing WATCHDOG=1 is not "control channel silent".
    @Test func aSilentKeepAliveIsNamedAsSuch() throws {
        for source in [HeartbeatSource.notify, .both] {
            let fake = FakeEffects()
            fake.behaviours = [.healthy]
            for ms in stride(from: Int64(0), through: 300, by: 100) {
                fake.schedule(at: ms + 1, .notify(NotifyMessage(pid: 100, text: ms == 0 ? "READY=1\nWATCHDOG=1" : "WATCHDOG=1")))
            }
            let run = Run(fake, config: testConfig { $0.heartbeat.source = source }, stopAtMs: 2500)
            let incident = try #require(run.incidents.first)
            guard case let .missedHeartbeat(_, lastPong, lastError, heartbeat) = incident.cause else { Issue.record("\(incident.cause)"); continue }
            #expect(heartbeat == "sd_notify keep-alive (WATCHDOG=1)", "\(source)")
            #expect(lastPong == fake.wallBase.addingTimeInterval(0.301), "the last WATCHDOG=1, not the last pong (\(source))")
            #expect(lastError?.hasPrefix("no WATCHDOG=1") == true)
            #expect(incident.cause.summary.hasPrefix("sd_notify keep-alive (WATCHDOG=1) failing: "), "\(incident.cause.summary)")
            #expect(!incident.cause.summary.contains("control channel") && !incident.cause.summary.contains("pong"), "\(incident.cause.summary)")
        }
    }

    /// An instance that leaves thousands of processes behind: each is killed, a few are named, the rest counted.
    @Test func thousandsOfLeftoversCostABoundedIncident() throws {
        let fake = FakeEffects()
        fake.behaviours = [.exits(afterMs: 200, .exited(code: 1)), .healthy]
        fake.leftovers = (0..<3000).map { KilledProcess(pid: 10_000 + Int32($0), name: "worker") }
        let run = Run(fake, stopAtMs: 1000)
        let incident = try #require(run.incidents.first)
        #expect(incident.notes.filter { $0.hasPrefix("killed pid ") }.count == 20)
        #expect(incident.notes.contains("killed 2980 more process(es) left behind by the instance pid 100 (3000 in all)"))
        #expect(run.logs.lines.count < 200, "\(run.logs.lines.count)")
    }
}
