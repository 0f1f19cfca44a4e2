import DefibPOSIX
import Foundation
import Glibc
import Synchronization
import Testing

/// The test run's one PostgreSQL: a throwaway cluster made with initdb in a temporary directory, running as
/// the `postgres` user inside a network namespace of its own (`dfbt<pid>db`), where a bridge is the fleet's
/// network: each test "host" is another namespace with a veth link to that bridge, so every address exists
/// only inside namespaces the tests made. The tests themselves reach the server over its Unix socket (in the
/// temporary directory), which no network namespace hides.
///
/// Started on first use, shared by every fleet test (each gets its own database), stopped and removed at
/// exit; a run that died before cleaning up is cleaned up by the next one (names carry the pid). The server
/// gets SIGKILL if the test process dies (setpriv --pdeathsig, spawned from a thread that lives as long as
/// the process).
final class FleetTestDatabase: @unchecked Sendable {
    /// Why the fleet tests cannot run here (not root, no PostgreSQL), or nil.
    static let unavailable: String? = {
        if geteuid() != 0 { return "needs root (network namespaces, a postgres-owned cluster)" }
        if postgresBinDirectory == nil { return "PostgreSQL is not installed (scripts/setup.sh installs it)" }
        for tool in ["/usr/sbin/ip", "/usr/bin/setpriv", "/usr/sbin/runuser", "/usr/bin/openssl", "/usr/bin/psql"]
        where access(tool, X_OK) != 0 { return "\(tool) is missing (scripts/setup.sh installs it)" }
        if getpwnam("postgres") == nil { return "no postgres user (installing postgresql creates it)" }
        return nil
    }()

    /// The one cluster (started on first use).
    static let shared: Result<FleetTestDatabase, TestFailure> = {
        do { return .success(try FleetTestDatabase()) } catch let e as TestFailure { return .failure(e) } catch {
            return .failure(TestFailure("\(error)"))
        }
    }()

    /// The cluster, or a test failure saying why it could not start.
    static func get() throws -> FleetTestDatabase { try shared.get() }

    /// `/usr/lib/postgresql/<newest>/bin`.
    static let postgresBinDirectory: String? = {
        let base = "/usr/lib/postgresql"
        let versions = ((try? FileManager.default.contentsOfDirectory(atPath: base)) ?? []).compactMap(Int.init).sorted()
        return versions.reversed().map { "\(base)/\($0)/bin" }.first { access("\($0)/postgres", X_OK) == 0 }
    }()

    let root: String
    let data: String
    let socketDirectory: String
    let namespace: String
    /// The bridge's address inside the database namespace: where hosts connect.
    let address = "10.213.0.1"
    let port: Int
    /// Password of the roles `defib` (any connection) and `defibtls` (TLS connections only).
    let password: String
    /// The server certificate (self-signed, for `address`): a client's sslrootcert.
    var certificate: String { "\(root)/server.crt" }
    private var server: Int32?
    private let lock = NSLock()
    private var hostCount = 0
    private static let spawner = SpawnerThread()

    private init() throws {
        FleetTestDatabase.removeLeftovers()
        let pid = getpid()
        root = "/tmp/dfbpg-\(pid)"
        data = root + "/data"
        socketDirectory = root + "/sock"
        namespace = "dfbt\(pid)db"
        port = Int.random(in: 20_000...60_000)
        password = (0..<24).map { _ in "abcdefghijkmnpqrstuvwxyz23456789".randomElement()! }.map(String.init).joined()
        atexit { FleetTestDatabase.cleanUpAtExit() }
        FleetTestDatabase.cleanupList.withLock { $0.append((root, "dfbt\(pid)")) }

        let bin = try #require(Self.postgresBinDirectory)
        try? FileManager.default.removeItem(atPath: root)
        try FileManager.default.createDirectory(atPath: socketDirectory, withIntermediateDirectories: true)
        chmod(root, 0o755)
        let pw = getpwnam("postgres")!.pointee
        chown(socketDirectory, pw.pw_uid, pw.pw_gid)
        try FileManager.default.createDirectory(atPath: data, withIntermediateDirectories: true)
        chown(data, pw.pw_uid, pw.pw_gid)
        chmod(data, 0o700)
        try sh(["/usr/sbin/ip", "netns", "add", namespace])
        try sh(["/usr/sbin/ip", "-n", namespace, "link", "set", "lo", "up"])
        try sh(["/usr/sbin/ip", "-n", namespace, "link", "add", "br0", "type", "bridge"])
        try sh(["/usr/sbin/ip", "-n", namespace, "addr", "add", "\(address)/24", "dev", "br0"])
        try sh(["/usr/sbin/ip", "-n", namespace, "link", "set", "br0", "up"])

        try sh(["/usr/sbin/runuser", "-u", "postgres", "--", "\(bin)/initdb", "-D", data, "-U", "postgres", "-A", "trust",
                "-E", "UTF8", "--no-sync", "--no-instructions"], timeoutMs: 120_000)
        // A self-signed certificate for the bridge address: TLS is tested for real (sslmode=require, verify-full).
        try sh(["/usr/bin/openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=defib-fleet-test",
                "-addext", "subjectAltName=IP:\(address)", "-keyout", "\(data)/server.key", "-out", "\(data)/server.crt"])
        chown("\(data)/server.key", pw.pw_uid, pw.pw_gid)
        chown("\(data)/server.crt", pw.pw_uid, pw.pw_gid)
        chmod("\(data)/server.key", 0o600)
        try FileManager.default.copyItem(atPath: "\(data)/server.crt", toPath: certificate)
        let conf = """

            listen_addresses = '\(address)'
            port = \(port)
            unix_socket_directories = '\(socketDirectory)'
            max_connections = 60
            shared_buffers = 32MB
            fsync = off
            synchronous_commit = off
            full_page_writes = off
            ssl = on
            ssl_cert_file = 'server.crt'
            ssl_key_file = 'server.key'
            log_min_messages = warning
            """
        let hba = """
            local all all trust
            hostssl all defibtls 0.0.0.0/0 scram-sha-256
            hostnossl all defibtls 0.0.0.0/0 reject
            host all defib 0.0.0.0/0 scram-sha-256
            """
        let confHandle = try FileHandle(forWritingTo: URL(fileURLWithPath: "\(data)/postgresql.conf"))
        confHandle.seekToEndOfFile()
        confHandle.write(Data(conf.utf8))
        try confHandle.close()
        try hba.write(toFile: "\(data)/pg_hba.conf", atomically: false, encoding: .utf8)
        try start()
        try psql("postgres", """
            CREATE ROLE defib LOGIN PASSWORD '\(password)';
            CREATE ROLE defibtls LOGIN PASSWORD '\(password)';
            GRANT defib TO defibtls;
            """)
    }

    // MARK: The server

    /// Starts the server and waits until it answers.
    func start() throws {
        let bin = try #require(Self.postgresBinDirectory)
        let argv = ["/usr/sbin/ip", "netns", "exec", namespace, "/usr/bin/setpriv", "--reuid=postgres", "--regid=postgres",
                    "--clear-groups", "--pdeathsig", "KILL", "--", "\(bin)/postgres", "-D", data]
        let log = open("\(root)/postgres.log", O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
        defer { close(log) }
        let pid = try Self.spawner.spawn(argv, log: log)
        lock.withLock { server = pid }
        let up = waitUntil(timeoutMs: 60_000) { (try? self.psql("postgres", "SELECT 1")) == "1" }
        if !up { throw TestFailure("PostgreSQL did not start: \((try? String(contentsOfFile: "\(root)/postgres.log", encoding: .utf8)) ?? "")") }
    }

    /// Stops the server (fast shutdown: connections are cut, as when a database host goes away).
    func stop() {
        guard let pid = lock.withLock({ () -> Int32? in defer { server = nil }; return server }) else { return }
        kill(pid, SIGINT)
        var status: Int32 = 0
        for _ in 0..<600 {
            if waitpid(pid, &status, WNOHANG) == pid { return }
            usleep(50_000)
        }
        kill(pid, SIGKILL)
        waitpid(pid, &status, 0)
    }

    // MARK: Databases, URLs, SQL

    /// A fresh database owned by `defib`, for one test.
    func createDatabase(_ label: String) throws -> String {
        let name = "t_\(label.lowercased().filter { $0.isLetter || $0.isNumber })_\(UInt32.random(in: 0...UInt32.max))"
        try psql("postgres", "CREATE DATABASE \(name) OWNER defib")
        return name
    }

    /// The URL the tests' own (root-namespace) commands use: the Unix socket, as superuser-free `defib`.
    func socketURL(_ database: String, user: String = "defib") -> String {
        "postgresql://\(user)@:\(port)/\(database)?host=\(socketDirectory)"
    }

    /// The URL a host uses over its veth link.
    func tcpURL(_ database: String, user: String = "defib", query: String = "") -> String {
        "postgresql://\(user)@\(address):\(port)/\(database)" + (query.isEmpty ? "" : "?\(query)")
    }

    /// Runs SQL as the superuser over the Unix socket; returns psql's unaligned output, trimmed.
    @discardableResult
    func psql(_ database: String, _ sql: String) throws -> String {
        let r = try runCommand(["/usr/bin/psql", "-h", socketDirectory, "-p", String(port), "-U", "postgres", "-d", database,
                                "-v", "ON_ERROR_STOP=1", "-X", "-q", "-At", "-c", sql], timeoutMs: 60_000)
        guard r.code == 0 else { throw TestFailure("psql: \(sql.prefix(200)): \(r.stderr)") }
        return r.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// A 0600 file holding the password, for `--fleet-password-file` / `--password-file`.
    func passwordFile(in directory: String) throws -> String {
        let path = "\(directory)/fleet-password"
        try (password + "\n").write(toFile: path, atomically: false, encoding: .utf8)
        chmod(path, 0o600)
        return path
    }

    // MARK: Hosts

    /// A new host namespace linked to the database's bridge (see `FleetTestHost`).
    func makeHost(_ name: String) throws -> FleetTestHost {
        let n = lock.withLock { hostCount += 1; return hostCount }
        guard n < 200 else { throw TestFailure("too many test hosts") }
        return try FleetTestHost(database: self, name: name, index: n)
    }

    // MARK: Cleanup

    private static let cleanupList = Mutex<[(root: String, prefix: String)]>([])

    private static func cleanUpAtExit() {
        if case let .success(db) = shared { db.stop() }
        for (root, prefix) in cleanupList.withLock({ $0 }) {
            for ns in namespaces() where ns.hasPrefix(prefix) { _ = try? sh(["/usr/sbin/ip", "netns", "del", ns]) }
            try? FileManager.default.removeItem(atPath: root)
        }
    }

    /// Namespaces and directories of earlier runs whose process is gone.
    private static func removeLeftovers() {
        func deadOwner(_ digits: Substring) -> Bool {
            guard let pid = Int32(digits) else { return false }
            return kill(pid, 0) != 0 && errno == ESRCH
        }
        for ns in namespaces() where ns.hasPrefix("dfbt") {
            let digits = ns.dropFirst(4).prefix { $0.isNumber }
            if deadOwner(digits) { _ = try? sh(["/usr/sbin/ip", "netns", "del", ns]) }
        }
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/tmp")) ?? [] where entry.hasPrefix("dfbpg-") {
            if deadOwner(entry.dropFirst(6)) { try? FileManager.default.removeItem(atPath: "/tmp/\(entry)") }
        }
    }

    static func namespaces() -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: "/run/netns")) ?? [])
    }
}

/// One defib "host": a network namespace with loopback and a veth link to the database's bridge, address
/// 10.213.0.(10+n). `cut()` takes the link down on the bridge side (a partition: packets vanish, nothing
/// is refused), `restore()` brings it back. `remove()` deletes the namespace (and with it the link).
final class FleetTestHost: @unchecked Sendable {
    let name: String
    let namespace: String
    let address: String
    private let bridgePort: String
    private let database: FleetTestDatabase

    init(database: FleetTestDatabase, name: String, index: Int) throws {
        self.database = database
        self.name = name
        let pid = getpid()
        namespace = "dfbt\(pid)h\(index)"
        address = "10.213.0.\(10 + index)"
        let hostEnd = "df\(pid)h\(index)"
        bridgePort = "df\(pid)b\(index)"
        let ns = database.namespace
        try sh(["/usr/sbin/ip", "netns", "add", namespace])
        do {
            try sh(["/usr/sbin/ip", "-n", namespace, "link", "set", "lo", "up"])
            try sh(["/usr/sbin/ip", "link", "add", hostEnd, "type", "veth", "peer", "name", bridgePort])
            try sh(["/usr/sbin/ip", "link", "set", hostEnd, "netns", namespace])
            try sh(["/usr/sbin/ip", "link", "set", bridgePort, "netns", ns])
            try sh(["/usr/sbin/ip", "-n", ns, "link", "set", bridgePort, "master", "br0"])
            try sh(["/usr/sbin/ip", "-n", ns, "link", "set", bridgePort, "up"])
            try sh(["/usr/sbin/ip", "-n", namespace, "addr", "add", "\(address)/24", "dev", hostEnd])
            try sh(["/usr/sbin/ip", "-n", namespace, "link", "set", hostEnd, "up"])
        } catch {
            remove()
            throw error
        }
    }

    /// argv run inside this host's namespace.
    func inside(_ argv: [String]) -> [String] { ["/usr/sbin/ip", "netns", "exec", namespace] + argv }

    /// A partition: the bridge side of the link goes down.
    func cut() throws { try sh(["/usr/sbin/ip", "-n", database.namespace, "link", "set", bridgePort, "down"]) }
    /// The link back.
    func restore() throws { try sh(["/usr/sbin/ip", "-n", database.namespace, "link", "set", bridgePort, "up"]) }

    func remove() { _ = try? sh(["/usr/sbin/ip", "netns", "del", namespace]) }
}

/// Runs a setup command and fails with its output when it does not exit 0.
@discardableResult
func sh(_ argv: [String], timeoutMs: Int = 30_000) throws -> String {
    let r = try runCommand(argv, timeoutMs: timeoutMs)
    guard r.code == 0 else { throw TestFailure("\(argv.joined(separator: " ")) exited \(r.code): \(r.stderr)\(r.stdout)") }
    return r.stdout
}

/// A thread that lives as long as the process and spawns what must die with it: PR_SET_PDEATHSIG fires
/// when the *thread* that forked the child ends, and test threads come and go.
final class SpawnerThread: @unchecked Sendable {
    private let condition = NSCondition()
    private var request: (argv: [String], log: Int32)?
    private var result: Result<Int32, any Error>?

    init() {
        let thread = Thread { [self] in loop() }
        thread.name = "fleet-test-spawner"
        thread.start()
    }

    func spawn(_ argv: [String], log: Int32) throws -> Int32 {
        condition.lock()
        defer { condition.unlock() }
        while request != nil || result != nil { condition.wait() }
        request = (argv, log)
        condition.broadcast()
        while result == nil { condition.wait() }
        let r = result!
        result = nil
        condition.broadcast()
        return try r.get()
    }

    private func loop() {
        while true {
            condition.lock()
            while request == nil { condition.wait() }
            let (argv, log) = request!
            var spawn = SpawnRequest(argv: argv, environment: currentEnvironment())
            spawn.parentDeathSignal = SIGKILL
            spawn.stdoutFD = log; spawn.stderrFD = log; spawn.stdinFromDevNull = true
            result = Result {
                let child = try spawnProcess(spawn)
                child.closePidfd()   // reaped with waitpid by pid in `stop`
                return child.pid
            }
            request = nil
            condition.broadcast()
            condition.unlock()
        }
    }
}
