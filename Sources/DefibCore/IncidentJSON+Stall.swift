import Foundation

extension IncidentJSON {
    /// `stall_evidence`: what the suspect stage captured while the service was stalled — the whole evidence of a
    /// `stall` incident, the first moment of a hang that began as one; null when nothing was taken. Keys:
    /// `taken_at`, `silence_ms` (silence when taken), `mode` (`none`, `stacks`, `core`), `pause_ms` (the freeze it
    /// cost the service), `process` (null for the main process; else which process of the instance, and why), `threads`, `thread_states`, `core_path`, `core_bytes`, `error`, and with `includeStacks`
    /// its `stacks` (a stall incident's are its `stacks` too).
    static func stallMembers(_ incident: Incident, includeStacks: Bool) -> [JSONMember] {
        guard let evidence = incident.stallEvidence else { return [.init("stall_evidence", .null)] }
        var members: [JSONMember] = [
            .init("taken_at", .string(RFC3339.string(evidence.takenAt))),
            .init("silence_ms", .double(evidence.silenceMs.rounded())),
            .init("mode", .string(evidence.mode.rawValue)),
            .init("pause_ms", .double((evidence.pauseMs * 1000).rounded() / 1000)),
            .init("process", evidence.process.map { .string($0) } ?? .null),
            .init("threads", evidence.threads.map { .int(Int64($0)) } ?? .null),
            .init("thread_states", evidence.threadStates.map { .string($0) } ?? .null),
            .init("core_path", evidence.corePath.map { .string($0) } ?? .null),
            .init("core_bytes", evidence.coreBytes.map { .int($0) } ?? .null),
            .init("error", evidence.error.map { .string($0) } ?? .null),
        ]
        if includeStacks { members.append(.init("stacks", evidence.stacks.map { .string($0) } ?? .null)) }
        return [.init("stall_evidence", .object(members))]
    }
}
