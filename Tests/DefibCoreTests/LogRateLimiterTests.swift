import DefibCore
import Testing

/// journald-style rate limiting of the lines a child can cause: a burst per window, then one count.
@Suite struct LogRateLimiterTests {
    static func at(_ ms: Int64) -> MonoTime { .milliseconds(ms) }

    @Test func aBurstPassesThenLinesAreDroppedAndCountedOnce() {
        var limiter = LogRateLimiter(burst: 3, intervalMs: 1000)
        let first = (0..<3).map { limiter.admit("notify", at: Self.at(Int64($0))) }
        #expect(first == Array(repeating: .log(suppressedNote: nil), count: 3))
        // A flood inside the window: every line dropped, each counted.
        for i in 0..<100_000 { #expect(limiter.admit("notify", at: Self.at(10 + Int64(i % 900))) == .drop) }
        #expect(limiter.suppressed("notify") == 100_000)
        // The next window's first line carries the one suppression line.
        #expect(limiter.admit("notify", at: Self.at(1000)) == .log(suppressedNote: "100000 notify messages suppressed (rate limit: a burst per 1 s)"))
        #expect(limiter.suppressed("notify") == 0)
        #expect(limiter.admit("notify", at: Self.at(1001)) == .log(suppressedNote: nil))
    }

    @Test func sourcesHaveTheirOwnBudgets() {
        var limiter = LogRateLimiter(burst: 1, intervalMs: 500)
        #expect(limiter.admit("notify", at: Self.at(0)) == .log(suppressedNote: nil))
        #expect(limiter.admit("notify", at: Self.at(1)) == .drop)
        #expect(limiter.admit("control", at: Self.at(2)) == .log(suppressedNote: nil), "a noisy notify socket does not silence the control channel")
        #expect(limiter.admit("notify", at: Self.at(500)) == .log(suppressedNote: "1 notify message suppressed (rate limit: a burst per 500 ms)"))
    }

    @Test func aWindowThatEndsQuietlyIsReportedByFlush() {
        var limiter = LogRateLimiter(burst: 2, intervalMs: 1000)
        for i in 0..<7 { _ = limiter.admit("notify", at: Self.at(Int64(i))) }
        #expect(limiter.flush(at: Self.at(999)).isEmpty, "the window is still open")
        #expect(limiter.flush(at: Self.at(1006)) == ["5 notify messages suppressed (rate limit: a burst per 1 s)"])
        #expect(limiter.flush(at: Self.at(5000)).isEmpty, "reported once")
        // A window without drops says nothing.
        _ = limiter.admit("control", at: Self.at(6000))
        #expect(limiter.flush(at: Self.at(8000)).isEmpty)
    }

    @Test func hugeLinesAreCutAndSayHowLongTheyWere() {
        let limiter = LogRateLimiter(burst: 1, intervalMs: 1000, maxLineBytes: 100)
        let line = "STATUS=" + String(repeating: "é", count: 100_000)
        let clipped = limiter.clip(line)
        #expect(clipped.utf8.count <= 100)
        #expect(clipped.hasPrefix("STATUS=éé"))
        #expect(clipped.hasSuffix("… (200007 bytes, cut)"))
        #expect(limiter.clip("short") == "short")
    }

    @Test func atExitEveryOpenWindowReportsWhatItDropped() {
        var limiter = LogRateLimiter(burst: 2, intervalMs: 30_000)
        for i in 0..<5 { _ = limiter.admit("sd_notify", at: Self.at(Int64(i))) }
        _ = limiter.admit("leftover", at: Self.at(10))
        #expect(limiter.flushAll() == ["3 sd_notify messages suppressed (rate limit: a burst per 30 s)"], "the open window's count, not lost")
        #expect(limiter.flushAll().isEmpty)
    }
}
