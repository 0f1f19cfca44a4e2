import DefibCore
import Glibc

/// An HTTP probe attempt: connect, send `GET PATH HTTP/1.1` with `Connection: close`, and let
/// `HTTPProbeReader` decide from the status line (and the body, when a substring is expected). Reading is
/// bounded by `ProbeLimits`, so a huge or endless answer is a miss, never a supervisor stuck reading.
public final class HTTPProbe: SocketProbe, ProbeAttempt {
    private let request: [UInt8]
    private var reader: HTTPProbeReader
    private var sent = 0

    private init(connection: ProbeConnection, address: ProbeAddress, target: HTTPProbeTarget, reader: HTTPProbeReader, timeoutMs: Int) {
        self.reader = reader
        request = Array(HTTPProbe.request(target).utf8)
        super.init(connection: connection, address: address, timeoutMs: timeoutMs)
    }

    /// The request: one GET, no keep-alive (each attempt is a fresh connection, as a new client's would be).
    static func request(_ target: HTTPProbeTarget) -> String {
        "GET \(target.path) HTTP/1.1\r\nHost: \(target.hostHeader)\r\nUser-Agent: defib-probe\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    }

    /// Starts connecting to `address` (resolved once at start-up) for `target`. `timeoutMs` is the limit the loop
    /// enforces (named in a timeout's detail).
    public static func start(address: ProbeAddress, target: HTTPProbeTarget, expectStatus: Int?, expectBody: String?,
                             timeoutMs: Int) -> Result<HTTPProbe, ProbeFailure> {
        ProbeConnection.open(address).map {
            HTTPProbe(connection: $0, address: address, target: target,
                      reader: HTTPProbeReader(expectStatus: expectStatus, expectBody: expectBody), timeoutMs: timeoutMs)
        }
    }

    public func readAvailable() -> ProbeProgress {
        while true {
            switch stage {
            case let .done(verdict): return verdict
            case .connecting:
                guard let result = connection.finishConnect(address) else { return .pending }
                if case let .failure(f) = result { return finish(.miss(f)) }
                stage = .sending
            case .sending:
                switch connection.send(request, from: sent, stage: "while sending the request") {
                case let .failure(f): return finish(.miss(f))
                case let .success(offset):
                    sent = offset
                    if sent < request.count { return .pending }
                    stage = .receiving
                }
            case .receiving:
                // Bounded per call too: at most a few chunks, then back to the loop (a fast endless answer must
                // not keep the loop here; the reader's limits end it within a bounded number of calls).
                for _ in 0..<8 {
                    switch connection.receive(max: 16384) {
                    case .wouldBlock: return .pending
                    case let .failed(e):
                        if e == ECONNRESET { return finish(.miss(.reset(stage: reader.stage.replacingWaiting()))) }
                        return finish(.miss(.connectFailed(SystemError("recv").description)))
                    case .end: return finish(reader.end())
                    case let .data(bytes):
                        let progress = reader.feed(bytes)
                        if progress != .pending { return finish(progress) }
                    }
                }
                return .pending
            }
        }
    }

    override var sendingDetail: String { "sending the request to \(address)" }
    override var receivingDetail: String { reader.stage }
}

private extension String {
    /// "waiting for the status line (…)" → "while waiting for the status line (…)" for a reset's detail.
    func replacingWaiting() -> String { "while " + self }
}
