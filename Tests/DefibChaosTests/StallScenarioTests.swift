@testable import DefibChaos
import DefibCore
import Testing

/// The `stall` scenario: opt-in by name, and judged on two self-recovered stalls with stacks and no kill.
@Suite struct StallScenarioTests {
    static func stall(_ id: Int64, outcome: String = "self-recovered", stacks: Bool = true, pause: Double? = 3.5, killed: Double? = nil) -> IncidentFacts {
        var f = IncidentFacts(id: id, pid: 100, cause: "stall", outcome: outcome, diagnosis: "stopped: x", detectedUnixMs: 1000 + Double(id) * 1000,
                              killedUnixMs: killed, readyUnixMs: 1800 + Double(id) * 1000, hasStacks: stacks)
        f.stallPauseMs = pause
        return f
    }

    static func observe(_ incidents: [IncidentFacts], serving: Bool = true) -> RunResult {
        RunEvaluator.evaluate(RunObservation(scenario: .stall, load: .steady, run: 1, onsetUnixMs: 1500, windowStartUnixMs: 0, windowEndUnixMs: 9000,
                                             incidents: incidents, servingAtEnd: serving))
    }

    @Test func optInByNameNotPartOfAll() throws {
        #expect(!ChaosScenario.allCases.contains(.stall))
        #expect(try ChaosScenario.parseList("stall") == [.stall])
        #expect(try ChaosScenario.parseList("all") == ChaosScenario.allCases)
        #expect(ChaosScenario.names.hasSuffix("control, stall"))
        #expect(!ChaosScenario.stall.expectsCore && ChaosScenario.stall.expectsIncident && ChaosScenario.stall.expectedDiagnosis == nil)
    }

    @Test func twoSelfRecoveredStallsWithStacksAndNoKillPass() {
        let r = Self.observe([Self.stall(1, pause: 3.5), Self.stall(2, pause: 6.25)])
        #expect(r.passed && r.recovered && r.stalls == 2 && r.kills == 0 && r.stallPauseMs == 6.25 && r.stacksOK == true, "\(r.checksFailed)")
        #expect(r.progressSummary == "2 stall incident(s), 0 kill(s), the evidence paused the service 6.25 ms at most")
    }

    @Test func aKillAMissingStallMissingStacksOrAPauseFail() {
        let hang = IncidentFacts(id: 2, pid: 100, newPid: 101, cause: "missed-heartbeat", outcome: "recovered", detectedUnixMs: 3000, killedUnixMs: 3100,
                                 readyUnixMs: 3300, hasStacks: true)
        let killed = Self.observe([Self.stall(1), hang])
        #expect(!killed.passed && killed.kills == 1 && killed.falseKill && killed.checksFailed.contains { $0.contains("1 kill(s)") }, "\(killed.checksFailed)")
        #expect(!Self.observe([Self.stall(1)]).passed, "one stall of two")
        let noStacks = Self.observe([Self.stall(1), Self.stall(2, stacks: false)])
        #expect(!noStacks.passed && noStacks.stacksOK == false && noStacks.checksFailed.contains("stacks: none stored for stall #2"))
        let noPause = Self.observe([Self.stall(1), Self.stall(2, pause: nil)])
        #expect(noPause.checksFailed.contains("stall #2: no pause recorded (no evidence taken)"))
        #expect(!Self.observe([Self.stall(1), Self.stall(2)], serving: false).passed)
    }

    @Test func theReportCarriesThePause() throws {
        let r = Self.observe([Self.stall(1, pause: 3.5), Self.stall(2, pause: 6.25)])
        guard case let .object(members) = r.json else { Issue.record("not an object"); return }
        let keys = members.map(\.key)
        #expect(keys.contains("stalls") && keys.contains("kills") && keys.contains("stall_pause_ms"))
        #expect(members.first { $0.key == "stall_pause_ms" }?.value == .double(6.25))
    }
}
