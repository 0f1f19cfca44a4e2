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
        FleetOutboxSchema.register(&migrator)
        return migrator
    }
}
