import DefibCore
import DefibPOSIX
import Foundation
import Glibc

/// Paths of the built executables: they sit next to the test bundle in the build directory.
enum Binaries {
    static let directory: String = {
        var buf = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buf, buf.count - 1)
        return (String(cString: Array(buf[0..<max(0, n)]) + [0]) as NSString).deletingLastPathComponent
    }()
    static var defib: String { "\(directory)/defib" }
    static var proxy: String { "\(directory)/defib-proxy" }
    static var fixtures: String { (#filePath as NSString).deletingLastPathComponent + "/Fixtures" }
}

/// A scratch directory removed at the end of a test.
final class Scratch {
    let path: String
    init(_ name: String) {
        path = "/tmp/defib-test-\(name)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }
    func remove() { try? FileManager.default.removeItem(atPath: path) }
}

/// A background process started by a test, stopped by pid when the test ends.
final class Background {
    let child: ChildProcess
    let logPath: String
    private var status: ChildStatus?

    init(_ argv: [String], env: [String: String] = [:], log: String) throws {
        var environment = currentEnvironment()
        for (k, v) in env { environment[k] = v }
        let fd = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        defer { close(fd) }
        var request = SpawnRequest(argv: argv, environment: environment)
        request.parentDeathSignal = 0   // test threads come and go; we stop our processes ourselves
        request.stdoutFD = fd; request.stderrFD = fd; request.stdinFromDevNull = true
        child = try spawnProcess(request)
        logPath = log
    }

    var pid: Int32 { child.pid }
    var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    /// The exit status if it has ended within `timeoutMs`.
    func wait(timeoutMs: Int) -> ChildStatus? {
        if status == nil { status = waitForChild(child, timeoutMs: timeoutMs) }
        return status
    }

    /// SIGTERM, then SIGKILL after a grace period; always reaped.
    @discardableResult
    func stop(graceMs: Int = 5000) -> ChildStatus? {
        if status == nil {
            try? child.signal(SIGTERM)
            if wait(timeoutMs: graceMs) == nil {
                try? child.signal(SIGKILL)
                _ = wait(timeoutMs: 5000)
            }
        }
        child.closePidfd()
        return status
    }
}

/// Result of running a command to completion.
struct CommandResult {
    var code: Int32
    var stdout: String
    var stderr: String
}

/// Runs a command (no shell) and returns its exit code and output.
func runCommand(_ argv: [String], env: [String: String] = [:], workingDirectory: String? = nil, timeoutMs: Int = 60_000) throws -> CommandResult {
    let dir = Scratch("cmd")
    defer { dir.remove() }
    var environment = currentEnvironment()
    for (k, v) in env { environment[k] = v }
    let out = open("\(dir.path)/out", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
    let err = open("\(dir.path)/err", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
    var request = SpawnRequest(argv: argv, environment: environment)
    request.parentDeathSignal = 0
    request.workingDirectory = workingDirectory
    request.stdoutFD = out; request.stderrFD = err; request.stdinFromDevNull = true
    let child = try spawnProcess(request)
    close(out); close(err)
    defer { child.closePidfd() }
    guard let status = waitForChild(child, timeoutMs: timeoutMs) else {
        try? child.signal(SIGKILL); _ = waitForChild(child, timeoutMs: 5000)
        throw TestFailure("\(argv.joined(separator: " ")) did not finish within \(timeoutMs) ms")
    }
    let code: Int32 = switch status { case let .exited(c): c; case let .signaled(s, _): 128 + s }
    return CommandResult(code: code,
                         stdout: (try? String(contentsOfFile: "\(dir.path)/out", encoding: .utf8)) ?? "",
                         stderr: (try? String(contentsOfFile: "\(dir.path)/err", encoding: .utf8)) ?? "")
}

struct TestFailure: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

/// Polls `condition` every 50 ms until it holds or `timeoutMs` passes.
func waitUntil(timeoutMs: Int, _ condition: () throws -> Bool) rethrows -> Bool {
    let deadline = monotonicNanoseconds() + Int64(timeoutMs) * 1_000_000
    while monotonicNanoseconds() < deadline {
        if try condition() { return true }
        usleep(50_000)
    }
    return try condition()
}

/// A free TCP port on 127.0.0.1 (bound and released; good enough on a test machine).
func freePort() -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    addr.sin_port = 0
    _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
    var len = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
    return Int(UInt16(bigEndian: addr.sin_port))
}

/// One HTTP/1.1 GET over a fresh connection with a timeout; nil when refused, reset or timed out.
func httpGet(port: Int, path: String, host: String, timeoutMs: Int = 2000) -> (status: Int, body: String)? {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var tv = timeval(tv_sec: timeoutMs / 1000, tv_usec: Int((timeoutMs % 1000) * 1000))
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    addr.sin_port = UInt16(port).bigEndian
    let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
    guard rc == 0 else { return nil }
    let req = Array("GET \(path) HTTP/1.1\r\nHost: \(host)\r\nConnection: close\r\n\r\n".utf8)
    guard send(fd, req, req.count, Int32(MSG_NOSIGNAL)) == req.count else { return nil }
    var data = [UInt8]()
    var buf = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = recv(fd, &buf, buf.count, 0)
        if n > 0 { data += buf[0..<n]; continue }
        if n == 0 { break }
        return nil
    }
    let text = String(decoding: data, as: UTF8.self)
    guard text.hasPrefix("HTTP/1."), let space = text.firstIndex(of: " ") else { return nil }
    let status = Int(text[text.index(after: space)...].prefix(3)) ?? 0
    let body = text.components(separatedBy: "\r\n\r\n").dropFirst().joined(separator: "\r\n\r\n")
    return (status, body)
}

/// `defib incidents --json` parsed.
func incidentsJSON(stateDir: String) throws -> [[String: Any]] {
    let r = try runCommand([Binaries.defib, "incidents", "list", "--state-dir", stateDir, "--json"])
    guard r.code == 0 else { throw TestFailure("incidents list failed (\(r.code)): \(r.stderr)") }
    guard let arr = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [[String: Any]] else {
        throw TestFailure("incidents list --json is not an array: \(r.stdout.prefix(300))")
    }
    return arr
}

/// A defib config supervising Fixtures/pingable.py in `mode` (50 ms heartbeat, 400 ms deadline), with
/// extra keys in [service] and [heartbeat] and extra TOML appended (later tables and keys). Returns its path.
@discardableResult
func writePingableConfig(at path: String, stateDir: String, name: String, mode: String, serviceExtra: String = "",
                         heartbeatExtra: String = "", extra: String = "") throws -> String {
    try """
        state_dir = "\(stateDir)"
        [service]
        name = "\(name)"
        argv = ["\(Binaries.fixtures)/pingable.py"]
        env = { MODE = "\(mode)" }
        \(serviceExtra)
        [heartbeat]
        interval_ms = 50
        deadline_ms = 400
        \(heartbeatExtra)
        \(extra)
        """.write(toFile: path, atomically: true, encoding: .utf8)
    return path
}
