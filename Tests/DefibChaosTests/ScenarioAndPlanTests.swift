import DefibChaos
import DefibCore
import Testing

@Suite struct ScenarioAndPlanTests {
    @Test func everyFaultScenarioExpectsItsDiagnosis() {
        #expect(ChaosScenario.timeoutRace.expectedDiagnosis == .corruptedLockWord)
        #expect(ChaosScenario.timeoutRaceNatural.expectedDiagnosis == .corruptedLockWord)
        #expect(ChaosScenario.leakedRead.expectedDiagnosis == .leakedReadLock)
        #expect(ChaosScenario.guardAcrossElse.expectedDiagnosis == .selfDeadlock)
        #expect(ChaosScenario.deadLoop.expectedDiagnosis == .deadLoop)
        #expect(ChaosScenario.sigstop.expectedDiagnosis == .stopped)
        #expect(ChaosScenario.crash.expectedDiagnosis == .signaled)
        #expect(ChaosScenario.control.expectedDiagnosis == nil)
        #expect(!ChaosScenario.crash.expectsCore && !ChaosScenario.control.expectsCore)
        #expect(ChaosScenario.slowHolder.expectedDiagnosis == .slowHolder && ChaosScenario.slowHolder.expectsCorruptedWord == false)
        #expect(ChaosScenario.writeThenRead.expectedDiagnosis == .selfDeadlock)
        #expect(ChaosScenario.allCases.filter(\.expectsCore).count == 8)
        #expect(ChaosScenario.allCases.filter(\.isImmediateDeadlock) == [.timeoutRace, .leakedRead, .guardAcrossElse, .writeThenRead, .slowHolder])
        #expect(ChaosScenario.timeoutRace.expectsCorruptedWord == true && ChaosScenario.leakedRead.expectsCorruptedWord == false)
        #expect(ChaosScenario.sigstop.fault == "SIGSTOP" && ChaosScenario.control.fault == "none")
    }

    @Test func scenarioListsParseAndBadEntriesAreNamed() throws {
        #expect(try ChaosScenario.parseList("crash, sigstop,crash") == [.crash, .sigstop])
        #expect(try ChaosScenario.parseList("all") == ChaosScenario.allCases)
        let error = #expect(throws: ChaosError.self) { try ChaosScenario.parseList("timeout-race,timeout-rase") }
        #expect(error?.kind == .badOption)
        #expect(error?.message.contains("'timeout-rase'") == true)
        #expect(error?.message.contains("guard-across-else") == true, "the error lists the known scenarios")
        #expect(throws: ChaosError.self) { try ChaosScenario.parseList(" , ") }
        #expect(try ChaosLoad.parseList("overload,idle") == [.overload, .idle])
        let loadError = #expect(throws: ChaosError.self) { try ChaosLoad.parseList("heavy") }
        #expect(loadError?.message.contains("'heavy'") == true)
    }

    @Test func durationsAsOperatorsTypeThem() throws {
        #expect(try ChaosDuration.parseMilliseconds("600s") == 600_000)
        #expect(try ChaosDuration.parseMilliseconds("10m") == 600_000)
        #expect(try ChaosDuration.parseMilliseconds("1500ms") == 1500)
        #expect(try ChaosDuration.parseMilliseconds("2") == 2000)
        #expect(try ChaosDuration.parseMilliseconds("1h") == 3_600_000)
        let e = #expect(throws: ChaosError.self) { try ChaosDuration.parseMilliseconds("soon", option: "--warmup") }
        #expect(e?.message.hasPrefix("--warmup 'soon'") == true)
        #expect(throws: ChaosError.self) { try ChaosDuration.parseMilliseconds("-5s") }
        #expect(throws: ChaosError.self) { try ChaosDuration.parseMilliseconds("30d") }
    }

    @Test func quickRunsEachScenarioOnceUnderSteadyWithControlLast() {
        let plan = ChaosPlan.make(mode: .quick, scenarios: nil, loads: nil, runs: 1)
        #expect(plan.count == ChaosScenario.allCases.count)
        #expect(plan.allSatisfy { $0.load == .steady && $0.run == 1 })
        #expect(plan.last?.scenario == .control)
        #expect(Set(plan.map(\.scenario)) == Set(ChaosScenario.allCases))
        let two = ChaosPlan.make(mode: .quick, scenarios: [.control, .crash], loads: [.idle], runs: 1)
        #expect(two == [RunSpec(scenario: .crash, load: .idle, run: 1), RunSpec(scenario: .control, load: .idle, run: 1)])
        let perLoad = ChaosPlan.make(mode: .quick, scenarios: [.control, .sigstop], loads: [.steady, .overload], runs: 1)
        #expect(perLoad.map(\.label) == ["sigstop steady run 1", "control steady run 1", "sigstop overload run 1", "control overload run 1"])
    }

    @Test func fullRunsEveryScenarioUnderEveryLoadNTimes() {
        let plan = ChaosPlan.make(mode: .full, scenarios: [.timeoutRace, .control], loads: nil, runs: 3)
        #expect(plan.count == 2 * 3 * 3)
        #expect(plan.filter { $0.load == .overload && $0.scenario == .control }.map(\.run) == [1, 2, 3])
    }

    @Test func soakCyclesFaultsAndNeverControl() {
        let plan = ChaosPlan.make(mode: .soak, scenarios: [.crash, .control, .sigstop], loads: nil, runs: 5)
        #expect(plan.map(\.scenario) == [.crash, .sigstop, .crash, .sigstop, .crash])
        #expect(plan.map(\.run) == [1, 2, 3, 4, 5])
        #expect(plan.allSatisfy { $0.load == .idle })
        #expect(ChaosPlan.make(mode: .soak, scenarios: [.control], loads: nil, runs: 5).isEmpty)
        #expect(!ChaosPlan.soakDefault.contains(.timeoutRaceNatural))
    }

    @Test func harnessPolicyIsAValidConfigWithRaisedIntensity() throws {
        let policy = SupervisorConfig.chaosPolicy(intensityMax: 2010)
        let cfg = try SupervisorConfig.parse(policy.tomlText, path: "supervisor.toml")
        #expect(cfg.heartbeat.intervalMs == 100)
        #expect(cfg.heartbeat.deadlineMs == SupervisorConfig.Heartbeat().deadlineMs)
        #expect(cfg.restart.intensityMax == 2010)
        #expect(cfg.capture.method == .native)
        #expect(cfg.restart.backoffResetMs == 1000)
    }
}
