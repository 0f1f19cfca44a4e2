import CDefibShims
import DefibCore
import Glibc

/// Reads a file whole (up to `maxBytes`); nil when it cannot be opened.
public func readFileBytes(_ path: String, maxBytes: Int = 1 << 20, flags: Int32 = 0) -> [UInt8]? {
    let fd = open(path, O_RDONLY | O_CLOEXEC | flags)
    if fd < 0 { return nil }
    defer { close(fd) }
    return readAll(fd: fd, maxBytes: maxBytes)
}

/// What `fd` holds from where it stands to its end, at most `maxBytes`; a read error ends it like the end.
func readAll(fd: Int32, maxBytes: Int) -> [UInt8] {
    var data: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while data.count < maxBytes {
        let n = retryingEINTR { chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, min($0.count, maxBytes - data.count)) } }
        if n <= 0 { break }
        data += chunk[0..<n]
    }
    return data
}

/// Reads a small text file (under /proc or /sys) whole; nil when it cannot be opened.
public func readTextFile(_ path: String, maxBytes: Int = 1 << 20, flags: Int32 = 0) -> String? {
    readFileBytes(path, maxBytes: maxBytes, flags: flags).map { String(decoding: $0, as: UTF8.self) }
}

/// The thread ids of a process (/proc/PID/task), sorted; empty when the process is gone.
public func threadIDs(pid: Int32) -> [Int32] {
    guard let dir = opendir("/proc/\(pid)/task") else { return [] }
    defer { closedir(dir) }
    var tids: [Int32] = []
    while let entry = readdir(dir) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
        if let tid = Int32(name) { tids.append(tid) }
    }
    return tids.sorted()
}

/// Samples a process's threads, system pressure and cgroup throttling from /proc and /sys — without the
/// process's help and without stopping it.
public enum ProcSampler {
    public static let ticksPerSecond = Int(sysconf(Int32(_SC_CLK_TCK)))
    public static let cpuCount = max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))))

    public static func sample(pid: Int32) -> ProcessSample {
        let at = monotonicNanoseconds()
        var threads: [ThreadSample] = []
        for tid in threadIDs(pid: pid) {
            let base = "/proc/\(pid)/task/\(tid)"
            guard let statText = readTextFile("\(base)/stat"), let stat = ProcParse.stat(statText) else { continue }
            var t = ThreadSample(tid: tid, name: stat.name, state: stat.state, cpuTicks: stat.cpuTicks)
            if let s = readTextFile("\(base)/schedstat").flatMap(ProcParse.schedstat) {
                t.onCpuNs = s.onCpuNs; t.runDelayNs = s.runDelayNs
            }
            if let call = readTextFile("\(base)/syscall").flatMap(ProcParse.syscall) {
                t.syscall = call.number; t.syscallArg0 = call.arg0
            }
            threads.append(t)
        }
        var sample = ProcessSample(pid: pid, atNs: at, threads: threads,
                                   cpuPressure: readTextFile("/proc/pressure/cpu").flatMap(ProcParse.pressure),
                                   ioPressure: readTextFile("/proc/pressure/io").flatMap(ProcParse.pressure),
                                   ticksPerSecond: ticksPerSecond, cpuCount: cpuCount)
        if let cg = readTextFile("/proc/\(pid)/cgroup").flatMap(ProcParse.cpuCgroup) {
            let mounts = cg.version == 2 ? ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] : ["/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu,cpuacct"]
            for mount in mounts {
                guard let stat = readTextFile("\(mount)\(cg.path)/cpu.stat").flatMap(ProcParse.cgroupCPUStat) else { continue }
                sample.throttledPeriods = stat.periods; sample.throttledUs = stat.throttledUs
                sample.cpuQuota = tightestQuota(mount: mount, path: cg.path, version: cg.version)
                break
            }
        }
        return sample
    }

    /// The tightest CPU quota on the way from the process's cgroup up to the root: a quota is usually set on the
    /// service's cgroup or the unit's, above the instance's own leaf (whose own reads "max"), and limits it all the same.
    public static func tightestQuota(mount: String, path: String, version: Int) -> CPUQuota? {
        var tightest: CPUQuota?
        var components = path.split(separator: "/").map(String.init)
        while true {
            let dir = mount + (components.isEmpty ? "" : "/" + components.joined(separator: "/"))
            let quota = version == 2
                ? readTextFile("\(dir)/cpu.max").flatMap { ProcParse.cpuQuota(v2: $0) }
                : readTextFile("\(dir)/cpu.cfs_quota_us").flatMap { q in
                    readTextFile("\(dir)/cpu.cfs_period_us").flatMap { ProcParse.cpuQuota(v1Quota: q, period: $0) }
                }
            if let quota, tightest.map({ quota.share < $0.share }) ?? true { tightest = quota }
            if components.isEmpty { return tightest }
            components.removeLast()
        }
    }
}

/// The children of `pid` (every thread's /proc/PID/task/TID/children), sorted.
public func childProcesses(of pid: Int32) -> [Int32] {
    var out: Set<Int32> = []
    for tid in threadIDs(pid: pid) {
        for field in (readTextFile("/proc/\(pid)/task/\(tid)/children") ?? "").split(whereSeparator: { $0 == " " || $0 == "\n" }) {
            if let child = Int32(field) { out.insert(child) }
        }
    }
    return out.sorted()
}

/// Kills a process by pid through a pidfd (so a pid recycled in between is never hit). False when it was gone.
@discardableResult
public func killProcess(_ pid: Int32, signal: Int32 = SIGKILL) -> Bool {
    let fd = defib_pidfd_open(pid)
    guard fd >= 0 else { return false }
    defer { close(fd) }
    return defib_pidfd_send_signal(fd, signal) == 0
}

/// The `comm` of a process, or "?".
public func processName(_ pid: Int32) -> String {
    readTextFile("/proc/\(pid)/stat").flatMap(ProcParse.stat)?.name ?? "?"
}
