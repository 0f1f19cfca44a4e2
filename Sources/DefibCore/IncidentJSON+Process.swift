extension IncidentJSON {
    /// The members coredumpctl's columns need, null where unknown: `uid`, `gid`, `comm` and `argv` (a hang's read
    /// before its core, a death's once ready or at its start; null when unknown), `unit` (the systemd unit, from the cgroup), `signal` and
    /// `signal_name` (what ended the process: `endingSignal`), `diagnosis_kind` (the diagnosis's first word).
    static func processMembers(_ incident: Incident) -> [JSONMember] {
        let p = incident.process
        let signal = incident.endingSignal
        return [
            .init("uid", p.map { .int(Int64($0.uid)) } ?? .null),
            .init("gid", p.map { .int(Int64($0.gid)) } ?? .null),
            .init("comm", p.map { .string($0.comm) } ?? .null),
            .init("argv", p.map { .array($0.argv.map { .string($0) }) } ?? .null),
            .init("unit", p?.unit.map { .string($0) } ?? .null),
            .init("signal", signal.map { .int(Int64($0)) } ?? .null),
            .init("signal_name", signal.map { .string(signalName($0)) } ?? .null),
            .init("diagnosis_kind", incident.diagnosisKind.map { .string($0) } ?? .null),
        ]
    }
}
