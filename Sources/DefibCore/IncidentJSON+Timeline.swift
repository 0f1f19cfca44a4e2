import Foundation

extension IncidentJSON {
    /// `declared_on` (`proof` when the evidence proved a deadlock at a miss, `deadline` otherwise: the silence
    /// reached the deadline, or the incident is no hang judgement at all) and `timeline`: `detected`,
    /// `replacement_started`, `ready`, `capture_done`, `killed` (RFC 3339, null when the step did not happen).
    /// With a capture while the replacement starts, `replacement_started` comes before `capture_done` and
    /// `killed`. Then `capture_order`: `restart-while-writing` or `write-then-restart` when a native capture with
    /// sockets passed by defib chose between them, else null.
    public static func declarationMembers(_ incident: Incident) -> [JSONMember] {
        [
            .init("declared_on", .string((incident.declaredOn ?? .deadline).rawValue)),
            .init("timeline", .object([
                .init("detected", .string(rfc3339(incident.detectedAt))),
                .init("replacement_started", incident.restartedAt.map { .string(rfc3339($0)) } ?? .null),
                .init("ready", incident.readyAt.map { .string(rfc3339($0)) } ?? .null),
                .init("capture_done", incident.captureDoneAt.map { .string(rfc3339($0)) } ?? .null),
                .init("killed", incident.killedAt.map { .string(rfc3339($0)) } ?? .null),
            ])),
            .init("capture_order", incident.captureOrder.map { .string($0.rawValue) } ?? .null),
        ]
    }
}
