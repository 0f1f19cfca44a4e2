import ArgumentParser
import DefibCore
import DefibStore
import Foundation

/// `defib incidents [list] [MATCHES…]`: one line per incident, newest first.
struct IncidentsListCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "list",
        abstract: "List incidents, newest first (the default verb).",
        discussion: """
            Columns: ID, DETECTED (local time, or --utc), PID, UID, GID, SIG (the signal that ended the process), COREFILE (present, missing, inaccessible, none, failed, truncated), CORE (its size), EXE, SERVICE, CAUSE, OUTCOME, RESTORE (detection to the new instance's first answer), DIAGNOSIS (its kind). Newest first, so the newest is at the top of the pager; -r lists oldest first as coredumpctl does.

            Examples:
              defib incidents list --state-dir D COMM=defib-proxy --since -2h
              defib incidents list --state-dir D DIAGNOSIS=corrupted-lock-word -F PID
              defib incidents list --state-dir D 4123 --json=short
            """)

    @OptionGroup var location: StoreLocationOptions
    @OptionGroup var output: OutputOptions
    @OptionGroup var range: RangeOptions

    @Option(name: [.customShort("F"), .long],
            help: "Print only this field of each incident, one value a line: PID, COMM, EXE, UID, GID, SIGNAL, SERVICE, CAUSE, SIGNATURE, DIAGNOSIS, OUTCOME, ID, COREDUMP_* names, or any key of the JSON.")
    var field: String?

    @Argument(help: "MATCHES: an id or pid, a path (EXE), `last`, a process name (COMM), or FIELD=VALUE.")
    var matches: [String] = []

    func validate() throws {
        if let field, FieldPrinter(field) == nil {
            throw ValidationError("unknown field '\(field)' for -F: expected \(FieldPrinter.names.joined(separator: ", ")) or a key of the JSON")
        }
    }

    func run() throws {
        let store = try location.openStoreIfPresent()
        let selection = try range.query(matches, in: store)
        let incidents = try store.map { s in try storeCall { try s.incidents(matching: selection.query) } } ?? []
        let pager = output.noPager ? nil : Pager.start()
        defer { pager?.finish() }

        if let field, let printer = FieldPrinter(field) {
            // As coredumpctl -F: the values, nothing else (and no error when there are none).
            for incident in incidents { for value in printer.values(incident) { print(value) } }
            return
        }
        if incidents.isEmpty && !matches.isEmpty { try exitNoIncidents() }
        if let mode = output.jsonMode {
            if range.newestOnly {
                guard let one = incidents.first else { try exitNoIncidents() }
                print(IncidentJSON.string(one, pretty: mode == .pretty))
            } else {
                print(IncidentJSON.array(incidents, pretty: mode == .pretty))
            }
            return
        }
        if incidents.isEmpty {
            print("No incidents.")
            return
        }
        print(Self.table(incidents, zone: output.timeZone, legend: !output.noLegend))
    }

    /// The table: coredumpctl's columns (time, PID, UID, GID, SIG, COREFILE, EXE) and defib's (ID, CORE size,
    /// SERVICE, CAUSE, OUTCOME, RESTORE, DIAGNOSIS kind).
    static func table(_ incidents: [Incident], zone: TimeZone, legend: Bool = true) -> String {
        var rows: [[String]] = []
        if legend {
            rows.append(["ID", "DETECTED (\(Format.zoneName(zone)))", "PID", "UID", "GID", "SIG", "COREFILE", "CORE", "EXE",
                         "SERVICE", "CAUSE", "OUTCOME", "RESTORE", "DIAGNOSIS"])
        }
        for i in incidents {
            let restore = IncidentJSON.restoreMilliseconds(i).map { Format.duration(ms: Double($0)) } ?? "-"
            var core = "-"
            if let capture = i.capture, capture.path != nil {
                core = Format.bytes(capture.bytes) + (Format.coreExists(i) ? "" : " (gone)")
            } else if i.capture?.error != nil {
                core = "failed"
            }
            let signal = i.endingSignal.map { signalName($0).replacingOccurrences(of: "SIG", with: "") } ?? "-"
            rows.append([i.id.map(String.init) ?? "?", Format.time(i.detectedAt, milliseconds: false, zone: zone), String(i.pid),
                         i.process.map { String($0.uid) } ?? "-", i.process.map { String($0.gid) } ?? "-", signal,
                         Format.coreState(i), core, i.binaryPath ?? i.process?.comm ?? "-", i.service, i.cause.kind,
                         i.outcome.rawValue, restore, i.diagnosisKind ?? "-"])
        }
        return Format.table(rows, right: [2, 3, 4])
    }
}

/// `-F FIELD`: one field's values per incident, as coredumpctl prints a journal field's.
struct FieldPrinter {
    /// The upper-case names (journal-style); any key of the JSON object works too.
    static let names = ["ID", "PID", "COMM", "EXE", "UID", "GID", "SIGNAL", "SERVICE", "CAUSE", "SIGNATURE", "DIAGNOSIS", "OUTCOME",
                        "COREDUMP_FILENAME", "COREDUMP_TIMESTAMP"]
    let key: String

    init?(_ name: String) {
        let aliases: [String: String] = [
            "ID": "id", "INCIDENT_ID": "id", "PID": "pid", "COREDUMP_PID": "pid", "COMM": "comm", "COREDUMP_COMM": "comm",
            "EXE": "binary", "COREDUMP_EXE": "binary", "UID": "uid", "COREDUMP_UID": "uid", "GID": "gid", "COREDUMP_GID": "gid",
            "SIGNAL": "signal", "COREDUMP_SIGNAL": "signal", "SERVICE": "service", "CAUSE": "cause", "SIGNATURE": "signature",
            "DIAGNOSIS": "diagnosis_kind", "OUTCOME": "outcome", "COREDUMP_FILENAME": "core_path", "CORE_PATH": "core_path",
            "COREDUMP_TIMESTAMP": "detected_at", "COREDUMP_UNIT": "unit", "COREDUMP_CMDLINE": "argv",
        ]
        if let key = aliases[name] { self.key = key; return }
        // A key of the JSON object (as `--json` prints it).
        let probe = IncidentJSON.object(Incident(service: "", pid: 0, detectedAt: Date(), cause: .exited(code: 0)), includeStacks: true)
        guard probe[name] != nil else { return nil }
        key = name
    }

    /// The values for one incident: none when the field is null, one per element of an array.
    func values(_ incident: Incident) -> [String] {
        guard let value = IncidentJSON.object(incident, includeStacks: key == "stacks")[key] else { return [] }
        switch value {
        case .null: return []
        case let .string(s): return [s]
        case let .array(items): return items.compactMap { item in
            if case let .string(s) = item { return s }
            if case .null = item { return nil }
            return item.rendered(pretty: false)
        }
        default: return [value.rendered(pretty: false)]
        }
    }
}
