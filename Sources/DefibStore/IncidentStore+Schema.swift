import GRDB

/// The schema and its migrations. Migrations are append-only: never edit a registered one, add `v2`, `v3` …
enum IncidentSchema {
    static let table = "incident"

    /// Columns computed from `body` (name, type, SQL): the process's name, executable, uid and gid, and the
    /// diagnosis's kind (the word before its first ": "). Queries use the column when the store has it and
    /// the same expression when a store not yet migrated is read (the CLI opens stores read-only).
    /// A body that is not JSON gives NULLs (json_extract would fail the row's insert: the indexes evaluate
    /// these on write), so a corrupt row stays readable as "cannot be decoded" rather than unwritable.
    static let derivedColumns: [(name: String, type: String, expression: String)] = [
        ("comm", "TEXT", "CASE WHEN json_valid(body) THEN json_extract(body, '$.process.comm') END"),
        ("exe", "TEXT", "CASE WHEN json_valid(body) THEN json_extract(body, '$.binaryPath') END"),
        ("uid", "INTEGER", "CASE WHEN json_valid(body) THEN json_extract(body, '$.process.uid') END"),
        ("gid", "INTEGER", "CASE WHEN json_valid(body) THEN json_extract(body, '$.process.gid') END"),
        ("diagnosis_kind", "TEXT", """
            CASE WHEN NOT json_valid(body) THEN NULL \
            WHEN instr(json_extract(body, '$.diagnosis'), ': ') > 0 \
            THEN substr(json_extract(body, '$.diagnosis'), 1, instr(json_extract(body, '$.diagnosis'), ': ') - 1) \
            ELSE nullif(json_extract(body, '$.diagnosis'), '') END
            """),
    ]

    static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1") { db in
            // `body` is the whole Incident as JSON (the record of truth); the other columns are copies of what
            // queries filter and sort on. detected_at is Unix milliseconds (UTC), the body's precision.
            try db.execute(sql: """
                CREATE TABLE incident (
                    id INTEGER PRIMARY KEY AUTOINCREMENT,
                    service TEXT NOT NULL,
                    pid INTEGER NOT NULL,
                    cause_kind TEXT NOT NULL,
                    detected_at INTEGER NOT NULL,
                    outcome TEXT NOT NULL,
                    signature TEXT,
                    core_path TEXT,
                    core_bytes INTEGER NOT NULL DEFAULT 0,
                    body TEXT NOT NULL
                );
                CREATE INDEX incident_by_time ON incident (detected_at);
                CREATE INDEX incident_by_service ON incident (service, detected_at);
                CREATE INDEX incident_by_signature ON incident (signature);
                CREATE INDEX incident_by_core ON incident (core_path) WHERE core_path IS NOT NULL;
                """)
        }
        migrator.registerMigration("v2-process-columns") { db in
            // What coredumpctl-style matches filter on, derived from the body so no writer has to keep them
            // (virtual generated columns: computed on read, indexable, filled for old rows too).
            for (name, type, expression) in derivedColumns {
                try db.execute(sql: "ALTER TABLE incident ADD COLUMN \(name) \(type) GENERATED ALWAYS AS (\(expression)) VIRTUAL")
            }
            try db.execute(sql: """
                CREATE INDEX incident_by_comm ON incident (comm);
                CREATE INDEX incident_by_exe ON incident (exe);
                CREATE INDEX incident_by_diagnosis_kind ON incident (diagnosis_kind);
                """)
        }
        migrator.registerMigration("runtime-evidence") { db in
            // The runtime a hang's evidence came from ("go", "python", "java", "native"), for queries such as
            // "every Java deadlock": a virtual column over the body (the record of truth), so no writer changes.
            // json_valid first: a damaged body must stay readable as a row (and reported), never fail the write.
            try db.execute(sql: """
                ALTER TABLE incident ADD COLUMN runtime TEXT GENERATED ALWAYS AS (CASE WHEN json_valid(body) THEN json_extract(body, '$.runtimeEvidence.runtime') END) VIRTUAL;
                CREATE INDEX incident_by_runtime ON incident (runtime) WHERE runtime IS NOT NULL;
                """)
        }
        FleetOutboxSchema.register(&migrator)
        return migrator
    }
}
