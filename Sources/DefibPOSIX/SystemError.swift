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

/// Creates `path` and its missing parents, the last one with `mode`, or checks the existing one — through
/// `SafeDirectory`: never following a link to it, never changing the mode or owner of a directory defib did
/// not create, and refusing one that is not defib's own or that others may write (`UnsafeDirectoryError`).
public func makeDirectory(_ path: String, mode: mode_t) throws {
    _ = try SafeDirectory.open(path, mode: mode, create: true, role: "directory")
}

/// The monotonic clock, in nanoseconds.
public func monotonicNanoseconds() -> Int64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
}
