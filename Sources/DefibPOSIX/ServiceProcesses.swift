import CDefibShims
import DefibCore
import Glibc

/// The processes of one service instance, read from /proc (and its cgroup when it has one), sampled without
/// the processes' help for `ServiceProgressJudge`.
public enum ServiceProcesses {
    /// At most this many processes are listed: a fork bomb must not make the hang path unbounded.
    public static let limit = 4096

    /// Every process of the instance: `mainPID`, its descendants (each thread's /proc/PID/task/TID/children,
    /// level by level), and, when `cgroup` names the instance's cgroup directory, the pids in its `cgroup.procs`
    /// (a daemon that double-forked out of the tree is still in its cgroup). Main first, then ascending.
    public static func list(mainPID: Int32, cgroup: String? = nil) -> [Int32] {
        var found: Set<Int32> = []
        var queue: [Int32] = []
        if kill(mainPID, 0) == 0 || errno == EPERM { found.insert(mainPID); queue.append(mainPID) }
        var next = 0
        while next < queue.count, found.count < limit {
            let pid = queue[next]; next += 1
            for child in childProcesses(of: pid) where found.count < limit && found.insert(child).inserted {
                queue.append(child)
            }
        }
        if let cgroup {
            for pid in cgroupMembers(cgroup) where found.count < limit { found.insert(pid) }
        }
        return found.sorted { ($0 == mainPID ? 0 : 1, $0) < ($1 == mainPID ? 0 : 1, $1) }
    }

    /// The descendants of `pid` (not `pid` itself), each held by a pidfd opened while it was still one of them
    /// (its parent, read after the pidfd is open, is `pid` or another of them), so a signal never reaches a
    /// process that took a pid freed in between.
    public static func openDescendants(of pid: Int32) -> [HeldProcess] {
        let tree = list(mainPID: pid)
        let members = Set(tree)
        var held: [HeldProcess] = []
        for member in tree where member != pid {
            let fd = defib_pidfd_open(member)
            guard fd >= 0 else { continue }
            guard let stat = readTextFile("/proc/\(member)/stat"), let parent = ProcParse.parentPID(stat), members.contains(parent) else {
                close(fd)
                continue
            }
            held.append(HeldProcess(pid: member, pidfd: fd))
        }
        return held
    }

    /// The pids in `DIR/cgroup.procs` (opened without following a link; lines that are not pids are skipped),
    /// reading at most `maxBytes` of it.
    public static func cgroupMembers(_ directory: String, maxBytes: Int = 1 << 20) -> [Int32] {
        (readTextFile(directory + "/cgroup.procs", maxBytes: maxBytes, flags: O_NOFOLLOW) ?? "")
            .split(separator: "\n").compactMap { Int32($0) }.filter { $0 > 0 }
    }

    /// A sample of each process (`ProcSampler.sample`); a process gone meanwhile has no threads.
    public static func sample(_ pids: [Int32]) -> [ProcessSample] {
        pids.map { ProcSampler.sample(pid: $0) }
    }

    /// Lists the instance's processes, samples them twice `apartMs` apart, and judges each. Blocks for
    /// `apartMs`: for tests and blocking callers; the loop takes the two samples at its own times and calls
    /// `ServiceProgressJudge.judge` itself.
    public static func judge(mainPID: Int32, cgroup: String? = nil, apartMs: Int = 200,
                             thresholds: ProgressThresholds = .init()) -> [ProcessJudgement] {
        let pids = list(mainPID: mainPID, cgroup: cgroup)
        let before = sample(pids)
        usleep(useconds_t(apartMs * 1000))
        let after = sample(pids)
        return ServiceProgressJudge.judge(before: before, after: after, mainPID: mainPID, thresholds: thresholds)
    }
}

/// A process held by its pidfd: signals go to that process, never to a later one with the same pid.
public final class HeldProcess {
    public let pid: Int32
    private let pidfd: Int32

    init(pid: Int32, pidfd: Int32) { self.pid = pid; self.pidfd = pidfd }
    deinit { close(pidfd) }

    /// Sends `signal`; false when the process is gone.
    @discardableResult
    public func kill(_ signal: Int32) -> Bool { defib_pidfd_send_signal(pidfd, signal) == 0 }
}
