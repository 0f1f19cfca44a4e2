/// Order statistics over a run's durations.
public enum Stats {
    /// The `p`-th percentile (0…100) of `values` by the nearest-rank method: the smallest value with at
    /// least p % of the values at or below it. Nearest rank always returns an observed value, which is
    /// what a report of a few runs should show (no interpolated durations nobody measured).
    /// nil for an empty list; p outside 0…100 is clamped.
    public static func percentile(_ values: [Double], _ p: Double) -> Double? {
        guard !values.isEmpty else { return nil }
        let sorted = values.sorted()
        let clamped = min(max(p, 0), 100)
        if clamped == 0 { return sorted[0] }
        let rank = Int((clamped / 100 * Double(sorted.count)).rounded(.up))
        return sorted[min(max(rank, 1), sorted.count) - 1]
    }

    /// The median: the mean of the two middle values for an even count.
    public static func median(_ values: [Double]) -> Double? {
        guard !values.isEmpty else { return nil }
        let s = values.sorted()
        let mid = s.count / 2
        return s.count % 2 == 1 ? s[mid] : (s[mid - 1] + s[mid]) / 2
    }

    /// Median, 95th percentile and maximum of `values`, with the count.
    public static func summary(_ values: [Double]) -> Summary? {
        guard let median = median(values), let p95 = percentile(values, 95), let max = values.max() else { return nil }
        return Summary(count: values.count, median: median, p95: p95, max: max)
    }

    /// Median, p95 and max of a list.
    public struct Summary: Sendable, Equatable {
        /// How many values.
        public var count: Int
        /// The median.
        public var median: Double
        /// The 95th percentile (nearest rank).
        public var p95: Double
        /// The largest value.
        public var max: Double
        /// Makes a summary.
        public init(count: Int, median: Double, p95: Double, max: Double) {
            self.count = count; self.median = median; self.p95 = p95; self.max = max
        }
    }
}
