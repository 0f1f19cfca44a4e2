/// A point on a monotonic clock, in nanoseconds. The supervisor's decisions take it as an argument
/// and never read a clock themselves, so tests drive them with a manual clock.
public struct MonoTime: Comparable, Hashable, Sendable, CustomStringConvertible {
    public var nanoseconds: Int64
    public init(nanoseconds: Int64) { self.nanoseconds = nanoseconds }
    public static func milliseconds(_ ms: Int64) -> MonoTime { MonoTime(nanoseconds: ms * 1_000_000) }
    public static func < (a: MonoTime, b: MonoTime) -> Bool { a.nanoseconds < b.nanoseconds }
    public static func + (a: MonoTime, ms: Int) -> MonoTime { MonoTime(nanoseconds: a.nanoseconds + Int64(ms) * 1_000_000) }
    /// Milliseconds from `earlier` to `self`.
    public func milliseconds(since earlier: MonoTime) -> Double { Double(nanoseconds - earlier.nanoseconds) / 1e6 }
    public var description: String { "\(Double(nanoseconds) / 1e6)ms" }
}
