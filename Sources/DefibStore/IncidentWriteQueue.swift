import DefibCore
import Foundation

/// Writes incidents to the store and keeps, in memory, the ones the store cannot take right now — a full
/// disk, an I/O error, a lock held too long — so an incident is never lost to a bad moment of the disk: the
/// latest version of each is written again by `retryPending()` (the supervisor calls it now and then and
/// before it exits). Meanwhile the runtime logs the incident in full (`IncidentJSON`) to journald or stderr,
/// so it exists somewhere from the start.
///
/// An incident that could not even be inserted has no id yet; it is known here by its service, pid and
/// detection time, and once written its id is handed back through `record(_:)` (the `inout` incident gets
/// it), so later versions update that row instead of inserting a second one.
public final class IncidentWriteQueue {
    /// What happened to one write.
    public enum Outcome: Equatable, Sendable {
        /// Stored; the incident's row id.
        case written(id: Int64)
        /// Not stored now; kept and retried. The error says why (`retryLater` is true).
        case pending(StoreError)
        /// Not stored and not worth retrying (the incident cannot be encoded, the row is gone): logged by the
        /// caller, not kept.
        case failed(StoreError)
    }

    private struct Key: Hashable {
        var service: String
        var pid: Int32
        var detectedAtMs: Int64
        init(_ i: Incident) { service = i.service; pid = i.pid; detectedAtMs = i.detectedAt.storedMilliseconds }
    }

    /// The store written to.
    public let store: IncidentStore
    /// Versions waiting to be written, oldest first (one per incident: a later version replaces an earlier one).
    private var pending: [(key: Key, incident: Incident)] = []
    /// Ids of incidents first inserted by `retryPending`, for versions that arrive without one.
    private var idsAssignedLater: [Key: Int64] = [:]

    /// A queue writing to `store`.
    public init(store: IncidentStore) { self.store = store }

    /// How many incidents wait to be written.
    public var pendingCount: Int { pending.count }

    /// The incidents waiting, oldest first (their latest versions).
    public var pendingIncidents: [Incident] { pending.map(\.incident) }

    /// Inserts (no id) or updates (with id) `incident`; on success its `id` is set. On a failure worth
    /// retrying the latest version is kept for `retryPending` and the incident keeps no id until then.
    @discardableResult
    public func record(_ incident: inout Incident) -> Outcome {
        let key = Key(incident)
        if incident.id == nil, let id = idsAssignedLater[key] { incident.id = id }
        if let index = pending.firstIndex(where: { $0.key == key }) {
            // An older version still waits: this one replaces it, and the order of writes is kept.
            pending[index].incident = incident
            return .pending(StoreError(.write, path: store.path, "an earlier version of this incident is still waiting to be written", sqliteCode: 13))
        }
        switch write(incident) {
        case let .success(id):
            incident.id = id
            return .written(id: id)
        case let .failure(error) where error.retryLater:
            pending.append((key, incident))
            return .pending(error)
        case let .failure(error):
            return .failed(error)
        }
    }

    /// Writes what is waiting, oldest first, stopping at the first write that still cannot be made (the disk
    /// is probably still full). Returns the incidents written, with their ids.
    @discardableResult
    public func retryPending() -> [Incident] {
        var written: [Incident] = []
        while let first = pending.first {
            var incident = first.incident
            if incident.id == nil, let id = idsAssignedLater[first.key] { incident.id = id }
            switch write(incident) {
            case let .success(id):
                if first.incident.id == nil { idsAssignedLater[first.key] = id }
                incident.id = id
                written.append(incident)
                pending.removeFirst()
            case let .failure(error) where error.retryLater:
                return written
            case .failure:
                // Cannot ever be written (encoding, a deleted row): keeping it would block the rest.
                pending.removeFirst()
            }
        }
        return written
    }

    /// The id a pending insert got when `retryPending` wrote it, for a caller holding an older copy.
    public func assignedID(for incident: Incident) -> Int64? { incident.id ?? idsAssignedLater[Key(incident)] }

    private func write(_ incident: Incident) -> Result<Int64, StoreError> {
        do {
            if let id = incident.id {
                try store.update(incident)
                return .success(id)
            }
            return .success(try store.insert(incident))
        } catch let error as StoreError {
            return .failure(error)
        } catch {
            return .failure(StoreError(.write, path: store.path, "\(error)"))
        }
    }
}
