import Glibc

// The few pieces every part that makes system calls shares (the supervisor's DefibPOSIX, the proxy, the
// lock): one error type naming the call and errno, one EINTR loop, one pair of clocks.

/// A failed system call: which call, on what, and the errno — "ptrace(PTRACE_SEIZE, 4123): Operation not permitted".
public struct SystemError: Error, Equatable, CustomStringConvertible, Sendable {
    /// The call with its arguments, e.g. `open(/etc/routes)`.
    public var call: String
    /// The errno it failed with.
    public var errno: Int32
    /// Captures the current errno for `call`.
    public init(_ call: String, errno: Int32 = Glibc.errno) { self.call = call; self.errno = errno }
    /// strerror(errno).
    public var message: String { String(cString: strerror(errno)) }
    /// "call: message".
    public var description: String { "\(call): \(message)" }
}

/// Repeats `body` while it fails with EINTR.
@inline(__always)
public func retryingEINTR<T: BinaryInteger>(_ body: () -> T) -> T {
    while true {
        let r = body()
        if r >= 0 || errno != EINTR { return r }
    }
}

/// The monotonic clock, in nanoseconds.
public func monotonicNanoseconds() -> Int64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
}

/// The wall clock, in milliseconds since the epoch.
public func unixMilliseconds() -> Int64 {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    return Int64(ts.tv_sec) * 1000 + Int64(ts.tv_nsec) / 1_000_000
}
