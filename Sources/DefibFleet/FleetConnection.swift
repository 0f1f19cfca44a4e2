import DefibCore
import Foundation
import Logging
import NIOCore
import NIOPosix
import NIOSSL
import PostgresNIO

/// Where the fleet database is and how to log in: the parsed URL and the password resolved from its file
/// or the environment. Holds no open connection.
public struct FleetEndpoint: Sendable {
    /// The parsed URL.
    public var url: FleetDatabaseURL
    /// The password (never logged; `description` leaves it out).
    var password: String?
    /// `application_name` shown in pg_stat_activity ("defib-fleet", plus the host for a shipper).
    public var applicationName: String

    /// Parses `url` and resolves the password (`passwordFile`, else PGPASSWORD). Throws `FleetError` naming
    /// the problem (a malformed URL, a password in it, an unsafe password file).
    public init(url: String, passwordFile: String?, applicationName: String = "defib-fleet",
                environment: [String: String] = ProcessInfo.processInfo.environment) throws {
        do { self.url = try FleetDatabaseURL.parse(url) } catch { throw FleetError(.configuration, "fleet URL", error.description) }
        password = try FleetPassword.resolve(file: passwordFile, environment: environment)
        self.applicationName = applicationName
    }

    /// PostgresNIO's configuration for this endpoint.
    func configuration() throws -> PostgresConnection.Configuration {
        var config: PostgresConnection.Configuration
        switch url.endpoint {
        case let .tcp(host, port):
            config = .init(host: host, port: port, username: url.user, password: password, database: url.database, tls: try tls())
            // SNI and the name checked: a DNS name. For an IP address there is no SNI, and NIOSSL checks the
            // address against the certificate's IP subjectAltNames.
            if url.tls == .verifyFull, !Self.isIPAddress(host) { config.options.tlsServerName = host }
        case let .unixSocket(directory, port):
            config = .init(unixSocketPath: "\(directory)/.s.PGSQL.\(port)", username: url.user, password: password, database: url.database)
        }
        config.options.connectTimeout = .seconds(Int64(url.connectTimeoutSeconds))
        config.options.additionalStartupParameters = [("application_name", String(applicationName.prefix(63)))]
        return config
    }

    static func isIPAddress(_ host: String) -> Bool {
        var v4 = in_addr(), v6 = in6_addr()
        return inet_pton(AF_INET, host, &v4) == 1 || inet_pton(AF_INET6, host, &v6) == 1
    }

    /// libpq's sslmode in NIOSSL terms. `require` encrypts without checking who answers (as libpq does);
    /// `verify-ca` checks the chain against `sslrootcert`; `verify-full` also the host name.
    private func tls() throws -> PostgresConnection.Configuration.TLS {
        var tls = TLSConfiguration.makeClientConfiguration()
        switch url.tls {
        case .disable:
            return .disable
        case .allow, .prefer, .require:
            tls.certificateVerification = .none
        case .verifyCA:
            tls.certificateVerification = .noHostnameVerification
        case .verifyFull:
            tls.certificateVerification = .fullVerification
        }
        if let root = url.rootCertificate { tls.trustRoots = .file(root) }
        let context: NIOSSLContext
        do { context = try NIOSSLContext(configuration: tls) } catch {
            throw FleetError(.configuration, "TLS for \(url)", "\(error)" + (url.rootCertificate.map { " (sslrootcert \($0))" } ?? ""))
        }
        // libpq's `allow` tries without TLS first; PostgresNIO only knows prefer/require, and prefer is the closer.
        return url.tls == .require || url.tls == .verifyCA || url.tls == .verifyFull ? .require(context) : .prefer(context)
    }
}

/// One connection to the fleet database, with every failure turned into a `FleetError` that names the
/// operation and every operation bounded by a deadline (a partitioned network would otherwise hold a
/// query for TCP's own minutes-long timeout).
public final class FleetConnection: Sendable {
    let connection: PostgresConnection
    let logger: Logger
    /// The endpoint it was opened to.
    public let endpoint: FleetEndpoint

    private init(connection: PostgresConnection, endpoint: FleetEndpoint, logger: Logger) {
        self.connection = connection; self.endpoint = endpoint; self.logger = logger
    }

    /// Opens a connection (bounded by the URL's connect_timeout, 10 s by default, plus authentication).
    public static func open(_ endpoint: FleetEndpoint, logger: Logger,
                            on eventLoop: any EventLoop = MultiThreadedEventLoopGroup.singleton.any()) async throws -> FleetConnection {
        let operation = "connect to \(endpoint.url)"
        let config: PostgresConnection.Configuration
        do { config = try endpoint.configuration() } catch { throw FleetError.wrap(error, .configuration, operation) }
        let deadline = Double(endpoint.url.connectTimeoutSeconds) + 5
        let connection: PostgresConnection
        do {
            connection = try await withDeadline(seconds: deadline) {
                try await PostgresConnection.connect(on: eventLoop, configuration: config, id: 1, logger: logger)
            }
        } catch let e as DeadlineExceeded {
            throw FleetError(.connect, operation, "no connection within \(Int(e.seconds)) s")
        } catch {
            throw FleetError.wrap(error, .connect, operation)
        }
        return FleetConnection(connection: connection, endpoint: endpoint, logger: logger)
    }

    /// Runs `query` (all rows collected), failing after `seconds` by closing the connection.
    @discardableResult
    func run(_ query: PostgresQuery, _ operation: String, seconds: Double = 30) async throws -> [PostgresRow] {
        let connection = self.connection
        let logger = self.logger
        do {
            return try await withDeadline(seconds: seconds, onTimeout: { connection.close().whenComplete { _ in } }) {
                var rows: [PostgresRow] = []
                for try await row in try await connection.query(query, logger: logger) { rows.append(row) }
                return rows
            }
        } catch let e as DeadlineExceeded {
            throw FleetError(.timeout, operation, "no answer within \(Int(e.seconds)) s (connection closed)")
        } catch {
            throw FleetError.wrap(error, .query, operation)
        }
    }

    /// Runs `body` inside BEGIN … COMMIT (ROLLBACK when it throws), the whole bounded by `seconds`.
    func transaction<T: Sendable>(_ operation: String, seconds: Double = 60,
                                  _ body: @escaping @Sendable (FleetConnection) async throws -> T) async throws -> T {
        let connection = self.connection
        do {
            return try await withDeadline(seconds: seconds, onTimeout: { connection.close().whenComplete { _ in } }) {
                try await self.run("BEGIN", "\(operation): BEGIN")
                do {
                    let value = try await body(self)
                    try await self.run("COMMIT", "\(operation): COMMIT")
                    return value
                } catch {
                    _ = try? await self.run("ROLLBACK", "\(operation): ROLLBACK", seconds: 5)
                    throw error
                }
            }
        } catch let e as DeadlineExceeded {
            throw FleetError(.timeout, operation, "not done within \(Int(e.seconds)) s (connection closed, nothing committed)")
        } catch {
            throw FleetError.wrap(error, .query, operation)
        }
    }

    /// Runs one SQL statement written by the caller (administration, benchmarks): the first column of the
    /// first row as text (cast it to `text` in the SQL), nil when there is no row or it is NULL.
    @discardableResult
    public func scalar(_ sql: String, seconds: Double = 600) async throws -> String? {
        let rows = try await run(PostgresQuery(unsafeSQL: sql), String(sql.prefix(60)), seconds: seconds)
        guard let cell = rows.first?.makeRandomAccess().first else { return nil }
        return try cell.decode(String?.self)
    }

    /// Whether the connection has been closed (by us, the server or the network).
    public var isClosed: Bool { connection.isClosed }

    /// Whether this session is encrypted (pg_stat_ssl), for `defib fleet` to say so and tests to check.
    public func isEncrypted() async throws -> Bool {
        let rows = try await run("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", "read pg_stat_ssl")
        return try rows.first?.decode(Bool.self) ?? false
    }

    /// Closes the connection (errors ignored: it may be gone already).
    public func close() async {
        try? await connection.close()
    }
}

/// `withDeadline` ran out of time.
struct DeadlineExceeded: Error { var seconds: Double }

/// Runs `body`, or throws `DeadlineExceeded` after `seconds` once `onTimeout` (which must make `body`
/// finish, e.g. by closing its connection) has run. A task group waits for all its children, so a body that
/// ignores cancellation needs `onTimeout` to return at all.
func withDeadline<T: Sendable>(seconds: Double, onTimeout: @escaping @Sendable () -> Void = {},
                               _ body: @escaping @Sendable () async throws -> T) async throws -> T {
    try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try? await Task.sleep(nanoseconds: UInt64(seconds * 1e9))
            return nil
        }
        defer { group.cancelAll() }
        while let next = try await group.next() {
            if let value = next { return value }
            onTimeout()
            throw DeadlineExceeded(seconds: seconds)
        }
        throw DeadlineExceeded(seconds: seconds)
    }
}
