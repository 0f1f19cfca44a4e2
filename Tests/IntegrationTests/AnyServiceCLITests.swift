import DefibCore
import DefibPOSIX
import Foundation
import Testing

/// The real `defib check-config` and `defib run` with the probe and identity settings: resolved once at
/// start-up with errors naming the setting; a service user or group — not yet run by `defib run` — is refused
/// by name rather than silently run as root.
@Suite(.timeLimit(.minutes(2)))
struct AnyServiceCLITests {
    func defib(_ args: [String]) throws -> CommandResult { try runCommand([Binaries.defib] + args) }

    @Test func checkConfigShowsTheProbeAndTheIdentityResolved() throws {
        let dir = Scratch("cli-anysvc"); defer { dir.remove() }
        let file = "\(dir.path)/redis.toml"
        try """
            state_dir = "\(dir.path)/state"
            [service]
            argv = ["/usr/bin/redis-server", "--port", "6399"]
            user = "nobody"
            supplementary_groups = ["daemon"]
            [heartbeat]
            source = "tcp"
            probe = "localhost:6399"
            probe_send = "PING"
            probe_expect = "+PONG"
            """.write(toFile: file, atomically: true, encoding: .utf8)
        let ok = try defib(["check-config", file])
        #expect(ok.code == 0, "\(ok.stderr)")
        #expect(ok.stdout.contains("runs as      uid 65534 (nobody), gid 65534, groups [1]"), "\(ok.stdout)")
        #expect(ok.stdout.contains("tcp probe localhost:6399 (PING → +PONG), resolved to 127.0.0.1:6399 every 200 ms, each within 500 ms"), "\(ok.stdout)")

        try """
            state_dir = "\(dir.path)/state"
            [service]
            argv = ["x"]
            user = "defib-no-such-user"
            [heartbeat]
            source = "exec"
            probe = "defib-no-such-check --now"
            """.write(toFile: file, atomically: true, encoding: .utf8)
        let bad = try defib(["check-config", file])
        #expect(bad.code == 1)
        #expect(bad.stderr.contains("\(file): service.user: no user \"defib-no-such-user\" in the password database"), "\(bad.stderr)")
        #expect(bad.stderr.contains("\(file): heartbeat.probe: exec probe: defib-no-such-check not found in \(ExecProbe.searchPath) or not executable"), "\(bad.stderr)")
        #expect(bad.stderr.contains("2 problems found"), "\(bad.stderr)")
    }

    @Test func runNamesBadProbesAndUsers() throws {
        let dir = Scratch("run-anysvc"); defer { dir.remove() }
        let state = ["--state-dir", dir.path + "/state"]
        for (args, message) in [
            (["--heartbeat", "http"], "heartbeat.probe: required with source = \"http\": a URL such as http://127.0.0.1:8080/health"),
            (["--heartbeat", "http", "--probe", "https://127.0.0.1/"],
             "heartbeat.probe: https is not supported: probe the service's plain-HTTP port on loopback, or use source = \"exec\" with curl"),
            (["--heartbeat", "exec", "--probe", "redis-cli ping | grep PONG"],
             "heartbeat.probe: '|' is shell syntax and no shell runs the probe: write it as sh -c '…', or quote the character"),
            (["--user", "defib-no-such-user"], "service.user: no user \"defib-no-such-user\" in the password database"),
            (["--user", "nobody", "--group", "defib-no-such-group"], "service.group: no group \"defib-no-such-group\" in the group database"),
            (["--probe", "http://127.0.0.1/"], "heartbeat.probe: only used with source = \"http\", \"tcp\" or \"exec\" (source is \"auto\")"),
            (["--heartbeat", "exec", "--probe", "defib-no-such-check --now"],
             "heartbeat.probe: exec probe: defib-no-such-check not found in \(ExecProbe.searchPath) or not executable"),
            (["--heartbeat", "tcp", "--probe", "defib-no-such-host.invalid:80"], "heartbeat.probe: cannot resolve \"defib-no-such-host.invalid\""),
        ] {
            let r = try defib(["run"] + state + args + ["--", "/bin/sleep", "30"])
            #expect(r.code == 64, "\(args): \(r.stderr)")
            #expect(r.stderr.contains("defib run: \(message)"), "\(args): \(r.stderr)")
        }
        #expect(!FileManager.default.fileExists(atPath: dir.path + "/state/run"), "a refused run started something")
    }
}
