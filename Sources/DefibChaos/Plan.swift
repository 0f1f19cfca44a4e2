/// How much the harness runs.
public enum ChaosMode: String, Sendable, Codable {
    /// Every fault scenario once under steady load, plus one control run: a couple of minutes at most.
    case quick
    /// N runs of each scenario under each load.
    case full
    /// One long-lived supervisor, a fault injected after each recovery, N times.
    case soak
}

/// One run of the plan.
public struct RunSpec: Sendable, Equatable {
    /// What to inject.
    public var scenario: ChaosScenario
    /// Under which load.
    public var load: ChaosLoad
    /// Repetition (1-based), or the iteration in a soak.
    public var run: Int
    /// Makes a run.
    public init(scenario: ChaosScenario, load: ChaosLoad, run: Int) { self.scenario = scenario; self.load = load; self.run = run }
    /// "leaked-read steady run 1".
    public var label: String { "\(scenario.rawValue) \(load.rawValue) run \(run)" }
}

/// The list of runs a mode and its options make. Pure.
public enum ChaosPlan {
    /// The scenarios a soak cycles through when none are named: every fault whose onset is immediate
    /// (the natural race may take a minute to happen, so it is opt-in).
    public static let soakDefault: [ChaosScenario] = [.timeoutRace, .leakedRead, .guardAcrossElse, .slowHolder, .deadLoop, .sigstop, .crash]

    /// The runs, in execution order.
    /// - quick: the given scenarios (default all) once each under each given load (default steady),
    ///   faults first, the control run last.
    /// - full: for each load (default all), for each scenario (default all), `runs` repetitions.
    /// - soak: `runs` faults cycling through the scenarios (default `soakDefault`) under one load (the first
    ///   given; default idle).
    public static func make(mode: ChaosMode, scenarios: [ChaosScenario]?, loads: [ChaosLoad]?, runs: Int) -> [RunSpec] {
        switch mode {
        case .quick:
            let list = scenarios ?? ChaosScenario.allCases
            let ordered = list.filter { $0 != .control } + list.filter { $0 == .control }
            return (loads ?? [.steady]).flatMap { load in ordered.map { RunSpec(scenario: $0, load: load, run: 1) } }
        case .full:
            var out: [RunSpec] = []
            for load in loads ?? ChaosLoad.allCases {
                for scenario in scenarios ?? ChaosScenario.allCases {
                    for n in 1...max(1, runs) { out.append(RunSpec(scenario: scenario, load: load, run: n)) }
                }
            }
            return out
        case .soak:
            let cycle = (scenarios ?? soakDefault).filter { $0 != .control }
            guard !cycle.isEmpty else { return [] }
            let load = loads?.first ?? .idle
            return (0..<max(1, runs)).map { RunSpec(scenario: cycle[$0 % cycle.count], load: load, run: $0 + 1) }
        }
    }
}
