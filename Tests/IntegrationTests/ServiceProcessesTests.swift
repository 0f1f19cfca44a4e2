import DefibCore
import DefibPOSIX
import Foundation
import Glibc
import Testing

/// Every process of a multi-process service, listed (tree and cgroup), sampled and judged: real nginx with its
/// master and two workers, every worker stopped, and one worker spinning.
@Suite(.timeLimit(.minutes(3)))
struct ServiceProcessesTests {
    /// Samples 500 ms apart. Starvation is switched off and the busy bar set low so the spinning worker reads as
    /// busy however loaded the shared machine is (a spinner that gets little CPU would otherwise be "starved",
    /// which is right for the judge and useless for this test).
    static let thresholds: ProgressThresholds = {
        var t = ProgressThresholds()
        t.runDelayShare = 1000; t.cpuPressureAvg10 = 1000; t.busyCPUShare = 0.05
        return t
    }()

    @Test func theInstanceIsTheMasterAndItsWorkers() throws {
        let nginx = try NginxProgram()
        defer { nginx.stop() }
        let master = try nginx.start()
        let workers = nginx.workers()
        #expect(workers.count == 2)
        #expect(ServiceProcesses.list(mainPID: master.pid) == [master.pid] + workers.sorted())
        let judged = ServiceProcesses.judge(mainPID: master.pid, apartMs: 500, thresholds: Self.thresholds)
        #expect(judged.map(\.comm) == ["nginx", "nginx", "nginx"])
        // Healthy and idle: the master in rt_sigsuspend, the workers in epoll_wait — idle, not stuck.
        #expect(judged.map(\.condition) == [.idle, .idle, .idle], "\(judged.map(\.reason))")
        #expect(ServiceProgressJudge.captureOrder(judged).map(\.pid) == [master.pid])
    }

    @Test func everyWorkerStoppedIsListedForCaptureAfterTheMaster() throws {
        let nginx = try NginxProgram()
        defer { nginx.stop() }
        let master = try nginx.start()
        let workers = nginx.workers().sorted()
        for w in workers { #expect(killProcess(w, signal: SIGSTOP)) }
        #expect(waitUntil(timeoutMs: 10_000) { workers.allSatisfy { readTextFile("/proc/\($0)/stat").flatMap(ProcParse.stat)?.state == "T" } })
        let judged = ServiceProcesses.judge(mainPID: master.pid, apartMs: 500, thresholds: Self.thresholds)
        #expect(judged.map(\.pid) == [master.pid] + workers)
        #expect(judged.map(\.condition) == [.idle, .stopped, .stopped], "\(judged.map(\.reason))")
        #expect(judged.dropFirst().allSatisfy { $0.state == "T" })
        #expect(ServiceProgressJudge.captureOrder(judged).map(\.pid) == [master.pid] + workers)
        let records = ServiceProgressJudge.records(judged, corePaths: [workers[0]: "/cores/core.nginx.1.\(workers[0])"])
        #expect(records.map(\.diagnosis) == ["idle", "stopped", "stopped"] && records[1].corePath != nil && records[0].main)
        for w in workers { killProcess(w, signal: SIGCONT) }
    }

    @Test func oneSpinningWorkerIsTheOneToCapture() throws {
        let nginx = try NginxProgram()
        defer { nginx.stop() }
        let master = try nginx.start()
        let workers = nginx.workers().sorted()
        try nginx.spin(worker: workers[1])
        let judged = ServiceProcesses.judge(mainPID: master.pid, apartMs: 1000, thresholds: Self.thresholds)
        #expect(judged.map(\.condition) == [.idle, .idle, .busy], "\(judged.map(\.reason))")
        #expect(judged[2].cpuNs > 0 && judged[2].pid == workers[1])
        #expect(ServiceProgressJudge.captureOrder(judged).map(\.pid) == [master.pid, workers[1]])
    }

    /// A process outside the tree but in the instance's cgroup (a daemon that double-forked away) is listed too.
    @Test func theInstancesCgroupAddsProcessesOutsideTheTree() throws {
        let root = "/sys/fs/cgroup/unified"
        let cgroup = "\(root)/defib-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try #require(mkdir(cgroup, 0o755) == 0, "cannot create a cgroup under \(root): \(SystemError("mkdir"))")
        defer { rmdir(cgroup) }
        let main = try Background(["/bin/sleep", "300"], log: "/dev/null")
        let stray = try Background(["/bin/sleep", "300"], log: "/dev/null")
        defer {
            for p in [main, stray] { try? "\(p.pid)\n".write(toFile: root + "/cgroup.procs", atomically: false, encoding: .utf8); p.stop() }
        }
        try "\(stray.pid)\n".write(toFile: cgroup + "/cgroup.procs", atomically: false, encoding: .utf8)
        #expect(ServiceProcesses.cgroupMembers(cgroup) == [stray.pid])
        #expect(ServiceProcesses.list(mainPID: main.pid) == [main.pid])
        #expect(ServiceProcesses.list(mainPID: main.pid, cgroup: cgroup) == [main.pid, stray.pid])
        #expect(ServiceProcesses.cgroupMembers("/nonexistent-defib") == [])
    }
}
