import DefibCore
import Foundation
import Glibc
import Testing
@testable import DefibFleet

/// The fleet's pieces that need no database: the row a shipper sends, the JSON the views print, the ordered
/// JSON reader, the password file's checks, the endpoint's refusals.
@Suite struct FleetUnitTests {
    static func hang() -> Incident {
        var i = Incident(id: 12, service: "proxy", pid: 4242, detectedAt: Date(timeIntervalSince1970: 1_795_000_000.25),
                         cause: .missedHeartbeat(misses: 3, lastPongAt: nil, lastError: "no reply \"quoted\" é"))
        i.diagnosis = "corrupted-lock-word: no thread in the critical section of 'catalog'"
        i.signature = "0123456789abcdef"
        i.stacks = "Thread 1 (LWP 1):\n#0 futex_wait () at x.c:1\n"
        var lock = LockState(name: "catalog", address: "0x10", word: "0xffffffffffffffff", source: "memory")
        lock.events = [LockEventRecord(kind: "write-timed-out", tid: 7, unixMs: 1_795_000_000_000, wordAfter: "0xfffffffffffffffe",
                                       label: "catalog.update app=shop machine=m2")]
        i.lockState = [lock]
        return i
    }

    @Test func aRowCarriesTheLocalJSONWithoutStacksAndTheColumnsTheViewsUse() throws {
        let row = FleetIncidentRow(incident: Self.hang(), version: 99, host: "edge-1", storeID: "abc", machineID: "m")
        #expect(row.localID == 12 && row.version == 99 && row.host == "edge-1" && row.cause == "missed-heartbeat" && row.outcome == "open")
        #expect(row.diagnosisKind == "corrupted-lock-word" && row.signature == "0123456789abcdef")
        #expect(row.suspect == "catalog.update app=shop machine=m2")
        #expect(!row.body.contains("futex_wait"), "stacks stay on the host")
        #expect(row.body == IncidentJSON.object(Self.hang()).rendered(pretty: false), "exactly the host's own JSON")
    }

    @Test func aFleetIncidentIsTheHostThenTheLocalFieldsInTheirOrder() throws {
        let row = FleetIncidentRow(incident: Self.hang(), version: 3, host: "edge-1", storeID: "abc", machineID: nil)
        let listing = FleetIncidentListing(host: "edge-1", storeID: "abc", localID: 12, version: 3, service: "proxy", detectedAt: row.detectedAt,
                                           cause: row.cause, outcome: row.outcome, diagnosisKind: row.diagnosisKind, signature: row.signature,
                                           suspect: row.suspect, body: row.body, shippedAt: Date(timeIntervalSince1970: 1_795_000_001))
        guard case let .object(members) = FleetJSON.incident(listing) else { Issue.record("not an object"); return }
        let local = IncidentJSON.object(Self.hang())
        guard case let .object(localMembers) = local else { return }
        #expect(members.map(\.key) == ["host", "store_id", "version", "shipped_at"] + localMembers.map(\.key))
        #expect(Array(members.dropFirst(4)) == localMembers)
        // A body that cannot be read still lists the incident from its columns.
        var broken = listing
        broken.body = "{not json"
        #expect(FleetJSON.incident(broken)["id"] == .int(12))
    }

    @Test func orderedJSONReadsBackWhatJSONValueWrites() throws {
        let value = IncidentJSON.object(Self.hang())
        #expect(try OrderedJSON.parse(value.rendered(pretty: true)) == value)
        #expect(try OrderedJSON.parse(value.rendered(pretty: false)) == value)
        #expect(try OrderedJSON.parse(#"{"b":1,"a":[true,false,null,-2.5e3,"\u00e9\ud83d\ude00\n"]}"#)
                == .object([JSONMember("b", .int(1)), JSONMember("a", .array([.bool(true), .bool(false), .null, .double(-2500), .string("é😀\n")]))]))
        for bad in ["", "{", "[1,]", "{\"a\" 1}", "\"open", "tru", "1 2", "{\"a\":1}}"] {
            #expect(throws: OrderedJSON.ParseError.self, "\(bad)") { try OrderedJSON.parse(bad) }
        }
        let deep = String(repeating: "[", count: 300) + String(repeating: "]", count: 300)
        #expect(throws: OrderedJSON.ParseError.self) { try OrderedJSON.parse(deep) }
    }

    // MARK: Passwords

    func scratch() -> String {
        let path = "/tmp/defib-fleet-unit-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    @Test func aPasswordFileMustBePrivateRegularAndOurs() throws {
        let dir = scratch(); defer { try? FileManager.default.removeItem(atPath: dir) }
        let file = "\(dir)/pw"
        try "s3cret\nsecond line ignored\n".write(toFile: file, atomically: false, encoding: .utf8)
        chmod(file, 0o600)
        #expect(try FleetPassword.resolve(file: file, environment: ["PGPASSWORD": "env"]) == "s3cret", "the file wins over the environment")
        #expect(try FleetPassword.resolve(file: nil, environment: ["PGPASSWORD": "env"]) == "env")
        #expect(try FleetPassword.resolve(file: nil, environment: [:]) == nil)
        func refusal(_ path: String) -> String {
            do { _ = try FleetPassword.resolve(file: path, environment: [:]); return "accepted" } catch { return "\(error)" }
        }
        chmod(file, 0o640)
        #expect(refusal(file).contains("mode 640"))
        chmod(file, 0o600)
        symlink(file, "\(dir)/link")
        #expect(refusal("\(dir)/link").contains("symbolic link"))
        #expect(refusal(dir).contains("not a regular file") || refusal(dir).contains("open("), "\(refusal(dir))")
        #expect(refusal("\(dir)/missing").contains("No such file"))
        try "\n".write(toFile: "\(dir)/empty", atomically: false, encoding: .utf8)
        chmod("\(dir)/empty", 0o600)
        #expect(refusal("\(dir)/empty").contains("empty first line"))
        if geteuid() == 0 {
            chown(file, 12345, 12345)
            #expect(refusal(file).contains("owned by uid 12345"))
        }
        let refused = refusal(file)
        #expect(!refused.contains("s3cret"))
    }

    @Test func anEndpointRefusesAPasswordInItsURL() {
        #expect(throws: FleetError.self) { try FleetEndpoint(url: "postgresql://a:b@h/d", passwordFile: nil, environment: [:]) }
        do {
            _ = try FleetEndpoint(url: "postgresql://a:topsecret@h/d", passwordFile: nil, environment: [:])
        } catch {
            #expect("\(error)".contains("carries a password") && !"\(error)".contains("topsecret"))
        }
    }

    @Test func hostIdentity() {
        #expect(FleetHostIdentity.name(configured: "edge-1") == "edge-1")
        #expect(!FleetHostIdentity.name(configured: nil).isEmpty)
        let dir = scratch(); defer { try? FileManager.default.removeItem(atPath: dir) }
        try? "0123456789abcdef0123456789ABCDEF\n".write(toFile: "\(dir)/id", atomically: false, encoding: .utf8)
        #expect(FleetHostIdentity.machineID(path: "\(dir)/id") == "0123456789abcdef0123456789abcdef")
        try? "not-an-id\n".write(toFile: "\(dir)/bad", atomically: false, encoding: .utf8)
        #expect(FleetHostIdentity.machineID(path: "\(dir)/bad") == nil)
        #expect(FleetHostIdentity.machineID(path: "\(dir)/none") == nil)
    }
}
