import DefibCore
import Testing

@Suite struct ProcParseTests {
    @Test func statWithSpacesAndParenthesesInTheName() throws {
        let line = "4123 (NIO-ELT-0 (x) #1) S 1 4123 4123 0 -1 4194560 500 0 0 0 37 12 0 0 20 0 9 0 1234 0 0"
        let s = try #require(ProcParse.stat(line))
        #expect(s.name == "NIO-ELT-0 (x) #1")
        #expect(s.state == "S")
        #expect(s.cpuTicks == 49)
    }

    @Test func statRejectsGarbage() {
        #expect(ProcParse.stat("") == nil)
        #expect(ProcParse.stat("12 (x) S 1 2") == nil)
    }

    @Test func schedstatSyscallPressureAndCgroup() throws {
        let sched = try #require(ProcParse.schedstat("2754441 1200 7\n"))
        #expect(sched.onCpuNs == 2_754_441 && sched.runDelayNs == 1200)
        let call = try #require(ProcParse.syscall("202 0x7f4dcc0a0000 0x80 0x0 0x0 0x0 0x0 0x7ffed4f8f728 0x7f4dcc21c2ad\n"))
        #expect(call.number == 202 && call.arg0 == "0x7f4dcc0a0000")
        #expect(ProcParse.syscall("running\n") == nil)
        #expect(ProcParse.syscall("-1 0x7ffd 0x4011\n") == nil)
        let p = try #require(ProcParse.pressure("some avg10=36.63 avg60=15.37 avg300=6.78 total=34714117\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"))
        #expect(p.someAvg10 == 36.63 && p.someTotalUs == 34_714_117 && p.fullAvg10 == 0)
        #expect(ProcParse.cgroupCPUStat("nr_periods 10\nnr_throttled 3\nthrottled_usec 5000\n")! == (3, 5000))
        #expect(ProcParse.cgroupCPUStat("nr_periods 10\nnr_throttled 3\nthrottled_time 7000000\n")! == (3, 7000))
        #expect(ProcParse.cpuCgroup("9:name=systemd:/\n2:cpuacct:/\n1:cpu:/a/b\n0::/\n")! == (1, "/a/b"))
        #expect(ProcParse.cpuCgroup("0::/system.slice/x.service\n")! == (2, "/system.slice/x.service"))
        #expect(ProcParse.cpuQuota(v2: "max 100000\n") == nil)
        #expect(ProcParse.cpuQuota(v2: "20000 700000\n") == CPUQuota(quotaUs: 20_000, periodUs: 700_000))
        #expect(ProcParse.cpuQuota(v1Quota: "-1\n", period: "100000\n") == nil)
        #expect(ProcParse.cpuQuota(v1Quota: "1500\n", period: "100000\n")?.text == "1.5 ms of CPU per 100 ms")
    }
}

@Suite struct ProgressJudgeTests {
    static func sample(at ms: Int64, _ threads: [ThreadSample], cpuPressure: Double = 0, throttled: UInt64? = nil) -> ProcessSample {
        ProcessSample(pid: 1, atNs: ms * 1_000_000, threads: threads,
                      cpuPressure: PressureSample(someAvg10: cpuPressure, someTotalUs: 0), throttledPeriods: throttled)
    }
    static func thread(_ tid: Int32, _ state: String, cpuMs: UInt64, delayMs: UInt64 = 0, syscall: Int? = nil) -> ThreadSample {
        ThreadSample(tid: tid, name: "t\(tid)", state: state, cpuTicks: 0, onCpuNs: cpuMs * 1_000_000,
                     runDelayNs: delayMs * 1_000_000, syscall: syscall)
    }

    @Test func allAsleepInFutexWithNoCPUIsStuck() {
        let before = Self.sample(at: 0, (1...8).map { Self.thread($0, "S", cpuMs: 100, syscall: Syscalls.futex) })
        let after = Self.sample(at: 500, (1...8).map { Self.thread($0, "S", cpuMs: 100, syscall: Syscalls.futex) }, cpuPressure: 90)
        let v = ProgressJudge.judge(before: before, after: after)
        #expect(v.kind == "stuck", "\(v)")
        #expect(v.reason.contains("8 S (8 in futex)"))
    }

    @Test func runnableThreadsWaitingForACPUAreStarvedNotStuck() {
        let before = Self.sample(at: 0, [Self.thread(1, "R", cpuMs: 100, delayMs: 0), Self.thread(2, "S", cpuMs: 5)])
        let after = Self.sample(at: 1000, [Self.thread(1, "R", cpuMs: 150, delayMs: 600), Self.thread(2, "S", cpuMs: 5)])
        let v = ProgressJudge.judge(before: before, after: after)
        #expect(v.kind == "starved", "\(v)")
        #expect(v.reason.contains("run-queue wait +600 ms"))
    }

    @Test func highCPUPressureWithARunnableThreadIsStarved() {
        let before = Self.sample(at: 0, [Self.thread(1, "R", cpuMs: 100)])
        let after = Self.sample(at: 1000, [Self.thread(1, "R", cpuMs: 110)], cpuPressure: 75)
        #expect(ProgressJudge.judge(before: before, after: after).kind == "starved")
    }

    @Test func cgroupThrottlingIsStarvationOfAProcessThatWantsACPU() {
        // A worker that ran a little and is runnable again: throttled, not stuck.
        let before = Self.sample(at: 0, [Self.thread(1, "R", cpuMs: 100), Self.thread(2, "S", cpuMs: 1)], throttled: 4)
        let after = Self.sample(at: 1000, [Self.thread(1, "S", cpuMs: 130), Self.thread(2, "S", cpuMs: 1)], throttled: 9)
        let v = ProgressJudge.judge(before: before, after: after)
        #expect(v.kind == "starved" && v.reason.contains("throttled 5 period"), "\(v)")
    }

    @Test func aDeadlockInAThrottledCgroupIsStuckNotStarved() {
        // The cgroup's other processes (or the supervisor itself) are throttled; this one sleeps on a lock.
        let before = Self.sample(at: 0, (1...4).map { Self.thread($0, "S", cpuMs: 100, syscall: Syscalls.futex) }, throttled: 4)
        let after = Self.sample(at: 1000, (1...4).map { Self.thread($0, "S", cpuMs: 100, syscall: Syscalls.futex) }, cpuPressure: 95, throttled: 40)
        let v = ProgressJudge.judge(before: before, after: after)
        #expect(v.kind == "stuck", "\(v)")
    }

    /// "When stuck, never extend": every thread asleep in both samples, no CPU and no run-queue wait, is
    /// stuck whatever the machine-wide signals say (CPU and I/O pressure, throttling, CPU count).
    @Test func everyThreadAsleepWithNoCPUIsStuckWhateverTheOtherSignals() {
        for threads in [1, 3, 16] {
            for pressure in [0.0, 39.9, 40, 99] {
                for io in [0.0, 80] {
                    for throttled: (UInt64?, UInt64?) in [(nil, nil), (3, 3), (3, 50)] {
                        for cpus in [1, 2, 64] {
                            for futex in [true, false] {
                                let sys = futex ? Syscalls.futex : nil
                                var before = Self.sample(at: 0, (1...Int32(threads)).map { Self.thread($0, "S", cpuMs: 7, delayMs: 2, syscall: sys) },
                                                         cpuPressure: pressure, throttled: throttled.0)
                                var after = Self.sample(at: 800, (1...Int32(threads)).map { Self.thread($0, "S", cpuMs: 7, delayMs: 2, syscall: sys) },
                                                        cpuPressure: pressure, throttled: throttled.1)
                                before.ioPressure = PressureSample(someAvg10: io, someTotalUs: 0)
                                after.ioPressure = PressureSample(someAvg10: io, someTotalUs: 0)
                                before.cpuCount = cpus; after.cpuCount = cpus
                                let v = ProgressJudge.judge(before: before, after: after)
                                #expect(v.kind == "stuck", "threads \(threads) cpu pressure \(pressure) io \(io) throttled \(throttled) cpus \(cpus): \(v)")
                            }
                        }
                    }
                }
            }
        }
    }

    @Test func spinningWithoutWaitingIsBusy() {
        let before = Self.sample(at: 0, [Self.thread(1, "R", cpuMs: 100), Self.thread(2, "R", cpuMs: 100)])
        let after = Self.sample(at: 1000, [Self.thread(1, "R", cpuMs: 1090), Self.thread(2, "R", cpuMs: 1080)])
        #expect(ProgressJudge.judge(before: before, after: after).kind == "busy")
    }

    @Test func aProcessSpinningOnEveryCPUIsBusyNotStarvedThoughItQueuesForACPU() {
        func spin(_ ms: Int64, cpu: UInt64, delay: UInt64) -> ProcessSample {
            var s = Self.sample(at: ms, [Self.thread(1, "R", cpuMs: cpu, delayMs: delay), Self.thread(2, "R", cpuMs: cpu, delayMs: delay),
                                         Self.thread(3, "R", cpuMs: 5, delayMs: delay)], cpuPressure: 90)
            s.cpuCount = 2
            return s
        }
        let v = ProgressJudge.judge(before: spin(0, cpu: 100, delay: 0), after: spin(1000, cpu: 1000, delay: 300))
        #expect(v.kind == "busy", "\(v)")
        #expect(v.reason.contains("keeps 1.8 of 2 CPUs busy"))
        // The same run-queue wait with the process getting a third of the machine: starved.
        let w = ProgressJudge.judge(before: spin(0, cpu: 100, delay: 0), after: spin(1000, cpu: 430, delay: 300))
        #expect(w.kind == "starved", "\(w)")
    }

    @Test func runnableThreadsThatGetNoCPUAreStarved() {
        // A cgroup quota: the threads are runnable (R) but the CPU time does not move.
        let before = Self.sample(at: 0, [Self.thread(1, "R", cpuMs: 100), Self.thread(2, "S", cpuMs: 3, syscall: Syscalls.futex)])
        let after = Self.sample(at: 500, [Self.thread(1, "R", cpuMs: 101), Self.thread(2, "S", cpuMs: 3, syscall: Syscalls.futex)])
        let v = ProgressJudge.judge(before: before, after: after)
        #expect(v.kind == "starved", "\(v)")
        #expect(v.reason.contains("1 runnable thread(s) got next to no CPU in 500 ms"))
        // Runnable in only one of the samples says nothing.
        let woke = Self.sample(at: 500, [Self.thread(1, "S", cpuMs: 100, syscall: Syscalls.futex), Self.thread(2, "R", cpuMs: 3)])
        let asleep = Self.sample(at: 0, [Self.thread(1, "S", cpuMs: 100, syscall: Syscalls.futex), Self.thread(2, "S", cpuMs: 3, syscall: Syscalls.futex)])
        #expect(ProgressJudge.judge(before: asleep, after: woke).kind != "starved")
        // In a group with a CPU quota the reason names it: the throttling began before the window, so
        // the throttled-period count did not move inside it.
        var limited = after
        limited.cpuQuota = CPUQuota(quotaUs: 20_000, periodUs: 700_000)
        let q = ProgressJudge.judge(before: before, after: limited)
        #expect(q.kind == "starved" && q.reason.contains("the cgroup's CPU quota is 20 ms of CPU per 700 ms"), "\(q)")
    }

    @Test func stoppedAndGone() {
        let before = Self.sample(at: 0, [Self.thread(1, "T", cpuMs: 1)])
        #expect(ProgressJudge.judge(before: before, after: Self.sample(at: 100, [Self.thread(1, "T", cpuMs: 1)])).kind == "stopped")
        #expect(ProgressJudge.judge(before: before, after: Self.sample(at: 100, [])) == .gone)
    }
}
