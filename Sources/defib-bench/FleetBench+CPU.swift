import DefibPOSIX
import Foundation
import Glibc

/// CPU time used by this process and by the PostgreSQL server, so the cost of one incident shipped can be
/// given on each side. The ingest rate depends on what else the machine runs (it is shared); CPU time per
/// incident barely does, so it tells whether a change made shipping cheaper when rates from different
/// moments cannot be compared.
struct CPUTimes {
    /// This process (the shippers), user + system, seconds.
    var shipper: Double
    /// The server: the postmaster and its live children, plus the children it has reaped (backends that
    /// ended), seconds; nil when there is no server of ours to read.
    var server: Double?

    static func now(postmaster: Int32?) -> CPUTimes {
        var usage = rusage()
        getrusage(__rusage_who_t(RUSAGE_SELF.rawValue), &usage)
        let own = Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6
        return CPUTimes(shipper: own, server: postmaster.flatMap(serverSeconds))
    }

    /// utime + stime (+ cutime + cstime for the postmaster) over the postmaster and its children, in seconds.
    private static func serverSeconds(_ postmaster: Int32) -> Double? {
        let ticks = Double(sysconf(Int32(_SC_CLK_TCK)))
        guard ticks > 0, let own = fields(postmaster) else { return nil }
        var total = own.utime + own.stime + own.cutime + own.cstime
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
            guard let pid = Int32(entry), pid != postmaster, let f = fields(pid), f.ppid == postmaster else { continue }
            total += f.utime + f.stime
        }
        return total / ticks
    }

    /// /proc/PID/stat's ppid (field 4) and times (fields 14–17), in clock ticks.
    private static func fields(_ pid: Int32) -> (ppid: Int32, utime: Double, stime: Double, cutime: Double, cstime: Double)? {
        guard let text = readTextFile("/proc/\(pid)/stat"), let close = text.lastIndex(of: ")") else { return nil }
        let rest = text[text.index(after: close)...].split(separator: " ")
        guard rest.count > 14, let ppid = Int32(rest[1]), let u = Double(rest[11]), let s = Double(rest[12]),
              let cu = Double(rest[13]), let cs = Double(rest[14]) else { return nil }
        return (ppid, u, s, cu, cs)
    }
}
