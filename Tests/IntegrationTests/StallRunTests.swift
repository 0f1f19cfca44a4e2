import DefibCore
import DefibPOSIX
import Foundation
import Glibc
import Testing

/// Stalls that end by themselves, under `defib run` with real programs: the reference proxy stopped for 800 ms of
/// a 1000 ms deadline (issue 17's contract), and python's http.server behind an http probe. Each is one incident
/// (`stall`, `self-recovered`) with every thread's stack, the same pid still serving, nothing killed.
@Suite(.timeLimit(.minutes(3)))
struct StallRunTests {
    func supervise(_ dir: Scratch, _ args: [String], _ program: [String]) throws -> Background {
        try Background([Binaries.defib, "run", "--state-dir", dir.path + "/state"] + args + ["--"] + program, log: dir.path + "/defib.log")
    }

    /// SIGSTOP for `ms`, then SIGCONT.
    func stall(_ pid: Int32, ms: UInt32) {
        #expect(killProcess(pid, signal: SIGSTOP))
        usleep(ms * 1000)
        #expect(killProcess(pid, signal: SIGCONT))
    }

    /// The only incident in full (`incidents info ID --json`) once it is a stall whose stacks have landed.
    func stallIncident(_ state: String, _ defib: Background) throws -> [String: Any] {
        var incident: [String: Any] = [:]
        let landed = try waitUntil(timeoutMs: 30_000) {
            guard let first = try incidentsJSON(stateDir: state).first, let id = first["id"] as? Int else { return false }
            let info = try runCommand([Binaries.defib, "incidents", "info", String(id), "--state-dir", state, "--json"])
            incident = (try? JSONSerialization.jsonObject(with: Data(info.stdout.utf8)) as? [String: Any]) ?? [:]
            return (incident["stacks"] as? String)?.isEmpty == false
        }
        try #require(landed, "no incident with stacks: \(incident) \(defib.log)")
        return incident
    }

    @Test func theProxyStoppedFor800msOfA1000msDeadlineIsAStallWithStacksAndKeepsItsPid() throws {
        let dir = Scratch("stall-proxy")
        defer { dir.remove() }
        let state = dir.path + "/state"
        let port = freePort()
        let defib = try supervise(dir, ["--interval", "100", "--deadline", "1000"],
                                  [Binaries.proxy, "--listen", "127.0.0.1:\(port)", "--route", "app=127.0.0.1:\(freePort())"])
        defer { defib.stop() }
        try #require(waitUntil(timeoutMs: 30_000) { defib.log.contains("is ready") }, "never ready: \(defib.log)")
        let pid = try #require(childProcesses(of: defib.pid).first { processName($0) == "defib-proxy" })
        stall(pid, ms: 800)

        let incident = try stallIncident(state, defib)
        let listed = try incidentsJSON(stateDir: state)
        #expect(listed.count == 1, "\(listed)")
        #expect(incident["cause"] as? String == "stall" && incident["outcome"] as? String == "self-recovered", "\(incident)")
        #expect(incident["new_pid"] is NSNull && incident["pid"] as? Int == Int(pid))
        #expect(incident["killed_at"] is NSNull && incident["restarted_at"] is NSNull)
        let stacks = incident["stacks"] as? String ?? ""
        #expect(stacks.contains("Thread ") && stacks.contains("#0 "), "\(stacks)")
        #expect(stacks.contains("ProxyServer") || stacks.contains("DefibProxy") || stacks.contains("epoll_wait"), "no proxy frame: \(stacks)")
        let evidence = try #require(incident["stall_evidence"] as? [String: Any], "\(incident)")
        #expect(evidence["mode"] as? String == "stacks" && (evidence["pause_ms"] as? Double ?? 0) > 0, "\(evidence)")
        #expect((incident["diagnosis"] as? String)?.hasPrefix("stopped") == true, "\(incident["diagnosis"] ?? "")")
        #expect((incident["silence_ms"] as? Double ?? 0) >= 700, "\(incident["silence_ms"] ?? "")")

        // The same process, still answering: no kill, no restart; the capture's file is gone.
        #expect(childProcesses(of: defib.pid).filter { processName($0) == "defib-proxy" } == [pid])
        let pong = try runCommand([Binaries.defib, "ctl", "--state-dir", state, "ping", "stall-test"])
        #expect(pong.code == 0 && pong.stdout.contains("pong stall-test"), "\(pong)")
        #expect(httpGet(port: port, path: "/", host: "app") != nil, "the proxy stopped serving HTTP")
        #expect((try? FileManager.default.contentsOfDirectory(atPath: state + "/cores")) == [], "a stall capture was left behind")

        // The CLI: --kind selects it, the signatures view counts it as a stall.
        let stalls = try runCommand([Binaries.defib, "incidents", "list", "--state-dir", state, "--kind", "stall", "--json"])
        #expect((try? JSONSerialization.jsonObject(with: Data(stalls.stdout.utf8)) as? [[String: Any]])?.count == 1, "\(stalls)")
        let hangs = try runCommand([Binaries.defib, "incidents", "list", "--state-dir", state, "--kind", "hang", "--json"])
        #expect(hangs.code == 0 && hangs.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "[]", "\(hangs)")
        let bad = try runCommand([Binaries.defib, "incidents", "list", "--state-dir", state, "--kind", "crash"])
        #expect(bad.code == 64 && bad.stderr.contains("unknown --kind 'crash'"), "\(bad)")
        let signatures = try runCommand([Binaries.defib, "incidents", "signatures", "--state-dir", state, "--no-legend"])
        let row = signatures.stdout.split(separator: " ", omittingEmptySubsequences: true)
        #expect(row.count > 2 && row[1] == "1" && row[2] == "1", "COUNT 1, STALLS 1: \(signatures.stdout)")
        let signaturesJSON = try runCommand([Binaries.defib, "incidents", "signatures", "--state-dir", state, "--json"])
        let signed = try JSONSerialization.jsonObject(with: Data(signaturesJSON.stdout.utf8)) as? [[String: Any]]
        #expect(signed?.count == 1 && signed?.first?["count"] as? Int == 1 && signed?.first?["stalls"] as? Int == 1, "\(signaturesJSON)")
        let human = try runCommand([Binaries.defib, "incidents", "info", "--state-dir", state])
        #expect(human.stdout.contains("self-recovered: the heartbeat came back by itself") && human.stdout.contains("Stall evidence (suspect stage)"),
                "\(human.stdout)")
        #expect(defib.stop() == .exited(code: 0))
    }

    /// A stall that does not end is a hang: its suspect-stage stacks join the hang's incident (the first moment),
    /// beside the hang's own core and stacks; the metrics count stalls only when they end by themselves.
    @Test func aStallThatBecomesAHangGivesTheHangItsFirstMomentAndTheMetricsCountStalls() throws {
        let dir = Scratch("stall-hang")
        defer { dir.remove() }
        let state = dir.path + "/state"
        let port = freePort(), metrics = freePort()
        let defib = try supervise(dir, ["--interval", "100", "--deadline", "1000", "--metrics", "127.0.0.1:\(metrics)"],
                                  [Binaries.proxy, "--listen", "127.0.0.1:\(port)", "--route", "app=127.0.0.1:\(freePort())"])
        defer { defib.stop() }
        try #require(waitUntil(timeoutMs: 30_000) { defib.log.contains("is ready") }, "never ready: \(defib.log)")
        let pid = try #require(childProcesses(of: defib.pid).first { processName($0) == "defib-proxy" })
        stall(pid, ms: 800)
        _ = try stallIncident(state, defib)
        var text = ""
        #expect(waitUntil(timeoutMs: 10_000) {
            text = httpGet(port: metrics, path: "/metrics", host: "localhost")?.body ?? ""
            return text.contains("defib_stalls_total{service=\"defib-proxy\"} 1")
        }, "\(text)")
        #expect(text.contains("defib_stall_duration_seconds_bucket") && text.contains("defib_stall_evidence_pause_seconds_bucket"), "\(text)")

        // Now for good: a hang, with the stall's first moment.
        let again = try #require(childProcesses(of: defib.pid).first { processName($0) == "defib-proxy" })
        #expect(killProcess(again, signal: SIGSTOP))
        var hang: [String: Any] = [:]
        let landed = try waitUntil(timeoutMs: 60_000) {
            guard let newest = try incidentsJSON(stateDir: state).first, newest["cause"] as? String == "missed-heartbeat",
                  newest["outcome"] as? String == "recovered", let id = newest["id"] as? Int else { return false }
            let info = try runCommand([Binaries.defib, "incidents", "info", String(id), "--state-dir", state, "--json"])
            hang = (try? JSONSerialization.jsonObject(with: Data(info.stdout.utf8)) as? [String: Any]) ?? [:]
            let first = hang["stall_evidence"] as? [String: Any]
            return (hang["stacks"] as? String)?.isEmpty == false && (first?["stacks"] as? String)?.isEmpty == false
        }
        #expect(landed, "no hang with both moments' stacks: \(hang) \(defib.log)")
        let first = hang["stall_evidence"] as? [String: Any] ?? [:]
        #expect(first["mode"] as? String == "stacks" && (first["pause_ms"] as? Double ?? 0) > 0, "\(first)")
        #expect((hang["notes"] as? [String] ?? []).contains { $0.hasPrefix("the stall's evidence from the suspect stage joins this incident") })
        #expect(hang["core_path"] is String && hang["new_pid"] is Int, "\(hang)")
        #expect(try incidentsJSON(stateDir: state).count == 2, "one stall, one hang")
        text = httpGet(port: metrics, path: "/metrics", host: "localhost")?.body ?? ""
        #expect(text.contains("defib_stalls_total{service=\"defib-proxy\"} 1"), "a hang is no stall: \(text)")
        #expect(defib.stop() == .exited(code: 0))
    }

    @Test func pythonsHTTPServerStoppedBehindAnHTTPProbeIsAStallNotARestart() throws {
        let server = try HTTPServerProgram()
        let dir = Scratch("stall-httpserver")
        defer { server.stop(); dir.remove() }
        let state = dir.path + "/state"
        let url = "http://127.0.0.1:\(server.port)/health"
        let defib = try supervise(dir, ["--heartbeat", "http", "--probe", url, "--interval", "100", "--deadline", "2000"], server.argv)
        defer { defib.stop() }
        try #require(waitUntil(timeoutMs: 30_000) { defib.log.contains("is ready") }, "never ready: \(defib.log)")
        let pid = try #require(childProcesses(of: defib.pid).first { processName($0) == "python3" })
        stall(pid, ms: 1500)

        let incident = try stallIncident(state, defib)
        #expect(incident["cause"] as? String == "stall" && incident["outcome"] as? String == "self-recovered", "\(incident)")
        #expect(incident["pid"] as? Int == Int(pid) && incident["new_pid"] is NSNull)
        #expect((incident["cause_detail"] as? String)?.hasPrefix("http probe GET \(url) silent for ") == true, "\(incident["cause_detail"] ?? "")")
        #expect((incident["stacks"] as? String)?.contains("Thread ") == true)
        #expect(try incidentsJSON(stateDir: state).count == 1)
        #expect(childProcesses(of: defib.pid).filter { processName($0) == "python3" } == [pid], "the server was replaced: \(defib.log)")
        #expect(httpGet(port: server.port, path: "/health", host: "127.0.0.1")?.body == "status: ok\n")
        #expect(defib.stop() == .exited(code: 0))
    }
}

/// `defib chaos --quick --scenarios stall`: the proxy stopped for 3/4 of the deadline, then its write lock held as
/// long; two stall incidents with stacks, no kill, the pause in the report.
@Suite(.timeLimit(.minutes(3)))
struct StallChaosTests {
    @Test func theStallScenarioRecordsTwoStallsWithStacksAndKillsNothing() throws {
        let dir = Scratch("chaos-stall"); defer { dir.remove() }
        let report = "\(dir.path)/report"
        let r = try runCommand([Binaries.defib, "chaos", "--quick", "--scenarios", "stall", "--report", report], timeoutMs: 170_000)
        #expect(r.code == 0, "exit \(r.code): \(r.stdout)\n\(r.stderr)")
        let data = try #require(FileManager.default.contents(atPath: "\(report)/report.json"), "no report.json: \(r.stderr)")
        let runs = try #require(try JSONSerialization.jsonObject(with: Data(data)) as? [[String: Any]])
        let run = try #require(runs.first)
        #expect(runs.count == 1 && run["scenario"] as? String == "stall")
        #expect(run["stalls"] as? Int == 2 && run["kills"] as? Int == 0 && run["stacks_ok"] as? Bool == true, "\(run)")
        #expect((run["stall_pause_ms"] as? Double ?? 0) > 0, "\(run)")
        let md = try String(contentsOfFile: "\(report)/report.md", encoding: .utf8)
        #expect(md.contains("| pause the evidence cost the service"), "\(md)")
    }
}
