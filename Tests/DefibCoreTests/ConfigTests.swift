import DefibCore
import Foundation
import Testing

/// The TOML config loader: a full file, defaults, and each kind of error naming file, line and key.
@Suite struct ConfigTests {
    static let full = """
        # a comment
        state_dir = "/var/lib/defib"

        [service]
        name = "proxy"
        argv = [
            "/usr/local/bin/defib-proxy",   # the program
            "--listen", "127.0.0.1:8080",
        ]
        env = { TZ = "UTC", "WITH SPACE" = "x" }
        working_directory = "/srv"

        [heartbeat]
        interval_ms = 150
        deadline_ms = 900
        misses = 3
        start_timeout_ms = 20000
        control_socket = "/run/proxy.sock"

        [capture]
        method = "none"
        budget_ms = 5000
        directory = "/cores"
        stacks = false

        [restart]
        backoff_initial_ms = 250
        backoff_max_ms = 8000
        backoff_multiplier = 3
        backoff_reset_ms = 30000
        intensity_max = 0
        intensity_window_ms = 120000
        stop_timeout_ms = 2500
        """

    func issues(_ text: String, file: String = "defib.toml") -> [ConfigIssue] {
        do {
            _ = try SupervisorConfig.parse(text, path: file)
            return []
        } catch let error as ConfigError {
            return error.issues
        } catch {
            Issue.record("unexpected error type: \(error)")
            return []
        }
    }

    @Test func aFullFileParsesToTheExpectedModel() throws {
        let c = try SupervisorConfig.parse(Self.full, path: "full.toml")
        var expected = SupervisorConfig(
            service: .init(name: "proxy", argv: ["/usr/local/bin/defib-proxy", "--listen", "127.0.0.1:8080"],
                           environment: ["TZ": "UTC", "WITH SPACE": "x"], workingDirectory: "/srv"),
            stateDirectory: "/var/lib/defib")
        expected.heartbeat.intervalMs = 150
        expected.heartbeat.deadlineMs = 900
        expected.heartbeat.misses = 3
        expected.heartbeat.startTimeoutMs = 20000
        expected.heartbeat.controlSocket = "/run/proxy.sock"
        expected.capture.method = .none
        expected.capture.budgetMs = 5000
        expected.capture.directory = "/cores"
        expected.capture.stacks = false
        expected.restart.backoffInitialMs = 250
        expected.restart.backoffMaxMs = 8000
        expected.restart.backoffMultiplier = 3
        expected.restart.backoffResetMs = 30000
        expected.restart.intensityMax = 0
        expected.restart.intensityWindowMs = 120000
        expected.restart.stopTimeoutMs = 2500
        #expect(c == expected)
        #expect(c.controlSocketPath == "/run/proxy.sock")
        #expect(c.coreDirectory == "/cores")
        try c.validate()
    }

    @Test func absentKeysKeepTheirDefaults() throws {
        let c = try SupervisorConfig.parse("", path: "empty.toml")
        let defaults = SupervisorConfig(service: .init(name: "", argv: []), stateDirectory: "")
        #expect(c == defaults)
        let partial = try SupervisorConfig.parse("[heartbeat]\nmisses = 2\n", path: "p.toml")
        #expect(partial.heartbeat.misses == 2)
        #expect(partial.heartbeat.deadlineMs == SupervisorConfig.Heartbeat().deadlineMs)
        // Dotted keys at the top level are the same settings.
        let dotted = try SupervisorConfig.parse("heartbeat.misses = 4\nservice.argv = [\"x\"]\n", path: "d.toml")
        #expect(dotted.heartbeat.misses == 4 && dotted.service.argv == ["x"])
    }

    @Test func theExampleFileIsAccepted() throws {
        let example = URL(fileURLWithPath: #filePath).resolvingSymlinksInPath().deletingLastPathComponent()
            .appendingPathComponent("../../units/example.toml").standardized.path
        let c = try SupervisorConfig.load(path: example)
        try c.withDerivedDefaults().validate()
        #expect(c.service.name == "proxy")
        #expect(c.service.argv.first == "/usr/local/bin/defib-proxy")
        #expect(c.capture.method == .native)
    }

    @Test func aSyntaxErrorCarriesFileLineAndColumn() {
        let found = issues("state_dir = \"/x\"\n[heartbeat]\ninterval_ms = = 3\n")
        #expect(found.count == 1)
        let issue = found.first
        #expect(issue?.kind == .syntax)
        #expect(issue?.file == "defib.toml")
        #expect(issue?.line == 3)
        #expect(issue?.column != nil)
        #expect(issue?.description.hasPrefix("defib.toml:3:") == true, "\(issue?.description ?? "")")
        #expect(issue?.description.contains("syntax error") == true)
    }

    @Test func aTypeErrorNamesFileLineKeyAndBothTypes() {
        let text = """
            state_dir = "/x"

            [service]
            argv = ["a"]

            [heartbeat]
            deadline_ms = "1s"
            """
        let found = issues(text)
        #expect(found.map(\.description) == [#"defib.toml:7: heartbeat.deadline_ms: expected an integer, got string "1s""#])
        #expect(found.first?.kind == .type)
        #expect(found.first?.key == "heartbeat.deadline_ms")
    }

    @Test func typeErrorsInsideArraysAndTablesNameTheElement() {
        let text = """
            [service]
            argv = [
                "prog",
                5,
            ]
            env = { A = "1", B = 2 }
            [capture]
            stacks = "yes"
            [restart]
            backoff_multiplier = "double"
            """
        let found = issues(text, file: "x.toml").map(\.description)
        #expect(found == [
            "x.toml:2: service.argv[1]: expected a string, got integer 5",
            "x.toml:6: service.env.B: expected a string, got integer 2",
            #"x.toml:8: capture.stacks: expected a boolean (true or false), got string "yes""#,
            #"x.toml:10: restart.backoff_multiplier: expected a number, got string "double""#,
        ])
    }

    @Test func unknownKeysAreErrorsWithASuggestion() {
        let text = """
            state_dir = "/x"
            [heartbeat]
            interval_ms = 100
            intervall_ms = 200
            [heartbeats]
            misses = 2
            [restart]
            completely_different = 1
            """
        let found = issues(text)
        #expect(found.map(\.description) == [
            "defib.toml:4: heartbeat.intervall_ms: unknown key (did you mean interval_ms?)",
            "defib.toml:5: heartbeats: unknown table (did you mean heartbeat?)",
            "defib.toml:8: restart.completely_different: unknown key",
        ])
        #expect(found.allSatisfy { $0.kind == .unknownKey })
    }

    @Test func outOfRangeValuesNameTheirLineAndKey() {
        let text = """
            [heartbeat]
            interval_ms = 0
            deadline_ms = 10
            misses = 0
            [capture]
            method = "gcor"
            budget_ms = -5
            [restart]
            backoff_multiplier = 0.5
            intensity_max = -1
            """
        let found = issues(text)
        #expect(found.map(\.description) == [
            "defib.toml:2: heartbeat.interval_ms: must be between 1 and \(SupervisorConfig.maximumDurationMs) ms, got 0",
            "defib.toml:3: heartbeat.deadline_ms: must be between 50 and \(SupervisorConfig.maximumDurationMs) ms, got 10",
            "defib.toml:4: heartbeat.misses: must be between 1 and 1000, got 0",
            #"defib.toml:6: capture.method: unknown capture method "gcor" (expected one of: native, kernel, gcore, none); did you mean gcore?"#,
            "defib.toml:7: capture.budget_ms: must be between 1 and \(SupervisorConfig.maximumDurationMs) ms, got -5",
            "defib.toml:9: restart.backoff_multiplier: must be between 1 and 100, got 0.5",
            "defib.toml:10: restart.intensity_max: must be between 0 and 1000000, got -1",
        ])
        #expect(found.allSatisfy { $0.kind == .invalid })
    }

    @Test func metricsStayOnLoopbackAndSocketsNeedAnAddress() {
        let text = """
            state_dir = "/x"
            [service]
            argv = ["a"]
            [sockets]
            http = "localhost:8080"
            api = "api.example.com:9000"
            v6 = "[::]:8081"
            [metrics]
            listen = "0.0.0.0:9464"
            """
        let found = issues(text).map(\.description)
        #expect(found == [
            "defib.toml:6: sockets.api: 'api.example.com' is not an IP address (give 0.0.0.0, 127.0.0.1, ::, localhost …)",
            "defib.toml:9: metrics.listen: 0.0.0.0 is not a loopback address: metrics are served on 127.0.0.0/8, ::1 or localhost only",
        ], "\(found)")
        for host in ["127.0.0.1", "127.3.2.1", "::1", "localhost"] { #expect(SocketSpec.isLoopback(host), "\(host)") }
        for host in ["0.0.0.0", "10.0.0.1", "::", "128.0.0.1", "127.0.0", "localhost.example"] { #expect(!SocketSpec.isLoopback(host), "\(host)") }
        #expect(SocketSpec.numericHost("localhost") == "127.0.0.1" && SocketSpec.numericHost("::") == "::" && SocketSpec.numericHost("300.1.1.1") == nil)
    }

    @Test func linesAreFoundPastMultiLineStringsAndArrays() {
        let text = """
            [service]
            name = '''
            [heartbeat]
            deadline_ms = 3
            '''
            argv = [
              "deadline_ms = 1",  # ] not the end
              "]",
            ]
            [heartbeat]
            deadline_ms = true
            """
        let found = issues(text).map(\.description)
        #expect(found == ["defib.toml:11: heartbeat.deadline_ms: expected an integer, got boolean true"])
    }

    @Test func validateListsEveryProblemByKey() {
        var c = SupervisorConfig(service: .init(name: "a/b", argv: []), stateDirectory: "")
        c.heartbeat.deadlineMs = 49
        c.restart.backoffInitialMs = 5000
        c.restart.backoffMaxMs = 1000
        c.service.environment = ["A=B": "x"]
        let error = #expect(throws: ConfigError.self) { try c.validate() }
        let keys = error?.issues.map { $0.key ?? "" } ?? []
        #expect(keys == ["state_dir", "service.argv", "service.name", "service.env", "heartbeat.deadline_ms", "restart.backoff_max_ms"])
        #expect(error?.issues.allSatisfy { $0.file == nil && $0.line == nil } == true)
        #expect(error?.description.split(separator: "\n").count == keys.count, "one line per problem")

        // A control socket path that cannot fit in sockaddr_un is caught before any bind fails.
        var long = SupervisorConfig(service: .init(name: "svc", argv: ["x"]), stateDirectory: "/" + String(repeating: "d", count: 100))
        #expect(long.validationIssues().map(\.key) == ["state_dir"])
        long.heartbeat.controlSocket = "/run/s.sock"
        #expect(long.validationIssues().isEmpty)
    }

    @Test func parseLeavesRequiredSettingsToTheFlagsButLoadReportsUnreadableFiles() throws {
        // No argv or state_dir: fine for parse (flags may supply them); validate() insists.
        let c = try SupervisorConfig.parse("[heartbeat]\nmisses = 2\n", path: "p.toml")
        #expect(c.validationIssues().map(\.key) == ["state_dir", "service.argv", "service.name"])
        #expect(c.withDerivedDefaults().service.name == "")
        var withArgv = c
        withArgv.service.argv = ["/usr/bin/python3", "-u"]
        #expect(withArgv.withDerivedDefaults().service.name == "python3")

        let missing = #expect(throws: ConfigError.self) { try SupervisorConfig.load(path: "/nonexistent/defib.toml") }
        #expect(missing?.description == "/nonexistent/defib.toml: cannot read: no such file")
        #expect(missing?.issues.first?.kind == .unreadable)
    }
}
