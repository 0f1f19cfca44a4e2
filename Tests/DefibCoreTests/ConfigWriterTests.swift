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
        // An optional switch: unset stays unset (decided at run time), set is written and read back.
        #expect(!text.contains("announce_to_coredumpctl"))
        for announce in [false, true] {
            config.capture.announceToCoredumpctl = announce
            #expect(config.tomlText.contains("announce_to_coredumpctl = \(announce)\n"))
            #expect(try SupervisorConfig.parse(config.tomlText, path: "written.toml") == config)
        }
    }

    @Test func theFleetTableReadsBackToTheSameValue() throws {
        var config = try SupervisorConfig.parse(ConfigTests.full, path: "full.toml")
        var fleet = FleetSettings(url: "postgresql://defib@db.example:5432/fleet?sslmode=require")
        fleet.host = "web-7"
        fleet.passwordFile = "/etc/defib/fleet.password"
        fleet.alertHosts = 5
        fleet.alertWindowSeconds = 900
        config.fleet = fleet
        let text = config.tomlText
        #expect(text.contains("\n[fleet]\nurl = \"postgresql://defib@db.example:5432/fleet?sslmode=require\"\n"), "\(text)")
        #expect(try SupervisorConfig.parse(text, path: "written.toml") == config, "\(text)")
        config.fleet = FleetSettings(url: "postgresql://defib@127.0.0.1/fleet")
        #expect(try SupervisorConfig.parse(config.tomlText, path: "defaults.toml") == config)
    }

    @Test func aPolicyWithoutServiceOrStateLeavesThemToTheFlags() throws {
        var policy = SupervisorConfig(service: .init(name: "", argv: []), stateDirectory: "")
        policy.heartbeat.mode = .ping
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
