import DefibCore

/// The part of `defib incidents info` a stall adds: what the suspect stage captured while the service was
/// stalled, and what it cost. For a stall incident its stacks are the incident's own (printed under Stacks); for
/// a hang that began as a stall they are the first moment, printed here above the hang's own.
enum IncidentsStallSection {
    static func lines(_ i: Incident) -> [String] {
        guard let e = i.stallEvidence else { return [] }
        var out = ["", i.outcome == .selfRecovered ? "Stall evidence (suspect stage)" : "Stall evidence (suspect stage, before the hang)"]
        var rows: [[String]] = [["taken", "\(RFC3339.string(e.takenAt)) after \(Format.duration(ms: e.silenceMs)) of silence"],
                                ["mode", e.mode.rawValue]]
        if let process = e.process { rows.append(["process", process]) }
        if e.mode != .none { rows.append(["pause", String(format: "%.2f ms (the service frozen for it)", e.pauseMs)]) }
        if let threads = e.threads { rows.append(["threads", "\(threads)" + (e.threadStates.map { " (\($0))" } ?? "")]) }
        if let core = e.corePath { rows.append(["core", "\(core)  (\(Format.bytes(e.coreBytes ?? 0)))"]) }
        if let error = e.error { rows.append(["error", error]) }
        out.append(Format.table(rows, indent: "  "))
        if i.outcome != .selfRecovered, let stacks = e.stacks, !stacks.isEmpty {
            out.append("")
            out.append("Stacks at the suspect stage")
            out.append(stacks.hasSuffix("\n") ? String(stacks.dropLast()) : stacks)
        }
        return out
    }
}
