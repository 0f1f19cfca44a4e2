import DefibCore
import Testing

/// Judging every process of a multi-process instance and ordering the stuck ones for capture, from samples.
@Suite struct ServiceProgressJudgeTests {
    static let epollWait = 232, futex = Syscalls.futex, rtSigsuspend = 130

    func thread(_ tid: Int32, _ name: String, _ state: String, cpuMs: UInt64, syscall: Int? = nil) -> ThreadSample {
        ThreadSample(tid: tid, name: name, state: state, cpuTicks: 0, onCpuNs: cpuMs * 1_000_000, runDelayNs: 0, syscall: syscall)
    }

    func sample(_ pid: Int32, at ms: Int64, _ threads: [ThreadSample]) -> ProcessSample {
        ProcessSample(pid: pid, atNs: ms * 1_000_000, threads: threads, cpuCount: 2)
    }

    /// nginx: a master in rt_sigsuspend; workers given as (pid, state, cpu ms before, after, syscall).
    func nginx(_ workers: [(Int32, String, UInt64, UInt64, Int?)]) -> (before: [ProcessSample], after: [ProcessSample]) {
        var before = [sample(100, at: 0, [thread(100, "nginx", "S", cpuMs: 5, syscall: Self.rtSigsuspend)])]
        var after = [sample(100, at: 200, [thread(100, "nginx", "S", cpuMs: 5, syscall: Self.rtSigsuspend)])]
        for (pid, state, a, b, call) in workers {
            before.append(sample(pid, at: 0, [thread(pid, "nginx", state == "T" ? "T" : (state == "R" ? "R" : "S"), cpuMs: a, syscall: call)]))
            after.append(sample(pid, at: 200, [thread(pid, "nginx", state, cpuMs: b, syscall: call)]))
        }
        return (before, after)
    }

    @Test func idleWorkersAreNotStuckButStoppedAndSpinningOnesAre() {
        let s = nginx([(101, "S", 10, 10, Self.epollWait), (102, "T", 10, 10, nil), (103, "R", 10, 190, nil), (104, "S", 3, 3, Self.futex)])
        let j = ServiceProgressJudge.judge(before: s.before, after: s.after, mainPID: 100)
        #expect(j.map(\.pid) == [100, 101, 102, 103, 104])
        #expect(j.map(\.condition) == [.idle, .idle, .stopped, .busy, .stuck])
        #expect(j[0].isMain && !j[1].isMain)
        #expect(j[1].reason == "no CPU progress and every thread waits for events (epoll_wait): idle, not stuck")
        #expect(j[2].state == "T" && j[3].state == "R")
        #expect(j[3].cpuNs == 180_000_000)
        #expect(ServiceProgressJudge.summary(j) == "5 processes: main 100 nginx idle; 101 nginx idle; 102 nginx stopped; 103 nginx busy; 104 nginx stuck")
    }

    @Test func captureOrderIsMainFirstThenMostStuck() {
        let s = nginx([(101, "S", 10, 10, Self.epollWait), (102, "T", 10, 10, nil), (103, "R", 10, 190, nil), (104, "S", 3, 3, Self.futex),
                       (105, "R", 10, 110, nil), (106, "T", 1, 1, nil)])
        let j = ServiceProgressJudge.judge(before: s.before, after: s.after, mainPID: 100)
        // Deadlocked first, then stopped (by pid), then busy (most CPU first); the idle worker never.
        #expect(ServiceProgressJudge.captureOrder(j).map(\.pid) == [100, 104, 102, 106, 103, 105])
        #expect(ServiceProgressJudge.captureOrder(j, maxCores: 3).map(\.pid) == [100, 104, 102])
        #expect(ServiceProgressJudge.captureOrder(j, maxCores: 0).isEmpty)
    }

    /// A stall's evidence is taken of the process that stalled: a stuck, stopped or busy worker behind an idle
    /// master, the master itself when it is the stuck one, the master when every worker is idle too.
    @Test func aStallIsCapturedInTheWorkerThatStalledBehindAnIdleMaster() {
        func target(_ workers: [(Int32, String, UInt64, UInt64, Int?)]) -> Int32? {
            let s = nginx(workers)
            return ServiceProgressJudge.stallTarget(ServiceProgressJudge.judge(before: s.before, after: s.after, mainPID: 100))?.pid
        }
        #expect(target([(101, "S", 10, 10, Self.epollWait), (102, "T", 10, 10, nil)]) == 102, "the stopped worker")
        #expect(target([(101, "T", 10, 10, nil), (102, "S", 3, 3, Self.futex)]) == 102, "the deadlocked one before the stopped one")
        #expect(target([(101, "S", 10, 10, Self.epollWait), (102, "S", 10, 10, Self.epollWait)]) == 100, "all idle: the main process")
        #expect(ServiceProgressJudge.stallTarget([]) == nil)
        let stuckMain = ProcessJudgement(pid: 100, comm: "nginx", state: "S", isMain: true, condition: .stuck, reason: "")
        let stoppedWorker = ProcessJudgement(pid: 101, comm: "nginx", state: "T", isMain: false, condition: .stopped, reason: "")
        #expect(ServiceProgressJudge.stallTarget([stuckMain, stoppedWorker])?.pid == 100, "a stuck master is the stall's own process")
    }

    /// The instance's verdict: the main process's own problem first, else the workers', most decisive first.
    @Test func theVerdictOnTheInstanceLetsWorkersDecideBehindAnIdleMaster() {
        let idleMain = ProgressVerdict.stuck("no CPU progress and every thread asleep")
        func verdict(_ workers: [(Int32, String, UInt64, UInt64, Int?)], main: ProgressVerdict = idleMain) -> ProgressVerdict {
            let s = nginx(workers)
            return ServiceProgressJudge.instanceVerdict(main: main, ServiceProgressJudge.judge(before: s.before, after: s.after, mainPID: 100))
        }
        let stopped = verdict([(101, "S", 10, 10, Self.epollWait), (102, "T", 10, 10, nil), (103, "R", 10, 190, nil)])
        #expect(stopped.kind == "stopped" && stopped.reason.hasPrefix("process 102 (nginx) of the instance stopped: "))
        #expect(stopped.reason.hasSuffix("; main 100 (nginx) idle"))
        #expect(verdict([(101, "S", 3, 3, Self.futex), (103, "R", 10, 190, nil)]).kind == "stuck")
        #expect(verdict([(101, "S", 10, 10, Self.epollWait), (103, "R", 10, 190, nil)]).kind == "busy")
        // Only idle workers: the main verdict stands (the silence is the master's own).
        #expect(verdict([(101, "S", 10, 10, Self.epollWait)]) == idleMain)
        // A main process that is itself stopped or busy decides, whatever its workers do.
        #expect(verdict([(102, "T", 10, 10, nil)], main: .busy("spinning")) == .busy("spinning"))
        // One process: its own verdict.
        #expect(ServiceProgressJudge.instanceVerdict(main: idleMain, []) == idleMain)
    }

    @Test func processesThatComeOrGoBetweenSamples() {
        let before = [sample(100, at: 0, [thread(100, "gunicorn", "S", cpuMs: 1, syscall: Self.futex)]),
                      sample(101, at: 0, [thread(101, "gunicorn", "S", cpuMs: 1, syscall: Self.futex)])]
        let after = [sample(100, at: 200, [thread(100, "gunicorn", "S", cpuMs: 1, syscall: Self.futex)]),
                     sample(102, at: 200, [thread(102, "gunicorn", "R", cpuMs: 0)]),
                     sample(103, at: 200, [])]
        let j = ServiceProgressJudge.judge(before: before, after: after, mainPID: 100)
        #expect(j.map(\.pid) == [100, 101, 102, 103])
        #expect(j.map(\.condition) == [.stuck, .gone, .unclear, .gone])
        #expect(j[2].reason == "appeared between the samples")
    }

    @Test func recordsCarryTheCoresWritten() {
        let s = nginx([(101, "T", 10, 10, nil)])
        let j = ServiceProgressJudge.judge(before: s.before, after: s.after, mainPID: 100)
        let r = ServiceProgressJudge.records(j, corePaths: [101: "/c/core.nginx.1.101"])
        #expect(r.map(\.corePath) == [nil, "/c/core.nginx.1.101"])
        #expect(r[1] == ServiceProcessRecord(pid: 101, comm: "nginx", state: "T", corePath: "/c/core.nginx.1.101", diagnosis: "stopped",
                                             evidence: j[1].reason, main: false))
        var incident = Incident(service: "nginx", pid: 100, detectedAt: .init(timeIntervalSince1970: 0), cause: .triggered(reason: "x"))
        #expect(IncidentJSON.object(incident)["processes"] == .array([]))
        incident.processes = r
        let json = IncidentJSON.object(incident)["processes"]
        guard case let .array(items)? = json else { Issue.record("no processes array"); return }
        #expect(items.count == 2)
        #expect(items[1]["core_path"] == .string("/c/core.nginx.1.101") && items[1]["diagnosis"] == .string("stopped"))
        #expect(items[0]["main"] == .bool(true) && items[0]["core_path"] == .null)
    }
}
