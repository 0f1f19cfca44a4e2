import Foundation
import DefibCore

/// What `defib chaos` was asked to do.
public struct ChaosOptions: Sendable {
    /// quick, full or soak.
    public var mode: ChaosMode
    /// Scenarios to run (nil: the mode's default).
    public var scenarios: [ChaosScenario]?
    /// Loads to run under (nil: the mode's default).
    public var loads: [ChaosLoad]?
    /// Runs per scenario and load (full) or faults (soak).
    public var runs: Int
    /// Where report.json, summary.json, report.md, the timelines and each run's logs go.
    public var reportDirectory: String
    /// The operator's supervisor config (nil: the harness writes its own).
    public var configFile: String?
    /// Overrides passed to `defib run` (and used for the effective values).
    public var intervalMs: Int?
    /// Hang deadline override.
    public var deadlineMs: Int?
    /// Capture method override.
    public var capture: CaptureMethod?
    /// Steady-load rate (requests/s).
    public var ratePerSecond: Double?
    /// Length of each control run.
    public var controlDurationMs: Int?
    /// Load before the fault.
    public var warmupMs: Int?
    /// Load after the first success.
    public var postMs: Int?
    /// Request timeout.
    public var requestTimeoutMs: Int?
    /// The `defib` executable the runs use.
    public var defibPath: String
    /// The `defib-proxy` executable.
    public var proxyPath: String
    /// Keep the cores (default: deleted once gdb has checked them).
    public var keepCores: Bool
    /// stress-ng CPU workers under overload (nil: twice the CPUs).
    public var stressWorkers: Int?

    /// Makes options; everything optional has the mode's default.
    public init(mode: ChaosMode, scenarios: [ChaosScenario]? = nil, loads: [ChaosLoad]? = nil, runs: Int = 1, reportDirectory: String,
                configFile: String? = nil, intervalMs: Int? = nil, deadlineMs: Int? = nil, capture: CaptureMethod? = nil,
                ratePerSecond: Double? = nil, controlDurationMs: Int? = nil, warmupMs: Int? = nil, postMs: Int? = nil,
                requestTimeoutMs: Int? = nil, defibPath: String, proxyPath: String, keepCores: Bool = false, stressWorkers: Int? = nil) {
        self.mode = mode; self.scenarios = scenarios; self.loads = loads; self.runs = runs; self.reportDirectory = reportDirectory
        self.configFile = configFile; self.intervalMs = intervalMs; self.deadlineMs = deadlineMs; self.capture = capture
        self.ratePerSecond = ratePerSecond; self.controlDurationMs = controlDurationMs; self.warmupMs = warmupMs; self.postMs = postMs
        self.requestTimeoutMs = requestTimeoutMs; self.defibPath = defibPath; self.proxyPath = proxyPath; self.keepCores = keepCores
        self.stressWorkers = stressWorkers
    }

    /// Per-mode defaults: (rate/s, warm-up ms, post ms, control ms).
    public static func defaults(for mode: ChaosMode) -> (rate: Double, warmupMs: Int, postMs: Int, controlMs: Int) {
        switch mode {
        case .quick: (40, 600, 500, 3000)
        case .full: (50, 2000, 2000, 10_000)
        case .soak: (20, 300, 300, 3000)
        }
    }
}

/// Durations as operators type them: "600s", "10m", "1500ms", "1h", or a bare number of seconds.
public enum ChaosDuration {
    /// Milliseconds; the error names the option and the text.
    public static func parseMilliseconds(_ text: String, option: String = "--duration") throws(ChaosError) -> Int {
        let t = text.trimmingCharacters(in: .whitespaces).lowercased()
        let units: [(String, Double)] = [("ms", 1), ("s", 1000), ("m", 60_000), ("h", 3_600_000)]
        var number = t
        var scale = 1000.0
        for (suffix, s) in units where t.hasSuffix(suffix) {
            number = String(t.dropLast(suffix.count)); scale = s
            break
        }
        guard let v = Double(number), v.isFinite, v > 0 else {
            throw ChaosError(.badOption, "\(option) '\(text)': expected a positive duration such as 600s, 10m, 1500ms")
        }
        let ms = v * scale
        guard ms >= 1, ms <= Double(SupervisorConfig.maximumDurationMs) else {
            throw ChaosError(.badOption, "\(option) '\(text)': must be between 1 ms and 7 days")
        }
        return Int(ms.rounded())
    }
}

extension SupervisorConfig {
    /// The supervision policy the harness runs with when the operator gives no config: the supervisor's
    /// defaults, ping heartbeats at 10 Hz, and restart limits that let many faults in a row through (a soak would
    /// otherwise hit the default intensity of 5 restarts a minute and make defib give up). A config value:
    /// the harness writes it (`tomlText`) for `defib run --config`; the state directory, the service, its
    /// control socket and the HTTP socket are given to `defib run` as flags for each run.
    public static func chaosPolicy(capture: CaptureMethod = .native, intensityMax: Int = 1000) -> SupervisorConfig {
        var policy = SupervisorConfig(service: .init(name: "", argv: []), stateDirectory: "")
        // The proxy speaks ping: it is held to it from its first instance (no `auto` start window).
        policy.heartbeat.mode = .ping
        policy.heartbeat.intervalMs = 100
        policy.capture.method = capture
        policy.restart.backoffMaxMs = 2000
        policy.restart.backoffResetMs = 1000
        policy.restart.intensityMax = intensityMax
        policy.restart.intensityWindowMs = 60_000
        policy.restart.stopTimeoutMs = 3000
        return policy
    }
}
