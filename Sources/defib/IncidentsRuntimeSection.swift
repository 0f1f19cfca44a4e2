import DefibCore

/// The parts of `defib incidents info` that come from runtime evidence: the pthread wait-for graph and the
/// "Runtime stacks" section (goroutines, Python or Java threads, grouped, counts first, the frames a person
/// wrote first), printed above gdb's native stacks.
enum IncidentsRuntimeSection {
    static func lines(_ i: Incident) -> [String] {
        var out: [String] = []
        if let edges = i.waitFor, !edges.isEmpty {
            out.append("")
            out.append("Wait-for (pthread mutexes)")
            var rows = [["WAITER", "WAITS FOR MUTEX", "OWNER", "KIND"]]
            for e in edges {
                rows.append(["\(e.waiterTid) \(e.waiterName)", e.mutex, e.ownerName.isEmpty ? "\(e.ownerTid) (not in the process)" : "\(e.ownerTid) \(e.ownerName)",
                             e.kind ?? "-"])
            }
            out.append(Format.table(rows, indent: "  "))
        }
        if let r = i.runtimeEvidence, r.runtime != .native || r.error != nil {
            out.append("")
            out.append("Runtime stacks")
            if r.groups.isEmpty && r.error == nil {
                out.append("  \(r.runtime.rawValue): not read yet\(r.tool.map { " (\($0))" } ?? "")")
            } else {
                out.append(RuntimeStacks.render(r).split(separator: "\n", omittingEmptySubsequences: false).map { "  " + $0 }.joined(separator: "\n"))
            }
        }
        return out
    }
}
