import ArgumentParser
import DefibCore
import DefibStore
import Foundation

/// `defib incidents signatures`: one line per signature — how many times the same hang happened, since
/// when, in which services — so "has this hang happened before?" is one command.
struct IncidentsSignaturesCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "signatures",
        abstract: "One line per incident signature: count, first and last seen, diagnosis kind, services, newest incident.",
        discussion: """
            A signature groups repeats of the same hang (the cause, the diagnosis kind, the locks involved and the blocked threads' top frames); a stall (a hang that came back by itself) is signed like a hang, and STALLS says how many of COUNT were stalls. The most recently seen first; incidents not signed yet (still open) are left out. JSON objects carry signature, count, stalls (how many of count were stalls), first_seen, last_seen (RFC 3339 UTC), diagnosis_kind, services and last_incident.

            Examples:
              defib incidents signatures --state-dir D --since -7d
              defib incidents signatures --state-dir D SERVICE=proxy --json
              defib incidents list --state-dir D SIGNATURE=0f3c…   # the incidents behind one line
            """)

    @OptionGroup var location: StoreLocationOptions
    @OptionGroup var output: OutputOptions

    @Option(name: [.customShort("S"), .long], parsing: .unconditional,
            help: "Only incidents detected at or after DATE (2026-11-23, '2026-11-23 10:00', RFC 3339, -2h, today).")
    var since: String?

    @Option(name: [.customShort("U"), .long], parsing: .unconditional, help: "Only incidents detected at or before DATE.")
    var until: String?

    @Option(name: .long, help: "Count only incidents of this kind: hang, stall or exit (same as KIND=KIND).")
    var kind: String?

    @Argument(help: "MATCHES restricting the incidents counted (SERVICE=proxy, COMM=…, DIAGNOSIS=…, KIND=stall).")
    var matches: [String] = []

    func validate() throws {
        if let since { _ = try parseDateArgument(since, option: "--since") }
        if let until { _ = try parseDateArgument(until, option: "--until") }
        if let kind, IncidentKind(rawValue: kind) == nil {
            throw ValidationError("unknown --kind '\(kind)': expected one of \(IncidentKind.allCases.map(\.rawValue).joined(separator: ", "))")
        }
    }

    func run() throws {
        let store = try location.openStoreIfPresent()
        var selection = try Selection.resolve(matches, in: store)
        selection.query.since = try since.map { try parseDateArgument($0, option: "--since") }
        selection.query.until = try until.map { try parseDateArgument($0, option: "--until") }
        if let kind { selection.query.add(.kind, kind) }
        let summaries = try store.map { s in try storeCall { try s.signatures(matching: selection.query) } } ?? []
        if summaries.isEmpty && !matches.isEmpty { try exitNoIncidents() }
        let pager = output.noPager ? nil : Pager.start()
        defer { pager?.finish() }
        if let mode = output.jsonMode {
            print(JSONValue.array(summaries.map(Self.object)).rendered(pretty: mode == .pretty))
            return
        }
        if summaries.isEmpty {
            print("No signatures.")
            return
        }
        let zone = output.timeZone
        var rows: [[String]] = []
        if !output.noLegend {
            rows.append(["SIGNATURE", "COUNT", "STALLS", "FIRST SEEN (\(Format.zoneName(zone)))", "LAST SEEN", "DIAGNOSIS", "SERVICES", "LAST"])
        }
        for s in summaries {
            rows.append([s.signature, String(s.count), String(s.stalls), Format.time(s.firstSeen, milliseconds: false, zone: zone),
                         Format.time(s.lastSeen, milliseconds: false, zone: zone), s.diagnosisKind ?? "-",
                         s.services.joined(separator: ","), String(s.lastIncident)])
        }
        print(Format.table(rows, right: [1, 2, 7]))
    }

    /// The JSON contract of one line.
    static func object(_ s: SignatureSummary) -> JSONValue {
        .object([
            .init("signature", .string(s.signature)),
            .init("count", .int(Int64(s.count))),
            .init("stalls", .int(Int64(s.stalls))),
            .init("first_seen", .string(IncidentJSON.rfc3339(s.firstSeen))),
            .init("last_seen", .string(IncidentJSON.rfc3339(s.lastSeen))),
            .init("diagnosis_kind", s.diagnosisKind.map { .string($0) } ?? .null),
            .init("services", .array(s.services.map { .string($0) })),
            .init("last_incident", .int(s.lastIncident)),
        ])
    }
}
