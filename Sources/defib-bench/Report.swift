import Foundation

/// What every part's JSON file holds at its top level, whatever else it has. A new part (`peers`) writes
/// bench/NAME.json with these keys and REPORT.md picks it up.
struct PartEnvelope: Codable, Equatable {
    /// The part's name, as given to scripts/bench.sh.
    var part: String
    /// "ok", or "FAIL" when the part could not run.
    var status: String
    /// Why it could not run.
    var reason: String?
    /// ISO 8601.
    var startedAt: String?
    /// PASS/FAIL lines for the summary.
    var targets: [TargetCheck]?
    /// The part's section of REPORT.md (starting with a "## " heading).
    var markdown: String?
}

/// bench/PART.json as a part writes it: the envelope (`PartEnvelope`'s keys, plus when the part ran and the
/// machine before and after) and the part's own figures beside them at the top level. One type for every
/// part; `report.NAME` reaches the figures.
@dynamicMemberLookup
struct BenchReport<Figures: Codable>: Codable {
    var part: String
    /// "ok", or "FAIL" when the part could not run.
    var status = "ok"
    /// Why it could not run.
    var reason: String?
    var startedAt: String
    var finishedAt: String
    var machineBefore: MachineState
    var machineAfter: MachineState
    var targets: [TargetCheck] = []
    /// This part's section of REPORT.md.
    var markdown = ""
    var figures: Figures

    init(part: String, startedAt: String, finishedAt: String, machineBefore: MachineState, machineAfter: MachineState, figures: Figures) {
        self.part = part; self.startedAt = startedAt; self.finishedAt = finishedAt
        self.machineBefore = machineBefore; self.machineAfter = machineAfter; self.figures = figures
    }

    /// The start of the part's section of REPORT.md: its heading, when it ran (and `note`), and the machine
    /// before and after.
    func sectionHeading(_ title: String, note: String) -> String {
        "## \(title)\n\n" + "Started \(startedAt), finished \(finishedAt).\(note.isEmpty ? "" : " " + note)\n\n"
            + "Machine before: \(machineBefore.summary).  \nMachine after: \(machineAfter.summary).  \n"
            + MachineState.pressureLine(from: machineBefore, to: machineAfter) + "\n\n"
    }

    subscript<T>(dynamicMember keyPath: WritableKeyPath<Figures, T>) -> T {
        get { figures[keyPath: keyPath] }
        set { figures[keyPath: keyPath] = newValue }
    }

    enum CodingKeys: String, CodingKey { case part, status, reason, startedAt, finishedAt, machineBefore, machineAfter, targets, markdown }

    init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        part = try c.decode(String.self, forKey: .part)
        status = try c.decode(String.self, forKey: .status)
        reason = try c.decodeIfPresent(String.self, forKey: .reason)
        startedAt = try c.decode(String.self, forKey: .startedAt)
        finishedAt = try c.decode(String.self, forKey: .finishedAt)
        machineBefore = try c.decode(MachineState.self, forKey: .machineBefore)
        machineAfter = try c.decode(MachineState.self, forKey: .machineAfter)
        targets = try c.decode([TargetCheck].self, forKey: .targets)
        markdown = try c.decode(String.self, forKey: .markdown)
        figures = try Figures(from: decoder)
    }

    /// The envelope's keys and the figures' keys in one flat object.
    func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(part, forKey: .part)
        try c.encode(status, forKey: .status)
        try c.encodeIfPresent(reason, forKey: .reason)
        try c.encode(startedAt, forKey: .startedAt)
        try c.encode(finishedAt, forKey: .finishedAt)
        try c.encode(machineBefore, forKey: .machineBefore)
        try c.encode(machineAfter, forKey: .machineAfter)
        try c.encode(targets, forKey: .targets)
        try c.encode(markdown, forKey: .markdown)
        try figures.encode(to: encoder)
    }
}

/// Writes a part's JSON (pretty, sorted keys) to OUT/PART.json.
func writePartJSON<T: Encodable>(_ value: T, part: String, outDirectory: String) throws {
    try makeDirectories(outDirectory)
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    let path = "\(outDirectory)/\(part).json"
    do {
        var data = try encoder.encode(value)
        data.append(UInt8(ascii: "\n"))
        try data.write(to: URL(fileURLWithPath: path), options: .atomic)
    } catch {
        throw BenchError(kind: .io, message: "writing \(path): \(error)")
    }
}

/// Assembles REPORT.md from the parts' JSON files. Pure apart from reading them.
enum ReportAssembler {
    /// Reads OUT/PART.json; a missing or unreadable file becomes a FAIL envelope saying so.
    static func load(part: String, outDirectory: String) -> PartEnvelope {
        let path = "\(outDirectory)/\(part).json"
        guard let data = FileManager.default.contents(atPath: path) else {
            return PartEnvelope(part: part, status: "FAIL", reason: "\(path) was not written (the part crashed or never ran)")
        }
        do { return try JSONDecoder().decode(PartEnvelope.self, from: data) } catch {
            return PartEnvelope(part: part, status: "FAIL", reason: "\(path) is not a part report: \(error)")
        }
    }

    /// The whole report.
    static func render(parts: [PartEnvelope], command: String, generatedAt: String, machine: MachineState,
                       toolchain: String?, outDirectory: String = "bench") -> String {
        var md = "# defib benchmarks\n\n"
        md += "Generated \(generatedAt) by `\(command)`.\n\n"
        md += "**One run on one machine; ratios and medians.** The machine is a shared, noisy VM: compare methods within this "
            + "run, not against figures from elsewhere.\n\n"
        md += "Machine: \(machine.nproc) CPUs (\(machine.cpuModel)), \(formatBytes(machine.memTotalBytes)) memory, "
            + "Linux \(machine.kernel)" + (toolchain.map { "; \($0)" } ?? "") + ".  \n"
        md += "State when the report was written: \(machine.summary). Each section gives the state before and after it ran.\n\n"
        md += "## Summary\n\n| | part | target | measured |\n|---|---|---|---|\n"
        for p in parts {
            if p.status != "ok" {
                md += "| **FAIL** | \(p.part) | the part ran to completion | could not run: \(escape(p.reason ?? "no reason given")) |\n"
                continue
            }
            for t in p.targets ?? [] {
                md += "| **\(t.pass ? "PASS" : "FAIL")** | \(p.part) | \(escape(t.target)) | \(escape(t.measured)) |\n"
            }
        }
        for p in parts {
            md += "\n"
            if let section = p.markdown, !section.isEmpty {
                md += section.hasSuffix("\n") ? section : section + "\n"
            } else {
                md += "## \(p.part)\n\n"
            }
            if p.status != "ok" { md += "\n**FAIL: \(p.reason ?? "no reason given")**\n" }
        }
        md += "\n---\nRaw figures: " + parts.map { "`\(outDirectory)/\($0.part).json`" }.joined(separator: ", ") + ".\n"
        return md
    }

    static func escape(_ s: String) -> String {
        s.replacingOccurrences(of: "|", with: "\\|").replacingOccurrences(of: "\n", with: " ")
    }
}
