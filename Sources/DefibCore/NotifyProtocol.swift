/// The sd_notify(3) protocol as the supervisor hears it from its child: newline-separated `KEY=VALUE`
/// assignments in one datagram. Parsing is pure; the socket lives in `DefibPOSIX.NotifyServer`.
public enum NotifyField: Equatable, Sendable {
    /// `READY=1`: start-up finished.
    case ready
    /// `RELOADING=1`.
    case reloading
    /// `STOPPING=1`: the service is shutting down of its own accord.
    case stopping
    /// `STATUS=…`: a line for people.
    case status(String)
    /// `WATCHDOG=1`: a keep-alive.
    case watchdog
    /// `WATCHDOG=trigger`: the service asks to be treated as hung.
    case watchdogTrigger
    /// `WATCHDOG_USEC=N`: the service changes its watchdog period.
    case watchdogUsec(UInt64)
    /// `EXTEND_TIMEOUT_USEC=N`: start-up (or stop) needs up to N µs more from now.
    case extendTimeoutUsec(UInt64)
    /// `MAINPID=N`.
    case mainPid(Int32)
    /// `ERRNO=N`.
    case errno(Int32)
    /// Anything else (FDSTORE, BUSERROR, custom keys): kept, not acted on.
    case other(key: String, value: String)
}

public enum NotifyProtocol {
    /// The assignments in a datagram, and a sentence per line that is not a valid assignment.
    public static func parse(_ text: String) -> (fields: [NotifyField], problems: [String]) {
        var fields: [NotifyField] = []
        var problems: [String] = []
        for raw in text.split(separator: "\n", omittingEmptySubsequences: true) {
            let line = String(raw)
            guard let eq = line.firstIndex(of: "="), eq != line.startIndex else {
                problems.append("not KEY=VALUE: '\(line.prefix(80))'")
                continue
            }
            let key = String(line[..<eq])
            let value = String(line[line.index(after: eq)...])
            func number<T: FixedWidthInteger>(_ type: T.Type) -> T? {
                guard let n = T(value) else { problems.append("\(key): not a number: '\(value.prefix(40))'"); return nil }
                return n
            }
            switch key {
            case "READY": if value == "1" { fields.append(.ready) }
            case "RELOADING": if value == "1" { fields.append(.reloading) }
            case "STOPPING": if value == "1" { fields.append(.stopping) }
            case "STATUS": fields.append(.status(value))
            case "WATCHDOG":
                if value == "1" { fields.append(.watchdog) } else if value == "trigger" { fields.append(.watchdogTrigger) }
                else { problems.append("WATCHDOG: expected 1 or trigger, got '\(value.prefix(40))'") }
            case "WATCHDOG_USEC":
                if let n = number(UInt64.self) {
                    if n == 0 { problems.append("WATCHDOG_USEC: must be positive") } else { fields.append(.watchdogUsec(n)) }
                }
            case "EXTEND_TIMEOUT_USEC": if let n = number(UInt64.self) { fields.append(.extendTimeoutUsec(n)) }
            case "MAINPID": if let n = number(Int32.self) { fields.append(.mainPid(n)) }
            case "ERRNO": if let n = number(Int32.self) { fields.append(.errno(n)) }
            default: fields.append(.other(key: key, value: value))
            }
        }
        return (fields, problems)
    }
}
