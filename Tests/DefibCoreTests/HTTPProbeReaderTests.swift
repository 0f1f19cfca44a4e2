import DefibCore
import Testing

/// The HTTP answer reader on its own: status rules, body search through each framing, byte-at-a-time input,
/// garbage, and the limits that make a huge or endless answer a miss.
@Suite struct HTTPProbeReaderTests {
    func read(_ answer: String, status: Int? = nil, body: String? = nil, chunk: Int = .max, close: Bool = true) -> ProbeProgress {
        var r = HTTPProbeReader(expectStatus: status, expectBody: body)
        let bytes = Array(answer.utf8)
        var i = 0
        while i < bytes.count {
            let p = r.feed(bytes[i..<min(bytes.count, i + chunk)])
            if p != .pending { return p }
            i += chunk
        }
        return close ? r.end() : .pending
    }

    @Test func aSuccessOrRedirectIsABeatAtTheEndOfTheHead() {
        #expect(read("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", close: false) == .beat)
        #expect(read("HTTP/1.0 302 Found\r\nLocation: /x\r\n\r\n", close: false) == .beat)
        #expect(read("HTTP/1.1 200 OK\n\n", close: false) == .beat)   // bare LF line ends
        #expect(read("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n", close: false) == .beat)
    }

    @Test func otherStatusesAreMissesNamingTheStatus() {
        #expect(read("HTTP/1.1 503 Service Unavailable\r\n\r\n") == .miss(.status(code: 503, reason: "Service Unavailable", expected: nil)))
        #expect(read("HTTP/1.1 404 Not Found\r\n\r\n") == .miss(.status(code: 404, reason: "Not Found", expected: nil)))
        #expect(read("HTTP/1.1 200 OK\r\n\r\n", status: 204) == .miss(.status(code: 200, reason: "OK", expected: 204)))
        #expect(read("HTTP/1.1 418 I'm a teapot\r\n\r\n", status: 418, close: false) == .beat)
    }

    @Test func theBodyIsSearchedThroughEachFraming() {
        let length = "HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nstatus: ok\n"
        let chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\nstat\r\n7\r\nus: ok\n\r\n0\r\n\r\n"
        let untilClose = "HTTP/1.0 200 OK\r\n\r\nstatus: ok\n"
        for answer in [length, chunked, untilClose] {
            for chunk in [1, 3, 1000] {
                #expect(read(answer, body: "us: ok", chunk: chunk) == .beat, "\(answer) in chunks of \(chunk)")
                #expect(read(answer, body: "degraded", chunk: chunk) == .miss(.bodyMismatch(expected: "degraded", searchedBytes: 11)),
                        "\(answer) in chunks of \(chunk)")
            }
        }
        // The chunk framing itself is not searched ("4\r\nstat" does not make "4\r\nst" match).
        #expect(read(chunked, body: "\r\n7") == .miss(.bodyMismatch(expected: "\r\n7", searchedBytes: 11)))
        // Found before the end: a beat without waiting for the rest.
        #expect(read("HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\nok", body: "ok", close: false) == .beat)
        #expect(read("HTTP/1.1 204 No Content\r\n\r\n", body: "ok", close: false) == .miss(.bodyMismatch(expected: "ok", searchedBytes: 0)))
    }

    @Test func garbageAndBrokenAnswersAreMisses() {
        #expect(read("SSH-2.0-OpenSSH_9.2\r\n") == .miss(.malformed("not an HTTP answer: \"SSH-2.0-OpenSSH_9.2··\"")))
        #expect(read("HTTP/1.1 2OO OK\r\n\r\n") == .miss(.malformed("bad status line \"HTTP/1.1 2OO OK\"")))
        #expect(read("HTTP/2 200\r\n\r\n") == .miss(.malformed("bad status line \"HTTP/2 200\"")))
        #expect(read("") == .miss(.closed(stage: "before the status line")))
        #expect(read("HTTP/1.1 200 O") == .miss(.closed(stage: "in the middle of the status line and headers (14 bytes)")))
        #expect(read("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", body: "z")
                == .miss(.closed(stage: "after 3 bytes of the body, before its end")))
        #expect(read("HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", body: "z") == .miss(.malformed("bad Content-Length \"x\"")))
        #expect(read("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", body: "z") == .miss(.malformed("bad chunk size line \"zz\"")))
    }

    @Test func hugeAnswersStopAtTheLimits() {
        // Headers that never end.
        var r = HTTPProbeReader(expectStatus: nil, expectBody: nil)
        var verdict = r.feed(Array("HTTP/1.1 200 OK\r\n".utf8))
        let header = Array("X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n".utf8)
        var fed = 0
        while verdict == .pending && fed < 10 * ProbeLimits.headerBytes { verdict = r.feed(header); fed += header.count }
        #expect(verdict == .miss(.tooLarge("status line and headers longer than \(ProbeLimits.headerBytes) bytes")))
        #expect(fed <= ProbeLimits.headerBytes + header.count)
        // An endless body without the expected text.
        var b = HTTPProbeReader(expectStatus: nil, expectBody: "needle")
        verdict = b.feed(Array("HTTP/1.1 200 OK\r\n\r\n".utf8))
        let block = [UInt8](repeating: 0x61, count: 65536)
        fed = 0
        while verdict == .pending && fed < 100 * ProbeLimits.bodyBytes { verdict = b.feed(block); fed += block.count }
        #expect(verdict == .miss(.bodyMismatch(expected: "needle", searchedBytes: ProbeLimits.bodyBytes)))
        #expect(fed <= ProbeLimits.bodyBytes + block.count)
    }

    @Test func theStageSaysHowFarAnAnswerGot() {
        var r = HTTPProbeReader(expectStatus: nil, expectBody: "ok")
        #expect(r.stage == "waiting for the status line (connected, request sent)")
        _ = r.feed(Array("HTTP/1.1 200".utf8))
        #expect(r.stage == "reading the status line and headers (12 bytes so far)")
        _ = r.feed(Array(" OK\r\nContent-Length: 100\r\n\r\nabc".utf8))
        #expect(r.stage == "reading the body (3 bytes so far, \"ok\" not found yet)")
    }
}
