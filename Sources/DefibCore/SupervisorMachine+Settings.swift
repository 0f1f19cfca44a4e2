/// The machine's knobs, where heartbeats come from, and the escalation timings derived from a deadline.
extension SupervisorMachine {
    /// The knobs the policy needs, in milliseconds.
    public struct Settings: Sendable, Equatable {
        /// Where heartbeats come from: pings on the control channel, sd_notify keep-alives, or both.
        public var source: HeartbeatSource
        /// The configured mode: a protocol source (as `source`), a probe (run by the supervision as a ping:
        /// its beat is a pong, its miss a failed ping), `auto` (each protocol held to once the service speaks
        /// it) or `none` (exit only).
        public var mode: HeartbeatMode
        /// Between a pong and the next ping; with sd_notify, the keep-alive period the child is asked
        /// for (it is told WATCHDOG_USEC = twice this, and sends at half of that, as sd_watchdog_enabled(3) advises).
        public var intervalMs: Int
        /// Stage "miss": a ping unanswered this long counts as missed and is replaced by a new one.
        public var missMs: Int
        /// Stage "suspect": silence this long collects soft evidence.
        public var suspectMs: Int
        /// Stage "hang": silence this long (plus extensions) is a hang.
        public var deadlineMs: Int
        /// A hang also needs at least this many missed pings.
        public var missesBeforeHang: Int
        /// When starved, each extension adds this much to the deadline …
        public var extensionStepMs: Int
        /// … up to this much in all (0 = never extend).
        public var maxExtensionMs: Int
        /// A random delay of up to this long before the kill, so a fleet does not bounce in lockstep (0 = off).
        public var killJitterMs: Int
        public var startTimeoutMs: Int
        /// While waiting for the first pong, or after a refused connection, the next ping goes out after this long.
        public var startRetryMs: Int
        /// After SIGKILL, how long before we say so and send it again.
        public var killRetryMs: Int
        /// After SIGTERM at shutdown, how long before SIGKILL.
        public var stopTimeoutMs: Int
        public var backoff: Backoff
        public var intensity: RestartIntensity

        public init(source: HeartbeatSource = .ping, mode: HeartbeatMode? = nil, intervalMs: Int, deadlineMs: Int, missesBeforeHang: Int = 1, missMs: Int? = nil, suspectMs: Int? = nil,
                    extensionStepMs: Int? = nil, maxExtensionMs: Int? = nil, killJitterMs: Int = 0,
                    startTimeoutMs: Int, startRetryMs: Int = 25, killRetryMs: Int = 5000, stopTimeoutMs: Int,
                    backoff: Backoff, intensity: RestartIntensity) {
            self.source = source
            self.mode = mode ?? HeartbeatMode(source)
            self.intervalMs = intervalMs; self.deadlineMs = deadlineMs; self.missesBeforeHang = missesBeforeHang
            let stages = EscalationDefaults.stages(deadlineMs: deadlineMs, missesBeforeHang: missesBeforeHang)
            self.missMs = missMs ?? stages.missMs
            self.suspectMs = suspectMs ?? stages.suspectMs
            self.extensionStepMs = extensionStepMs ?? stages.extensionStepMs
            self.maxExtensionMs = maxExtensionMs ?? stages.maxExtensionMs
            self.killJitterMs = killJitterMs
            self.startTimeoutMs = startTimeoutMs; self.startRetryMs = startRetryMs; self.killRetryMs = killRetryMs
            self.stopTimeoutMs = stopTimeoutMs; self.backoff = backoff; self.intensity = intensity
        }

        public init(_ c: SupervisorConfig) {
            // A refused probe is retried at the heartbeat's interval (not every 25 ms like a ping to a socket not
            // yet made): an exec probe is a process, an http probe a request the service logs.
            self.init(source: c.heartbeat.source, mode: c.heartbeat.mode, intervalMs: c.heartbeat.intervalMs, deadlineMs: c.heartbeat.deadlineMs,
                      missesBeforeHang: c.heartbeat.misses, missMs: c.escalation.missMs, suspectMs: c.escalation.suspectMs,
                      extensionStepMs: c.escalation.extensionStepMs, maxExtensionMs: c.escalation.maxExtensionMs,
                      killJitterMs: c.escalation.killJitterMs,
                      startTimeoutMs: c.heartbeat.startTimeoutMs, startRetryMs: c.heartbeat.mode.probeKind == nil ? min(25, c.heartbeat.intervalMs) : c.heartbeat.intervalMs,
                      stopTimeoutMs: c.restart.stopTimeoutMs,
                      backoff: Backoff(initialMs: c.restart.backoffInitialMs, maxMs: c.restart.backoffMaxMs,
                                       multiplier: c.restart.backoffMultiplier, resetAfterMs: c.restart.backoffResetMs),
                      intensity: RestartIntensity(maxRestarts: c.restart.intensityMax, windowMs: c.restart.intensityWindowMs))
        }
    }
}

extension SupervisorMachine.Settings {
    /// Pings go out (the control channel's, or a probe's attempts): every mode but `notify` and `none`.
    var triesPing: Bool {
        switch mode {
        case .ping, .both, .http, .tcp, .exec, .auto: true
        case .notify, .none: false
        }
    }

    /// WATCHDOG=1 is listened to: `notify`, `both`, and `auto` (which learns it from the first one).
    var hearsKeepAlive: Bool { mode == .notify || mode == .both || mode == .auto }

    /// READY=1 makes a starting instance ready: `notify`, and `auto`/`none`, where it is the only word on
    /// readiness a program that pings nothing can give (`both` waits for the first pong).
    var readyOnNotify: Bool { mode == .notify || mode == .auto || mode == .none }
}

/// Where heartbeats come from.
public enum HeartbeatSource: String, Sendable, Codable, CaseIterable {
    /// `ping TOKEN` → `pong TOKEN` on the control channel.
    case ping
    /// sd_notify `WATCHDOG=1` keep-alives on the NOTIFY_SOCKET the supervisor serves; `READY=1` marks start-up done.
    case notify
    /// Both must keep coming.
    case both

    public var usesPing: Bool { self != .notify }
    public var usesNotify: Bool { self != .ping }
}

/// The escalation stages' timings derived from the deadline when the config leaves them out.
public enum EscalationDefaults {
    public static func stages(deadlineMs: Int, missesBeforeHang: Int) -> (missMs: Int, suspectMs: Int, extensionStepMs: Int, maxExtensionMs: Int) {
        // A miss every quarter deadline (and at least as many as the config asks for before a hang);
        // suspect at half; starvation may double the deadline twice over in half-deadline steps.
        let missMs = max(1, min(deadlineMs / 4, deadlineMs / max(1, missesBeforeHang)))
        return (missMs, max(1, deadlineMs / 2), max(1, deadlineMs / 2), deadlineMs * 2)
    }
}
