import ArgumentParser
import DefibCore
import DefibFleet
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// `defib fleet watch`: a live view for an incident in progress — signatures by hosts affected in the last
/// minutes, the fleet events, the newest incidents — redrawn in place every few seconds (plain text and
/// ANSI clear-screen only, so it works in tmux, screen and over ssh). A database that goes away is shown in
/// the header and retried; the view keeps running.
struct FleetWatchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "watch",
        abstract: "A live view: signatures by hosts affected in the last minutes, fleet events, newest incidents (Ctrl-C quits).")

    @OptionGroup var database: FleetDatabaseOptions

    @Option(name: .long, help: "The period shown: incidents detected in the last T (default 15m).")
    var since = "15m"

    @Option(name: .long, help: "Seconds between refreshes.")
    var interval: Double = 2

    @Flag(name: .long, help: "Draw once and exit (for scripts and tests).")
    var once = false

    func validate() throws {
        _ = try parseFleetSince(since)
        if !(interval >= 0.2 && interval <= 3600) { throw ValidationError("--interval must be between 0.2 and 3600 seconds") }
    }

    func run() throws {
        let endpoint = try database.endpoint()
        let tty = isatty(STDOUT_FILENO) == 1
        let period = since
        let interval = self.interval
        let once = self.once
        try runBlocking {
            var connection: FleetConnection?
            while true {
                let now = Date()
                var snapshot = FleetWatchScreen.Snapshot(now: now, period: period, url: endpoint.url.description)
                do {
                    if connection == nil || connection!.isClosed {
                        connection = try await FleetConnection.open(endpoint, logger: fleetQuietLogger)
                    }
                    let since = try parseFleetSince(period, now: now)
                    snapshot.signatures = try await FleetQueries.signatures(on: connection!, since: since)
                    snapshot.events = try await FleetQueries.events(on: connection!, since: now.addingTimeInterval(-86400), limit: 5)
                    snapshot.incidents = try await FleetQueries.incidents(on: connection!, since: since, limit: 8)
                } catch {
                    await connection?.close()
                    connection = nil
                    snapshot.error = (error as? FleetError)?.description ?? "\(error)"
                }
                let (columns, lines) = terminalSize()
                let screen = FleetWatchScreen.render(snapshot, width: columns, height: lines)
                print((tty ? "\u{1B}[H\u{1B}[2J" : "") + screen)
                fflush(nil)
                if once {
                    await connection?.close()
                    if let error = snapshot.error { throw CLIError(error) }
                    return
                }
                try? await Task.sleep(for: .milliseconds(Int(interval * 1000)))
            }
        }
    }
}

/// The watch screen as text: a pure function of what was read, so it is the same in tmux and in a test.
enum FleetWatchScreen {
    struct Snapshot {
        var now: Date
        var period: String
        var url: String
        var signatures: [FleetSignatureSummary] = []
        var events: [FleetEvent] = []
        var incidents: [FleetIncidentListing] = []
        var error: String?
    }

    /// The screen, at most `width` columns and `height` lines: the newest incidents and events are cut first
    /// (three of each are kept), then the least affected signatures (the table says how many are not shown).
    static func render(_ s: Snapshot, width: Int, height: Int = 50) -> String {
        var s = s
        let room = max(8, height - 1)
        let eventLines = s.events.isEmpty ? 0 : 2 + min(s.events.count, 3)
        let incidentLines = s.incidents.isEmpty ? 0 : 2 + min(s.incidents.count, 3)
        let signatureRows = max(3, room - 4 - eventLines - incidentLines)
        var hidden = 0
        if s.signatures.count > signatureRows {
            hidden = s.signatures.count - (signatureRows - 1)
            s.signatures = Array(s.signatures.prefix(signatureRows - 1))
        }
        let spare = max(0, room - 4 - eventLines - incidentLines - min(s.signatures.count + 1, signatureRows))
        s.events = Array(s.events.prefix(3 + spare / 2))
        s.incidents = Array(s.incidents.prefix(3 + spare - spare / 2))
        var lines: [String] = []
        lines.append("defib fleet watch · \(Format.time(s.now, milliseconds: false)) UTC · \(s.url)")
        if let error = s.error {
            lines.append("DATABASE UNREACHABLE: \(error) — retrying")
        } else {
            let hosts = Set(s.signatures.flatMap(\.hostNames)).count
            lines.append("last \(s.period): \(s.signatures.count) signature(s) on \(hosts) host(s), \(s.signatures.reduce(0) { $0 + $1.incidents }) incident(s)")
        }
        lines.append("")
        if s.signatures.isEmpty {
            lines.append(s.error == nil ? "No incidents in the last \(s.period)." : "")
        } else {
            // The suspect first after the hosts: in an incident it is what the operator is looking for.
            let most = s.signatures.map(\.hosts).max() ?? 1
            var rows = [["HOSTS", "", "SUSPECT (hosts naming it)", "SIGNATURE", "INCIDENTS", "LAST SEEN", "DIAGNOSIS"]]
            for r in s.signatures {
                let bar = String(repeating: "#", count: max(1, Int((Double(r.hosts) / Double(max(most, 1)) * 10).rounded())))
                let suspect = r.suspect.map { "\(Format.truncated($0, 48)) (\(r.suspectHosts)/\(r.hosts))" } ?? "-"
                rows.append([String(r.hosts), bar, suspect, r.signature, String(r.incidents), ago(r.lastSeen, s.now), r.diagnosisKind ?? "-"])
            }
            lines += Format.table(rows).split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
            if hidden > 0 { lines.append("… and \(hidden) more signature(s) with fewer hosts (defib fleet signatures --since \(s.period))") }
        }
        if !s.events.isEmpty {
            lines.append("")
            lines.append("FLEET EVENTS (24 h)")
            var rows: [[String]] = []
            for e in s.events {
                rows.append(["  #\(e.id)", Format.time(e.raisedAt, milliseconds: false), "\(e.hosts) hosts in \(e.windowSeconds) s",
                             e.suspect.map { "suspect \(Format.truncated($0, 48)) (\(e.suspectHosts)/\(e.hosts))" } ?? "no suspect",
                             e.signature, e.diagnosisKind ?? "-", "raised by \(e.raisedBy)"])
            }
            lines += Format.table(rows).split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        }
        if !s.incidents.isEmpty {
            lines.append("")
            lines.append("NEWEST INCIDENTS")
            var rows: [[String]] = []
            for i in s.incidents {
                rows.append(["  " + ago(i.detectedAt, s.now), i.host, "#\(i.localID)", i.service, i.cause, i.outcome, i.diagnosisKind ?? "-", i.signature ?? "-"])
            }
            lines += Format.table(rows).split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        }
        return lines.map { $0.count > width ? String($0.prefix(max(1, width - 1))) + "…" : $0 }.joined(separator: "\n")
    }

    /// `12 s ago`, `4 min ago`, `2 h ago`.
    static func ago(_ date: Date, _ now: Date) -> String {
        let s = max(0, Int(now.timeIntervalSince(date)))
        if s < 120 { return "\(s) s ago" }
        if s < 7200 { return "\(s / 60) min ago" }
        return "\(s / 3600) h ago"
    }
}

/// The terminal's size (TIOCGWINSZ), else $COLUMNS and $LINES, else 120 × 50.
func terminalSize() -> (columns: Int, lines: Int) {
    var size = winsize()
    if ioctl(STDOUT_FILENO, UInt(TIOCGWINSZ), &size) == 0, size.ws_col > 20, size.ws_row > 5 { return (Int(size.ws_col), Int(size.ws_row)) }
    let env = ProcessInfo.processInfo.environment
    let columns = env["COLUMNS"].flatMap(Int.init).flatMap { $0 > 20 ? $0 : nil } ?? 120
    let lines = env["LINES"].flatMap(Int.init).flatMap { $0 > 5 ? $0 : nil } ?? 50
    return (columns, lines)
}
