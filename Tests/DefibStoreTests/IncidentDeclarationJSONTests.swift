import DefibCore
import DefibStore
import Foundation
import Testing

/// `declared_on` and `timeline` in the `--json` contract, on incidents as the store gives them back (including
/// one stored before these fields existed).
@Suite struct IncidentDeclarationJSONTests {
    let base = Date(timeIntervalSince1970: 1_796_000_000)

    func json(_ incident: Incident) throws -> [String: Any] {
        let dir = TempDirectory()
        let store = try IncidentStore.open(stateDirectory: dir.path)
        let id = try store.insert(incident)
        let back = try #require(try store.incident(id: id))
        return try #require(try JSONSerialization.jsonObject(with: Data(IncidentJSON.string(back).utf8)) as? [String: Any])
    }

    @Test func aHangDeclaredOnProofWithTheReplacementStartedBeforeTheCoreWasDone() throws {
        var incident = Incident(service: "proxy", pid: 4123, detectedAt: base,
                                cause: .missedHeartbeat(misses: 1, lastPongAt: nil, lastError: "no reply within 250 ms", heartbeat: nil))
        incident.declaredOn = .proof
        incident.restartedAt = base.addingTimeInterval(0.004)
        incident.captureDoneAt = base.addingTimeInterval(0.020)
        incident.killedAt = base.addingTimeInterval(0.021)
        incident.readyAt = base.addingTimeInterval(0.035)
        let o = try json(incident)
        #expect(o["declared_on"] as? String == "proof")
        let timeline = try #require(o["timeline"] as? [String: Any])
        #expect(timeline["detected"] as? String == RFC3339.string(base))
        #expect(timeline["replacement_started"] as? String == RFC3339.string(base.addingTimeInterval(0.004)))
        #expect(timeline["capture_done"] as? String == RFC3339.string(base.addingTimeInterval(0.020)))
        #expect(timeline["killed"] as? String == RFC3339.string(base.addingTimeInterval(0.021)))
        #expect(timeline["ready"] as? String == RFC3339.string(base.addingTimeInterval(0.035)))
        #expect((timeline["ready"] as? String ?? "") == (o["ready_at"] as? String ?? "-"), "the timeline and the flat fields agree")
    }

    @Test func stepsThatDidNotHappenAreNullAndAnUndeclaredIncidentReadsDeadline() throws {
        // A death: no capture, no kill by us; stored without declared_on (as incidents before it existed were).
        var incident = Incident(service: "proxy", pid: 4123, detectedAt: base, cause: .exited(code: 3))
        incident.restartedAt = base.addingTimeInterval(0.1)
        let o = try json(incident)
        #expect(o["declared_on"] as? String == "deadline")
        let timeline = try #require(o["timeline"] as? [String: Any])
        #expect(timeline["capture_done"] is NSNull && timeline["killed"] is NSNull && timeline["ready"] is NSNull)
        #expect(timeline["replacement_started"] as? String == RFC3339.string(base.addingTimeInterval(0.1)))
        #expect(Array((try #require(IncidentJSON.object(incident)["timeline"]).keys)) == ["detected", "replacement_started", "ready", "capture_done", "killed"])
    }
}

private extension JSONValue {
    var keys: [String] {
        guard case let .object(members) = self else { return [] }
        return members.map(\.key)
    }
}
