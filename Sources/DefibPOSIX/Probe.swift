import CDefibShims
import DefibCore
import Glibc

/// One probe attempt, driven without blocking like `ControlRequest`: start it, poll `fd` for `pollEvents`,
/// call `readAvailable()` when it is ready until it says `.beat` or `.miss`, or call `timedOut()` when the
/// attempt's time is up. The loop owns the clock; an attempt never reads it.
///
/// Events for the supervision loop: `.beat` is a heartbeat (as a pong is); `.miss(failure)` and `timedOut()`
/// are a failed heartbeat whose `ProbeSpec.missDetail(failure)` is the `cause_detail`.
public protocol ProbeAttempt: AnyObject {
    /// The descriptor to poll.
    var fd: Int32 { get }
    /// What to poll `fd` for now: POLLOUT while connecting or sending, POLLIN after. Read it again after every
    /// `readAvailable()`.
    var pollEvents: Int16 { get }
    /// A child process this attempt reaps itself through its pidfd, which the loop's reaper must spare while the
    /// attempt runs (`reapAll(sparing:)`); nil for network probes and once the attempt is over.
    var sparedPID: Int32? { get }
    /// Advances the attempt. Harmless when nothing is ready (`.pending`); after a verdict it repeats it.
    func readAvailable() -> ProbeProgress
    /// Ends an attempt whose time is up — closes it, kills an exec probe's process group — and says how far it got.
    func timedOut() -> ProbeFailure
    /// Ends the attempt without a verdict (shutdown, the instance is being replaced).
    func cancel()
}

/// A probe ready to run: the spec, the address resolved once at start-up (http, tcp), and the identity an exec
/// probe runs as (the service's: a check never runs with more rights than the service it checks).
///
/// The address is resolved once, not per attempt: getaddrinfo blocks (no descriptor to poll, seconds of
/// resolver timeouts), so per attempt it would stall the supervision loop; and a resolver outage would then
/// look like a hang of a healthy service and get it killed. A probe reaches one service on one host, whose
/// address does not move while defib runs; for a name that does, an exec probe (`curl …`) resolves per attempt.
public struct ResolvedProbe: Sendable {
    /// The probe as configured.
    public let spec: ProbeSpec
    /// Where an http or tcp probe connects (nil for exec).
    public let address: ProbeAddress?
    /// Who an exec probe runs as (the service's identity; nil = defib's).
    public let credentials: ProcessCredentials?

    public init(spec: ProbeSpec, address: ProbeAddress?, credentials: ProcessCredentials?) {
        self.spec = spec; self.address = address; self.credentials = credentials
    }

    /// Resolves the spec's host (http, tcp) — numeric addresses and `localhost` without a lookup — and, for an
    /// exec probe, checks that its program exists in the probe's PATH.
    public static func resolve(_ spec: ProbeSpec, credentials: ProcessCredentials? = nil) throws(ProbeSetupError) -> ResolvedProbe {
        switch spec.target {
        case let .http(t): return ResolvedProbe(spec: spec, address: try ProbeAddress.resolve(host: t.host, port: t.port), credentials: nil)
        case let .tcp(host, port): return ResolvedProbe(spec: spec, address: try ProbeAddress.resolve(host: host, port: port), credentials: nil)
        case let .exec(argv):
            guard resolveExecutable(argv[0], path: ExecProbe.searchPath) != nil else {
                throw ProbeSetupError("exec probe: \(argv[0]) not found" + (argv[0].contains("/") ? "" : " in \(ExecProbe.searchPath)")
                                      + " or not executable")
            }
            return ResolvedProbe(spec: spec, address: nil, credentials: credentials)
        }
    }

    /// Starts one attempt. A failure to even start (no socket, refused at once, exec failed) is a miss too.
    public func start() -> Result<any ProbeAttempt, ProbeFailure> {
        switch spec.target {
        case .http(let target):
            guard let address else { return .failure(.couldNotStart("no resolved address")) }
            return HTTPProbe.start(address: address, target: target, expectStatus: spec.expectStatus, expectBody: spec.expectBody,
                                   timeoutMs: spec.timeoutMs)
                .map { $0 as any ProbeAttempt }
        case .tcp:
            guard let address else { return .failure(.couldNotStart("no resolved address")) }
            return TCPProbe.start(address: address, send: spec.send, expectPrefix: spec.expectPrefix, timeoutMs: spec.timeoutMs).map { $0 as any ProbeAttempt }
        case let .exec(argv):
            return ExecProbe.start(argv: argv, credentials: credentials, timeoutMs: spec.timeoutMs).map { $0 as any ProbeAttempt }
        }
    }

    /// One attempt, blocking for at most the probe timeout (plus, for an exec probe, a short wait to reap the
    /// killed command). For `check-config`-style checks and tests; the supervisor polls attempts instead.
    public func runOnce() -> ProbeProgress {
        let attempt: any ProbeAttempt
        switch start() {
        case let .failure(f): return .miss(f)
        case let .success(a): attempt = a
        }
        let deadline = monotonicNanoseconds() + Int64(spec.timeoutMs) * 1_000_000
        while true {
            let progress = attempt.readAvailable()
            if progress != .pending { return progress }
            let left = (deadline - monotonicNanoseconds()) / 1_000_000
            if left <= 0 {
                let failure = attempt.timedOut()
                (attempt as? ExecProbe)?.awaitReaped(timeoutMs: 2000)
                return .miss(failure)
            }
            var pfd = pollfd(fd: attempt.fd, events: attempt.pollEvents, revents: 0)
            _ = poll(&pfd, 1, Int32(min(left, 1000)))
        }
    }
}

/// A numeric socket address (IPv4 or IPv6) a probe connects to.
public struct ProbeAddress: Sendable, Equatable, CustomStringConvertible {
    /// AF_INET or AF_INET6.
    public let family: Int32
    /// The sockaddr_in or sockaddr_in6, as bytes.
    public let storage: [UInt8]
    /// "127.0.0.1:8080", "[::1]:8080".
    public let description: String

    /// The address of `host`: an IPv4 or IPv6 literal as is, `localhost` as 127.0.0.1 (the address servers bind
    /// by default), any other name through getaddrinfo, once.
    public static func resolve(host: String, port: Int) throws(ProbeSetupError) -> ProbeAddress {
        let literal = host == "localhost" ? "127.0.0.1" : host
        if let a = ipv4(literal, port: port) ?? ipv6(literal, port: port) { return a }
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(host, String(port), &hints, &list)
        guard rc == 0, let first = list else {
            throw ProbeSetupError("cannot resolve \"\(host)\": \(String(cString: gai_strerror(rc)))")
        }
        defer { freeaddrinfo(list) }
        var node: UnsafeMutablePointer<addrinfo>? = first
        while let n = node {
            if let sa = n.pointee.ai_addr, n.pointee.ai_family == AF_INET || n.pointee.ai_family == AF_INET6 {
                let bytes = Array(UnsafeRawBufferPointer(start: sa, count: Int(n.pointee.ai_addrlen)))
                var text = [CChar](repeating: 0, count: 64)
                var hostText = ""
                if getnameinfo(sa, n.pointee.ai_addrlen, &text, socklen_t(text.count), nil, 0, NI_NUMERICHOST) == 0 {
                    hostText = String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
                }
                let shown = n.pointee.ai_family == AF_INET6 ? "[\(hostText)]:\(port)" : "\(hostText):\(port)"
                return ProbeAddress(family: n.pointee.ai_family, storage: bytes, description: shown)
            }
            node = n.pointee.ai_next
        }
        throw ProbeSetupError("\"\(host)\" has no IPv4 or IPv6 address")
    }

    static func ipv4(_ host: String, port: Int) -> ProbeAddress? {
        var sin = sockaddr_in()
        guard inet_pton(AF_INET, host, &sin.sin_addr) == 1 else { return nil }
        sin.sin_family = sa_family_t(AF_INET)
        sin.sin_port = in_port_t(UInt16(port).bigEndian)
        return ProbeAddress(family: AF_INET, storage: withUnsafeBytes(of: sin) { Array($0) }, description: "\(host):\(port)")
    }

    static func ipv6(_ host: String, port: Int) -> ProbeAddress? {
        var sin6 = sockaddr_in6()
        guard inet_pton(AF_INET6, host, &sin6.sin6_addr) == 1 else { return nil }
        sin6.sin6_family = sa_family_t(AF_INET6)
        sin6.sin6_port = in_port_t(UInt16(port).bigEndian)
        return ProbeAddress(family: AF_INET6, storage: withUnsafeBytes(of: sin6) { Array($0) }, description: "[\(host)]:\(port)")
    }
}

/// A probe that cannot be set up at start-up (a name that does not resolve, a program that does not exist).
public struct ProbeSetupError: Error, Sendable, Equatable, CustomStringConvertible {
    /// What cannot be set up, in words.
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// What the HTTP and TCP probes share: one connection in stages — connect, send, receive — that ends in a verdict,
/// and how a verdict, a timeout or a cancel closes it. Each probe says what it sends and what it waits for.
public class SocketProbe {
    enum Stage { case connecting, sending, receiving, done(ProbeProgress) }

    let connection: ProbeConnection
    let address: ProbeAddress
    /// The limit the loop enforces, named in a timeout's detail.
    let timeoutMs: Int
    var stage: Stage = .connecting

    init(connection: ProbeConnection, address: ProbeAddress, timeoutMs: Int) {
        self.connection = connection; self.address = address; self.timeoutMs = timeoutMs
    }

    public var fd: Int32 { connection.fd }
    public var sparedPID: Int32? { nil }

    public var pollEvents: Int16 {
        switch stage {
        case .connecting, .sending: Int16(POLLOUT)
        case .receiving, .done: Int16(POLLIN)
        }
    }

    /// "sending the request to 127.0.0.1:80": what a timeout while sending names.
    var sendingDetail: String { "sending to \(address)" }
    /// What the probe was waiting for when its time ran out while receiving.
    var receivingDetail: String { "waiting for a reply (connected)" }

    public func timedOut() -> ProbeFailure {
        if case let .done(.miss(f)) = stage { return f }
        let detail: String
        switch stage {
        case .connecting: detail = "connecting to \(address) (no handshake: host down or port filtered?)"
        case .sending: detail = "\(sendingDetail) (connected; the server does not read)"
        case .receiving: detail = receivingDetail
        case .done: detail = "after the verdict"
        }
        return finish(.miss(.timedOut(afterMs: timeoutMs, stage: detail))).failure!
    }

    public func cancel() {
        if case .done = stage { return }
        _ = finish(.miss(.couldNotStart("cancelled")))
    }

    func finish(_ verdict: ProbeProgress) -> ProbeProgress {
        stage = .done(verdict)
        connection.close()
        return verdict
    }
}

private extension ProbeProgress {
    var failure: ProbeFailure? { if case let .miss(f) = self { f } else { nil } }
}

/// A non-blocking TCP connection for the network probes: connect, send, receive, with errors named as
/// probe failures.
final class ProbeConnection {
    let fd: Int32
    private(set) var connected = false
    private var closed = false

    private init(fd: Int32) { self.fd = fd }
    deinit { close() }

    /// A socket and a non-blocking connect to `address`: in progress, or already refused.
    static func open(_ address: ProbeAddress) -> Result<ProbeConnection, ProbeFailure> {
        let fd = socket(address.family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        if fd < 0 { return .failure(.couldNotStart(SystemError("socket").description)) }
        let connection = ProbeConnection(fd: fd)
        var one: Int32 = 1
        _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        let rc = address.storage.withUnsafeBytes { raw in
            connect(fd, raw.baseAddress!.assumingMemoryBound(to: sockaddr.self), socklen_t(raw.count))
        }
        if rc == 0 { connection.connected = true; return .success(connection) }
        let e = errno
        if e == EINPROGRESS || e == EINTR { return .success(connection) }
        connection.close()
        return .failure(connectFailure(e, address: address))
    }

    static func connectFailure(_ e: Int32, address: ProbeAddress) -> ProbeFailure {
        switch e {
        case ECONNREFUSED: return .refused
        case ECONNRESET: return .reset(stage: "while connecting")
        default: return .connectFailed(SystemError("connect(\(address))", errno: e).description)
        }
    }

    /// Whether a connect in progress has finished: nil while it goes on, else the failure or success.
    func finishConnect(_ address: ProbeAddress) -> Result<Void, ProbeFailure>? {
        if connected { return .success(()) }
        var pfd = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
        guard poll(&pfd, 1, 0) > 0 else { return nil }
        var err: Int32 = 0
        var len = socklen_t(MemoryLayout<Int32>.size)
        if getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 { err = errno }
        if err != 0 { return .failure(ProbeConnection.connectFailure(err, address: address)) }
        connected = true
        return .success(())
    }

    /// Sends from `bytes[offset...]`; returns the new offset, or the failure.
    func send(_ bytes: [UInt8], from offset: Int, stage: String) -> Result<Int, ProbeFailure> {
        var offset = offset
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + offset, $0.count - offset, Int32(MSG_NOSIGNAL)) }
            if n > 0 { offset += n; continue }
            if errno == EINTR { continue }
            if errno == EAGAIN { return .success(offset) }
            if errno == EPIPE || errno == ECONNRESET { return .failure(.reset(stage: stage)) }
            return .failure(.connectFailed(SystemError("send").description))
        }
        return .success(offset)
    }

    enum Received { case data([UInt8]), end, wouldBlock, failed(Int32) }

    /// One recv of at most `max` bytes.
    func receive(max: Int) -> Received {
        var chunk = [UInt8](repeating: 0, count: Swift.max(1, Swift.min(max, 16384)))
        while true {
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n > 0 { return .data(Array(chunk[0..<n])) }
            if n == 0 { return .end }
            if errno == EINTR { continue }
            if errno == EAGAIN { return .wouldBlock }
            return .failed(errno)
        }
    }

    func close() {
        if !closed { closed = true; Glibc.close(fd) }
    }
}
