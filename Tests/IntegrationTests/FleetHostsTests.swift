import DefibCore
import DefibFleet
import DefibPOSIX
import DefibStore
import Foundation
import Glibc
import Logging
import Testing

/// One defib "host" of the fleet test: a network namespace linked to the database's bridge, running
/// `defib run --fleet-url … -- defib-proxy` with its own state directory.
final class FleetHostProcess {
    let host: FleetTestHost
    let dir: Scratch
    let defib: Background
    var state: String { "\(dir.path)/state" }
    var name: String { host.name }
    /// The NOTIFY_SOCKET defib reports STATUS= to, when asked for.
    let manager: NotifyServer?
    private(set) var statusLines: [String] = []

    init(_ database: FleetTestDatabase, name: String, arguments: (FleetTestHost, Scratch) throws -> [String], notify: Bool = false) throws {
        host = try database.makeHost(name)
        dir = Scratch("fleet-\(name)")
        do {
            try "up shop m2 127.0.0.1:9\n".write(toFile: "\(dir.path)/routes", atomically: false, encoding: .utf8)
            manager = notify ? try NotifyServer(path: "\(dir.path)/manager.sock") : nil
            let argv = host.inside(try arguments(host, dir))
            defib = try Background(argv, env: manager.map { ["NOTIFY_SOCKET": $0.path] } ?? [:], log: "\(dir.path)/defib.log")
        } catch {
            host.remove(); dir.remove()
            throw error
        }
    }

    /// Waits until defib's own heartbeat got its first answer from the current proxy instance.
    func waitReady(instance: Int = 1) throws {
        let ready = try waitUntil(timeoutMs: 60_000) {
            drainStatus()
            return try runCommand([Binaries.defib, "ctl", "--state-dir", state, "ping", "ready"]).stdout == "pong ready\n"
                && defib.log.components(separatedBy: "is ready").count > instance
        }
        if !ready { throw TestFailure("\(name): the proxy never became ready:\n\(defib.log)") }
    }

    /// The parking_lot race on the catalog update `up shop m2` (the staged update re-announces the table's
    /// first machine through the buggy try_write_for).
    func poison() throws {
        let r = try runCommand([Binaries.defib, "ctl", "--state-dir", state, "fault", "timeout-race"])
        if !r.stdout.hasPrefix("ok fault timeout-race armed") { throw TestFailure("\(name): fault: \(r.stdout)\(r.stderr)") }
    }

    /// This host's own incidents (`defib incidents --json`).
    func localIncidents() throws -> [[String: Any]] { try incidentsJSON(stateDir: state) }

    /// Waits until the host has `count` incidents, all signed and recovered (evidence complete).
    func waitRecorded(_ count: Int) throws {
        let done = try waitUntil(timeoutMs: 60_000) {
            drainStatus()
            let incidents = try localIncidents()
            return incidents.count == count && incidents.allSatisfy { ($0["signature"] as? String) != nil && $0["outcome"] as? String == "recovered" }
        }
        if !done { throw TestFailure("\(name): not \(count) signed, recovered incidents: \(try localIncidents().map { "\($0["id"] ?? "") \($0["outcome"] ?? "") \($0["signature"] ?? "nil")" })\n\(defib.log)") }
    }

    /// Reads what defib sent to its NOTIFY_SOCKET so far (and keeps the socket's queue empty).
    @discardableResult
    func drainStatus() -> [String] {
        guard let manager else { return [] }
        for m in manager.receiveAll() {
            for line in m.text.split(separator: "\n") where line.hasPrefix("STATUS=") { statusLines.append(String(line.dropFirst(7))) }
        }
        return statusLines
    }

    func stop() {
        let proxy = pidOfChild(of: defib.pid)
        defib.stop(graceMs: 10_000)
        if let proxy { kill(proxy, SIGCONT) }
    }

    func remove() {
        stop()
        host.remove()
        dir.remove()
    }
}

extension FleetTests {
    /// Three hosts hang on the same catalog update. The fleet sees one signature with every host and the
    /// update named as the suspect, and one fleet event. Then the database goes away while they hang again
    /// (nothing lost: everything appears within 30 s of its return), and one host's link is cut while it hangs
    /// (its incident arrives once the link is back). Supervision never waits for any of it.
    @Test func aFleetHungByOneUpdateIsOneSignatureWithTheUpdateNamed() throws {
        let db = try FleetTestDatabase.get()
        let name = try db.createDatabase("fleet")
        let url = db.socketURL(name)
        let migrated = try defib(["fleet", "migrate", "--url", url])
        try #require(migrated.code == 0, "\(migrated.stderr)")
        let suspect = "catalog.update app=shop machine=m2"

        // host-1: the command-line form; host-2: a [fleet] table with verify-full TLS; host-3: [fleet] as `defibtls`
        // (pg_hba lets that role in over TLS only) with sslmode=require.
        func common(_ dir: Scratch) -> [String] {
            ["--state-dir", "\(dir.path)/state", "--name", "proxy", "--interval", "100", "--deadline", "600", "--capture", "none",
             "--metrics", "127.0.0.1:9464"]
        }
        var hosts: [FleetHostProcess] = []
        defer { for h in hosts { h.remove() } }
        hosts.append(try FleetHostProcess(db, name: "host-1", arguments: { _, dir in
            [Binaries.defib, "run"] + common(dir) + ["--fleet-url", db.tcpURL(name), "--fleet-host", "host-1",
                                                     "--fleet-password-file", try db.passwordFile(in: dir.path), "--"]
                + FleetHostProcess.proxyArgs(dir)
        }, notify: true))
        for (n, user, query) in [(2, "defib", "sslmode=verify-full&sslrootcert=\(db.certificate)"), (3, "defibtls", "sslmode=require")] {
            hosts.append(try FleetHostProcess(db, name: "host-\(n)", arguments: { _, dir in
                let config = "\(dir.path)/defib.toml"
                try """
                    [fleet]
                    url = "\(db.tcpURL(name, user: user, query: query))"
                    host = "host-\(n)"
                    password_file = "\(try db.passwordFile(in: dir.path))"
                    fleet_alert_hosts = 3
                    fleet_alert_window = "10m"
                    """.write(toFile: config, atomically: false, encoding: .utf8)
                return [Binaries.defib, "run", "--config", config] + common(dir) + ["--"] + FleetHostProcess.proxyArgs(dir)
            }))
        }
        for h in hosts { try h.waitReady() }

        // Round 1: the poisoned update everywhere.
        for h in hosts { try h.poison() }
        for h in hosts { try h.waitRecorded(1) }
        var rows: [[String: Any]] = []
        let one = try waitUntil(timeoutMs: 30_000) {
            rows = try json(defib(["fleet", "signatures", "--url", url, "--since", "1h", "--json"]))
            return rows.count == 1 && rows[0]["hosts"] as? Int == 3 && rows[0]["suspect"] as? String == suspect
        }
        #expect(one, "\(rows)")
        let signature = try #require(rows.first?["signature"] as? String)
        #expect(rows[0]["host_names"] as? [String] == ["host-1", "host-2", "host-3"])
        #expect(rows[0]["incidents"] as? Int == 3 && rows[0]["diagnosis_kind"] as? String == "corrupted-lock-word", "\(rows)")
        #expect(rows[0]["suspect_hosts"] as? Int == 3)
        for key in ["first_seen", "last_seen"] { #expect(rows[0][key] as? String != nil, "\(key)") }
        for h in hosts { #expect(try h.localIncidents().first?["signature"] as? String == signature, "\(h.name) has the same signature") }

        // Every host's incident, as that host prints it, plus the host.
        let fleetIncidents = try json(defib(["fleet", "incidents", "--url", url, "--json"]))
        #expect(fleetIncidents.count == 3)
        for h in hosts {
            let local = try #require(try h.localIncidents().first)
            let shipped = try #require(fleetIncidents.first { $0["host"] as? String == h.name }, "\(h.name) in the fleet")
            for key in ["id", "service", "pid", "cause", "outcome", "diagnosis", "signature", "detected_at", "lock_words", "restore_ms"] {
                #expect("\(shipped[key] ?? "nil")" == "\(local[key] ?? "nil")", "\(h.name) \(key)")
            }
        }
        let table = try defib(["fleet", "signatures", "--url", url, "--since", "1h"])
        #expect(table.stdout.contains("\(suspect) (3 of 3 hosts)"), "\(table.stdout)")

        // One fleet event, recorded by one host, logged once, with the suspect.
        let events = try json(defib(["fleet", "events", "--url", url, "--json"]))
        #expect(events.count == 1 && events.first?["suspect"] as? String == suspect && events.first?["hosts"] as? Int == 3, "\(events)")
        let raisers = hosts.filter { $0.defib.log.contains("fleet event #") }
        #expect(raisers.count == 1, "logged by \(raisers.map(\.name))")
        #expect(raisers.first.map { events.first?["raised_by"] as? String == $0.name } == true)

        // Round 2: the database goes away; the hosts hang again and recover without it.
        db.stop()
        for h in hosts { try h.waitReady(instance: 2) }
        for h in hosts { try h.poison() }
        for h in hosts { try h.waitRecorded(2) }
        // The backlog shows in STATUS= and /metrics.
        let pending = try waitUntil(timeoutMs: 20_000) {
            hosts[0].drainStatus().last.map { $0.contains("fleet: ") && !$0.contains("fleet: 0 pending") && $0.contains("failing") } ?? false
        }
        #expect(pending, "STATUS= lines: \(hosts[0].statusLines.suffix(5))")
        let metrics = try runCommand(hosts[1].host.inside(["/usr/bin/curl", "-s", "http://127.0.0.1:9464/metrics"]))
        let backlogLine = metrics.stdout.split(separator: "\n").first { $0.hasPrefix("defib_fleet_backlog{") }
        #expect(backlogLine.map { !$0.hasSuffix(" 0") && !$0.hasSuffix(" 0.0") } == true, "\(backlogLine ?? "no defib_fleet_backlog in \(metrics.stdout.prefix(400))")")
        let back = Date()
        try db.start()
        let all = try waitUntil(timeoutMs: 60_000) { try json(defib(["fleet", "incidents", "--url", url, "--json"])).count == 6 }
        let took = Date().timeIntervalSince(back)
        #expect(all && took <= 30, "6 incidents after \(took) s")
        print("fleet: the backlog of 3 hosts appeared \(String(format: "%.1f", took)) s after the database came back")
        let afterOutage = try json(defib(["fleet", "signatures", "--url", url, "--json"]))
        #expect(afterOutage.count == 1 && afterOutage.first?["incidents"] as? Int == 6 && afterOutage.first?["hosts"] as? Int == 3, "\(afterOutage)")
        let episode = try json(defib(["fleet", "events", "--url", url, "--json"]))
        #expect(episode.count == 1, "still one event for the episode: \(episode)")
        #expect(episode.first?["hosts"] as? Int == 3 && episode.first?["suspect_hosts"] as? Int == 3
                && episode.first?["suspect"] as? String == suspect, "\(episode)")
        let cleared = try waitUntil(timeoutMs: 20_000) { hosts[0].drainStatus().last?.contains("fleet: 0 pending") == true }
        #expect(cleared, "\(hosts[0].statusLines.suffix(3))")

        // Round 3: host-2's link is cut while it hangs; its incident waits in its outbox, then arrives.
        let partitioned = hosts[1]
        try partitioned.waitReady(instance: 3)
        try partitioned.host.cut()
        try partitioned.poison()
        try partitioned.waitRecorded(3)
        let onlyTwo = try json(defib(["fleet", "incidents", "--url", url, "--host", "host-2", "--json"]))
        #expect(onlyTwo.count == 2, "the partitioned host's third incident cannot have arrived: \(onlyTwo.count)")
        try partitioned.host.restore()
        let arrived = try waitUntil(timeoutMs: 90_000) {
            try json(defib(["fleet", "incidents", "--url", url, "--host", "host-2", "--json"])).count == 3
        }
        #expect(arrived, "\(partitioned.defib.log.suffix(2000))")
        let final = try json(defib(["fleet", "signatures", "--url", url, "--json"]))
        #expect(final.count == 1 && final.first?["incidents"] as? Int == 7 && final.first?["suspect"] as? String == suspect, "\(final)")
        // Supervision went on throughout: every hang was recovered locally, the partitioned one too.
        for h in hosts { #expect(try h.localIncidents().allSatisfy { $0["outcome"] as? String == "recovered" }) }

        // A duplicate delivery: host-1 sends everything again (new versions, as after a restore from backup).
        hosts[0].stop()
        let store = try IncidentStore.open(stateDirectory: hosts[0].state)
        #expect(try store.requeueAllForFleet() == 2)
        let endpoint = try FleetEndpoint(url: url, passwordFile: nil)
        let shipper = try FleetShipper(store: store, settings: .init(endpoint: endpoint, host: "host-1", machineID: nil,
                                                                    alert: FleetAlertRule(hosts: 3, windowSeconds: 600)), logger: Self.logger)
        let resent = try FleetThread.run {
            let c = try await FleetConnection.open(endpoint, logger: Self.logger)
            defer { Task { await c.close() } }
            return try await shipper.drain(on: c)
        }
        #expect(resent == 2)
        #expect(try json(defib(["fleet", "incidents", "--url", url, "--json"])).count == 7, "no duplicate rows")
        #expect(try db.psql(name, "SELECT count(*) FROM fleet_incident WHERE host = 'host-1'") == "2")

        // The live view draws the signature with its hosts and the suspect.
        let watch = try defib(["fleet", "watch", "--url", url, "--once", "--since", "1h"])
        #expect(watch.code == 0 && watch.stdout.contains(signature) && watch.stdout.contains("\(suspect) (3/3)")
                && watch.stdout.contains("FLEET EVENTS") && watch.stdout.contains("3 hosts in 600 s"), "\(watch.stdout)\(watch.stderr)")
    }
}

extension FleetHostProcess {
    /// The proxy every host supervises: one app, `shop`, one machine, `m2`.
    static func proxyArgs(_ dir: Scratch) -> [String] {
        [Binaries.proxy, "--listen", "127.0.0.1:8080", "--routes", "\(dir.path)/routes", "--reload-interval", "0", "--threads", "2"]
    }
}
