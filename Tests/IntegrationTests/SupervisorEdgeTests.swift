import DefibPOSIX
import Foundation
import Glibc
import Testing

/// The real `defib run` supervising a small real service (Fixtures/pingable.py) that misbehaves on purpose.
@Suite(.serialized, .timeLimit(.minutes(2)))
struct SupervisorEdgeTests {
    static var pingable: String { "\(Binaries.fixtures)/pingable.py" }

    func supervise(_ dir: Scratch, mode: String, extra: [String] = [], program: [String]? = nil) throws -> Background {
        try Background([Binaries.defib, "run", "--state-dir", dir.path, "--interval", "50", "--deadline", "400",
                        "--capture", "none"] + extra + ["--"] + (program ?? [Self.pingable]),
                       env: ["MODE": mode], log: "\(dir.path)/defib.log")
    }

    func isAlive(_ pid: Int32) -> Bool { kill(pid, 0) == 0 }

    @Test func aServiceThatExitsOnItsOwnIsAnIncidentAndIsRestarted() throws {
        let dir = Scratch("exit"); defer { dir.remove() }
        let defib = try supervise(dir, mode: "exit-after:3:7")
        defer { defib.stop() }
        let found = try waitUntil(timeoutMs: 20_000) {
            try incidentsJSON(stateDir: dir.path).contains { $0["cause"] as? String == "exited" && $0["new_pid"] is Int }
        }
        #expect(found, "\(defib.log)")
        let incident = try #require(try incidentsJSON(stateDir: dir.path).last)
        #expect((incident["cause_detail"] as? String)?.contains("code 7") == true)
        #expect(incident["core_path"] is NSNull)
    }

    @Test func aWrongReplyIsNamedInTheIncident() throws {
        let dir = Scratch("badreply"); defer { dir.remove() }
        let defib = try supervise(dir, mode: "bad-reply-after:3")
        defer { defib.stop() }
        let found = try waitUntil(timeoutMs: 20_000) { try !incidentsJSON(stateDir: dir.path).isEmpty }
        #expect(found, "\(defib.log)")
        let incident = try #require(try incidentsJSON(stateDir: dir.path).last)
        #expect(incident["cause"] as? String == "missed-heartbeat")
        let detail = incident["cause_detail"] as? String ?? ""
        #expect(detail.contains("unexpected reply 'hello there'"), "\(detail)")
    }

    /// A program defib cannot see is wrong before it starts (exit 64: HardeningRunTests); one that exists and is
    /// executable but whose exec fails (here a script whose interpreter is missing) can only fail at each start.
    @Test func aProgramThatCannotStartIsReportedAndTheSupervisorGivesUp() throws {
        let dir = Scratch("nostart"); defer { dir.remove() }
        let program = "\(dir.path)/nonexistent/defib-test-program"
        try FileManager.default.createDirectory(atPath: "\(dir.path)/nonexistent", withIntermediateDirectories: true)
        try "#!/nonexistent/interpreter\n".write(toFile: program, atomically: false, encoding: .utf8)
        chmod(program, 0o755)
        let defib = try supervise(dir, mode: "ok", program: [program])
        let status = defib.wait(timeoutMs: 30_000)
        defer { defib.stop() }
        #expect(status == .exited(code: 1), "\(defib.log)")
        let incidents = try incidentsJSON(stateDir: dir.path)
        #expect(incidents.count == 1, "one incident for the whole episode")
        #expect(incidents.first?["cause"] as? String == "spawn-failed")
        #expect((incidents.first?["cause_detail"] as? String)?.contains("/nonexistent/defib-test-program") == true)
        #expect(incidents.first?["outcome"] as? String == "gave-up")
        // Diagnosed like any other incident, with no capture (and numbers that are numbers).
        #expect((incidents.first?["diagnosis"] as? String ?? "").hasPrefix("exited: the program could not be started"), "\(incidents.first?["diagnosis"] ?? "")")
        #expect(incidents.first?["signature"] is String)
        #expect(incidents.first?["capture_method"] as? String == "none" && incidents.first?["capture_ms"] as? Double == 0)
    }

    @Test func shutdownStopsTheServiceAndLeavesNoProcessBehind() throws {
        let dir = Scratch("shutdown"); defer { dir.remove() }
        let defib = try supervise(dir, mode: "ok")
        defer { defib.stop() }
        let answered = try waitUntil(timeoutMs: 10_000) {
            try runCommand([Binaries.defib, "ctl", "--state-dir", dir.path, "ping", "7"]).stdout == "pong 7\n"
        }
        #expect(answered, "\(defib.log)")
        let childPid = try #require(pidOfChild(of: defib.pid))
        #expect(defib.stop() == .exited(code: 0))
        #expect(try waitUntil(timeoutMs: 2000) { !isAlive(childPid) }, "the service outlived its supervisor")
        #expect(try incidentsJSON(stateDir: dir.path).isEmpty, "a clean stop is not an incident")
    }

    @Test func aServiceIgnoringSIGTERMIsKilledAfterTheStopTimeout() throws {
        let dir = Scratch("ignoreterm"); defer { dir.remove() }
        let defib = try supervise(dir, mode: "ignore-term")
        defer { defib.stop() }
        #expect(try waitUntil(timeoutMs: 10_000) {
            try runCommand([Binaries.defib, "ctl", "--state-dir", dir.path, "ping"]).stdout == "pong\n"
        })
        let childPid = try #require(pidOfChild(of: defib.pid))
        try defib.child.signal(SIGTERM)
        #expect(defib.wait(timeoutMs: 15_000) == .exited(code: 0), "\(defib.log)")
        #expect(!isAlive(childPid))
        #expect(defib.log.contains("ignored SIGTERM") || defib.log.contains("SIGKILL"), "\(defib.log)")
    }

    @Test func remnantsOfADeadInstanceAreKilledNotLeftBeside() throws {
        let dir = Scratch("remnant"); defer { dir.remove() }
        let pidfile = "\(dir.path)/daemons"
        let defib = try Background([Binaries.defib, "run", "--state-dir", dir.path, "--interval", "50", "--deadline", "400",
                                    "--capture", "none", "--", Self.pingable],
                                   env: ["MODE": "exit-after:5:4", "DAEMON_PIDFILE": pidfile], log: "\(dir.path)/defib.log")
        defer { defib.stop() }
        let restarted = waitUntil(timeoutMs: 20_000) {
            ((try? incidentsJSON(stateDir: dir.path)) ?? []).contains { $0["outcome"] as? String == "recovered" }
        }
        #expect(restarted, "\(defib.log)")
        let daemons = ((try? String(contentsOfFile: pidfile, encoding: .utf8)) ?? "").split(separator: "\n").compactMap { Int32($0) }
        #expect(daemons.count >= 2, "each instance left a daemon: \(daemons)")
        let first = try #require(daemons.first)
        #expect(waitUntil(timeoutMs: 5000) { !isAlive(first) }, "the first instance's daemon (pid \(first)) must be gone")
        let incident = try #require(try incidentsJSON(stateDir: dir.path).last)
        #expect((incident["notes"] as? [String] ?? []).contains { $0.contains("killed pid \(first)") && $0.contains("left behind") }, "\(incident)")
    }

    /// A shell that runs `defib run … > >(filter)` forks the filter before it execs defib: the filter is
    /// defib's child, and must not be taken for a remnant of the service.
    @Test func childrenDefibHadBeforeItStartedAreLeftAlone() throws {
        let dir = Scratch("prechild"); defer { dir.remove() }
        let script = "sleep 300 & exec \(Binaries.defib) run --state-dir \(dir.path) --interval 50 --deadline 400 --capture none -- \(Self.pingable)"
        let defib = try Background(["bash", "-c", script], env: ["MODE": "exit-after:5:4"], log: "\(dir.path)/defib.log")
        defer { defib.stop() }
        let restarted = waitUntil(timeoutMs: 20_000) {
            ((try? incidentsJSON(stateDir: dir.path)) ?? []).contains { $0["outcome"] as? String == "recovered" }
        }
        #expect(restarted, "\(defib.log)")
        let sleeper = childProcesses(of: defib.pid).first { processName($0) == "sleep" }
        #expect(sleeper != nil, "the sleep started before defib is still there: \(defib.log)")
        if let sleeper { kill(sleeper, SIGKILL) }
        #expect(!defib.log.contains("(sleep), left behind"), "\(defib.log)")
    }

    @Test func ctlNamesWhatIsWrong() throws {
        let noDir = try runCommand([Binaries.defib, "ctl", "ping"])
        #expect(noDir.code != 0)
        #expect(noDir.stderr.contains("--state-dir"))
        let dir = Scratch("ctl"); defer { dir.remove() }
        let nothing = try runCommand([Binaries.defib, "ctl", "--state-dir", dir.path, "ping"])
        #expect(nothing.code != 0)
        #expect(nothing.stderr.contains("no service under"), "\(nothing.stderr)")
    }

    /// A control socket the config puts outside the state directory is still found by `defib ctl --state-dir`
    /// (through the run directory's link); a socket a gone supervisor left behind does not make it ambiguous;
    /// and defib never chmods a directory it did not create.
    @Test func ctlFindsAControlSocketElsewhereAndSkipsStaleOnes() throws {
        let dir = Scratch("ctlelse"); defer { dir.remove() }
        let state = "\(dir.path)/state"
        let shared = "\(dir.path)/shared"
        try FileManager.default.createDirectory(atPath: shared, withIntermediateDirectories: true)
        chmod(shared, 0o755)
        // A stale socket: bound by a process that is gone, so nothing accepts on it.
        try FileManager.default.createDirectory(atPath: "\(state)/run/old", withIntermediateDirectories: true)
        // Made private by whoever made them, as an administrator would: defib never chmods a directory it did not create.
        chmod(state, 0o700); chmod("\(state)/run", 0o700)
        let stale = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_un(); addr.sun_family = sa_family_t(AF_UNIX)
        let stalePath = Array("\(state)/run/old/control.sock".utf8)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in for (i, b) in stalePath.enumerated() { raw[i] = b } }
        let bound = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(stale, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        try #require(bound == 0)
        close(stale)
        let config = try writePingableConfig(at: "\(dir.path)/edge.toml", stateDir: state, name: "edge", mode: "ok",
                                             heartbeatExtra: "control_socket = \"\(shared)/edge.sock\"", extra: "[capture]\nmethod = \"none\"")
        let defib = try Background([Binaries.defib, "run", "--config", config], log: "\(dir.path)/defib.log")
        defer { defib.stop() }
        let answered = try waitUntil(timeoutMs: 10_000) {
            try runCommand([Binaries.defib, "ctl", "--state-dir", state, "ping", "9"]).stdout == "pong 9\n"
        }
        #expect(answered, "\(defib.log)")
        var st = stat()
        #expect(stat(shared, &st) == 0 && st.st_mode & 0o777 == 0o755, "a directory defib did not create keeps its mode")
        for private_ in ["\(state)/run", "\(state)/run/edge"] {
            #expect(stat(private_, &st) == 0 && st.st_mode & 0o777 == 0o700, "\(private_) is 0700")
        }
        // With the stale one gone from the picture, an explicit --name still reaches either.
        let named = try runCommand([Binaries.defib, "ctl", "--state-dir", state, "--name", "old", "ping"])
        #expect(named.code == 2 && named.stderr.contains("connection refused"), "\(named.stderr)")
    }

    @Test func runRejectsBadArguments() throws {
        let noProgram = try runCommand([Binaries.defib, "run", "--state-dir", "/tmp/x"])
        #expect(noProgram.code != 0)
        #expect(noProgram.stderr.contains("nothing to run"), "\(noProgram.stderr)")
        let badCapture = try runCommand([Binaries.defib, "run", "--state-dir", "/tmp/x", "--capture", "teleport", "--", "true"])
        #expect(badCapture.code != 0)
        #expect(badCapture.stderr.contains("teleport"), "\(badCapture.stderr)")
    }
}

/// The (single) child of `pid`, from /proc.
func pidOfChild(of pid: Int32) -> Int32? {
    let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
    for t in tasks {
        if let text = try? String(contentsOfFile: "/proc/\(pid)/task/\(t)/children", encoding: .utf8),
           let first = text.split(separator: " ").first, let child = Int32(first) { return child }
    }
    return nil
}
