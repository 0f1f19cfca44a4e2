import ArgumentParser
import DefibCore
import DefibStore
import Foundation

/// `defib incidents`: read the incident store, like `coredumpctl` reads the journal's cores.
struct IncidentsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "incidents",
        abstract: "List and inspect recorded incidents (hangs and deaths of the supervised service).",
        discussion: """
            Examples:
              defib incidents --state-dir /var/lib/defib              # newest first
              defib incidents info last --state-dir /var/lib/defib    # what happened, in detail
              defib incidents gdb last --state-dir /var/lib/defib     # debug the captured core
              defib incidents export 3 --state-dir D --output incident-3.tar.gz
            """,
        subcommands: [IncidentsListCommand.self, IncidentsInfoCommand.self, IncidentsGdbCommand.self,
                      IncidentsExportCommand.self],
        defaultSubcommand: IncidentsListCommand.self)
}

/// Where the store is: `--state-dir`, or the `state_dir` of a config file.
struct StoreLocationOptions: ParsableArguments {
    @Option(name: .long, help: "The supervisor's state directory (holds incidents.sqlite).")
    var stateDir: String?

    @Option(name: .long, help: "Take the state directory from this config file's state_dir.")
    var config: String?

    func validate() throws {
        if stateDir == nil && config == nil {
            throw ValidationError("missing --state-dir DIR (the directory holding incidents.sqlite), or --config FILE")
        }
    }

    /// The state directory, from the flag or the config file.
    func stateDirectory() throws -> String {
        if let stateDir { return stateDir }
        let path = config ?? ""
        let cfg: SupervisorConfig
        do { cfg = try SupervisorConfig.load(path: path) } catch { throw CLIError("\(error)") }
        guard !cfg.stateDirectory.isEmpty else { throw CLIError("\(path): state_dir is not set; give --state-dir") }
        return cfg.stateDirectory
    }

    /// For `list`: nil (no incidents yet) when the state directory exists but holds no database, which is
    /// how a supervisor's state directory looks until `defib run` opens it; an error when the directory
    /// itself does not exist (a wrong path).
    func openStoreIfPresent() throws -> IncidentStore? {
        let dir = try stateDirectory()
        var isDirectory: ObjCBool = false
        let database = IncidentStore.databasePath(stateDirectory: dir)
        // A store this user may not read is not an empty one.
        if let denied = Self.permissionDenied(dir: dir, database: database) { throw CLIError(denied) }
        if FileManager.default.fileExists(atPath: dir, isDirectory: &isDirectory), isDirectory.boolValue,
           !FileManager.default.fileExists(atPath: database) {
            printError("defib: no incident database at \(database) yet")
            return nil
        }
        do {
            return try IncidentStore.openReadOnly(stateDirectory: dir)
        } catch let error as StoreError where error.kind == .uninitialized {
            printError("defib: \(error)")
            return nil
        } catch {
            return try openStore()   // the same failure, worded for the user
        }
    }

    /// "permission denied" when this user cannot look into the state directory or read the database in it
    /// (the store is private to the user defib runs as); nil otherwise.
    static func permissionDenied(dir: String, database: String) -> String? {
        var st = stat()
        if stat(database, &st) != 0 && errno == EACCES {
            return "cannot read \(dir): permission denied (the incident store is private to the user defib runs as; try as that user, e.g. with sudo)"
        }
        if stat(database, &st) == 0, access(database, R_OK) != 0, errno == EACCES {
            return "cannot read \(dir): permission denied (its incident store \(database) is private to the user defib runs as; try as that user, e.g. with sudo)"
        }
        return nil
    }

    /// The store, opened read-only: the supervisor may be writing it right now.
    func openStore() throws -> IncidentStore {
        let dir = try stateDirectory()
        if let denied = Self.permissionDenied(dir: dir, database: IncidentStore.databasePath(stateDirectory: dir)) { throw CLIError(denied) }
        do {
            return try IncidentStore.openReadOnly(stateDirectory: dir)
        } catch let error as StoreError where error.kind == .missingDatabase {
            throw CLIError("\(error.message) (has `defib run --state-dir \(dir)` ever run?)")
        } catch {
            throw CLIError("\(error)")
        }
    }
}

/// An incident named on the command line: its number, or `last` for the newest.
enum IncidentSelector: Equatable {
    case id(Int64)
    case last

    /// Parses `ID` or `last`; nil when it is neither.
    init?(_ text: String) {
        if text == "last" { self = .last; return }
        guard let n = Int64(text), n > 0 else { return nil }
        self = .id(n)
    }

    static func parse(_ text: String) throws -> IncidentSelector {
        guard let s = IncidentSelector(text) else {
            throw ValidationError("malformed incident id '\(text)': expected a positive number or 'last'")
        }
        return s
    }

    /// The selected incident; a clear error when there is none.
    func resolve(in store: IncidentStore) throws -> Incident {
        do {
            switch self {
            case let .id(n):
                guard let i = try store.incident(id: n) else { throw CLIError("no incident \(n) in \(store.path)") }
                return i
            case .last:
                guard let i = try store.latest() else { throw CLIError("no incidents in \(store.path)") }
                return i
            }
        } catch let error as StoreError {
            throw CLIError("\(error)")
        }
    }
}

/// A failure of the command itself (not a usage error): printed as `Error: …`, exit status 1.
struct CLIError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// Parses `--since`/`--until`: RFC 3339 (`2026-11-23T10:00:00Z`), a UTC date or date and time
/// (`2026-11-23`, `2026-11-23 10:00[:00]`), `now`, `today`, `yesterday` (UTC midnight), or a time ago
/// (`-2h`, `30m ago`; units s, m, h, d).
func parseDateArgument(_ text: String, option: String, now: Date = Date()) throws -> Date {
    let t = text.trimmingCharacters(in: .whitespaces)
    var utc = Calendar(identifier: .gregorian)
    utc.timeZone = TimeZone(identifier: "UTC")!
    switch t {
    case "now": return now
    case "today": return utc.startOfDay(for: now)
    case "yesterday": return utc.date(byAdding: .day, value: -1, to: utc.startOfDay(for: now))!
    default: break
    }
    // Relative: "-2h" or "2h ago".
    var relative: Substring?
    if t.hasPrefix("-") { relative = t.dropFirst() } else if t.hasSuffix(" ago") { relative = t.dropLast(4) }
    if let r = relative?.replacingOccurrences(of: " ", with: ""), let unit = r.last,
       let amount = Double(r.dropLast()), amount >= 0 {
        let seconds: Double? = switch unit { case "s": 1; case "m": 60; case "h": 3600; case "d": 86400; default: nil }
        if let seconds { return now.addingTimeInterval(-amount * seconds) }
    }
    let iso = ISO8601DateFormatter()
    for options: ISO8601DateFormatter.Options in [[.withInternetDateTime, .withFractionalSeconds], [.withInternetDateTime]] {
        iso.formatOptions = options
        if let d = iso.date(from: t) { return d }
    }
    let f = DateFormatter()
    f.locale = Locale(identifier: "en_US_POSIX")
    f.timeZone = TimeZone(identifier: "UTC")
    for format in ["yyyy-MM-dd HH:mm:ss", "yyyy-MM-dd'T'HH:mm:ss", "yyyy-MM-dd HH:mm", "yyyy-MM-dd'T'HH:mm", "yyyy-MM-dd"] {
        f.dateFormat = format
        if let d = f.date(from: t) { return d }
    }
    throw ValidationError("malformed date '\(text)' for \(option): expected e.g. 2026-11-23, '2026-11-23 10:00', 2026-11-23T10:00:00Z, -2h, '30m ago', today")
}

// MARK: Formatting shared by the views

enum Format {
    /// `2026-11-23 10:00:00.123` in UTC.
    static func time(_ date: Date, milliseconds: Bool = true) -> String {
        let s = IncidentJSON.rfc3339(date)   // 2026-11-23T10:00:00.123Z
        let body = s.replacingOccurrences(of: "T", with: " ").replacingOccurrences(of: "Z", with: "")
        return milliseconds ? body : String(body.prefix(19))
    }

    /// `812 ms`, `-60.0 s`: milliseconds below ten seconds, then seconds.
    static func duration(ms: Double, signed: Bool = false) -> String {
        let sign = signed && ms >= 0 ? "+" : ""
        if abs(ms) < 10_000 { return "\(sign)\(Int(ms.rounded())) ms" }
        if abs(ms) < 3_600_000 { return sign + String(format: "%.1f s", ms / 1000) }
        return sign + String(format: "%.1f h", ms / 3_600_000)
    }

    /// `45.9 MiB`.
    static func bytes(_ n: Int64) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB"]
        var value = Double(n)
        var unit = 0
        while value >= 1024 && unit < units.count - 1 { value /= 1024; unit += 1 }
        return unit == 0 ? "\(n) B" : String(format: "%.1f %@", value, units[unit])
    }

    /// Columns padded to their widest cell; the last column is not padded.
    static func table(_ rows: [[String]], indent: String = "") -> String {
        guard let columns = rows.map(\.count).max() else { return "" }
        var widths = Array(repeating: 0, count: columns)
        for row in rows { for (i, cell) in row.enumerated() { widths[i] = max(widths[i], cell.count) } }
        return rows.map { row in
            let line = indent + row.enumerated().map { i, cell in
                i == row.count - 1 ? cell : cell.padding(toLength: widths[i], withPad: " ", startingAt: 0)
            }.joined(separator: "  ")
            // An empty last cell would leave the padding of the one before it.
            return String(line.reversed().drop { $0 == " " }.reversed())
        }.joined(separator: "\n")
    }

    /// At most `limit` characters, cut at a word boundary when one is near, with "…".
    static func truncated(_ s: String, _ limit: Int) -> String {
        guard s.count > limit else { return s }
        let cut = s.prefix(limit - 1)
        if let space = cut.lastIndex(of: " "), cut.distance(from: cut.startIndex, to: space) > limit / 2 {
            return cut[..<space] + "…"
        }
        return cut + "…"
    }

    /// Whether the incident's core file is still on disk.
    static func coreExists(_ incident: Incident) -> Bool {
        incident.capture?.path.map { FileManager.default.fileExists(atPath: $0) } ?? false
    }
}

/// Writes to standard error (messages that are not the command's output).
func printError(_ message: String) {
    FileHandle.standardError.write(Data((message + "\n").utf8))
}
