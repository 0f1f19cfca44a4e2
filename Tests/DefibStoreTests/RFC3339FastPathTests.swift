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
}
