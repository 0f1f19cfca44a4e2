/// One request line on the control channel. Pure parsing; `ControlChannel` executes them.
public enum ControlCommand: Sendable, Equatable {
    /// `ping [token]` → `pong [token]`, after reading the catalog under its read lock.
    case ping(token: String?)
    /// `locks` → one line of JSON describing every registered lock, taking no lock.
    case locks
    /// `stats` → one line of JSON with the proxy's counters, taking no lock.
    case stats
    /// `fault KIND` → arms a fault.
    case fault(FaultKind)
    /// `fault slow-holder MS` → the slow holder releases the write lock after MS: a stall that ends by itself.
    case slowHolderFor(ms: Int)
    /// `help` → the command list.
    case help

    /// The commands, for `help` and error messages.
    public static let known = ["ping", "locks", "stats", "fault", "help"]

    /// The longest request line accepted (bytes, excluding the newline).
    public static let maxLineBytes = 4096

    /// The `help` reply (one line).
    public static var helpText: String {
        "commands: ping [token] (pong after reading the catalog) | locks (lock telemetry JSON) | stats (counters JSON) | fault KIND (arm a fault: \(FaultKind.names)) | fault slow-holder MS (hold the write lock MS, then release it: a stall) | help"
    }

    /// Parses one request line (without its newline; a trailing CR is ignored). The error's
    /// `reply` is the line to send back.
    public static func parse(_ line: String) throws(ControlCommandError) -> ControlCommand {
        var text = Substring(line)
        if text.hasSuffix("\r") { text = text.dropLast() }
        let word: Substring
        let rest: Substring?
        if let space = text.firstIndex(of: " ") {
            word = text[..<space]
            rest = text[text.index(after: space)...]
        } else {
            word = text
            rest = nil
        }
        switch word {
        case "ping":
            // The token is echoed exactly, spaces included.
            return .ping(token: rest.map(String.init))
        case "locks", "stats", "help":
            if let rest, !rest.allSatisfy({ $0 == " " }) {
                throw ControlCommandError(kind: .unexpectedArgument, reply: "error '\(word)' takes no argument (got '\(clip(rest))')")
            }
            return word == "locks" ? .locks : word == "stats" ? .stats : .help
        case "fault":
            let kind = rest?.trimmingSpaces ?? ""
            let words = kind.split(separator: " ", omittingEmptySubsequences: true)
            if words.count == 2, words[0] == FaultKind.slowHolder.rawValue {
                guard let ms = Int(words[1]), (1...3_600_000).contains(ms) else {
                    throw ControlCommandError(kind: .unexpectedArgument, reply: "error fault slow-holder MS: MS must be 1…3600000 ms, got '\(clip(words[1]))'")
                }
                return .slowHolderFor(ms: ms)
            }
            guard !kind.isEmpty else {
                throw ControlCommandError(kind: .missingArgument, reply: "error usage: fault KIND (known: \(FaultKind.names))")
            }
            do { return .fault(try FaultKind.parse(kind)) } catch {
                throw ControlCommandError(kind: .unknownFault, reply: "error \(error.message)")
            }
        default:
            throw ControlCommandError(kind: .unknownCommand,
                                      reply: "error unknown command '\(clip(word))' (known: \(known.joined(separator: ", ")))")
        }
    }

    static func clip(_ s: Substring) -> String { s.count > 64 ? s.prefix(64) + "…" : String(s) }
}

/// A control line that is not a command; `reply` is the error line sent back.
public struct ControlCommandError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The class of problem.
    public enum Kind: String, Sendable {
        case unknownCommand = "unknown-command", unexpectedArgument = "unexpected-argument"
        case missingArgument = "missing-argument", unknownFault = "unknown-fault", lineTooLong = "line-too-long"
    }
    /// The class of problem.
    public var kind: Kind
    /// The reply line, starting with "error ".
    public var reply: String
    /// The reply.
    public var description: String { reply }
}

extension Substring {
    var trimmingSpaces: String {
        String(drop(while: { $0 == " " }).reversed().drop(while: { $0 == " " }).reversed())
    }
}
