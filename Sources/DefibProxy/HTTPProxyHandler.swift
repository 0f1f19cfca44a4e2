import Glibc
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix

/// What every connection handler shares, HTTP and control channel alike.
struct ProxyContext: Sendable {
    let catalog: Catalog
    let stats: ProxyStats
    /// Where `fault KIND` arms a fault, and the event loops a dead loop makes spin.
    let faults: FaultInjector
    let group: EventLoopGroup
    /// What `locks` points operators at.
    let flightRecorderPath: String?
    /// Limits on the backend and on a request.
    let connectTimeout: TimeAmount
    let responseTimeout: TimeAmount
    let maxRequestBody: Int
    let logger: Logger
}

// Hop-by-hop headers (RFC 9110 §7.6.1) are never forwarded.
private let hopByHop: Set<String> = ["connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"]

/// One client connection: routes each request by Host under the catalog's read lock (on the event
/// loop, blocking, as in the story), forwards it to a backend over a fresh connection on the same
/// event loop, and relays the response, streaming its body with backpressure.
final class HTTPProxyHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private enum State {
        case idle
        /// Answer with an error of our own once the request has been read.
        case rejecting(HTTPRequestHead, status: HTTPResponseStatus, body: String)
        case healthz(HTTPRequestHead)
        case collecting(HTTPRequestHead, body: ByteBuffer?, target: Target)
        case connecting(HTTPRequestHead, target: Target)
        case awaitingResponse(HTTPRequestHead, target: Target, backend: Channel, timeout: Scheduled<Void>?)
        case relaying(keepAlive: Bool, backend: Channel)
    }

    struct Target {
        var app: String
        var machine: String
        var address: BackendAddress
        var describe: String { "backend \(address) (app \(app), machine \(machine))" }
    }

    private let env: ProxyContext
    private var state = State.idle
    private var context: ChannelHandlerContext!
    private var clientAddress: String?

    init(_ env: ProxyContext) { self.env = env }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        clientAddress = context.channel.remoteAddress?.ipAddress
    }

    func handlerRemoved(context: ChannelHandlerContext) { self.context = nil }

    // MARK: client side

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case let .head(head):
            state = route(head)
        case var .body(chunk):
            guard case .collecting(let head, var body, let target) = state else { return }
            if (body?.readableBytes ?? 0) + chunk.readableBytes > env.maxRequestBody {
                state = .rejecting(head, status: .payloadTooLarge, body: "request body larger than \(env.maxRequestBody) bytes\n")
                return
            }
            if body == nil { body = chunk } else { body!.writeBuffer(&chunk) }
            state = .collecting(head, body: body, target: target)
        case .end:
            switch state {
            case let .rejecting(head, status, body):
                state = .idle
                env.stats.failed()
                respond(head, status: status, body: body, forceClose: status == .payloadTooLarge)
            case let .healthz(head):
                state = .idle
                // Under the catalog's read lock, like any request.
                let s = env.catalog.summary()
                env.stats.served()
                respond(head, status: .ok, body: "ok apps=\(s.apps) machines=\(s.machines) version=\(s.version)\n")
            case let .collecting(head, body, target):
                forward(head, body: body, to: target)
            default:
                break
            }
        }
    }

    private func route(_ head: HTTPRequestHead) -> State {
        if head.uri == "/healthz" || head.uri.hasPrefix("/healthz?") { return .healthz(head) }
        guard let rawHost = head.headers.first(name: "host"), let host = Self.normalizedHost(rawHost) else {
            return .rejecting(head, status: .badRequest, body: "missing or empty Host header\n")
        }
        switch env.catalog.route(host: host) {
        case let .backend(app, machine, address):
            return .collecting(head, body: nil, target: Target(app: app, machine: machine, address: address))
        case .unknownHost:
            return .rejecting(head, status: .notFound, body: "no route for host '\(host)'\n")
        case let .noMachineUp(app):
            return .rejecting(head, status: .badGateway, body: "no machine up for app '\(app)'\n")
        }
    }

    /// Lower-case host without the port; nil when empty.
    static func normalizedHost(_ raw: String) -> String? {
        var h = Substring(raw)
        if h.hasPrefix("[") {
            if let close = h.firstIndex(of: "]") { h = h[h.index(after: h.startIndex)..<close] }
        } else if let colon = h.lastIndex(of: ":"), !h[..<colon].contains(":") {
            h = h[..<colon]
        }
        if h.hasSuffix(".") { h = h.dropLast() }
        return h.isEmpty ? nil : h.lowercased()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if case let .relaying(_, backend) = state, context.channel.isWritable {
            backend.setOption(ChannelOptions.autoRead, value: true).whenFailure { _ in }
        }
        context.fireChannelWritabilityChanged()
    }

    func channelInactive(context: ChannelHandlerContext) {
        switch state {
        case let .awaitingResponse(_, _, backend, timeout):
            timeout?.cancel(); backend.close(promise: nil)
        case let .relaying(_, backend):
            backend.close(promise: nil)
        default: break
        }
        state = .idle
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }

    private func respond(_ request: HTTPRequestHead, status: HTTPResponseStatus, body: String, forceClose: Bool = false) {
        guard let context else { return }
        let keepAlive = request.isKeepAlive && !forceClose
        var headers = HTTPHeaders()
        headers.add(name: "content-type", value: "text/plain; charset=utf-8")
        headers.add(name: "content-length", value: String(body.utf8.count))
        if !keepAlive { headers.add(name: "connection", value: "close") }
        let head = HTTPResponseHead(version: request.version, status: status, headers: headers)
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        if request.method != .HEAD {
            var buffer = context.channel.allocator.buffer(capacity: body.utf8.count)
            buffer.writeString(body)
            context.write(wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
        }
        finishResponse(keepAlive: keepAlive)
    }

    private func finishResponse(keepAlive: Bool) {
        guard let context else { return }
        let done = context.writeAndFlush(wrapOutboundOut(.end(nil)))
        if !keepAlive {
            let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
            done.whenComplete { _ in bound.value.close(promise: nil) }
        }
    }

    // MARK: backend side

    private func forward(_ request: HTTPRequestHead, body: ByteBuffer?, to target: Target) {
        guard let context else { return }
        state = .connecting(request, target: target)
        let loop = context.eventLoop
        let me = NIOLoopBound(self, eventLoop: loop)
        let bootstrap = ClientBootstrap(group: loop)
            .connectTimeout(env.connectTimeout)
            .channelOption(ChannelOptions.tcpOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    try channel.pipeline.syncOperations.addHandler(BackendHandler(proxy: me))
                }
            }
        let connected: EventLoopFuture<Channel>
        if let ip = try? SocketAddress(ipAddress: target.address.host, port: target.address.port) {
            connected = bootstrap.connect(to: ip)
        } else {
            connected = bootstrap.connect(host: target.address.host, port: target.address.port)
        }
        let outbound = Self.backendRequest(request, bodyLength: body?.readableBytes ?? 0, client: clientAddress)
        connected.whenComplete { result in
            me.value.backendConnected(result, outbound: outbound, body: body)
        }
    }

    /// The request as sent to the backend: hop-by-hop headers dropped, framed by Content-Length,
    /// one request per backend connection, X-Forwarded-For appended.
    static func backendRequest(_ request: HTTPRequestHead, bodyLength: Int, client: String?) -> HTTPRequestHead {
        var headers = HTTPHeaders()
        for (name, value) in request.headers where !hopByHop.contains(name.lowercased()) && name.lowercased() != "content-length" {
            headers.add(name: name, value: value)
        }
        if bodyLength > 0 || request.headers.contains(name: "content-length") || request.headers.contains(name: "transfer-encoding") {
            headers.add(name: "content-length", value: String(bodyLength))
        }
        headers.add(name: "connection", value: "close")
        if let client {
            if let prior = request.headers.first(name: "x-forwarded-for") {
                headers.replaceOrAdd(name: "x-forwarded-for", value: "\(prior), \(client)")
            } else {
                headers.add(name: "x-forwarded-for", value: client)
            }
        }
        headers.add(name: "via", value: "1.1 defib-proxy")
        return HTTPRequestHead(version: .http1_1, method: request.method, uri: request.uri, headers: headers)
    }

    private func backendConnected(_ result: Result<Channel, Error>, outbound: HTTPRequestHead, body: ByteBuffer?) {
        guard case let .connecting(request, target) = state else {
            // The client went away while we connected.
            if case let .success(channel) = result { channel.close(promise: nil) }
            return
        }
        switch result {
        case let .failure(error):
            state = .idle
            env.stats.failed()
            respond(request, status: .badGateway, body: "\(target.describe) unreachable: \(Self.describe(error))\n")
        case let .success(backend):
            let me = NIOLoopBound(self, eventLoop: backend.eventLoop)
            let timeout = backend.eventLoop.scheduleTask(in: env.responseTimeout) { me.value.backendTimedOut() }
            state = .awaitingResponse(request, target: target, backend: backend, timeout: timeout)
            backend.write(HTTPClientRequestPart.head(outbound), promise: nil)
            if let body, body.readableBytes > 0 { backend.write(HTTPClientRequestPart.body(.byteBuffer(body)), promise: nil) }
            backend.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
        }
    }

    private func backendTimedOut() {
        guard case let .awaitingResponse(request, target, backend, _) = state else { return }
        state = .idle
        backend.close(promise: nil)
        env.stats.failed()
        respond(request, status: .badGateway, body: "\(target.describe) sent no response within \(env.responseTimeout.nanoseconds / 1_000_000) ms\n")
    }

    fileprivate func backendHead(_ head: HTTPResponseHead, from backend: Channel) {
        guard case let .awaitingResponse(request, _, b, timeout) = state, b === backend, let context else { return }
        timeout?.cancel()
        var headers = HTTPHeaders()
        for (name, value) in head.headers where !hopByHop.contains(name.lowercased()) { headers.add(name: name, value: value) }
        // An HTTP/1.0 client cannot take chunked framing: without a length the body ends at close.
        let keepAlive = request.isKeepAlive && (request.version.minor >= 1 || headers.contains(name: "content-length"))
        if !keepAlive { headers.add(name: "connection", value: "close") }
        state = .relaying(keepAlive: keepAlive, backend: backend)
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: request.version, status: head.status, headers: headers))), promise: nil)
    }

    fileprivate func backendBody(_ chunk: ByteBuffer, from backend: Channel) {
        guard case let .relaying(_, b) = state, b === backend, let context else { return }
        context.write(wrapOutboundOut(.body(.byteBuffer(chunk))), promise: nil)
        if !context.channel.isWritable {
            context.flush()
            // Backpressure: stop reading the backend until the client drains.
            backend.setOption(ChannelOptions.autoRead, value: false).whenFailure { _ in }
        }
    }

    fileprivate func backendReadComplete(from backend: Channel) {
        if case let .relaying(_, b) = state, b === backend { context?.flush() }
    }

    fileprivate func backendEnd(from backend: Channel) {
        guard case let .relaying(keepAlive, b) = state, b === backend else { return }
        state = .idle
        env.stats.served()
        finishResponse(keepAlive: keepAlive)
        backend.close(promise: nil)
    }

    fileprivate func backendClosed(_ backend: Channel, error: Error?) {
        switch state {
        case let .awaitingResponse(request, target, b, timeout) where b === backend:
            timeout?.cancel()
            state = .idle
            env.stats.failed()
            let why = error.map { Self.describe($0) } ?? "connection closed without a response"
            respond(request, status: .badGateway, body: "\(target.describe) failed: \(why)\n")
        case let .relaying(_, b) where b === backend:
            // Mid-body: the client cannot be told cleanly; end the connection so it sees the truncation.
            state = .idle
            env.stats.failed()
            context?.close(promise: nil)
        default:
            break
        }
    }

    static func describe(_ error: Error) -> String {
        if let e = error as? IOError { return String(cString: strerror(e.errnoCode)) }
        if let e = error as? NIOConnectionError {
            if let first = e.connectionErrors.first { return "\(first.target): \(describe(first.error))" }
            if let dns = e.dnsAAAAError ?? e.dnsAError { return "cannot resolve \(e.host): \(dns)" }
        }
        if case let .connectTimeout(t)? = error as? ChannelError {
            return "connect timed out after \(t.nanoseconds / 1_000_000) ms"
        }
        return "\(error)"
    }
}

/// The backend connection's end of the relay: hands response parts to the client handler (same loop).
private final class BackendHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPClientResponsePart
    private let proxy: NIOLoopBound<HTTPProxyHandler>
    private var error: Error?

    init(proxy: NIOLoopBound<HTTPProxyHandler>) { self.proxy = proxy }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case let .head(head): proxy.value.backendHead(head, from: context.channel)
        case let .body(chunk): proxy.value.backendBody(chunk, from: context.channel)
        case .end: proxy.value.backendEnd(from: context.channel)
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) { proxy.value.backendReadComplete(from: context.channel) }

    func channelInactive(context: ChannelHandlerContext) { proxy.value.backendClosed(context.channel, error: error) }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        self.error = error
        context.close(promise: nil)
    }
}
