/// Heartbeats for programs that speak neither defib's ping nor sd_notify: an HTTP GET, a TCP connect (and
/// optionally one line out, a reply prefix back), or a command's exit status. Pure: the model, the parsing of
/// `[heartbeat] probe`, and the words a miss is reported in. `DefibPOSIX` runs them.

/// Where heartbeats come from, as `[heartbeat] source` and `defib run --heartbeat` say.
public enum HeartbeatMode: String, Sendable, Codable, CaseIterable {
    /// A ping heartbeat once the child listens on `$DEFIB_CONTROL_SOCKET`, sd_notify once it sends `WATCHDOG=1`;
    /// a child that does neither is supervised for its exit only.
    case auto
    /// `ping TOKEN` → `pong TOKEN` on the control channel.
    case ping
    /// sd_notify `WATCHDOG=1` keep-alives.
    case notify
    /// Both ping and sd_notify must keep coming.
    case both
    /// An HTTP GET answered 2xx/3xx (or the expected status and body) within the probe timeout.
    case http
    /// A TCP connect, optionally one line sent and a reply prefix expected.
    case tcp
    /// A command that exits 0 within the probe timeout.
    case exec
    /// No heartbeat: the child is supervised for its exit only, on purpose.
    case none

    /// The same choice as the supervision machine's protocol sources name it.
    public init(_ source: HeartbeatSource) {
        switch source {
        case .ping: self = .ping
        case .notify: self = .notify
        case .both: self = .both
        }
    }

    /// The protocol heartbeat this mode is (ping, notify, both); nil for auto, the probes and none.
    public var protocolSource: HeartbeatSource? {
        switch self {
        case .ping: .ping
        case .notify: .notify
        case .both: .both
        case .auto, .http, .tcp, .exec, .none: nil
        }
    }

    /// The probe this mode runs, if it is one.
    public var probeKind: ProbeKind? {
        switch self {
        case .http: .http
        case .tcp: .tcp
        case .exec: .exec
        case .auto, .ping, .notify, .both, .none: nil
        }
    }
}

/// The three kinds of probe.
public enum ProbeKind: String, Sendable, Codable, CaseIterable {
    case http, tcp, exec
}

/// An `http://HOST[:PORT]/PATH` URL taken apart. Only plain HTTP: a probe needs no certificate store, and a
/// TLS handshake would make every probe cost what a real client's first request costs.
public struct HTTPProbeTarget: Sendable, Equatable {
    /// The host as written (a name, an IPv4 literal, or an IPv6 literal without brackets).
    public var host: String
    /// The TCP port (80 unless the URL says).
    public var port: Int
    /// Path and query, starting with "/".
    public var path: String

    public init(host: String, port: Int, path: String) { self.host = host; self.port = port; self.path = path }

    /// The `Host:` header: the host as written, bracketed when IPv6, with the port unless it is 80.
    public var hostHeader: String {
        let h = host.contains(":") ? "[\(host)]" : host
        return port == 80 ? h : "\(h):\(port)"
    }

    /// The URL back in its canonical form.
    public var url: String { "http://\(hostHeader)\(path)" }

    /// Parses `http://HOST[:PORT][/PATH][?QUERY]` (a `#fragment` is dropped, as a client would). Names the
    /// first thing wrong otherwise.
    public static func parse(_ text: String) -> Result<HTTPProbeTarget, ProbeSpecError> {
        let lower = text.lowercased()
        if lower.hasPrefix("https://") {
            return .failure(.init("https is not supported: probe the service's plain-HTTP port on loopback, or use source = \"exec\" with curl"))
        }
        guard lower.hasPrefix("http://") else {
            return .failure(.init("expected an http:// URL such as http://127.0.0.1:8080/health, got \"\(text)\""))
        }
        var rest = Substring(text.dropFirst("http://".count))
        if let hash = rest.firstIndex(of: "#") { rest = rest[..<hash] }
        let authorityEnd = rest.firstIndex { $0 == "/" || $0 == "?" } ?? rest.endIndex
        let authority = rest[..<authorityEnd]
        var path = String(rest[authorityEnd...])
        if path.isEmpty { path = "/" } else if path.hasPrefix("?") { path = "/" + path }
        if authority.contains("@") { return .failure(.init("credentials in the URL are not supported (\"\(text)\")")) }
        if authority.isEmpty { return .failure(.init("no host in \"\(text)\"")) }
        // Anything that could end the request line or inject a header is refused, not escaped: the URL is the
        // operator's, and a space or a control character in it is a mistake.
        if let bad = path.unicodeScalars.first(where: { $0.value <= 0x20 || $0.value == 0x7f || $0.value > 0x7e }) {
            return .failure(.init("the path holds \(bad.value == 0x20 ? "a space" : "the character U+\(String(bad.value, radix: 16, uppercase: true))"); percent-encode it"))
        }
        var host: String
        var port = 80
        if authority.hasPrefix("[") {
            guard let close = authority.firstIndex(of: "]") else { return .failure(.init("unclosed '[' in \"\(text)\"")) }
            host = String(authority[authority.index(after: authority.startIndex)..<close])
            let after = authority[authority.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":"), let p = Int(after.dropFirst()), (1...65535).contains(p) else {
                    return .failure(.init("bad port in \"\(text)\" (expected 1 to 65535)"))
                }
                port = p
            }
        } else if let colon = authority.lastIndex(of: ":") {
            host = String(authority[..<colon])
            guard let p = Int(authority[authority.index(after: colon)...]), (1...65535).contains(p) else {
                return .failure(.init("bad port in \"\(text)\" (expected 1 to 65535)"))
            }
            port = p
        } else {
            host = String(authority)
        }
        if host.isEmpty { return .failure(.init("no host in \"\(text)\"")) }
        if host.contains(where: { $0 == " " || $0 == "[" || $0 == "]" || $0 == "/" }) {
            return .failure(.init("bad host \"\(host)\" in \"\(text)\""))
        }
        return .success(HTTPProbeTarget(host: host, port: port, path: path))
    }
}

/// Why a `[heartbeat] probe` setting cannot be used, in words.
public struct ProbeSpecError: Error, Sendable, Equatable, CustomStringConvertible {
    /// What is wrong, in words.
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// A probe as configured: what to reach and what counts as an answer.
public struct ProbeSpec: Sendable, Equatable {
    /// What the probe reaches.
    public enum Target: Sendable, Equatable {
        case http(HTTPProbeTarget)
        case tcp(host: String, port: Int)
        case exec(argv: [String])
    }

    /// What the probe reaches.
    public var target: Target
    /// One attempt's time limit: past it the attempt is a miss (the loop calls `timedOut()`).
    public var timeoutMs: Int
    /// HTTP: the one status that counts as healthy; nil = any 2xx or 3xx.
    public var expectStatus: Int?
    /// HTTP: a substring the body must contain (searched in its first `ProbeLimits.bodyBytes`).
    public var expectBody: String?
    /// TCP: a line sent once connected (CRLF appended), e.g. redis `PING`.
    public var send: String?
    /// TCP: the prefix the first line back must start with, e.g. `+PONG`. With `send` and no `expect`, any
    /// line back is an answer; with `expect` and no `send`, the server speaks first (a banner).
    public var expectPrefix: String?

    public init(target: Target, timeoutMs: Int, expectStatus: Int? = nil, expectBody: String? = nil,
                send: String? = nil, expectPrefix: String? = nil) {
        self.target = target; self.timeoutMs = timeoutMs; self.expectStatus = expectStatus; self.expectBody = expectBody
        self.send = send; self.expectPrefix = expectPrefix
    }

    /// The probe's kind.
    public var kind: ProbeKind {
        switch target {
        case .http: .http
        case .tcp: .tcp
        case .exec: .exec
        }
    }

    /// The probe named for an operator: `http probe GET http://127.0.0.1:8080/health`, `tcp probe 127.0.0.1:6379
    /// (PING → +PONG)`, `exec probe redis-cli -p 6379 ping`. A miss's `cause_detail` starts with it.
    public var name: String {
        switch target {
        case let .http(t): return "http probe GET \(t.url)"
        case let .tcp(host, port):
            let address = host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
            switch (send, expectPrefix) {
            case let (s?, e?): return "tcp probe \(address) (\(s) → \(e))"
            case let (s?, nil): return "tcp probe \(address) (\(s) → any line)"
            case let (nil, e?): return "tcp probe \(address) (expecting \(e))"
            case (nil, nil): return "tcp probe \(address) (connect)"
            }
        case let .exec(argv): return "exec probe " + argv.map(ProbeSpec.quoted).joined(separator: " ")
        }
    }

    /// A miss's detail as `cause_detail` carries it: the probe and what failed.
    public func missDetail(_ failure: ProbeFailure) -> String { "\(name): \(failure)" }

    /// Parses the `probe` text for `kind`: a URL for http, HOST:PORT for tcp, a command line for exec.
    public static func target(kind: ProbeKind, _ text: String) -> Result<Target, ProbeSpecError> {
        switch kind {
        case .http: return HTTPProbeTarget.parse(text).map { .http($0) }
        case .tcp:
            guard let address = SocketSpec.parseAddress(text), address.port > 0 else {
                return .failure(.init("expected HOST:PORT or [IPV6]:PORT with a port from 1 to 65535, got \"\(text)\""))
            }
            return .success(.tcp(host: address.host, port: address.port))
        case .exec: return ProbeCommandLine.split(text).map { .exec(argv: $0) }
        }
    }

    static func quoted(_ word: String) -> String {
        if !word.isEmpty, word.allSatisfy({ $0.isLetter || $0.isNumber || "-_./:=@+,%".contains($0) }) { return word }
        return "'" + word.replacingOccurrences(of: "'", with: "'\\''") + "'"
    }
}

/// How much of an answer a probe reads before it decides: a huge or endless answer is a miss, never a
/// supervisor stuck reading.
public enum ProbeLimits {
    /// An HTTP status line and headers.
    public static let headerBytes = 64 * 1024
    /// The part of an HTTP body searched for `probe_expect_body`.
    public static let bodyBytes = 1 << 20
    /// A TCP probe's reply line.
    public static let lineBytes = 64 * 1024
    /// An exec probe's output kept for the miss detail (the rest is read and dropped, so the command never blocks).
    public static let outputBytes = 4096
}

/// What one probe attempt says so far.
public enum ProbeProgress: Sendable, Equatable {
    /// Nothing decided yet: poll again.
    case pending
    /// Healthy.
    case beat
    /// Not healthy, and why.
    case miss(ProbeFailure)
}

/// Why a probe attempt was not a heartbeat, precise enough for `cause_detail`.
public enum ProbeFailure: Error, Sendable, Equatable, CustomStringConvertible {
    /// Nothing listens (ECONNREFUSED).
    case refused
    /// The peer reset the connection (ECONNRESET, EPIPE), at `stage`.
    case reset(stage: String)
    /// Another connect or socket error, named with its call and errno.
    case connectFailed(String)
    /// No decision within the timeout; `stage` says how far the attempt got.
    case timedOut(afterMs: Int, stage: String)
    /// The peer closed the connection before an answer was complete.
    case closed(stage: String)
    /// An HTTP status that does not count as healthy.
    case status(code: Int, reason: String, expected: Int?)
    /// The HTTP body (its first `searchedBytes`) does not contain the expected text.
    case bodyMismatch(expected: String, searchedBytes: Int)
    /// The TCP reply line does not start with the expected prefix.
    case replyMismatch(expected: String, got: String)
    /// Not an answer in the protocol spoken (garbage, a bad status line, broken chunking).
    case malformed(String)
    /// More than the limit without the answer being complete.
    case tooLarge(String)
    /// The exec probe's command exited non-zero; `output` is the last of what it wrote.
    case exited(code: Int32, output: String?)
    /// The exec probe's command was killed by a signal.
    case signaled(signal: Int32, output: String?)
    /// The attempt could not start (socket, fork or exec failed).
    case couldNotStart(String)

    /// One phrase: "status 503 Service Unavailable (expected 2xx or 3xx)", "timed out after 500 ms waiting for the
    /// status line", "exit code 1: Could not connect to Redis".
    public var description: String {
        switch self {
        case .refused: return "connection refused"
        case let .reset(stage): return "connection reset \(stage)"
        case let .connectFailed(what): return what
        case let .timedOut(ms, stage): return "timed out after \(ms) ms \(stage)"
        case let .closed(stage): return "connection closed \(stage)"
        case let .status(code, reason, expected):
            let expectation = expected.map { "expected \($0)" } ?? "expected 2xx or 3xx"
            return "status \(code)\(reason.isEmpty ? "" : " " + reason) (\(expectation))"
        case let .bodyMismatch(expected, searched):
            return "body does not contain \"\(ProbeFailure.clip(expected))\" (searched \(searched) bytes)"
        case let .replyMismatch(expected, got):
            return "reply \"\(ProbeFailure.clip(got))\" does not start with \"\(ProbeFailure.clip(expected))\""
        case let .malformed(what): return what
        case let .tooLarge(what): return what
        case let .exited(code, output): return "exit code \(code)" + (output.map { ": \($0)" } ?? "")
        case let .signaled(signal, output): return "killed by \(signalName(signal))" + (output.map { ": \($0)" } ?? "")
        case let .couldNotStart(what): return "could not start: \(what)"
        }
    }

    /// Text from the peer, shortened and made printable for a one-line detail.
    public static func clip(_ text: String, max: Int = 120) -> String {
        let printable = String(text.unicodeScalars.map { $0.value < 0x20 || $0.value == 0x7f ? "·" : Character($0) })
        return printable.count > max ? String(printable.prefix(max)) + "…" : printable
    }
}

/// Splitting a probe command line into argv the way a shell splits words — quotes and backslashes, nothing
/// else: no variables, globs, pipes or redirections. A probe runs no shell unless the operator writes `sh -c`.
public enum ProbeCommandLine {
    /// The words of `text`, or what is wrong with it (an unclosed quote, shell syntax outside quotes).
    public static func split(_ text: String) -> Result<[String], ProbeSpecError> {
        var words: [String] = []
        var word = ""
        var inWord = false
        var chars = text.makeIterator()
        while let c = chars.next() {
            switch c {
            case " ", "\t", "\n":
                if inWord { words.append(word); word = ""; inWord = false }
            case "'":
                inWord = true
                var closed = false
                while let d = chars.next() {
                    if d == "'" { closed = true; break }
                    word.append(d)
                }
                if !closed { return .failure(.init("unclosed ' in \"\(text)\"")) }
            case "\"":
                inWord = true
                var closed = false
                while let d = chars.next() {
                    if d == "\"" { closed = true; break }
                    if d == "\\" {
                        guard let e = chars.next() else { break }
                        if !"\"\\$`".contains(e) { word.append("\\") }
                        word.append(e)
                        continue
                    }
                    if d == "$" || d == "`" {
                        return .failure(.init("\(d) inside \"…\" would need a shell to expand; write the command as sh -c '…' or quote it with '…'"))
                    }
                    word.append(d)
                }
                if !closed { return .failure(.init("unclosed \" in \"\(text)\"")) }
            case "\\":
                inWord = true
                if let e = chars.next() { word.append(e) } else { return .failure(.init("a trailing \\ in \"\(text)\"")) }
            case "|", "&", ";", "<", ">", "(", ")", "$", "`":
                return .failure(.init("'\(c)' is shell syntax and no shell runs the probe: write it as sh -c '…', or quote the character"))
            default:
                inWord = true
                word.append(c)
            }
        }
        if inWord { words.append(word) }
        if words.isEmpty { return .failure(.init("empty command")) }
        if words[0].isEmpty { return .failure(.init("the program (first word) is empty")) }
        return .success(words)
    }
}
