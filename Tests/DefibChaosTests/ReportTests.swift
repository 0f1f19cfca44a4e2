@testable import DefibChaos
import Foundation
import Testing

@Suite struct ReportTests {
    static let settings = ChaosSettings(
        mode: .full, intervalMs: 100, deadlineMs: 1000, defaultDeadlineMs: 1000, extensionStepMs: 500, maxExtensionMs: 2000,
        captureMethod: "native", restart: "backoff 100–2000 ms", configFile: "/r/supervisor.toml", operatorConfig: false,
        ratePerSecond: 50, requestTimeoutMs: 6000, warmupMs: 2000, postMs: 2000, controlDurationMs: 600_000,
        stressCommand: "stress-ng --cpu 4", defibPath: "/bin/defib", proxyPath: "/bin/defib-proxy", runs: 3)
    static let machine = MachineInfo(cpus: 2, kernel: "6.18.44", memoryMiB: 24_000, loadAverage: "1.00 1.00 1.00")

    static func runs() -> [RunResult] {
        var out: [RunResult] = []
        for (n, detect) in [1000.0, 1100, 1900].enumerated() {
            var o = Canned.raceObservation(load: .overload)
            o.run = n + 1
            var i = Canned.raceIncident(id: Int64(n + 1))
            i.detectedUnixMs = Canned.onset + detect
            i.killedUnixMs = i.detectedUnixMs + 30
            i.readyUnixMs = i.detectedUnixMs + 180
            i.extendedMs = detect > 1500 ? 500 : 0
            o.incidents = [i]
            o.coreChecks = [Int64(n + 1): CoreCheck(exists: true, gdbThreads: 5)]
            out.append(RunEvaluator.evaluate(o))
        }
        out.append(RunEvaluator.evaluate(RunObservation(scenario: .control, load: .overload, run: 1, onsetUnixMs: nil, windowStartUnixMs: 9000,
                                                        windowEndUnixMs: 13_000, samples: Canned.samples())))
        return out
    }

    @Test func reportJSONHasOneObjectPerRunWithEveryField() throws {
        let text = ChaosReport.json(Self.runs())
        let array = try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [[String: Any]])
        #expect(array.count == 4)
        let required = ["scenario", "fault", "load", "run", "recovered", "detect_ms", "restore_ms", "kill_ms", "ready_ms", "requests_ok",
                        "requests_failed", "requests_refused", "core_ok", "stacks_ok", "diagnosis", "diagnosis_ok", "lock_word", "false_kill", "incident_id"]
        for (n, run) in array.enumerated() {
            for key in required { #expect(run.keys.contains(key), "run \(n) lacks \(key)") }
        }
        #expect(array[0]["scenario"] as? String == "timeout-race")
        #expect(array[0]["detect_ms"] as? Int == 1000)
        #expect(array[0]["core_ok"] as? Bool == true)
        #expect(array[3]["scenario"] as? String == "control")
        #expect(array[0]["core_expected"] as? Bool == true && array[0]["diagnosis_ok"] as? Bool == true)
        #expect(array[3]["core_ok"] as? Bool == true && array[3]["core_expected"] as? Bool == false, "no core is expected in a control run")
        #expect(array[3]["diagnosis_ok"] as? Bool == true && array[3]["diagnosis_expected"] as? Bool == false, "nor a diagnosis")
        #expect(array[3]["false_kill"] as? Bool == false)
    }

    @Test func markdownHasTheTablesSettingsMachineAndVerdicts() {
        let md = ChaosReport.markdown(Self.runs(), settings: Self.settings, machine: Self.machine, soak: nil, generatedAt: Date(timeIntervalSince1970: 0),
                                      timelines: [.timeoutRace: "timeline-timeout-race.svg"])
        #expect(md.contains("**Result: PASS** (exit status 0)"))
        #expect(md.contains("### timeout-race under overload load (3 runs)"))
        #expect(md.contains("| duration (from fault onset) | median | p95 | max | runs |"))
        // detect: 1000, 1100, 1900 → median 1100, p95 1900, max 1900.
        #expect(md.contains("| detect_ms | 1100 | 1900 | 1900 | 3 |"))
        #expect(md.contains("| kill_ms | 1130 | 1930 | 1930 | 3 |"))
        #expect(md.contains("| core ok (gdb thread count = incident's) | 3 / 3 |"))
        #expect(md.contains("| diagnosis ok | 3 / 3 (corrupted-lock-word ×3) |"))
        #expect(md.contains("| lock word ok | 3 / 3 (0xfffffffffffffffe) |"))
        #expect(md.contains("| deadline extended (starved) | 1 runs, up to 500 ms |"))
        #expect(md.contains("| false kills | 0 runs, 0 incidents |"))
        #expect(md.contains("[timeline-timeout-race.svg](timeline-timeout-race.svg)"))
        #expect(md.contains("2 CPUs, 24000 MiB, Linux 6.18.44"))
        #expect(md.contains("deadline 1000 ms (default 1000 ms)"))
        #expect(md.contains("- **PASS** — overload control: 1 run(s), 600 s under stress-ng with steady load, 0 kill(s) at deadline 1000 ms (the default)"))
        #expect(md.contains("- **PASS** — deadlock under overload: 3 run(s) (timeout-race), slowest detection 1900 ms (silence 1001 ms, extended 500 ms); bound: deadline 1000 + max extension 2000 = 3000 ms"))
        #expect(!md.contains("## Failed checks"))
        #expect(md.contains("| 1 | timeout-race | overload | 1 | yes | 1000 | 1201 | 300 / 2 / 1 | yes | yes | corrupted-lock-word | #1 |"))
        #expect(md.contains("| 4 | control | overload | 1 | yes | – | – | 400 / 2 / 1 | n/a | n/a | – | – |"))
    }

    @Test func failuresMakeTheResultFailAndAreListed() {
        var results = Self.runs()
        var noisy = RunObservation(scenario: .control, load: .overload, run: 2, onsetUnixMs: nil, windowStartUnixMs: 0, windowEndUnixMs: 1)
        noisy.incidents = [IncidentFacts(id: 9, diagnosis: "slow-holder: x", detectedUnixMs: 0.5, readyUnixMs: 0.9)]
        results.append(RunEvaluator.evaluate(noisy))
        let md = ChaosReport.markdown(results, settings: Self.settings, machine: Self.machine, soak: nil, generatedAt: Date())
        #expect(md.contains("**Result: FAIL** (exit status 1"))
        #expect(md.contains("- **FAIL** — overload control: 2 run(s), 1200 s under stress-ng with steady load, 1 kill(s)"))
        #expect(md.contains("## Failed checks"))
        #expect(md.contains("- control overload run 2: false kill: incident #9 (missed-heartbeat, slow-holder) in a control run"))
        let verdicts = ChaosReport.verdicts(results, settings: Self.settings, soak: nil)
        #expect(!ChaosReport.passed(results, verdicts: verdicts))
        #expect(ChaosReport.failures(results, verdicts: verdicts).count == 2)
    }

    @Test func aLateDeadlockDetectionFailsTheOverloadVerdict() {
        var o = Canned.raceObservation(load: .overload)
        var i = Canned.raceIncident()
        i.detectedUnixMs = Canned.onset + 3400   // bound 3000 + tolerance 350
        i.readyUnixMs = i.detectedUnixMs + 100
        o.incidents = [i]
        let v = Verdicts.overloadDeadlock([RunEvaluator.evaluate(o)], settings: Self.settings)
        #expect(v?.passed == false)
        #expect(v?.text.contains("too late: timeout-race run 1: 3400 ms") == true)
        #expect(Verdicts.overloadDeadlock([RunEvaluator.evaluate(Canned.raceObservation())], settings: Self.settings) == nil,
                "no verdict without overload runs")
    }

    @Test func soakVerdictStatesEveryCount() {
        let good = SoakSummary(requested: 1000, injected: 1000, incidents: 1000, recoveries: 1000, orphans: [], defibPid: 4242,
                               supervisorRestarts: 0, defibExit: "stopped by the harness: exited with code 0")
        #expect(good.verdict.passed)
        #expect(good.verdict.text.hasPrefix("soak: 1000 faults → 1000 incidents, 1000 recoveries, 0 orphaned processes, 0 supervisor restarts (one defib, pid 4242"))
        var bad = good
        bad.incidents = 1001
        bad.orphans = ["5150 defib-proxy"]
        #expect(!bad.verdict.passed)
        #expect(bad.verdict.text.contains("1001 incidents for 1000 faults"))
        #expect(bad.verdict.text.contains("1 orphaned process(es): 5150 defib-proxy"))
        let summary = ChaosReport.summaryJSON([], settings: Self.settings, machine: Self.machine, soak: bad, generatedAt: Date())
        let obj = (try? JSONSerialization.jsonObject(with: Data(summary.utf8))) as? [String: Any]
        #expect(obj?["passed"] as? Bool == false)
        #expect((obj?["soak"] as? [String: Any])?["incidents"] as? Int == 1001)
    }
}
