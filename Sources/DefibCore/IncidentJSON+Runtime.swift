/// The runtime evidence's part of the incident JSON, kept apart from the older fields.
extension IncidentJSON {
    /// `wait_for`: [{`waiter_tid`, `waiter_name`, `mutex`, `owner_tid`, `owner_name`, `mutex_kind`}] (empty when no
    /// thread was blocked on a pthread mutex, or none was read); `runtime`: "native", "go", "python", "java" or null
    /// (not determined); `runtime_tool` and `runtime_error` (the package to install when the tool is missing);
    /// `runtime_stacks`: [{`count`, `state`, `members`, `frames` (the service's own, innermost first),
    /// `runtime_frames`}], each frame "function (file:line)".
    public static func runtimeMembers(_ incident: Incident) -> [JSONMember] {
        let runtime = incident.runtimeEvidence
        return [
            .init("wait_for", .array((incident.waitFor ?? []).map { e in
                .object([.init("waiter_tid", .int(Int64(e.waiterTid))), .init("waiter_name", .string(e.waiterName)),
                         .init("mutex", .string(e.mutex)), .init("owner_tid", .int(Int64(e.ownerTid))),
                         .init("owner_name", .string(e.ownerName)), .init("mutex_kind", e.kind.map { .string($0) } ?? .null)])
            })),
            .init("runtime", runtime.map { .string($0.runtime.rawValue) } ?? .null),
            .init("runtime_tool", runtime?.tool.map { .string($0) } ?? .null),
            .init("runtime_error", runtime?.error.map { .string($0) } ?? .null),
            .init("runtime_stacks", .array((runtime?.groups ?? []).map { g in
                .object([.init("count", .int(Int64(g.count))), .init("state", .string(g.state)),
                         .init("members", .array(g.members.map { .string($0) })),
                         .init("frames", .array(g.frames.map { .string($0.text) })),
                         .init("runtime_frames", .array(g.runtimeFrames.map { .string($0.text) }))])
            })),
        ]
    }
}
