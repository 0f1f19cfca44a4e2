import Foundation

/// A field an incident can be matched on from the command line (`FIELD=VALUE`), named like coredumpctl's
/// journal fields where the two overlap (`PID=`, `COMM=`, `EXE=`, `UID=`, `GID=`) and after defib's own
/// otherwise.
public enum IncidentMatchField: String, Sendable, CaseIterable {
    case id = "ID"
    case pid = "PID"
    case comm = "COMM"
    case exe = "EXE"
    case uid = "UID"
    case gid = "GID"
    case service = "SERVICE"
    case cause = "CAUSE"
    case signature = "SIGNATURE"
    /// By the diagnosis's kind (`DIAGNOSIS=corrupted-lock-word`).
    case diagnosis = "DIAGNOSIS"
    case outcome = "OUTCOME"
    /// By kind: `hang`, `stall` or `exit` (`--kind`; see `IncidentKind`).
    case kind = "KIND"

    /// The field for `name`: ours, or the journal's name for it (`COREDUMP_PID`, `INCIDENT_ID`), so a match
    /// typed for coredumpctl works here too.
    public init?(name: String) {
        if let field = IncidentMatchField(rawValue: name) { self = field; return }
        let journalNames: [String: IncidentMatchField] = [
            "COREDUMP_PID": .pid, "COREDUMP_COMM": .comm, "COREDUMP_EXE": .exe, "COREDUMP_UID": .uid,
            "COREDUMP_GID": .gid, "INCIDENT_ID": .id,
        ]
        guard let field = journalNames[name] else { return nil }
        self = field
    }

    /// Whether values are numbers (checked when parsed).
    var isNumeric: Bool { [.id, .pid, .uid, .gid].contains(self) }
}

/// One MATCH argument of `defib incidents`, parsed as coredumpctl parses its own: `FIELD=VALUE`; a path
/// (it contains a slash) is the executable; a number is an incident id when one exists and otherwise a pid
/// (coredumpctl's numbers are pids; defib's incidents have ids first); `last` is the newest incident; any
/// other word is the process name (COMM).
public enum IncidentMatch: Sendable, Equatable {
    /// `FIELD=VALUE` (EXE's value made absolute).
    case field(IncidentMatchField, String)
    /// A bare number: the incident with this id if there is one, else incidents of this pid.
    case number(Int64)
    /// `last`: the newest incident.
    case last

    /// Parses one argument; relative paths are taken from `workingDirectory`. Throws a message naming the
    /// argument and what was expected.
    public static func parse(_ text: String, workingDirectory: String) throws -> IncidentMatch {
        if text.isEmpty { throw IncidentMatchError("empty match: expected FIELD=VALUE, an incident id, a pid, a path or a process name") }
        if text == "last" { return .last }
        if let eq = text.firstIndex(of: "=") {
            let name = String(text[..<eq])
            let value = String(text[text.index(after: eq)...])
            guard let field = IncidentMatchField(name: name) else {
                let known = IncidentMatchField.allCases.map(\.rawValue).joined(separator: ", ")
                throw IncidentMatchError("unknown match field '\(name)' in '\(text)': expected one of \(known)")
            }
            if value.isEmpty { throw IncidentMatchError("empty value in '\(text)': expected \(name)=VALUE") }
            if field == .kind, IncidentKind(rawValue: value) == nil {
                throw IncidentMatchError("unknown kind '\(value)' in '\(text)': expected one of \(IncidentKind.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            if field.isNumeric, UInt64(value) == nil {
                throw IncidentMatchError("malformed \(name) in '\(text)': expected a non-negative number")
            }
            return .field(field, field == .exe ? absolute(value, from: workingDirectory) : value)
        }
        if text.contains("/") { return .field(.exe, absolute(text, from: workingDirectory)) }
        if text.allSatisfy(\.isNumber), let n = Int64(text) { return .number(n) }
        return .field(.comm, text)
    }

    /// `path` from `directory` when relative, with `.` and `..` resolved (no symlinks followed).
    static func absolute(_ path: String, from directory: String) -> String {
        let joined = path.hasPrefix("/") ? path : (directory.hasSuffix("/") ? directory : directory + "/") + path
        var parts: [Substring] = []
        for component in joined.split(separator: "/") {
            if component == "." { continue }
            if component == ".." { _ = parts.popLast(); continue }
            parts.append(component)
        }
        return "/" + parts.joined(separator: "/")
    }
}

/// A MATCH argument that cannot be read; the message names it.
public struct IncidentMatchError: Error, Sendable, Equatable, CustomStringConvertible {
    /// What is wrong with the argument.
    public var description: String
    /// Makes an error.
    public init(_ description: String) { self.description = description }
}
