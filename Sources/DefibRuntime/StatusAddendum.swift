import Synchronization

/// A clause that parts of defib running beside the supervisor (the fleet shipper) add to the STATUS= line
/// systemd shows, read by the loop each time it builds that line. The provider must be cheap and never
/// block: it runs on the supervision loop.
public enum StatusAddendum {
    private static let provider = Mutex<(@Sendable () -> String?)?>(nil)

    /// Sets (or with nil removes) the provider.
    public static func set(_ p: (@Sendable () -> String?)?) { provider.withLock { $0 = p } }

    /// The clause now, or nil.
    static func current() -> String? { provider.withLock { $0 }?() }
}
