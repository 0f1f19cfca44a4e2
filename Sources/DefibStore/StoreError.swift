import DefibCore

/// Something the incident store could not do. The description names the database file and the problem,
/// e.g. `/var/lib/defib/incidents.sqlite: no incident 42`.
public struct StoreError: Error, Sendable, Equatable, CustomStringConvertible {
    /// What went wrong, coarse enough to branch on.
    public enum Kind: String, Sendable {
        /// There is no database file where one was expected (read-only open).
        case missingDatabase = "missing-database"
        /// The file exists but is still empty: a supervisor has created it and not yet set up the schema.
        case uninitialized
        /// SQLite could not open or create the file, or could not set it up.
        case open
        /// A schema migration failed.
        case migration
        /// A query failed.
        case read
        /// An insert, update or delete failed.
        case write
        /// No row with the requested id.
        case notFound = "not-found"
        /// A stored row could not be turned back into an `Incident`.
        case corruptRecord = "corrupt-record"
        /// A write was attempted through a store opened read-only.
        case readOnly = "read-only"
    }

    /// What went wrong.
    public var kind: Kind
    /// The database file concerned.
    public var path: String
    /// The problem, in words (includes SQLite's own message when there is one).
    public var message: String

    /// SQLite's primary result code, when SQLite said what failed (13 SQLITE_FULL, 11 SQLITE_CORRUPT, …).
    public var sqliteCode: Int32?

    /// Makes an error about `path`.
    public init(_ kind: Kind, path: String, _ message: String, sqliteCode: Int32? = nil) {
        self.kind = kind; self.path = path; self.message = message; self.sqliteCode = sqliteCode
    }

    /// The write may well succeed later: the disk is full (SQLITE_FULL), an I/O error (SQLITE_IOERR, which
    /// is also how ENOSPC on the WAL shows), another process holds a lock (SQLITE_BUSY/LOCKED), or the file
    /// cannot be opened right now (SQLITE_CANTOPEN). The supervision keeps the incident and writes it again
    /// (`IncidentLedger`'s unwritten incidents) rather than losing it.
    public var retryLater: Bool {
        guard let code = sqliteCode else { return false }
        return [5, 6, 10, 13, 14].contains(code)
    }

    /// The database file itself is damaged or is not a database (SQLITE_CORRUPT, SQLITE_NOTADB): it will not
    /// get better, it must be moved aside (see `IncidentStore.openRecovering`).
    public var isDamaged: Bool {
        guard let code = sqliteCode else { return false }
        return code == 11 || code == 26
    }

    /// `PATH: MESSAGE`.
    public var description: String { "\(path): \(message)" }
}

extension StoreError: RetryableError {}
