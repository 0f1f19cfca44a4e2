import CDefibShims
import Glibc

// The proxy's few direct syscalls (NIO does the sockets), each turned into an error naming the call.

/// A failed system call: the call with its arguments and the errno.
public struct SystemCallError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The call, e.g. `open(/etc/routes)`.
    public var call: String
    /// The errno it failed with.
    public var errno: Int32

    /// Captures the current errno for `call`.
    public init(_ call: String, errno: Int32 = Glibc.errno) { self.call = call; self.errno = errno }

    /// "open(/x): No such file or directory".
    public var description: String { "\(call): \(String(cString: strerror(errno)))" }
    var problem: String { description }
}

func retryingEINTR<T: BinaryInteger>(_ body: () -> T) -> T {
    while true {
        let r = body()
        if r >= 0 || errno != EINTR { return r }
    }
}

/// Reads a whole (small) file.
func readWholeFile(_ path: String) throws(SystemCallError) -> String {
    let fd = retryingEINTR { open(path, O_RDONLY | O_CLOEXEC) }
    if fd < 0 { throw SystemCallError("open(\(path))") }
    defer { close(fd) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = chunk.withUnsafeMutableBytes { buf in retryingEINTR { read(fd, buf.baseAddress, buf.count) } }
        if n < 0 { throw SystemCallError("read(\(path))") }
        if n == 0 { break }
        bytes += chunk[0..<n]
    }
    return String(decoding: bytes, as: UTF8.self)
}

/// Creates `path` as a 0700 directory if it does not exist (parents too); an existing one is left as is.
func makePrivateDirectory(_ path: String) throws(SystemCallError) {
    var st = stat()
    if stat(path, &st) == 0 {
        if st.st_mode & S_IFMT != S_IFDIR { throw SystemCallError("mkdir(\(path))", errno: ENOTDIR) }
        return
    }
    let parent = parentDirectory(path)
    if parent != path && !parent.isEmpty { try makePrivateDirectory(parent) }
    if mkdir(path, 0o700) != 0 && errno != EEXIST { throw SystemCallError("mkdir(\(path), 0700)") }
}

func parentDirectory(_ path: String) -> String {
    guard let slash = path.lastIndex(of: "/") else { return "." }
    return slash == path.startIndex ? "/" : String(path[..<slash])
}

/// Largest Unix socket path, excluding the terminating NUL.
let maxUnixSocketPath = MemoryLayout.size(ofValue: sockaddr_un().sun_path) - 1

func setCloseOnExec(_ fd: Int32) {
    let flags = fcntl(fd, F_GETFD)
    if flags >= 0 { _ = fcntl(fd, F_SETFD, flags | FD_CLOEXEC) }
}

/// Current Unix time in milliseconds.
func unixMilliseconds() -> Int64 {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    return Int64(ts.tv_sec) * 1000 + Int64(ts.tv_nsec) / 1_000_000
}

/// Monotonic time in nanoseconds.
func monotonicNanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

/// The value of an environment variable, nil when unset.
func environmentValue(_ name: String) -> String? {
    getenv(name).map { String(cString: $0) }
}

/// Starts a detached pthread running `body`. The proxy's helper threads (updater, churn, faults,
/// ballast) are plain threads on purpose: they block in the lock for real, and show up in a core.
func startThread(name: String, _ body: @escaping @Sendable () -> Void) {
    let box = Unmanaged.passRetained(ThreadBody(body, name)).toOpaque()
    var thread = pthread_t()
    var attr = pthread_attr_t()
    pthread_attr_init(&attr)
    pthread_attr_setdetachstate(&attr, Int32(PTHREAD_CREATE_DETACHED))
    let rc = pthread_create(&thread, &attr, { raw in
        let box = Unmanaged<ThreadBody>.fromOpaque(raw!).takeRetainedValue()
        // Thread names are at most 15 bytes; they label the threads in gdb and /proc.
        _ = defib_proxy_set_thread_name(box.name)
        box.body()
        return nil
    }, box)
    pthread_attr_destroy(&attr)
    precondition(rc == 0, "pthread_create(\(name)): \(String(cString: strerror(rc)))")
}

private final class ThreadBody {
    let body: @Sendable () -> Void
    let name: String
    init(_ body: @escaping @Sendable () -> Void, _ name: String) { self.body = body; self.name = name }
}

/// A pthread mutex + condition (CLOCK_MONOTONIC) for the proxy's plain threads.
final class ThreadCondition: @unchecked Sendable {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let cond = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)

    init() {
        pthread_mutex_init(mutex, nil)
        var attr = pthread_condattr_t()
        pthread_condattr_init(&attr)
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC)
        pthread_cond_init(cond, &attr)
        pthread_condattr_destroy(&attr)
    }

    deinit {
        pthread_cond_destroy(cond); pthread_mutex_destroy(mutex)
        cond.deallocate(); mutex.deallocate()
    }

    /// Runs `body` with the mutex held.
    func locked<R>(_ body: () throws -> R) rethrows -> R {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body()
    }

    /// Waits (mutex held by the caller, inside `locked`) until signalled or `deadlineNs` (monotonic) passes.
    /// Returns false on timeout.
    @discardableResult
    func wait(untilMonotonicNs deadlineNs: UInt64?) -> Bool {
        guard let deadlineNs else { pthread_cond_wait(cond, mutex); return true }
        var ts = timespec(tv_sec: Int(deadlineNs / 1_000_000_000), tv_nsec: Int(deadlineNs % 1_000_000_000))
        return pthread_cond_timedwait(cond, mutex, &ts) != ETIMEDOUT
    }

    /// Wakes every waiter (call inside `locked`).
    func broadcast() { pthread_cond_broadcast(cond) }
}

/// A one-shot flag threads can wait on with a timeout.
final class ThreadEvent: @unchecked Sendable {
    private let condition = ThreadCondition()
    private var isSet = false

    func set() { condition.locked { isSet = true; condition.broadcast() } }

    /// True once set; false if `timeoutNs` passed first.
    func wait(timeoutNs: UInt64) -> Bool {
        let deadline = monotonicNanoseconds() + timeoutNs
        return condition.locked {
            while !isSet { if !condition.wait(untilMonotonicNs: deadline) && !isSet { return false } }
            return true
        }
    }
}

/// Sleeps the calling thread for `ns` nanoseconds (resuming after signals).
func sleepNanoseconds(_ ns: UInt64) {
    var req = timespec(tv_sec: Int(ns / 1_000_000_000), tv_nsec: Int(ns % 1_000_000_000))
    var rem = timespec()
    while nanosleep(&req, &rem) != 0 && errno == EINTR { req = rem }
}
