import DefibCore
import DefibPOSIX
import Foundation
import Glibc
import Testing

/// systemd-timesyncd as it is, under `defib run --heartbeat notify`: started as root, it drops to its own user
/// (systemd-timesync) before it speaks sd_notify, so it reaches defib's NOTIFY_SOCKET only because that socket is
/// open to every local user. Always in a network namespace of its own (`unshare --net` execs it under the same
/// pid): it can never reach an NTP server or set this machine's clock.
@Suite struct TimesyncdUnderDefibTests {
    static let timesyncd = "/lib/systemd/systemd-timesyncd"

    /// READY=1 is heard (defib calls it ready), then its WATCHDOG=1 every half of the WATCHDOG_USEC defib gave it
    /// keep it alive through ten deadlines (30 s) with no miss; SIGSTOP silences it: an incident whose cause names the
    /// keep-alives and their last beat (seconds after the start: they were being heard), with a core of it.
    @Test func itsKeepAlivesAreHeardAndItsSilenceIsAnIncidentWithItsCore() throws {
        try #require(geteuid() == 0, "timesyncd drops privileges from root")
        try #require(access(Self.timesyncd, X_OK) == 0, "systemd-timesyncd is not installed (scripts/setup.sh installs it)")
        let dir = Scratch("timesyncd"); defer { dir.remove() }
        let state = dir.path + "/state"
        let defib = try Background([Binaries.defib, "run", "--state-dir", state, "--name", "timesyncd", "--heartbeat", "notify",
                                    "--interval", "500", "--deadline", "3000", "--capture", "native", "--",
                                    "unshare", "--net", Self.timesyncd],
                                   env: ["SYSTEMD_LOG_TARGET": "console"], log: dir.path + "/defib.log")
        defer { defib.stop() }
        try #require(waitUntil(timeoutMs: 30_000) { defib.log.contains("service timesyncd pid ") && defib.log.contains(" is ready") },
                     "READY=1 never heard: \(defib.log)")
        let started = try #require(defib.log.components(separatedBy: "started timesyncd: pid ").dropFirst().first
            .flatMap { Int32($0.prefix { $0.isNumber }) })
        let readyAt = Date()
        #expect(waitUntil(timeoutMs: 10_000) { (readTextFile("/proc/\(started)/status") ?? "").contains("Uid:\t\(Self.timesyncUID)\t") },
                "it runs as its own user")
        // The issue's 30 s (ten deadlines): keep-alives due every 500 ms, none missed.
        usleep(30_000_000)
        #expect(try incidentsJSON(stateDir: state).isEmpty, "\(defib.log)")
        #expect(!defib.log.contains("missed") && !defib.log.contains("failing"), "\(defib.log)")
        #expect(!defib.log.contains("cannot reach"), "the notify socket is reachable by its user: \(defib.log)")

        #expect(kill(started, SIGSTOP) == 0)
        let stoppedAt = Date()
        var incident: [String: Any] = [:]
        let found = waitUntil(timeoutMs: 60_000) {
            incident = (try? incidentsJSON(stateDir: state))?.first ?? [:]
            return incident["outcome"] as? String == "recovered"
        }
        try #require(found, "\(defib.log)")
        #expect(incident["pid"] as? Int == Int(started))
        #expect(incident["cause"] as? String == "missed-heartbeat")
        let detail = incident["cause_detail"] as? String ?? ""
        #expect(detail.hasPrefix("sd_notify keep-alive (WATCHDOG=1) failing: "), "\(detail)")
        // The last keep-alive heard came well after READY=1, shortly before the SIGSTOP.
        let lastBeat = try #require(detail.components(separatedBy: "last beat ").dropFirst().first
            .flatMap { RFC3339.date(from: String($0.prefix { !" ,;)".contains($0) })) },
                                    "no last beat in '\(detail)'")
        #expect(lastBeat > readyAt.addingTimeInterval(25) && lastBeat <= stoppedAt.addingTimeInterval(1), "\(detail)")
        let core = try #require(incident["core_path"] as? String, "no core: \(incident)")
        if case .failure(let problem) = CoreFileCheck.check(path: core) { Issue.record("\(core) is not a usable core: \(problem)") }
        #expect(waitUntil(timeoutMs: 30_000) { defib.log.components(separatedBy: "started timesyncd: pid ").count >= 3 }, "restarted: \(defib.log)")
    }

    static var timesyncUID: uid_t { getpwnam("systemd-timesync").map { $0.pointee.pw_uid } ?? 997 }
}
