import CoreMetrics
import DefibCore
import Metrics
import NIOCore
import NIOHTTP1
import NIOPosix
import Prometheus

/// The supervisor's metrics, through swift-metrics. Without `[metrics] listen` they go nowhere (the
/// default no-op backend); with it, `MetricsEndpoint` bootstraps Prometheus and serves them on loopback.
struct SupervisorMetrics {
    let service: String
    let pingRoundTrip: CoreMetrics.Timer
    let misses: CoreMetrics.Counter
    let suspects: CoreMetrics.Counter
    let extensions: CoreMetrics.Counter
    let restarts: CoreMetrics.Counter
    let captureDuration: CoreMetrics.Timer
    let captureBytes: CoreMetrics.Recorder
    let notifyRejected: CoreMetrics.Counter
    /// Kill jitter: the random delay drawn before a kill.
    let killJitter: CoreMetrics.Timer
    /// Heartbeats that came back late (after at least one miss): silences that ended without a kill.
    let recoveries: CoreMetrics.Counter
    /// Stalls that ended by themselves after the suspect stage (stored in full or only counted), and how long
    /// each lasted; the freeze their evidence cost the service.
    let stalls: CoreMetrics.Counter
    let stallDuration: CoreMetrics.Timer
    let stallEvidencePause: CoreMetrics.Timer

    init(service: String) {
        self.service = service
        let dims = [("service", service)]
        pingRoundTrip = CoreMetrics.Timer(label: "defib_heartbeat_rtt_seconds", dimensions: dims, preferredDisplayUnit: .seconds)
        misses = CoreMetrics.Counter(label: "defib_heartbeat_misses_total", dimensions: dims)
        suspects = CoreMetrics.Counter(label: "defib_suspect_total", dimensions: dims)
        extensions = CoreMetrics.Counter(label: "defib_deadline_extensions_total", dimensions: dims)
        restarts = CoreMetrics.Counter(label: "defib_restarts_total", dimensions: dims)
        captureDuration = CoreMetrics.Timer(label: "defib_capture_duration_seconds", dimensions: dims, preferredDisplayUnit: .seconds)
        captureBytes = CoreMetrics.Recorder(label: "defib_capture_bytes", dimensions: dims)
        notifyRejected = CoreMetrics.Counter(label: "defib_notify_rejected_total", dimensions: dims)
        killJitter = CoreMetrics.Timer(label: "defib_kill_jitter_seconds", dimensions: dims, preferredDisplayUnit: .seconds)
        recoveries = CoreMetrics.Counter(label: "defib_heartbeat_recoveries_total", dimensions: dims)
        stalls = CoreMetrics.Counter(label: "defib_stalls_total", dimensions: dims)
        stallDuration = CoreMetrics.Timer(label: "defib_stall_duration_seconds", dimensions: dims, preferredDisplayUnit: .seconds)
        stallEvidencePause = CoreMetrics.Timer(label: "defib_stall_evidence_pause_seconds", dimensions: dims, preferredDisplayUnit: .seconds)
    }

    /// One measurement the supervision asked for.
    func record(_ event: MetricEvent) {
        switch event {
        case let .pingRoundTrip(ns): pingRoundTrip.recordNanoseconds(ns)
        case .heartbeatMissed: misses.increment()
        case .suspect: suspects.increment()
        case .deadlineExtended: extensions.increment()
        case .restart: restarts.increment()
        case .recovery: recoveries.increment()
        case .notifyRejected: notifyRejected.increment()
        case let .killJitter(ms): killJitter.recordMilliseconds(ms)
        case let .captureDuration(ns): captureDuration.recordNanoseconds(ns)
        case let .captureBytes(bytes): captureBytes.record(bytes)
        case let .incident(cause): incident(cause: cause)
        case let .verdict(kind): verdict(kind)
        case let .phase(current): phase(current.rawValue, all: SupervisorMachine.Phase.allCases.map(\.rawValue))
        case let .stall(silenceMs):
            stalls.increment()
            stallDuration.recordNanoseconds(Int64(silenceMs * 1e6))
        case let .stallEvidencePause(ms): stallEvidencePause.recordNanoseconds(Int64(ms * 1e6))
        }
    }

    /// Incidents by cause (missed-heartbeat, exited, signaled, start-timeout, spawn-failed).
    func incident(cause: String) {
        CoreMetrics.Counter(label: "defib_incidents_total", dimensions: [("service", service), ("cause", cause)]).increment()
    }

    /// A verdict the progress judge gave when a heartbeat was late (stuck, starved, busy, …).
    func verdict(_ kind: String) {
        CoreMetrics.Counter(label: "defib_progress_verdicts_total", dimensions: [("service", service), ("verdict", kind)]).increment()
    }

    /// One gauge per phase, 1 for the current one: `defib_phase{phase="running"} 1`.
    func phase(_ current: String, all: [String]) {
        for p in all {
            CoreMetrics.Gauge(label: "defib_phase", dimensions: [("service", service), ("phase", p)]).record(p == current ? 1 : 0)
        }
    }
}

/// `/metrics` in the Prometheus text format on a loopback port, served by SwiftNIO on its own thread
/// (the supervisor's loop never waits for a scrape).
public final class MetricsEndpoint {
    let registry: PrometheusCollectorRegistry
    let group: MultiThreadedEventLoopGroup
    let channel: Channel

    /// Bootstraps swift-metrics with Prometheus and binds `host:port`. Call once, before metrics are made.
    public init(host: String, port: Int) throws {
        let registry = PrometheusCollectorRegistry()
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.durationHistogramBuckets = [
            "defib_heartbeat_rtt_seconds": [.microseconds(100), .microseconds(250), .microseconds(500), .milliseconds(1),
                                            .milliseconds(2), .milliseconds(5), .milliseconds(10), .milliseconds(25),
                                            .milliseconds(50), .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1)],
            "defib_capture_duration_seconds": [.milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50),
                                               .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1),
                                               .seconds(2), .seconds(5), .seconds(10), .seconds(30)],
            "defib_stall_duration_seconds": [.milliseconds(100), .milliseconds(250), .milliseconds(500), .milliseconds(750), .seconds(1),
                                             .seconds(2), .seconds(5), .seconds(10), .seconds(30), .seconds(60)],
            "defib_stall_evidence_pause_seconds": [.microseconds(250), .microseconds(500), .milliseconds(1), .milliseconds(2),
                                                   .milliseconds(5), .milliseconds(10), .milliseconds(20), .milliseconds(50),
                                                   .milliseconds(100)],
        ]
        factory.valueHistogramBuckets = ["defib_capture_bytes": [1e6, 1e7, 5e7, 1e8, 2.5e8, 5e8, 1e9, 2e9, 4e9]]
        MetricsSystem.bootstrap(factory)
        self.registry = registry
        group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        do {
            channel = try ServerBootstrap(group: group)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelInitializer { channel in
                    channel.pipeline.configureHTTPServerPipeline().flatMap {
                        channel.pipeline.addHandler(MetricsHandler(registry: registry))
                    }
                }
                .bind(host: host, port: port).wait()
        } catch {
            try? group.syncShutdownGracefully()
            throw error
        }
    }

    var boundPort: Int? { channel.localAddress?.port }

    public func close() {
        try? channel.close().wait()
        try? group.syncShutdownGracefully()
    }
}

private final class MetricsHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart
    let registry: PrometheusCollectorRegistry
    private var path = ""
    init(registry: PrometheusCollectorRegistry) { self.registry = registry }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case let .head(head): path = head.uri
        case .body: break
        case .end:
            let found = path == "/metrics" || path.hasPrefix("/metrics?")
            let body = found ? registry.emitToBuffer() : Array("not found: try /metrics\n".utf8)
            var headers = HTTPHeaders()
            headers.add(name: "Content-Type", value: found ? "text/plain; version=0.0.4; charset=utf-8" : "text/plain")
            headers.add(name: "Content-Length", value: String(body.count))
            headers.add(name: "Connection", value: "close")
            context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: found ? .ok : .notFound, headers: headers))), promise: nil)
            context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(bytes: body)))), promise: nil)
            context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in context.close(promise: nil) }
        }
    }
}
