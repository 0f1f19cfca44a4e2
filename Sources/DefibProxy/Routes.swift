/// The route grammar shared by routes files, the update stream and `--route`:
///
///     # comment
///     up APP MACHINE HOST:PORT
///     down APP MACHINE
///
/// One statement per line; blank lines and `#` comments (whole-line or trailing) are ignored.
/// App names are matched against the request's Host header, so they are case-folded to lower case.

/// Where a backend listens: a host (IPv4/IPv6 literal or DNS name) and a TCP port.
public struct BackendAddress: Hashable, Sendable, CustomStringConvertible {
    /// Host name or address literal, without brackets.
    public var host: String
    /// TCP port, 1…65535.
    public var port: Int

    /// Makes an address from its parts (no validation; `parse` validates).
    public init(host: String, port: Int) { self.host = host; self.port = port }

    /// `host:port`, with brackets around an IPv6 literal.
    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }

    /// Parses `HOST:PORT` or `[V6]:PORT`; the error names the text and what is wrong with it.
    /// Parses "HOST:PORT" or "[V6]:PORT". `anyPort` also accepts port 0 (a listening address: the kernel picks).
    public static func parse(_ text: Substring, anyPort: Bool = false) throws(RouteError) -> BackendAddress {
        func bad(_ problem: String) -> RouteError { RouteError(kind: .badAddress, problem: "address '\(text)': \(problem)") }
        let host: Substring
        let portText: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { throw bad("missing ']' after an IPv6 literal") }
            host = text[text.index(after: text.startIndex)..<close]
            let rest = text[text.index(after: close)...]
            guard rest.hasPrefix(":") else { throw bad("expected ':PORT' after ']'") }
            portText = rest.dropFirst()
        } else {
            guard let colon = text.lastIndex(of: ":") else { throw bad("expected HOST:PORT") }
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
            if host.contains(":") { throw bad("an IPv6 literal must be written in brackets, e.g. [::1]:8080") }
        }
        guard !host.isEmpty else { throw bad("empty host") }
        guard let port = Int(portText), ((anyPort ? 0 : 1)...65535).contains(port) else {
            throw bad("port '\(portText)' is not a number in \(anyPort ? 0 : 1)…65535")
        }
        return BackendAddress(host: String(host), port: port)
    }
}

/// One statement of the route grammar.
public enum RouteUpdate: Sendable, Hashable, CustomStringConvertible {
    /// Adds the machine or marks it up (replacing its address).
    case up(app: String, machine: String, address: BackendAddress)
    /// Marks the machine down; it stays known so a later `up` can bring it back.
    case down(app: String, machine: String)

    /// The app the statement is about.
    public var app: String {
        switch self { case let .up(app, _, _), let .down(app, _): app }
    }

    /// The machine the statement is about.
    public var machine: String {
        switch self { case let .up(_, machine, _), let .down(_, machine): machine }
    }

    /// The statement in the grammar, so it round-trips through `RouteGrammar.parseLine`.
    public var description: String {
        switch self {
        case let .up(app, machine, address): "up \(app) \(machine) \(address)"
        case let .down(app, machine): "down \(app) \(machine)"
        }
    }
}

/// A route-grammar problem. `file`/`line` are filled in when the text came from a file or a stream.
public struct RouteError: Error, Equatable, Sendable, CustomStringConvertible {
    /// What class of problem it is.
    public enum Kind: String, Sendable {
        case unknownVerb = "unknown-verb"
        case wrongArity = "wrong-arity"
        case badName = "bad-name"
        case badAddress = "bad-address"
        case notAnUp = "not-an-up"
        case unreadable
    }
    /// The class of problem.
    public var kind: Kind
    /// What is wrong, naming the offending text.
    public var problem: String
    /// The file (or stream) the line came from, when known.
    public var file: String?
    /// 1-based line number, when known.
    public var line: Int?

    /// A route error; `file`/`line` are usually added by the caller that knows them.
    public init(kind: Kind, problem: String, file: String? = nil, line: Int? = nil) {
        self.kind = kind; self.problem = problem; self.file = file; self.line = line
    }

    /// `FILE:LINE: problem`, or just the problem when the location is unknown.
    public var description: String {
        switch (file, line) {
        case let (f?, l?): "\(f):\(l): \(problem)"
        case let (f?, nil): "\(f): \(problem)"
        case let (nil, l?): "line \(l): \(problem)"
        case (nil, nil): problem
        }
    }
}

/// Parsers for the route grammar. Pure: no I/O except `parseFile(atPath:)`.
public enum RouteGrammar {
    /// Parses one line. Returns nil for a blank or comment-only line.
    public static func parseLine(_ raw: Substring) throws(RouteError) -> RouteUpdate? {
        var text = raw
        if let hash = text.firstIndex(of: "#") { text = text[..<hash] }
        let words = text.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\r" })
        guard let verb = words.first else { return nil }
        switch verb {
        case "up":
            guard words.count == 4 else {
                throw RouteError(kind: .wrongArity, problem: "'up' takes APP MACHINE HOST:PORT, got \(words.count - 1) argument(s) in '\(clipped(raw))'")
            }
            return .up(app: try name(words[1], what: "app"), machine: try name(words[2], what: "machine"),
                       address: try BackendAddress.parse(words[3]))
        case "down":
            guard words.count == 3 else {
                throw RouteError(kind: .wrongArity, problem: "'down' takes APP MACHINE, got \(words.count - 1) argument(s) in '\(clipped(raw))'")
            }
            return .down(app: try name(words[1], what: "app"), machine: try name(words[2], what: "machine"))
        default:
            throw RouteError(kind: .unknownVerb, problem: "unknown verb '\(clipped(verb))' (expected 'up' or 'down')")
        }
    }

    /// Parses a whole text (a routes file's contents or a chunk of an update stream). Errors carry
    /// `file` and the 1-based line number.
    public static func parse(_ text: String, file: String? = nil, firstLine: Int = 1) throws(RouteError) -> [RouteUpdate] {
        try parse(text, file: file, firstLine: firstLine) { _ throws(RouteError) in }
    }

    /// Parses a routes file: a list of `up` lines (a `down` in a routes file is a mistake, reported).
    public static func parseRoutesFile(_ text: String, file: String) throws(RouteError) -> [RouteUpdate] {
        try parse(text, file: file, firstLine: 1) { update throws(RouteError) in
            guard update.isUp else {
                throw RouteError(kind: .notAnUp, problem: "a routes file lists machines with 'up' lines; '\(update)' belongs on the update stream")
            }
        }
    }

    /// Every line parsed and passed to `check`; an error from either is located at its file and line.
    private static func parse(_ text: String, file: String?, firstLine: Int,
                              check: (RouteUpdate) throws(RouteError) -> Void) throws(RouteError) -> [RouteUpdate] {
        var out: [RouteUpdate] = []
        var number = firstLine
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            do throws(RouteError) {
                if let update = try parseLine(line) {
                    try check(update)
                    out.append(update)
                }
            } catch {
                var located = error
                located.file = file
                located.line = number
                throw located
            }
            number += 1
        }
        return out
    }

    /// Reads and parses a routes file from disk.
    public static func parseRoutesFile(atPath path: String) throws(RouteError) -> [RouteUpdate] {
        let text: String
        do { text = try readWholeFile(path) } catch { throw RouteError(kind: .unreadable, problem: "cannot read routes file: \(error)", file: path) }
        return try parseRoutesFile(text, file: path)
    }

    /// Parses `--route APP=HOST:PORT` flags; machines are named m1, m2, … per app in flag order.
    public static func parseRouteFlags(_ flags: [String]) throws(RouteError) -> [RouteUpdate] {
        var counts: [String: Int] = [:]
        var out: [RouteUpdate] = []
        for flag in flags {
            guard let eq = flag.firstIndex(of: "=") else {
                throw RouteError(kind: .wrongArity, problem: "--route '\(flag)': expected APP=HOST:PORT", file: "--route")
            }
            do {
                let app = try name(flag[..<eq], what: "app")
                let address = try BackendAddress.parse(flag[flag.index(after: eq)...])
                counts[app, default: 0] += 1
                out.append(.up(app: app, machine: "m\(counts[app]!)", address: address))
            } catch {
                var e = error
                e.problem = "--route '\(flag)': \(e.problem)"
                throw e
            }
        }
        return out
    }

    /// Names are non-empty runs of visible ASCII without '=' or '#'; apps are case-folded (they match Host).
    static func name(_ word: Substring, what: String) throws(RouteError) -> String {
        guard !word.isEmpty, word.utf8.count <= 253,
              word.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7f && $0 != UInt8(ascii: "=") && $0 != UInt8(ascii: "#") }) else {
            throw RouteError(kind: .badName, problem: "\(what) name '\(clipped(word))' must be 1–253 visible ASCII characters without '=' or '#'")
        }
        return what == "app" ? word.lowercased() : String(word)
    }

    static func clipped(_ s: Substring) -> String { s.count > 80 ? s.prefix(80) + "…" : String(s) }
}

extension RouteUpdate {
    /// True for `up` statements.
    public var isUp: Bool { if case .up = self { true } else { false } }
}
