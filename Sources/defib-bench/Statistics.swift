import Foundation

/// Median, minimum and maximum of some measurements. Pure.
struct Spread: Codable, Equatable {
    /// How many values.
    var count: Int
    /// The middle value (the mean of the two middle ones for an even count).
    var median: Double
    /// The smallest value.
    var min: Double
    /// The largest value.
    var max: Double

    /// nil for no values: a median of nothing is not zero.
    init?(_ values: [Double]) {
        guard !values.isEmpty else { return nil }
        let sorted = values.sorted()
        let mid = sorted.count / 2
        count = sorted.count
        median = sorted.count % 2 == 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2
        min = sorted[0]
        max = sorted[sorted.count - 1]
    }
}

/// One target the benchmarks hold the code to, checked against the figures: the report prints PASS or FAIL for each.
struct TargetCheck: Codable, Equatable {
    /// Short stable name ("idle.native-vs-gcore").
    var id: String
    /// The target in words ("idle proxy: native ≥ 20× faster than gcore").
    var target: String
    /// What was measured, in words ("gcore 1180 ms / native 14.2 ms = 83×"), or why nothing could be.
    var measured: String
    /// Whether the target is met. A target that could not be measured does not pass.
    var pass: Bool
}

/// Byte counts as people read them: "512 MiB", "1.13 GiB", "83.2 KiB".
func formatBytes(_ bytes: Int64) -> String {
    let b = Double(bytes)
    if b.magnitude >= 1_073_741_824 { return String(format: "%.2f GiB", b / 1_073_741_824) }
    if b.magnitude >= 1_048_576 { return String(format: "%.1f MiB", b / 1_048_576) }
    if b.magnitude >= 1024 { return String(format: "%.1f KiB", b / 1024) }
    return "\(bytes) B"
}

/// Milliseconds with a precision that suits their size: "0.84 ms", "14.2 ms", "1180 ms".
func formatMs(_ ms: Double) -> String {
    if ms < 10 { return String(format: "%.2f ms", ms) }
    if ms < 100 { return String(format: "%.1f ms", ms) }
    return String(format: "%.0f ms", ms)
}

/// Bytes per second in decimal GB/s or MB/s (the units disk and memory figures are quoted in).
func formatRate(_ bytesPerSecond: Double) -> String {
    if bytesPerSecond >= 1e9 { return String(format: "%.2f GB/s", bytesPerSecond / 1e9) }
    return String(format: "%.0f MB/s", bytesPerSecond / 1e6)
}

/// A ratio such as "83.1×".
func formatRatio(_ r: Double) -> String {
    r >= 100 ? String(format: "%.0f×", r) : String(format: "%.1f×", r)
}
