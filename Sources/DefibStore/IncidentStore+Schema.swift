import GRDB

/// The schema and its migrations. Migrations are append-only: never edit a registered one, add `v2`, `v3` …
enum IncidentSchema {
    static let table = "incident"

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
        migrator.registerMigration("runtime-evidence") { db in
            // The runtime a hang's evidence came from ("go", "python", "java", "native"), for queries such as
            // "every Java deadlock": a virtual column over the body (the record of truth), so no writer changes.
            // json_valid first: a damaged body must stay readable as a row (and reported), never fail the write.
            try db.execute(sql: """
                ALTER TABLE incident ADD COLUMN runtime TEXT GENERATED ALWAYS AS (CASE WHEN json_valid(body) THEN json_extract(body, '$.runtimeEvidence.runtime') END) VIRTUAL;
                CREATE INDEX incident_by_runtime ON incident (runtime) WHERE runtime IS NOT NULL;
                """)
        }
        return migrator
    }
}
