@testable import DefibCore
import Foundation
import Testing

/// The ledger alone: what it keeps before an incident exists, what it changes, and that every change is
/// handed out to be stored exactly once.
@Suite struct IncidentLedgerTests {
    static let t0 = Date(timeIntervalSince1970: 1_800_000_000)
    static let stuck = ProgressVerdict.stuck("no CPU progress")
    static let hang = FailureCause.missedHeartbeat(misses: 12, msSinceLastPong: 1500, lastError: "no reply within 1500 ms", silenceMs: 1400,
                                                   extendedMs: 0, verdict: stuck)

    @Test func missesBeforeAnIncidentAreKeptUpToACountThenCountedAndMoveIntoTheIncident() {
        var ledger = IncidentLedger(service: "svc")
        for n in 1...12 { ledger.noteMiss(misses: n, silenceMs: Double(n) * 125, reason: "no reply") }
        #expect(ledger.pendingNotes.count == IncidentLedger.missNotesKept + 1)
        #expect(ledger.pendingNotes.last == "further misses are counted, not listed (see misses in the cause)")
        let incident = ledger.open(Self.hang, at: Self.t0, pid: 100, binaryPath: nil, startedAt: nil)
        #expect(incident.notes.count == IncidentLedger.missNotesKept + 1 && ledger.pendingNotes.isEmpty)
        #expect(incident.silenceMs == 1400 && incident.progress == Self.stuck && incident.outcome == .open)
        #expect(incident.cause == .missedHeartbeat(misses: 12, lastPongAt: Self.t0.addingTimeInterval(-1.5), lastError: "no reply within 1500 ms"))
    }

    @Test func aStoredIncidentIsHandedOutOncePerChangeAndNotBeforeItHasAnID() {
        var ledger = IncidentLedger(service: "svc")
        _ = ledger.open(.died(.exited(code: 3)), at: Self.t0, pid: 100, binaryPath: nil, startedAt: nil)
        ledger.note("before the store answered")
        let early = ledger.takeChanges()
        #expect(early.isEmpty, "no id yet: nothing to update")
        ledger.stored(id: 7)
        ledger.note("one")
        ledger.note("two")
        let changes = ledger.takeChanges()
        #expect(changes.map(\.id) == [7] && changes.first?.notes.suffix(2) == ["one", "two"])
        let again = ledger.takeChanges()
        #expect(again.isEmpty, "handed out once")
    }

    @Test func aClosedIncidentStaysUntilItsEvidenceHasLandedAndRetentionOfOthersGoesToTheStore() {
        var ledger = IncidentLedger(service: "svc")
        _ = ledger.open(Self.hang, at: Self.t0, pid: 100, binaryPath: nil, startedAt: nil)
        ledger.stored(id: 3)
        let closed = ledger.close(.recovered, at: Self.t0.addingTimeInterval(2))
        #expect(closed?.outcome == .recovered && closed?.readyAt == Self.t0.addingTimeInterval(2) && ledger.open == nil)
        #expect(ledger.incident(id: 3)?.outcome == .recovered, "kept for the evidence that lands after the close")
        let ours = ledger.coreRemoved(incidentID: 3, path: "/c/core.1", reason: "max-use")
        let theirs = ledger.coreRemoved(incidentID: 99, path: "/c/core.99", reason: "max-use")
        #expect(ours && !theirs, "an incident not held is the store's to change")
        let changes = ledger.takeChanges()
        #expect(changes.map(\.id) == [3] && changes.first?.notes.last == "core /c/core.1 removed by retention (max-use)")
        #expect(changes.first?.capture == nil || changes.first?.capture?.path == nil)
        ledger.evidenceComplete(incidentID: 3)
        #expect(ledger.incident(id: 3) == nil)
    }
}
