import DefibCore
import Foundation
import Testing

/// A final core announced to the journal in systemd-coredump's form, through the real loop and fake effects:
/// after stacks, compression and retention, when the setting (or journald) asks for it; the incident notes
/// what happened.
@Suite struct SupervisorCoredumpctlTests {
    static let core = "/state/cores/core.svc.1.100"

    static func fields(_ entry: [JournalField]) -> [String: String] {
        Dictionary(entry.map { ($0.name, $0.value) }, uniquingKeysWith: { first, _ in first })
    }

    /// The announcement is the last step after the close: after the stacks (the message carries them and the
    /// final diagnosis) and retention; the incident notes it, in one more write.
    @Test func aFinalCoreIsAnnouncedAfterStacksAndRetentionAndTheIncidentSaysSo() throws {
        let fake = FakeEffects()
        fake.behaviours = [.hangs(afterMs: 300), .healthy]
        let run = Run(fake, config: testConfig { $0.capture.announceToCoredumpctl = true })
        #expect(run.code == 0)
        let tail = fake.actions.drop { !$0.hasPrefix("startStacks") }
        #expect(Array(tail) == [
            "startStacks \(Self.core)", "locks", "readStacks", "remove \(Self.core).stacks.txt", "update 1", "scanCores",
            "announceCore 1", "update 1",
            "signal 101 SIGTERM", "killLeftovers 101",
        ])
        let incident = try #require(run.incidents.first)
        #expect(incident.process == fake.identityLater, "read again with the evidence: the wrapper has exec'd the service by then")
        #expect(incident.endingSignal == SIGKILL && incident.signal == nil)
        #expect(incident.notes.last == "announced to coredumpctl (MESSAGE_ID=fc2e22bc6ee647b6b90729ab34a250b1)")
        #expect(run.logs.contains("info incident 1: announced to coredumpctl"))

        #expect(fake.journal.count == 1)
        let fields = Self.fields(try #require(fake.journal.first))
        #expect(fields["MESSAGE_ID"] == CoredumpEntry.messageID)
        #expect(fields["COREDUMP_PID"] == "100" && fields["COREDUMP_UID"] == "998" && fields["COREDUMP_GID"] == "998")
        #expect(fields["COREDUMP_COMM"] == "fake-service" && fields["COREDUMP_EXE"] == "/usr/bin/fake-service")
        #expect(fields["COREDUMP_CMDLINE"] == "/usr/bin/fake-service --serve")
        #expect(fields["COREDUMP_SIGNAL"] == "9" && fields["COREDUMP_SIGNAL_NAME"] == "SIGKILL")
        #expect(fields["COREDUMP_FILENAME"] == Self.core && fields["CORE_PATH"] == Self.core)
        #expect(fields["COREDUMP_UNIT"] == "svc.service" && fields["COREDUMP_SLICE"] == "system.slice")
        #expect(fields["COREDUMP_HOSTNAME"] == "testhost")
        #expect(fields["COREDUMP_TIMESTAMP"] == String(Int64(incident.detectedAt.timeIntervalSince1970 * 1_000_000)))
        #expect(fields["INCIDENT_ID"] == "1" && fields["SIGNATURE"] == incident.signature && fields["DIAGNOSIS"] == incident.diagnosis)
        let message = try #require(fields["MESSAGE"])
        #expect(message.hasPrefix("Process 100 (fake-service) of user 998 dumped core: defib captured it (missed-heartbeat) and ended it with SIGKILL"))
        #expect(message.contains("Stack trace (gdb, all threads):\n" + fake.stacksText.split(separator: "\n")[0]), "the stacks had landed")
    }

    /// A compressed core is announced once compressed: zstd with COREDUMP_FILENAME (coredumpctl decompresses
    /// it), gzip without (coredumpctl cannot read it), and the incident says so.
    @Test(arguments: [CoreCompression.zstd, .gzip])
    func aCompressedCoreIsAnnouncedOnceCompressed(tool: CoreCompression) throws {
        let fake = FakeEffects()
        fake.behaviours = [.hangs(afterMs: 300), .healthy]
        let run = Run(fake, config: testConfig {
            $0.capture.compress = tool
            $0.capture.announceToCoredumpctl = true
        })
        let compressed = Self.core + (tool == .gzip ? ".gz" : ".zst")
        let tail = fake.actions.drop { !$0.hasPrefix("startCompression") }
        #expect(Array(tail.prefix(6)) == ["startCompression \(tool == .gzip ? "gzip" : "zstd")", "remove \(Self.core)", "update 1",
                                          "scanCores", "announceCore 1", "update 1"])
        let fields = Self.fields(try #require(fake.journal.first))
        #expect(fields["CORE_PATH"] == compressed)
        let incident = try #require(run.incidents.first)
        switch tool {
        case .gzip:
            #expect(fields["COREDUMP_FILENAME"] == nil)
            #expect(fields["MESSAGE"]?.contains("Core: \(compressed) (gzip: coredumpctl cannot read it") == true)
            #expect(incident.notes.last == "announced to coredumpctl (MESSAGE_ID=fc2e22bc6ee647b6b90729ab34a250b1); without COREDUMP_FILENAME: coredumpctl cannot read a gzip core")
        default:
            #expect(fields["COREDUMP_FILENAME"] == compressed)
            #expect(incident.notes.last == "announced to coredumpctl (MESSAGE_ID=fc2e22bc6ee647b6b90729ab34a250b1)")
        }
        #expect(incident.notes.dropLast().last == "core compressed with \(tool.rawValue): 3000000 → 1000000 bytes")
    }

    /// Unset, the setting follows journald: defib under it announces, defib on a terminal does not; set, it wins.
    @Test func theSettingDecidesAndUnsetItFollowsJournald() throws {
        for (setting, underJournald, announced) in [(nil, true, true), (nil, false, false), (false, true, false), (true, false, true)] as [(Bool?, Bool, Bool)] {
            let fake = FakeEffects()
            fake.behaviours = [.hangs(afterMs: 300), .healthy]
            let run = Run(fake, config: testConfig { $0.capture.announceToCoredumpctl = setting }, underJournald: underJournald)
            let incident = try #require(run.incidents.first)
            #expect(fake.actions.contains("announceCore 1") == announced, "setting \(String(describing: setting)), journald \(underJournald)")
            #expect(incident.notes.contains { $0.contains("coredumpctl") } == announced)
            #expect(incident.stacks != nil && run.code == 0, "the rest of the evidence lands either way")
        }
    }

    /// A journal that does not take the entry: the incident says why, the supervision goes on.
    @Test func aJournalThatRefusesTheEntryIsNotedAndTheSupervisionGoesOn() throws {
        let fake = FakeEffects()
        fake.behaviours = [.hangs(afterMs: 300), .healthy]
        fake.journalRefuses = "no journal here (/run/systemd/journal/socket is missing)"
        let run = Run(fake, config: testConfig { $0.capture.announceToCoredumpctl = true })
        expectInOrder(fake.actions, ["scanCores", "announceCore 1 refused", "update 1", "signal 101 SIGTERM", "killLeftovers 101"])
        let incident = try #require(run.incidents.first)
        #expect(incident.notes.last == "not announced to coredumpctl: no journal here (/run/systemd/journal/socket is missing)")
        #expect(fake.journal.isEmpty && run.code == 0)
    }

    /// coredumpctl skips an entry without the process's uid, gid and name: none is sent, the incident says why.
    @Test func aProcessThatCouldNotBeReadIsNotAnnouncedAndTheIncidentSaysWhy() throws {
        let fake = FakeEffects()
        fake.behaviours = [.hangs(afterMs: 300), .healthy]
        fake.identityAtStart = nil
        fake.identityLater = nil
        let run = Run(fake, config: testConfig { $0.capture.announceToCoredumpctl = true })
        #expect(!fake.actions.contains { $0.hasPrefix("announceCore") })
        let incident = try #require(run.incidents.first)
        #expect(incident.process == nil)
        #expect(incident.notes.last == "not announced to coredumpctl: the process's uid, gid and name could not be read (coredumpctl needs them)")
    }

    /// A death has no core of defib's: nothing is announced (the kernel's own core, if any, is the kernel's
    /// handler's to announce), and the incident says nothing of coredumpctl.
    @Test func aDeathHasNoCoreOfDefibsAndIsNotAnnounced() throws {
        let fake = FakeEffects()
        fake.behaviours = [.exits(afterMs: 200, .signaled(signal: SIGSEGV, coreDumped: true)), .healthy]
        let run = Run(fake, config: testConfig { $0.capture.announceToCoredumpctl = true }, stopAtMs: 1000)
        #expect(!fake.actions.contains { $0.hasPrefix("announceCore") })
        let incident = try #require(run.incidents.first)
        #expect(incident.process != nil && incident.endingSignal == SIGSEGV, "everything coredumpctl lists by, but no core")
        #expect(!incident.notes.contains { $0.contains("coredumpctl") })
    }

    /// The kernel's dump ends the process with its core-dumping signal: the announcement says which.
    @Test func theKernelMethodsSignalIsTheOneAnnounced() throws {
        let fake = FakeEffects()
        fake.behaviours = [.hangs(afterMs: 300), .healthy]
        _ = Run(fake, config: testConfig {
            $0.capture.method = .kernel
            $0.capture.announceToCoredumpctl = true
        })
        expectInOrder(fake.actions, ["writeCore 100 kernel first=100", "spawn 101", "startStacks /var/crash/core.100", "scanCores", "announceCore 1", "update 1"])
        let fields = Self.fields(try #require(fake.journal.first))
        #expect(fields["COREDUMP_SIGNAL"] == String(SIGSYS) && fields["COREDUMP_SIGNAL_NAME"] == "SIGSYS")
        #expect(fields["COREDUMP_FILENAME"] == "/var/crash/core.100")
    }
}
