/// Exponential restart backoff that resets once an instance has stayed healthy long enough.
public struct Backoff: Sendable, Equatable {
    public let initialMs: Int
    public let maxMs: Int
    public let multiplier: Double
    public let resetAfterMs: Int
    /// The delay the next restart will wait.
    public private(set) var nextDelayMs: Int
    /// No restart was taken since the start or the last reset: the first restart after a hang may go at once.
    public private(set) var fresh = true

    public init(initialMs: Int, maxMs: Int, multiplier: Double, resetAfterMs: Int) {
        self.initialMs = initialMs; self.maxMs = maxMs; self.multiplier = multiplier
        self.resetAfterMs = resetAfterMs; self.nextDelayMs = initialMs
    }

    /// Takes the current delay and grows the next one.
    public mutating func take() -> Int {
        fresh = false
        let delay = nextDelayMs
        nextDelayMs = min(maxMs, Int((Double(nextDelayMs) * multiplier).rounded(.up)))
        return delay
    }

    /// The restart of a hung instance: at once when it is the first since the start or the last reset (backoff
    /// slows a crash loop; a hang's replacement should not wait), else as `take()`.
    public mutating func takeAfterHang() -> Int {
        guard fresh else { return take() }
        fresh = false
        return 0
    }

    /// An instance that was ready for `healthyMs` earns a fresh start.
    public mutating func instanceWasHealthy(forMs healthyMs: Double) {
        if healthyMs >= Double(resetAfterMs) { nextDelayMs = initialMs; fresh = true }
    }
}

/// Restart intensity (Erlang/OTP's MaxR in MaxT): at most `maxRestarts` restarts within `windowMs`.
/// Like s6's death tally, a bounded list of recent restarts and one small predicate over it.
public struct RestartIntensity: Sendable, Equatable {
    public let maxRestarts: Int
    public let windowMs: Int
    public private(set) var recent: [MonoTime] = []

    public init(maxRestarts: Int, windowMs: Int) { self.maxRestarts = maxRestarts; self.windowMs = windowMs }

    /// Whether one more restart at `now` stays within the limit.
    public func allows(at now: MonoTime) -> Bool { inWindow(at: now) < maxRestarts }

    public mutating func record(at now: MonoTime) {
        recent.append(now)
        recent.removeAll { now.milliseconds(since: $0) >= Double(windowMs) }
    }

    public func inWindow(at now: MonoTime) -> Int { recent.filter { now.milliseconds(since: $0) < Double(windowMs) }.count }
}
