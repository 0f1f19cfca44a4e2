import DefibCore
import DefibPOSIX
import Foundation
import Glibc

/// defib inside systemd (Type=notify, WatchdogSec=) and systemd's protocols offered to the child.
extension Supervisor {
    /// The NOTIFY_SOCKET we serve to the child, next to its control socket.
    var notifySocketPath: String { config.notifySocketPath }

    /// Environment for a new instance: ours, minus what systemd gave *us* (our NOTIFY_SOCKET, watchdog,
    /// passed sockets), plus the child's own: its control socket, our NOTIFY_SOCKET, WATCHDOG_USEC when
    /// keep-alives are expected, and the config's variables.
    func childEnvironment() -> [String: String] {
        var env = helperEnvironment()
        // The Swift runtime swallows the first SIGABRT/SIGQUIT to print a backtrace; a supervised Swift
        // service should die (and dump) on them like any other program.
        if env["SWIFT_BACKTRACE"] == nil { env["SWIFT_BACKTRACE"] = "enable=no" }
        for (k, v) in config.service.environment { env[k] = v }
        env["DEFIB_CONTROL_SOCKET"] = config.controlSocketPath
        env["DEFIB_SERVICE"] = config.service.name
        env["DEFIB_FLIGHT_RECORDER"] = flightRecorderPath
        if let notifyServer { env["NOTIFY_SOCKET"] = notifyServer.path }
        if config.heartbeat.source.usesNotify {
            // The child sends WATCHDOG=1 at half this period, i.e. every heartbeat interval.
            env["WATCHDOG_USEC"] = String(UInt64(config.heartbeat.intervalMs) * 2000)
        }
        return env
    }

    /// Reads every pending sd_notify datagram; only the child's own pid is heard (NotifyAccess=main).
    func handleNotifyMessages() {
        guard let notifyServer else { return }
        for message in notifyServer.receiveAll() {
            guard let child, message.pid == child.pid else {
                metrics.notifyRejected.increment()
                logger.warning("ignored sd_notify message from pid \(message.pid) (only the service's main pid \(child.map { String($0.pid) } ?? "-") is heard): \(message.text.prefix(120))")
                continue
            }
            let parsed = NotifyProtocol.parse(message.text)
            for problem in parsed.problems { logger.warning("sd_notify from pid \(message.pid): \(problem)") }
            if message.truncated { logger.warning("sd_notify from pid \(message.pid): datagram longer than 4 KiB, truncated") }
            perform(machine.notifyReceived(parsed.fields, at: now()))
        }
    }

    /// WATCHDOG=1 to our own manager, at half its WATCHDOG_USEC, sent from the loop itself: if the loop
    /// (our event loop and decision loop, which are one) stops turning, systemd's watchdog fires.
    func keepSystemdWatchdogFed() {
        guard let usec = systemdWatchdogUsec else { return }
        let nowNs = monotonicNanoseconds()
        guard nowNs >= nextSystemdKeepAlive else { return }
        SystemdNotifier.notify("WATCHDOG=1")
        nextSystemdKeepAlive = nowNs + Self.keepAlivePeriodNs(watchdogUsec: usec)
    }

    /// The keep-alive period: 40 % of WATCHDOG_USEC, so that with the loop's own latency the gap between two
    /// keep-alives stays under the half that sd_watchdog_enabled(3) asks for.
    static func keepAlivePeriodNs(watchdogUsec usec: UInt64) -> Int64 { Int64(usec) * 400 }

    /// Milliseconds until the next keep-alive to systemd is due (for the poll timeout), rounded up so the
    /// loop sleeps until it is due rather than spinning through its last millisecond.
    var msUntilSystemdKeepAlive: Int32? {
        guard systemdWatchdogUsec != nil else { return nil }
        return Int32(clamping: max(0, (nextSystemdKeepAlive - monotonicNanoseconds() + 999_999) / 1_000_000))
    }

    /// While the loop writes a core (bounded by the capture budget), a helper keeps systemd's watchdog fed —
    /// up to the budget plus a second, never longer: a capture that wedges past it lets the watchdog fire.
    func keepAliveDuringCapture() -> BoundedKeepAlive? {
        guard let usec = systemdWatchdogUsec else { return nil }
        let until = monotonicNanoseconds() + Int64(config.capture.budgetMs + 1000) * 1_000_000
        return BoundedKeepAlive(periodNs: Self.keepAlivePeriodNs(watchdogUsec: usec), untilNs: until)
    }

    /// STATUS= for `systemctl status`, sent when it changes; READY=1 the first time the service answers.
    func updateSystemdStatus(ready: Bool = false) {
        guard SystemdNotifier.isEnabled else { return }
        var status = "\(config.service.name): \(machine.phase.rawValue)"
        if let pid = machine.pid { status += " pid \(pid)" }
        status += "; \(machine.restarts) restart(s)"
        if let last = lastIncidentLine { status += "; last incident \(last)" }
        if let serviceStatus { status += "; service: \(serviceStatus.prefix(80))" }
        if let extra = StatusAddendum.current() { status += "; \(extra)" }
        var message = ""
        if ready && !announcedReady {
            announcedReady = true
            message += "READY=1\n"
        }
        guard !message.isEmpty || status != lastStatusSent else { return }
        lastStatusSent = status
        SystemdNotifier.notify(message + "STATUS=" + status)
    }

    /// A test-only fault (never set in production): when DEFIB_TEST_WEDGE_FILE names a file and that
    /// file appears, remove it and wedge the loop for good — to prove that systemd's watchdog restarts
    /// (and cores) a wedged defib.
    func wedgeIfAskedForTests() {
        guard let path = testWedgeFile, access(path, F_OK) == 0 else { return }
        unlink(path)
        logger.critical("DEFIB_TEST_WEDGE_FILE: wedging the event loop on purpose (test-only fault)")
        while true { sleep(3600) }
    }
}
