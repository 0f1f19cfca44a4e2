@testable import DefibProxy
import DefibSystem
import Glibc
import Logging
import Synchronization

/// A logger that drops everything (the tests check outcomes, not log lines).
let quietLogger = Logger(label: "test") { _ in SwiftLogNoOpLogHandler() }

/// Objects with threads parked on them forever are leaked on purpose (one extra retain, never released),
/// so a parked thread never touches freed memory after its test ends.
func leak(_ o: AnyObject) { _ = Unmanaged.passRetained(o) }

/// Runs `body` on a new thread; the returned event is set when it returns.
func onThread(_ body: @escaping @Sendable () -> Void) -> ThreadEvent {
    let done = ThreadEvent()
    startThread(name: "test-thread") { body(); done.set() }
    return done
}

/// Polls `condition` every 5 ms for up to `timeoutMs`.
func eventually(timeoutMs: Int, _ condition: () -> Bool) -> Bool {
    let deadline = monotonicNanoseconds() + Int64(timeoutMs) * 1_000_000
    while monotonicNanoseconds() < deadline {
        if condition() { return true }
        usleep(5000)
    }
    return condition()
}

private func withTimeouts(_ fd: Int32, ms: Int) {
    var tv = timeval(tv_sec: ms / 1000, tv_usec: (ms % 1000) * 1000)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
}

private func readAll(_ fd: Int32, until stop: ([UInt8]) -> Bool = { _ in false }) -> [UInt8]? {
    var data: [UInt8] = []
    var buf = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = recv(fd, &buf, buf.count, 0)
        if n > 0 { data += buf[0..<n]; if stop(data) { return data }; continue }
        if n == 0 { return data }
        return data.isEmpty ? nil : data
    }
}

/// Sends `raw` to 127.0.0.1:`port` and reads until the server closes; nil on refusal or timeout.
func tcpExchange(port: Int, _ raw: String, timeoutMs: Int = 3000) -> String? {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    withTimeouts(fd, ms: timeoutMs)
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    addr.sin_port = UInt16(port).bigEndian
    let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
    guard rc == 0 else { return nil }
    let bytes = Array(raw.utf8)
    guard send(fd, bytes, bytes.count, Int32(MSG_NOSIGNAL)) == bytes.count else { return nil }
    return readAll(fd).map { String(decoding: $0, as: UTF8.self) }
}

/// One GET with `Connection: close`; (status, headers+body text).
func httpGet(port: Int, path: String, host: String) -> (status: Int, text: String)? {
    guard let text = tcpExchange(port: port, "GET \(path) HTTP/1.1\r\nHost: \(host)\r\nConnection: close\r\n\r\n"),
          text.hasPrefix("HTTP/1.1 ") else { return nil }
    return (Int(text.dropFirst(9).prefix(3)) ?? 0, text)
}

/// Writes lines to a Unix socket and closes it (the update stream has no replies).
func sendLines(path: String, _ lines: [String]) -> Bool {
    let fd = unixConnect(path)
    guard fd >= 0 else { return false }
    defer { close(fd) }
    let bytes = Array(lines.map { $0 + "\n" }.joined().utf8)
    return send(fd, bytes, bytes.count, Int32(MSG_NOSIGNAL)) == bytes.count
}

private func unixConnect(_ path: String) -> Int32 {
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
    var addr = sockaddr_un()
    addr.sun_family = sa_family_t(AF_UNIX)
    withUnsafeMutableBytes(of: &addr.sun_path) { raw in for (i, b) in path.utf8.enumerated() { raw[i] = b } }
    let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
    if rc != 0 { close(fd); return -1 }
    return fd
}

/// Sends request lines on one Unix-socket connection and reads `replies` lines back; nil on timeout.
func controlExchange(path: String, _ lines: [String], replies: Int? = nil, timeoutMs: Int = 2000) -> [String]? {
    let fd = unixConnect(path)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    withTimeouts(fd, ms: timeoutMs)
    let bytes = Array(lines.map { $0 + "\n" }.joined().utf8)
    guard send(fd, bytes, bytes.count, Int32(MSG_NOSIGNAL)) == bytes.count else { return nil }
    let want = replies ?? lines.count
    guard let data = readAll(fd, until: { d in d.filter { $0 == 10 }.count >= want }) else { return nil }
    let got = String(decoding: data, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false).dropLast().map(String.init)
    return got.count >= want ? Array(got.prefix(want)) : nil
}

/// A minimal HTTP backend on a real socket: answers every request with `body` and records what it received.
final class RawBackend: @unchecked Sendable {
    let port: Int
    private let fd: Int32
    let requests = Mutex<[String]>([])

    init(body: String) {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        self.fd = fd
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        listen(fd, 16)
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
        port = Int(UInt16(bigEndian: addr.sin_port))
        let listener = fd
        startThread(name: "raw-backend") { [self] in
            while true {
                let c = accept(listener, nil, nil)
                if c < 0 { return }
                withTimeouts(c, ms: 3000)
                let data = readAll(c, until: { d in
                    guard let end = headerEnd(d) else { return false }
                    let head = String(decoding: d[..<end], as: UTF8.self).lowercased()
                    let length = head.split(separator: "\r\n").first { $0.hasPrefix("content-length:") }
                        .flatMap { Int($0.dropFirst(15).trimmingCharacters()) } ?? 0
                    return d.count >= end + length
                }) ?? []
                requests.withLock { $0.append(String(decoding: data, as: UTF8.self)) }
                let response = Array("HTTP/1.1 200 OK\r\nContent-Length: \(body.utf8.count)\r\nX-Backend: raw\r\n\r\n\(body)".utf8)
                _ = send(c, response, response.count, Int32(MSG_NOSIGNAL))
                close(c)
            }
        }
    }

    func stop() { shutdown(fd, Int32(SHUT_RDWR)); close(fd) }
}

extension Substring {
    func trimmingCharacters() -> String { String(drop { $0 == " " }.reversed().drop { $0 == " " }.reversed()) }
}

/// A scratch directory path under /tmp, unique per call (not created).
func scratchPath(_ name: String) -> String {
    "/tmp/defib-proxy-test-\(name)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
}

/// The index just past the blank line ending an HTTP head.
func headerEnd(_ d: [UInt8]) -> Int? {
    guard d.count >= 4 else { return nil }
    for i in 0...(d.count - 4) where d[i] == 13 && d[i + 1] == 10 && d[i + 2] == 13 && d[i + 3] == 10 { return i + 4 }
    return nil
}

/// A backend that completes TCP handshakes (the kernel's backlog) but never answers.
final class SilentBackend: @unchecked Sendable {
    let port: Int
    private let fd: Int32

    init() {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        self.fd = fd
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        listen(fd, 16)
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
        port = Int(UInt16(bigEndian: addr.sin_port))
    }

    func stop() { close(fd) }
}
