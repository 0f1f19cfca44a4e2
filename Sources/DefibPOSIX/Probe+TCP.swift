import DefibCore
import Glibc

/// A TCP probe attempt: connect; then, when configured, send one line (CRLF appended) and/or read the first
/// line back and check its prefix. A bare connect proves only that the kernel accepts connections: a hung
/// server's listen backlog still completes handshakes, so for a real heartbeat let the server answer
/// (`probe_send = "PING"`, `probe_expect = "+PONG"` for redis).
public final class TCPProbe: SocketProbe, ProbeAttempt {
    private let request: [UInt8]
    private let expectPrefix: String?
    private var sent = 0
    private var line: [UInt8] = []

    private init(connection: ProbeConnection, address: ProbeAddress, send: String?, expectPrefix: String?, timeoutMs: Int) {
        self.expectPrefix = expectPrefix
        request = send.map { Array(($0 + "\r\n").utf8) } ?? []
        super.init(connection: connection, address: address, timeoutMs: timeoutMs)
    }

    /// Starts connecting to `address`. `timeoutMs` is the limit the loop enforces (named in a timeout's detail).
    public static func start(address: ProbeAddress, send: String?, expectPrefix: String?, timeoutMs: Int) -> Result<TCPProbe, ProbeFailure> {
        ProbeConnection.open(address).map { TCPProbe(connection: $0, address: address, send: send, expectPrefix: expectPrefix, timeoutMs: timeoutMs) }
    }

    public func readAvailable() -> ProbeProgress {
        while true {
            switch stage {
            case let .done(verdict): return verdict
            case .connecting:
                guard let result = connection.finishConnect(address) else { return .pending }
                if case let .failure(f) = result { return finish(.miss(f)) }
                if request.isEmpty && expectPrefix == nil { return finish(.beat) }
                stage = request.isEmpty ? .receiving : .sending
            case .sending:
                switch connection.send(request, from: sent, stage: "while sending") {
                case let .failure(f): return finish(.miss(f))
                case let .success(offset):
                    sent = offset
                    if sent < request.count { return .pending }
                    stage = .receiving
                }
            case .receiving:
                switch connection.receive(max: ProbeLimits.lineBytes + 1 - line.count) {
                case .wouldBlock: return .pending
                case let .failed(e):
                    return finish(.miss(e == ECONNRESET ? .reset(stage: "before a reply line") : .connectFailed(SystemError("recv").description)))
                case .end:
                    return finish(.miss(.closed(stage: line.isEmpty ? "before a reply line"
                                                                    : "mid-line: \"\(ProbeFailure.clip(String(decoding: line, as: UTF8.self)))\"")))
                case let .data(bytes):
                    line += bytes
                    if let nl = line.firstIndex(of: 10) {
                        let raw = line[..<nl]
                        let text = String(decoding: raw.last == 13 ? raw.dropLast() : raw, as: UTF8.self)
                        if let expectPrefix, !text.hasPrefix(expectPrefix) {
                            return finish(.miss(.replyMismatch(expected: expectPrefix, got: text)))
                        }
                        return finish(.beat)
                    }
                    if line.count > ProbeLimits.lineBytes {
                        return finish(.miss(.tooLarge("reply longer than \(ProbeLimits.lineBytes) bytes without a line end")))
                    }
                }
            }
        }
    }

    override var receivingDetail: String {
        request.isEmpty ? "waiting for the server's first line (connected)"
            : "waiting for a reply line (connected, \(String(decoding: request.dropLast(2), as: UTF8.self)) sent"
              + (line.isEmpty ? ")" : "; got \(line.count) bytes without a line end)")
    }
}
