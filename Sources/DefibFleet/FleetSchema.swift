import Foundation
import Logging
import PostgresNIO

/// The fleet database's schema and its versioned migrations, run by `defib fleet migrate` (never by a
/// shipper: the role that ships needs no DDL rights, and a schema change is an operator's decision).
///
/// Migrations are append-only and additive, each one transaction (PostgreSQL's DDL is transactional: a
/// migration is applied whole or not at all), serialized by an advisory lock so two operators migrating at
/// once cannot interleave. `defib_fleet_schema` lists the versions applied. `migrate` refuses, changing
/// nothing: a database holding fleet tables it did not create, a schema newer than this defib knows, a
/// version table whose tables are missing, and a downgrade.
///
/// Shippers write to any schema at or above `requiredForShipping` (an older defib ships into a newer,
/// additive schema); below it they hold their backlog and say `run defib fleet migrate`.
public enum FleetSchema {
    /// The newest version this defib knows.
    public static var latest: Int { migrations.last!.version }
    /// The oldest version a shipper of this defib can write to (it raises fleet events: version 2).
    public static let requiredForShipping = 2
    /// Serializes migrations across processes (`pg_advisory_xact_lock`).
    static let migrationLockKey: Int64 = 0x6465_6669_6266_6c74   // "defibflt"

    struct Migration: Sendable {
        let version: Int
        let summary: String
        let statements: [String]
        /// Tables the version must have (checked before trusting a version table).
        let tables: [String]
    }

    static let migrations: [Migration] = [
        Migration(version: 1, summary: "fleet incidents: one row per (host, local database, local incident id)", statements: [
            """
            CREATE TABLE defib_fleet_schema (
                version integer PRIMARY KEY,
                description text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )
            """,
            // The local JSON is kept whole (`json` keeps its key order: `fleet incidents --json` prints what
            // `defib incidents --json` prints); the columns are what the views filter, group and sort on.
            """
            CREATE TABLE fleet_incident (
                host text NOT NULL,
                store_id text NOT NULL,
                local_id bigint NOT NULL,
                version bigint NOT NULL,
                machine_id text,
                service text NOT NULL,
                detected_at timestamptz NOT NULL,
                cause text NOT NULL,
                outcome text NOT NULL,
                diagnosis_kind text,
                signature text,
                suspect text,
                body json NOT NULL,
                shipped_at timestamptz NOT NULL DEFAULT now(),
                PRIMARY KEY (host, store_id, local_id)
            )
            """,
            "CREATE INDEX fleet_incident_by_time ON fleet_incident (detected_at DESC)",
            "CREATE INDEX fleet_incident_by_host ON fleet_incident (host, detected_at DESC)",
            "CREATE INDEX fleet_incident_by_signature ON fleet_incident (signature, detected_at DESC)",
        ], tables: ["defib_fleet_schema", "fleet_incident"]),
        Migration(version: 2, summary: "fleet events (one signature on many hosts) and covering indexes for the views", statements: [
            """
            CREATE TABLE fleet_event (
                id bigserial PRIMARY KEY,
                signature text NOT NULL,
                raised_at timestamptz NOT NULL DEFAULT now(),
                raised_by text NOT NULL,
                first_seen timestamptz NOT NULL,
                last_seen timestamptz NOT NULL,
                hosts integer NOT NULL,
                threshold integer NOT NULL,
                window_seconds integer NOT NULL,
                diagnosis_kind text,
                suspect text,
                suspect_hosts integer NOT NULL DEFAULT 0,
                host_names text[] NOT NULL
            )
            """,
            "CREATE INDEX fleet_event_by_signature ON fleet_event (signature, last_seen DESC)",
            "CREATE INDEX fleet_event_by_time ON fleet_event (raised_at DESC)",
            // The alert check counts hosts of one signature in a window: index-only with the host included.
            "DROP INDEX fleet_incident_by_signature",
            "CREATE INDEX fleet_incident_by_signature ON fleet_incident (signature, detected_at DESC) INCLUDE (host, suspect)",
            // `fleet signatures --since`: everything the view reads, in time order, without touching the rows.
            """
            CREATE INDEX fleet_incident_signed_by_time ON fleet_incident (detected_at DESC)
                INCLUDE (signature, host, diagnosis_kind, suspect) WHERE signature IS NOT NULL
            """,
        ], tables: ["fleet_event"]),
    ]

    /// What the database holds.
    public enum State: Sendable, Equatable, CustomStringConvertible {
        /// No fleet tables at all.
        case empty
        /// defib's schema at this version.
        case version(Int)
        /// Something defib did not make, or a version table whose tables are gone: never touched.
        case foreign(String)

        /// For messages.
        public var description: String {
            switch self {
            case .empty: "no fleet schema"
            case let .version(v): "schema version \(v)"
            case let .foreign(why): "not defib's schema: \(why)"
            }
        }
    }

    /// Reads the schema's state.
    public static func state(_ c: FleetConnection) async throws -> State {
        let names = ["defib_fleet_schema", "fleet_incident", "fleet_event"]
        let rows = try await c.run("SELECT name, to_regclass(name) IS NOT NULL FROM unnest(\(names)::text[]) AS name", "read the fleet schema")
        var present: Set<String> = []
        for row in rows {
            let (name, exists) = try row.decode((String, Bool).self)
            if exists { present.insert(name) }
        }
        guard present.contains("defib_fleet_schema") else {
            return present.isEmpty ? .empty : .foreign("table(s) \(present.sorted().joined(separator: ", ")) exist without defib_fleet_schema")
        }
        let versionRows = try await c.run("SELECT coalesce(max(version), 0) FROM defib_fleet_schema", "read the fleet schema version")
        let version = try versionRows.first?.decode(Int.self) ?? 0
        for m in migrations where m.version <= version {
            for table in m.tables where !present.contains(table) {
                return .foreign("defib_fleet_schema says version \(version) but table \(table) is missing")
            }
        }
        return .version(version)
    }

    /// Brings the schema to `target` (default: `latest`). Returns the versions before and after.
    @discardableResult
    public static func migrate(_ c: FleetConnection, to target: Int = latest, logger: Logger) async throws -> (from: Int, to: Int) {
        guard (1...latest).contains(target) else {
            throw FleetError(.schema, "migrate to version \(target)", "this defib knows versions 1 to \(latest)")
        }
        return try await c.transaction("migrate the fleet schema to version \(target)") { c in
            try await c.run("SELECT pg_advisory_xact_lock(\(migrationLockKey))", "take the migration lock")
            try await c.run("SET LOCAL lock_timeout = '15s'", "set lock_timeout")
            let current: Int
            switch try await state(c) {
            case .empty: current = 0
            case let .version(v): current = v
            case let .foreign(why):
                throw FleetError(.schema, "migrate", "refused, nothing changed: \(why)")
            }
            if current > latest {
                throw FleetError(.schema, "migrate", "refused, nothing changed: the database is at schema version \(current), newer than this defib knows (\(latest)); use a newer defib")
            }
            if target < current {
                throw FleetError(.schema, "migrate", "refused, nothing changed: the database is at version \(current); migrations never go back (asked for \(target))")
            }
            for m in migrations where m.version > current && m.version <= target {
                for sql in m.statements {
                    try await c.run(PostgresQuery(unsafeSQL: sql), "migration \(m.version)")
                }
                try await c.run("INSERT INTO defib_fleet_schema (version, description) VALUES (\(m.version), \(m.summary))",
                                "record migration \(m.version)")
                logger.info("fleet schema: applied version \(m.version): \(m.summary)")
            }
            return (current, max(current, target))
        }
    }

    /// Throws unless a shipper of this defib can write to the database.
    static func checkShippable(_ c: FleetConnection) async throws {
        switch try await state(c) {
        case .empty:
            throw FleetError(.schema, "check the fleet schema", "the database has no fleet schema yet: run `defib fleet migrate --url URL`")
        case let .version(v) where v < requiredForShipping:
            throw FleetError(.schema, "check the fleet schema", "schema version \(v) is older than this defib needs (\(requiredForShipping)): run `defib fleet migrate --url URL`")
        case .version:
            return
        case let .foreign(why):
            throw FleetError(.schema, "check the fleet schema", why)
        }
    }
}
