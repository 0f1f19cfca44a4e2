import DefibCore

/// The store as the supervisor's loop sees it.
extension IncidentStore: IncidentPersistence {
    /// Every incident that still has a core path, oldest first, with `bytes` 0: what a core takes on disk is
    /// the file system's to say.
    public func storedCores() throws -> [StoredCore] {
        try incidentsWithCores().map {
            StoredCore(incidentID: $0.id, path: $0.corePath, bytes: 0, service: $0.service, signature: $0.signature, detectedUnixMs: $0.detectedUnixMs,
                       otherPaths: $0.otherCorePaths, stall: $0.stall)
        }
    }

    /// Retention deleted the core of an incident the supervisor no longer holds: the note goes in, the path
    /// goes out, in one write.
    public func recordCoreRemoved(id: Int64, note: String) throws {
        try modify(id: id) { incident in
            incident.notes.append(note)
            incident.capture?.path = nil
            for i in incident.processes?.indices ?? [Int]().indices { incident.processes?[i].corePath = nil }
        }
    }
}
