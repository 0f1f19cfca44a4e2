/// Reads an HTTP/1.x answer as it arrives, just far enough to decide a probe: the status line, the headers, and
/// — only when a body substring is expected — the body (Content-Length, chunked, or up to the close), each
/// within `ProbeLimits`. Pure: `DefibPOSIX.HTTPProbe` feeds it what the socket gives.
public struct HTTPProbeReader: Sendable {
    private enum Framing: Sendable { case length(Int), chunked, untilClose }
    private enum ChunkState: Sendable { case size, data(Int), dataEnd, trailers }
    private enum State: Sendable { case head, body(Framing), done(ProbeProgress) }

    private let expectStatus: Int?
    private let needle: [UInt8]?
    private var state: State = .head
    private var head: [UInt8] = []
    private var chunkState: ChunkState = .size
    private var chunkLine: [UInt8] = []
    private var body: [UInt8] = []
    private var received = 0

    /// `expectStatus`: the one healthy status (nil = any 2xx or 3xx); `expectBody`: text the body must contain.
    public init(expectStatus: Int?, expectBody: String?) {
        self.expectStatus = expectStatus
        needle = expectBody.map { Array($0.utf8) }
    }

    /// The verdict once there is one.
    public var verdict: ProbeProgress? {
        if case let .done(v) = state { return v }
        return nil
    }

    /// How far the answer got, for a timeout's detail.
    public var stage: String {
        switch state {
        case .head:
            return received == 0 ? "waiting for the status line (connected, request sent)"
                                 : "reading the status line and headers (\(received) bytes so far)"
        case .body:
            let expected = needle.map { String(decoding: $0, as: UTF8.self) } ?? ""
            return "reading the body (\(body.count) bytes so far, \"\(ProbeFailure.clip(expected))\" not found yet)"
        case .done: return "after the verdict"
        }
    }

    /// Takes the next bytes from the connection.
    public mutating func feed<C: Collection>(_ bytes: C) -> ProbeProgress where C.Element == UInt8 {
        if let verdict { return verdict }
        received += bytes.count
        switch state {
        case .head:
            head.append(contentsOf: bytes)
            return parseHead()
        case let .body(framing):
            return takeBody(Array(bytes), framing: framing)
        case let .done(v): return v
        }
    }

    /// The peer closed the connection.
    public mutating func end() -> ProbeProgress {
        if let verdict { return verdict }
        switch state {
        case .head:
            return finish(.miss(.closed(stage: head.isEmpty ? "before the status line"
                                                            : "in the middle of the status line and headers (\(head.count) bytes)")))
        case .body(.untilClose): return bodyComplete()
        case .body: return finish(.miss(.closed(stage: "after \(body.count) bytes of the body, before its end")))
        case let .done(v): return v
        }
    }

    // MARK: The head

    private mutating func parseHead() -> ProbeProgress {
        while true {
            if head.count >= 5, !head.starts(with: Array("HTTP/".utf8)) {
                return finish(.miss(.malformed("not an HTTP answer: \"\(ProbeFailure.clip(String(decoding: head.prefix(60), as: UTF8.self)))\"")))
            }
            guard let (headEnd, bodyStart) = Self.headEnd(head) else {
                if head.count > ProbeLimits.headerBytes {
                    return finish(.miss(.tooLarge("status line and headers longer than \(ProbeLimits.headerBytes) bytes")))
                }
                return .pending
            }
            // Split bytes, not Characters: "\r\n" is one Character in Swift.
            let lines = head[..<headEnd].split(separator: 10, omittingEmptySubsequences: false).map { raw -> Substring in
                let line = raw.last == 13 ? raw.dropLast() : raw
                return String(decoding: line, as: UTF8.self)[...]
            }
            let statusLine = lines.first.map(String.init) ?? ""
            let parts = statusLine.split(separator: " ", maxSplits: 2, omittingEmptySubsequences: true)
            guard parts.count >= 2, parts[0].hasPrefix("HTTP/1."), parts[1].count == 3, let code = Int(parts[1]), (100...599).contains(code) else {
                return finish(.miss(.malformed("bad status line \"\(ProbeFailure.clip(statusLine))\"")))
            }
            let reason = parts.count > 2 ? String(parts[2]) : ""
            let rest = Array(head[bodyStart...])
            // An interim answer (100 Continue, 103 Early Hints) is followed by the real one.
            if (100...199).contains(code) && code != 101 && expectStatus != code {
                head = rest
                continue
            }
            if let expectStatus {
                if code != expectStatus { return finish(.miss(.status(code: code, reason: reason, expected: expectStatus))) }
            } else if !(200...399).contains(code) {
                return finish(.miss(.status(code: code, reason: reason, expected: nil)))
            }
            guard needle != nil else { return finish(.beat) }
            var headers: [(String, String)] = []
            for line in lines.dropFirst() where !line.isEmpty {
                guard let colon = line.firstIndex(of: ":") else { continue }
                headers.append((line[..<colon].lowercased(), line[line.index(after: colon)...].trimmingSpaces()))
            }
            let framing: Framing
            if let te = headers.last(where: { $0.0 == "transfer-encoding" })?.1, te.lowercased().contains("chunked") {
                framing = .chunked
            } else if let cl = headers.last(where: { $0.0 == "content-length" })?.1 {
                guard let n = Int(cl), n >= 0 else { return finish(.miss(.malformed("bad Content-Length \"\(ProbeFailure.clip(cl))\""))) }
                framing = .length(n)
            } else if code == 204 || code == 304 {
                framing = .length(0)
            } else {
                framing = .untilClose
            }
            head = []
            state = .body(framing)
            if case .length(0) = framing { return bodyComplete() }
            return rest.isEmpty ? .pending : takeBody(rest, framing: framing)
        }
    }

    /// Where the head ends (the blank line) and the body starts; CRLF or bare LF line ends.
    private static func headEnd(_ bytes: [UInt8]) -> (Int, Int)? {
        var i = 0
        while i < bytes.count {
            if bytes[i] == 10 {
                if i + 1 < bytes.count, bytes[i + 1] == 10 { return (i, i + 2) }
                if i + 2 < bytes.count, bytes[i + 1] == 13, bytes[i + 2] == 10 { return (i, i + 3) }
            }
            i += 1
        }
        return nil
    }

    // MARK: The body

    private mutating func takeBody(_ bytes: [UInt8], framing: Framing) -> ProbeProgress {
        switch framing {
        case .untilClose: return append(bytes[...])
        case let .length(remaining):
            let take = bytes.prefix(remaining)
            let left = remaining - take.count
            state = .body(.length(left))
            let progress = append(take)
            if progress != .pending { return progress }
            return left == 0 ? bodyComplete() : .pending
        case .chunked:
            var i = 0
            while i < bytes.count {
                switch chunkState {
                case .size, .dataEnd, .trailers:
                    let b = bytes[i]; i += 1
                    if b != 10 {
                        chunkLine.append(b)
                        if chunkLine.count > 4096 { return finish(.miss(.malformed("chunk size line longer than 4096 bytes"))) }
                        continue
                    }
                    let line = String(decoding: chunkLine.last == 13 ? chunkLine.dropLast() : chunkLine[...], as: UTF8.self)
                    chunkLine = []
                    switch chunkState {
                    case .dataEnd:
                        guard line.isEmpty else { return finish(.miss(.malformed("chunk not followed by CRLF"))) }
                        chunkState = .size
                    case .trailers:
                        if line.isEmpty { return bodyComplete() }
                    default:
                        let sizeText = line.split(separator: ";", maxSplits: 1).first.map { $0.trimmingSpaces() } ?? ""
                        guard let size = Int(sizeText, radix: 16), size >= 0 else {
                            return finish(.miss(.malformed("bad chunk size line \"\(ProbeFailure.clip(line))\"")))
                        }
                        if size == 0 { chunkState = .trailers; return bodyComplete() }
                        chunkState = .data(size)
                    }
                case let .data(remaining):
                    let take = bytes[i..<min(bytes.count, i + remaining)]
                    i += take.count
                    chunkState = take.count == remaining ? .dataEnd : .data(remaining - take.count)
                    let progress = append(take)
                    if progress != .pending { return progress }
                }
            }
            return .pending
        }
    }

    /// Adds body bytes (up to the limit) and looks for the expected text in what is new.
    private mutating func append(_ bytes: ArraySlice<UInt8>) -> ProbeProgress {
        guard let needle else { return finish(.beat) }
        let room = ProbeLimits.bodyBytes - body.count
        let from = max(0, body.count - needle.count + 1)
        body.append(contentsOf: bytes.prefix(room))
        if Self.contains(body, needle, from: from) { return finish(.beat) }
        if body.count >= ProbeLimits.bodyBytes {
            return finish(.miss(.bodyMismatch(expected: String(decoding: needle, as: UTF8.self), searchedBytes: body.count)))
        }
        return .pending
    }

    private mutating func bodyComplete() -> ProbeProgress {
        guard let needle else { return finish(.beat) }
        if Self.contains(body, needle, from: 0) { return finish(.beat) }
        return finish(.miss(.bodyMismatch(expected: String(decoding: needle, as: UTF8.self), searchedBytes: body.count)))
    }

    private static func contains(_ haystack: [UInt8], _ needle: [UInt8], from: Int) -> Bool {
        guard !needle.isEmpty else { return true }
        guard haystack.count >= needle.count else { return false }
        var i = from
        while i + needle.count <= haystack.count {
            if haystack[i] == needle[0], haystack[i..<i + needle.count].elementsEqual(needle) { return true }
            i += 1
        }
        return false
    }

    private mutating func finish(_ verdict: ProbeProgress) -> ProbeProgress {
        state = .done(verdict)
        head = []; body = []
        return verdict
    }
}

extension Substring {
    func trimmingSpaces() -> String {
        String(drop { $0 == " " || $0 == "\t" }.reversed().drop { $0 == " " || $0 == "\t" }.reversed())
    }
}

extension String {
    func trimmingSpaces() -> String { self[...].trimmingSpaces() }
}
