import DefibCore
import Foundation
import GRDB
#if canImport(Glibc)
import Glibc
#endif

/// A damaged database that was moved aside so supervision could go on.
public struct DamagedStore: Sendable, Equatable, CustomStringConvertible {
    /// Where the database was.
    public var originalPath: String
    /// Where it is now (its -wal and -shm, when there were any, beside it under the same new name).
    public var movedTo: String
    /// The files moved, in order (the database, then -wal, -shm).
    public var movedFiles: [String]
    /// What SQLite said was wrong.
    public var problem: String

    /// The loud line to log: what was damaged, where it went, that a new store was started.
    public var description: String {
        "incident store \(originalPath) is damaged (\(problem)); moved aside to \(movedTo)"
            + (movedFiles.count > 1 ? " (with its \(movedFiles.dropFirst().map { ($0 as NSString).lastPathComponent.replacingOccurrences(of: (movedTo as NSString).lastPathComponent, with: "") }.joined(separator: ", ")))" : "")
            + ", nothing deleted; a new store was started. The old incidents can still be read with sqlite3."
    }
}

extension IncidentStore {
    /// Opens the store like `open`, but a damaged database never stops supervision: the service matters
    /// more than the record. When SQLite finds the file corrupt or not a database (at opening, at the schema
    /// migration, or by `PRAGMA quick_check`), the file and its -wal and -shm are renamed to
    /// `incidents.sqlite.damaged-YYYYMMDDTHHMMSSZ` (never deleted: its incidents may still be read), and a new
    /// store is created. Other failures (permissions, a full disk) are thrown as they are: moving the file
    /// would not help. The caller must say so loudly when `damaged` is set.
    public static func openRecovering(stateDirectory: String, now: Date = Date()) throws -> (store: IncidentStore, damaged: DamagedStore?) {
        let path = databasePath(stateDirectory: stateDirectory)
        // Checked through a read-only connection first: a read-write one would checkpoint a WAL left by a
        // killed supervisor into the damaged file when it closes, changing the evidence before it is moved.
        if let problem = damage(at: path) {
            let moved = try moveAside(path: path, now: now, problem: problem)
            return (try open(stateDirectory: stateDirectory), moved)
        }
        do {
            return (try open(stateDirectory: stateDirectory), nil)
        } catch let error as StoreError where error.isDamaged {
            let moved = try moveAside(path: path, now: now, problem: error.message)
            return (try open(stateDirectory: stateDirectory), moved)
        }
    }

    /// What SQLite finds wrong with the file at `path` through a read-only connection (the open itself,
    /// then `PRAGMA quick_check`); nil when it is fine, missing, or cannot be read for another reason (the
    /// read-write open names that one).
    static func damage(at path: String) -> String? {
        guard access(path, F_OK) == 0 else { return nil }
        var config = Configuration()
        config.readonly = true
        config.busyMode = .timeout(busyTimeoutSeconds)
        config.label = "defib.incidents.check"
        do {
            let queue = try DatabaseQueue(path: path, configuration: config)
            let lines = try queue.read { db in try String.fetchAll(db, sql: "PRAGMA quick_check") }
            return lines == ["ok"] ? nil : "quick_check: " + lines.prefix(3).joined(separator: "; ")
        } catch {
            guard let code = sqliteCode(error), code == 11 || code == 26 else { return nil }
            return sqliteMessage(error)
        }
    }

    /// Renames the database and its -wal/-shm to the same timestamped name; the new name never replaces a file.
    static func moveAside(path: String, now: Date, problem: String) throws -> DamagedStore {
        let stamp = damagedStamp(now)
        var target = "\(path).damaged-\(stamp)"
        var n = 1
        while access(target, F_OK) == 0 || access(target + "-wal", F_OK) == 0 {
            n += 1
            target = "\(path).damaged-\(stamp)-\(n)"
        }
        var moved: [String] = []
        for suffix in ["", "-wal", "-shm"] {
            let from = path + suffix
            var st = stat()
            guard lstat(from, &st) == 0 else { continue }
            // The database first: once it is gone a new one can be made even if a side file cannot move.
            if rename(from, target + suffix) != 0 {
                let e = errno
                if suffix.isEmpty {
                    throw StoreError(.open, path: path, "damaged (\(problem)) and cannot be moved aside to \(target): \(String(cString: strerror(e)))")
                }
                // A -wal/-shm that cannot move must not be replayed into the new database.
                unlink(from)
                continue
            }
            moved.append(target + suffix)
        }
        return DamagedStore(originalPath: path, movedTo: target, movedFiles: moved, problem: problem)
    }

    static func damagedStamp(_ date: Date) -> String {
        var t = time_t(date.timeIntervalSince1970)
        var parts = tm()
        gmtime_r(&t, &parts)
        return String(format: "%04d%02d%02dT%02d%02d%02dZ", Int(parts.tm_year) + 1900, Int(parts.tm_mon) + 1, Int(parts.tm_mday),
                      Int(parts.tm_hour), Int(parts.tm_min), Int(parts.tm_sec))
    }

    // MARK: Incidents a dead supervisor left open

    /// The incidents of `service` still marked open, oldest first.
    public func openIncidents(service: String) throws -> [Incident] {
        try fetch("list open incidents", sql: "SELECT \(Self.columns) FROM incident WHERE service = ? AND outcome = ? ORDER BY detected_at, id",
                  arguments: [service, IncidentOutcome.open.rawValue])
    }

    /// Closes every incident of `service` a dead supervisor left open, with outcome `supervisor-died`, keeping
    /// whatever evidence had been saved. Call it at start, while holding the service's supervisor lock: with
    /// the lock held no live supervisor of the service can own an open incident. `note` goes into each
    /// (who died, who closed it); `settle` is asked about each incident's core — the runtime checks the core
    /// directory for what a capture cut short left (`CoreSettlement` in DefibPOSIX) and returns the capture
    /// record to store (nil: keep the incident's own) and notes. Returns the incidents as closed.
    public func closeIncidentsLeftOpen(service: String, note: String,
                                       settle: (Incident) -> (capture: CaptureRecord?, notes: [String])) throws -> [Incident] {
        var closed: [Incident] = []
        for var incident in try openIncidents(service: service) {
            incident.outcome = .supervisorDied
            incident.notes.append(note)
            let settled = settle(incident)
            if let capture = settled.capture { incident.capture = capture }
            incident.notes += settled.notes
            try update(incident)
            closed.append(incident)
        }
        return closed
    }
}
