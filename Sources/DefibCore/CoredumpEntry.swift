import Foundation

/// The journal entry that announces a core defib wrote, in systemd-coredump's own form, so `coredumpctl
/// list`, `info`, `dump` and `gdb` show defib's cores beside the kernel's.
///
/// What coredumpctl needs, read from its source (systemd 252, src/coredump/coredumpctl.c): entries are found
/// by `MESSAGE_ID=fc2e22bc6ee647b6b90729ab34a250b1`; `list` skips an entry without COREDUMP_PID, _UID, _GID,
/// _SIGNAL or _COMM; `debug` needs an absolute COREDUMP_EXE and reads the core at COREDUMP_FILENAME (any
/// path: it is not limited to /var/lib/systemd/coredump), decompressing `.zst`, `.xz` and `.lz4` itself —
/// not `.gz`, so a gzip core is announced without COREDUMP_FILENAME and the message says where it is.
/// The rest are the fields systemd-coredump writes (src/coredump/coredump.c) that defib knows: the signal's
/// name, the time, the command line, host, unit, slice and cgroup, `COREDUMP_TRUNCATED=1` for a core cut
/// at the budget. defib's own fields ride along: INCIDENT_ID, SERVICE, CAUSE, DIAGNOSIS, SIGNATURE, CORE_PATH.
public enum CoredumpEntry {
    /// systemd's SD_MESSAGE_COREDUMP.
    public static let messageID = "fc2e22bc6ee647b6b90729ab34a250b1"
    /// Core file suffixes coredumpctl decompresses (plain cores need none).
    public static let readableCompressions = [".zst", ".xz", ".lz4"]
    /// Stack lines kept in MESSAGE (systemd-coredump puts its whole stack trace there; gdb's can be long).
    static let stackLinesKept = 200

    /// Why an incident is not announced.
    public enum Skip: Error, Sendable, Equatable, CustomStringConvertible {
        /// No core on disk (none written, capture failed, or removed).
        case noCore
        /// The process's uid, gid or name could not be read (neither when it started nor before its core);
        /// coredumpctl ignores entries without them.
        case unknownProcess
        /// The process has not been ended yet (no signal to report).
        case notEnded

        public var description: String {
            switch self {
            case .noCore: "it has no core"
            case .unknownProcess: "the process's uid, gid and name could not be read (coredumpctl needs them)"
            case .notEnded: "the process was not ended by a signal yet"
            }
        }
    }

    /// The fields, in the order they are sent. `hostname` is COREDUMP_HOSTNAME; `stateDirectory` goes into
    /// the message's pointer to `defib incidents info`.
    public static func fields(for incident: Incident, hostname: String?, stateDirectory: String) -> Result<[(String, String)], Skip> {
        guard let core = incident.capture?.path else { return .failure(.noCore) }
        guard let process = incident.process else { return .failure(.unknownProcess) }
        guard let signal = incident.endingSignal else { return .failure(.notEnded) }
        let id = incident.id.map(String.init) ?? "?"
        let readable = !core.hasSuffix(".gz")
        var fields: [(String, String)] = [
            ("MESSAGE_ID", messageID),
            ("PRIORITY", "2"),   // LOG_CRIT, as systemd-coredump
            ("SYSLOG_IDENTIFIER", "defib"),
            ("MESSAGE", message(incident, process: process, signal: signal, core: core, readable: readable, stateDirectory: stateDirectory)),
            ("COREDUMP_PID", String(incident.pid)),
            ("COREDUMP_UID", String(process.uid)),
            ("COREDUMP_GID", String(process.gid)),
            ("COREDUMP_SIGNAL", String(signal)),
            ("COREDUMP_SIGNAL_NAME", signalName(signal)),
            ("COREDUMP_TIMESTAMP", String(Int64((incident.detectedAt.timeIntervalSince1970 * 1_000_000).rounded()))),
            ("COREDUMP_COMM", process.comm),
        ]
        if let exe = incident.binaryPath { fields.append(("COREDUMP_EXE", exe)) }
        if !process.argv.isEmpty { fields.append(("COREDUMP_CMDLINE", process.commandLine)) }
        if let hostname, !hostname.isEmpty { fields.append(("COREDUMP_HOSTNAME", hostname)) }
        if let unit = process.unit { fields.append(("COREDUMP_UNIT", unit)) }
        if let slice = process.slice { fields.append(("COREDUMP_SLICE", slice)) }
        if let cgroup = process.cgroup { fields.append(("COREDUMP_CGROUP", cgroup)) }
        if readable { fields.append(("COREDUMP_FILENAME", core)) }
        if incident.notes.contains(where: { $0.hasPrefix("core truncated") }) { fields.append(("COREDUMP_TRUNCATED", "1")) }
        fields += [("INCIDENT_ID", id), ("SERVICE", incident.service), ("CAUSE", incident.cause.kind)]
        if !incident.diagnosis.isEmpty { fields.append(("DIAGNOSIS", incident.diagnosis)) }
        if let signature = incident.signature { fields.append(("SIGNATURE", signature)) }
        fields.append(("CORE_PATH", core))
        return .success(fields)
    }

    /// The MESSAGE: systemd-coredump's first line, then defib's diagnosis, cause and signature, where the
    /// incident is, and the stacks (as systemd-coredump appends its stack trace).
    static func message(_ i: Incident, process: IncidentProcess, signal: Int32, core: String, readable: Bool, stateDirectory: String) -> String {
        let id = i.id.map(String.init) ?? "?"
        var lines = ["Process \(i.pid) (\(process.comm)) of user \(process.uid) dumped core: defib captured it (\(i.cause.kind)) "
            + "and ended it with \(signalName(signal)); incident \(id) of service \(i.service), \(i.outcome.rawValue).", ""]
        lines.append(i.diagnosis.isEmpty ? "Diagnosis: none (the evidence matched no known pattern)" : "Diagnosis: \(i.diagnosis)")
        lines.append("Cause: \(i.cause.summary)")
        if let signature = i.signature { lines.append("Signature: \(signature)") }
        if !readable {
            lines.append("Core: \(core) (gzip: coredumpctl cannot read it; `defib incidents gdb \(id) --state-dir \(stateDirectory)` can)")
        }
        lines.append("Details: defib incidents info \(id) --state-dir \(stateDirectory)")
        if let stacks = i.stacks, !stacks.isEmpty {
            var stackLines = stacks.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
            if stackLines.last == "" { stackLines.removeLast() }
            lines += ["", "Stack trace (gdb, all threads):"] + stackLines.prefix(stackLinesKept)
            if stackLines.count > stackLinesKept {
                lines.append("… \(stackLines.count - stackLinesKept) more lines: defib incidents info \(id)")
            }
        }
        return lines.joined(separator: "\n")
    }
}
