import DefibSystem
import Synchronization

/// The proxy's counters: relaxed atomics, bumped on the hot path without a lock.
public final class ProxyStats: Sendable {
    /// Requests answered with a backend's response or by `/healthz`.
    public let requestsServed = Atomic<Int>(0)
    /// Requests the proxy answered with an error of its own (400, 404, 413, 502).
    public let requestsFailed = Atomic<Int>(0)
    /// Catalog updates applied (including no-ops).
    public let updatesApplied = Atomic<Int>(0)
    /// `tryWrite(for:)` attempts that timed out (each retry counts).
    public let updatesTimedOut = Atomic<Int>(0)
    /// Updates that made no sense against the table (e.g. `down` of an unknown machine).
    public let updatesRejected = Atomic<Int>(0)
    /// Updates dropped because the queue was full (the updater is stuck).
    public let updatesDropped = Atomic<Int>(0)
    /// Full reloads completed.
    public let reloads = Atomic<Int>(0)
    /// Monotonic start time, for uptime.
    public let startedAtNs: Int64

    /// Counters starting at zero now.
    public init() { startedAtNs = monotonicNanoseconds() }

    @inline(__always) func served() { requestsServed.wrappingAdd(1, ordering: .relaxed) }
    @inline(__always) func failed() { requestsFailed.wrappingAdd(1, ordering: .relaxed) }
}

/// A tiny JSON writer for the control channel's one-line replies (fixed key order, no Foundation).
struct JSONLine {
    private(set) var text = "{"
    private var first = true

    private mutating func key(_ k: String) {
        if !first { text += "," }
        first = false
        text += "\"\(k)\":"
    }
    mutating func add(_ k: String, _ v: Int) { key(k); text += String(v) }
    mutating func add(_ k: String, _ v: Int64) { key(k); text += String(v) }
    mutating func add(_ k: String, _ v: UInt64) { key(k); text += String(v) }
    mutating func add(_ k: String, _ v: String?) { key(k); text += v.map(Self.quoted) ?? "null" }
    mutating func add(_ k: String, raw: String) { key(k); text += raw }
    mutating func add(_ k: String, _ v: Int64?) { key(k); text += v.map { String($0) } ?? "null" }
    var closed: String { text + "}" }

    static func quoted(_ s: String) -> String {
        var out = "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where u.value < 0x20:
                let hex = String(u.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: out.unicodeScalars.append(u)
            }
        }
        return out + "\""
    }
}
