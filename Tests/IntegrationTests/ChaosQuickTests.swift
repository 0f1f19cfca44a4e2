import DefibPOSIX
import Foundation
import Glibc
import Testing

/// `defib chaos` as an operator runs it: the real binary, the real proxy, real faults, real gdb.
/// Asserts recovery and evidence per run, never timings.
@Suite(.serialized, .timeLimit(.minutes(5)))
struct ChaosQuickTests {
    @Test func quickRunRecoversFromEveryFaultWithEvidence() throws {
        let dir = Scratch("chaos"); defer { dir.remove() }
        let report = "\(dir.path)/report"
        let r = try runCommand([Binaries.defib, "chaos", "--quick", "--report", report], timeoutMs: 280_000)
        // 0: every run recovered and every evidence check passed (1 lists what failed on stdout).
        #expect(r.code == 0, "exit \(r.code): \(r.stdout)\n\(r.stderr)")
        // The progress lines name each run.
        #expect(r.stderr.contains("[1/10] timeout-race steady run 1: detected in"), "\(r.stderr)")

        let data = try #require(FileManager.default.contents(atPath: "\(report)/report.json"), "no report.json: \(r.stderr)")
        let runs = try #require(try JSONSerialization.jsonObject(with: data) as? [[String: Any]])
        let required = ["scenario", "fault", "load", "run", "recovered", "detect_ms", "restore_ms", "kill_ms", "ready_ms", "requests_ok",
                        "requests_failed", "requests_refused", "core_ok", "stacks_ok", "diagnosis", "diagnosis_ok", "lock_word", "false_kill", "incident_id"]
        for run in runs {
            for key in required { #expect(run.keys.contains(key), "\(run["scenario"] ?? "?") lacks \(key)") }
            // The contract's types: booleans are booleans in every run, whatever the scenario.
            for key in ["recovered", "core_ok", "diagnosis_ok"] { #expect(run[key] is Bool, "\(run["scenario"] ?? "?"): \(key) = \(run[key] ?? "missing")") }
            #expect(run["requests_failed"] is Int, "\(run["scenario"] ?? "?")")
        }
        var byScenario: [String: [String: Any]] = [:]
        for run in runs { byScenario[run["scenario"] as? String ?? ""] = run }
        let scenarios = ["timeout-race", "timeout-race-natural", "leaked-read", "guard-across-else", "write-then-read", "slow-holder", "dead-loop", "sigstop", "crash", "control"]
        #expect(Set(byScenario.keys) == Set(scenarios), "scenarios run: \(byScenario.keys.sorted())")
        #expect(runs.allSatisfy { $0["load"] as? String == "steady" })

        for name in scenarios where name != "control" {
            let run = try #require(byScenario[name])
            let why = "\(name): \(run["checks_failed"] ?? "")"
            #expect(run["recovered"] as? Bool == true, "\(why)")
            #expect(run["incident_id"] is Int, "\(why)")
            #expect((run["requests_ok"] as? Int ?? 0) > 0, "\(why)")
            if name == "crash" {
                // A crashed process cannot be captured: no core is expected.
                #expect(run["core_expected"] as? Bool == false && run["core_ok"] as? Bool == true, "\(why)")
            } else {
                #expect(run["core_ok"] as? Bool == true, "\(why)")
                #expect(run["stacks_ok"] as? Bool == true, "\(why)")
                #expect(run["gdb_threads"] as? Int == run["threads"] as? Int, "\(why)")
            }
        }
        // Every fault's diagnosis.
        for (name, kind) in [("timeout-race", "corrupted-lock-word"), ("timeout-race-natural", "corrupted-lock-word"), ("leaked-read", "leaked-read-lock"),
                             ("guard-across-else", "self-deadlock"), ("write-then-read", "self-deadlock"), ("slow-holder", "slow-holder"), ("dead-loop", "dead-loop"),
                             ("sigstop", "stopped"), ("crash", "signaled")] {
            let run = try #require(byScenario[name])
            #expect(run["diagnosis_ok"] as? Bool == true, "\(name): diagnosis '\(run["diagnosis"] ?? "")', expected \(kind)")
            #expect((run["diagnosis"] as? String ?? "").hasPrefix(kind), "\(name): '\(run["diagnosis"] ?? "")'")
        }
        for name in ["timeout-race", "timeout-race-natural"] {
            let run = try #require(byScenario[name])
            #expect(run["lock_word_ok"] as? Bool == true, "\(name): lock word \(run["lock_word"] ?? "none")")
            let word = run["lock_word"] as? String ?? ""
            #expect(word == "0xfffffffffffffffe" || word == "0xffffffffffffffff", "\(name): \(word)")
        }
        // The other lock bugs leave a valid word (held, not corrupted).
        for name in ["leaked-read", "guard-across-else", "write-then-read", "slow-holder"] {
            let run = try #require(byScenario[name])
            #expect(run["lock_word_ok"] as? Bool == true, "\(name): lock word \(run["lock_word"] ?? "none")")
        }
        let controlRun = try #require(byScenario["control"])
        #expect(controlRun["core_expected"] as? Bool == false && controlRun["diagnosis_expected"] as? Bool == false)
        let control = try #require(byScenario["control"])
        #expect(control["false_kill"] as? Bool == false, "control: \(control["checks_failed"] ?? "")")
        #expect(control["incident_id"] is NSNull)
        #expect(control["recovered"] as? Bool == true)

        let md = try String(contentsOfFile: "\(report)/report.md", encoding: .utf8)
        #expect(md.contains("| detect_ms |"))
        #expect(md.contains("## Machine"))
        #expect(md.contains("## Settings"))
        for name in scenarios {
            let svg = try String(contentsOfFile: "\(report)/timeline-\(name).svg", encoding: .utf8)
            #expect(svg.hasPrefix("<?xml") && svg.contains("</svg>"), "timeline-\(name).svg")
            if name != "control" { #expect(svg.contains("mark-fault") && svg.contains("mark-detection") && svg.contains("mark-ready"), "timeline-\(name).svg") }
        }
        #expect(FileManager.default.fileExists(atPath: "\(report)/summary.json"))
        // The exit status says whether every check passed, and the report agrees.
        let allPassed = runs.allSatisfy { $0["passed"] as? Bool == true }
        #expect(r.code == (allPassed ? 0 : 1), "exit \(r.code), runs passed: \(allPassed)\n\(r.stdout)")
        #expect(md.contains(allPassed ? "**Result: PASS**" : "**Result: FAIL**"))
        // Nothing the harness started is left: no supervisor still running on this report's state directories
        // (each proxy is a child of one, killed with it).
        #expect(straySupervisors(under: report).isEmpty, "left running: \(straySupervisors(under: report))")
    }

    @Test func sigtermStopsEveryProcessTheHarnessStarted() throws {
        let dir = Scratch("chaos-term"); defer { dir.remove() }
        let chaos = try Background([Binaries.defib, "chaos", "--quick", "--scenarios", "control", "--duration", "60s", "--report", "\(dir.path)/report"],
                                   log: "\(dir.path)/chaos.log")
        defer { chaos.stop(graceMs: 1000) }
        // Wait until the supervised proxy (a grandchild of the harness) is ready and the load is on it.
        var started: [Int32] = []
        let defibLog = "\(dir.path)/report/runs/001-control-steady-1/defib.log"
        let running = waitUntil(timeoutMs: 60_000) {
            started = descendants(of: chaos.pid)
            return started.contains { (readTextFile("/proc/\($0)/comm") ?? "").hasPrefix("defib-proxy") }
                && (readTextFile(defibLog) ?? "").contains("is ready")
        }
        try #require(running, "no ready proxy under the harness: \(chaos.log)")
        usleep(500_000)
        started = descendants(of: chaos.pid)
        try chaos.child.signal(SIGTERM)
        let status = chaos.wait(timeoutMs: 60_000)
        #expect(status == .exited(code: 128 + SIGTERM), "harness ended \(String(describing: status)): \(chaos.log)")
        let gone = waitUntil(timeoutMs: 10_000) { started.allSatisfy { !isLive($0) } }
        #expect(gone, "still running: \(started.filter(isLive))")
        #expect(FileManager.default.fileExists(atPath: "\(dir.path)/report/report.md"), "the report of what finished is written")
        #expect(chaos.log.contains("SIGTERM"))
    }

    @Test func badOptionsAreNamed() throws {
        let r = try runCommand([Binaries.defib, "chaos", "--scenarios", "timeout-race,nope", "--report", "/tmp/defib-chaos-never"])
        #expect(r.code == 64 || r.code == 2, "exit \(r.code)")
        #expect(r.stderr.contains("'nope'"), "\(r.stderr)")
        let d = try runCommand([Binaries.defib, "chaos", "--duration", "soon", "--report", "/tmp/defib-chaos-never"])
        #expect(d.code != 0)
        #expect(d.stderr.contains("--duration 'soon'"), "\(d.stderr)")
        let p = try runCommand([Binaries.defib, "chaos", "--proxy", "/nonexistent/defib-proxy", "--report", "/tmp/defib-chaos-never"])
        #expect(p.code != 0)
        #expect(p.stderr.contains("/nonexistent/defib-proxy"), "\(p.stderr)")
        #expect(!FileManager.default.fileExists(atPath: "/tmp/defib-chaos-never/runs"), "nothing is started for bad options")
    }
}

/// Live, non-zombie.
private func isLive(_ pid: Int32) -> Bool {
    guard let stat = readTextFile("/proc/\(pid)/stat"), let close = stat.lastIndex(of: ")") else { return false }
    let state = stat[stat.index(after: close)...].first { !$0.isWhitespace }
    return state != "Z" && state != "X"
}

/// Every live descendant of `pid` (children of all its threads, recursively).
private func descendants(of pid: Int32) -> [Int32] {
    var out: [Int32] = []
    var queue = [pid]
    while let p = queue.popLast() {
        let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(p)/task")) ?? []
        for t in tasks {
            let kids = (readTextFile("/proc/\(p)/task/\(t)/children") ?? "").split(separator: " ").compactMap { Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
            for k in kids where !out.contains(k) { out.append(k); queue.append(k) }
        }
    }
    return out.filter(isLive)
}

/// `defib run` processes whose command line names `dir` (their state directory lies under it).
private func straySupervisors(under dir: String) -> [Int32] {
    ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).compactMap(Int32.init).filter { pid in
        guard isLive(pid), (readTextFile("/proc/\(pid)/comm") ?? "").hasPrefix("defib"),
              let cmd = readFileBytes("/proc/\(pid)/cmdline") else { return false }
        return String(decoding: cmd.map { $0 == 0 ? 32 : $0 }, as: UTF8.self).contains(dir)
    }
}
