@testable import DefibCore
import Foundation
import Testing
@testable import DefibStore

/// The digit-by-digit reader of the store's own timestamps (RFC3339.date's first try) agrees with the formatter it stands in for.
@Suite struct RFC3339FastPathTests {
    @Test func readsWhatTheStoreWritesExactlyAsTheFormatterDoes() {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        var rng = SystemRandomNumberGenerator()
        var dates = [Date(timeIntervalSince1970: 0), Date(timeIntervalSince1970: 951_782_400.123),   // 2000-02-29
                     Date(timeIntervalSince1970: 1_795_000_000.999), Date(timeIntervalSince1970: 4_102_444_799.5)]
        for _ in 0..<2000 { dates.append(Date(timeIntervalSince1970: Double(UInt64.random(in: 0...4_102_444_800_000, using: &rng)) / 1000)) }
        for d in dates {
            let text = RFC3339.string(d)
            #expect(RFC3339.millisecondsUTC(text) == formatter.date(from: text), "\(text)")
        }
        for other in ["2026-11-18T11:06:40Z", "2026-11-18T11:06:40.123+01:00", "2026-13-18T11:06:40.123Z", "garbage"] {
            #expect(RFC3339.millisecondsUTC(other) == nil, "\(other)")
        }
        #expect(IncidentCodec.parseRFC3339("2026-11-18T11:06:40Z") == Date(timeIntervalSince1970: 1_795_000_000))
    }

    /// The digit-by-digit writer agrees with the formatter, sub-millisecond fractions included (rounded to the
    /// nearest millisecond, halves included), and leaves dates before 1970 to it.
    @Test func writesExactlyWhatTheFormatterWrites() {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        formatter.timeZone = TimeZone(identifier: "UTC")
        var rng = SystemRandomNumberGenerator()
        var dates = [Date(timeIntervalSince1970: 0), Date(timeIntervalSince1970: 951_782_400.123), Date(timeIntervalSince1970: 0.0009),
                     Date(timeIntervalSince1970: 1_795_000_000.9999), Date(timeIntervalSince1970: 4_102_444_799.9995),
                     Date(timeIntervalSince1970: 253_402_300_799.999), Date(timeIntervalSince1970: 1_800_000_000.803),
                     Date(timeIntervalSince1970: 0.0005), Date(timeIntervalSince1970: 1.0015), Date(timeIntervalSince1970: 1_795_000_000.0005),
                     Date(timeIntervalSince1970: 1_795_000_000.1234), Date(timeIntervalSince1970: 1_795_000_000.1236)]
        for _ in 0..<5000 { dates.append(Date(timeIntervalSince1970: Double.random(in: 0..<4_102_444_800, using: &rng))) }
        for _ in 0..<2000 { dates.append(Date(timeIntervalSince1970: Double(Int.random(in: 0..<4_102_444_800_000, using: &rng)) / 1000)) }
        for d in dates {
            #expect(RFC3339.millisecondsUTCString(d) == formatter.string(from: d), "\(d.timeIntervalSince1970)")
        }
        #expect(RFC3339.millisecondsUTCString(Date(timeIntervalSince1970: -1)) == nil)
        #expect(RFC3339.string(Date(timeIntervalSince1970: -1)) == "1969-12-31T23:59:59.000Z")
    }
}
