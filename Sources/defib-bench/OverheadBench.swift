import DefibCore
import DefibPOSIX
import Foundation
import Glibc

/// CPU and memory of one process over the measuring window.
struct UsageWindow: Codable, Equatable {
    /// Length of the window in seconds (monotonic clock).
    var seconds: Double
    /// utime + stime spent in the window, in clock ticks.
    var cpuTicks: UInt64
    /// Clock ticks per second (sysconf(_SC_CLK_TCK)).
    var ticksPerSecond: Int
    /// VmRSS sampled once a second: smallest, largest, last.
    var rssMinBytes, rssMaxBytes, rssEndBytes: Int64
    /// VmHWM at the end: the peak since the process started (start-up included).
    var hwmBytes: Int64
    /// Threads at the end.
    var threads: Int
    /// Voluntary context switches per second in the window (each wake-up of an event loop that then sleeps again).
    var wakeupsPerSecond: Double

    /// CPU time as a percentage of one core.
    var cpuPercent: Double { seconds > 0 ? Double(cpuTicks) / Double(ticksPerSecond) / seconds * 100 : 0 }
}

/// bench/overhead.json: the envelope every part writes plus these figures.
typealias OverheadReport = BenchReport<OverheadFigures>

/// The overhead part's figures.
struct OverheadFigures: Codable {
    /// `defib run --interval`.
    var intervalMs: Int
    /// `defib run --deadline`.
    var deadlineMs: Int
    /// Seconds between READY=1 and the start of the window.
    var settleSeconds: Int
    /// Each launch of `defib run … -- defib-proxy`: ms from spawning defib to its READY=1.
    var defibReadyMs: [Double] = []
    /// Each launch of `defib-proxy` alone: ms from spawning it to its first "pong".
    var proxyReadyMs: [Double] = []
    /// defib over the window.
    var defib: UsageWindow?
    /// The supervised proxy over the same window, for reference.
    var proxy: UsageWindow?
}

/// defib supervising the idle proxy at a 10 Hz heartbeat: what the supervisor itself costs.
struct OverheadBench {
    var defib: String
    var proxy: String
    var workDirectory: String
    var intervalMs: Int
    var deadlineMs: Int
    var durationSeconds: Int
    var settleSeconds: Int
    var startupRuns: Int
    var log: (String) -> Void

    /// The proxy alone, spawn to first pong.
    func proxyStartup(run: Int) throws -> Double {
        let started = monotonicNanoseconds()
        let (child, socket) = try ProxyLauncher.start(binary: proxy, name: "defib-proxy (alone, run \(run))",
                                                      directory: "\(workDirectory)/alone-\(run)", ballastMB: 0, extraThreads: 0)
        defer { child.stop() }
        return try ProxyLauncher.waitForPong(child, socket: socket, sinceNs: started)
    }

    /// `defib run` supervising the proxy; returns once defib has said READY=1 on our NOTIFY_SOCKET.
    func launchDefib(run: Int) throws -> (defib: ManagedChild, readyMs: Double) {
        let dir = "\(workDirectory)/defib-\(run)"
        try makeDirectories(dir)
        let notify = try NotifyServer(path: "\(dir)/notify.sock")
        let port = try freeLoopbackPort()
        let argv = [defib, "run", "--state-dir", "\(dir)/state", "--interval", String(intervalMs), "--deadline", String(deadlineMs),
                    "--", proxy, "--listen", "127.0.0.1:\(port)", "--route", "bench.test=127.0.0.1:9"]
        let started = monotonicNanoseconds()
        let child = try ManagedChild(name: "defib run (run \(run))", argv: argv, workingDirectory: dir, logPath: "\(dir)/defib.log",
                                     extraEnvironment: ["NOTIFY_SOCKET": notify.path],
                                     removing: ["WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "DEFIB_CONTROL_SOCKET"])
        let deadline = started + 60_000_000_000
        while monotonicNanoseconds() < deadline {
            if let status = child.poll() {
                throw BenchError(kind: .startup, message: "defib run (pid \(child.pid)) \(describe(status)) before READY=1: \(child.logTail)")
            }
            var pfd = pollfd(fd: notify.fd, events: Int16(POLLIN), revents: 0)
            _ = poll(&pfd, 1, 20)
            for message in notify.receiveAll() where message.pid == child.pid && message.text.contains("READY=1") {
                return (child, Double(monotonicNanoseconds() - started) / 1e6)
            }
        }
        let tail = child.logTail
        child.stop()
        throw BenchError(kind: .startup, message: "defib run (pid \(child.pid)) sent no READY=1 to \(notify.path) within 60 s: \(tail)")
    }

    /// Stops defib (SIGTERM, which stops its child first), then kills and reaps its child by pid if it outlived it.
    func stop(_ defibChild: ManagedChild, proxyPID: Int32?) {
        defibChild.stop(graceMs: 15_000)
        guard let pid = proxyPID else { return }
        // We are the children's subreaper: an orphaned proxy is re-parented to us, so it is ours to kill and reap.
        if let stat = readTextFile("/proc/\(pid)/stat"), stat.contains("(defib-proxy)"), parentPID(statText: stat) == getpid() {
            _ = kill(pid, SIGKILL)
            var status: Int32 = 0
            for _ in 0..<100 {
                if waitpid(pid, &status, WNOHANG) != 0 { break }
                sleepMs(50)
            }
        }
    }

    /// Field 4 of /proc/PID/stat.
    func parentPID(statText: String) -> Int32? {
        guard let close = statText.lastIndex(of: ")") else { return nil }
        let rest = statText[statText.index(after: close)...].split(separator: " ")
        return rest.count > 1 ? Int32(rest[1]) : nil
    }

    /// The supervised proxy: defib's child named defib-proxy.
    func supervisedProxy(of defibPID: Int32) -> Int32? {
        childPIDs(of: defibPID).first { (readTextFile("/proc/\($0)/stat") ?? "").contains("(defib-proxy)") }
    }

    /// Runs everything; throws when nothing useful could be measured.
    func run(into report: inout OverheadReport) throws {
        for run in 0..<startupRuns {
            let ms = try proxyStartup(run: run)
            report.proxyReadyMs.append(ms)
            log("  defib-proxy alone, run \(run): first pong after \(formatMs(ms))")
        }
        for run in 0..<startupRuns {
            let (child, ms) = try launchDefib(run: run)
            report.defibReadyMs.append(ms)
            log("  defib run, run \(run): READY=1 after \(formatMs(ms))")
            stop(child, proxyPID: supervisedProxy(of: child.pid))
        }

        let (child, readyMs) = try launchDefib(run: startupRuns)
        report.defibReadyMs.append(readyMs)
        log("  defib run, run \(startupRuns) (measured): READY=1 after \(formatMs(readyMs)); settling \(settleSeconds) s")
        var proxyPID: Int32? = supervisedProxy(of: child.pid)
        defer { stop(child, proxyPID: proxyPID) }
        sleepMs(settleSeconds * 1000)
        guard child.poll() == nil else {
            throw BenchError(kind: .startup, message: "defib run (pid \(child.pid)) \(describe(child.status!)) while settling: \(child.logTail)")
        }
        guard let proxyAtStart = supervisedProxy(of: child.pid) else {
            throw BenchError(kind: .startup, message: "defib run (pid \(child.pid)) has no defib-proxy child after READY=1: \(child.logTail)")
        }
        proxyPID = proxyAtStart
        let hz = ProcSampler.ticksPerSecond
        let t1 = monotonicNanoseconds()
        guard let d1 = cpuTicks(pid: child.pid), let p1 = cpuTicks(pid: proxyAtStart),
              let ds1 = ProcessStatus.read(pid: child.pid), let ps1 = ProcessStatus.read(pid: proxyAtStart) else {
            throw BenchError(kind: .io, message: "reading /proc/\(child.pid)/stat or /proc/\(proxyAtStart)/stat at the window's start")
        }
        var dRSS: [Int64] = [ds1.rssBytes], pRSS: [Int64] = [ps1.rssBytes]
        var restarted = false
        log("  measuring defib pid \(child.pid) and defib-proxy pid \(proxyAtStart) for \(durationSeconds) s")
        for _ in 0..<durationSeconds {
            sleepMs(1000)
            if let status = child.poll() {
                throw BenchError(kind: .capture, message: "defib run (pid \(child.pid)) \(describe(status)) during the window: \(child.logTail)")
            }
            if let s = ProcessStatus.read(pid: child.pid) { dRSS.append(s.rssBytes) }
            if let s = ProcessStatus.read(pid: proxyAtStart) { pRSS.append(s.rssBytes) } else { restarted = true }
        }
        let t2 = monotonicNanoseconds()
        let current = supervisedProxy(of: child.pid)
        if current != proxyAtStart { restarted = true }
        guard let d2 = cpuTicks(pid: child.pid), let ds2 = ProcessStatus.read(pid: child.pid) else {
            throw BenchError(kind: .io, message: "reading /proc/\(child.pid) at the window's end")
        }
        let seconds = Double(t2 - t1) / 1e9
        report.defib = UsageWindow(seconds: seconds, cpuTicks: d2 - d1, ticksPerSecond: hz, rssMinBytes: dRSS.min()!,
                                   rssMaxBytes: dRSS.max()!, rssEndBytes: ds2.rssBytes, hwmBytes: ds2.hwmBytes, threads: ds2.threads,
                                   wakeupsPerSecond: Double(ds2.voluntarySwitches - ds1.voluntarySwitches) / seconds)
        if !restarted, let p2 = cpuTicks(pid: proxyAtStart), let ps2 = ProcessStatus.read(pid: proxyAtStart) {
            report.proxy = UsageWindow(seconds: seconds, cpuTicks: p2 - p1, ticksPerSecond: hz, rssMinBytes: pRSS.min()!,
                                       rssMaxBytes: pRSS.max()!, rssEndBytes: ps2.rssBytes, hwmBytes: ps2.hwmBytes,
                                       threads: ps2.threads,
                                       wakeupsPerSecond: Double(ps2.voluntarySwitches - ps1.voluntarySwitches) / seconds)
        }
        report.targets = OverheadChecks.evaluate(report, restarted: restarted)
    }
}

/// Checks that the measurement means what it says. Pure.
enum OverheadChecks {
    /// `restarted` nil: no window was measured.
    static func evaluate(_ r: OverheadReport, restarted: Bool?) -> [TargetCheck] {
        var out: [TargetCheck] = []
        let measured = switch restarted {
        case nil: "no window measured"
        case true?: "the supervised proxy changed or vanished during the window"
        case false?: "same pid throughout"
        }
        out.append(TargetCheck(id: "overhead.no-restart", target: "the proxy stayed up, answering every heartbeat, for the whole window (same pid)",
                               measured: measured, pass: restarted == false))
        let expected = 1000.0 / Double(r.intervalMs)
        if let d = r.defib {
            out.append(TargetCheck(id: "overhead.heartbeat-ran",
                                   target: String(format: "defib's loop really ran at the heartbeat rate: ≥ %.0f wake-ups/s (voluntary context switches)", expected * 0.9),
                                   measured: String(format: "%.1f wake-ups/s", d.wakeupsPerSecond),
                                   pass: d.wakeupsPerSecond >= expected * 0.9))
        } else {
            out.append(TargetCheck(id: "overhead.heartbeat-ran", target: "defib's loop really ran at the heartbeat rate",
                                   measured: "no window measured", pass: false))
        }
        return out
    }
}

/// The overhead part's section of REPORT.md. Pure.
enum OverheadMarkdown {
    static func render(_ r: OverheadReport) -> String {
        var md = r.sectionHeading("The supervisor's own cost", note: "")
        let window = r.defib.map { String(format: "%.0f s", $0.seconds) } ?? "–"
        md += """
        How it was measured: `defib run --interval \(r.intervalMs) --deadline \(r.deadlineMs) -- defib-proxy --listen 127.0.0.1:PORT …` \
        (release builds; a \(1000 / max(1, r.intervalMs)) Hz heartbeat: a connection to the proxy's control socket and a `ping` \
        every \(r.intervalMs) ms), the proxy idle (no HTTP traffic). After READY=1 and \(r.settleSeconds) s to settle, a \(window) \
        window: CPU = utime + stime from /proc/PID/stat (every thread) over the window, as % of one core; VmRSS sampled once a \
        second; VmHWM at the end (the peak since start, start-up included); wake-ups = voluntary context switches per second, \
        summed over the process's threads.


        """
        md += "| process | CPU (% of one core) | CPU time in window | VmRSS (min–max) | VmHWM | threads | wake-ups/s |\n"
        md += "|---|---|---|---|---|---|---|\n"
        for (name, w) in [("**defib**", r.defib), ("defib-proxy (idle, for reference)", r.proxy)] {
            guard let w else { md += "| \(name) | not measured | | | | | |\n"; continue }
            md += "| \(name) | \(String(format: "%.2f %%", w.cpuPercent)) | "
                + String(format: "%.2f s of %.0f s", Double(w.cpuTicks) / Double(w.ticksPerSecond), w.seconds)
                + " | \(formatBytes(w.rssMinBytes))–\(formatBytes(w.rssMaxBytes)) | \(formatBytes(w.hwmBytes)) | \(w.threads) | "
                + String(format: "%.1f", w.wakeupsPerSecond) + " |\n"
        }
        md += "\nStart-up (each launch a fresh state directory):\n\n"
        if let d = Spread(r.defibReadyMs) {
            md += "- `defib run` spawned → READY=1 on our NOTIFY_SOCKET (defib started, spawned the proxy, and a ping was "
                + "answered): median **\(formatMs(d.median))** (min \(formatMs(d.min)), max \(formatMs(d.max)), \(d.count) launches).\n"
        }
        if let p = Spread(r.proxyReadyMs) {
            md += "- `defib-proxy` alone spawned → first `pong`, polled every 2 ms: median \(formatMs(p.median)) "
                + "(min \(formatMs(p.min)), max \(formatMs(p.max)), \(p.count) launches).\n"
            if let d = Spread(r.defibReadyMs) {
                md += "- Difference of the medians, defib's own share of the start-up: \(formatMs(d.median - p.median)) "
                    + "(its own start, and the wait for the heartbeat that first finds the proxy answering: up to one "
                    + "\(r.intervalMs) ms interval).\n"
            }
        }
        md += "\n### Checks\n\n" + CoreMarkdown.targetTable(r.targets)
        return md
    }
}
