import CDefibShims
import CSystemd
import DefibCore
import Glibc
import Synchronization

/// defib as a systemd service: sd_notify(3) to the service manager that started us (`Type=notify`).
/// Every call is a no-op when NOTIFY_SOCKET is not set, so the same binary runs anywhere.
public enum SystemdNotifier {
    /// Whether a service manager listens (NOTIFY_SOCKET is set).
    public static var isEnabled: Bool { getenv("NOTIFY_SOCKET") != nil }

    /// Sends `state` ("READY=1\nSTATUS=…"). False when nobody listens or the send failed.
    @discardableResult
    public static func notify(_ state: String) -> Bool { sd_notify(0, state) > 0 }

    /// The keep-alive period the manager expects (WATCHDOG_USEC, if WATCHDOG_PID is us), in µs; nil when off.
    public static func watchdogUsec() -> UInt64? {
        var usec: UInt64 = 0
        return sd_watchdog_enabled(0, &usec) > 0 && usec > 0 ? usec : nil
    }
}

/// Keeps systemd's watchdog fed from a helper thread while the supervisor's loop is busy with one bounded
/// action (writing a core within its budget): the loop is not wedged, it is doing what it decided, and the
/// helper stops by itself at `untilNs` so a capture that overruns its budget still lets the watchdog fire.
public final class BoundedKeepAlive: @unchecked Sendable {
    private final class Shared: @unchecked Sendable {
        let done = Atomic<Bool>(false)
        let periodNs: Int64, untilNs: Int64
        let send: @Sendable () -> Void
        init(periodNs: Int64, untilNs: Int64, send: @escaping @Sendable () -> Void) {
            self.periodNs = periodNs; self.untilNs = untilNs; self.send = send
        }
        var isDone: Bool { done.load(ordering: .acquiring) }
        func run() {
            while monotonicNanoseconds() < untilNs, !isDone {
                send()
                let wakeAt = min(monotonicNanoseconds() + periodNs, untilNs)
                // Short steps, so finish() is noticed quickly.
                while !isDone, case let left = wakeAt - monotonicNanoseconds(), left > 0 {
                    usleep(UInt32(min(10_000_000, left) / 1000))
                }
            }
        }
    }
    private let shared: Shared
    private var thread: pthread_t?

    /// Sends WATCHDOG=1 (or calls `send`) every `periodNs` until `finish()` or the monotonic time `untilNs`.
    public init(periodNs: Int64, untilNs: Int64, send: @escaping @Sendable () -> Void = { SystemdNotifier.notify("WATCHDOG=1") }) {
        shared = Shared(periodNs: max(1_000_000, periodNs), untilNs: untilNs, send: send)
        var t = pthread_t()
        let context = Unmanaged.passRetained(shared).toOpaque()
        let rc = pthread_create(&t, nil, { raw in
            let shared = Unmanaged<Shared>.fromOpaque(raw!).takeRetainedValue()
            shared.run()
            return nil
        }, context)
        if rc == 0 { thread = t } else { Unmanaged<Shared>.fromOpaque(context).release(); thread = nil }
    }

    /// Stops the keep-alives and waits for the helper thread.
    public func finish() {
        shared.done.store(true, ordering: .releasing)
        if let thread { pthread_join(thread, nil); self.thread = nil }
    }
}

/// The NOTIFY_SOCKET the supervisor serves to its child, so any sd_notify-aware program can be
/// supervised unchanged. Datagrams carry their sender's credentials (SO_PASSCRED): the runtime accepts
/// only the child's pid, like systemd's NotifyAccess=main.
public final class NotifyServer {
    /// One datagram.
    public struct Message: Sendable, Equatable {
        public var pid: Int32
        public var text: String
        public var truncated: Bool
    }

    public let path: String
    public let fd: Int32

    /// Binds `path` with `mode`: 0600 keeps it to defib's user; the supervisor serves its child 0666, as systemd
    /// does, and tells senders apart by their pid (SO_PASSCRED).
    public init(path: String, mode: mode_t = 0o600) throws {
        let fd = defib_notify_socket_bind(path)
        if fd < 0 { throw SystemError("bind(AF_UNIX SOCK_DGRAM \(path))") }
        if chmod(path, mode) != 0 { let e = SystemError("chmod(\(path))"); close(fd); throw e }
        self.path = path
        self.fd = fd
    }

    deinit {
        close(fd)
        unlink(path)
    }

    /// Every datagram waiting now (never blocks).
    public func receiveAll(max: Int = 64) -> [Message] {
        var out: [Message] = []
        var buffer = [CChar](repeating: 0, count: 4096)
        while out.count < max {
            var pid: pid_t = 0, uid: uid_t = 0, gid: gid_t = 0
            var truncated: Int32 = 0
            let n = defib_notify_recv(fd, &buffer, buffer.count, &pid, &uid, &gid, &truncated)
            if n <= 0 { break }
            let text = buffer.prefix(n).withUnsafeBufferPointer { String(decoding: UnsafeRawBufferPointer($0), as: UTF8.self) }
            out.append(Message(pid: pid, text: text, truncated: truncated != 0))
        }
        return out
    }
}

/// A listening TCP socket the supervisor binds once and passes to every instance (LISTEN_FDS), so
/// connections that arrive while an instance hangs or restarts wait in the backlog instead of being refused.
public struct ListeningSocket: Sendable {
    public var name: String
    public var address: String
    public var fd: Int32

    public static func bind(name: String, host: String, port: Int, backlog: Int32 = 4096) throws -> ListeningSocket {
        var stage: UnsafePointer<CChar>? = nil
        let fd = defib_listen_tcp(SocketSpec.numericHost(host) ?? host, Int32(port), backlog, &stage)
        let address = host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        if fd < 0 {
            throw SystemError("\(stage.map { String(cString: $0) } ?? "listen")(\(address)) for socket '\(name)'")
        }
        return ListeningSocket(name: name, address: address, fd: fd)
    }
}

/// Structured logging to the journal, like systemd-coredump's entries.
public enum Journald {
    /// Whether our stderr is the journal's stream (JOURNAL_STREAM names stderr's device and inode), i.e.
    /// systemd started us with StandardError=journal.
    public static var stderrIsJournal: Bool {
        guard let env = getenv("JOURNAL_STREAM") else { return false }
        let parts = String(cString: env).split(separator: ":")
        guard parts.count == 2, let dev = UInt64(parts[0]), let ino = UInt64(parts[1]) else { return false }
        var st = stat()
        guard fstat(2, &st) == 0 else { return false }
        return UInt64(st.st_dev) == dev && UInt64(st.st_ino) == ino
    }

    /// Writes straight to fd 2: where a line goes when the journal went away (never lose it).
    public static func writeStandardError(_ text: String) {
        var bytes = Array(text.utf8)
        _ = bytes.withUnsafeMutableBytes { raw in write(2, raw.baseAddress, raw.count) }
    }

    /// Sends one entry; `fields` are (NAME, value) with NAME in the journal's upper-case form.
    @discardableResult
    public static func send(_ fields: [(String, String)]) -> Bool {
        // One contiguous buffer, so every iovec points into memory that lives for the whole call.
        var bytes: [UInt8] = []
        var ranges: [Range<Int>] = []
        for (name, value) in fields {
            let start = bytes.count
            bytes += Array(name.utf8); bytes.append(UInt8(ascii: "=")); bytes += Array(value.utf8)
            ranges.append(start..<bytes.count)
        }
        return bytes.withUnsafeMutableBytes { raw -> Bool in
            var iov = ranges.map { iovec(iov_base: raw.baseAddress! + $0.lowerBound, iov_len: $0.count) }
            return sd_journal_sendv(&iov, Int32(iov.count)) == 0
        }
    }
}
