/// The multi-process part of the incident JSON, kept apart from the older fields.
extension IncidentJSON {
    /// `processes`: [{`pid`, `comm`, `state`, `core_path` (null without a core), `diagnosis` (stuck, stopped, busy,
    /// idle, starved, gone, unclear), `evidence`, `main`}], main process first; empty when the instance's
    /// processes were not judged one by one.
    public static func processListMembers(_ incident: Incident) -> [JSONMember] {
        [.init("processes", .array((incident.processes ?? []).map { p in
            .object([.init("pid", .int(Int64(p.pid))), .init("comm", .string(p.comm)), .init("state", .string(p.state)),
                     .init("core_path", p.corePath.map { .string($0) } ?? .null), .init("diagnosis", .string(p.diagnosis)),
                     .init("evidence", .string(p.evidence)), .init("main", .bool(p.main))])
        }))]
    }
}
