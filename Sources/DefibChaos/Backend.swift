import NIOCore
import NIOHTTP1
import NIOPosix

/// The real backend behind the proxy: a small NIO HTTP server on 127.0.0.1 answering every request with
/// 200 and a short body, so every failure the load sees comes from the proxy or its supervision.
public final class ChaosBackend: @unchecked Sendable {
    /// The port it listens on (chosen by the kernel).
    public let port: Int
    /// The body it answers with.
    public static let body = "ok from the chaos backend\n"
    private let group: MultiThreadedEventLoopGroup
    private let channel: Channel

    private init(group: MultiThreadedEventLoopGroup, channel: Channel, port: Int) {
        self.group = group; self.channel = channel; self.port = port
    }

    /// Binds 127.0.0.1:0 and serves.
    public static func start(threads: Int = 1) throws -> ChaosBackend {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: threads)
        do {
            let channel = try ServerBootstrap(group: group)
                .serverChannelOption(.backlog, value: 1024)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                        try channel.pipeline.syncOperations.addHandler(BackendHandler())
                    }
                }
                .bind(host: "127.0.0.1", port: 0).wait()
            guard let port = channel.localAddress?.port else {
                try? channel.close().wait()
                throw ChaosError(.setup, "backend: bound 127.0.0.1:0 but the socket has no port")
            }
            return ChaosBackend(group: group, channel: channel, port: port)
        } catch let e as ChaosError {
            try? group.syncShutdownGracefully()
            throw e
        } catch {
            try? group.syncShutdownGracefully()
            throw ChaosError(.setup, "backend: bind 127.0.0.1:0: \(error)")
        }
    }

    /// Stops serving.
    public func stop() {
        try? channel.close().wait()
        try? group.syncShutdownGracefully()
    }
}

private final class BackendHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart
    private var keepAlive = true

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case let .head(head):
            keepAlive = head.isKeepAlive
        case .body:
            break
        case .end:
            var headers = HTTPHeaders()
            headers.add(name: "Content-Type", value: "text/plain")
            headers.add(name: "Content-Length", value: String(ChaosBackend.body.utf8.count))
            if !keepAlive { headers.add(name: "Connection", value: "close") }
            context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .ok, headers: headers))), promise: nil)
            var buffer = context.channel.allocator.buffer(capacity: ChaosBackend.body.utf8.count)
            buffer.writeString(ChaosBackend.body)
            context.write(wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
            let close = !keepAlive
            let channel = context.channel
            context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in
                if close { channel.close(promise: nil) }
            }
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }
}
