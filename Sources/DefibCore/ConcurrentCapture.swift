/// Whether the replacement may start while the hung instance's core is written, and why not when it may not.
///
/// The hung instance is frozen first (every thread ptrace-stopped by the native writer, a fraction of a
/// millisecond for a few threads): it can serve nothing, so the replacement can start at once and the outage
/// after detection is the replacement's own start time, whatever the core's size. That is safe only when
/// - the capture is `native` (gcore and the kernel's dump keep today's order: the kernel's kills by design, gcore
///   runs its own tracer);
/// - defib passes the listening sockets (`[sockets]`): the frozen process then holds nothing the new one needs
///   (a service that binds its own port would find it taken);
/// - the instance is one process (a master with stuck workers has their cores to write too, in order);
/// - memory allows: MemAvailable above the hung process's RSS (the replacement grows to about as much while the
///   frozen one still holds its own) plus a margin.
/// Otherwise the core is written first and the process killed, then the replacement starts (today's order).
public enum ConcurrentCapture {
    public enum Decision: Sendable, Equatable {
        /// Start the replacement while the core is written.
        case concurrent
        /// Write the core first; why.
        case sequential(String)
    }

    /// The margin left on top of the hung process's RSS: a quarter of it, at least 64 MiB.
    public static func marginBytes(rssBytes: Int64) -> Int64 { max(64 << 20, rssBytes / 4) }

    /// Before freezing: whether the capture can be concurrent at all (nil), or why not.
    public static func precondition(method: CaptureMethod, socketsPassed: Int, otherProcessesToCapture: Int) -> String? {
        guard method == .native else { return "the \(method.rawValue) capture keeps the order core, kill, restart" }
        guard socketsPassed > 0 else { return "the service binds its own listening sockets (none passed by defib): the frozen instance would hold them" }
        guard otherProcessesToCapture == 0 else { return "\(otherProcessesToCapture) other process(es) of the instance are captured after it" }
        return nil
    }

    /// Once frozen: memory decides.
    public static func decide(rssBytes: Int64?, memAvailableBytes: Int64?) -> Decision {
        guard let rss = rssBytes, let available = memAvailableBytes else {
            return .sequential("the hung process's RSS or MemAvailable could not be read")
        }
        let needed = rss + marginBytes(rssBytes: rss)
        guard available >= needed else {
            return .sequential("MemAvailable \(mib(available)) MiB is below the hung process's RSS \(mib(rss)) MiB plus a \(mib(marginBytes(rssBytes: rss))) MiB margin")
        }
        return .concurrent
    }

    static func mib(_ bytes: Int64) -> String { String(bytes >> 20) }
}

/// What freezing a hung process for its core did: every thread ptrace-stopped (the process can do nothing), its
/// registers and mappings read, the core file open; or why not (`failure`, a capture outcome with the error).
public struct CoreFreeze: Sendable, Equatable {
    public var pid: Int32
    /// Threads stopped, and how long stopping them took.
    public var threads: Int
    public var stopMs: Double
    /// /proc/PID/status VmRSS and /proc/meminfo MemAvailable, read as it was frozen.
    public var rssBytes: Int64?
    public var memAvailableBytes: Int64?
    /// Set when the process could not be frozen: the outcome to record (no core).
    public var failure: CoreOutcome?
    public init(pid: Int32, threads: Int, stopMs: Double, rssBytes: Int64?, memAvailableBytes: Int64?, failure: CoreOutcome? = nil) {
        self.pid = pid; self.threads = threads; self.stopMs = stopMs; self.rssBytes = rssBytes; self.memAvailableBytes = memAvailableBytes
        self.failure = failure
    }
}
