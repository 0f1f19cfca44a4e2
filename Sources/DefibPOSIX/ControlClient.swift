import CDefibShims
import Glibc

/// One request on a service's control channel (a Unix stream socket, one line out, one line back),
/// driven without blocking so the supervisor's loop can poll it next to everything else.
public final class ControlRequest {
    public enum Progress: Equatable {
        case pending
        case reply(String)
        case failed(String)
    }

    public let fd: Int32
    public let line: String
    /// The longest reply accepted: past it (without a newline) the reply is "unexpected" at once.
    public let maxReplyBytes: Int
    private var buffer: [UInt8] = []
    private var closed = false
    /// Bytes received so far, and bytes ever searched for the newline (each byte once: tests check it).
    private(set) var bytesReceived = 0
    private(set) var bytesScanned = 0

    /// What a heartbeat reply may take: `pong TOKEN` is a few dozen bytes, so a few KiB is generous, and a
    /// peer streaming megabytes without a newline is named at once instead of being read to the end.
    public static let defaultMaxReplyBytes = 4096
    /// For one-shot requests whose replies are documents (`defib ctl locks`, `stats`, `help`).
    public static let largeReplyBytes = 1 << 20

    /// Whether something listens on the socket at `path` (it connects, or its backlog is full), without
    /// sending anything. A socket file left by a process that is gone refuses.
    public static func accepts(path: String) -> Bool {
        switch connected(path: path) {
        case let .success(fd): Glibc.close(fd); return true
        case let .failure(e): return e.problem.hasPrefix("listen backlog full")
        }
    }

    /// Connects and sends `line`. Connection errors are reported as a failed request, named for an operator.
    /// A reply longer than `maxReplyBytes` fails as soon as that many bytes came without a newline.
    /// With `noFollow`, `path` must be the socket itself, not a link to one: the supervisor connects as root
    /// into a directory another user's service can write, which must not be able to point it at another socket.
    public static func start(path: String, line: String, maxReplyBytes: Int = defaultMaxReplyBytes,
                             noFollow: Bool = false) -> Result<ControlRequest, ControlError> {
        let fd: Int32
        switch noFollow ? connectedWithoutFollowing(path: path) : connected(path: path) {
        case let .success(f): fd = f
        case let .failure(e): return .failure(e)
        }
        let request = ControlRequest(fd: fd, line: line, maxReplyBytes: max(16, maxReplyBytes))
        let out = Array((line + "\n").utf8)
        let written = out.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        if written != out.count {
            let problem = written < 0 ? SystemError("send").description : "short write"
            request.close()
            return .failure(ControlError(path: path, problem: problem))
        }
        return .success(request)
    }

    /// `connected(path:)` to the socket file itself: its last component is opened with O_PATH|O_NOFOLLOW and
    /// must be a socket, and the connection goes through /proc/self/fd/N, that very inode — a link put there,
    /// or swapped in between the check and the connect, is never followed.
    static func connectedWithoutFollowing(path: String) -> Result<Int32, ControlError> {
        let pathFD = Glibc.open(path, defib_o_path() | O_NOFOLLOW | O_CLOEXEC)
        guard pathFD >= 0 else {
            let e = errno
            return .failure(ControlError(path: path, problem: e == ENOENT ? "no control socket (nothing listening yet)" : SystemError("open", errno: e).description))
        }
        defer { Glibc.close(pathFD) }
        var st = stat()
        guard fstat(pathFD, &st) == 0, (st.st_mode & S_IFMT) == S_IFSOCK else {
            return .failure(ControlError(path: path, problem: (st.st_mode & S_IFMT) == S_IFLNK
                ? "is a symbolic link, not the service's socket: not followed" : "is not a socket"))
        }
        switch connected(path: "/proc/self/fd/\(pathFD)") {
        case let .success(fd): return .success(fd)
        case let .failure(e): return .failure(ControlError(path: path, problem: e.problem))
        }
    }

    /// A non-blocking stream socket connected to `path`.
    static func connected(path: String) -> Result<Int32, ControlError> {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        if fd < 0 { return .failure(ControlError(path: path, problem: SystemError("socket(AF_UNIX)").description)) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else {
            Glibc.close(fd)
            return .failure(ControlError(path: path, problem: "socket path longer than \(MemoryLayout.size(ofValue: addr.sun_path) - 1) bytes"))
        }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in bytes.enumerated() { raw[i] = b }
        }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        if rc != 0 {
            let e = errno
            Glibc.close(fd)
            let problem: String
            switch e {
            case ENOENT: problem = "no control socket (nothing listening yet)"
            case ECONNREFUSED: problem = "connection refused (nobody accepting)"
            case EAGAIN: problem = "listen backlog full (nobody accepting)"
            case EACCES, EPERM:
                // The service made the socket (as its own user, with its own mode); defib reaches it as root through
                // CAP_DAC_OVERRIDE, which a unit's CapabilityBoundingSet= may have taken away.
                problem = "permission denied (\(SystemError("connect", errno: e))): the socket's owner or mode keeps defib out; "
                    + "defib needs write permission on it, or CAP_DAC_OVERRIDE when the service runs as another user"
            default: problem = SystemError("connect", errno: e).description
            }
            return .failure(ControlError(path: path, problem: problem))
        }
        return .success(fd)
    }

    private init(fd: Int32, line: String, maxReplyBytes: Int) { self.fd = fd; self.line = line; self.maxReplyBytes = maxReplyBytes }
    deinit { close() }

    /// Reads what is available. Call when `fd` polls readable. Linear and bounded: each byte received is
    /// searched for the newline once, and no call reads more than `maxReplyBytes` + one chunk, so a peer
    /// that floods the socket costs one short call, never the loop's time.
    public func readAvailable() -> Progress {
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            // Never ask for more than can still be accepted (plus one byte, to see that the limit is passed).
            let room = min(chunk.count, maxReplyBytes + 1 - buffer.count)
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, room, 0) }
            if n > 0 {
                bytesReceived += n
                bytesScanned += n
                if let nl = chunk[0..<n].firstIndex(of: 10) {
                    buffer += chunk[0..<nl]
                    let reply = String(decoding: buffer, as: UTF8.self)
                    return .reply(reply.hasSuffix("\r") ? String(reply.dropLast()) : reply)
                }
                buffer += chunk[0..<n]
                if buffer.count > maxReplyBytes {
                    let shown = String(decoding: buffer.prefix(60), as: UTF8.self).map { $0.isASCII && !$0.isNewline ? $0 : "?" }
                    return .failed("unexpected reply: more than \(maxReplyBytes) bytes without a newline ('\(String(shown))…')")
                }
                continue
            }
            if n == 0 {
                return .failed(buffer.isEmpty ? "connection closed without a reply"
                                              : "connection closed mid-reply: '\(String(decoding: buffer.prefix(80), as: UTF8.self))'")
            }
            if errno == EAGAIN || errno == EINTR { return .pending }
            return .failed(SystemError("recv").description)
        }
    }

    public func close() {
        if !closed { closed = true; Glibc.close(fd) }
    }

    /// Blocking convenience for one-shot requests (`defib ctl`): waits at most `timeoutMs`.
    public static func roundTrip(path: String, line: String, timeoutMs: Int, maxReplyBytes: Int = largeReplyBytes) -> Result<String, ControlError> {
        switch start(path: path, line: line, maxReplyBytes: maxReplyBytes) {
        case let .failure(e): return .failure(e)
        case let .success(request):
            defer { request.close() }
            let deadline = monotonicNanoseconds() + Int64(timeoutMs) * 1_000_000
            while true {
                let left = (deadline - monotonicNanoseconds()) / 1_000_000
                if left <= 0 { return .failure(ControlError(path: path, problem: "no reply to '\(line)' within \(timeoutMs) ms")) }
                var pfd = pollfd(fd: request.fd, events: Int16(POLLIN), revents: 0)
                _ = poll(&pfd, 1, Int32(left))
                switch request.readAvailable() {
                case .pending: continue
                case let .reply(r): return .success(r)
                case let .failed(p): return .failure(ControlError(path: path, problem: p))
                }
            }
        }
    }
}

/// A control-channel problem, naming the socket.
public struct ControlError: Error, CustomStringConvertible, Sendable, Equatable {
    public var path: String
    public var problem: String
    public var description: String { "control channel \(path): \(problem)" }
}
