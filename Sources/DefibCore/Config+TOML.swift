import Foundation
import TOMLKit

/// One thing wrong with a configuration: where (file, line, key) and what.
public struct ConfigIssue: Sendable, Equatable, CustomStringConvertible {
    /// The sort of problem.
    public enum Kind: String, Sendable {
        /// The file could not be read.
        case unreadable
        /// Not valid TOML (toml++'s message and position).
        case syntax
        /// A value of the wrong TOML type (`"1s"` where an integer belongs).
        case type
        /// A key or table defib does not know (usually a typo).
        case unknownKey = "unknown-key"
        /// A well-typed value outside what defib accepts, or a required setting missing.
        case invalid
    }

    /// The sort of problem.
    public var kind: Kind
    /// The config file, when the problem comes from one.
    public var file: String?
    /// 1-based line in `file`, when known.
    public var line: Int?
    /// 1-based column, when known (syntax errors).
    public var column: Int?
    /// The dotted key concerned (`heartbeat.deadline_ms`), when there is one.
    public var key: String?
    /// What is wrong, in words.
    public var message: String

    /// Makes an issue.
    public init(_ kind: Kind, key: String?, _ message: String, file: String? = nil, line: Int? = nil, column: Int? = nil) {
        self.kind = kind; self.key = key; self.message = message; self.file = file; self.line = line; self.column = column
    }

    /// `FILE:LINE[:COLUMN]: KEY: MESSAGE`, leaving out what is not known.
    public var description: String {
        var location = file ?? ""
        if let line {
            location += (location.isEmpty ? "line " : ":") + String(line)
            if let column { location += ":\(column)" }
        }
        var parts: [String] = []
        if !location.isEmpty { parts.append(location) }
        if let key { parts.append(key) }
        parts.append(message)
        return parts.joined(separator: ": ")
    }
}

/// A configuration that cannot be used, with every problem found (not just the first).
public struct ConfigError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The problems, in file order where the file says.
    public var issues: [ConfigIssue]
    /// Wraps the problems found.
    public init(_ issues: [ConfigIssue]) { self.issues = issues }
    /// One problem per line.
    public var description: String { issues.map(\.description).joined(separator: "\n") }
}

extension SupervisorConfig {
    /// Shortest deadline accepted: below it, scheduling noise on a loaded machine alone looks like a hang.
    public static let minimumDeadlineMs = 50
    /// Longest duration accepted anywhere (7 days); larger values are typos and would overflow timers.
    public static let maximumDurationMs = 7 * 24 * 3600 * 1000
    /// Longest Unix socket path (`sun_path` holds 108 bytes including the terminating NUL).
    public static let maximumSocketPathBytes = 107

    /// Longest config file read: anything larger is not a configuration (and /dev/zero must not be read forever).
    public static let maximumConfigBytes = 1 << 20

    /// Reads and parses a TOML config file (see `parse`). The file is read like `cat` would read it, so
    /// `/dev/null` (an empty configuration) and `<(…)` work; what cannot be read is named with the reason.
    public static func load(path: String) throws -> SupervisorConfig {
        func unreadable(_ why: String) -> ConfigError {
            ConfigError([ConfigIssue(.unreadable, key: nil, "cannot read: \(why)", file: path)])
        }
        let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY)
        guard fd >= 0 else {
            let e = errno
            switch e {
            case ENOENT: throw unreadable("no such file")
            case EACCES: throw unreadable("permission denied")
            default: throw unreadable(String(cString: strerror(e)))
            }
        }
        defer { Glibc.close(fd) }
        var st = stat()
        if fstat(fd, &st) == 0, st.st_mode & S_IFMT == S_IFDIR { throw unreadable("is a directory") }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw unreadable(errno == EISDIR ? "is a directory" : String(cString: strerror(errno)))
            }
            if n == 0 { break }
            bytes += chunk[0..<n]
            if bytes.count > maximumConfigBytes { throw unreadable("larger than \(maximumConfigBytes >> 20) MiB: not a configuration file") }
        }
        guard let text = String(validating: bytes, as: UTF8.self) else { throw unreadable("not UTF-8 text") }
        return try parse(text, path: path)
    }

    /// Parses a TOML config. Settings absent from the text keep their defaults; `service.name`, `service.argv`
    /// and `state_dir` may be absent here because `defib run` flags can supply them (call `validate()` on the
    /// final config). Throws `ConfigError` listing every syntax, type, unknown-key and out-of-range problem,
    /// each with `path`, line and key.
    public static func parse(_ text: String, path: String) throws -> SupervisorConfig {
        let table: TOMLTable
        do {
            table = try TOMLTable(string: text)
        } catch let error as TOMLParseError {
            throw ConfigError([ConfigIssue(.syntax, key: nil, "syntax error: \(error.description)", file: path,
                                           line: error.source.begin.line, column: error.source.begin.column)])
        }
        var reader = TOMLConfigReader(path: path, locations: KeyLocations(text))
        // toml++ accepts \u0000 in a string and TOMLKit then cuts the string there: a path or an argument
        // would silently be something else. Found in the source, since the parsed value no longer shows it.
        for line in NulEscapes.lines(in: text) {
            let key = reader.locations.key(atLine: line)
            reader.issues.append(ConfigIssue(.invalid, key: key, "a string holds a NUL character (\\u0000): no path, argument or environment value can contain one",
                                             file: path, line: line))
        }
        let config = reader.read(table)
        // Range checks only for what the file itself sets; what it leaves out is judged after flags are merged.
        // A key whose value was already rejected kept its default, which says nothing about the file.
        let rejected = reader.issues.compactMap(\.key)
        for issue in config.validationIssues() {
            guard let key = issue.key, reader.present.contains(key),
                  !rejected.contains(where: { $0 == key || $0.hasPrefix(key + "[") || $0.hasPrefix(key + ".") }) else { continue }
            reader.issues.append(reader.located(issue))
        }
        guard reader.issues.isEmpty else {
            throw ConfigError(reader.issues.sorted { ($0.line ?? .max, $0.key ?? "") < ($1.line ?? .max, $1.key ?? "") })
        }
        return config
    }

    /// The same defaults `defib run` applies after merging flags: an empty service name becomes the
    /// program's base name.
    public func withDerivedDefaults() -> SupervisorConfig {
        var c = self
        if c.service.name.isEmpty, let first = c.service.argv.first, !first.isEmpty {
            c.service.name = (first as NSString).lastPathComponent
        }
        return c
    }

    /// Throws `ConfigError` listing every setting that cannot work, each naming its key.
    public func validate() throws {
        let issues = validationIssues()
        if !issues.isEmpty { throw ConfigError(issues) }
    }

    /// Every setting that cannot work, each naming its key (no file or line: the model does not know them).
    public func validationIssues() -> [ConfigIssue] {
        var issues: [ConfigIssue] = []
        func bad(_ key: String, _ message: String) { issues.append(ConfigIssue(.invalid, key: key, message)) }
        func duration(_ key: String, _ value: Int, minimum: Int = 1) {
            if value < minimum || value > Self.maximumDurationMs {
                bad(key, "must be between \(minimum) and \(Self.maximumDurationMs) ms, got \(value)")
            }
        }

        if stateDirectory.isEmpty { bad("state_dir", "required: where incidents.sqlite, cores/ and run/ go") }
        if service.argv.isEmpty { bad("service.argv", "required: the program to run and its arguments") }
        else if service.argv[0].isEmpty { bad("service.argv", "the program (first element) is empty") }
        if service.name.isEmpty {
            bad("service.name", "required (or give service.argv, whose program name is the default)")
        } else if service.name.contains("/") || service.name == "." || service.name == ".." {
            bad("service.name", "\"\(service.name)\" cannot be used in paths: no '/', not '.' or '..'")
        }
        for key in service.environment.keys.sorted() where key.isEmpty || key.contains("=") {
            bad("service.env", "\"\(key)\" is not an environment variable name")
        }
        if let dir = service.workingDirectory, dir.isEmpty { bad("service.working_directory", "must not be empty") }

        duration("heartbeat.interval_ms", heartbeat.intervalMs)
        duration("heartbeat.deadline_ms", heartbeat.deadlineMs, minimum: Self.minimumDeadlineMs)
        if heartbeat.misses < 1 || heartbeat.misses > 1000 {
            bad("heartbeat.misses", "must be between 1 and 1000, got \(heartbeat.misses)")
        }
        duration("heartbeat.start_timeout_ms", heartbeat.startTimeoutMs)
        if let socket = heartbeat.controlSocket, socket.isEmpty { bad("heartbeat.control_socket", "must not be empty") }
        if !service.name.isEmpty, !stateDirectory.isEmpty || heartbeat.controlSocket != nil {
            for (what, path) in [("control socket", controlSocketPath), ("notify socket", notifySocketPath)]
            where path.utf8.count > Self.maximumSocketPathBytes {
                bad(heartbeat.controlSocket == nil ? "state_dir" : "heartbeat.control_socket",
                    "\(what) path \(path) is \(path.utf8.count) bytes; a Unix socket path holds at most \(Self.maximumSocketPathBytes)"
                    + (heartbeat.controlSocket == nil ? " (set heartbeat.control_socket to a shorter path: the notify socket goes beside it)" : ""))
                break
            }
        }

        duration("capture.budget_ms", capture.budgetMs)
        duration("capture.runtime_budget_ms", capture.runtimeBudgetMs)
        if let dir = capture.directory, dir.isEmpty { bad("capture.directory", "must not be empty") }

        duration("restart.backoff_initial_ms", restart.backoffInitialMs)
        duration("restart.backoff_max_ms", restart.backoffMaxMs)
        if restart.backoffMaxMs < restart.backoffInitialMs {
            bad("restart.backoff_max_ms", "must be at least backoff_initial_ms (\(restart.backoffInitialMs)), got \(restart.backoffMaxMs)")
        }
        if !(restart.backoffMultiplier >= 1 && restart.backoffMultiplier <= 100) {
            bad("restart.backoff_multiplier", "must be between 1 and 100, got \(restart.backoffMultiplier)")
        }
        duration("restart.backoff_reset_ms", restart.backoffResetMs)
        if restart.intensityMax < 0 || restart.intensityMax > 1_000_000 {
            bad("restart.intensity_max", "must be between 0 and 1000000, got \(restart.intensityMax)")
        }
        duration("restart.intensity_window_ms", restart.intensityWindowMs)
        duration("restart.stop_timeout_ms", restart.stopTimeoutMs)

        for (key, value) in [("escalation.miss_ms", escalation.missMs), ("escalation.suspect_ms", escalation.suspectMs),
                             ("escalation.extension_step_ms", escalation.extensionStepMs)] {
            if let value { duration(key, value) }
        }
        if let v = escalation.maxExtensionMs, v < 0 || v > Self.maximumDurationMs {
            bad("escalation.max_extension_ms", "must be between 0 and \(Self.maximumDurationMs) ms, got \(v)")
        }
        if let suspect = escalation.suspectMs, suspect > heartbeat.deadlineMs {
            bad("escalation.suspect_ms", "must not exceed heartbeat.deadline_ms (\(heartbeat.deadlineMs)), got \(suspect)")
        }
        if escalation.killJitterMs < 0 || escalation.killJitterMs > Self.maximumDurationMs {
            bad("escalation.kill_jitter_ms", "must be between 0 and \(Self.maximumDurationMs) ms, got \(escalation.killJitterMs)")
        }
        if escalation.stallEvidenceBudgetMs < 1 || escalation.stallEvidenceBudgetMs > 10_000 {
            bad("escalation.stall_evidence_budget_ms", "must be between 1 and 10000 ms (the service is frozen that long), got \(escalation.stallEvidenceBudgetMs)")
        }
        if escalation.stallIncidentsPerHour < 0 || escalation.stallIncidentsPerHour > 100_000 {
            bad("escalation.stall_incidents_per_hour", "must be between 0 and 100000 (0 = count stalls, store none), got \(escalation.stallIncidentsPerHour)")
        }
        if let v = retention.maxUseBytes, v < 0 { bad("retention.max_use_mb", "must not be negative (0 = no limit)") }
        if let v = retention.keepFreeBytes, v < 0 { bad("retention.keep_free_mb", "must not be negative") }
        if retention.maxPerService < 1 { bad("retention.max_per_service", "must be at least 1, got \(retention.maxPerService)") }
        var seen: Set<String> = []
        for socket in sockets {
            if !SocketSpec.isValidName(socket.name) {
                bad("sockets.\(socket.name)", "a socket name may hold letters, digits, '_', '-' and '.' only (it goes into LISTEN_FDNAMES)")
            }
            if !seen.insert(socket.name).inserted { bad("sockets.\(socket.name)", "given twice") }
        }
        if let listen = metricsListen {
            if let address = SocketSpec.parseAddress(listen) {
                // The endpoint has no authentication and tells about the service: loopback only (put a proxy
                // or node exporter's textfile collector in front of it to publish it).
                if !SocketSpec.isLoopback(address.host) {
                    bad("metrics.listen", "\(address.host) is not a loopback address: metrics are served on 127.0.0.0/8, ::1 or localhost only")
                }
            } else {
                bad("metrics.listen", "expected \"HOST:PORT\", got \"\(listen)\"")
            }
        }
        for socket in sockets where SocketSpec.numericHost(socket.host) == nil {
            bad("sockets.\(socket.name)", "'\(socket.host)' is not an IP address (give 0.0.0.0, 127.0.0.1, ::, localhost …)")
        }
        issues += heartbeat.probeIssues() + service.identityIssues()
        if let fleet { issues += fleet.validationIssues() }
        return issues
    }
}

/// Walks the parsed TOML tables into the model, collecting every type and unknown-key problem.
private struct TOMLConfigReader {
    let path: String
    let locations: KeyLocations
    var issues: [ConfigIssue] = []
    /// Dotted keys the file sets (validation attaches file positions to these only).
    var present: Set<String> = []

    init(path: String, locations: KeyLocations) { self.path = path; self.locations = locations }

    mutating func read(_ root: TOMLTable) -> SupervisorConfig {
        var c = SupervisorConfig(service: .init(name: "", argv: []), stateDirectory: "")
        unknownKeys(root, prefix: "", known: ["state_dir", "service", "heartbeat", "capture", "restart", "escalation",
                                              "retention", "sockets", "metrics", "fleet"])
        if let v = string(root, "state_dir", prefix: "") { c.stateDirectory = v }

        if let t = table(root, "service") {
            unknownKeys(t, prefix: "service.", known: ["name", "argv", "env", "working_directory", "user", "group", "supplementary_groups"])
            if let v = string(t, "name", prefix: "service.") { c.service.name = v }
            if let v = stringArray(t, "argv", prefix: "service.") { c.service.argv = v }
            if let v = stringTable(t, "env", prefix: "service.") { c.service.environment = v }
            if let v = string(t, "working_directory", prefix: "service.") { c.service.workingDirectory = v }
            if let v = string(t, "user", prefix: "service.") { c.service.user = v }
            if let v = string(t, "group", prefix: "service.") { c.service.group = v }
            if let v = stringArray(t, "supplementary_groups", prefix: "service.") { c.service.supplementaryGroups = v }
        }
        for section in ConfigField.sections {
            guard let t = table(root, section.name) else { continue }
            let prefix = section.name + "."
            unknownKeys(t, prefix: prefix, known: section.fields.map(\.key))
            for field in section.fields { read(field, from: t, prefix: prefix, into: &c) }
        }
        if let t = table(root, "sockets") {
            for name in t.keys.sorted() {
                guard let address = string(t, name, prefix: "sockets.") else { continue }
                guard let parsed = SocketSpec.parseAddress(address) else {
                    add(.invalid, key: "sockets." + name, "expected \"HOST:PORT\" or \"[IPV6]:PORT\", got \"\(address)\"")
                    continue
                }
                c.sockets.append(SocketSpec(name: name, host: parsed.host, port: parsed.port))
            }
        }
        if let t = table(root, "metrics") {
            unknownKeys(t, prefix: "metrics.", known: ["listen"])
            if let v = string(t, "listen", prefix: "metrics.") { c.metricsListen = v }
        }
        if let t = table(root, "fleet") { c.fleet = readFleet(t) }
        return c
    }

    /// `[fleet]`: `url` is required once the table is there (an empty table ships nowhere, which is a mistake).
    mutating func readFleet(_ t: TOMLTable) -> FleetSettings {
        let p = "fleet."
        unknownKeys(t, prefix: p, known: ["url", "host", "password_file", "fleet_alert_hosts", "fleet_alert_window", "password"])
        if t["password"] != nil {
            add(.invalid, key: p + "password", "a password does not belong in the config: use fleet.password_file (a 0600 file) or PGPASSWORD")
        }
        var f = FleetSettings(url: string(t, "url", prefix: p) ?? "")
        if t["url"] == nil { add(.invalid, key: p + "url", "required in [fleet]: postgresql://USER@HOST:PORT/DB") }
        f.host = string(t, "host", prefix: p)
        f.passwordFile = string(t, "password_file", prefix: p)
        if let v = int(t, "fleet_alert_hosts", prefix: p) { f.alertHosts = v }
        if let value = t["fleet_alert_window"] {
            present.insert(p + "fleet_alert_window")
            if let n = value.int {
                f.alertWindowSeconds = n
            } else if let s = value.string, let n = FleetSettings.parseWindowSeconds(s) {
                f.alertWindowSeconds = n
            } else {
                add(.invalid, key: p + "fleet_alert_window", "expected seconds or a duration such as \"10m\", got \(describe(value))")
            }
        }
        return f
    }

    /// One setting of `field`'s section into `c`; a value of the wrong type is an issue and leaves the default.
    mutating func read(_ field: ConfigField, from t: TOMLTable, prefix: String, into c: inout SupervisorConfig) {
        let key = field.key
        switch field.slot {
        case let .int(path): if let v = int(t, key, prefix: prefix) { c[keyPath: path] = v }
        case let .optionalInt(path): if let v = int(t, key, prefix: prefix) { c[keyPath: path] = v }
        case let .number(path): if let v = number(t, key, prefix: prefix) { c[keyPath: path] = v }
        case let .bool(path): if let v = bool(t, key, prefix: prefix) { c[keyPath: path] = v }
        case let .optionalBool(path): if let v = bool(t, key, prefix: prefix) { c[keyPath: path] = v }
        case let .optionalString(path): if let v = string(t, key, prefix: prefix) { c[keyPath: path] = v }
        case let .mebibytes(path): if let v = megabytes(t, key, prefix: prefix) { c[keyPath: path] = v }
        case let .mode(path):
            if let v = string(t, key, prefix: prefix) { c[keyPath: path] = oneOf(v, key: prefix + key, what: "heartbeat source", default: c[keyPath: path]) }
        case let .method(path):
            if let v = string(t, key, prefix: prefix) { c[keyPath: path] = oneOf(v, key: prefix + key, what: "capture method", default: c[keyPath: path]) }
        case let .compression(path):
            if let v = string(t, key, prefix: prefix) { c[keyPath: path] = oneOf(v, key: prefix + key, what: "compression", default: c[keyPath: path]) }
        case let .notifyAccess(path):
            if let v = string(t, key, prefix: prefix) { c[keyPath: path] = oneOf(v, key: prefix + key, what: "notify access", default: c[keyPath: path]) }
        case let .runtime(path):
            if let v = string(t, key, prefix: prefix) { c[keyPath: path] = oneOf(v, key: prefix + key, what: "runtime", default: c[keyPath: path]) }
        case let .stallEvidence(path):
            if let v = string(t, key, prefix: prefix) { c[keyPath: path] = oneOf(v, key: prefix + key, what: "stall evidence", default: c[keyPath: path]) }
        }
    }

    // MARK: Typed access, each recording a type problem with the key's line

    /// A string naming one case of `T`; anything else is an error listing the choices.
    mutating func oneOf<T: RawRepresentable & CaseIterable>(_ v: String, key: String, what: String, default d: T) -> T where T.RawValue == String {
        if let value = T(rawValue: v) { return value }
        let names = T.allCases.map(\.rawValue)
        add(.invalid, key: key, "unknown \(what) \"\(v)\" (expected one of: \(names.joined(separator: ", ")))"
            + (suggestion(v, among: names).map { "; did you mean \($0)?" } ?? ""))
        return d
    }

    mutating func table(_ t: TOMLTable, _ key: String) -> TOMLTable? {
        guard let v = t[key] else { return nil }
        if let table = v.table { return table }
        typeMismatch(key, expected: "a table ([\(key)])", got: v)
        return nil
    }

    mutating func string(_ t: TOMLTable, _ key: String, prefix: String) -> String? {
        scalar(t, key, prefix: prefix, expected: "a string") { $0.string }
    }

    mutating func int(_ t: TOMLTable, _ key: String, prefix: String) -> Int? {
        scalar(t, key, prefix: prefix, expected: "an integer") { $0.int }
    }

    /// A size in MiB, as bytes. A value whose bytes do not fit in 64 bits is named as too large (shifting it
    /// would wrap it round to a negative number and a wrong message).
    mutating func megabytes(_ t: TOMLTable, _ key: String, prefix: String) -> Int64? {
        guard let v = int(t, key, prefix: prefix) else { return nil }
        let limit = Int64.max >> 20
        if Int64(v) > limit {
            add(.invalid, key: prefix + key, "too large: at most \(limit) MB (8 EiB), got \(v)")
            return nil
        }
        return Int64(v) << 20
    }

    mutating func number(_ t: TOMLTable, _ key: String, prefix: String) -> Double? {
        scalar(t, key, prefix: prefix, expected: "a number") { $0.double ?? $0.int.map(Double.init) }
    }

    mutating func bool(_ t: TOMLTable, _ key: String, prefix: String) -> Bool? {
        scalar(t, key, prefix: prefix, expected: "a boolean (true or false)") { $0.bool }
    }

    /// The value at `key` as `extract` reads it; anything else is a type issue naming `expected`.
    private mutating func scalar<T>(_ t: TOMLTable, _ key: String, prefix: String, expected: String,
                                    _ extract: (TOMLValueConvertible) -> T?) -> T? {
        guard let v = value(t, key, prefix) else { return nil }
        if let typed = extract(v) { return typed }
        typeMismatch(prefix + key, expected: expected, got: v)
        return nil
    }

    mutating func stringArray(_ t: TOMLTable, _ key: String, prefix: String) -> [String]? {
        guard let v = value(t, key, prefix) else { return nil }
        guard let array = v.array else {
            typeMismatch(prefix + key, expected: "an array of strings", got: v)
            return nil
        }
        var out: [String] = []
        var ok = true
        for (n, element) in array.enumerated() {
            if let s = element.string { out.append(s) } else {
                typeMismatch("\(prefix)\(key)[\(n)]", expected: "a string", got: element)
                ok = false
            }
        }
        return ok ? out : nil
    }

    mutating func stringTable(_ t: TOMLTable, _ key: String, prefix: String) -> [String: String]? {
        guard let v = value(t, key, prefix) else { return nil }
        guard let table = v.table else {
            typeMismatch(prefix + key, expected: "a table of strings", got: v)
            return nil
        }
        var out: [String: String] = [:]
        var ok = true
        for (name, element) in table {
            if let s = element.string { out[name] = s } else {
                typeMismatch("\(prefix)\(key).\(name)", expected: "a string", got: element)
                ok = false
            }
        }
        return ok ? out : nil
    }

    private mutating func value(_ t: TOMLTable, _ key: String, _ prefix: String) -> TOMLValueConvertible? {
        guard let v = t[key] else { return nil }
        present.insert(prefix + key)
        return v
    }

    /// Records every key of `t` not in `known`, with a suggestion when one is a near miss.
    mutating func unknownKeys(_ t: TOMLTable, prefix: String, known: [String]) {
        for key in t.keys where !known.contains(key) {
            let what = (t[key]?.table != nil && t[key]?.table?.inline == false) ? "unknown table" : "unknown key"
            let hint = suggestion(key, among: known).map { " (did you mean \($0)?)" } ?? ""
            add(.unknownKey, key: prefix + key, what + hint)
        }
    }

    mutating func typeMismatch(_ key: String, expected: String, got value: TOMLValueConvertible) {
        add(.type, key: key, "expected \(expected), got \(describe(value))")
    }

    mutating func add(_ kind: ConfigIssue.Kind, key: String, _ message: String) {
        issues.append(ConfigIssue(kind, key: key, message, file: path, line: locations.line(of: key)))
    }

    func located(_ issue: ConfigIssue) -> ConfigIssue {
        var i = issue
        i.file = path
        i.line = issue.key.flatMap(locations.line(of:))
        return i
    }

    func describe(_ v: TOMLValueConvertible) -> String {
        switch v.type {
        case .string: return "string \"\(v.string ?? "")\""
        case .int: return "integer \(v.int ?? 0)"
        case .double: return "floating-point number \(v.double ?? 0)"
        case .bool: return "boolean \(v.bool ?? false)"
        case .array: return "an array"
        case .table: return "a table"
        case .date: return "a date"
        case .time: return "a time"
        case .dateTime: return "a date-time"
        }
    }
}

/// Finds `\u0000` and `\U00000000` escapes inside TOML basic strings (single- and multi-line), skipping
/// literal strings and comments, and raw NUL bytes anywhere.
enum NulEscapes {
    /// 1-based lines holding one, each once, in order.
    static func lines(in text: String) -> [Int] {
        let b = Array(text.utf8)
        var found: [Int] = []
        func note(_ line: Int) { if found.last != line { found.append(line) } }
        var line = 1
        var i = 0
        enum Mode { case code, comment, basic, literal, multiBasic, multiLiteral }
        var mode = Mode.code
        func at(_ k: Int, _ s: String) -> Bool { let u = Array(s.utf8); return k + u.count <= b.count && Array(b[k..<k + u.count]) == u }
        while i < b.count {
            let c = b[i]
            if c == 0 { note(line) }
            if c == 10 {
                line += 1
                if mode == .comment || mode == .basic || mode == .literal { mode = .code }
                i += 1; continue
            }
            switch mode {
            case .code:
                if c == UInt8(ascii: "#") { mode = .comment }
                else if at(i, "\"\"\"") { mode = .multiBasic; i += 3; continue }
                else if at(i, "'''") { mode = .multiLiteral; i += 3; continue }
                else if c == UInt8(ascii: "\"") { mode = .basic }
                else if c == UInt8(ascii: "'") { mode = .literal }
            case .comment: break
            case .literal: if c == UInt8(ascii: "'") { mode = .code }
            case .multiLiteral: if at(i, "'''") { mode = .code; i += 3; continue }
            case .basic, .multiBasic:
                if c == UInt8(ascii: "\\") {
                    if at(i + 1, "u0000") || at(i + 1, "U00000000") { note(line) }
                    i += 2; continue   // the escaped character never ends the string
                }
                if mode == .basic && c == UInt8(ascii: "\"") { mode = .code }
                if mode == .multiBasic && at(i, "\"\"\"") { mode = .code; i += 3; continue }
            }
            i += 1
        }
        return found
    }
}
