@testable import DefibCore
import Foundation
import Testing

/// Stalls in the pure core: the ledger turns the suspect stage's evidence into a stall incident when the
/// heartbeat comes back, or hands it to the hang's incident; the hourly limit stores some and counts the rest;
/// retention deletes stalls' cores first; the config keys and the kinds `--kind` selects.
@Suite struct StallTests {
    static let t0 = Date(timeIntervalSince1970: 1_800_000_000)
    static func at(_ ms: Int64) -> Instant { Instant(mono: .milliseconds(ms), wall: t0.addingTimeInterval(Double(ms) / 1000)) }
    static let asleep = ProcessSample(pid: 100, atNs: 0, threads: [ThreadSample(tid: 100, name: "svc", state: "S", cpuTicks: 6, syscall: Syscalls.futex)])

    static func evidence(_ sequence: Int = 1, stacks: String? = nil) -> StallEvidence {
        var e = StallEvidence(sequence: sequence, takenAt: t0, silenceMs: 500, mode: .stacks, pauseMs: 1.5)
        e.threads = 1
        e.threadStates = "1 S (1 in futex)"
        e.stacks = stacks
        return e
    }

    @Test func suspectThenRecoveredIsAStallIncidentWithTheEvidenceAndNothingDone() throws {
        var ledger = IncidentLedger(service: "svc")
        ledger.noteMiss(misses: 1, silenceMs: 250, reason: "no reply within 250 ms")
        ledger.notePending("suspect after 500 ms of silence: threads 1 S (1 in futex)")
        ledger.setSuspectEvidence(Self.evidence(stacks: "Thread 1 (LWP 100):\n#0  syscall () at futex.S:38\n#1  0x1 in app.wait() at App.swift:3\n"))
        let made = ledger.stallIncident(silenceMs: 800, misses: 3, pid: 100, binaryPath: "/bin/svc", startedAt: nil, process: nil,
                                        heartbeat: nil, stallSample: Self.asleep, progress: .stuck("no CPU progress"), at: Self.at(10_000))
        let incident = try #require(made)
        #expect(incident.cause == .stall(silenceMs: 800, misses: 3) && incident.cause.kind == "stall")
        #expect(incident.outcome == .selfRecovered && incident.newPid == nil && incident.killedAt == nil && incident.restartedAt == nil)
        #expect(incident.pid == 100 && incident.silenceMs == 800)
        #expect(incident.detectedAt == Self.t0.addingTimeInterval(10 - 0.8), "detected when the silence began")
        #expect(incident.readyAt == Self.t0.addingTimeInterval(10))
        #expect(incident.stacks?.contains("app.wait()") == true && incident.stallEvidence?.pauseMs == 1.5)
        #expect(incident.notes.prefix(2) == ["miss 1 after 250 ms of silence: no reply within 250 ms",
                                             "suspect after 500 ms of silence: threads 1 S (1 in futex)"])
        #expect(incident.notes.contains("heartbeat back after 800 ms of silence (3 missed); nothing was done to the process"))
        #expect(incident.signature != nil && !incident.diagnosis.isEmpty, "\(incident.diagnosis)")
        #expect(ledger.suspectEvidence == nil, "taken by the incident")
        #expect(incident.cause.summary == "heartbeat silent for 800 ms (3 missed), then back by itself")
        #expect(IncidentKind(incident.cause) == .stall)
    }

    @Test func aStalledProcessThatWasStoppedIsDiagnosedStopped() throws {
        var ledger = IncidentLedger(service: "svc")
        let stopped = ProcessSample(pid: 100, atNs: 0, threads: [ThreadSample(tid: 100, name: "svc", state: "T", cpuTicks: 6)])
        let made = ledger.stallIncident(silenceMs: 800, misses: 3, pid: 100, binaryPath: nil, startedAt: nil, process: nil,
                                        heartbeat: "http probe GET http://127.0.0.1:1/", stallSample: stopped,
                                        progress: .stopped("1 of 1 threads stopped (state T)"), at: Self.at(5000))
        let incident = try #require(made)
        #expect(incident.diagnosis.hasPrefix("stopped:"), "\(incident.diagnosis)")
        #expect(incident.cause.summary.hasPrefix("http probe GET http://127.0.0.1:1/ silent for 800 ms"))
        #expect(incident.threadStates == "1 T")
    }

    @Test func aStallThatBecomesAHangJoinsItsEvidenceToTheHangsIncident() {
        var ledger = IncidentLedger(service: "svc")
        ledger.setSuspectEvidence(Self.evidence())
        let hang = FailureCause.missedHeartbeat(misses: 4, msSinceLastPong: 1000, lastError: nil, silenceMs: 1000, extendedMs: 0, verdict: .stuck("x"))
        let incident = ledger.open(hang, at: Self.t0, pid: 100, binaryPath: nil, startedAt: nil)
        #expect(incident.cause.kind == "missed-heartbeat" && incident.stallEvidence?.sequence == 1)
        #expect(incident.notes.contains { $0.hasPrefix("the stall's evidence from the suspect stage joins this incident: stall evidence: stacks of 1 thread(s)") })
        #expect(ledger.suspectEvidence == nil)

        // gdb finishes after the hang was opened and stored: its stacks land in the hang's stall evidence, not its stacks.
        ledger.stored(id: 4)
        let landed = ledger.applyStallStacks(sequence: 1, text: "Thread 1 (LWP 100):\n#0  first moment\n", problem: nil)
        #expect(landed.held && landed.incidentID == 4)
        #expect(ledger.open?.stallEvidence?.stacks == "Thread 1 (LWP 100):\n#0  first moment\n" && ledger.open?.stacks == nil)
        #expect(ledger.takeChanges().map(\.id) == [4])
    }

    @Test func aHangWhoseOwnEvidenceIsDoneWaitsForItsStallStacks() {
        var ledger = IncidentLedger(service: "svc")
        ledger.setSuspectEvidence(Self.evidence(3))
        let hang = FailureCause.missedHeartbeat(misses: 4, msSinceLastPong: 1000, lastError: nil, silenceMs: 1000, extendedMs: 0, verdict: .stuck("x"))
        _ = ledger.open(hang, at: Self.t0, pid: 100, binaryPath: nil, startedAt: nil)
        ledger.stored(id: 9)
        _ = ledger.close(.recovered, at: Self.t0.addingTimeInterval(1))
        _ = ledger.takeChanges()
        ledger.evidenceComplete(incidentID: 9)
        #expect(ledger.incident(id: 9) != nil, "gdb still reads the stall capture: kept")
        let landed = ledger.applyStallStacks(sequence: 3, text: "Thread 1 (LWP 100):\n#0  late\n", problem: nil)
        #expect(landed.held && landed.incidentID == 9)
        #expect(ledger.takeChanges().first?.stallEvidence?.stacks == "Thread 1 (LWP 100):\n#0  late\n")
        ledger.stallStacksLanded(incidentID: 9)
        #expect(ledger.incident(id: 9) == nil, "now complete")

        // An incident with no stall capture, or one whose capture failed, completes at once.
        var other = IncidentLedger(service: "svc")
        var failed = Self.evidence(4)
        failed.error = "ptrace(PTRACE_SEIZE, 100): Operation not permitted"
        other.setSuspectEvidence(failed)
        _ = other.open(hang, at: Self.t0, pid: 100, binaryPath: nil, startedAt: nil)
        other.stored(id: 10)
        _ = other.close(.recovered, at: Self.t0)
        other.evidenceComplete(incidentID: 10)
        #expect(other.incident(id: 10) == nil)
    }

    @Test func stacksLandInThePendingEvidenceOrTheStallIncidentOrNowhere() throws {
        var ledger = IncidentLedger(service: "svc")
        ledger.setSuspectEvidence(Self.evidence(7))
        #expect(ledger.applyStallStacks(sequence: 7, text: "early", problem: nil) == (true, nil))
        #expect(ledger.suspectEvidence?.stacks == "early")

        ledger.setSuspectEvidence(Self.evidence(8))
        let made = ledger.stallIncident(silenceMs: 700, misses: 2, pid: 100, binaryPath: nil, startedAt: nil, process: nil, heartbeat: nil,
                                        stallSample: Self.asleep, progress: nil, at: Self.at(3000))
        var stall = try #require(made)
        stall.id = 12
        ledger.keepClosed(stall)
        let before = stall.signature
        let landed = ledger.applyStallStacks(sequence: 8, text: "Thread 1 (LWP 100):\n#0  syscall () at futex.S:38\n#1  0x1 in app.hold() at App.swift:9\n",
                                             problem: nil)
        #expect(landed.held && landed.incidentID == 12)
        let updated = try #require(ledger.incident(id: 12))
        #expect(updated.stacks?.contains("app.hold()") == true && updated.stallEvidence?.stacks == updated.stacks)
        #expect(updated.signature != before, "the signature follows the stacks")
        #expect(ledger.takeChanges().map(\.id) == [12])

        #expect(ledger.applyStallStacks(sequence: 99, text: "late", problem: nil) == (false, nil), "its silence was cancelled: nobody holds it")
    }

    @Test func aCancelledSilenceForgetsTheEvidence() {
        var ledger = IncidentLedger(service: "svc")
        ledger.setSuspectEvidence(Self.evidence())
        ledger.forgetSilence()
        #expect(ledger.suspectEvidence == nil)
        let incident = ledger.open(.triggered(reason: "WATCHDOG=trigger"), at: Self.t0, pid: 100, binaryPath: nil, startedAt: nil)
        #expect(incident.stallEvidence == nil)
    }

    @Test func theHourlyLimitStoresSomeCountsTheRestAndTheNextStoredOneSaysHowMany() throws {
        var ledger = IncidentLedger(service: "svc")
        ledger.stallLimit = StallRateLimit(perHour: 2)
        func stall(_ ms: Int64) -> Incident? {
            ledger.stallIncident(silenceMs: 600, misses: 2, pid: 100, binaryPath: nil, startedAt: nil, process: nil, heartbeat: nil,
                                 stallSample: nil, progress: nil, at: Self.at(ms))
        }
        #expect(stall(1000) != nil && stall(2000) != nil)
        #expect(stall(3000) == nil && stall(4000) == nil && stall(3_600_999) == nil, "past 2 in the hour: counted")
        let made = stall(3_601_000)
        let next = try #require(made, "an hour after the first, one is stored again")
        #expect(next.notes.contains("3 earlier stall(s) past stall_incidents_per_hour (2) were counted, not stored"))
        #expect(stall(3_601_500) == nil, "the one at 2000 ms still counts in this hour")
        #expect(stall(3_602_000) != nil, "and no longer now")

        var none = StallRateLimit(perHour: 0)
        #expect(!none.admit(at: .milliseconds(0)) && none.notStored == 1, "0: every stall counted, none stored")
    }

    @Test func retentionDeletesStallsCoresFirstWhateverTheirServiceOrSignature() {
        let big = FileSystemSpace(totalBytes: 1 << 40, freeBytes: 1 << 39)
        func core(_ id: Int64, service: String = "proxy", sig: String? = nil, stall: Bool = false) -> StoredCore {
            StoredCore(incidentID: id, path: "/cores/\(id)", bytes: 100 << 20, service: service, signature: sig, detectedUnixMs: id * 1000, stall: stall)
        }
        let cores = [core(1, sig: "a"), core(2, sig: "b"), core(3, sig: "a", stall: true), core(4, service: "dns", sig: "c", stall: true), core(5, sig: "d")]
        let perService = CoreRetention.plan(cores: cores, space: big, policy: .init(maxPerService: 3))
        #expect(perService.map(\.core.incidentID) == [3], "proxy's stall goes before its oldest hang core")
        let maxUse = CoreRetention.plan(cores: cores, space: big, policy: .init(maxUseBytes: 250 << 20, maxPerService: 10))
        #expect(maxUse.map(\.core.incidentID) == [3, 4, 1], "both stalls (oldest first, any service), then proxy's oldest (each the first of its signature)")
        let stallFirstOfSignature = CoreRetention.plan(cores: [core(1, sig: "z", stall: true), core(2, sig: "z")], space: big,
                                                       policy: .init(maxPerService: 1))
        #expect(stallFirstOfSignature.map(\.core.incidentID) == [1], "a stall is never the core kept for its signature")
    }

    @Test func configKeysAreReadCheckedAndWritten() throws {
        let text = """
            [service]
            name = "svc"
            argv = ["/bin/svc"]
            [escalation]
            stall_evidence = "core"
            stall_evidence_budget_ms = 50
            stall_incidents_per_hour = 10
            """
        let config = try SupervisorConfig.parse(text, path: "stall.toml")
        #expect(config.escalation.stallEvidence == .core && config.escalation.stallEvidenceBudgetMs == 50 && config.escalation.stallIncidentsPerHour == 10)
        let defaults = try SupervisorConfig.parse("[service]\nname = \"svc\"\nargv = [\"/bin/svc\"]\n", path: "d.toml")
        #expect(defaults.escalation.stallEvidence == .stacks && defaults.escalation.stallEvidenceBudgetMs == 20
                && defaults.escalation.stallIncidentsPerHour == 60)
        #expect(throws: (any Error).self) { try SupervisorConfig.parse(text.replacingOccurrences(of: "\"core\"", with: "\"heap\""), path: "bad.toml") }
        #expect(throws: (any Error).self) { try SupervisorConfig.parse(text.replacingOccurrences(of: "= 50", with: "= 0"), path: "bad.toml") }
        #expect(throws: (any Error).self) { try SupervisorConfig.parse(text.replacingOccurrences(of: "= 10", with: "= -1"), path: "bad.toml") }
        let written = try SupervisorConfig.parse(config.tomlText, path: "w.toml")
        #expect(written.escalation == config.escalation)
    }

    @Test func kindsGroupCauses() throws {
        #expect(IncidentKind(.missedHeartbeat(misses: 1, lastPongAt: nil, lastError: nil)) == .hang)
        #expect(IncidentKind(.startTimeout(seconds: 1)) == .hang && IncidentKind(.triggered(reason: "x")) == .hang)
        #expect(IncidentKind(.exited(code: 1)) == .exit && IncidentKind(.signaled(signal: 9, coreDumped: false)) == .exit)
        #expect(IncidentKind(.spawnFailed(message: "x")) == .exit && IncidentKind(.stall(silenceMs: 1, misses: 1)) == .stall)
        for kind in IncidentKind.allCases { #expect(kind.causeKinds.allSatisfy { k in IncidentKind.allCases.filter { $0.causeKinds.contains(k) } == [kind] }) }
        #expect(throws: IncidentMatchError.self) { try IncidentMatch.parse("KIND=crash", workingDirectory: "/") }
        #expect(try IncidentMatch.parse("KIND=stall", workingDirectory: "/") == .field(.kind, "stall"))
    }
}
