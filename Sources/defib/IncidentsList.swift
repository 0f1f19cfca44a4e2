import ArgumentParser
import DefibCore
import DefibStore
import Foundation

/// `defib incidents [list]`: one line per incident, newest first.
struct IncidentsListCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "list",
        abstract: "List incidents, newest first (the default verb).")

    @OptionGroup var location: StoreLocationOptions

    @Flag(name: .long, help: "Print a JSON array (the fields of `info --json`, without stacks).")
    var json = false

    @Option(name: .long, help: "Only this service's incidents.", completion: .custom(StateCompletion.incidentServices))
    var service: String?

    @Option(name: .long, help: "Only incidents detected at or after DATE (2026-11-23, '2026-11-23 10:00', RFC 3339, -2h, today).")
    var since: String?

    @Option(name: .long, help: "Only incidents detected at or before DATE.")
    var until: String?

    @Option(name: [.customShort("n"), .long], help: "At most N incidents (the newest).")
    var limit: Int?

    func validate() throws {
        if let limit, limit <= 0 { throw ValidationError("--limit must be a positive number, got \(limit)") }
        if let since { _ = try parseDateArgument(since, option: "--since") }
        if let until { _ = try parseDateArgument(until, option: "--until") }
    }

    func run() throws {
        let store = try location.openStoreIfPresent()
        let now = Date()
        var incidents: [Incident] = []
        do {
            incidents = try store?.list(service: service, since: try since.map { try parseDateArgument($0, option: "--since", now: now) },
                                       until: try until.map { try parseDateArgument($0, option: "--until", now: now) }, limit: limit) ?? []
        } catch let error as StoreError {
            throw CLIError("\(error)")
        }
        if json {
            print(IncidentJSON.array(incidents))
            return
        }
        if incidents.isEmpty {
            print("No incidents.")
            return
        }
        print(Self.table(incidents))
    }

    /// The human table: ID, DETECTED (UTC), SERVICE, PID, CAUSE, OUTCOME, RESTORE, CORE, DIAGNOSIS.
    static func table(_ incidents: [Incident]) -> String {
        var rows = [["ID", "DETECTED (UTC)", "SERVICE", "PID", "CAUSE", "OUTCOME", "RESTORE", "CORE", "DIAGNOSIS"]]
        for i in incidents {
            let restore = IncidentJSON.restoreMilliseconds(i).map { Format.duration(ms: Double($0)) } ?? "-"
            var core = "-"
            if let capture = i.capture, capture.path != nil {
                core = Format.bytes(capture.bytes) + (Format.coreExists(i) ? "" : " (gone)")
            } else if i.capture?.error != nil {
                core = "failed"
            }
            let diagnosis = i.diagnosis.isEmpty ? "-" : Format.truncated(i.diagnosis, 60)
            rows.append([i.id.map(String.init) ?? "?", Format.time(i.detectedAt, milliseconds: false), i.service, String(i.pid),
                         i.cause.kind, i.outcome.rawValue, restore, core, diagnosis])
        }
        return Format.table(rows)
    }
}
