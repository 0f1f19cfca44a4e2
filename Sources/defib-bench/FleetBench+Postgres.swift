import DefibFleet
import DefibPOSIX
import Foundation
import Glibc
import Logging

/// A throwaway PostgreSQL for the benchmark: initdb in the work directory, as the `postgres` user when run as
/// root (PostgreSQL refuses root), listening on 127.0.0.1 on a free port and on a Unix socket beside its
/// data; stopped and removed with the work directory. Durability settings are the defaults (fsync and
/// synchronous_commit on): the ingest figure is that of a real server, not of one that may lose commits.
final class BenchPostgres {
    let directory: String
    let port: Int
    let child: ManagedChild
    let settings: String

    static func start(directory: String) throws -> BenchPostgres {
        guard let bin = postgresBin() else {
            throw BenchError(kind: .startup, message: "PostgreSQL is not installed (/usr/lib/postgresql/*/bin/postgres): scripts/setup.sh installs it")
        }
        let data = directory + "/data"
        try makeDirectories(directory)
        chmod(directory, 0o755)
        var asPostgres: [String] = []
        if geteuid() == 0 {
            guard let pw = getpwnam("postgres") else { throw BenchError(kind: .startup, message: "no postgres user to run the server as") }
            chown(directory, pw.pointee.pw_uid, pw.pointee.pw_gid)
            asPostgres = ["/usr/bin/setpriv", "--reuid=postgres", "--regid=postgres", "--clear-groups", "--pdeathsig", "KILL", "--"]
        }
        let initdb = try ManagedChild(name: "initdb", argv: asPostgres + ["\(bin)/initdb", "-D", data, "-U", "postgres", "-A", "trust",
                                                                          "-E", "UTF8", "--no-instructions"],
                                      workingDirectory: "/", logPath: directory + "/initdb.log")
        guard initdb.wait(timeoutMs: 300_000) == .exited(code: 0) else {
            throw BenchError(kind: .startup, message: "initdb failed: \(initdb.logTail)")
        }
        let port = try freeLoopbackPort()
        let conf: [(String, String)] = [("listen_addresses", "'127.0.0.1'"), ("port", "\(port)"), ("unix_socket_directories", "'\(directory)'"),
                                        ("shared_buffers", "'512MB'"), ("max_wal_size", "'4GB'"), ("checkpoint_timeout", "'15min'"),
                                        ("max_connections", "100")]
        let text = "\n" + conf.map { "\($0.0) = \($0.1)" }.joined(separator: "\n") + "\n"
        guard let h = FileHandle(forWritingAtPath: data + "/postgresql.conf") else { throw BenchError(kind: .io, message: "open \(data)/postgresql.conf") }
        h.seekToEndOfFile(); h.write(Data(text.utf8)); try h.close()
        let child = try ManagedChild(name: "postgres", argv: asPostgres + ["\(bin)/postgres", "-D", data], workingDirectory: "/",
                                     logPath: directory + "/postgres.log")
        let version = (bin as NSString).deletingLastPathComponent.split(separator: "/").last.map(String.init) ?? "?"
        let pg = BenchPostgres(directory: directory, port: port, child: child,
                               settings: "PostgreSQL \(version) on this machine (127.0.0.1, Unix socket for the shippers), shared_buffers 512MB, "
                                   + "max_wal_size 4GB, fsync and synchronous_commit on (defaults)")
        let deadline = monotonicNanoseconds() + 60_000_000_000
        while monotonicNanoseconds() < deadline {
            if child.poll() != nil { throw BenchError(kind: .startup, message: "postgres exited: \(child.logTail)") }
            if access("\(directory)/.s.PGSQL.\(port)", F_OK) == 0, (try? sql(pg.url(database: "postgres"), "SELECT 1")) != nil { return pg }
            sleepMs(100)
        }
        child.stop()
        throw BenchError(kind: .startup, message: "postgres did not accept connections within 60 s: \(child.logTail)")
    }

    private init(directory: String, port: Int, child: ManagedChild, settings: String) {
        self.directory = directory; self.port = port; self.child = child; self.settings = settings
    }

    func url(database: String) -> String { "postgresql://postgres@:\(port)/\(database)?host=\(directory)" }

    func stop() { child.stop(graceMs: 60_000) }

    static func postgresBin() -> String? {
        let base = "/usr/lib/postgresql"
        let versions = ((try? FileManager.default.contentsOfDirectory(atPath: base)) ?? []).compactMap(Int.init).sorted()
        return versions.reversed().map { "\(base)/\($0)/bin" }.first { access("\($0)/postgres", X_OK) == 0 }
    }

    /// One statement on `url`.
    static func sql(_ url: String, _ statement: String) throws {
        let logger = Logger(label: "defib-bench.fleet", factory: { _ in SwiftLogNoOpLogHandler() })
        let endpoint = try FleetEndpoint(url: url, passwordFile: nil)
        try runAsync {
            let c = try await FleetConnection.open(endpoint, logger: logger)
            defer { Task { await c.close() } }
            try await c.scalar(statement)
        }
    }
}
