import Glibc

/// A failed system call: which call, on what, and the errno — "ptrace(PTRACE_SEIZE, 4123): Operation not permitted".
public struct SystemError: Error, Equatable, CustomStringConvertible, Sendable {
    public var call: String
    public var errno: Int32
    public init(_ call: String, errno: Int32 = Glibc.errno) { self.call = call; self.errno = errno }
    public var message: String { String(cString: strerror(errno)) }
    public var description: String { "\(call): \(message)" }
}

/// Repeats `body` while it fails with EINTR.
@inline(__always)
func retryingEINTR<T: BinaryInteger>(_ body: () -> T) -> T {
    while true {
        let r = body()
        if r >= 0 || errno != EINTR { return r }
    }
}

/// Creates `path` and its parents with `mode` (only the last component gets `mode` enforced).
public func makeDirectory(_ path: String, mode: mode_t) throws {
    var built = path.hasPrefix("/") ? "" : "."
    for part in path.split(separator: "/") {
        built += "/" + part
        if mkdir(built, 0o755) != 0 && errno != EEXIST { throw SystemError("mkdir(\(built))") }
    }
    if chmod(path, mode) != 0 { throw SystemError("chmod(\(path))") }
}

/// The monotonic clock, in nanoseconds.
public func monotonicNanoseconds() -> Int64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
}
