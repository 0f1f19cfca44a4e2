import ArgumentParser
import DefibCore
import DefibStore
import Foundation
import FlightRecorder
import Glibc

/// `defib incidents info [MATCHES…]`: everything recorded about incidents, diagnosis first; with no MATCHES
/// (or `last`) the newest, as coredumpctl's `info`.
struct IncidentsInfoCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "info",
        abstract: "Show incidents in full: diagnosis, cause, process, timeline, capture, locks, notes, stacks.",
        discussion: """
            With no MATCHES, or `last`, the newest incident; with an incident id, that one (as one JSON object with --json); with other MATCHES every incident they select (a JSON array).

            Examples:
              defib incidents info --state-dir D
              defib incidents info 7 --state-dir D --json
              defib incidents info --state-dir D COMM=defib-proxy --since today
            """)

    @Argument(help: "MATCHES: an incident id or pid, `last`, a path (EXE), a process name (COMM), or FIELD=VALUE.", completion: .custom(StateCompletion.incidentIDs))
    var matches: [String] = []

    @OptionGroup var location: StoreLocationOptions
    @OptionGroup var output: OutputOptions
    @OptionGroup var range: RangeOptions

    @Flag(name: .long, help: "Show Swift symbols in stacks as gdb printed them (mangled), not demangled.")
    var mangled = false

    func run() throws {
        let store = try location.openStore()
        var selection = try range.query(matches, in: store)
        let one = matches.isEmpty || selection.single || range.newestOnly
        if matches.isEmpty { selection.query.limit = 1; selection.query.oldestFirst = false }
        let incidents = try storeCall { try store.incidents(matching: selection.query) }
        if incidents.isEmpty {
            if one || matches.count == 1 { throw noMatch(selection, store: store) }
            try exitNoIncidents()
        }
        let pager = output.noPager ? nil : Pager.start()
        defer { pager?.finish() }
        if let mode = output.jsonMode {
            print(one ? IncidentJSON.string(incidents[0], includeStacks: true, pretty: mode == .pretty)
                      : JSONValue.array(incidents.map { IncidentJSON.object($0, includeStacks: true) }).rendered(pretty: mode == .pretty))
            return
        }
        print(incidents.map { incident in
            var shown = incident
            if !mangled, let stacks = shown.stacks { shown.stacks = Self.demangled(stacks) }
            if !mangled, let stacks = shown.stallEvidence?.stacks, shown.outcome != .selfRecovered { shown.stallEvidence?.stacks = Self.demangled(stacks) }
            if shown.outcome == .selfRecovered { shown.stallEvidence?.stacks = shown.stacks }
            return Self.render(shown, zone: output.timeZone)
        }.joined(separator: "\n\n"))
    }

    /// Swift symbols in gdb's frames ("$s10DefibProxy15ThreadConditionC4wait…") made readable with the
    /// toolchain's swift-demangle when it is installed; the text unchanged otherwise.
    static func demangled(_ stacks: String) -> String {
        let candidates = (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":").map { "\($0)/swift-demangle" }
            + ["/opt/swift/usr/bin/swift-demangle", "/usr/bin/swift-demangle"]
        guard stacks.contains("$s"), let tool = candidates.first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else { return stacks }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: tool)
        process.arguments = ["--simplified"]
        let input = Pipe(), output = Pipe()
        process.standardInput = input
        process.standardOutput = output
        process.standardError = FileHandle.nullDevice
        do { try process.run() } catch { return stacks }
        // Write from another thread: the output pipe could fill while we write.
        let data = Data(stacks.utf8)
        let writer = Thread { input.fileHandleForWriting.write(data); try? input.fileHandleForWriting.close() }
        writer.start()
        let result = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0, let text = String(data: result, encoding: .utf8), !text.isEmpty else { return stacks }
        return text
    }

    /// The human view, written for someone seeing defib for the first time.
    static func render(_ i: Incident, zone: TimeZone = TimeZone(identifier: "UTC")!) -> String {
        var out: [String] = []
        let id = i.id.map(String.init) ?? "?"
        out.append("Incident \(id) · \(i.service) · pid \(i.pid) · \(i.outcome.rawValue)")
        out.append(i.diagnosis.isEmpty
            ? "Diagnosis: none — the evidence matched no known pattern; read the cause, locks and stacks below."
            : "Diagnosis: \(i.diagnosis)")
        out.append("")

        var summary: [[String]] = [["Cause", "\(i.cause.kind): \(i.cause.summary)"]]
        switch i.outcome {
        case .recovered:
            let restore = IncidentJSON.restoreMilliseconds(i).map { " in \(Format.duration(ms: Double($0)))" } ?? ""
            summary.append(["Outcome", "recovered\(restore) (detection to the new instance's first pong)"])
        case .open: summary.append(["Outcome", "open: the supervisor is still handling it (or stopped mid-way)"])
        case .gaveUp: summary.append(["Outcome", "gave up: restart intensity exceeded, the supervisor stopped"])
        case .shutdown: summary.append(["Outcome", "shutdown: the supervisor was stopped before recovery finished"])
        case .replacementFailed: summary.append(["Outcome", "replacement failed: the new instance hung before it was ready; the next incident has its evidence"])
        case .selfRecovered: summary.append(["Outcome", "self-recovered: the heartbeat came back by itself; nothing was done to the process (same pid, no restart)"])
        case .supervisorDied: summary.append(["Outcome", "supervisor died: defib was killed while handling it; the next defib closed it at start"])
        }
        if let newPid = i.newPid { summary.append(["New pid", String(newPid)]) }
        summary.append(["Binary", i.binaryPath ?? "-"])
        if let p = i.process {
            summary.append(["Process", "pid \(i.pid) (\(p.comm)), uid \(p.uid)\(userName(p.uid)), gid \(p.gid)\(groupName(p.gid))"])
            if !p.argv.isEmpty { summary.append(["Command line", p.commandLine]) }
            if let unit = p.unit { summary.append(["Unit", unit]) }
        }
        if let signal = i.endingSignal { summary.append(["Signal", "\(signal) (\(signalName(signal)))"]) }
        if let signature = i.signature { summary.append(["Signature", signature]) }
        if let declared = i.declaredOn {
            summary.append(["Declared", declared == .proof ? "on proof, before the deadline (see Notes)" : "at the deadline"])
        }
        if let order = i.captureOrder {
            summary.append(["Capture order", order == .restartWhileWriting ? "replacement started while the core was written from the frozen instance"
                                : "core first, then the kill and the restart"])
        }
        out.append(Format.table(summary))

        out.append("")
        out.append("Timeline (\(Format.zoneName(zone, at: i.detectedAt)); offsets from detection)")
        var events: [(String, Date?)] = [("started", i.startedAt), ("detected", i.detectedAt), ("killed", i.killedAt),
                                         ("restarted", i.restartedAt), ("ready", i.readyAt)]
        if let done = i.captureDoneAt {
            // The core's end: before the kill in today's order; after the replacement when it was written from the frozen
            // instance. The steps that happened, in time order.
            events.insert(("core done", done), at: 2)
            if i.captureOrder == .restartWhileWriting {
                let happened = events.compactMap { e in e.1.map { (e.0, $0) } }.sorted { $0.1 < $1.1 }
                events = happened.map { ($0.0, Optional($0.1)) } + events.filter { $0.1 == nil }
            }
        }
        out.append(Format.table(events.map { name, date in
            guard let date else { return [name, "-", ""] }
            return [name, Format.time(date, zone: zone), Format.duration(ms: date.timeIntervalSince(i.detectedAt) * 1000, signed: true)]
        }, indent: "  "))

        out.append("")
        out.append("Capture")
        if let c = i.capture {
            var rows = [["method", c.method], ["state", Format.coreState(i)]]
            if let path = c.path {
                let gone = FileManager.default.fileExists(atPath: path) ? "" : "  (file gone)"
                rows.append(["core", "\(path)  (\(Format.bytes(c.bytes)))\(gone)"])
            } else {
                rows.append(["core", "none written"])
            }
            rows.append(["duration", Format.duration(ms: c.durationMs)])
            if let error = c.error { rows.append(["error", error]) }
            out.append(Format.table(rows, indent: "  "))
        } else {
            out.append("  none attempted")
        }

        out.append("")
        out.append("Locks")
        if i.lockState.isEmpty {
            out.append("  none reported by the service")
        } else {
            var rows = [["NAME", "WORD", "SOURCE", "HOLDER", "LAST HOLDER", "WAITING", ""]]
            for l in i.lockState {
                let word = IncidentJSON.normalizedWord(l.word) ?? l.word
                let corrupted = IncidentJSON.normalizedWord(l.word)
                    .flatMap { UInt64($0.dropFirst(2), radix: 16) }.map(LockWord.isCorrupt) ?? false
                var waiting: [String] = []
                if let r = l.readersWaiting { waiting.append("\(r) reader\(r == 1 ? "" : "s")") }
                if let w = l.writersWaiting { waiting.append("\(w) writer\(w == 1 ? "" : "s")") }
                rows.append([l.name, word, l.source, l.holder ?? "-", l.lastHolder ?? "-",
                             waiting.isEmpty ? "-" : waiting.joined(separator: ", "),
                             corrupted ? "<- corrupted: no valid operation sequence produces this word" : ""])
            }
            out.append(Format.table(rows, indent: "  "))
        }

        if !i.notes.isEmpty {
            out.append("")
            out.append("Notes")
            out.append(contentsOf: i.notes.map { "  - \($0)" })
        }

        out += IncidentsRuntimeSection.lines(i)
        out += IncidentsStallSection.lines(i)
        out.append("")
        out.append("Stacks")
        if let stacks = i.stacks, !stacks.isEmpty {
            out.append(stacks.hasSuffix("\n") ? String(stacks.dropLast()) : stacks)
        } else if i.outcome == .selfRecovered {
            out.append("  " + (i.stallEvidence?.error ?? "not stored yet (gdb reads the stall's capture in the background)"))
        } else if i.capture?.path == nil {
            out.append("  none: there is no core to read them from")
        } else {
            out.append("  not stored yet (gdb runs after the restart) or capture.stacks is off; `defib incidents gdb \(id)` opens the core")
        }
        return out.joined(separator: "\n")
    }
}

/// " (root)" for a uid with a name in the user database, "" otherwise.
func userName(_ uid: UInt32) -> String {
    guard let entry = getpwuid(uid), let name = entry.pointee.pw_name else { return "" }
    return " (\(String(cString: name)))"
}

/// " (root)" for a gid with a name in the group database, "" otherwise.
func groupName(_ gid: UInt32) -> String {
    guard let entry = getgrgid(gid), let name = entry.pointee.gr_name else { return "" }
    return " (\(String(cString: name)))"
}
