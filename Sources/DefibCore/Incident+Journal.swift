import FlightRecorder
import Foundation

/// Message ids of defib's journal entries (like systemd-coredump's fc2e22bc…), for `journalctl MESSAGE_ID=`.
public enum DefibMessageID {
    public static let incidentOpened = "5d3b0e6f4a2c4e1f9b7a8c6d2e4f1a03"
    public static let incidentClosed = "5d3b0e6f4a2c4e1f9b7a8c6d2e4f1a04"
    public static let coreCaptured = "5d3b0e6f4a2c4e1f9b7a8c6d2e4f1a05"
    /// The stacks are stored and the signature is final (it groups repeats by the blocked threads' frames).
    public static let evidenceComplete = "5d3b0e6f4a2c4e1f9b7a8c6d2e4f1a06"
}

extension Incident {
    /// The structured fields of an incident's journal entries (like systemd-coredump's): every entry carries
    /// the incident, service, pid and cause, and whatever is known so far of the diagnosis, signature and core.
    public func journalFields(messageID: String) -> [String: String] {
        var fields = ["message_id": messageID, "incident_id": id.map(String.init) ?? "", "service": service, "pid": "\(pid)",
                      "cause": cause.kind, "outcome": outcome.rawValue]
        if !diagnosis.isEmpty { fields["diagnosis"] = diagnosis }
        if let signature { fields["signature"] = signature }
        if let core = capture?.path { fields["core_path"] = core }
        if let method = capture?.method { fields["capture_method"] = method }
        if let newPid { fields["new_pid"] = "\(newPid)" }
        return fields
    }

    /// The signature of what is known so far: cause, diagnosis kind, the locks whose word is not 0, and the
    /// blocked threads' top frames once the stacks are in.
    public func computedSignature() -> String {
        let kind = HangDiagnosis(line: diagnosis)?.kind.rawValue ?? ""
        let involved = lockState.filter { lock in LockWord.parse(lock.word).map { $0 != 0 } ?? false }.map(\.name)
        // A stall is a hang that came back: signed as one, so a stall and the hang it later became (or the hang it
        // resembles) share a signature, and `defib incidents signatures` counts the stalls behind each.
        let causeKind = cause.kind == "stall" ? "missed-heartbeat" : cause.kind
        return IncidentSignature.compute(causeKind: causeKind, diagnosisKind: kind, lockNames: Array(Set(involved)), stacks: stacks)
    }
}
