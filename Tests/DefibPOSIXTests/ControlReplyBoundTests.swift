@testable import DefibPOSIX
import DefibTestKit
import Foundation
import Glibc
import Synchronization
import Testing

/// A peer on the control channel that streams without a newline costs one short read, not the loop's time.
@Suite struct ControlReplyBoundTests {
    /// A Unix socket server on its own thread that answers one connection with `reply` (written until the
    /// client hangs up, so up to its whole length).
    final class Server: @unchecked Sendable {
        let path: String
        let fd: Int32
        let sent = Atomic<Int>(0)
        init(path: String) throws {
            self.path = path
            fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            var addr = sockaddr_un(); addr.sun_family = sa_family_t(AF_UNIX)
            withUnsafeMutableBytes(of: &addr.sun_path) { raw in for (i, b) in path.utf8.enumerated() { raw[i] = b } }
            let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
            guard rc == 0, listen(fd, 4) == 0 else { throw TestKitError("bind(\(path)): \(String(cString: strerror(errno)))") }
        }
        func serve(_ reply: @escaping @Sendable (Int32, Server) -> Void) {
            Thread.detachNewThread { [self] in
                let conn = accept(fd, nil, nil)
                guard conn >= 0 else { return }
                var buf = [UInt8](repeating: 0, count: 256)
                _ = recv(conn, &buf, buf.count, 0)   // the request line
                reply(conn, self)
                close(conn)
            }
        }
        deinit { close(fd); unlink(path) }
    }

    @Test func aHundredMegabytesWithoutANewlineIsAnUnexpectedReplyAtOnce() throws {
        let scratch = ScratchDirectory("ctl-flood")
        let server = try Server(path: scratch.path + "/c.sock")
        let total = 100 << 20
        server.serve { conn, server in
            let chunk = [UInt8](repeating: UInt8(ascii: "x"), count: 1 << 16)
            while server.sent.load(ordering: .relaxed) < total {
                let n = send(conn, chunk, chunk.count, Int32(MSG_NOSIGNAL))
                if n <= 0 { return }   // the client hung up: it stopped reading, as it should
                server.sent.add(n, ordering: .relaxed)
            }
        }
        let request = try ControlRequest.start(path: server.path, line: "ping 1").get()
        var calls = 0
        var outcome = ControlRequest.Progress.pending
        while case .pending = outcome, calls < 10_000 {
            var pfd = pollfd(fd: request.fd, events: Int16(POLLIN), revents: 0)
            _ = poll(&pfd, 1, 10_000)
            outcome = request.readAvailable()
            calls += 1
        }
        request.close()
        guard case let .failed(problem) = outcome else { Issue.record("\(outcome)"); return }
        #expect(problem.hasPrefix("unexpected reply: more than 4096 bytes without a newline ('xxxx"), "\(problem)")
        #expect(request.bytesReceived <= ControlRequest.defaultMaxReplyBytes + 1, "read \(request.bytesReceived) bytes of a 100 MB stream")
        #expect(request.bytesScanned == request.bytesReceived, "each byte searched once")
        #expect(server.sent.load(ordering: .relaxed) < total, "the rest of the 100 MB was never read")
    }

    @Test func aReplyArrivingByteByByteIsScannedOnce() throws {
        let scratch = ScratchDirectory("ctl-trickle")
        let server = try Server(path: scratch.path + "/c.sock")
        let reply = "pong " + String(repeating: "7", count: 3000) + "\n"
        server.serve { conn, server in
            for b in reply.utf8 {
                var byte = b
                guard send(conn, &byte, 1, Int32(MSG_NOSIGNAL)) == 1 else { return }
                server.sent.add(1, ordering: .relaxed)
                if server.sent.load(ordering: .relaxed) % 500 == 0 { usleep(1000) }
            }
        }
        let request = try ControlRequest.start(path: server.path, line: "ping 1").get()
        defer { request.close() }
        var outcome = ControlRequest.Progress.pending
        for _ in 0..<100_000 {
            var pfd = pollfd(fd: request.fd, events: Int16(POLLIN), revents: 0)
            _ = poll(&pfd, 1, 10_000)
            outcome = request.readAvailable()
            if case .pending = outcome { continue }
            break
        }
        #expect(outcome == .reply(String(reply.dropLast())))
        #expect(request.bytesScanned == reply.utf8.count, "scanned \(request.bytesScanned) bytes for a \(reply.utf8.count)-byte reply")
    }

    @Test func aDocumentReplyKeepsItsLargerLimit() throws {
        let scratch = ScratchDirectory("ctl-doc")
        let server = try Server(path: scratch.path + "/c.sock")
        let body = "{\"locks\":[" + String(repeating: "{\"name\":\"catalog\"},", count: 2000) + "{}]}"
        server.serve { conn, _ in
            let bytes = Array((body + "\n").utf8)
            var off = 0
            while off < bytes.count {
                let n = bytes[off...].withUnsafeBytes { send(conn, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                if n <= 0 { return }
                off += n
            }
        }
        let reply = ControlRequest.roundTrip(path: server.path, line: "locks", timeoutMs: 30_000)
        #expect(try reply.get() == body, "defib ctl reads documents up to \(ControlRequest.largeReplyBytes) bytes")
    }
}
