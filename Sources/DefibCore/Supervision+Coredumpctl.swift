import Foundation

/// The last step of a closed incident's evidence: its core, final now (stacks read, compressed or not,
/// retention done), announced to the journal the way systemd-coredump announces its own, so `coredumpctl
/// list/info/gdb` show defib's cores beside the kernel's. The incident notes what happened.
extension Supervision {
    /// `[capture] announce_to_coredumpctl`, or when unset: only when defib runs under journald, where
    /// someone would run coredumpctl.
    var announcesCores: Bool { config.capture.announceToCoredumpctl ?? setup.underJournald }

    /// Announces the core of incident `id` when asked to; either way its evidence is then complete. An incident
    /// with no core is left alone; one whose entry coredumpctl would skip (the process unknown, not ended by
    /// a signal) says why it was not announced.
    mutating func announceCore(incidentID id: Int64) {
        // A stall's core is no crash: coredumpctl does not hear of it.
        guard announcesCores, let incident = ledger.incident(id: id), incident.cause.kind != "stall" else {
            ledger.evidenceComplete(incidentID: id)
            return
        }
        switch CoredumpEntry.fields(for: incident, hostname: setup.hostname, stateDirectory: config.stateDirectory) {
        case .failure(.noCore):
            ledger.evidenceComplete(incidentID: id)
        case let .failure(skip):
            noteAnnouncement(incidentID: id, "not announced to coredumpctl: \(skip)")
        case let .success(fields):
            let readable = fields.contains { $0.0 == "COREDUMP_FILENAME" }
            let note = "announced to coredumpctl (MESSAGE_ID=\(CoredumpEntry.messageID))"
                + (readable ? "" : "; without COREDUMP_FILENAME: coredumpctl cannot read a gzip core")
            ask(.announceCore(fields.map { JournalField($0.0, $0.1) }), awaiting: .announcement(incidentID: id, note: note))
        }
    }

    /// The journal's answer to the announcement.
    mutating func coreAnnounced(incidentID id: Int64, note: String, failure: EffectFailure?) {
        noteAnnouncement(incidentID: id, failure.map { "not announced to coredumpctl: \($0)" } ?? note)
    }

    private mutating func noteAnnouncement(incidentID id: Int64, _ note: String) {
        log(.info, "incident \(id): \(note)")
        ledger.note(incidentID: id, note)
        flushChanges()
        ledger.evidenceComplete(incidentID: id)
    }
}
