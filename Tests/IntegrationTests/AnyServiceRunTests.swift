import DefibCore
import DefibPOSIX
import Foundation
import Glibc
import Testing

/// `defib run` supervising real programs nobody here wrote, unchanged: python's http.server with no heartbeat
/// flag and with an http probe, redis-server with a tcp and an exec probe hung inside a real command, nginx's
/// master and workers with every worker stopped. Each runs on its own free port and state directory.
@Suite(.timeLimit(.minutes(3)))
struct AnyServiceRunTests {
    /// `defib run --state-dir STATE ARGS -- PROGRAM…` in the background, its log in `dir`.
    func supervise(_ dir: Scratch, _ args: [String], _ program: [String]) throws -> Background {
        try Background([Binaries.defib, "run", "--state-dir", dir.path + "/state"] + args + ["--"] + program, log: dir.path + "/defib.log")
    }

    /// The first incident in full (`incidents info --json`) once it has closed `recovered` and its stacks have
    /// landed (or `stacks: false`).
    func recoveredIncident(_ dir: Scratch, _ defib: Background, stacks: Bool = true) throws -> [String: Any] {
        let state = dir.path + "/state"
        var incident: [String: Any] = [:]
        let done = try waitUntil(timeoutMs: 90_000) {
            guard let first = try incidentsJSON(stateDir: state).first, first["outcome"] as? String == "recovered",
                  let id = first["id"] as? Int else { return false }
            let info = try runCommand([Binaries.defib, "incidents", "info", String(id), "--state-dir", state, "--json"])
            incident = (try? JSONSerialization.jsonObject(with: Data(info.stdout.utf8)) as? [String: Any]) ?? [:]
            return !stacks || (incident["stacks"] as? String)?.isEmpty == false
        }
        try #require(done, "no recovered incident\(stacks ? " with stacks" : ""): \(defib.log)")
        return incident
    }

    /// Our child running `comm` (defib's children are the service and, with an exec probe, the probe's command).
    /// nginx under `defib run --heartbeat http` (plus `args`), ready, with its master and its two workers.
    func superviseNginx(_ nginx: NginxProgram, _ dir: Scratch, _ args: [String]) throws -> (defib: Background, master: Int32, workers: [Int32]) {
        let defib = try supervise(dir, ["--heartbeat", "http", "--probe", nginx.url] + args, nginx.argv)
        do {
            try #require(waitUntil(timeoutMs: 30_000) { defib.log.contains("is ready") }, "never ready: \(defib.log)")
            let master = try #require(child(of: defib.pid, named: "nginx"))
            var workers: [Int32] = []
            try #require(waitUntil(timeoutMs: 30_000) { workers = childProcesses(of: master); return workers.count == 2 }, "workers: \(workers)")
            return (defib, master, workers)
        } catch {
            defib.stop()
            throw error
        }
    }

    func child(of pid: Int32, named comm: String) -> Int32? {
        childProcesses(of: pid).first { processName($0) == comm }
    }

    /// No heartbeat flag: python's http.server speaks neither protocol. It runs untouched (no incident, same
    /// pid, serving) for 30 s — twice the start timeout that used to kill it — and defib says once, by name,
    /// how to watch it for hangs.
    @Test func aServerThatSpeaksNoProtocolIsLeftAloneWithOneWarning() throws {
        let server = try HTTPServerProgram()
        let dir = Scratch("auto-httpserver")
        defer { server.stop(); dir.remove() }
        let defib = try supervise(dir, [], server.argv)
        defer { defib.stop() }
        try #require(waitUntil(timeoutMs: 30_000) { httpGet(port: server.port, path: "/health", host: "127.0.0.1")?.status == 200 },
                     "never served: \(defib.log)")
        let pid = try #require(child(of: defib.pid, named: "python3"))
        let start = monotonicNanoseconds()
        var served = 0, asked = 0
        while monotonicNanoseconds() - start < 30_000_000_000 {
            asked += 1
            if httpGet(port: server.port, path: "/health", host: "127.0.0.1", timeoutMs: 5000)?.body == "status: ok\n" { served += 1 }
            usleep(1_000_000)
        }
        #expect(served == asked, "\(served) of \(asked) requests served")
        #expect(child(of: defib.pid, named: "python3") == pid, "the server was replaced: \(defib.log)")
        #expect(try incidentsJSON(stateDir: dir.path + "/state").isEmpty, "\(defib.log)")
        let warnings = defib.log.components(separatedBy: "\n").filter { $0.contains("has neither listened on DEFIB_CONTROL_SOCKET nor sent WATCHDOG=1") }
        #expect(warnings.count == 1, "\(defib.log)")
        #expect(warnings.first?.contains("--heartbeat http|tcp|exec with --probe TARGET") == true)
        #expect(defib.stop() == .exited(code: 0))
        #expect(waitUntil(timeoutMs: 5000) { kill(pid, 0) != 0 }, "the server outlived its supervisor")
    }

    /// `--heartbeat http`: SIGSTOP on the server is a hang of the server itself — its core, diagnosis
    /// `stopped`, the probe's failure in cause_detail — and the restarted server serves again.
    @Test func aStoppedHTTPServerBehindAnHTTPProbeIsCapturedAndRestarted() throws {
        let server = try HTTPServerProgram()
        let dir = Scratch("http-httpserver")
        defer { server.stop(); dir.remove() }
        let url = "http://127.0.0.1:\(server.port)/health"
        let defib = try supervise(dir, ["--heartbeat", "http", "--probe", url], server.argv)
        defer { defib.stop() }
        try #require(waitUntil(timeoutMs: 30_000) { defib.log.contains("is ready") }, "never ready: \(defib.log)")
        let pid = try #require(child(of: defib.pid, named: "python3"))
        #expect(killProcess(pid, signal: SIGSTOP))
        let incident = try recoveredIncident(dir, defib)
        #expect(incident["pid"] as? Int == Int(pid) && incident["cause"] as? String == "missed-heartbeat")
        let detail = incident["cause_detail"] as? String ?? ""
        #expect(detail.hasPrefix("http probe GET \(url) failing: "), "\(detail)")
        #expect(detail.contains("timed out after 500 ms"), "\(detail)")
        #expect((incident["diagnosis"] as? String)?.hasPrefix("stopped") == true, "\(incident["diagnosis"] ?? "")")
        let core = try #require(incident["core_path"] as? String, "no core: \(incident)")
        var st = stat()
        #expect(stat(core, &st) == 0 && st.st_size > 0)
        #expect((incident["binary"] as? String)?.hasPrefix("/usr/bin/python3") == true, "the server's own binary: \(incident["binary"] ?? "")")
        #expect(waitUntil(timeoutMs: 5000) { kill(pid, 0) != 0 }, "the stopped server was not killed")
        let newPid = try #require(incident["new_pid"] as? Int)
        #expect(newPid != Int(pid) && child(of: defib.pid, named: "python3") == Int32(newPid))
        #expect(httpGet(port: server.port, path: "/health", host: "127.0.0.1")?.body == "status: ok\n")
        #expect(defib.stop() == .exited(code: 0))
    }

    /// redis-server with a tcp probe (PING → +PONG): `DEBUG SLEEP 30` is a hang inside a real command. The core
    /// and stacks are redis-server's; the restarted server answers PING long before the 30 s are up.
    @Test func redisAsleepInsideACommandIsCapturedWithItsStacksAndRestarted() throws {
        let redis = try RedisProgram()
        let dir = Scratch("tcp-redis")
        defer { redis.stop(); dir.remove() }
        let config = dir.path + "/redis.toml"
        try """
            [heartbeat]
            source = "tcp"
            probe = "127.0.0.1:\(redis.port)"
            probe_send = "PING"
            probe_expect = "+PONG"
            """.write(toFile: config, atomically: true, encoding: .utf8)
        let defib = try supervise(dir, ["--config", config], redis.argv)
        defer { defib.stop() }
        try #require(waitUntil(timeoutMs: 30_000) { defib.log.contains("is ready") }, "never ready: \(defib.log)")
        let pid = try #require(child(of: defib.pid, named: "redis-server"))
        let sleeper = try Background([RealPrograms.redisCLI, "-p", String(redis.port), "DEBUG", "SLEEP", "30"], log: dir.path + "/sleep.log")
        defer { sleeper.stop() }
        let slept = monotonicNanoseconds()
        // The replacement answers while the 30 s sleep would still be going on.
        let back = waitUntil(timeoutMs: 25_000) {
            child(of: defib.pid, named: "redis-server").map { $0 != pid } == true && RealPrograms.exchange(port: redis.port, line: "PING") == "+PONG"
        }
        let seconds = Double(monotonicNanoseconds() - slept) / 1e9
        #expect(back, "PING not answered by a new redis-server within 25 s: \(defib.log)")
        #expect(seconds < 20, "back after \(seconds) s")
        let incident = try recoveredIncident(dir, defib)
        #expect(incident["pid"] as? Int == Int(pid))
        let detail = incident["cause_detail"] as? String ?? ""
        #expect(detail.hasPrefix("tcp probe 127.0.0.1:\(redis.port) (PING → +PONG) failing: "), "\(detail)")
        #expect(detail.contains("timed out after 500 ms"), "\(detail)")
        #expect((incident["binary"] as? String)?.hasSuffix("redis-server") == true || (incident["binary"] as? String)?.hasSuffix("redis-check-rdb") == true)
        #expect(incident["core_path"] as? String != nil, "no core: \(incident)")
        let stacks = incident["stacks"] as? String ?? ""
        #expect(stacks.contains("Thread"), "\(stacks.prefix(500))")
        #expect((incident["processes"] as? [Any])?.isEmpty == true, "one process: \(incident["processes"] ?? "")")
        #expect(waitUntil(timeoutMs: 5000) { kill(pid, 0) != 0 })
    }

    /// The same hang behind an exec probe (`redis-cli ping`): the probe command that hangs with the server is
    /// killed with its process group at its timeout and reaped — no probe is left behind, no zombie.
    @Test func anExecProbeThatHangsWithTheServerIsKilledAndReaped() throws {
        let redis = try RedisProgram()
        let dir = Scratch("exec-redis")
        defer { redis.stop(); dir.remove() }
        let defib = try supervise(dir, ["--heartbeat", "exec", "--probe", "redis-cli -p \(redis.port) ping", "--interval", "300"], redis.argv)
        defer { defib.stop() }
        try #require(waitUntil(timeoutMs: 30_000) { defib.log.contains("is ready") }, "never ready: \(defib.log)")
        let pid = try #require(child(of: defib.pid, named: "redis-server"))
        let sleeper = try Background([RealPrograms.redisCLI, "-p", String(redis.port), "DEBUG", "SLEEP", "30"], log: dir.path + "/sleep.log")
        defer { sleeper.stop() }
        let incident = try recoveredIncident(dir, defib, stacks: false)
        #expect(incident["pid"] as? Int == Int(pid))
        let detail = incident["cause_detail"] as? String ?? ""
        #expect(detail.hasPrefix("exec probe redis-cli -p \(redis.port) ping failing: "), "\(detail)")
        #expect(detail.contains("timed out after 500 ms with the command still running (pid "), "\(detail)")
        // Healthy again: between attempts defib has one child, the server; no probe command and no zombie stay.
        let settled = waitUntil(timeoutMs: 20_000) {
            let children = childProcesses(of: defib.pid)
            return children.count == 1 && children.allSatisfy { processName($0) == "redis-server" && ($0 != pid) }
                && RealPrograms.exchange(port: redis.port, line: "PING") == "+PONG"
        }
        #expect(settled, "children: \(childProcesses(of: defib.pid).map { "\($0) \(processName($0))" })")
        #expect(defib.stop() == .exited(code: 0))
    }

    /// nginx, master and two workers, with an http probe: every worker stopped while the master idles is a hang
    /// of the instance. The incident lists each process, names the stopped workers, holds their cores beside the
    /// master's, and the whole instance — master and workers — is replaced.
    @Test func nginxWithEveryWorkerStoppedIsCapturedPerProcessAndReplacedWhole() throws {
        let nginx = try NginxProgram()
        let dir = Scratch("http-nginx")
        defer { nginx.stop(); dir.remove() }
        let (defib, master, workers) = try superviseNginx(nginx, dir, [])
        defer { defib.stop() }
        for worker in workers { #expect(killProcess(worker, signal: SIGSTOP)) }
        let incident = try recoveredIncident(dir, defib)
        #expect(incident["pid"] as? Int == Int(master))
        #expect((incident["diagnosis"] as? String)?.hasPrefix("stopped") == true, "\(incident["diagnosis"] ?? "")")
        let processes = try #require(incident["processes"] as? [[String: Any]], "no processes: \(incident)")
        #expect(processes.count == 3, "\(processes)")
        let main = try #require(processes.first)
        #expect(main["pid"] as? Int == Int(master) && main["main"] as? Bool == true && main["comm"] as? String == "nginx")
        #expect(main["core_path"] as? String == incident["core_path"] as? String)
        for worker in workers {
            let entry = try #require(processes.first { $0["pid"] as? Int == Int(worker) }, "worker \(worker) not listed")
            #expect(entry["diagnosis"] as? String == "stopped" && entry["state"] as? String == "T" && entry["main"] as? Bool == false)
            let core = try #require(entry["core_path"] as? String, "no core of worker \(worker): \(entry)")
            var st = stat()
            #expect(stat(core, &st) == 0 && st.st_size > 0 && st.st_mode & 0o777 == 0o600, "\(core)")
        }
        let detail = incident["cause_detail"] as? String ?? ""
        #expect(detail.hasPrefix("http probe GET \(nginx.url) failing: "), "\(detail)")
        // The whole instance went: the master and both stopped workers; a new master with new workers serves.
        #expect(waitUntil(timeoutMs: 5000) { ([master] + workers).allSatisfy { kill($0, 0) != 0 } }, "part of the old instance survived")
        let newMaster = try #require(child(of: defib.pid, named: "nginx"))
        #expect(newMaster != master && incident["new_pid"] as? Int == Int(newMaster))
        #expect(waitUntil(timeoutMs: 10_000) { childProcesses(of: newMaster).count == 2 })
        #expect(httpGet(port: nginx.port, path: "/health", host: "127.0.0.1")?.body == "healthy\n")
        #expect(defib.stop() == .exited(code: 0))
    }

    /// nginx's workers stopped for less than the deadline, then continued: a stall, recorded with no kill. Its
    /// evidence is taken of a stalled worker, not of the master idling in sigsuspend: gdb's threads are the
    /// worker's (its LWP), and the evidence names the worker and the idle master.
    @Test func nginxWorkersThatStallAreTheStallsEvidenceNotTheIdleMaster() throws {
        let nginx = try NginxProgram()
        let dir = Scratch("stall-nginx")
        defer { nginx.stop(); dir.remove() }
        let (defib, master, workers) = try superviseNginx(nginx, dir, ["--interval", "100", "--deadline", "3000"])
        defer { defib.stop() }
        for worker in workers { #expect(killProcess(worker, signal: SIGSTOP)) }
        // The suspect stage (half the deadline) takes the evidence; then the workers go on, well before the deadline.
        let taken = waitUntil(timeoutMs: 10_000) { defib.log.contains("stall evidence: stacks") }
        for worker in workers { _ = killProcess(worker, signal: SIGCONT) }
        try #require(taken, "no stall evidence: \(defib.log)")
        let state = dir.path + "/state"
        var incident: [String: Any] = [:]
        let stored = try waitUntil(timeoutMs: 30_000) {
            guard let first = try incidentsJSON(stateDir: state).first, let id = first["id"] as? Int else { return false }
            let info = try runCommand([Binaries.defib, "incidents", "info", String(id), "--state-dir", state, "--json"])
            incident = (try? JSONSerialization.jsonObject(with: Data(info.stdout.utf8)) as? [String: Any]) ?? [:]
            return (incident["stacks"] as? String)?.isEmpty == false
        }
        try #require(stored, "no stall incident with stacks: \(defib.log)")
        #expect(incident["cause"] as? String == "stall" && incident["outcome"] as? String == "self-recovered", "\(incident)")
        #expect(incident["pid"] as? Int == Int(master) && incident["new_pid"] is NSNull)
        let evidence = try #require(incident["stall_evidence"] as? [String: Any], "\(incident)")
        let process = evidence["process"] as? String ?? ""
        let captured = try #require(workers.first { process.hasPrefix("pid \($0) (nginx), stopped; the main process pid \(master) was idle") },
                                    "the evidence is not of a stopped worker: '\(process)'")
        let stacks = incident["stacks"] as? String ?? ""
        #expect(stacks.contains("LWP \(captured)") && !stacks.contains("LWP \(master)"), "the worker's threads: \(stacks)")
        // Nothing was killed: the same master and workers, serving.
        #expect(([master] + workers).allSatisfy { kill($0, 0) == 0 })
        #expect(child(of: defib.pid, named: "nginx") == master)
        #expect(waitUntil(timeoutMs: 10_000) { httpGet(port: nginx.port, path: "/health", host: "127.0.0.1")?.body == "healthy\n" })
        #expect(defib.stop() == .exited(code: 0))
    }
}
