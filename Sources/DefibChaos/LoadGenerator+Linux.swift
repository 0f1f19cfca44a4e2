import Foundation
import Glibc
import Synchronization

/// An open-loop HTTP load on loopback: request i is due at start + i/rate whether or not earlier ones
/// have answered, each on its own connection (so a refusal is seen as one), all from one thread
/// multiplexing non-blocking sockets with poll(2). Bounded in count and time.
public final class LoadGenerator: @unchecked Sendable {
    /// What to send and how fast.
    public struct Configuration: Sendable {
        /// The proxy's port on 127.0.0.1.
        public var port: Int
        /// The Host header (the proxy routes by it).
        public var host: String
        /// The request path.
        public var path: String = "/"
        /// Requests per second.
        public var ratePerSecond: Double
        /// A request with no complete response after this long (from its due time) is a timeout.
        public var timeoutMs: Double
        /// At most this many requests …
        public var maxRequests: Int = 1_000_000
        /// … and none due after this long.
        public var maxDurationMs: Double = 3_600_000
        /// Requests open at once; a request due while this many are open counts as failed (the generator
        /// would otherwise run out of descriptors and stop being open-loop).
        public var maxInFlight: Int = 4000
        /// Makes a configuration.
        public init(port: Int, host: String, ratePerSecond: Double, timeoutMs: Double) {
            self.port = port; self.host = host; self.ratePerSecond = ratePerSecond; self.timeoutMs = timeoutMs
        }
    }

    private struct Shared {
        var samples: [RequestSample] = []
        var stopAtUnixMs: Double?
        var drainUntilUnixMs: Double?
        var finished = false
    }

    private struct Connection {
        var fd: Int32
        var scheduled: Double
        var connected: Bool
        var sent: Int
        var received: [UInt8]
    }

    private let config: Configuration
    private let request: [UInt8]
    private let shared = Mutex(Shared())
    private let done = DispatchSemaphore(value: 0)
    /// When the first request was due (Unix ms).
    public let startUnixMs: Double

    private init(_ config: Configuration) {
        self.config = config
        request = Array("GET \(config.path) HTTP/1.1\r\nHost: \(config.host)\r\nUser-Agent: defib-chaos\r\nConnection: close\r\n\r\n".utf8)
        startUnixMs = ChaosClock.nowUnixMs()
    }

    /// Starts sending at once, on a thread of its own.
    public static func start(_ config: Configuration) -> LoadGenerator {
        raiseDescriptorLimit()
        let g = LoadGenerator(config)
        let thread = Thread { g.loop() }
        thread.name = "chaos-load"
        thread.start()
        return g
    }

    /// The earliest completion time of a successful request that completed at or after `unixMs`.
    public func firstSuccess(completedAtOrAfter unixMs: Double) -> Double? {
        shared.withLock { s in s.samples.lazy.filter { $0.outcome == .ok && $0.completedUnixMs >= unixMs }.map(\.completedUnixMs).min() }
    }

    /// Requests finished so far.
    public var completedCount: Int { shared.withLock { $0.samples.count } }

    /// Stops issuing requests, gives the open ones up to `drainMs` to finish (the rest count as timeouts),
    /// and returns every request in the order they were due.
    public func stop(drainMs: Double) -> [RequestSample] {
        let now = ChaosClock.nowUnixMs()
        shared.withLock { $0.stopAtUnixMs = now; $0.drainUntilUnixMs = now + drainMs }
        done.wait()
        return shared.withLock { $0.samples }.sorted { $0.scheduledUnixMs < $1.scheduledUnixMs }
    }

    private func record(_ c: Connection, _ outcome: RequestOutcome, status: Int = 0, at now: Double) {
        let sample = RequestSample(scheduledUnixMs: c.scheduled, latencyMs: max(0, now - c.scheduled), outcome: outcome, status: status)
        shared.withLock { $0.samples.append(sample) }
    }

    private func loop() {
        defer { done.signal() }
        let period = 1000 / max(config.ratePerSecond, 0.001)
        var open: [Connection] = []
        var next = 0
        while true {
            var now = ChaosClock.nowUnixMs()
            let (stopAt, drainUntil) = shared.withLock { ($0.stopAtUnixMs, $0.drainUntilUnixMs) }
            // Issue everything that is due (catching up at once if the thread fell behind: open loop).
            while next < config.maxRequests {
                let due = startUnixMs + Double(next) * period
                if due > now || due - startUnixMs > config.maxDurationMs { break }
                if let stopAt, due > stopAt { break }
                next += 1
                if open.count >= config.maxInFlight {
                    record(Connection(fd: -1, scheduled: due, connected: false, sent: 0, received: []), .failed, at: now)
                    continue
                }
                if let c = connect(scheduled: due, now: now) { open.append(c) }
            }
            if let drainUntil, open.isEmpty || now >= drainUntil {
                for c in open { close(c.fd); record(c, .timedOut, at: now) }
                return
            }
            if stopAt == nil && open.isEmpty && (next >= config.maxRequests || startUnixMs + Double(next) * period - startUnixMs > config.maxDurationMs) {
                // Bounds reached: wait for stop() without spinning.
                ChaosClock.sleep(ms: 5)
                continue
            }
            var fds = open.map { pollfd(fd: $0.fd, events: Int16($0.connected && $0.sent == request.count ? POLLIN : POLLOUT), revents: 0) }
            let untilNext = startUnixMs + Double(next) * period - now
            let wait = Int32(max(0, min(10, untilNext.rounded(.up))))
            _ = fds.withUnsafeMutableBufferPointer { poll($0.baseAddress, nfds_t($0.count), wait) }
            now = ChaosClock.nowUnixMs()
            var keep: [Connection] = []
            keep.reserveCapacity(open.count)
            for (i, var c) in open.enumerated() {
                if fds[i].revents != 0 {
                    if let (outcome, status) = advance(&c) {
                        close(c.fd)
                        record(c, outcome, status: status, at: now)
                        continue
                    }
                }
                if now - c.scheduled >= config.timeoutMs {
                    close(c.fd)
                    record(c, .timedOut, at: now)
                    continue
                }
                keep.append(c)
            }
            open = keep
        }
    }

    private func connect(scheduled: Double, now: Double) -> Connection? {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else {
            record(Connection(fd: -1, scheduled: scheduled, connected: false, sent: 0, received: []), .failed, at: now)
            return nil
        }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = UInt16(config.port).bigEndian
        let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        var c = Connection(fd: fd, scheduled: scheduled, connected: rc == 0, sent: 0, received: [])
        if rc != 0 && errno != EINPROGRESS {
            let e = errno
            close(fd)
            c.fd = -1
            record(c, e == ECONNREFUSED ? .refused : .failed, at: now)
            return nil
        }
        return c
    }

    /// Moves a connection on after poll said it is ready; returns the outcome once it is finished.
    private func advance(_ c: inout Connection) -> (RequestOutcome, Int)? {
        if !c.connected {
            var err: Int32 = 0
            var len = socklen_t(MemoryLayout<Int32>.size)
            getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &err, &len)
            if err == ECONNREFUSED { return (.refused, 0) }
            if err != 0 { return (.failed, 0) }
            c.connected = true
        }
        if c.sent < request.count {
            let n = request.withUnsafeBytes { send(c.fd, $0.baseAddress! + c.sent, request.count - c.sent, Int32(MSG_NOSIGNAL)) }
            if n < 0 { return errno == EAGAIN ? nil : (.failed, 0) }
            c.sent += n
            return nil
        }
        var buf = [UInt8](repeating: 0, count: 16384)
        while true {
            let n = recv(c.fd, &buf, buf.count, 0)
            if n > 0 {
                c.received += buf[0..<n]
                if let verdict = Self.complete(c.received) { return verdict }
                if c.received.count > 1 << 20 { return (.failed, 0) }
                continue
            }
            if n == 0 { return Self.completeAtEOF(c.received) ?? (.failed, Self.status(c.received)) }
            return errno == EAGAIN ? nil : (.failed, Self.status(c.received))
        }
    }

    /// (outcome, status) once `bytes` hold a whole response (headers and Content-Length bytes of body).
    static func complete(_ bytes: [UInt8]) -> (RequestOutcome, Int)? {
        guard let end = headerEnd(bytes) else { return nil }
        let head = String(decoding: bytes[0..<end], as: UTF8.self)
        let status = Self.status(bytes)
        var length: Int?
        for line in head.split(separator: "\r\n").dropFirst() {
            let parts = line.split(separator: ":", maxSplits: 1)
            if parts.count == 2, parts[0].lowercased() == "content-length" { length = Int(parts[1].trimmingCharacters(in: .whitespaces)) }
        }
        guard let length else { return nil }   // close-delimited: complete at EOF
        guard bytes.count - (end + 4) >= length else { return nil }
        return (status == 200 ? .ok : .failed, status)
    }

    /// At end of stream: a close-delimited response is complete; one with a Content-Length is complete only
    /// when the body is all there (a shorter one is a failure).
    static func completeAtEOF(_ bytes: [UInt8]) -> (RequestOutcome, Int)? {
        if let done = complete(bytes) { return done }
        guard let end = headerEnd(bytes) else { return nil }
        let head = String(decoding: bytes[0..<end], as: UTF8.self).lowercased()
        if head.contains("\r\ncontent-length:") { return (.failed, status(bytes)) }
        let s = status(bytes)
        return (s == 200 ? .ok : .failed, s)
    }

    static func headerEnd(_ b: [UInt8]) -> Int? {
        guard b.count >= 4 else { return nil }
        for i in 0...(b.count - 4) where b[i] == 13 && b[i + 1] == 10 && b[i + 2] == 13 && b[i + 3] == 10 { return i }
        return nil
    }

    static func status(_ b: [UInt8]) -> Int {
        let line = String(decoding: b.prefix(32), as: UTF8.self)
        guard line.hasPrefix("HTTP/1."), line.count >= 12 else { return 0 }
        return Int(line.dropFirst(9).prefix(3)) ?? 0
    }

    private static func raiseDescriptorLimit() {
        var lim = rlimit()
        if getrlimit(Int32(RLIMIT_NOFILE.rawValue), &lim) == 0, lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = min(lim.rlim_max, 65536)
            setrlimit(Int32(RLIMIT_NOFILE.rawValue), &lim)
        }
    }
}
