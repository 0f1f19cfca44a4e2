import DefibPOSIX
import Logging

/// swift-log to the systemd journal with structured fields, the way systemd-coredump writes its entries:
/// MESSAGE, PRIORITY, SYSLOG_IDENTIFIER, CODE_FILE/CODE_LINE/CODE_FUNC, and every metadata key in the
/// journal's upper-case form (`incident_id` → `INCIDENT_ID`, `message_id` → `MESSAGE_ID`), so
/// `journalctl MESSAGE_ID=… SERVICE=proxy` finds incidents.
public struct JournaldLogHandler: LogHandler {
    public var logLevel: Logger.Level = .info
    public var metadata: Logger.Metadata = [:]
    public var metadataProvider: Logger.MetadataProvider?
    let identifier: String

    public init(identifier: String) { self.identifier = identifier }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var fields: [(String, String)] = [
            ("MESSAGE", event.message.description),
            ("PRIORITY", String(Self.priority(event.level))),
            ("SYSLOG_IDENTIFIER", identifier),
            ("CODE_FILE", event.file), ("CODE_LINE", String(event.line)), ("CODE_FUNC", event.function),
        ]
        var all = metadata
        if let provided = metadataProvider?.get() { all.merge(provided) { _, new in new } }
        if let extra = event.metadata { all.merge(extra) { _, new in new } }
        for (key, value) in all.sorted(by: { $0.key < $1.key }) {
            if let name = Self.fieldName(key) { fields.append((name, "\(value)")) }
        }
        if !Journald.send(fields) {
            // The journal went away: never lose the line.
            Journald.writeStandardError("\(identifier): \(event.level): \(event.message)\n")
        }
    }

    /// syslog priorities, as the journal expects them.
    static func priority(_ level: Logger.Level) -> Int {
        switch level {
        case .trace, .debug: 7
        case .info: 6
        case .notice: 5
        case .warning: 4
        case .error: 3
        case .critical: 2
        }
    }

    /// `incident_id` → `INCIDENT_ID`; nil for names the journal would reject (it allows A–Z, 0–9 and `_`,
    /// not starting with `_` or a digit).
    static func fieldName(_ key: String) -> String? {
        let upper = key.uppercased().map { $0 == "-" || $0 == "." ? "_" : $0 }
        guard let first = upper.first, first.isLetter,
              upper.allSatisfy({ ($0.isASCII && ($0.isUppercase || $0.isNumber)) || $0 == "_" }) else { return nil }
        return String(upper)
    }
}

/// Picks the log destination once, at start: the journal when systemd connected our stderr to it,
/// plain text on stderr otherwise.
public enum DefibLogging {
    public static func bootstrap(level: Logger.Level) {
        let journal = Journald.stderrIsJournal
        LoggingSystem.bootstrap { label in
            var handler: LogHandler = journal ? JournaldLogHandler(identifier: "defib") : StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
    }
}
