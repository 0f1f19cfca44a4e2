import DefibCore
import Testing

/// What runtime evidence gives the incident before the kill (`RuntimeFindings`) and how delve's output is
/// read after it (`GoroutinesReport`): pure, from the observation and the tools' answers.
struct RuntimeFindingsTests {
    static let edge = WaitForEdge(waiterTid: 12, waiterName: "worker-a", mutex: "0x5000", ownerTid: 13, ownerName: "worker-b", kind: "normal")

    @Test func theForcedRuntimeWinsAndOnlyARuntimeOrAForcedSettingIsNoted() {
        let detected = DetectedRuntime(runtime: .python, reason: "libpython3.11.so is mapped")
        #expect(DetectedRuntime.chosen(.auto, detected: detected) == detected)
        #expect(DetectedRuntime.chosen(.auto, detected: nil).runtime == .native)
        let forced = DetectedRuntime.chosen(.native, detected: detected)
        #expect(forced.runtime == .native && forced.forced && forced.reason == "forced by capture.runtime")

        var observation = Observation(pid: 10)
        observation.waitFor = WaitForReading(edges: [Self.edge], notes: ["wait-for graph: 1 edge(s) changed within 5 ms and were left out"])
        let native = RuntimeFindings(observation: observation, runtime: DetectedRuntime(runtime: .native, reason: "no Go build info, libpython or libjvm"), stacks: nil)
        #expect(native.waitFor == [Self.edge] && native.evidence == RuntimeEvidence(runtime: .native) && native.diagnosis == nil)
        #expect(native.notes == ["wait-for graph: 1 edge(s) changed within 5 ms and were left out"])
        #expect(RuntimeFindings(observation: Observation(pid: 10), runtime: forced, stacks: nil).notes == ["runtime: native (forced by capture.runtime)"])

        let missing = RuntimeStacksOutcome(evidence: RuntimeEvidence(runtime: .python, error: "py-spy: not found; install py-spy from PyPI"))
        let python = RuntimeFindings(observation: Observation(pid: 10), runtime: detected, stacks: missing)
        #expect(python.evidence == missing.evidence && python.waitFor.isEmpty)
        #expect(python.notes == ["runtime: python (libpython3.11.so is mapped)", "runtime stacks: py-spy: not found; install py-spy from PyPI"])
    }

    @Test func delvesOutputIsReadOrItsFailureNamed() {
        let text = "G\t1\t4\nF\tmain.main\t/src/app/main.go\t10\nG\t2\t4\nF\tmain.main\t/src/app/main.go\t10\n"
        let ok = GoroutinesReport.read(text, ended: nil, timedOut: false, elapsedMs: 512.4, timeLimitSeconds: 60)
        #expect(ok.evidence.tool == "dlv core, 512 ms after the restart" && ok.evidence.total == 2 && ok.evidence.groups.count == 1)
        #expect(ok.evidence.error == nil && ok.diagnosis == nil, "no RWMutex in the dump: no diagnosis")
        let partial = GoroutinesReport.read(text, ended: "exited with code 1", timedOut: false, elapsedMs: 1, timeLimitSeconds: 60)
        #expect(partial.evidence.total == 2 && partial.evidence.error == "dlv ended exited with code 1 (output kept)")
        let killed = GoroutinesReport.read("", ended: "exited with code 137", timedOut: true, elapsedMs: 60_000, timeLimitSeconds: 60)
        #expect(killed.evidence.error == "dlv did not finish within 60 s" && killed.evidence.groups.isEmpty)
        let broken = GoroutinesReport.read("could not open core: bad ELF\n", ended: "exited with code 1", timedOut: false, elapsedMs: 3, timeLimitSeconds: 60)
        #expect(broken.evidence.error == "dlv output: no goroutines in the output (dlv said: could not open core: bad ELF)")
    }
}
