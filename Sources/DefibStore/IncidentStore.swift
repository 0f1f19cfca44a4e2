import DefibCore
import Foundation
import GRDB
#if canImport(Glibc)
import Glibc
#endif

/// The incident database: `<state_dir>/incidents.sqlite`, one row per incident.
///
/// The supervisor opens it read-write (`open`) and writes while `defib incidents` reads it from another
/// process (`openReadOnly`): the file is in WAL mode so readers never block the writer, and both sides wait
/// (busy timeout) rather than fail when the other holds a lock. The file is private (0600): cores and
/// stacks paths, lock words and notes are nobody else's business.
public final class IncidentStore: Sendable {
    /// The database file.
    public let path: String
    let reader: any DatabaseReader
    private let writer: (any DatabaseWriter)?
    /// Fleet outbox rows the shipper has seen committed, deleted with the next incident write.
    let outboxAcknowledgements = OutboxAcknowledgements()

    /// The file name inside the state directory.
    public static let fileName = "incidents.sqlite"
    /// How long a connection waits for another process's lock before giving up.
    static let busyTimeoutSeconds: TimeInterval = 10

    private init(path: String, reader: any DatabaseReader, writer: (any DatabaseWriter)?) {
        self.path = path; self.reader = reader; self.writer = writer
    }

    /// The database path for a state directory.
    public static func databasePath(stateDirectory: String) -> String {
        stateDirectory.hasSuffix("/") ? stateDirectory + fileName : "\(stateDirectory)/\(fileName)"
    }

    /// Opens (creating and migrating when needed) the store in `stateDirectory`, which must exist.
    public static func open(stateDirectory: String) throws -> IncidentStore {
        let path = databasePath(stateDirectory: stateDirectory)
        try ensurePrivateFile(path)
        var config = Configuration()
        config.busyMode = .timeout(busyTimeoutSeconds)
        config.label = "defib.incidents"
        let pool: DatabasePool
        do {
            pool = try DatabasePool(path: path, configuration: config)   // DatabasePool switches the file to WAL
        } catch {
            throw StoreError(.open, path: path, "cannot open: \(sqliteMessage(error))", sqliteCode: sqliteCode(error))
        }
        do {
            try IncidentSchema.migrator.migrate(pool)
        } catch {
            throw StoreError(.migration, path: path, "schema migration failed: \(sqliteMessage(error))", sqliteCode: sqliteCode(error))
        }
        return IncidentStore(path: path, reader: pool, writer: pool)
    }

    /// Opens an existing store for reading only (the CLI). Fails with `.missingDatabase` when there is none.
    public static func openReadOnly(stateDirectory: String) throws -> IncidentStore {
        let path = databasePath(stateDirectory: stateDirectory)
        guard FileManager.default.fileExists(atPath: path) else {
            throw StoreError(.missingDatabase, path: path, "no incident database at \(path)")
        }
        var config = Configuration()
        config.readonly = true
        config.busyMode = .timeout(busyTimeoutSeconds)
        config.label = "defib.incidents.readonly"
        let queue: DatabaseQueue
        do {
            queue = try DatabaseQueue(path: path, configuration: config)
        } catch {
            throw StoreError(.open, path: path, "cannot open for reading: \(sqliteMessage(error))")
        }
        let (initialized, empty): (Bool, Bool)
        do {
            // GRDB's migrator creates its bookkeeping table before the first migration commits: a file
            // holding only that (and its primary key's sqlite_autoindex_grdb_migrations_1, hence tbl_name
            // rather than name) is a database being created, not a foreign one.
            (initialized, empty) = try queue.read { db in
                (try db.tableExists(IncidentSchema.table),
                 try Int.fetchOne(db, sql: #"SELECT COUNT(*) FROM sqlite_master WHERE tbl_name NOT LIKE 'grdb\_%' ESCAPE '\'"#) == 0)
            }
        } catch {
            throw StoreError(.open, path: path, "cannot read: \(sqliteMessage(error))")
        }
        if !initialized && empty {
            throw StoreError(.uninitialized, path: path, "the incident database has no schema yet (a supervisor is creating it?)")
        }
        guard initialized else {
            throw StoreError(.open, path: path, "not an incident database (no '\(IncidentSchema.table)' table)")
        }
        return IncidentStore(path: path, reader: queue, writer: nil)
    }

    // MARK: Writing

    /// Records a new incident and returns its id (the incident's own `id` is ignored).
    @discardableResult
    public func insert(_ incident: Incident) throws -> Int64 {
        let row = try StoredRow(incident, path: path)
        let pruning = outboxAcknowledgements.peek(OutboxAcknowledgements.perIncidentWrite)
        let id = try write("insert incident") { db in
            try db.execute(sql: StoredRow.insertSQL, arguments: row.arguments)
            let id = db.lastInsertedRowID
            try FleetOutboxSchema.recordChange(db, incidentID: id, pruning: pruning)
            return id
        }
        outboxAcknowledgements.remove(pruning)
        return id
    }

    /// Replaces the stored incident with the same `id`.
    public func update(_ incident: Incident) throws {
        guard let id = incident.id else {
            throw StoreError(.write, path: path, "update: the incident has no id (insert it first)")
        }
        let row = try StoredRow(incident, path: path)
        let pruning = outboxAcknowledgements.peek(OutboxAcknowledgements.perIncidentWrite)
        let changed = try write("update incident \(id)") { db in
            try db.execute(sql: Self.updateSQL, arguments: row.arguments + [id])
            let changed = db.changesCount
            if changed > 0 { try FleetOutboxSchema.recordChange(db, incidentID: id, pruning: pruning) }
            return changed
        }
        outboxAcknowledgements.remove(pruning)
        if changed == 0 { throw StoreError(.notFound, path: path, "no incident \(id)") }
    }

    /// Incidents whose evidence came from `runtime` (the `runtime` column), newest first.
    public func list(runtime: ServiceRuntime, limit: Int? = nil) throws -> [Incident] {
        try fetch("list incidents of runtime \(runtime.rawValue)",
                  sql: "SELECT \(Self.columns) FROM incident WHERE runtime = ? ORDER BY detected_at DESC, id DESC" + (limit.map { " LIMIT \($0)" } ?? ""),
                  arguments: [runtime.rawValue])
    }

    /// Changes the stored incident `id` in one write transaction (read, change, write back), for an incident
    /// whose writer no longer holds it. Throws `.notFound` when there is none. Like every incident write, it
    /// records the change in the fleet outbox in the same transaction.
    public func modify(id: Int64, _ change: @escaping @Sendable (inout Incident) -> Void) throws {
        let path = self.path
        let pruning = outboxAcknowledgements.peek(OutboxAcknowledgements.perIncidentWrite)
        try write("modify incident \(id)") { db in
            guard let row = try Row.fetchOne(db, sql: "SELECT \(Self.columns) FROM incident WHERE id = ?", arguments: [id]) else {
                throw StoreError(.notFound, path: path, "no incident \(id)")
            }
            let columns = IncidentCodec.Columns(id: row["id"], service: row["service"], pid: row["pid"],
                                                detectedAtMs: row["detected_at"], outcome: row["outcome"])
            var incident = try IncidentCodec.decode(row["body"], columns: columns)
            change(&incident)
            let stored = try StoredRow(incident, path: path)
            try db.execute(sql: Self.updateSQL, arguments: stored.arguments + [id])
            try FleetOutboxSchema.recordChange(db, incidentID: id, pruning: pruning)
        }
        outboxAcknowledgements.remove(pruning)
    }

    /// Removes one incident (retention). Returns false when there was none with that id.
    @discardableResult
    public func delete(id: Int64) throws -> Bool {
        try write("delete incident \(id)") { db in
            try db.execute(sql: "DELETE FROM incident WHERE id = ?", arguments: [id])
            return db.changesCount > 0
        }
    }

    // MARK: Reading

    /// One incident that still has a core on disk, from the indexed columns (no JSON decoding): what
    /// core retention needs.
    public struct CoreRow: Sendable, Equatable {
        public var id: Int64
        public var service: String
        public var signature: String?
        public var detectedUnixMs: Int64
        public var corePath: String
        /// The cores of the instance's other processes (from the body's `processes`).
        public var otherCorePaths: [String] = []
        /// A stall's core (cause `stall`): the first to go under retention.
        public var stall = false
    }

    /// Every incident whose core is recorded, oldest first.
    public func incidentsWithCores() throws -> [CoreRow] {
        do {
            return try reader.read { db in
                // The other processes' cores sit in the body's `processes` (a multi-process instance's stuck workers).
                let others = "(SELECT group_concat(json_extract(p.value, '$.corePath'), char(10)) FROM json_each(incident.body, '$.processes') AS p "
                    + "WHERE json_extract(p.value, '$.main') = 0 AND json_extract(p.value, '$.corePath') IS NOT NULL)"
                return try Row.fetchAll(db, sql: "SELECT id, service, signature, detected_at, core_path, cause_kind, \(others) AS other_cores FROM incident "
                                         + "WHERE core_path IS NOT NULL ORDER BY detected_at, id")
                    .map { row in
                        let other: String? = row["other_cores"]
                        return CoreRow(id: row["id"], service: row["service"], signature: row["signature"], detectedUnixMs: row["detected_at"],
                                       corePath: row["core_path"], otherCorePaths: other?.split(separator: "\n").map(String.init) ?? [],
                                       stall: (row["cause_kind"] as String?) == "stall")
                    }
            }
        } catch {
            throw StoreError(.read, path: path, "list cores: \(sqliteMessage(error))")
        }
    }

    /// The incident with this id, or nil.
    public func incident(id: Int64) throws -> Incident? {
        try fetch("read incident \(id)", sql: "SELECT \(Self.columns) FROM incident WHERE id = ?", arguments: [id]).first
    }

    /// The newest incident (of `service`, when given), or nil when there is none.
    public func latest(service: String? = nil) throws -> Incident? {
        try list(service: service, limit: 1).first
    }

    /// Incidents newest first (by detection time, then id), optionally only one service's, only those
    /// detected within `since...until` (both inclusive), and at most `limit` of them.
    public func list(service: String? = nil, since: Date? = nil, until: Date? = nil, limit: Int? = nil) throws -> [Incident] {
        let (filter, arguments) = Self.filter(service: service, since: since, until: until)
        var sql = "SELECT \(Self.columns) FROM incident\(filter) ORDER BY detected_at DESC, id DESC"
        var args = arguments
        if let limit {
            sql += " LIMIT ?"
            args += [max(0, limit)]
        }
        return try fetch("list incidents", sql: sql, arguments: StatementArguments(args))
    }

    /// How many incidents match (same filters as `list`).
    public func count(service: String? = nil, since: Date? = nil, until: Date? = nil) throws -> Int {
        let (filter, arguments) = Self.filter(service: service, since: since, until: until)
        do {
            return try reader.read { db in
                try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM incident\(filter)", arguments: StatementArguments(arguments)) ?? 0
            }
        } catch {
            throw StoreError(.read, path: path, "count incidents: \(sqliteMessage(error))")
        }
    }

    // MARK: Plumbing

    static let columns = "id, service, pid, detected_at, outcome, body"
    private static let updateSQL = """
        UPDATE incident SET service = ?, pid = ?, cause_kind = ?, detected_at = ?, outcome = ?, signature = ?,
               core_path = ?, core_bytes = ?, body = ?
        WHERE id = ?
        """

    private static func filter(service: String?, since: Date?, until: Date?) -> (String, [any DatabaseValueConvertible]) {
        var clauses: [String] = []
        var args: [any DatabaseValueConvertible] = []
        if let service { clauses.append("service = ?"); args.append(service) }
        if let since { clauses.append("detected_at >= ?"); args.append(since.storedMilliseconds) }
        if let until { clauses.append("detected_at <= ?"); args.append(until.storedMilliseconds) }
        return (clauses.isEmpty ? "" : " WHERE " + clauses.joined(separator: " AND "), args)
    }

    func fetch(_ what: String, sql: String, arguments: StatementArguments) throws -> [Incident] {
        let rows: [Row]
        do {
            rows = try reader.read { try Row.fetchAll($0, sql: sql, arguments: arguments) }
        } catch {
            throw StoreError(.read, path: path, "\(what): \(sqliteMessage(error))", sqliteCode: sqliteCode(error))
        }
        return try rows.map { row in
            let columns = IncidentCodec.Columns(id: row["id"], service: row["service"], pid: row["pid"],
                                                detectedAtMs: row["detected_at"], outcome: row["outcome"])
            let body: String = row["body"]
            do {
                return try IncidentCodec.decode(body, columns: columns)
            } catch {
                throw StoreError(.corruptRecord, path: path, "incident \(columns.id) cannot be decoded: \(error)")
            }
        }
    }

    func write<T>(_ what: String, _ body: @escaping @Sendable (Database) throws -> T) throws -> T {
        guard let writer else { throw StoreError(.readOnly, path: path, "\(what): the store was opened read-only") }
        do {
            return try writer.write(body)
        } catch {
            throw StoreError(.write, path: path, "\(what): \(sqliteMessage(error))", sqliteCode: sqliteCode(error))
        }
    }

    /// Creates the database file 0600 before SQLite does (SQLite would honour the umask, typically 0644) and
    /// tightens an existing one of ours; the -wal and -shm files inherit the database file's mode. A link
    /// there is never followed and a file of another user is refused, not chmod'ed.
    private static func ensurePrivateFile(_ path: String) throws {
        let fd = Glibc.open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY, 0o600)
        guard fd >= 0 else {
            let e = errno
            throw StoreError(.open, path: path, e == ELOOP ? "is a symbolic link; defib does not follow one to its database"
                                                           : "cannot create: \(String(cString: strerror(e)))",
                             sqliteCode: e == ENOSPC || e == EDQUOT ? 13 : nil)
        }
        defer { close(fd) }
        var st = stat()
        if fstat(fd, &st) == 0, st.st_uid != geteuid() || (st.st_mode & S_IFMT) != S_IFREG {
            throw StoreError(.open, path: path, (st.st_mode & S_IFMT) != S_IFREG ? "is not a regular file"
                                                 : "is owned by uid \(st.st_uid), not by defib; defib does not use a database someone else made")
        }
        if fchmod(fd, 0o600) != 0 {
            throw StoreError(.open, path: path, "cannot make it private (chmod 0600): \(String(cString: strerror(errno)))")
        }
    }
}

/// One incident flattened to the table's columns.
struct StoredRow {
    var arguments: StatementArguments

    static let insertSQL = """
        INSERT INTO incident (service, pid, cause_kind, detected_at, outcome, signature, core_path, core_bytes, body)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
        """

    init(_ incident: Incident, path: String) throws {
        let body: String
        do { body = try IncidentCodec.encode(incident) } catch {
            throw StoreError(.write, path: path, "cannot encode incident: \(error)")
        }
        let core = incident.capture?.path
        arguments = [incident.service, Int64(incident.pid), incident.cause.kind, incident.detectedAt.storedMilliseconds,
                     incident.outcome.rawValue, incident.signature, core, incident.capture?.bytes ?? 0, body]
    }
}

/// SQLite's primary result code behind `error`, when it came from SQLite.
func sqliteCode(_ error: any Error) -> Int32? {
    (error as? DatabaseError).map { $0.resultCode.primaryResultCode.rawValue }
}

/// GRDB's messages carry the SQL and the code; the message alone reads better after our own context.
func sqliteMessage(_ error: any Error) -> String {
    if let e = error as? DatabaseError { return e.message ?? "\(e.resultCode)" }
    return "\(error)"
}
