/// Rate limiting for log lines a supervised child can cause (sd_notify messages, control-channel replies,
/// exits in a tight loop): a burst, then silence, then one "N messages suppressed" line — journald's
/// RateLimitIntervalSec=/RateLimitBurst= semantics. A child that floods its NOTIFY_SOCKET with 1.6 million
/// datagrams must not turn into hundreds of megabytes of defib's log. Pure: the clock is passed in.
///
/// Each source (`notify`, `control`, …) gets its own budget, so one noisy channel does not silence another.
/// The runtime asks `admit(_:at:)` before each line; when the answer carries a suppression line, that line
/// is logged first (it reports the previous window). `flush(at:)` reports a window that ended without a
/// further line (called from the loop's tick), so a count is never lost.
public struct LogRateLimiter: Sendable, Equatable {
    /// Lines allowed per source in each interval.
    public let burst: Int
    /// The window, in milliseconds. A window starts at the first line of a source after the previous one ended.
    public let intervalMs: Int64
    /// Longest line kept; a longer one is cut and says how long it was (a 200 KB sd_notify message is one line).
    public let maxLineBytes: Int

    /// journald's defaults are 10000 lines per 30 s for a whole unit; a supervisor's own log about one child
    /// needs far fewer lines to say what the child is doing.
    public static let defaultBurst = 200
    /// See `defaultBurst`.
    public static let defaultIntervalMs: Int64 = 30_000
    /// See `maxLineBytes`.
    public static let defaultMaxLineBytes = 2048

    private struct Window: Sendable, Equatable {
        var startedAt: MonoTime
        var admitted: Int
        var suppressed: Int
    }
    private var windows: [String: Window] = [:]

    /// A limiter allowing `burst` lines per `intervalMs` per source.
    public init(burst: Int = defaultBurst, intervalMs: Int64 = defaultIntervalMs, maxLineBytes: Int = defaultMaxLineBytes) {
        precondition(burst >= 1 && intervalMs >= 1 && maxLineBytes >= 16, "a rate limit needs a burst, an interval and room for a line")
        self.burst = burst; self.intervalMs = intervalMs; self.maxLineBytes = maxLineBytes
    }

    /// What to do with one line.
    public enum Decision: Sendable, Equatable {
        /// Log the line; first log `suppressedNote` when there is one (the previous window's count).
        case log(suppressedNote: String?)
        /// Drop it: the source used its burst in this window. It is counted for the next note.
        case drop
    }

    /// Whether a line from `source` at `now` may be logged.
    public mutating func admit(_ source: String, at now: MonoTime) -> Decision {
        var note: String?
        var window = windows[source] ?? Window(startedAt: now, admitted: 0, suppressed: 0)
        if now.nanoseconds - window.startedAt.nanoseconds >= intervalMs * 1_000_000 {
            note = Self.note(source: source, window.suppressed, intervalMs: intervalMs)
            window = Window(startedAt: now, admitted: 0, suppressed: 0)
        }
        defer { windows[source] = window }
        if window.admitted < burst {
            window.admitted += 1
            return .log(suppressedNote: note)
        }
        window.suppressed += 1
        return .drop
    }

    /// The suppression lines of windows that have ended with lines still uncounted in the log, one per
    /// source, and forgets those windows. Call it now and then (the supervisor's tick).
    public mutating func flush(at now: MonoTime) -> [String] {
        var notes: [String] = []
        for source in windows.keys.sorted() {
            guard let window = windows[source], now.nanoseconds - window.startedAt.nanoseconds >= intervalMs * 1_000_000 else { continue }
            if let note = Self.note(source: source, window.suppressed, intervalMs: intervalMs) { notes.append(note) }
            windows[source] = nil
        }
        return notes
    }

    /// The suppression lines of every window, ended or not, and forgets them all: at exit, so a count is
    /// never lost.
    public mutating func flushAll() -> [String] {
        defer { windows.removeAll() }
        return windows.keys.sorted().compactMap { source in
            windows[source].flatMap { Self.note(source: source, $0.suppressed, intervalMs: intervalMs) }
        }
    }

    /// Lines dropped so far in `source`'s current window.
    public func suppressed(_ source: String) -> Int { windows[source]?.suppressed ?? 0 }

    /// `text` cut to `maxLineBytes` (on a character boundary) with the full length named, so one huge
    /// message costs a bounded line.
    public func clip(_ text: String) -> String {
        let bytes = text.utf8.count
        guard bytes > maxLineBytes else { return text }
        var kept = ""
        var used = 0
        for ch in text {
            let n = String(ch).utf8.count
            if used + n > maxLineBytes - 40 { break }
            kept.append(ch); used += n
        }
        return kept + "… (\(bytes) bytes, cut)"
    }

    private static func note(source: String, _ suppressed: Int, intervalMs: Int64) -> String? {
        guard suppressed > 0 else { return nil }
        let per = intervalMs % 1000 == 0 ? "\(intervalMs / 1000) s" : "\(intervalMs) ms"
        return "\(suppressed) \(source) message\(suppressed == 1 ? "" : "s") suppressed (rate limit: a burst per \(per))"
    }
}
