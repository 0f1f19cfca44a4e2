import DefibCore
import Testing

/// `SupervisorConfig.tomlText`: what a program that builds a config value (the chaos harness) writes for
/// `defib run --config` reads back to the same value.
@Suite struct ConfigWriterTests {
    @Test func aFullConfigReadsBackToTheSameValue() throws {
        var config = try SupervisorConfig.parse(ConfigTests.full, path: "full.toml")
        config.escalation.missMs = 125
        config.escalation.killJitterMs = 40
        config.service.environment["QUOTE"] = "say \"hi\"\\n"
        config.metricsListen = "[::1]:9464"
        let text = config.tomlText
        #expect(try SupervisorConfig.parse(text, path: "written.toml") == config, "\(text)")
    }

    @Test func aPolicyWithoutServiceOrStateLeavesThemToTheFlags() throws {
        var policy = SupervisorConfig(service: .init(name: "", argv: []), stateDirectory: "")
        policy.heartbeat.intervalMs = 100
        policy.capture.method = .gcore
        policy.restart.intensityMax = 1000
        let text = policy.tomlText
        #expect(!text.contains("state_dir") && !text.contains("[service]") && !text.contains("[sockets]"))
        #expect(text.contains("[heartbeat]\nsource = \"ping\"\ninterval_ms = 100\n"))
        #expect(text.contains("method = \"gcore\"") && text.contains("intensity_max = 1000"))
        #expect(try SupervisorConfig.parse(text, path: "policy.toml") == policy)
    }
}
