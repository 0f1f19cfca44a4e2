import Foundation

/// `[fleet]`: where this host ships its incidents, under which name, and when the same hang on many hosts is
/// a fleet event. Absent (nil in `SupervisorConfig.fleet`) means no shipping at all.
///
/// The password is deliberately not a setting: it comes from `password_file` or `PGPASSWORD`, so a config
/// file (often world-readable, often in version control) and the log never carry it.
public struct FleetSettings: Sendable, Equatable {
    /// `postgresql://USER@HOST:PORT/DB[?sslmode=…]` (see `FleetDatabaseURL`).
    public var url: String
    /// The name this host's incidents carry in the fleet; nil means the hostname.
    public var host: String?
    /// A file holding the database password (its first line), private to its owner.
    public var passwordFile: String?
    /// A fleet event is recorded when one signature has hung this many distinct hosts…
    public var alertHosts: Int = 3
    /// …within this many seconds (counted on the incidents' own detection times).
    public var alertWindowSeconds: Int = 600

    /// Makes settings for `url`, every other key at its default.
    public init(url: String) { self.url = url }

    /// Longest host name accepted (a DNS name's limit): it is a key column in the fleet database.
    public static let maximumHostBytes = 255

    /// Every setting that cannot work, each naming its `fleet.` key.
    public func validationIssues() -> [ConfigIssue] {
        var issues: [ConfigIssue] = []
        func bad(_ key: String, _ message: String) { issues.append(ConfigIssue(.invalid, key: "fleet." + key, message)) }
        do { _ = try FleetDatabaseURL.parse(url) } catch { bad("url", error.description) }
        if let host {
            if let problem = Self.hostProblem(host) { bad("host", problem) }
        }
        if let passwordFile, passwordFile.isEmpty { bad("password_file", "must not be empty") }
        if alertHosts < 1 || alertHosts > 1_000_000 { bad("fleet_alert_hosts", "must be between 1 and 1000000, got \(alertHosts)") }
        if alertWindowSeconds < 1 || alertWindowSeconds > 7 * 24 * 3600 {
            bad("fleet_alert_window", "must be between 1 s and 7 days, got \(alertWindowSeconds) s")
        }
        return issues
    }

    /// Why `name` cannot name a host in the fleet, or nil when it can.
    public static func hostProblem(_ name: String) -> String? {
        if name.isEmpty { return "must not be empty" }
        if name.utf8.count > maximumHostBytes { return "longer than \(maximumHostBytes) bytes" }
        if name.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7f }) { return "must not contain control characters" }
        return nil
    }

    /// Parses a duration for `fleet_alert_window`: an integer (seconds) or a number with a unit `ms`, `s`,
    /// `m`, `h`, `d` ("10m", "90s"). Nil when it is neither or not a whole number of seconds.
    public static func parseWindowSeconds(_ text: String) -> Int? {
        let t = text.trimmingCharacters(in: .whitespaces)
        let units: [(String, Double)] = [("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600), ("d", 86400)]
        for (suffix, factor) in units where t.hasSuffix(suffix) {
            guard let n = Double(t.dropLast(suffix.count)), n.isFinite, n >= 0 else { return nil }
            let seconds = n * factor
            guard seconds == seconds.rounded(), seconds < 1e12 else { return nil }
            return Int(seconds)
        }
        return Int(t)
    }
}

/// A parsed fleet database URL, libpq's form: `postgresql://USER@HOST:PORT/DB?sslmode=require`, or for a
/// Unix socket `postgresql://USER@/DB?host=/run/postgresql` (the directory holding `.s.PGSQL.PORT`).
///
/// A password in the URL is refused: URLs end up in configs, process lists and logs.
public struct FleetDatabaseURL: Sendable, Equatable, CustomStringConvertible {
    /// How to reach the server.
    public enum Endpoint: Sendable, Equatable {
        /// TCP to a host name or address.
        case tcp(host: String, port: Int)
        /// A Unix socket: `directory/.s.PGSQL.port`.
        case unixSocket(directory: String, port: Int)
    }

    /// libpq's `sslmode`, reduced to what a client can do: `disable` never, `prefer` when the server offers
    /// it (libpq's default), `require` encrypted without checking the certificate, `verify-ca` checked against
    /// `sslrootcert`, `verify-full` checked and matched to the host name.
    public enum TLSMode: String, Sendable, Equatable, CaseIterable {
        case disable, allow, prefer, require
        case verifyCA = "verify-ca"
        case verifyFull = "verify-full"
    }

    /// The role to log in as.
    public var user: String
    /// Where the server is.
    public var endpoint: Endpoint
    /// The database name (default: the user's name, as libpq does).
    public var database: String
    /// Encryption wanted.
    public var tls: TLSMode
    /// CA certificates (PEM) that verify the server, for `verify-ca` / `verify-full`.
    public var rootCertificate: String?
    /// Seconds to wait for a connection (libpq's `connect_timeout`); default 10.
    public var connectTimeoutSeconds: Int

    /// Parses `text`; the error names what is wrong with it.
    public static func parse(_ text: String) throws(FleetURLError) -> FleetDatabaseURL {
        func fail(_ problem: String) -> FleetURLError { FleetURLError(url: redact(text), problem: problem) }
        let schemes = ["postgresql://", "postgres://"]
        guard let scheme = schemes.first(where: { text.hasPrefix($0) }) else {
            throw fail("expected postgresql://USER@HOST:PORT/DB")
        }
        var rest = Substring(text.dropFirst(scheme.count))
        var query: Substring = ""
        if let q = rest.firstIndex(of: "?") { query = rest[rest.index(after: q)...]; rest = rest[..<q] }
        var path: Substring = ""
        if let slash = rest.firstIndex(of: "/") { path = rest[rest.index(after: slash)...]; rest = rest[..<slash] }
        var authority = rest
        var userInfo: Substring = ""
        if let at = authority.lastIndex(of: "@") { userInfo = authority[..<at]; authority = authority[authority.index(after: at)...] }
        if userInfo.contains(":") {
            throw fail("the URL carries a password: put it in fleet.password_file or PGPASSWORD, never in the URL (it would show in configs, ps and logs)")
        }
        guard let user = userInfo.removingPercentEncoding, !user.isEmpty else { throw fail("no user (postgresql://USER@HOST/DB)") }
        guard let database = (path.isEmpty ? user : path.removingPercentEncoding), !database.isEmpty, !database.contains("/") else {
            throw fail("bad database name '\(path)'")
        }
        var hostText = ""
        var port = 5432
        if authority.hasPrefix("[") {
            guard let close = authority.firstIndex(of: "]") else { throw fail("unclosed '[' in the host") }
            hostText = String(authority[authority.index(after: authority.startIndex)..<close])
            let after = authority[authority.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":"), let p = Int(after.dropFirst()), (1...65535).contains(p) else { throw fail("bad port '\(after.dropFirst())'") }
                port = p
            }
        } else if let colon = authority.lastIndex(of: ":") {
            hostText = String(authority[..<colon])
            guard let p = Int(authority[authority.index(after: colon)...]), (1...65535).contains(p) else {
                throw fail("bad port '\(authority[authority.index(after: colon)...])'")
            }
            port = p
        } else {
            hostText = String(authority)
        }
        var tls = TLSMode.prefer
        var root: String?
        var socketDirectory: String?
        var timeout = 10
        for pair in query.split(separator: "&") where !pair.isEmpty {
            let kv = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let key = String(kv[0])
            let value = kv.count > 1 ? (kv[1].removingPercentEncoding ?? String(kv[1])) : ""
            switch key {
            case "sslmode":
                guard let mode = TLSMode(rawValue: value) else {
                    throw fail("unknown sslmode '\(value)' (expected one of: \(TLSMode.allCases.map(\.rawValue).joined(separator: ", ")))")
                }
                tls = mode
            case "sslrootcert":
                guard value.hasPrefix("/") else { throw fail("sslrootcert must be an absolute path, got '\(value)'") }
                root = value
            case "host":
                guard value.hasPrefix("/") else { throw fail("host= in the query names a Unix socket directory and must be absolute, got '\(value)'") }
                socketDirectory = value
            case "connect_timeout":
                guard let t = Int(value), (1...600).contains(t) else { throw fail("connect_timeout must be 1–600 seconds, got '\(value)'") }
                timeout = t
            case "password":
                throw fail("the URL carries a password: put it in fleet.password_file or PGPASSWORD, never in the URL (it would show in configs, ps and logs)")
            default:
                throw fail("unknown parameter '\(key)' (known: sslmode, sslrootcert, host, connect_timeout)")
            }
        }
        let endpoint: Endpoint
        if let socketDirectory {
            guard hostText.isEmpty else { throw fail("give either a host or ?host=/socket/dir, not both") }
            endpoint = .unixSocket(directory: socketDirectory, port: port)
            if tls == .require || tls == .verifyCA || tls == .verifyFull { throw fail("sslmode=\(tls.rawValue) over a Unix socket: PostgreSQL offers no TLS there") }
        } else {
            guard !hostText.isEmpty else { throw fail("no host (postgresql://USER@HOST:PORT/DB, or ?host=/socket/dir for a Unix socket)") }
            guard let decoded = hostText.removingPercentEncoding else { throw fail("bad host '\(hostText)'") }
            endpoint = .tcp(host: decoded, port: port)
        }
        if (tls == .verifyCA || tls == .verifyFull) && root == nil {
            throw fail("sslmode=\(tls.rawValue) needs sslrootcert=/path/to/ca.pem (the CA that signed the server's certificate)")
        }
        return FleetDatabaseURL(user: user, endpoint: endpoint, database: database, tls: tls, rootCertificate: root,
                                connectTimeoutSeconds: timeout)
    }

    /// The URL as logged: user, where, database and sslmode (it never holds a password).
    public var description: String {
        let mode = tls == .prefer ? "" : "?sslmode=\(tls.rawValue)"
        switch endpoint {
        case let .tcp(host, port):
            let h = host.contains(":") ? "[\(host)]" : host
            return "postgresql://\(user)@\(h):\(port)/\(database)\(mode)"
        case let .unixSocket(directory, port):
            return "postgresql://\(user)@" + (port == 5432 ? "" : ":\(port)") + "/\(database)?host=\(directory)"
        }
    }

    /// `text` with anything after a ':' in the user part masked, for error messages about a URL that
    /// (wrongly) carries a password.
    static func redact(_ text: String) -> String {
        guard let schemeEnd = text.range(of: "://"), let at = text[schemeEnd.upperBound...].firstIndex(of: "@") else {
            return text.replacingOccurrences(of: #"password=[^&]*"#, with: "password=***", options: .regularExpression)
        }
        let userInfo = text[schemeEnd.upperBound..<at]
        guard let colon = userInfo.firstIndex(of: ":") else {
            return text.replacingOccurrences(of: #"password=[^&]*"#, with: "password=***", options: .regularExpression)
        }
        return String(text[..<colon]) + ":***" + String(text[at...])
    }
}

/// A fleet URL that cannot be used: the URL (password masked) and what is wrong with it.
public struct FleetURLError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The URL as given, any password masked.
    public var url: String
    /// What is wrong.
    public var problem: String
    /// `URL: problem`.
    public var description: String { "\(url): \(problem)" }
}
