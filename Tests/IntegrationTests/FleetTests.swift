import DefibCore
import DefibFleet
import DefibPOSIX
import DefibStore
import Foundation
import Glibc
import Logging
import Testing

/// The fleet against a real PostgreSQL (`FleetTestDatabase`): schema migrations and their refusals, the
/// idempotent upsert, passwords and TLS, and a fleet of defib hosts in network namespaces hanging on the same
/// catalog update while the database goes away and a link is cut. Serialized: one test stops the shared
/// server.
@Suite(.serialized, .timeLimit(.minutes(5)),
       .enabled(if: FleetTestDatabase.unavailable == nil, "fleet tests: \(FleetTestDatabase.unavailable ?? "")"))
struct FleetTests {
    func defib(_ args: [String], env: [String: String] = [:]) throws -> CommandResult {
        try runCommand([Binaries.defib] + args, env: env, timeoutMs: 90_000)
    }

    func json(_ r: CommandResult) throws -> [[String: Any]] {
        guard r.code == 0 else { throw TestFailure("exit \(r.code): \(r.stderr)\(r.stdout)") }
        guard let array = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [[String: Any]] else {
            throw TestFailure("not a JSON array: \(r.stdout.prefix(300))")
        }
        return array
    }

    static let logger: Logger = {
        var l = Logger(label: "fleet-test")
        l.logLevel = .critical
        return l
    }()

    // MARK: Schema

    @Test func migrateCreatesTheSchemaOnceAndChecksIt() throws {
        let db = try FleetTestDatabase.get()
        let name = try db.createDatabase("migrate")
        let url = db.socketURL(name)
        let check0 = try defib(["fleet", "migrate", "--url", url, "--check"])
        #expect(check0.code == 1 && check0.stdout.contains("no fleet schema"), "\(check0.stdout)\(check0.stderr)")
        let first = try defib(["fleet", "migrate", "--url", url])
        #expect(first.code == 0 && first.stdout.contains("migrated from version 0 to \(FleetSchema.latest)"), "\(first.stdout)\(first.stderr)")
        let again = try defib(["fleet", "migrate", "--url", url])
        #expect(again.code == 0 && again.stdout.contains("already at version \(FleetSchema.latest)"), "\(again.stdout)\(again.stderr)")
        let check = try defib(["fleet", "migrate", "--url", url, "--check"])
        #expect(check.code == 0 && check.stdout.contains("schema version \(FleetSchema.latest)"), "\(check.stdout)\(check.stderr)")
        #expect(try db.psql(name, "SELECT string_agg(version::text, ',' ORDER BY version) FROM defib_fleet_schema") == "1,2")
        // Empty views say so.
        #expect(try defib(["fleet", "signatures", "--url", url]).stdout == "No signatures.\n")
        #expect(try json(defib(["fleet", "incidents", "--url", url, "--json"])).isEmpty)
    }

    @Test func anOlderSchemaIsUpgradedWithItsRowsAndShippersWaitForIt() throws {
        let db = try FleetTestDatabase.get()
        let name = try db.createDatabase("older")
        let url = db.socketURL(name)
        let to1 = try defib(["fleet", "migrate", "--url", url, "--to", "1"])
        #expect(to1.code == 0, "\(to1.stderr)")
        // A row written at version 1 (by hand, as an older defib would have).
        try db.psql(name, """
            INSERT INTO fleet_incident (host, store_id, local_id, version, service, detected_at, cause, outcome, signature, body)
            VALUES ('old-host', 's1', 7, 3, 'proxy', now() - interval '5 minutes', 'exited', 'recovered', 'abc', '{"id":7,"service":"proxy"}')
            """)
        let check = try defib(["fleet", "migrate", "--url", url, "--check"])
        #expect(check.code == 1 && check.stdout.contains("schema version 1"), "\(check.stdout)")

        // A shipper refuses to write to it and keeps its backlog.
        let dir = Scratch("fleet-older"); defer { dir.remove() }
        let store = try IncidentStore.open(stateDirectory: dir.path)
        try store.insert(Incident(service: "svc", pid: 1, detectedAt: Date(), cause: .exited(code: 1)))
        let endpoint = try FleetEndpoint(url: url, passwordFile: nil)
        let shipper = try FleetShipper(store: store, settings: .init(endpoint: endpoint, host: "h1", machineID: nil,
                                                                    alert: FleetAlertRule(hosts: 3, windowSeconds: 600)), logger: Self.logger)
        shipper.start()
        defer { shipper.stop(flushWithin: .seconds(1)) }
        let waiting = waitUntil(timeoutMs: 30_000) { shipper.status.lastError?.contains("run `defib fleet migrate") == true }
        #expect(waiting, "\(shipper.status)")
        #expect(shipper.status.backlog == 1 && shipper.status.shipped == 0, "\(shipper.status)")

        let up = try defib(["fleet", "migrate", "--url", url])
        #expect(up.code == 0 && up.stdout.contains("migrated from version 1 to 2"), "\(up.stdout)\(up.stderr)")
        #expect(try db.psql(name, "SELECT host || ':' || local_id || ':' || version || ':' || body::text FROM fleet_incident")
                == #"old-host:7:3:{"id":7,"service":"proxy"}"#)
        #expect(try db.psql(name, "SELECT count(*) FROM pg_indexes WHERE indexname = 'fleet_incident_signed_by_time'") == "1")
        // The shipper notices by itself (it retries with backoff) and ships its backlog.
        let drained = waitUntil(timeoutMs: 30_000) { shipper.status.shipped == 1 && shipper.status.backlog == 0 }
        #expect(drained, "\(shipper.status)")
        #expect(try db.psql(name, "SELECT count(*) FROM fleet_incident") == "2")
    }

    @Test func migrateRefusesANewerOrForeignSchemaAndChangesNothing() throws {
        let db = try FleetTestDatabase.get()
        // Newer than this defib knows.
        let newer = try db.createDatabase("newer")
        #expect(try defib(["fleet", "migrate", "--url", db.socketURL(newer)]).code == 0)
        try db.psql(newer, "INSERT INTO defib_fleet_schema (version, description) VALUES (99, 'from the future')")
        let before = try db.psql(newer, "SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables WHERE schemaname = 'public'")
        let r = try defib(["fleet", "migrate", "--url", db.socketURL(newer)])
        #expect(r.code == 1 && r.stderr.contains("schema version 99, newer than this defib knows"), "\(r.stdout)\(r.stderr)")
        #expect(try db.psql(newer, "SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables WHERE schemaname = 'public'") == before)
        #expect(try db.psql(newer, "SELECT max(version) FROM defib_fleet_schema") == "99")
        // A table of the same name that defib did not make.
        let foreign = try db.createDatabase("foreign")
        try db.psql(foreign, "CREATE TABLE fleet_incident (id int PRIMARY KEY, note text); INSERT INTO fleet_incident VALUES (1, 'theirs')")
        let f = try defib(["fleet", "migrate", "--url", db.socketURL(foreign)])
        #expect(f.code == 1 && f.stderr.contains("refused, nothing changed") && f.stderr.contains("without defib_fleet_schema"), "\(f.stderr)")
        #expect(try db.psql(foreign, "SELECT to_regclass('defib_fleet_schema') IS NULL AND (SELECT note FROM fleet_incident) = 'theirs'") == "t")
        // A version table whose tables were dropped by hand.
        let broken = try db.createDatabase("broken")
        #expect(try defib(["fleet", "migrate", "--url", db.socketURL(broken)]).code == 0)
        try db.psql(broken, "DROP TABLE fleet_event")
        let b = try defib(["fleet", "migrate", "--url", db.socketURL(broken), "--check"])
        #expect(b.code == 1 && b.stdout.contains("table fleet_event is missing"), "\(b.stdout)\(b.stderr)")
    }

    // MARK: Delivery

    @Test func aDuplicateOrOlderDeliveryChangesNothing() throws {
        let db = try FleetTestDatabase.get()
        let name = try db.createDatabase("dup")
        #expect(try defib(["fleet", "migrate", "--url", db.socketURL(name)]).code == 0)
        let endpoint = try FleetEndpoint(url: db.socketURL(name), passwordFile: nil)
        var incident = Incident(id: 5, service: "proxy", pid: 42, detectedAt: Date(), cause: .exited(code: 3))
        incident.signature = "sig-dup"
        let rule = FleetAlertRule(hosts: 10, windowSeconds: 600)
        let v1 = FleetIncidentRow(incident: incident, version: 10, host: "h1", storeID: "s", machineID: nil)
        incident.outcome = .recovered
        let v2 = FleetIncidentRow(incident: incident, version: 11, host: "h1", storeID: "s", machineID: nil)
        // The same local id from another host or another local database is another incident.
        let other = FleetIncidentRow(incident: incident, version: 1, host: "h2", storeID: "s", machineID: nil)
        let recreated = FleetIncidentRow(incident: incident, version: 1, host: "h1", storeID: "s-new", machineID: nil)
        let results = try FleetThread.run { () -> [FleetShipResult] in
            let c = try await FleetConnection.open(endpoint, logger: Self.logger)
            var out: [FleetShipResult] = []
            out.append(try await FleetWriter.ship([v1], on: c, alert: rule, raisedBy: "h1"))
            out.append(try await FleetWriter.ship([v1], on: c, alert: rule, raisedBy: "h1"))   // delivered twice
            out.append(try await FleetWriter.ship([v2], on: c, alert: rule, raisedBy: "h1"))
            // The older change arriving late (a retry that lost its acknowledgement) loses.
            out.append(try await FleetWriter.ship([v1], on: c, alert: rule, raisedBy: "h1"))
            out.append(try await FleetWriter.ship([other, recreated], on: c, alert: rule, raisedBy: "h2"))
            await c.close()
            return out
        }
        #expect(results[0].inserted == 1 && results[0].updated == 0)
        #expect(results[1].inserted == 0 && results[1].updated == 0 && results[1].unchanged == 1)
        #expect(results[2].updated == 1)
        #expect(results[3].unchanged == 1)
        #expect(results[4].inserted == 2)
        #expect(try db.psql(name, "SELECT count(*) || ':' || max(version) || ':' || max(outcome) FROM fleet_incident WHERE store_id = 's' AND host = 'h1'")
                == "1:11:recovered")
        #expect(try db.psql(name, "SELECT count(*) FROM fleet_incident") == "3")
    }

    // MARK: Passwords and TLS

    @Test func passwordsComeFromAPrivateFileOrTheEnvironmentNeverTheURL() throws {
        let db = try FleetTestDatabase.get()
        let name = try db.createDatabase("pw")
        #expect(try defib(["fleet", "migrate", "--url", db.socketURL(name)]).code == 0)
        let dir = Scratch("fleet-pw"); defer { dir.remove() }
        let host = try db.makeHost("pw"); defer { host.remove() }
        let url = db.tcpURL(name)
        // In the URL: refused before any connection, and the message does not echo it.
        let inURL = try runCommand(host.inside([Binaries.defib, "fleet", "signatures", "--url", db.tcpURL(name).replacingOccurrences(of: "defib@", with: "defib:\(db.password)@")]))
        #expect(inURL.code == 64 && inURL.stderr.contains("carries a password") && !inURL.stderr.contains(db.password), "\(inURL.stderr)")
        // No password: the server asks for one.
        let none = try runCommand(host.inside([Binaries.defib, "fleet", "signatures", "--url", url]))
        #expect(none.code == 1 && none.stderr.contains("password"), "\(none.stderr)")
        // From PGPASSWORD.
        let env = try runCommand(host.inside([Binaries.defib, "fleet", "signatures", "--url", url]), env: ["PGPASSWORD": db.password])
        #expect(env.code == 0 && env.stdout == "No signatures.\n", "\(env.stderr)")
        // Wrong password: the server's own words.
        let wrong = try runCommand(host.inside([Binaries.defib, "fleet", "signatures", "--url", url]), env: ["PGPASSWORD": "nope"])
        #expect(wrong.code == 1 && wrong.stderr.contains("password authentication failed"), "\(wrong.stderr)")
        // From a 0600 file; a readable one or a symlink is refused.
        let file = try db.passwordFile(in: dir.path)
        let ok = try runCommand(host.inside([Binaries.defib, "fleet", "signatures", "--url", url, "--password-file", file]))
        #expect(ok.code == 0, "\(ok.stderr)")
        chmod(file, 0o644)
        let open = try runCommand(host.inside([Binaries.defib, "fleet", "signatures", "--url", url, "--password-file", file]))
        #expect(open.code == 1 && open.stderr.contains("readable or writable by group or others (mode 644)"), "\(open.stderr)")
        chmod(file, 0o600)
        symlink(file, "\(dir.path)/link")
        let link = try runCommand(host.inside([Binaries.defib, "fleet", "signatures", "--url", url, "--password-file", "\(dir.path)/link"]))
        #expect(link.code == 1 && link.stderr.contains("is a symbolic link"), "\(link.stderr)")
        // `defib run` refuses the same file before starting anything (exit 64).
        chmod(file, 0o640)
        let run = try runCommand([Binaries.defib, "run", "--state-dir", "\(dir.path)/state", "--fleet-url", url, "--fleet-password-file", file,
                                  "--", "/bin/true"])
        #expect(run.code == 64 && run.stderr.contains("fleet") && run.stderr.contains("mode 640"), "\(run.stderr)")
    }

    @Test func tlsWhenTheURLAsksForIt() throws {
        let db = try FleetTestDatabase.get()
        let name = try db.createDatabase("tls")
        #expect(try defib(["fleet", "migrate", "--url", db.socketURL(name)]).code == 0)
        let host = try db.makeHost("tls"); defer { host.remove() }
        let env = ["PGPASSWORD": db.password]
        // `defibtls` may log in over TLS only (pg_hba: hostssl, hostnossl reject).
        let plain = try runCommand(host.inside([Binaries.defib, "fleet", "signatures", "--url", db.tcpURL(name, user: "defibtls", query: "sslmode=disable")]), env: env)
        #expect(plain.code == 1 && plain.stderr.contains("pg_hba.conf rejects connection") && plain.stderr.contains("no encryption"), "\(plain.stderr)")
        for query in ["sslmode=require", "sslmode=verify-full&sslrootcert=\(db.certificate)"] {
            let r = try runCommand(host.inside([Binaries.defib, "fleet", "signatures", "--url", db.tcpURL(name, user: "defibtls", query: query)]), env: env)
            #expect(r.code == 0 && r.stdout == "No signatures.\n", "\(query): \(r.stderr)")
        }
        // verify-full against a certificate for another name fails, naming TLS.
        let dir = Scratch("fleet-tls"); defer { dir.remove() }
        try sh(["/usr/bin/openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=elsewhere",
                "-keyout", "\(dir.path)/k", "-out", "\(dir.path)/other.crt"])
        let bad = try runCommand(host.inside([Binaries.defib, "fleet", "signatures", "--url",
                                              db.tcpURL(name, user: "defibtls", query: "sslmode=verify-full&sslrootcert=\(dir.path)/other.crt")]), env: env)
        #expect(bad.code == 1 && bad.stderr.contains("TLS"), "\(bad.stderr)")
    }
}

