import Glibc

/// Termination and reload signals taken synchronously with `sigwait` on the main thread. Block them
/// with `block()` before any thread starts, so every thread inherits the mask and none takes the
/// default action (which would kill the process mid-shutdown).
public struct ProxySignals: Sendable {
    /// The signals handled: SIGTERM/SIGINT stop, SIGHUP reloads.
    public static let handled: [Int32] = [SIGTERM, SIGINT, SIGHUP]
    private let set: sigset_t

    /// Blocks the handled signals in the calling thread (and every thread it starts later), and ignores
    /// SIGPIPE (a client that hangs up must not kill the proxy).
    public static func block() -> ProxySignals {
        var set = sigset_t()
        sigemptyset(&set)
        for s in handled { sigaddset(&set, s) }
        pthread_sigmask(SIG_BLOCK, &set, nil)
        signal(SIGPIPE, SIG_IGN)
        return ProxySignals(set: set)
    }

    /// Waits for the next handled signal.
    public func next() -> Int32 {
        var s = set
        var sig: Int32 = 0
        while sigwait(&s, &sig) != 0 {}
        return sig
    }
}
