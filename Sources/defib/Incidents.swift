import ArgumentParser
import DefibCore
import DefibStore
import Foundation
import Glibc

/// `defib incidents`: read the incident store the way `coredumpctl` reads the journal's cores — the same
/// verbs, options and matches where the two overlap, defib's own fields beside them.
struct IncidentsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "incidents",
        abstract: "List and inspect recorded incidents (hangs and deaths of the supervised service), like coredumpctl.",
        discussion: """
            MATCHES select incidents, as coredumpctl's do: a number is an incident id when there is one, else a pid; a path is the executable; `last` is the newest; any other word is the process name (COMM); FIELD=VALUE matches ID, PID, COMM, EXE, UID, GID, SERVICE, CAUSE, SIGNATURE, DIAGNOSIS (by kind, e.g. DIAGNOSIS=corrupted-lock-word) or OUTCOME. Different fields must all match; the same field given twice matches either value. Matches that select nothing print "No incidents." on stderr and exit 1 (an empty store lists nothing and exits 0).

            Examples:
              defib incidents --state-dir D              # newest first (-r: oldest)
              defib incidents --state-dir D --since -2h COMM=defib-proxy
              defib incidents -1 --state-dir D --json    # the newest, one object
              defib incidents info --state-dir D         # the newest, in detail
              defib incidents info 7 --state-dir D       # incident 7 (or pid 7's)
              defib incidents dump last --state-dir D --output - > core
              defib incidents debug --state-dir D -A '-batch -ex bt'
              defib incidents signatures --state-dir D --since -7d
              defib incidents export 3 --state-dir D --output incident-3.tar.gz
            """,
        subcommands: [IncidentsListCommand.self, IncidentsInfoCommand.self, IncidentsDumpCommand.self, IncidentsDebugCommand.self,
                      IncidentsGdbCommand.self, IncidentsExportCommand.self, IncidentsSignaturesCommand.self],
        defaultSubcommand: IncidentsListCommand.self)

    /// coredumpctl takes `--json=MODE` and `--json MODE`; defib's `--json` alone (pretty JSON) predates the
    /// modes and keeps working: a bare `--json` not followed by a mode becomes `--json=pretty`. For `gdb` and
    /// `debug`, the arguments after `--` are the debugger's (passed on as hidden `--debugger-extra` options).
    static func normalizedArguments(_ arguments: [String]) -> [String] {
        guard arguments.first == "incidents" else { return arguments }
        var out = ["incidents"]
        var i = 1
        let debugger = arguments.count > 1 && ["gdb", "debug"].contains(arguments[1])
        while i < arguments.count {
            let arg = arguments[i]
            if arg == "--" {
                // The debugger's own arguments; ArgumentParser cannot take them after the MATCHES array itself.
                out += debugger ? arguments[(i + 1)...].flatMap { ["--debugger-extra", $0] } : Array(arguments[i...])
                break
            }
            if arg == "--json" {
                if i + 1 < arguments.count, JSONMode(rawValue: arguments[i + 1]) != nil {
                    out += [arg, arguments[i + 1]]; i += 2; continue
                }
                out.append("--json=pretty")
            } else {
                out.append(arg)
            }
            i += 1
        }
        return out
    }
}

/// `--json=` modes, as coredumpctl's.
enum JSONMode: String, ExpressibleByArgument, CaseIterable {
    case short, pretty, off
}

/// Where the store is: `--state-dir`, or the `state_dir` of a config file.
struct StoreLocationOptions: ParsableArguments {
    @Option(name: .long, help: "The supervisor's state directory (holds incidents.sqlite).", completion: .directory)
    var stateDir: String?

    @Option(name: .long, help: "Take the state directory from this config file's state_dir.", completion: .file(extensions: ["toml"]))
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
    /// itself does not exist (a wrong path) or cannot be read (a user other than defib's: permission denied,
    /// never "No incidents.").
    func openStoreIfPresent() throws -> IncidentStore? {
        let dir = try stateDirectory()
        let database = IncidentStore.databasePath(stateDirectory: dir)
        try Self.checkReadable(directory: dir, database: database)
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: dir, isDirectory: &isDirectory), isDirectory.boolValue,
           !FileManager.default.fileExists(atPath: database) {
            printError("defib: no incident database at \(database) yet")
            return nil
        }
        do {
            let store = try IncidentStore.openReadOnly(stateDirectory: dir)
            SupervisorNamespaces.printNotes(stateDirectory: dir)
            return store
        } catch let error as StoreError where error.kind == .uninitialized {
            printError("defib: \(error)")
            return nil
        } catch {
            return try openStore()   // the same failure, worded for the user
        }
    }

    /// The store, opened read-only: the supervisor may be writing it right now.
    func openStore() throws -> IncidentStore {
        let dir = try stateDirectory()
        try Self.checkReadable(directory: dir, database: IncidentStore.databasePath(stateDirectory: dir))
        do {
            let store = try IncidentStore.openReadOnly(stateDirectory: dir)
            SupervisorNamespaces.printNotes(stateDirectory: dir)
            return store
        } catch let error as StoreError where error.kind == .missingDatabase {
            throw CLIError("\(error.message) (has `defib run --state-dir \(dir)` ever run?)")
        } catch {
            throw CLIError("\(error)")
        }
    }

    /// A state directory or database this user may not read is a permission problem, said as one: the
    /// checks that follow would otherwise see "no such file" and report an empty or missing store.
    static func checkReadable(directory: String, database: String) throws {
        var st = stat()
        for path in [directory, database] {
            let denied = (stat(path, &st) != 0 && errno == EACCES) || (access(path, F_OK) == 0 && access(path, R_OK) != 0 && errno == EACCES)
            guard denied else { continue }
            var owner = stat()
            let who = stat(directory, &owner) == 0 ? " (the state directory belongs to uid \(owner.st_uid), mode \(String(owner.st_mode & 0o7777, radix: 8)))" : ""
            throw CLIError("permission denied: cannot read \(path)\(who); run as root or that user, e.g. with sudo")
        }
    }
}

/// How views print: JSON or a table, legend, pager, time zone.
struct OutputOptions: ParsableArguments {
    @Option(name: .customLong("json"),
            help: "JSON output: pretty (also plain --json), short (one line) or off (a table). Times in JSON are RFC 3339 UTC.")
    var json: JSONMode?

    @Flag(name: .customLong("no-legend"), help: "Do not print the column headers.")
    var noLegend = false

    @Flag(name: .customLong("no-pager"), help: "Do not pipe output into a pager (one is used only when stdout is a terminal: $SYSTEMD_PAGER, $PAGER, less).")
    var noPager = false

    @Flag(name: .customLong("utc"), help: "Show times in UTC (the default is local time).")
    var utc = false

    /// JSON requested (and not `off`).
    var jsonMode: JSONMode? { json == .off ? nil : json }
    /// The zone tables and `info` show times in.
    var timeZone: TimeZone { utc ? TimeZone(identifier: "UTC")! : TimeZone.current }
}

/// Which incidents a view covers, beyond its MATCHES.
struct RangeOptions: ParsableArguments {
    @Option(name: [.customShort("S"), .long], parsing: .unconditional,
            help: "Only incidents detected at or after DATE: 2026-11-23, '2026-11-23 10:00' (local time), RFC 3339, -2h, '30m ago', today, yesterday, now.")
    var since: String?

    @Option(name: [.customShort("U"), .long], parsing: .unconditional, help: "Only incidents detected at or before DATE.")
    var until: String?

    @Flag(name: [.customShort("r"), .long], help: "Reverse the order: oldest first (coredumpctl's default order).")
    var reverse = false

    @Flag(name: .customShort("1"), help: "Only the most recent incident (with --json, one object rather than an array).")
    var newestOnly = false

    @Option(name: [.customShort("n"), .long], help: "At most N incidents (the newest N).")
    var limit: Int?

    @Option(name: .long, help: "Only this service's incidents (same as SERVICE=NAME).", completion: .custom(StateCompletion.incidentServices))
    var service: String?

    @Option(name: .long, help: "Only incidents of this kind: hang (killed and restarted), stall (came back by itself, nothing done) or exit (died or could not start); same as KIND=KIND.")
    var kind: String?

    func validate() throws {
        if let limit, limit <= 0 { throw ValidationError("--limit must be a positive number, got \(limit)") }
        if let kind, IncidentKind(rawValue: kind) == nil {
            throw ValidationError("unknown --kind '\(kind)': expected one of \(IncidentKind.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        let now = Date()
        let s = try since.map { try parseDateArgument($0, option: "--since", now: now) }
        let u = try until.map { try parseDateArgument($0, option: "--until", now: now) }
        if let s, let u, s > u { throw ValidationError("--since must not be after --until") }
    }

    /// The store query for `matches` with these options.
    func query(_ matches: [String], in store: IncidentStore?) throws -> Selection {
        var selection = try Selection.resolve(matches, in: store)
        let now = Date()
        selection.query.since = try since.map { try parseDateArgument($0, option: "--since", now: now) }
        selection.query.until = try until.map { try parseDateArgument($0, option: "--until", now: now) }
        if let service { selection.query.add(.service, service) }
        if let kind { selection.query.add(.kind, kind) }
        selection.query.oldestFirst = reverse
        if newestOnly || selection.newestOnly { selection.query.limit = 1 } else { selection.query.limit = limit }
        return selection
    }
}

/// MATCHES resolved against a store: the query, and whether they name one incident (an id, `last`).
struct Selection {
    var query = IncidentQuery()
    /// `last` was given.
    var newestOnly = false
    /// The arguments named exactly one incident (`last`, or one number that is an incident's id), so a
    /// view of one incident shows it as one object.
    var single = false
    /// Bare numbers taken as pids because no incident has that id (for the "no incident N" message).
    var numbersTakenAsPids: [Int64] = []
    /// Bare words taken as process names.
    var bareWords: [String] = []
    /// The arguments as given.
    var arguments: [String] = []

    /// Parses and resolves: a bare number is an id when the store has that incident, else a pid.
    static func resolve(_ arguments: [String], in store: IncidentStore?) throws -> Selection {
        var s = Selection()
        s.arguments = arguments
        let cwd = FileManager.default.currentDirectoryPath
        var ids = 0, others = 0
        for argument in arguments {
            let match: IncidentMatch
            do { match = try IncidentMatch.parse(argument, workingDirectory: cwd) } catch { throw ValidationError("\(error)") }
            switch match {
            case .last:
                s.newestOnly = true
            case let .number(n):
                if let store, try storeCall({ try store.exists(id: n) }) {
                    s.query.add(.id, String(n)); ids += 1
                } else {
                    s.query.add(.pid, String(n)); s.numbersTakenAsPids.append(n); others += 1
                }
            case let .field(field, value):
                if field == .comm, !argument.contains("=") { s.bareWords.append(argument) }
                s.query.add(field, value); others += 1
            }
        }
        s.single = others == 0 && (ids == 1 || (ids == 0 && s.newestOnly))
        return s
    }
}

/// Runs a store call, turning its error into the CLI's.
func storeCall<T>(_ body: () throws -> T) throws -> T {
    do { return try body() } catch let error as StoreError { throw CLIError("\(error)") }
}

/// The incident a one-incident verb (info, dump, debug, gdb, export) works on: the newest one `matches`
/// select, or the newest of all with none. Errors name what was asked for.
func selectOne(_ matches: [String], range: RangeOptions? = nil, in store: IncidentStore) throws -> Incident {
    var selection = try range?.query(matches, in: store) ?? Selection.resolve(matches, in: store)
    selection.query.limit = 1
    selection.query.oldestFirst = false
    if let found = try storeCall({ try store.incidents(matching: selection.query) }).first { return found }
    throw noMatch(selection, store: store)
}

/// The error for matches that selected nothing, worded for what they were.
func noMatch(_ selection: Selection, store: IncidentStore) -> Error {
    if selection.arguments.isEmpty || selection.arguments == ["last"] {
        return CLIError("no incidents in \(store.path)")
    }
    if selection.arguments.count == 1, let n = selection.numbersTakenAsPids.first {
        return CLIError("no incident \(n) in \(store.path), and no incident of pid \(n)")
    }
    if selection.arguments.count == 1, let word = selection.bareWords.first {
        return ValidationError("malformed incident id '\(word)': expected a positive number or 'last' "
            + "(nor is it the name of a process with incidents; MATCHES are ID, last, PID, COMM, EXE path or FIELD=VALUE)")
    }
    return CLIError("no incident matches \(selection.arguments.joined(separator: " ")) in \(store.path)")
}

/// "No incidents." on stderr and exit 1: coredumpctl's answer to matches that select nothing.
func exitNoIncidents() throws -> Never {
    printError("No incidents.")
    throw ExitCode(1)
}

/// A failure of the command itself (not a usage error): printed as `Error: …`, exit status 1.
struct CLIError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// Parses `--since`/`--until`: RFC 3339 (`2026-11-23T10:00:00Z`), a date or date and time in `zone` (local
/// time by default, as coredumpctl; `2026-11-23`, `2026-11-23 10:00[:00]`), `now`, `today`, `yesterday`
/// (midnight in `zone`), or a time ago (`-2h`, `30m ago`; units s, m, h, d, w).
func parseDateArgument(_ text: String, option: String, now: Date = Date(), zone: TimeZone = TimeZone.current) throws -> Date {
    let t = text.trimmingCharacters(in: .whitespaces)
    var calendar = Calendar(identifier: .gregorian)
    calendar.timeZone = zone
    switch t {
    case "now": return now
    case "today": return calendar.startOfDay(for: now)
    case "yesterday": return calendar.date(byAdding: .day, value: -1, to: calendar.startOfDay(for: now))!
    default: break
    }
    // Relative: "-2h" or "2h ago".
    var relative: Substring?
    if t.hasPrefix("-") { relative = t.dropFirst() } else if t.hasSuffix(" ago") { relative = t.dropLast(4) }
    if let r = relative?.replacingOccurrences(of: " ", with: ""), let unit = r.last,
       let amount = Double(r.dropLast()), amount >= 0 {
        let seconds: Double? = switch unit { case "s": 1; case "m": 60; case "h": 3600; case "d": 86400; case "w": 604_800; default: nil }
        if let seconds { return now.addingTimeInterval(-amount * seconds) }
    }
    let iso = ISO8601DateFormatter()
    for options: ISO8601DateFormatter.Options in [[.withInternetDateTime, .withFractionalSeconds], [.withInternetDateTime]] {
        iso.formatOptions = options
        if let d = iso.date(from: t) { return d }
    }
    let f = DateFormatter()
    f.locale = Locale(identifier: "en_US_POSIX")
    f.timeZone = zone
    for format in ["yyyy-MM-dd HH:mm:ss", "yyyy-MM-dd'T'HH:mm:ss", "yyyy-MM-dd HH:mm", "yyyy-MM-dd'T'HH:mm", "yyyy-MM-dd"] {
        f.dateFormat = format
        if let d = f.date(from: t) { return d }
    }
    throw ValidationError("malformed date '\(text)' for \(option): expected e.g. 2026-11-23, '2026-11-23 10:00', 2026-11-23T10:00:00Z, -2h, '30m ago', today")
}

// MARK: Formatting shared by the views

enum Format {
    /// `2026-11-23 10:00:00.123` in `zone`.
    static func time(_ date: Date, milliseconds: Bool = true, zone: TimeZone = TimeZone(identifier: "UTC")!) -> String {
        let f = DateFormatter()
        f.locale = Locale(identifier: "en_US_POSIX")
        f.timeZone = zone
        f.dateFormat = milliseconds ? "yyyy-MM-dd HH:mm:ss.SSS" : "yyyy-MM-dd HH:mm:ss"
        return f.string(from: date)
    }

    /// The zone's short name for headings: "UTC", "CET", or "+05:30" where it has none.
    static func zoneName(_ zone: TimeZone, at date: Date = Date()) -> String {
        if zone.identifier == "UTC" || zone.identifier == "Etc/UTC" || zone.identifier == "GMT" && zone.secondsFromGMT() == 0 { return "UTC" }
        if zone == TimeZone.current {
            // The C library knows the tz database's abbreviations (CET, IST) where Foundation says GMT+1.
            tzset()
            var t = time_t(date.timeIntervalSince1970)
            var parts = tm()
            if localtime_r(&t, &parts) != nil, let name = parts.tm_zone.map({ String(cString: $0) }), !name.isEmpty,
               Int(parts.tm_gmtoff) == zone.secondsFromGMT(for: date) {
                return name
            }
        }
        if let abbreviation = zone.abbreviation(for: date), !abbreviation.hasPrefix("GMT") { return abbreviation }
        let seconds = zone.secondsFromGMT(for: date)
        return String(format: "%@%02d:%02d", seconds < 0 ? "-" : "+", abs(seconds) / 3600, abs(seconds) % 3600 / 60)
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

    /// Columns padded to their widest cell (right-aligned for the columns in `right`, as coredumpctl aligns
    /// numbers); the last column is not padded.
    static func table(_ rows: [[String]], indent: String = "", right: Set<Int> = []) -> String {
        guard let columns = rows.map(\.count).max() else { return "" }
        var widths = Array(repeating: 0, count: columns)
        for row in rows { for (i, cell) in row.enumerated() { widths[i] = max(widths[i], cell.count) } }
        return rows.map { row in
            let line = indent + row.enumerated().map { i, cell in
                let pad = String(repeating: " ", count: max(0, widths[i] - cell.count))
                if right.contains(i) { return pad + cell }
                return i == row.count - 1 ? cell : cell + pad
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

    /// coredumpctl's COREFILE words: `present`, `missing` (deleted since), `inaccessible`, `none` (no core
    /// written), plus `failed` (the capture failed) and `truncated` (cut at the budget).
    static func coreState(_ incident: Incident) -> String {
        guard let path = incident.capture?.path else { return incident.capture?.error != nil ? "failed" : "none" }
        var st = stat()
        if stat(path, &st) != 0 { return errno == EACCES ? "inaccessible" : "missing" }
        if access(path, R_OK) != 0 { return "inaccessible" }
        return incident.notes.contains { $0.hasPrefix("core truncated") } ? "truncated" : "present"
    }
}

/// Writes to standard error (messages that are not the command's output).
func printError(_ message: String) {
    FileHandle.standardError.write(Data((message + "\n").utf8))
}
