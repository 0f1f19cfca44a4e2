import CDefibShims
import DefibSystem
import Glibc

// The proxy's few direct syscalls (NIO does the sockets), each turned into an error naming the call.

/// Reads a whole (small) file.
func readWholeFile(_ path: String) throws(SystemError) -> String {
    let fd = retryingEINTR { open(path, O_RDONLY | O_CLOEXEC) }
    if fd < 0 { throw SystemError("open(\(path))") }
    defer { close(fd) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = chunk.withUnsafeMutableBytes { buf in retryingEINTR { read(fd, buf.baseAddress, buf.count) } }
        if n < 0 { throw SystemError("read(\(path))") }
        if n == 0 { break }
        bytes += chunk[0..<n]
    }
    return String(decoding: bytes, as: UTF8.self)
}

/// Creates `path` as a 0700 directory if it does not exist (parents too); an existing one is left as is.
func makePrivateDirectory(_ path: String) throws(SystemError) {
    var st = stat()
    if stat(path, &st) == 0 {
        if st.st_mode & S_IFMT != S_IFDIR { throw SystemError("mkdir(\(path))", errno: ENOTDIR) }
        return
    }
    let parent = parentDirectory(path)
    if parent != path && !parent.isEmpty { try makePrivateDirectory(parent) }
    if mkdir(path, 0o700) != 0 && errno != EEXIST { throw SystemError("mkdir(\(path), 0700)") }
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

/// Sleeps the calling thread for `ns` nanoseconds (resuming after signals).
func sleepNanoseconds(_ ns: UInt64) {
    var req = timespec(tv_sec: Int(ns / 1_000_000_000), tv_nsec: Int(ns % 1_000_000_000))
    var rem = timespec()
    while nanosleep(&req, &rem) != 0 && errno == EINTR { req = rem }
}
