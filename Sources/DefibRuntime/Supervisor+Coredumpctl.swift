import DefibCore
import DefibPOSIX

extension Supervisor {
    /// Once an incident's core is final (stacks read, compressed or not, before retention looks at it): the
    /// journal entry that makes coredumpctl list it, when `[capture] announce_to_coredumpctl` (or running
    /// under journald) asks for it. What happened is noted in the incident.
    func announceCoreToCoredumpctl(incidentID: Int64) {
        guard CoredumpJournal.wanted(setting: config.capture.announceToCoredumpctl),
              let stored = try? recorder.incident(id: incidentID), stored.capture?.path != nil else { return }
        let note = CoredumpJournal.announce(stored, stateDirectory: config.stateDirectory)
        logger.info("incident \(incidentID): \(note)")
        updateStoredIncident(incidentID) { $0.notes.append(note) }
    }
}
