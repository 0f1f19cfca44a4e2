import DefibCore
import Foundation
import Testing

/// Who the process was and how it ended, as coredumpctl lists cores by them, through the real loop and fake
/// effects: read right after the exec (maybe still a wrapper), again once the instance is ready, and again with
/// a hang's evidence before its core; the kernel method's core-dumping signal.
@Suite struct SupervisorIdentityTests {
    /// A hang's process is read again with its evidence, just before its core: whatever it became since it was
    /// ready (here it renamed itself).
    @Test func aHangsProcessIsReadAgainBeforeItsCore() throws {
        let fake = FakeEffects()
        fake.behaviours = [.hangs(afterMs: 300), .healthy]
        var later = try #require(fake.identityLater)
        later.comm = "worker-renamed"
        fake.identityBeforeCore = later
        let run = Run(fake)
        expectInOrder(fake.actions, ["spawn 100", "observe 100 none identity", "locks", "insert 1", "observe 100 none capture", "update 1",
                                     "writeCore 100 native first=100"])
        let incident = try #require(run.incidents.first)
        #expect(incident.process == later)
        #expect(incident.endingSignal == SIGKILL && incident.signal == nil, "defib's SIGKILL, not recorded apart")
    }

    /// A hang whose process cannot be read again before its core keeps who it was at its start.
    @Test func aHangKeepsTheIdentityFromItsStartWhenItCannotBeReadAgain() throws {
        let fake = FakeEffects()
        fake.behaviours = [.hangs(afterMs: 300), .healthy]
        fake.identityLater = nil
        let run = Run(fake)
        let incident = try #require(run.incidents.first)
        #expect(incident.process == fake.identityAtStart)
    }

    /// A death is reaped before its incident opens: who it was comes from the reading once it was ready (a
    /// wrapper had exec'd the service by then).
    @Test func aDeathAfterReadyKeepsWhoItWasOnceReady() throws {
        let fake = FakeEffects()
        fake.behaviours = [.exits(afterMs: 200, .signaled(signal: SIGSEGV, coreDumped: true)), .healthy]
        let run = Run(fake, stopAtMs: 1000)
        #expect(Array(fake.actions.prefix(5)) == ["spawn 100", "observe 100 none identity", "locks", "killLeftovers 100", "insert 1"])
        let incident = try #require(run.incidents.first)
        #expect(incident.process == fake.identityLater)
        #expect(incident.endingSignal == SIGSEGV)
        let json = IncidentJSON.object(incident)
        #expect(json["uid"] == .int(998) && json["comm"] == .string("fake-service") && json["signal_name"] == .string("SIGSEGV"))
    }

    /// One that dies before it is ready (a crash loop at start) has only the reading at its spawn.
    @Test func aDeathBeforeReadyKeepsWhoItWasAtItsSpawn() throws {
        let fake = FakeEffects()
        fake.behaviours = [.exits(afterMs: 0, .exited(code: 3)), .healthy]
        let run = Run(fake, stopAtMs: 1000)
        #expect(Array(fake.actions.prefix(4)) == ["spawn 100", "killLeftovers 100", "insert 1", "spawn 101"])
        let incident = try #require(run.incidents.first)
        #expect(incident.pid == 100 && incident.process == fake.identityAtStart)
        #expect(incident.endingSignal == nil, "an exit has no signal")
    }

    /// Each incident names its own instance, never the one before it.
    @Test func eachInstancesIncidentNamesThatInstance() throws {
        let fake = FakeEffects()
        fake.behaviours = [.exits(afterMs: 200, .exited(code: 3)), .exits(afterMs: 1500, .exited(code: 4)), .healthy]
        var second = try #require(fake.identityLater)
        second.uid = 4242
        fake.identityLaterByPid = [101: second]
        let run = Run(fake, stopAtMs: 3000)
        #expect(run.incidents.count == 2)
        #expect(run.incidents.first?.pid == 100 && run.incidents.first?.process?.uid == 998)
        #expect(run.incidents.last?.pid == 101 && run.incidents.last?.process?.uid == 4242)
    }

    /// The kernel's dump ends the process with its core-dumping signal, not SIGKILL: the incident says which.
    @Test func theKernelMethodsSignalIsTheOneRecorded() throws {
        let fake = FakeEffects()
        fake.behaviours = [.hangs(afterMs: 300), .healthy]
        let run = Run(fake, config: testConfig { $0.capture.method = .kernel })
        let incident = try #require(run.incidents.first)
        #expect(incident.signal == SIGSYS && incident.endingSignal == SIGSYS)
        #expect(IncidentJSON.object(incident)["signal_name"] == .string("SIGSYS"))
    }
}
