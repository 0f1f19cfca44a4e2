import Foundation

/// A JSON value whose objects keep their keys in the order they were built, so the output of
/// `defib incidents --json` reads the same every time (JSONSerialization sorts or shuffles keys).
public indirect enum JSONValue: Sendable, Equatable {
    /// `null`.
    case null
    /// `true` / `false`.
    case bool(Bool)
    /// An integer, written without a fraction.
    case int(Int64)
    /// A float, written with Swift's shortest round-tripping form (NaN and infinities become `null`).
    case double(Double)
    /// A string, escaped as JSON requires.
    case string(String)
    /// An array.
    case array([JSONValue])
    /// An object; members in output order.
    case object([JSONMember])

    /// The text: `pretty` = two-space indentation and one member per line; otherwise no whitespace at all.
    public func rendered(pretty: Bool = true) -> String {
        var out = ""
        write(into: &out, pretty: pretty, indent: 0)
        return out
    }

    private func write(into out: inout String, pretty: Bool, indent: Int) {
        switch self {
        case .null: out += "null"
        case let .bool(b): out += b ? "true" : "false"
        case let .int(i): out += String(i)
        case let .double(d):
            // JSON has no NaN or infinity; an integral value keeps its ".0" so readers see a float.
            out += d.isFinite ? "\(d)" : "null"
        case let .string(s): JSONValue.writeString(s, into: &out)
        case let .array(items):
            Self.writeList(items, open: "[", close: "]", into: &out, pretty: pretty, indent: indent) { item, out in
                item.write(into: &out, pretty: pretty, indent: indent + 1)
            }
        case let .object(members):
            Self.writeList(members, open: "{", close: "}", into: &out, pretty: pretty, indent: indent) { member, out in
                JSONValue.writeString(member.key, into: &out)
                out += pretty ? ": " : ":"
                member.value.write(into: &out, pretty: pretty, indent: indent + 1)
            }
        }
    }

    /// `open` elements `close`, comma-separated, one per line when `pretty`.
    private static func writeList<T>(_ elements: [T], open: String, close: String, into out: inout String, pretty: Bool, indent: Int,
                                     _ element: (T, inout String) -> Void) {
        if elements.isEmpty { out += open + close; return }
        out += open
        for (n, e) in elements.enumerated() {
            if n > 0 { out += "," }
            if pretty { out += "\n" + String(repeating: "  ", count: indent + 1) }
            element(e, &out)
        }
        if pretty { out += "\n" + String(repeating: "  ", count: indent) }
        out += close
    }

    /// A quoted string with JSON's escapes, which TOML's basic strings share (control characters, DEL
    /// included, as \\uXXXX): the config writer uses it too. Every character to escape is ASCII, so the text
    /// between two of them is copied whole, as a slice of the UTF-8 (on scalar boundaries, not always on
    /// character boundaries: a quote followed by a combining mark is one character). Appending scalar by
    /// scalar was most of the fleet shipper's CPU.
    static func writeString(_ s: String, into out: inout String) {
        out += "\""
        let utf8 = s.utf8
        var run = utf8.startIndex
        var i = run
        while i != utf8.endIndex {
            let byte = utf8[i]
            guard byte < 0x20 || byte == 0x22 || byte == 0x5C || byte == 0x7F else {
                i = utf8.index(after: i)
                continue
            }
            out += Substring(utf8[run..<i])
            switch byte {
            case 0x22: out += "\\\""
            case 0x5C: out += "\\\\"
            case 0x0A: out += "\\n"
            case 0x0D: out += "\\r"
            case 0x09: out += "\\t"
            default:
                let hex = String(byte, radix: 16)
                out += (hex.count == 1 ? "\\u000" : "\\u00") + hex
            }
            i = utf8.index(after: i)
            run = i
        }
        out += Substring(utf8[run..<i])
        out += "\""
    }

    /// The value of `key` when this is an object.
    public subscript(key: String) -> JSONValue? {
        guard case let .object(members) = self else { return nil }
        return members.first { $0.key == key }?.value
    }
}

/// One `"key": value` pair of a JSON object.
public struct JSONMember: Sendable, Equatable {
    /// The member name.
    public var key: String
    /// The member value.
    public var value: JSONValue
    /// Makes a member.
    public init(_ key: String, _ value: JSONValue) { self.key = key; self.value = value }
}

/// The incident as `defib incidents --json` shows it: the contract scripts and tests read.
///
/// Keys, in order: `id`, `service`, `pid`, `binary`, `cause` (the kind: missed-heartbeat, exited, signaled,
/// start-timeout, spawn-failed), `cause_detail` (one sentence), `outcome`, `diagnosis` (may be empty),
/// `signature` (groups repeats; null until known), `started_at`, `detected_at`, `killed_at`, `restarted_at`,
/// `ready_at` (RFC 3339 UTC with milliseconds, or null), `restore_ms` (detection to ready, null while not
/// recovered), `new_pid`, `capture_method` ("none" when no capture was made, or not yet), `core_path` (null
/// when no core was written), `core_bytes` (0 without a core), `capture_ms` (0 when no capture was made),
/// `capture_error`, `lock_words`
/// (the valid words of `lock_state` as 16-digit lower-case hex), `lock_state` (objects: `name`, `address`, `word`,
/// `source`, `holder`, `last_holder`, `readers_waiting`, `writers_waiting`, `holder_tid`, `revert`, `events`,
/// `holder_waiting_for_readers`, `read_holders` [{`tid`, `depth`, `since`, `exited`}], `more_read_holders`;
/// null where the source did not say), `threads` (count in the core, or
/// in /proc), `diagnosis_evidence`, `silence_ms`, `extended_ms`, `progress` ({kind, reason} from /proc),
/// `thread_states`, `flight_recorder`, `notes`, then who the process was and how it ended (`uid`, `gid`, `comm`,
/// `argv`, `unit`, `signal`, `signal_name`, `diagnosis_kind`; see `processMembers`), the runtime evidence
/// (`wait_for`, `runtime`, `runtime_tool`, `runtime_error`, `runtime_stacks`: see `runtimeMembers`), and with
/// `processes` of a multi-process instance (see `processListMembers`), and with `includeStacks` the `stacks`
/// text (or null).
public enum IncidentJSON {
    /// The incident as an ordered JSON object.
    public static func object(_ incident: Incident, includeStacks: Bool = false) -> JSONValue {
        var members: [JSONMember] = [
            .init("id", incident.id.map { .int($0) } ?? .null),
            .init("service", .string(incident.service)),
            .init("pid", .int(Int64(incident.pid))),
            .init("binary", string(incident.binaryPath)),
            .init("cause", .string(incident.cause.kind)),
            .init("cause_detail", .string(incident.cause.summary)),
            .init("outcome", .string(incident.outcome.rawValue)),
            .init("diagnosis", .string(incident.diagnosis)),
            .init("signature", string(incident.signature)),
            .init("started_at", timestamp(incident.startedAt)),
            .init("detected_at", timestamp(incident.detectedAt)),
            .init("killed_at", timestamp(incident.killedAt)),
            .init("restarted_at", timestamp(incident.restartedAt)),
            .init("ready_at", timestamp(incident.readyAt)),
            .init("restore_ms", restoreMilliseconds(incident).map { .int($0) } ?? .null),
            .init("new_pid", incident.newPid.map { .int(Int64($0)) } ?? .null),
            .init("capture_method", .string(incident.capture?.method ?? "none")),
            .init("core_path", string(incident.capture?.path)),
            .init("core_bytes", .int(incident.capture?.path == nil ? 0 : incident.capture?.bytes ?? 0)),
            .init("capture_ms", .double(((incident.capture?.durationMs ?? 0) * 1000).rounded() / 1000)),
            .init("capture_error", string(incident.capture?.error)),
            .init("lock_words", .array(lockWords(incident).map { .string($0) })),
            .init("lock_state", .array(incident.lockState.map(lockObject))),
            .init("threads", incident.threads.map { .int(Int64($0)) } ?? .null),
            .init("diagnosis_evidence", .array((incident.diagnosisEvidence ?? []).map { .string($0) })),
            .init("silence_ms", incident.silenceMs.map { .double($0.rounded()) } ?? .null),
            .init("extended_ms", incident.extendedMs.map { .int(Int64($0)) } ?? .null),
            .init("progress", incident.progress.map { .object([.init("kind", .string($0.kind)), .init("reason", .string($0.reason))]) } ?? .null),
            .init("thread_states", string(incident.threadStates)),
            .init("flight_recorder", string(incident.flightRecorder)),
            .init("notes", .array(incident.notes.map { .string($0) })),
        ]
        members += processMembers(incident)
        members += runtimeMembers(incident)
        members += processListMembers(incident)
        members += declarationMembers(incident)
        members += stallMembers(incident, includeStacks: includeStacks)
        if includeStacks { members.append(.init("stacks", string(incident.stacks))) }
        return .object(members)
    }

    /// One incident as JSON text.
    public static func string(_ incident: Incident, includeStacks: Bool = false, pretty: Bool = true) -> String {
        object(incident, includeStacks: includeStacks).rendered(pretty: pretty)
    }

    /// A list of incidents as a JSON array (without stacks), in the order given.
    public static func array(_ incidents: [Incident], pretty: Bool = true) -> String {
        JSONValue.array(incidents.map { object($0) }).rendered(pretty: pretty)
    }

    /// Milliseconds from detection to the replacement's first pong; nil until then.
    public static func restoreMilliseconds(_ incident: Incident) -> Int64? {
        incident.readyAt.map { Int64(($0.timeIntervalSince(incident.detectedAt) * 1000).rounded()) }
    }

    /// The lock words that are real 64-bit values, normalised to "0x" + 16 lower-case hex digits
    /// ("unknown" and other placeholders are left out).
    public static func lockWords(_ incident: Incident) -> [String] {
        incident.lockState.compactMap { normalizedWord($0.word) }
    }

    /// "0x" + 16 lower-case hex digits, or nil when `word` is not a 64-bit hex number.
    public static func normalizedWord(_ word: String) -> String? {
        let digits = word.lowercased().hasPrefix("0x") ? String(word.dropFirst(2)) : word
        guard !digits.isEmpty, digits.count <= 16, let value = UInt64(digits, radix: 16) else { return nil }
        let hex = String(value, radix: 16)
        return "0x" + String(repeating: "0", count: 16 - hex.count) + hex
    }

    private static func lockObject(_ lock: LockState) -> JSONValue {
        .object([
            .init("name", .string(lock.name)),
            .init("address", .string(lock.address)),
            .init("word", .string(normalizedWord(lock.word) ?? lock.word)),
            .init("source", .string(lock.source)),
            .init("holder", string(lock.holder)),
            .init("last_holder", string(lock.lastHolder)),
            .init("readers_waiting", lock.readersWaiting.map { .int(Int64($0)) } ?? .null),
            .init("writers_waiting", lock.writersWaiting.map { .int(Int64($0)) } ?? .null),
            .init("holder_tid", lock.holderTid.map { .int(Int64($0)) } ?? .null),
            .init("revert", string(lock.revert)),
            .init("events", .array((lock.events ?? []).map { e in
                .object([.init("kind", .string(e.kind)), .init("tid", .int(Int64(e.tid))), .init("at", .string(rfc3339(Date(timeIntervalSince1970: Double(e.unixMs) / 1000)))),
                         .init("word_after", .string(normalizedWord(e.wordAfter) ?? e.wordAfter)), .init("label", .string(e.label))])
            })),
            .init("holder_waiting_for_readers", lock.holderWaitingForReaders.map { .bool($0) } ?? .null),
            .init("read_holders", lock.readHolders.map { holders in
                .array(holders.map { h in
                    .object([.init("tid", .int(Int64(h.tid))), .init("depth", .int(Int64(h.depth))),
                             .init("since", .string(rfc3339(Date(timeIntervalSince1970: Double(h.sinceUnixMs) / 1000)))),
                             .init("exited", .bool(h.threadExited))])
                })
            } ?? .null),
            .init("more_read_holders", lock.moreReadHolders.map { .int(Int64($0)) } ?? .null),
        ])
    }

    private static func string(_ s: String?) -> JSONValue { s.map { .string($0) } ?? .null }
    private static func timestamp(_ d: Date?) -> JSONValue { d.map { .string(rfc3339($0)) } ?? .null }

    /// `RFC3339.string` (the one formatter), by the name the CLI's callers know.
    public static func rfc3339(_ date: Date) -> String { RFC3339.string(date) }
}
