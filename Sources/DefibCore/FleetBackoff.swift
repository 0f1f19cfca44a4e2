/// How long the fleet shipper waits before trying the database again after a failure: exponential from
/// `initialMs`, capped at `maxMs`, with ± `jitter` so a fleet that lost its database at the same moment
/// does not come back to it in lockstep. The cap is short on purpose: a database that returns must see the
/// backlog within seconds (an incident shows in the fleet views within 30 s of the database's return).
/// Pure: the random fraction is passed in.
public struct FleetBackoff: Sendable, Equatable {
    /// First wait after a failure.
    public var initialMs: Int = 500
    /// Longest wait.
    public var maxMs: Int = 5_000
    /// Growth per consecutive failure.
    public var multiplier: Double = 2
    /// Spread as a fraction of the wait (0.2 = ± 20 %).
    public var jitter: Double = 0.2
    /// Consecutive failures so far.
    public private(set) var failures = 0

    /// Default policy, no failure yet.
    public init() {}

    /// Records a failure and returns how long to wait (ms); `random` is a fraction in 0..<1.
    public mutating func failed(random: Double) -> Int {
        failures += 1
        var wait = Double(initialMs)
        for _ in 1..<failures where wait < Double(maxMs) { wait *= multiplier }
        wait = min(wait, Double(maxMs))
        let spread = wait * jitter * (2 * min(max(random, 0), 1) - 1)
        return max(1, Int((wait + spread).rounded()))
    }

    /// A success: the next failure starts from `initialMs` again.
    public mutating func succeeded() { failures = 0 }
}
