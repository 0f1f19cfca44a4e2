import DefibCore
import Testing

/// A dead loop on a machine loaded far beyond its cores (load 10+ on 2): the loop gets only its fair share
/// of a CPU, so it looks "starved" — but a process that got hundreds of milliseconds of CPU during the
/// silence, from threads that never slept, was not silent for want of CPU. The samples below are the ones
/// of the failure seen in DiagnosisTests/ChaosQuickTests: "run-queue wait +4745.9 ms in 2750.5 ms; CPU
/// pressure some avg10=99.4%; CPU +747.5 ms in 2750.5 ms; threads: 3 S (2 in futex), 2 R".
@Suite struct StarvedDeadLoopTests {
    static let hang = IncidentCause.missedHeartbeat(misses: 11, lastPongAt: nil, lastError: "no reply within 250 ms")

    /// Five threads: two spinning event loops (R), the main thread and a reload thread in futex waits, an
    /// idle one in epoll. `spinCpuMs`/`spinDelayMs` are each spinner's CPU and run-queue wait in the window.
    static func samples(wallMs: Double, spinCpuMs: Double, spinDelayMs: Double, spinnersEndRunnable: Bool = true,
                        pressure: Double = 99.4) -> (ProcessSample, ProcessSample) {
        func sample(atNs: Int64, cpu: Double, delay: Double, spinState: String) -> ProcessSample {
            ProcessSample(pid: 42, atNs: atNs, threads: [
                ThreadSample(tid: 42, name: "defib-proxy", state: "S", cpuTicks: 0, onCpuNs: 40_000_000, runDelayNs: 1_000_000, syscall: Syscalls.futex),
                ThreadSample(tid: 43, name: "NIO-ELT-0-#0", state: spinState, cpuTicks: 0, onCpuNs: UInt64(cpu * 1e6), runDelayNs: UInt64(delay * 1e6)),
                ThreadSample(tid: 44, name: "NIO-ELT-0-#1", state: spinState, cpuTicks: 0, onCpuNs: UInt64(cpu * 1e6), runDelayNs: UInt64(delay * 1e6)),
                ThreadSample(tid: 45, name: "catalog-reload", state: "S", cpuTicks: 0, onCpuNs: 2_000_000, runDelayNs: 0, syscall: Syscalls.futex),
                ThreadSample(tid: 46, name: "updates", state: "S", cpuTicks: 0, onCpuNs: 1_000_000, runDelayNs: 0, syscall: 232),
            ], cpuPressure: PressureSample(someAvg10: pressure, someTotalUs: 0), ticksPerSecond: 100, cpuCount: 2)
        }
        let start: Int64 = 5_000_000_000
        return (sample(atNs: start, cpu: 500, delay: 100, spinState: "R"),
                sample(atNs: start + Int64(wallMs * 1e6), cpu: 500 + spinCpuMs, delay: 100 + spinDelayMs,
                       spinState: spinnersEndRunnable ? "R" : "S"))
    }

    static func diagnose(_ before: ProcessSample, _ after: ProcessSample, _ verdict: ProgressVerdict) -> HangDiagnosis {
        var input = DiagnosisInput(cause: hang, locks: [], progress: verdict, sample: after, nowUnixMs: 1_800_000_000_000)
        input.baseline = before
        return Diagnoser.diagnose(input)
    }

    @Test func theSeenFailureIsADeadLoopAndTheKillDecisionIsUnchanged() {
        // 2 × 373.75 ms = 747.5 ms of CPU, 2 × 2372.95 ms = 4745.9 ms queued, in 2750.5 ms.
        let (before, after) = Self.samples(wallMs: 2750.5, spinCpuMs: 373.75, spinDelayMs: 2372.95)
        let verdict = ProgressJudge.judge(before: before, after: after)
        // The judge still calls it starved: the machine extends the deadline exactly as before (a healthy
        // process that is starved must never be killed sooner than today).
        #expect(verdict.kind == "starved", "\(verdict)")
        #expect(verdict.reason.contains("run-queue wait +4745.9 ms in 2750.5 ms"), "\(verdict.reason)")
        #expect(verdict.reason.contains("CPU +747.5 ms in 2750.5 ms"), "\(verdict.reason)")
        #expect(ProgressJudge.alwaysRunnable(before: before, after: after).map(\.tid) == [43, 44])
        let d = Self.diagnose(before, after, verdict)
        #expect(d.kind == .deadLoop, "\(d.line)")
        #expect(d.sentence.hasPrefix("2 thread(s) never slept in 2750.5 ms of silence (always running or queued for a CPU) and the process got 747.5 ms of CPU without answering"), "\(d.sentence)")
        #expect(d.evidence.first == "threads that never slept: NIO-ELT-0-#0, NIO-ELT-0-#1")
    }

    @Test func aStarvedProcessWhoseThreadsSleepIsNotADeadLoop() {
        // The same contention, the same CPU, but the threads block between pieces of work (runnable only
        // part of the window): a slow, starved service, not a spinning one.
        let (before, after) = Self.samples(wallMs: 2750.5, spinCpuMs: 373.75, spinDelayMs: 900)
        let verdict = ProgressJudge.judge(before: before, after: after)
        #expect(verdict.kind == "starved")
        #expect(ProgressJudge.alwaysRunnable(before: before, after: after).isEmpty)
        #expect(Self.diagnose(before, after, verdict).kind == .unknown)
    }

    @Test func threadsThatNeverSleptButGotNextToNoCPUAreNotADeadLoop() {
        // Queued the whole window and scheduled only 20 ms each: the process did not get the CPU it needed
        // to answer (real starvation), so the silence may well be for want of CPU.
        let (before, after) = Self.samples(wallMs: 2750.5, spinCpuMs: 20, spinDelayMs: 2700)
        let verdict = ProgressJudge.judge(before: before, after: after)
        #expect(verdict.kind == "starved")
        #expect(ProgressJudge.alwaysRunnable(before: before, after: after).count == 2)
        #expect(Self.diagnose(before, after, verdict).kind == .unknown, "40 ms of CPU is below the minimum")
    }

    @Test func threadsThatWentToSleepAtTheEndAreNotSpinning() {
        let (before, after) = Self.samples(wallMs: 2750.5, spinCpuMs: 373.75, spinDelayMs: 2372.95, spinnersEndRunnable: false)
        #expect(ProgressJudge.alwaysRunnable(before: before, after: after).isEmpty)
    }

    @Test func withoutSchedstatNothingIsCalledSpinning() {
        var (before, after) = Self.samples(wallMs: 2750.5, spinCpuMs: 373.75, spinDelayMs: 2372.95)
        before.threads = before.threads.map { var t = $0; t.runDelayNs = nil; return t }
        after.threads = after.threads.map { var t = $0; t.runDelayNs = nil; return t }
        #expect(ProgressJudge.alwaysRunnable(before: before, after: after).isEmpty)
    }
}
