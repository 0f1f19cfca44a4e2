/// How a captured core is taken.
public enum CaptureMethod: String, Sendable, Codable, CaseIterable {
    /// defib's own ptrace core writer: fast, only the pages that matter.
    case native
    /// The kernel's dump (RLIMIT_CORE raised, a core-dumping signal): for hosts where ptrace is not allowed.
    /// It kills the process; the core goes where core_pattern says.
    case kernel
    /// gdb's gcore.
    case gcore
    /// No core (lock words, flight recorder and /proc are still read).
    case none
}

/// Which processes of the service may send sd_notify datagrams (systemd's NotifyAccess=): only its main
/// process, or any process of the instance — its cgroup, or its process tree when it has no cgroup. A daemon
/// whose worker (or whose re-exec'd self) speaks sd_notify needs `all`.
public enum NotifyAccess: String, Sendable, Codable, CaseIterable {
    case main, all
}

/// Compression of a core after the restart (never before it).
public enum CoreCompression: String, Sendable, Codable, CaseIterable {
    case none, gzip, zstd
}

/// A listening socket the supervisor binds once and passes to every instance (LISTEN_FDS).
public struct SocketSpec: Sendable, Equatable {
    /// LISTEN_FDNAMES entry: letters, digits, `_`, `-`, `.`.
    public var name: String
    public var host: String
    public var port: Int
    public init(name: String, host: String, port: Int) { self.name = name; self.host = host; self.port = port }

    /// "HOST:PORT" or "[V6]:PORT" → (host, port); nil when it is neither.
    public static func parseAddress(_ text: String) -> (host: String, port: Int)? {
        var host: Substring
        var portText: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]"), text[text.index(after: close)...].hasPrefix(":") else { return nil }
            host = text[text.index(after: text.startIndex)..<close]
            portText = text[text.index(close, offsetBy: 2)...]
        } else {
            guard let colon = text.lastIndex(of: ":") else { return nil }
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
            if host.contains(":") { return nil }
        }
        guard !host.isEmpty, let port = Int(portText), (0...65535).contains(port) else { return nil }
        return (String(host), port)
    }

    /// Whether `host` is a loopback address: 127.0.0.0/8, ::1, or localhost.
    public static func isLoopback(_ host: String) -> Bool {
        if host == "localhost" || host == "::1" || host == "0:0:0:0:0:0:0:1" { return true }
        return ipv4Octets(host)?.first == 127
    }

    /// The numeric address to bind for `host`: itself when it is an IPv4 or IPv6 literal, 127.0.0.1 for
    /// localhost; nil for anything else (defib does not resolve names for the sockets it binds).
    public static func numericHost(_ host: String) -> String? {
        if host == "localhost" { return "127.0.0.1" }
        if ipv4Octets(host) != nil { return host }
        if host.contains(":") && host.allSatisfy({ $0.isHexDigit || $0 == ":" || $0 == "." }) { return host }
        return nil
    }

    /// The four octets of a dotted-quad IPv4 literal ("127.0.0.1"), or nil.
    static func ipv4Octets(_ host: String) -> [UInt8]? {
        let parts = host.split(separator: ".", omittingEmptySubsequences: false)
        let octets = parts.compactMap { $0.count <= 3 ? UInt8($0) : nil }
        return parts.count == 4 && octets.count == 4 ? octets : nil
    }

    /// Whether `name` can go into LISTEN_FDNAMES (colon-separated, at most 255 bytes).
    public static func isValidName(_ name: String) -> Bool {
        !name.isEmpty && name.utf8.count <= 255 && name.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || "_-.".contains($0)) }
    }
}

/// Everything the supervisor needs to know, after the TOML file and the flags are merged.
/// Durations are in milliseconds unless the name says otherwise.
public struct SupervisorConfig: Sendable, Equatable {
    /// `[service]`: what to run.
    public struct Service: Sendable, Equatable {
        /// Name used in incidents and paths. Default: the program's base name.
        public var name: String
        /// The program and its arguments; `argv[0]` is resolved through PATH when it has no slash.
        public var argv: [String]
        /// Extra environment for the child, on top of the supervisor's own.
        public var environment: [String: String]
        /// Working directory of the child; nil = the supervisor's.
        public var workingDirectory: String?
        /// The user the child runs as (a name or a numeric uid); nil = defib's own. Resolved once, at start-up.
        public var user: String?
        /// The child's group (a name or a numeric gid); nil = the user's primary group (or defib's own).
        public var group: String?
        /// The child's supplementary groups (names or gids); nil = the user's groups from the group database,
        /// as `initgroups` gives a login (or only `group` when no user is set); [] = none.
        public var supplementaryGroups: [String]?
        public init(name: String, argv: [String], environment: [String: String] = [:], workingDirectory: String? = nil) {
            self.name = name; self.argv = argv; self.environment = environment; self.workingDirectory = workingDirectory
        }
    }
    /// `[heartbeat]`
    public struct Heartbeat: Sendable, Equatable {
        /// Where heartbeats come from, as configured: `auto` (the default: ping once the child listens on its
        /// control socket, sd_notify once it sends WATCHDOG=1, its exit only while it does neither), `ping`
        /// (control channel), `notify` (sd_notify WATCHDOG=1), `both`, a probe (`http`, `tcp`, `exec`) or `none`.
        public var mode: HeartbeatMode = .auto
        /// The protocol heartbeat of a `ping`, `notify` or `both` mode. The other modes are not one protocol:
        /// for them this reads `.ping` (a probe runs as pings do; `auto` and `none` are the machine's own
        /// business, see `SupervisorMachine.Settings.mode`). Setting it sets `mode`.
        public var source: HeartbeatSource {
            get { mode.protocolSource ?? .ping }
            set { mode = HeartbeatMode(newValue) }
        }
        /// The probe target for `http` (a URL), `tcp` (HOST:PORT) or `exec` (a command line).
        public var probe: String?
        /// One probe attempt's time limit; nil = half the deadline, so two attempts fit in one.
        public var probeTimeoutMs: Int?
        /// HTTP: the one status that counts as healthy (default: any 2xx or 3xx).
        public var probeExpectStatus: Int?
        /// HTTP: text the body must contain.
        public var probeExpectBody: String?
        /// TCP: a line to send once connected (e.g. `PING`).
        public var probeSend: String?
        /// TCP: the prefix the first line back must start with (e.g. `+PONG`).
        public var probeExpect: String?
        /// Time between the answer to one ping and the next ping.
        public var intervalMs: Int = 200
        /// How long one ping may stay unanswered before it counts as a miss.
        public var deadlineMs: Int = 1000
        /// Consecutive misses that make a hang.
        public var misses: Int = 1
        /// How long a new instance has to answer its first ping.
        public var startTimeoutMs: Int = 15000
        /// Control socket path; nil = `<state_dir>/run/<service>/control.sock`.
        public var controlSocket: String?
        /// Who may send sd_notify datagrams (`notify_access`): the main process, or any process of the instance.
        public var notifyAccess: NotifyAccess = .main
        public init() {}
    }
    /// `[capture]`
    public struct Capture: Sendable, Equatable {
        public var method: CaptureMethod = .native
        /// Compress cores after the restart.
        public var compress: CoreCompression = .none
        /// Time allowed for the core; past it the capture is abandoned and the kill goes ahead.
        public var budgetMs: Int = 10000
        /// Where cores go; nil = `<state_dir>/cores`.
        public var directory: String?
        /// Run `gdb -batch` on the core after the restart and store all threads' backtraces.
        public var stacks: Bool = true
        /// Announce each core to the journal as systemd-coredump does, so coredumpctl lists it; nil = only
        /// when defib runs under journald.
        public var announceToCoredumpctl: Bool?
        /// Whose stacks to read besides gdb's: the Go, Python or Java runtime's (`auto` detects it).
        public var runtime: RuntimeSetting = .auto
        /// Time the runtime's tool (py-spy, jcmd) may take before the kill; part of `budgetMs`, never added to it
        /// (see `effectiveRuntimeBudgetMs`).
        public var runtimeBudgetMs: Int = 3000
        /// The runtime tool's time before the kill: `runtimeBudgetMs`, capped at half the capture budget so the
        /// core always keeps the other half.
        public var effectiveRuntimeBudgetMs: Int { max(1, min(runtimeBudgetMs, budgetMs / 2)) }
        public init() {}
    }
    /// `[escalation]`: the stages between a late heartbeat and a kill. Unset values derive from the deadline
    /// (see `EscalationDefaults`).
    public struct Escalation: Sendable, Equatable {
        /// A ping unanswered this long is a miss (counted, logged; a new ping goes out).
        public var missMs: Int?
        /// Silence this long collects soft evidence (thread states, flight recorder) without a kill.
        public var suspectMs: Int?
        /// When the process is starved rather than stuck, the deadline grows by this much at a time …
        public var extensionStepMs: Int?
        /// … up to this much in all; 0 never extends.
        public var maxExtensionMs: Int?
        /// A random delay up to this long before the kill (0 = off), so a fleet does not bounce in lockstep.
        public var killJitterMs: Int = 0
        /// Declare a hang at a miss when the evidence proves a deadlock (`ProofRule`: a corrupted lock word, a
        /// lock cycle, each read twice with nothing running), without waiting for the deadline.
        public var actOnProof = true
        /// What to take at the suspect stage while the service is still stalled (stacks by default).
        public var stallEvidence: StallEvidenceMode = .stacks
        /// The longest the service may be frozen for it; a full core that would take longer becomes stacks only.
        public var stallEvidenceBudgetMs: Int = 20
        /// Stall incidents stored in full per service and hour; past it they are counted, not stored.
        public var stallIncidentsPerHour: Int = 60
        public init() {}
    }
    /// `[restart]`
    public struct Restart: Sendable, Equatable {
        public var backoffInitialMs: Int = 100
        public var backoffMaxMs: Int = 30000
        public var backoffMultiplier: Double = 2.0
        /// An instance that stayed ready this long resets the backoff to its initial value.
        public var backoffResetMs: Int = 60000
        /// Restart intensity: at most `intensityMax` restarts within `intensityWindowMs`, then give up (exit non-zero).
        public var intensityMax: Int = 5
        public var intensityWindowMs: Int = 60000
        /// Time a child gets after SIGTERM on supervisor shutdown before SIGKILL.
        public var stopTimeoutMs: Int = 5000
        /// The first restart after a hang (none since the start or the last backoff reset) starts at once: backoff
        /// slows a crash loop, and a hung instance's replacement should not wait. From the second restart within
        /// `backoffResetMs`, backoff and intensity apply as to any restart.
        public var immediateAfterHang = true
        public init() {}
    }

    public var service: Service
    public var heartbeat: Heartbeat
    public var capture: Capture
    public var restart: Restart
    public var escalation: Escalation = .init()
    /// `[retention]`: how many cores, and how much disk, to keep.
    public var retention: CoreRetentionPolicy = .init()
    /// `[sockets]`: listening sockets bound by the supervisor and passed to every instance.
    public var sockets: [SocketSpec] = []
    /// `[metrics] listen`: where Prometheus metrics are served ("127.0.0.1:9464"); nil = off.
    public var metricsListen: String?
    /// `[fleet]`: ship incidents to a fleet database (nil: do not ship).
    public var fleet: FleetSettings?
    /// `state_dir`: incidents.sqlite, cores/, run/.
    public var stateDirectory: String

    public init(service: Service, heartbeat: Heartbeat = .init(), capture: Capture = .init(),
                restart: Restart = .init(), stateDirectory: String) {
        self.service = service; self.heartbeat = heartbeat; self.capture = capture
        self.restart = restart; self.stateDirectory = stateDirectory
    }

    public var controlSocketPath: String {
        heartbeat.controlSocket ?? "\(runDirectory)/control.sock"
    }
    /// `<state_dir>/run/<service>` (0700): the NOTIFY_SOCKET served to the child, its flight recorder, and
    /// its control socket (or, when `heartbeat.control_socket` puts that elsewhere, a symlink to it that
    /// `defib ctl --state-dir` follows).
    public var runDirectory: String { "\(stateDirectory)/run/\(service.name)" }
    /// `<state_dir>/notify` (0711): the NOTIFY_SOCKETs, one per service, writable by any local user like
    /// systemd's own (senders are told apart by their pid, not by file modes), so a daemon that drops its
    /// privileges by itself can still send sd_notify. Nothing else lives there.
    public var notifyDirectory: String { "\(stateDirectory)/notify" }
    /// The NOTIFY_SOCKET served to the child: `<state_dir>/notify/<service>.sock`, or — with
    /// `heartbeat.control_socket` set, typically to keep socket paths short — beside the control socket, as
    /// `<control_socket>.notify`.
    public var notifySocketPath: String { heartbeat.controlSocket.map { $0 + ".notify" } ?? "\(notifyDirectory)/\(service.name).sock" }
    /// `<run directory>/instance`: made anew at every start for a service that runs as another user (0770,
    /// group = the service's), holding what the service itself creates — its control socket, its flight
    /// recorder — so it can create them without being given a directory defib relies on.
    public var instanceDirectory: String { "\(runDirectory)/instance" }
    public var coreDirectory: String { capture.directory ?? "\(stateDirectory)/cores" }
    public var databasePath: String { "\(stateDirectory)/incidents.sqlite" }
}
