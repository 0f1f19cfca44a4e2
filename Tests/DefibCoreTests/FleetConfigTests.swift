import DefibCore
import Foundation
import Testing

/// `[fleet]`, the fleet URL, the suspect rules and the retry schedule: the pure parts of shipping.
@Suite struct FleetConfigTests {
    // MARK: URL

    @Test func urlsInLibpqFormParse() throws {
        let tcp = try FleetDatabaseURL.parse("postgresql://defib@db.example:6432/fleet?sslmode=require")
        #expect(tcp.user == "defib" && tcp.database == "fleet" && tcp.tls == .require && tcp.endpoint == .tcp(host: "db.example", port: 6432))
        #expect(tcp.description == "postgresql://defib@db.example:6432/fleet?sslmode=require")
        let defaults = try FleetDatabaseURL.parse("postgres://ops@10.0.0.7")
        #expect(defaults.endpoint == .tcp(host: "10.0.0.7", port: 5432) && defaults.database == "ops" && defaults.tls == .prefer)
        #expect(defaults.connectTimeoutSeconds == 10)
        let v6 = try FleetDatabaseURL.parse("postgresql://u@[::1]:5433/d?connect_timeout=3")
        #expect(v6.endpoint == .tcp(host: "::1", port: 5433) && v6.connectTimeoutSeconds == 3)
        #expect(v6.description == "postgresql://u@[::1]:5433/d")
        let socket = try FleetDatabaseURL.parse("postgresql://defib@:5499/fleet?host=/run/postgresql")
        #expect(socket.endpoint == .unixSocket(directory: "/run/postgresql", port: 5499))
        #expect(socket.description == "postgresql://defib@:5499/fleet?host=/run/postgresql")
        let full = try FleetDatabaseURL.parse("postgresql://d%40x@h/f%2Dg?sslmode=verify-full&sslrootcert=/etc/ca.pem")
        #expect(full.user == "d@x" && full.database == "f-g" && full.tls == .verifyFull && full.rootCertificate == "/etc/ca.pem")
    }

    @Test func urlProblemsAreNamedAndPasswordsNeverEchoed() {
        func problem(_ url: String) -> String {
            do { _ = try FleetDatabaseURL.parse(url); return "parsed" } catch { return error.description }
        }
        let withPassword = problem("postgresql://defib:s3cret@db/fleet")
        #expect(withPassword.contains("carries a password") && !withPassword.contains("s3cret"), "\(withPassword)")
        let inQuery = problem("postgresql://defib@db/fleet?password=s3cret")
        #expect(inQuery.contains("carries a password") && !inQuery.contains("s3cret"), "\(inQuery)")
        #expect(problem("mysql://defib@db/fleet").contains("expected postgresql://"))
        #expect(problem("postgresql://db/fleet").contains("no user"))
        #expect(problem("postgresql://defib@/fleet").contains("no host"))
        #expect(problem("postgresql://defib@db:99999/fleet").contains("bad port '99999'"))
        #expect(problem("postgresql://defib@db/fleet?sslmode=maybe").contains("unknown sslmode 'maybe'"))
        #expect(problem("postgresql://defib@db/fleet?sslmode=verify-ca").contains("needs sslrootcert"))
        #expect(problem("postgresql://defib@db/fleet?application_name=x").contains("unknown parameter 'application_name'"))
        #expect(problem("postgresql://defib@db/fleet?host=relative").contains("must be absolute"))
        #expect(problem("postgresql://defib@/fleet?host=/run/pg&sslmode=require").contains("no TLS there"))
    }

    // MARK: [fleet]

    func parse(_ toml: String) throws -> SupervisorConfig {
        try SupervisorConfig.parse("state_dir = \"/s\"\n[service]\nargv = [\"/bin/true\"]\n" + toml, path: "f.toml")
    }

    func issues(_ toml: String) -> [String] {
        do { _ = try parse(toml); return [] } catch let e as ConfigError { return e.issues.map(\.description) } catch { return ["\(error)"] }
    }

    @Test func theFleetTableReadsEveryKey() throws {
        let c = try parse("""
            [fleet]
            url = "postgresql://defib@db:5432/fleet?sslmode=require"
            host = "edge-17"
            password_file = "/etc/defib/fleet.pw"
            fleet_alert_hosts = 25
            fleet_alert_window = "15m"
            """)
        let f = try #require(c.fleet)
        #expect(f.url == "postgresql://defib@db:5432/fleet?sslmode=require" && f.host == "edge-17" && f.passwordFile == "/etc/defib/fleet.pw")
        #expect(f.alertHosts == 25 && f.alertWindowSeconds == 900)
        #expect(try parse("").fleet == nil, "no table, no shipping")
        let d = try #require(try parse("[fleet]\nurl = \"postgresql://a@b/c\"\nfleet_alert_window = 90\n").fleet)
        #expect(d.alertHosts == 3 && d.alertWindowSeconds == 90 && d.host == nil)
    }

    @Test func fleetMistakesAreNamedWithTheirLine() {
        let pw = issues("[fleet]\nurl = \"postgresql://a@b/c\"\npassword = \"hunter2\"\n")
        #expect(pw.contains { $0.hasPrefix("f.toml:6: fleet.password: a password does not belong in the config") }, "\(pw)")
        #expect(!pw.joined().contains("hunter2"))
        #expect(issues("[fleet]\nhost = \"x\"\n").contains { $0.contains("fleet.url: required in [fleet]") })
        #expect(issues("[fleet]\nurl = \"postgresql://a:b@c/d\"\n").contains { $0.hasPrefix("f.toml:5: fleet.url:") && $0.contains("carries a password") })
        #expect(issues("[fleet]\nurl = \"postgresql://a@b/c\"\nfleet_alert_hosts = 0\n").contains { $0.contains("fleet.fleet_alert_hosts: must be between 1") })
        #expect(issues("[fleet]\nurl = \"postgresql://a@b/c\"\nfleet_alert_window = \"soon\"\n").contains { $0.contains("fleet.fleet_alert_window: expected seconds or a duration") })
        #expect(issues("[fleet]\nurl = \"postgresql://a@b/c\"\nfleet_alert_host = 3\n").contains { $0.contains("fleet.fleet_alert_host: unknown key (did you mean fleet_alert_hosts?)") })
        #expect(issues("[fleet]\nurl = \"postgresql://a@b/c\"\nhost = \"\"\n").contains { $0.contains("fleet.host: must not be empty") })
    }

    @Test func windowDurations() {
        #expect(FleetSettings.parseWindowSeconds("600") == 600)
        #expect(FleetSettings.parseWindowSeconds("10m") == 600)
        #expect(FleetSettings.parseWindowSeconds("1.5h") == 5400)
        #expect(FleetSettings.parseWindowSeconds("2000ms") == 2)
        #expect(FleetSettings.parseWindowSeconds("1500ms") == nil, "not a whole second")
        #expect(FleetSettings.parseWindowSeconds("-5m") == nil)
        #expect(FleetSettings.parseWindowSeconds("m") == nil)
    }

    // MARK: The suspect

    static let detected = Date(timeIntervalSince1970: 1_795_000_000)
    static var detectedMs: Int64 { Int64(detected.timeIntervalSince1970 * 1000) }

    func event(_ kind: String, _ label: String, atMs offset: Int64, word: String = "0x0000000000000010") -> LockEventRecord {
        LockEventRecord(kind: kind, tid: 100, unixMs: Self.detectedMs + offset, wordAfter: word, label: label)
    }

    @Test func theHolderComesFirstWithoutItsThreadID() {
        var lock = LockState(name: "catalog", address: "0x1", word: "0x8", source: "memory",
                             holder: "catalog.update app=shop machine=m2 (backend health check) tid=4242", lastHolder: "catalog.reload tid=9")
        lock.events = [event("parked-write", "catalog.reload", atMs: -10)]
        #expect(FleetSuspect.of(locks: [lock], detectedUnixMs: Self.detectedMs) == "catalog.update app=shop machine=m2 (backend health check)")
    }

    @Test func theWriterWhoseTimeoutCorruptedTheWordComesNext() {
        var lock = LockState(name: "catalog", address: "0x1", word: "0xffffffffffffffff", source: "memory", lastHolder: "catalog.reload tid=3")
        lock.events = [
            event("write-timed-out", "catalog.update app=shop machine=m2", atMs: -900, word: "0xfffffffffffffffe"),
            event("parked-read", "", atMs: -800, word: "0xffffffffffffffff"),
            // A later, harmless writer queued behind the corruption is not the suspect.
            event("parked-write", "catalog.update app=shop machine=m9", atMs: -500, word: "0xffffffffffffffff"),
        ]
        #expect(FleetSuspect.of(locks: [lock], detectedUnixMs: Self.detectedMs) == "catalog.update app=shop machine=m2")
    }

    @Test func thenTheLastHolderThenTheNewestLabelledEventBeforeTheHang() {
        var lock = LockState(name: "catalog", address: "0x1", word: "0x10", source: "memory", lastHolder: "catalog.update app=a machine=b tid=7")
        lock.events = [event("long-hold", "catalog.reload", atMs: -5)]
        #expect(FleetSuspect.of(locks: [lock], detectedUnixMs: Self.detectedMs) == "catalog.update app=a machine=b")
        lock.lastHolder = nil
        lock.events = [event("long-hold", "catalog.reload", atMs: -50), event("parked-read", "", atMs: -10),
                       event("parked-write", "catalog.update app=late machine=x", atMs: 500)]
        #expect(FleetSuspect.of(locks: [lock], detectedUnixMs: Self.detectedMs) == "catalog.reload", "events after detection are not before the hang")
        #expect(FleetSuspect.of(locks: [LockState(name: "c", address: "0x1", word: "0x0", source: "control")], detectedUnixMs: 0) == nil)
        var crash = Incident(service: "s", pid: 1, detectedAt: Self.detected, cause: .signaled(signal: 11, coreDumped: false))
        #expect(FleetSuspect.of(crash) == nil)
        crash.lockState = [lock]
        #expect(FleetSuspect.of(crash) == "catalog.reload")
    }

    @Test func theFleetSuspectIsTheMostCommonVoteOnePerHost() {
        let votes = [FleetSuspectVote(host: "a", suspect: "u1"), FleetSuspectVote(host: "b", suspect: "u1"),
                     FleetSuspectVote(host: "c", suspect: "u2"), FleetSuspectVote(host: "d", suspect: nil),
                     FleetSuspectVote(host: "c", suspect: "u2")]
        let t = FleetSuspectTally(votes: votes)
        #expect(t.suspect == "u1" && t.hosts == 2 && t.of == 4)
        let tie = FleetSuspectTally(votes: [FleetSuspectVote(host: "a", suspect: "zeta"), FleetSuspectVote(host: "b", suspect: "alpha")])
        #expect(tie.suspect == "alpha" && tie.hosts == 1 && tie.of == 2, "ties go to the label that sorts first, as the SQL does")
        #expect(FleetSuspectTally(votes: [FleetSuspectVote(host: "a", suspect: nil)]).suspect == nil)
    }

    // MARK: Retry

    @Test func backoffDoublesToItsCapWithJitterAndResets() {
        var b = FleetBackoff()
        #expect(b.failed(random: 0.5) == 500)
        #expect(b.failed(random: 0.5) == 1000)
        #expect(b.failed(random: 0.5) == 2000)
        #expect(b.failed(random: 0.5) == 4000)
        #expect(b.failed(random: 0.5) == 5000)
        #expect(b.failed(random: 0.5) == 5000)
        #expect(b.failed(random: 0) == 4000 && b.failed(random: 1) == 6000, "± 20 %")
        b.succeeded()
        #expect(b.failed(random: 0.5) == 500)
    }

    // MARK: Status

    @Test func theStatusClauseSaysThePendingCountAndTheFailureCutShort() {
        #expect(ShippingReport(pending: 0).statusClause == "fleet: 0 pending")
        let long = "connect(10.0.0.7:5432): " + String(repeating: "x", count: 200)
        let clause = ShippingReport(pending: 12, failing: long).statusClause
        #expect(clause == "fleet: 12 pending, failing: " + long.prefix(100))
    }
}
