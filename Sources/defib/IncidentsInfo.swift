import ArgumentParser
import DefibCore
import DefibStore
import Foundation
import FlightRecorder

/// `defib incidents info ID|last`: everything recorded about one incident, diagnosis first.
struct IncidentsInfoCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "info",
        abstract: "Show one incident: diagnosis, cause, timeline, capture, locks, notes, stacks.")

    @Argument(help: "The incident number, or 'last' for the newest.")
    var id: String

    @OptionGroup var location: StoreLocationOptions

    @Flag(name: .long, help: "Print the incident as a JSON object (with stacks).")
    var json = false

    @Flag(name: .long, help: "Show Swift symbols in stacks as gdb printed them (mangled), not demangled.")
    var mangled = false

    func validate() throws { _ = try IncidentSelector.parse(id) }

    func run() throws {
        let store = try location.openStore()
        let incident = try IncidentSelector.parse(id).resolve(in: store)
        var shown = incident
        if !json && !mangled, let stacks = shown.stacks { shown.stacks = Self.demangled(stacks) }
        print(json ? IncidentJSON.string(incident, includeStacks: true) : Self.render(shown))
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
    static func render(_ i: Incident) -> String {
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
        case .supervisorDied: summary.append(["Outcome", "supervisor died: defib was killed while handling it; the next defib closed it at start"])
        }
        if let newPid = i.newPid { summary.append(["New pid", String(newPid)]) }
        summary.append(["Binary", i.binaryPath ?? "-"])
        out.append(Format.table(summary))

        out.append("")
        out.append("Timeline (UTC; offsets from detection)")
        let events: [(String, Date?)] = [("started", i.startedAt), ("detected", i.detectedAt), ("killed", i.killedAt),
                                         ("restarted", i.restartedAt), ("ready", i.readyAt)]
        out.append(Format.table(events.map { name, date in
            guard let date else { return [name, "-", ""] }
            return [name, Format.time(date), Format.duration(ms: date.timeIntervalSince(i.detectedAt) * 1000, signed: true)]
        }, indent: "  "))

        out.append("")
        out.append("Capture")
        if let c = i.capture {
            var rows = [["method", c.method]]
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

        out.append("")
        out.append("Stacks")
        if let stacks = i.stacks, !stacks.isEmpty {
            out.append(stacks.hasSuffix("\n") ? String(stacks.dropLast()) : stacks)
        } else if i.capture?.path == nil {
            out.append("  none: there is no core to read them from")
        } else {
            out.append("  not stored yet (gdb runs after the restart) or capture.stacks is off; `defib incidents gdb \(id)` opens the core")
        }
        return out.joined(separator: "\n")
    }
}
