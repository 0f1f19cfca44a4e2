import DefibCore
import Testing

/// `[heartbeat] source = "http"|"tcp"|"exec"|"auto"|"none"`, the `probe*` keys and `[service] user/group`:
/// parsing, the probe text for each kind, and every misuse named with its key and line.
@Suite struct ProbeConfigTests {
    func parse(_ text: String) throws -> SupervisorConfig { try SupervisorConfig.parse(text, path: "p.toml") }

    func issues(_ text: String) -> [String] {
        do {
            var c = try parse(text)
            if c.service.argv.isEmpty { c.service.argv = ["x"]; c.service.name = "x" }
            if c.stateDirectory.isEmpty { c.stateDirectory = "/tmp/s" }
            return c.validationIssues().map(\.description)
        } catch let e as ConfigError {
            return e.issues.map(\.description)
        } catch {
            return ["\(error)"]
        }
    }

    @Test func everySourceParsesAndTheProtocolOnesStillDriveTheMachine() throws {
        for mode in HeartbeatMode.allCases {
            let c = try parse("[heartbeat]\nsource = \"\(mode.rawValue)\"\n")
            #expect(c.heartbeat.mode == mode)
        }
        // The default is auto; ping/notify/both map onto the machine's protocol source both ways.
        var c = try parse("")
        #expect(c.heartbeat.mode == .auto && c.heartbeat.source == .ping)
        c.heartbeat.source = .notify
        #expect(c.heartbeat.mode == .notify)
        c.heartbeat.mode = .both
        #expect(c.heartbeat.source == .both)
        #expect(HeartbeatMode.http.protocolSource == nil && HeartbeatMode.http.probeKind == .http)
        #expect(HeartbeatMode.none.probeKind == nil && HeartbeatMode.auto.protocolSource == nil)
        #expect(issues("[heartbeat]\nsource = \"htp\"\n") == [
            "p.toml:2: heartbeat.source: unknown heartbeat source \"htp\" (expected one of: auto, ping, notify, both, http, tcp, exec, none); did you mean http?"])
    }

    @Test func anHTTPProbeWithItsOptionalKeys() throws {
        let c = try parse("""
            [heartbeat]
            source = "http"
            deadline_ms = 2000
            probe = "http://127.0.0.1:8080/health?full=1#x"
            probe_timeout_ms = 700
            probe_expect_status = 204
            probe_expect_body = "ok"
            """)
        let spec = try #require(try c.heartbeat.probeSpec())
        #expect(spec.target == .http(HTTPProbeTarget(host: "127.0.0.1", port: 8080, path: "/health?full=1")))
        #expect(spec.timeoutMs == 700 && spec.expectStatus == 204 && spec.expectBody == "ok")
        #expect(spec.name == "http probe GET http://127.0.0.1:8080/health?full=1")
        #expect(spec.missDetail(.status(code: 503, reason: "Service Unavailable", expected: 204))
                == "http probe GET http://127.0.0.1:8080/health?full=1: status 503 Service Unavailable (expected 204)")
        // Without probe_timeout_ms: half the deadline, so two attempts fit in one.
        let d = try parse("[heartbeat]\nsource = \"http\"\nprobe = \"http://localhost\"\n")
        #expect(try d.heartbeat.probeSpec()?.timeoutMs == 500)
    }

    @Test func aTCPProbeWithALineAndAReplyPrefix() throws {
        let c = try parse("[heartbeat]\nsource = \"tcp\"\nprobe = \"127.0.0.1:6379\"\nprobe_send = \"PING\"\nprobe_expect = \"+PONG\"\n")
        let spec = try #require(try c.heartbeat.probeSpec())
        #expect(spec.target == .tcp(host: "127.0.0.1", port: 6379) && spec.send == "PING" && spec.expectPrefix == "+PONG")
        #expect(spec.name == "tcp probe 127.0.0.1:6379 (PING → +PONG)")
        let v6 = try parse("[heartbeat]\nsource = \"tcp\"\nprobe = \"[::1]:22\"\nprobe_expect = \"SSH-\"\n")
        #expect(try v6.heartbeat.probeSpec()?.name == "tcp probe [::1]:22 (expecting SSH-)")
    }

    @Test func anExecProbeIsSplitIntoArgvWithoutAShell() throws {
        let c = try parse("[heartbeat]\nsource = \"exec\"\nprobe = \"redis-cli -p 6379 ping\"\n")
        #expect(try c.heartbeat.probeSpec()?.target == .exec(argv: ["redis-cli", "-p", "6379", "ping"]))
        let quoted = try parse("""
            [heartbeat]
            source = "exec"
            probe = "sh -c 'redis-cli ping | grep -q PONG' \\"a \\\\\\"b\\\\\\"\\" c\\\\ d"
            """)
        #expect(try quoted.heartbeat.probeSpec()?.target == .exec(argv: ["sh", "-c", "redis-cli ping | grep -q PONG", "a \"b\"", "c d"]))
        #expect(try quoted.heartbeat.probeSpec()?.name == "exec probe sh -c 'redis-cli ping | grep -q PONG' 'a \"b\"' 'c d'")
    }

    @Test func splittingRefusesWhatOnlyAShellWouldDo() {
        #expect(ProbeCommandLine.split("curl -fs http://x/?a=b") == .success(["curl", "-fs", "http://x/?a=b"]))
        for (text, message) in [
            ("redis-cli ping | grep PONG", "'|' is shell syntax and no shell runs the probe: write it as sh -c '…', or quote the character"),
            ("check > /dev/null", "'>' is shell syntax and no shell runs the probe: write it as sh -c '…', or quote the character"),
            ("echo $HOME", "'$' is shell syntax and no shell runs the probe: write it as sh -c '…', or quote the character"),
            ("echo \"$HOME\"", "$ inside \"…\" would need a shell to expand; write the command as sh -c '…' or quote it with '…'"),
            ("echo 'unclosed", "unclosed ' in \"echo 'unclosed\""),
            ("   ", "empty command"),
            ("'' x", "the program (first word) is empty"),
        ] {
            #expect(ProbeCommandLine.split(text) == .failure(ProbeSpecError(message)), "\(text)")
        }
    }

    @Test func urlsOtherThanPlainHTTPAreRefusedWithTheReason() {
        #expect(HTTPProbeTarget.parse("http://[::1]:8080") == .success(HTTPProbeTarget(host: "::1", port: 8080, path: "/")))
        #expect(HTTPProbeTarget.parse("HTTP://example.test/a b") == .failure(ProbeSpecError("the path holds a space; percent-encode it")))
        #expect((try? HTTPProbeTarget.parse("http://h:81?q").get())?.url == "http://h:81/?q")
        #expect((try? HTTPProbeTarget.parse("http://[::1]/").get())?.hostHeader == "[::1]")
        for (url, message) in [
            ("https://127.0.0.1/", "https is not supported: probe the service's plain-HTTP port on loopback, or use source = \"exec\" with curl"),
            ("127.0.0.1:8080", "expected an http:// URL such as http://127.0.0.1:8080/health, got \"127.0.0.1:8080\""),
            ("http://u:p@h/", "credentials in the URL are not supported (\"http://u:p@h/\")"),
            ("http:///x", "no host in \"http:///x\""),
            ("http://h:0/", "bad port in \"http://h:0/\" (expected 1 to 65535)"),
            ("http://h:99999/", "bad port in \"http://h:99999/\" (expected 1 to 65535)"),
            ("http://[::1/", "unclosed '[' in \"http://[::1/\""),
            ("http://h/a\r\nX: y", "the path holds the character U+D; percent-encode it"),
        ] {
            #expect(HTTPProbeTarget.parse(url) == .failure(ProbeSpecError(message)), "\(url)")
        }
    }

    @Test func misusedProbeKeysAreNamedWithTheirLines() {
        #expect(issues("[heartbeat]\nsource = \"http\"\n") == [
            "heartbeat.probe: required with source = \"http\": a URL such as http://127.0.0.1:8080/health"])
        #expect(issues("[heartbeat]\nsource = \"tcp\"\nprobe = \"localhost\"\n") == [
            "p.toml:3: heartbeat.probe: expected HOST:PORT or [IPV6]:PORT with a port from 1 to 65535, got \"localhost\""])
        #expect(issues("[heartbeat]\nprobe = \"http://x/\"\nprobe_send = \"PING\"\n") == [
            "p.toml:2: heartbeat.probe: only used with source = \"http\", \"tcp\" or \"exec\" (source is \"auto\")",
            "p.toml:3: heartbeat.probe_send: only used with source = \"tcp\" (source is \"auto\")"])
        #expect(issues("[heartbeat]\nsource = \"tcp\"\nprobe = \"127.0.0.1:1\"\nprobe_expect_body = \"x\"\n") == [
            "p.toml:4: heartbeat.probe_expect_body: only used with source = \"http\" (source is \"tcp\")"])
        #expect(issues("[heartbeat]\nsource = \"http\"\nprobe = \"http://h/\"\nprobe_timeout_ms = 5000\nprobe_expect_status = 42\n") == [
            "p.toml:4: heartbeat.probe_timeout_ms: must not exceed heartbeat.deadline_ms (1000): a probe slower than the deadline could never answer in time, got 5000",
            "p.toml:5: heartbeat.probe_expect_status: must be an HTTP status from 100 to 599, got 42"])
        #expect(issues("[heartbeat]\nsource = \"tcp\"\nprobe = \"127.0.0.1:1\"\nprobe_send = \"\"\n") == [
            "p.toml:4: heartbeat.probe_send: must not be empty (leave it out to only connect)"])
        #expect(issues("[heartbeat]\nsource = \"exec\"\nprobe = \"true\"\nprobe_timeout_ms = \"1s\"\n") == [
            "p.toml:4: heartbeat.probe_timeout_ms: expected an integer, got string \"1s\""])
        #expect(issues("[heartbeat]\nsource = \"exec\"\nprobe = \"true\"\nprobe_timout_ms = 5\n") == [
            "p.toml:4: heartbeat.probe_timout_ms: unknown key (did you mean probe_timeout_ms?)"])
    }

    @Test func serviceIdentityKeys() throws {
        let c = try parse("[service]\nargv = [\"x\"]\nuser = \"redis\"\ngroup = \"redis\"\nsupplementary_groups = [\"adm\", \"1000\"]\n")
        #expect(c.service.user == "redis" && c.service.group == "redis" && c.service.supplementaryGroups == ["adm", "1000"])
        #expect(c.service.changesIdentity)
        #expect(issues("[service]\nuser = \"\"\ngroup = \"a b\"\n") == [
            "p.toml:2: service.user: must not be empty", "p.toml:3: service.group: \"a b\" is not a user or group name or id"])
        #expect(issues("[service]\nsupplementary_groups = [\"adm\"]\n") == [
            "p.toml:2: service.supplementary_groups: only used with service.user or service.group (defib's own groups are kept otherwise)"])
        #expect(issues("[service]\nuser = 7\n") == ["p.toml:2: service.user: expected a string, got integer 7"])
    }

    @Test func missDetailsNameWhatFailed() {
        let tcp = ProbeSpec(target: .tcp(host: "127.0.0.1", port: 6379), timeoutMs: 500, send: "PING", expectPrefix: "+PONG")
        #expect(tcp.missDetail(.timedOut(afterMs: 500, stage: "waiting for a reply line (connected, PING sent)"))
                == "tcp probe 127.0.0.1:6379 (PING → +PONG): timed out after 500 ms waiting for a reply line (connected, PING sent)")
        #expect(tcp.missDetail(.refused) == "tcp probe 127.0.0.1:6379 (PING → +PONG): connection refused")
        #expect(tcp.missDetail(.replyMismatch(expected: "+PONG", got: "-LOADING Redis is loading\u{1}"))
                == "tcp probe 127.0.0.1:6379 (PING → +PONG): reply \"-LOADING Redis is loading·\" does not start with \"+PONG\"")
        let exec = ProbeSpec(target: .exec(argv: ["redis-cli", "ping"]), timeoutMs: 500)
        #expect(exec.missDetail(.exited(code: 1, output: "Could not connect to Redis")) == "exec probe redis-cli ping: exit code 1: Could not connect to Redis")
        #expect(exec.missDetail(.signaled(signal: 11, output: nil)) == "exec probe redis-cli ping: killed by SIGSEGV")
        #expect(ProbeFailure.status(code: 500, reason: "", expected: nil).description == "status 500 (expected 2xx or 3xx)")
        #expect(ProbeFailure.bodyMismatch(expected: "ok", searchedBytes: 12).description == "body does not contain \"ok\" (searched 12 bytes)")
    }
}
