import DefibCore
import Foundation

/// The fleet views as JSON: the contract `defib fleet … --json` prints.
///
/// - an incident: `host`, `store_id` (the local database's id), `version`, `shipped_at`, then every
///   field of the host's own `defib incidents --json` object in its order (`id` is the local incident id);
/// - a signature: `signature`, `hosts` (count), `host_names`, `incidents`, `first_seen`, `last_seen`,
///   `diagnosis_kind`, `suspect` (the label, or null), `suspect_hosts` (how many hosts name it);
/// - a fleet event: `id`, `signature`, `raised_at`, `raised_by`, `first_seen`, `last_seen`, `hosts`,
///   `threshold`, `window_s`, `diagnosis_kind`, `suspect`, `suspect_hosts`, `host_names`.
public enum FleetJSON {
    /// One fleet incident.
    public static func incident(_ i: FleetIncidentListing) -> JSONValue {
        var members: [JSONMember] = [
            .init("host", .string(i.host)),
            .init("store_id", .string(i.storeID)),
            .init("version", .int(i.version)),
            .init("shipped_at", .string(IncidentJSON.rfc3339(i.shippedAt))),
        ]
        if case let .object(body)? = try? OrderedJSON.parse(i.body) {
            members += body.filter { m in !members.contains { $0.key == m.key } }
        } else {
            // A body this defib cannot read (written by a broken client): the columns still tell the story.
            members += [.init("id", .int(i.localID)), .init("service", .string(i.service)), .init("cause", .string(i.cause)),
                        .init("outcome", .string(i.outcome)), .init("signature", i.signature.map { .string($0) } ?? .null),
                        .init("detected_at", .string(IncidentJSON.rfc3339(i.detectedAt)))]
        }
        return .object(members)
    }

    /// One signature row.
    public static func signature(_ s: FleetSignatureSummary) -> JSONValue {
        .object([
            .init("signature", .string(s.signature)),
            .init("hosts", .int(Int64(s.hosts))),
            .init("host_names", .array(s.hostNames.map { .string($0) })),
            .init("incidents", .int(Int64(s.incidents))),
            .init("first_seen", .string(IncidentJSON.rfc3339(s.firstSeen))),
            .init("last_seen", .string(IncidentJSON.rfc3339(s.lastSeen))),
            .init("diagnosis_kind", s.diagnosisKind.map { .string($0) } ?? .null),
            .init("suspect", s.suspect.map { .string($0) } ?? .null),
            .init("suspect_hosts", .int(Int64(s.suspectHosts))),
        ])
    }

    /// One fleet event.
    public static func event(_ e: FleetEvent) -> JSONValue {
        .object([
            .init("id", .int(e.id)),
            .init("signature", .string(e.signature)),
            .init("raised_at", .string(IncidentJSON.rfc3339(e.raisedAt))),
            .init("raised_by", .string(e.raisedBy)),
            .init("first_seen", .string(IncidentJSON.rfc3339(e.firstSeen))),
            .init("last_seen", .string(IncidentJSON.rfc3339(e.lastSeen))),
            .init("hosts", .int(Int64(e.hosts))),
            .init("threshold", .int(Int64(e.threshold))),
            .init("window_s", .int(Int64(e.windowSeconds))),
            .init("diagnosis_kind", e.diagnosisKind.map { .string($0) } ?? .null),
            .init("suspect", e.suspect.map { .string($0) } ?? .null),
            .init("suspect_hosts", .int(Int64(e.suspectHosts))),
            .init("host_names", .array(e.hostNames.map { .string($0) })),
        ])
    }
}

/// A JSON reader that keeps object members in their order (JSONSerialization does not), so a shipped
/// incident prints exactly as its host printed it.
public enum OrderedJSON {
    /// Malformed input: what was expected and where (byte offset).
    public struct ParseError: Error, Sendable, CustomStringConvertible {
        public var message: String
        public var offset: Int
        public var description: String { "\(message) at byte \(offset)" }
    }

    /// Parses one JSON value (surrounding whitespace allowed, nothing after it).
    public static func parse(_ text: String) throws -> JSONValue {
        var p = Parser(bytes: Array(text.utf8))
        let v = try p.value(depth: 0)
        p.skipSpace()
        guard p.i == p.bytes.count else { throw ParseError(message: "trailing characters", offset: p.i) }
        return v
    }

    private struct Parser {
        let bytes: [UInt8]
        var i = 0
        init(bytes: [UInt8]) { self.bytes = bytes }

        mutating func skipSpace() { while i < bytes.count, [0x20, 0x0a, 0x0d, 0x09].contains(bytes[i]) { i += 1 } }
        func fail(_ m: String) -> ParseError { ParseError(message: m, offset: i) }

        mutating func value(depth: Int) throws -> JSONValue {
            guard depth < 256 else { throw fail("nested too deeply") }
            skipSpace()
            guard i < bytes.count else { throw fail("unexpected end") }
            switch bytes[i] {
            case UInt8(ascii: "{"):
                i += 1
                var members: [JSONMember] = []
                skipSpace()
                if i < bytes.count, bytes[i] == UInt8(ascii: "}") { i += 1; return .object(members) }
                while true {
                    skipSpace()
                    guard i < bytes.count, bytes[i] == UInt8(ascii: "\"") else { throw fail("expected a member name") }
                    let key = try string()
                    skipSpace()
                    guard i < bytes.count, bytes[i] == UInt8(ascii: ":") else { throw fail("expected ':'") }
                    i += 1
                    members.append(JSONMember(key, try value(depth: depth + 1)))
                    skipSpace()
                    guard i < bytes.count else { throw fail("unexpected end in an object") }
                    if bytes[i] == UInt8(ascii: ",") { i += 1; continue }
                    if bytes[i] == UInt8(ascii: "}") { i += 1; return .object(members) }
                    throw fail("expected ',' or '}'")
                }
            case UInt8(ascii: "["):
                i += 1
                var items: [JSONValue] = []
                skipSpace()
                if i < bytes.count, bytes[i] == UInt8(ascii: "]") { i += 1; return .array(items) }
                while true {
                    items.append(try value(depth: depth + 1))
                    skipSpace()
                    guard i < bytes.count else { throw fail("unexpected end in an array") }
                    if bytes[i] == UInt8(ascii: ",") { i += 1; continue }
                    if bytes[i] == UInt8(ascii: "]") { i += 1; return .array(items) }
                    throw fail("expected ',' or ']'")
                }
            case UInt8(ascii: "\""):
                return .string(try string())
            case UInt8(ascii: "t"): try literal("true"); return .bool(true)
            case UInt8(ascii: "f"): try literal("false"); return .bool(false)
            case UInt8(ascii: "n"): try literal("null"); return .null
            default:
                return try number()
            }
        }

        mutating func literal(_ word: String) throws {
            let w = Array(word.utf8)
            guard i + w.count <= bytes.count, Array(bytes[i..<i + w.count]) == w else { throw fail("expected \(word)") }
            i += w.count
        }

        mutating func number() throws -> JSONValue {
            let start = i
            while i < bytes.count, "+-0123456789.eE".utf8.contains(bytes[i]) { i += 1 }
            let text = String(decoding: bytes[start..<i], as: UTF8.self)
            if let n = Int64(text) { return .int(n) }
            if let d = Double(text) { return .double(d) }
            i = start
            throw fail("expected a value")
        }

        mutating func string() throws -> String {
            i += 1   // the opening quote
            var out: [UInt8] = []
            while i < bytes.count {
                let b = bytes[i]
                i += 1
                switch b {
                case UInt8(ascii: "\""):
                    return String(decoding: out, as: UTF8.self)
                case UInt8(ascii: "\\"):
                    guard i < bytes.count else { throw fail("unexpected end in an escape") }
                    let e = bytes[i]
                    i += 1
                    switch e {
                    case UInt8(ascii: "\""): out.append(0x22)
                    case UInt8(ascii: "\\"): out.append(0x5c)
                    case UInt8(ascii: "/"): out.append(0x2f)
                    case UInt8(ascii: "b"): out.append(0x08)
                    case UInt8(ascii: "f"): out.append(0x0c)
                    case UInt8(ascii: "n"): out.append(0x0a)
                    case UInt8(ascii: "r"): out.append(0x0d)
                    case UInt8(ascii: "t"): out.append(0x09)
                    case UInt8(ascii: "u"):
                        var scalar = try hex4()
                        if (0xD800..<0xDC00).contains(scalar), i + 1 < bytes.count, bytes[i] == UInt8(ascii: "\\"), bytes[i + 1] == UInt8(ascii: "u") {
                            i += 2
                            let low = try hex4()
                            if (0xDC00..<0xE000).contains(low) { scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00) }
                        }
                        out += Array(String(Character(Unicode.Scalar(scalar) ?? "\u{FFFD}")).utf8)
                    default: throw fail("bad escape")
                    }
                default:
                    out.append(b)
                }
            }
            throw fail("unterminated string")
        }

        mutating func hex4() throws -> UInt32 {
            guard i + 4 <= bytes.count, let v = UInt32(String(decoding: bytes[i..<i + 4], as: UTF8.self), radix: 16) else {
                throw fail("bad \\u escape")
            }
            i += 4
            return v
        }
    }
}
