import DefibPOSIX
import Glibc

/// Unix-epoch milliseconds that advance with the monotonic clock: comparable with the incident's
/// timestamps (wall clock), immune to the wall clock stepping during a run.
public enum ChaosClock {
    private static let anchor: (unixMs: Double, monoNs: Int64) = {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return (Double(ts.tv_sec) * 1000 + Double(ts.tv_nsec) / 1_000_000, monotonicNanoseconds())
    }()

    /// Now, in Unix ms.
    public static func nowUnixMs() -> Double {
        anchor.unixMs + Double(monotonicNanoseconds() - anchor.monoNs) / 1_000_000
    }

    /// Sleeps `ms` milliseconds (EINTR-safe).
    public static func sleep(ms: Double) {
        guard ms > 0 else { return }
        var ts = timespec(tv_sec: Int(ms / 1000), tv_nsec: Int((ms.truncatingRemainder(dividingBy: 1000)) * 1_000_000))
        var rem = timespec()
        while nanosleep(&ts, &rem) != 0 && errno == EINTR { ts = rem }
    }
}
