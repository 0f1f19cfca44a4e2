import ArgumentParser
import DefibCore
import DefibFleet
import Foundation
import Logging

/// `defib fleet`: the incidents of every host, in one PostgreSQL.
struct FleetCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fleet",
        abstract: "Incidents of every host in one PostgreSQL: migrate its schema, list incidents, signatures and fleet events, watch live.",
        subcommands: [FleetMigrateCommand.self, FleetIncidentsCommand.self, FleetSignaturesCommand.self, FleetEventsCommand.self,
                      FleetWatchCommand.self],
        defaultSubcommand: FleetSignaturesCommand.self)
}

/// Where the fleet database is (shared by every `defib fleet` verb).
struct FleetDatabaseOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("The fleet database (no password in it: PGPASSWORD or --password-file).", valueName: "postgresql://USER@HOST:PORT/DB"))
    var url: String

    @Option(name: .long, help: "A file (0600) whose first line is the password (default: PGPASSWORD).")
    var passwordFile: String?

    func validate() throws {
        do { _ = try FleetDatabaseURL.parse(url) } catch { throw ValidationError("--url \(error.description)") }
    }

    func endpoint() throws -> FleetEndpoint {
        do { return try FleetEndpoint(url: url, passwordFile: passwordFile) } catch { throw CLIError("\(error)") }
    }
}

/// `--since` for the fleet views: what `defib incidents --since` takes, plus a bare duration (`1h`, `15m`)
/// meaning that long ago.
func parseFleetSince(_ text: String, now: Date = Date()) throws -> Date {
    let t = text.trimmingCharacters(in: .whitespaces)
    if let unit = t.last, "smhd".contains(unit), let amount = Double(t.dropLast()), amount >= 0, amount.isFinite {
        let seconds: Double = ["s": 1, "m": 60, "h": 3600, "d": 86400][String(unit)]!
        return now.addingTimeInterval(-amount * seconds)
    }
    return try parseDateArgument(text, option: "--since", now: now)
}

/// Runs async fleet work from a synchronous command and waits for it (on a thread of its own).
func runBlocking<T: Sendable>(_ body: @escaping @Sendable () async throws -> T) throws -> T {
    try FleetThread.run(body)
}

/// A logger for PostgresNIO that stays quiet (fleet commands report failures themselves, once).
let fleetQuietLogger: Logger = {
    var l = Logger(label: "defib.fleet")
    l.logLevel = .critical
    return l
}()

/// Opens a connection, runs `body`, closes it; failures become `CLIError` (exit 1) naming the operation.
func withFleetConnection<T: Sendable>(_ options: FleetDatabaseOptions, _ body: @escaping @Sendable (FleetConnection) async throws -> T) throws -> T {
    let endpoint = try options.endpoint()
    do {
        return try runBlocking {
            let c = try await FleetConnection.open(endpoint, logger: fleetQuietLogger)
            do {
                let value = try await body(c)
                await c.close()
                return value
            } catch {
                await c.close()
                throw error
            }
        }
    } catch let e as FleetError {
        throw CLIError(e.description)
    }
}

/// `defib fleet migrate`: create or upgrade the fleet schema.
struct FleetMigrateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "migrate",
        abstract: "Create or upgrade the fleet database's schema (versioned; refuses a foreign or newer schema, never half-applies).")

    @OptionGroup var database: FleetDatabaseOptions

    @Option(name: .long, help: "Migrate only up to this version (default: the newest this defib knows).")
    var to: Int?

    @Flag(name: .long, help: "Only report the schema's version; exit 1 when it is older than this defib needs to ship.")
    var check = false

    func validate() throws {
        if let to, !(1...FleetSchema.latest).contains(to) { throw ValidationError("--to must be between 1 and \(FleetSchema.latest), got \(to)") }
    }

    func run() throws {
        let url = database.url
        if check {
            let state = try withFleetConnection(database) { c in try await FleetSchema.state(c) }
            print("\(url): \(state) (this defib knows up to \(FleetSchema.latest), ships to \(FleetSchema.requiredForShipping) or newer)")
            if case let .version(v) = state, v >= FleetSchema.requiredForShipping { return }
            throw ExitCode(1)
        }
        let target = to ?? FleetSchema.latest
        var logger = Logger(label: "defib.fleet")
        logger.logLevel = .warning
        let quiet = logger
        let (from, now) = try withFleetConnection(database) { c in try await FleetSchema.migrate(c, to: target, logger: quiet) }
        if from == now {
            print("fleet schema already at version \(now)")
        } else {
            print("fleet schema migrated from version \(from) to \(now)")
        }
    }
}

/// `defib fleet incidents`: every host's incidents, newest first.
struct FleetIncidentsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "incidents",
        abstract: "Incidents of every host, newest first, with the host.")

    @OptionGroup var database: FleetDatabaseOptions

    @Option(name: .long, help: "Only incidents detected at or after T (1h, 30m, -2h, 2026-11-23, RFC 3339).")
    var since: String?

    @Option(name: .long, help: "Only this host's incidents.")
    var host: String?

    @Option(name: .long, help: "Only incidents with this signature.")
    var signature: String?

    @Option(name: [.customShort("n"), .long], help: "At most N incidents (default 1000; 0 = all).")
    var limit = 1000

    @Flag(name: .long, help: "A JSON array: each incident's host, store_id, version, shipped_at, then the host's own `defib incidents --json` fields.")
    var json = false

    func validate() throws {
        if limit < 0 { throw ValidationError("--limit must not be negative") }
        if let since { _ = try parseFleetSince(since) }
    }

    func run() throws {
        let since = try since.map { try parseFleetSince($0) }
        let (host, signature, limit) = (self.host, self.signature, self.limit)
        let rows = try withFleetConnection(database) { c in
            try await FleetQueries.incidents(on: c, since: since, host: host, signature: signature, limit: limit)
        }
        printFleetView(rows, json: json, none: "No incidents.", asJSON: FleetJSON.incident) { Self.table($0) }
    }

    /// DETECTED (UTC), HOST, ID, SERVICE, CAUSE, OUTCOME, DIAGNOSIS, SIGNATURE, SUSPECT.
    static func table(_ rows: [FleetIncidentListing], width: Int = 40) -> String {
        var out = [["DETECTED (UTC)", "HOST", "ID", "SERVICE", "CAUSE", "OUTCOME", "DIAGNOSIS", "SIGNATURE", "SUSPECT"]]
        for r in rows {
            out.append([Format.time(r.detectedAt, milliseconds: false), r.host, String(r.localID), r.service, r.cause, r.outcome,
                        r.diagnosisKind ?? "-", r.signature ?? "-", Format.truncated(r.suspect ?? "-", width)])
        }
        return Format.table(out)
    }
}

/// `defib fleet signatures`: one row per signature, with the hosts it hung and the suspect write.
struct FleetSignaturesCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "signatures",
        abstract: "One row per signature: hosts affected, incidents, first and last seen, diagnosis, and the suspect write.")

    @OptionGroup var database: FleetDatabaseOptions

    @Option(name: .long, help: "Only incidents detected at or after T (1h, 30m, -2h, 2026-11-23, RFC 3339).")
    var since: String?

    @Flag(name: .long, help: "A JSON array of {signature, hosts, host_names, incidents, first_seen, last_seen, diagnosis_kind, suspect, suspect_hosts}.")
    var json = false

    func validate() throws {
        if let since { _ = try parseFleetSince(since) }
    }

    func run() throws {
        let since = try since.map { try parseFleetSince($0) }
        let rows = try withFleetConnection(database) { c in try await FleetQueries.signatures(on: c, since: since) }
        printFleetView(rows, json: json, none: "No signatures.", asJSON: FleetJSON.signature) { Self.table($0) }
    }

    /// SIGNATURE, HOSTS, INCIDENTS, FIRST SEEN, LAST SEEN, DIAGNOSIS, SUSPECT (on N of M hosts).
    static func table(_ rows: [FleetSignatureSummary], suspectWidth: Int = 60) -> String {
        var out = [["SIGNATURE", "HOSTS", "INCIDENTS", "FIRST SEEN (UTC)", "LAST SEEN (UTC)", "DIAGNOSIS", "SUSPECT"]]
        for r in rows {
            out.append([r.signature, String(r.hosts), String(r.incidents), Format.time(r.firstSeen, milliseconds: false),
                        Format.time(r.lastSeen, milliseconds: false), r.diagnosisKind ?? "-", suspectText(r, width: suspectWidth)])
        }
        return Format.table(out)
    }

    static func suspectText(_ r: FleetSignatureSummary, width: Int) -> String {
        guard let s = r.suspect else { return "-" }
        return Format.truncated(s, width) + " (\(r.suspectHosts) of \(r.hosts) hosts)"
    }
}

/// `defib fleet events`: the fleet events recorded (one signature on many hosts).
struct FleetEventsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "events",
        abstract: "Fleet events: a signature that hung fleet_alert_hosts hosts within fleet_alert_window, with its suspect.")

    @OptionGroup var database: FleetDatabaseOptions

    @Option(name: .long, help: "Only events raised or still seen at or after T.")
    var since: String?

    @Flag(name: .long, help: "A JSON array of events.")
    var json = false

    func validate() throws {
        if let since { _ = try parseFleetSince(since) }
    }

    func run() throws {
        let since = try since.map { try parseFleetSince($0) }
        let events = try withFleetConnection(database) { c in try await FleetQueries.events(on: c, since: since) }
        printFleetView(events, json: json, none: "No fleet events.", asJSON: FleetJSON.event) { Self.table($0) }
    }

    /// ID, RAISED (UTC), BY, SIGNATURE, HOSTS, WINDOW, DIAGNOSIS, SUSPECT (on N of M hosts).
    static func table(_ events: [FleetEvent]) -> String {
        var out = [["ID", "RAISED (UTC)", "BY", "SIGNATURE", "HOSTS", "WINDOW", "DIAGNOSIS", "SUSPECT"]]
        for e in events {
            out.append([String(e.id), Format.time(e.raisedAt, milliseconds: false), e.raisedBy, e.signature, String(e.hosts),
                        "\(e.windowSeconds) s", e.diagnosisKind ?? "-",
                        e.suspect.map { "\(Format.truncated($0, 60)) (\(e.suspectHosts) of \(e.hosts) hosts)" } ?? "-"])
        }
        return Format.table(out)
    }
}

/// A fleet view's rows: a JSON array, a line saying there are none, or the table.
func printFleetView<Row>(_ rows: [Row], json: Bool, none: String, asJSON: (Row) -> JSONValue, table: ([Row]) -> String) {
    if json {
        print(JSONValue.array(rows.map(asJSON)).rendered())
        return
    }
    if rows.isEmpty { print(none); return }
    print(table(rows))
}
