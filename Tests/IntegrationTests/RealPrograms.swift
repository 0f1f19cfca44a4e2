import DefibCore
import DefibPOSIX
import Foundation
import Glibc

/// Real programs from Debian's packages (installed by scripts/setup.sh), each run on loopback with a free port
/// and a scratch directory — never their packaged services. Each fixture gives the `argv` to run it with (for
/// tests that put it under defib) and `start()` to run it directly; `stop()` ends everything it started, by pid.
enum RealPrograms {
    static let python = "/usr/bin/python3"
    static let redisServer = "/usr/bin/redis-server"
    static let redisCLI = "/usr/bin/redis-cli"
    static let nginx = "/usr/sbin/nginx"
    static let timesyncd = "/lib/systemd/systemd-timesyncd"
    static let unshare = "/usr/bin/unshare"
    static let gdb = "/usr/bin/gdb"

    /// The programs a fixture needs, or a message naming the missing ones and how to install them.
    static func require(_ paths: String...) throws {
        let missing = paths.filter { access($0, X_OK) != 0 }
        if !missing.isEmpty { throw TestFailure("missing \(missing.joined(separator: ", ")): run scripts/setup.sh") }
    }

    /// A plain one-line TCP exchange (send `line`, read the first line back) with a timeout; nil when refused,
    /// reset, closed or timed out. Independent of the probes under test.
    static func exchange(port: Int, line: String, timeoutMs: Int = 2000) -> String? {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
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
        let out = Array((line + "\r\n").utf8)
        guard send(fd, out, out.count, Int32(MSG_NOSIGNAL)) == out.count else { return nil }
        var got: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 4096)
        while !got.contains(10) {
            let n = recv(fd, &buf, buf.count, 0)
            if n <= 0 { return nil }
            got += buf[0..<n]
        }
        let first = got[..<got.firstIndex(of: 10)!]
        return String(decoding: first.last == 13 ? first.dropLast() : first, as: UTF8.self)
    }
}

/// `python3 -m http.server` serving a scratch directory (which holds `health` = "status: ok") on 127.0.0.1.
final class HTTPServerProgram {
    let port = freePort()
    let directory: Scratch
    private(set) var process: Background?

    init() throws {
        try RealPrograms.require(RealPrograms.python)
        directory = Scratch("httpserver")
        try "status: ok\n".write(toFile: directory.path + "/health", atomically: true, encoding: .utf8)
    }

    var argv: [String] {
        [RealPrograms.python, "-m", "http.server", String(port), "--bind", "127.0.0.1", "--directory", directory.path]
    }
    var url: String { "http://127.0.0.1:\(port)/" }

    /// Starts it and waits until it answers.
    @discardableResult
    func start() throws -> Background {
        let p = try Background(argv, env: ["PYTHONUNBUFFERED": "1"], log: directory.path + "/server.log")
        process = p
        guard waitUntil(timeoutMs: 30_000, { httpGet(port: port, path: "/health", host: "127.0.0.1") != nil }) else {
            throw TestFailure("http.server on \(port) did not answer: \(p.log)")
        }
        return p
    }

    func stop() {
        if let process { try? process.child.signal(SIGCONT); process.stop() }
        directory.remove()
    }
}

/// `redis-server` without persistence, with DEBUG enabled (`DEBUG SLEEP N` is a real hang inside a real server).
final class RedisProgram {
    let port = freePort()
    let directory: Scratch
    private(set) var process: Background?

    init() throws {
        try RealPrograms.require(RealPrograms.redisServer, RealPrograms.redisCLI)
        directory = Scratch("redis")
    }

    var argv: [String] {
        [RealPrograms.redisServer, "--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--enable-debug-command", "yes", "--dir", directory.path, "--daemonize", "no", "--logfile", ""]
    }

    @discardableResult
    func start() throws -> Background {
        let p = try Background(argv, log: directory.path + "/redis.log")
        process = p
        guard waitUntil(timeoutMs: 30_000, { RealPrograms.exchange(port: port, line: "PING") == "+PONG" }) else {
            throw TestFailure("redis-server on \(port) did not answer PING: \(p.log)")
        }
        return p
    }

    /// `redis-cli -p PORT ARGS…` (stdout, exit code).
    func cli(_ args: String..., timeoutMs: Int = 30_000) throws -> CommandResult {
        try runCommand([RealPrograms.redisCLI, "-p", String(port)] + args, timeoutMs: timeoutMs)
    }

    func stop() {
        if let process { try? process.child.signal(SIGCONT); process.stop() }
        directory.remove()
    }
}

/// nginx with a master and two workers, in the foreground (`daemon off`), its prefix and logs in a scratch
/// directory, serving `ok` on / and `healthy` on /health.
final class NginxProgram {
    let port = freePort()
    let prefix: Scratch
    private(set) var process: Background?

    init(workers: Int = 2) throws {
        try RealPrograms.require(RealPrograms.nginx)
        prefix = Scratch("nginx")
        let p = prefix.path
        try """
            daemon off;
            master_process on;
            worker_processes \(workers);
            pid \(p)/nginx.pid;
            error_log \(p)/error.log info;
            events { worker_connections 64; }
            http {
                access_log off;
                client_body_temp_path \(p)/body;
                proxy_temp_path \(p)/proxy;
                fastcgi_temp_path \(p)/fastcgi;
                uwsgi_temp_path \(p)/uwsgi;
                scgi_temp_path \(p)/scgi;
                server {
                    listen 127.0.0.1:\(port);
                    location / { return 200 "ok\\n"; }
                    location /health { return 200 "healthy\\n"; }
                }
            }
            """.write(toFile: p + "/nginx.conf", atomically: true, encoding: .utf8)
    }

    var argv: [String] { [RealPrograms.nginx, "-p", prefix.path, "-c", prefix.path + "/nginx.conf", "-e", prefix.path + "/error.log"] }
    var url: String { "http://127.0.0.1:\(port)/health" }

    /// Starts it and waits until it answers and both workers run.
    @discardableResult
    func start(workers: Int = 2) throws -> Background {
        let p = try Background(argv, log: prefix.path + "/nginx.out")
        process = p
        guard waitUntil(timeoutMs: 30_000, { httpGet(port: port, path: "/health", host: "127.0.0.1") != nil && self.workers().count == workers }) else {
            throw TestFailure("nginx on \(port) did not start \(workers) workers: \(p.log) \(readTextFile(prefix.path + "/error.log") ?? "")")
        }
        return p
    }

    /// The master's children (the workers).
    func workers() -> [Int32] { process.map { childProcesses(of: $0.pid) } ?? [] }

    /// Makes a worker spin: gdb writes `jmp .` (EB FE) at its current instruction and sets the pc (which stops
    /// the interrupted epoll_wait from being restarted), then detaches. The worker burns a CPU from then on.
    func spin(worker pid: Int32) throws {
        try RealPrograms.require(RealPrograms.gdb)
        let r = try runCommand([RealPrograms.gdb, "-p", String(pid), "-batch", "-nx",
                                "-ex", "set {unsigned short}$pc = 0xfeeb", "-ex", "set var $pc = $pc", "-ex", "detach"])
        guard r.code == 0, (readTextFile("/proc/\(pid)/stat").flatMap(ProcParse.stat)?.state ?? "?") != "T" else {
            throw TestFailure("gdb could not make \(pid) spin: \(r.stdout) \(r.stderr)")
        }
    }

    /// Continues and kills every process in the master's group (stopped or spinning workers would not obey
    /// the master's SIGTERM), then reaps the master.
    func stop() {
        if let process {
            let workers = workers()
            process.child.signalGroup(SIGCONT)
            process.child.signalGroup(SIGKILL)
            for w in workers { killProcess(w) }
            process.stop()
        }
        prefix.remove()
    }
}

/// systemd-timesyncd outside systemd. What it needs, as found by running it under a plain fork (see
/// `TimesyncdNotifyTests`): started as root, it creates /var/lib/systemd/timesync, drops to the
/// `systemd-timesync` user (uid and gid 997 here, no supplementary groups) keeping only CAP_SYS_TIME, and only
/// then talks to NOTIFY_SOCKET — so the socket and its directory must be reachable by that user. With
/// WATCHDOG_USEC set it sends WATCHDOG=1 first, then READY=1 and STATUS lines, then WATCHDOG=1 about every
/// half period. Started directly as that user (no capabilities) it runs the same. D-Bus is optional. It is
/// always run in a network namespace of its own (`unshare --net`, which execs it under the same pid): there it
/// cannot reach an NTP server, so it never sets this machine's clock.
struct TimesyncdProgram {
    var argv: [String] { [RealPrograms.unshare, "--net", RealPrograms.timesyncd] }

    /// The environment for a run under a NOTIFY_SOCKET with a watchdog period.
    func environment(notifySocket: String, watchdogUsec: UInt64) -> [String: String] {
        ["PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "NOTIFY_SOCKET": notifySocket, "WATCHDOG_USEC": String(watchdogUsec),
         "SYSTEMD_LOG_TARGET": "console"]
    }

    init() throws { try RealPrograms.require(RealPrograms.timesyncd, RealPrograms.unshare) }
}

/// A small misbehaving TCP server (Fixtures/misbehaving_server.py) for the answers real servers do not give:
/// garbage, endless headers or body, a drip, a reset, silence.
final class MisbehavingServer {
    let port = freePort()
    let process: Background
    let scratch = Scratch("misbehaving")

    init(_ mode: String) throws {
        try RealPrograms.require(RealPrograms.python)
        process = try Background([RealPrograms.python, Binaries.fixtures + "/misbehaving_server.py", String(port), mode],
                                 env: ["PYTHONUNBUFFERED": "1"], log: scratch.path + "/log")
        guard waitUntil(timeoutMs: 30_000, { process.log.contains("listening") }) else {
            throw TestFailure("misbehaving_server.py \(mode) did not start: \(process.log)")
        }
    }

    func stop() { process.stop(graceMs: 2000); scratch.remove() }
}
