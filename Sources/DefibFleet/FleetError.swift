import DefibCore
import Foundation
import NIOCore
import NIOSSL
import PostgresNIO

/// Something the fleet side could not do. The description names the operation and the cause, the
/// database's own message and SQLSTATE when it sent one, or the system call and errno:
/// `connect to postgresql://defib@10.0.0.1:5432/fleet: connection refused (errno 111)`.
public struct FleetError: Error, Sendable, CustomStringConvertible {
    /// What went wrong, coarse enough to branch on.
    public enum Code: String, Sendable {
        /// The URL or the settings cannot be used.
        case configuration
        /// The password file cannot be used.
        case password
        /// No connection (refused, unreachable, timed out, TLS or authentication failed).
        case connect
        /// A statement failed or the connection broke during it.
        case query
        /// The operation took longer than its deadline (the connection is then closed).
        case timeout
        /// The database's schema is missing, older than this defib needs, newer than it knows, or foreign.
        case schema
        /// The local store could not be read.
        case store
    }

    /// What went wrong.
    public var code: Code
    /// The operation: "connect to URL", "ship 12 incidents", "migrate to version 2" …
    public var operation: String
    /// The cause in words.
    public var message: String
    /// The database's SQLSTATE, when it sent an error.
    public var sqlState: String?

    /// Makes an error.
    public init(_ code: Code, _ operation: String, _ message: String, sqlState: String? = nil) {
        self.code = code; self.operation = operation; self.message = message; self.sqlState = sqlState
    }

    /// `OPERATION: MESSAGE`.
    public var description: String { "\(operation): \(message)" }

    /// Wraps any error thrown by PostgresNIO, NIO or the system under `operation`, keeping the server's
    /// message (PostgresNIO's own description hides it on purpose, so it is read field by field here).
    static func wrap(_ error: any Error, _ code: Code, _ operation: String) -> FleetError {
        if let e = error as? FleetError { return e }
        let (message, state) = describe(error)
        return FleetError(code, operation, message, sqlState: state)
    }

    /// Words for a PostgresNIO / NIO / system error, and the SQLSTATE when the server sent one.
    static func describe(_ error: any Error) -> (String, String?) {
        if let t = error as? PostgresTransactionError {
            for inner in [t.closureError, t.commitError, t.beginError, t.rollbackError].compactMap({ $0 }) { return describe(inner) }
            return ("transaction failed", nil)
        }
        if let p = error as? PSQLError {
            if let info = p.serverInfo {
                var text = info[.message] ?? "server error"
                if let detail = info[.detail] { text += " (\(detail))" }
                if let state = info[.sqlState] { text += " [SQLSTATE \(state)]" }
                return (text, info[.sqlState])
            }
            if let underlying = p.underlying { return ("\(p.code): \(describe(underlying).0)", nil) }
            switch p.code {
            case .authMechanismRequiresPassword:
                return ("the server asks for a password: set fleet.password_file or PGPASSWORD", nil)
            case .sslUnsupported:
                return ("the server does not offer TLS, and the URL requires it (sslmode)", nil)
            default:
                return ("\(p.code)", nil)
            }
        }
        if let io = error as? IOError { return ("\(io.description)", nil) }
        if let nio = error as? NIOConnectionError {
            let causes = nio.connectionErrors.map { "\($0.target): \(describe($0.error).0)" }
            return (causes.isEmpty ? "could not connect (\(nio.host):\(nio.port))" : causes.joined(separator: "; "), nil)
        }
        if let tls = error as? NIOSSLError { return ("TLS: \(tls)", nil) }
        if let tls = error as? NIOSSLExtraError { return ("TLS: \(tls)", nil) }
        if error is ChannelError, case .connectTimeout(let t) = error as! ChannelError {
            return ("no connection within \(t.nanoseconds / 1_000_000_000) s", nil)
        }
        return ("\(error)", nil)
    }
}
