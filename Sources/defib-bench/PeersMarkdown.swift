import Foundation

/// The checks the summary shows for the peer comparison. Pure.
enum PeersChecks {
    static func evaluate(_ peers: [PeerResult], boundSeconds: Int, proxyStart530Ms: [Double]? = nil) -> [TargetCheck] {
        var out: [TargetCheck] = []
        out += proofTargets(peers, proxyStart530Ms: proxyStart530Ms)
        let failedRows = peers.filter { $0.status != "ok" }
        out.append(TargetCheck(id: "peers.rows-ran", target: "every peer started and ran its repetitions",
                               measured: failedRows.isEmpty ? "\(peers.count) of \(peers.count) rows ran"
                                   : failedRows.map { "\($0.id.rawValue): \($0.reason ?? "?")" }.joined(separator: "; "),
                               pass: failedRows.isEmpty && !peers.isEmpty))
        let reps = peers.flatMap(\.reps)
        let notShown = peers.flatMap { p in p.reps.filter { !$0.window.hangShown }.map { "\(p.id.rawValue) rep \($0.rep)" } }
        out.append(TargetCheck(id: "peers.hang-shown",
                               target: "the injected hang stopped the proxy serving in every repetition (no success from \(Int(RepWindow.hangGraceMs)) ms after the fault until the hung instance ended or was frozen beside its replacement)",
                               measured: reps.isEmpty ? "no repetition ran" : notShown.isEmpty ? "\(reps.count) of \(reps.count) repetitions"
                                   : "not shown in " + notShown.joined(separator: ", "),
                               pass: !reps.isEmpty && notShown.isEmpty))
        let defib = peers.filter { $0.id.supervisor == "defib" }
        if !defib.isEmpty {
            let summaries = defib.map { ($0.id, PeerSummary($0)) }
            let missed = summaries.filter { $0.1.recovered < $0.1.reps || $0.1.reps == 0 }
            out.append(TargetCheck(id: "peers.defib-recovered",
                                   target: "defib restored service in every repetition of every configuration within \(boundSeconds) s",
                                   measured: missed.isEmpty ? summaries.map { "\($0.0.rawValue) \($0.1.recovered)/\($0.1.reps)" }.joined(separator: ", ")
                                       : missed.map { "\($0.0.rawValue) \($0.1.recovered)/\($0.1.reps)" }.joined(separator: ", "),
                                   pass: missed.isEmpty && defib.allSatisfy { $0.status == "ok" }))
            let passed = defib.filter { $0.id.socketPassed }
            if !passed.isEmpty {
                let refused = passed.flatMap(\.reps).reduce(0) { $0 + $1.window.refused }
                let count = passed.flatMap(\.reps).count
                out.append(TargetCheck(id: "peers.defib-socket-no-refusal",
                                       target: "with its socket passed, defib's proxy refused no connection during any hang",
                                       measured: "\(refused) ECONNREFUSED over \(count) repetitions (\(passed.map(\.id.rawValue).joined(separator: ", ")))",
                                       pass: refused == 0 && count > 0))
            }
            let withCores = defib.filter { $0.id != .defibNone }
            let lacking = withCores.flatMap { p in p.reps.filter { $0.core?.usable != true || !$0.recorded }.map { "\(p.id.rawValue) rep \($0.rep)" } }
            let count = withCores.flatMap(\.reps).count
            out.append(TargetCheck(id: "peers.defib-evidence",
                                   target: "defib left a core gdb opens and an incident for every hang (capture native and gcore)",
                                   measured: lacking.isEmpty ? "\(count) of \(count) repetitions" : "missing in " + lacking.joined(separator: ", "),
                                   pass: lacking.isEmpty && count > 0))
        }
        if let sup = peers.first(where: { $0.id == .supervisord }), sup.status == "ok" {
            let s = PeerSummary(sup)
            out.append(TargetCheck(id: "peers.supervisord-never",
                                   target: "supervisord, which has no hang detection, never restored service within \(boundSeconds) s (what the row is there to show)",
                                   measured: "\(s.recovered) of \(s.reps) repetitions recovered",
                                   pass: s.recovered == 0 && s.reps > 0))
        }
        return out
    }
}

/// The peer comparison's section of REPORT.md. Pure.
enum PeersMarkdown {
    /// `templates`: the config files of bench/peers/ by name, quoted in the report.
    static func render(_ r: PeersReport, defibCommand: String, templates: [(name: String, text: String)]) -> String {
        let s = r.settings
        var md = r.sectionHeading("Peer comparison: defib vs monit, systemd's watchdog and supervisord",
                                  note: "**One run on one machine; medians and ratios.**")
        md += """
        How it was measured:
        - The same release `defib-proxy` (`\(s.proxyArguments)`, plus `--listen 127.0.0.1:PORT` where it binds its own port, \
        `--sd-notify` under systemd) in front of an in-process HTTP backend, supervised in turn by each row's supervisor.
        - Each repetition: an open-loop HTTP load of \(Int(s.ratePerSecond)) requests/s (each on a new connection, request \
        timeout \(Int(s.requestTimeoutMs)) ms) starts; after a moment the same hang is injected through the proxy's control \
        socket, `fault timeout-race` (the parking_lot `try_write_for` race: the catalog lock word is left at \
        0xfffffffffffffffe and every reader parks forever).
        - **hang → serving**: from sending the fault to the first successful response that completed after the hung \
        instance had ended (its pidfd polled every 5 ms) or, when defib keeps it frozen (every thread ptrace-stopped: it \
        runs nothing) while its replacement starts, after the replacement was first seen beside it; so the old \
        instance's last answers never count. Bound: \
        \(s.boundSeconds) s ("never" past it). p95 is nearest-rank: with \(s.reps) repetitions it is the largest value.
        - The `leaked-read` row injects `fault leaked-read` and then SIGHUP (the reload whose write waits for the leaked \
        reader): a hang defib has no proof of. The 530 MiB rows run the proxy with `--ballast 512 --extra-threads 8`.
        - **refused**: requests due between the fault and the recovery (or the bound) that met ECONNREFUSED: nobody \
        listening on the port. **failed / timed out**: resets and short answers / no answer within the request timeout, same window.
        - **core**: the core the supervisor left, opened with `gdb -batch -ex 'info threads' defib-proxy CORE` \
        (\(s.gdbVersion)); usable = gdb lists the threads. Cores are deleted after the check.
        - **recorded**: what the supervisor itself wrote down about the hang (quoted below each table).
        - **supervisor's own cost**: its processes' CPU time over \(s.usageSeconds) s (process CPU clocks, every thread, ns \
        resolution) and VmRSS, with the proxy healthy and idle, at each supervisor's tightest heartbeat.
        - \(s.reps) repetitions per row (supervisord \(s.supervisordReps): it waits out the full bound each time).


        """
        md += "| supervisor (configuration) | listening socket kept across the restart | recovered | hang → serving: median | p95 | max | "
            + "hung instance gone (median) | core: captured / usable in gdb | recorded by the supervisor | ECONNREFUSED per repetition (median; total) | "
            + "failed / timed out (total) |\n"
        md += "|---|---|---|---|---|---|---|---|---|---|---|\n"
        for p in r.peers {
            if p.status != "ok" && p.reps.isEmpty {
                md += "| \(p.id.title) | \(p.id.socketPassed ? "yes" : "no") | **FAIL**: \(escape(p.reason ?? "?")) | | | | | | | | |\n"
                continue
            }
            let sum = PeerSummary(p)
            let never = "never within \(s.boundSeconds) s"
            md += "| \(p.id.title)\(p.status != "ok" ? " (**FAIL**: \(escape(p.reason ?? "?")))" : "") | \(p.id.socketPassed ? "yes" : "no") | "
            md += "\(sum.recovered)/\(sum.reps) | "
            md += sum.recovery.map { "**\(formatMs($0.median))**" } ?? never
            md += " | " + (sum.recoveryP95.map(formatMs) ?? "–") + " | " + (sum.recovery.map { formatMs($0.max) } ?? "–") + " | "
            md += (sum.oldGone.map { formatMs($0.median) } ?? "never (still hung)") + " | "
            md += "\(sum.coresCaptured)/\(sum.reps) / \(sum.coresUsable)/\(sum.reps) | \(sum.recorded)/\(sum.reps) | "
            let refusedMedian = Spread(sum.refused.map(Double.init)).map { String(format: "%.0f", $0.median) } ?? "–"
            md += "\(refusedMedian); \(sum.refused.reduce(0, +)) | \(sum.failed.reduce(0, +)) / \(sum.timedOut.reduce(0, +)) |\n"
        }
        md += "\n" + ratios(r) + "\n" + proofLines(r) + reading(s) + "\n"

        md += "### The supervisors' own cost (proxy healthy and idle)\n\n"
        md += "| supervisor | heartbeat | CPU (% of one core) | CPU time in window | VmRSS at the end (max) | processes |\n|---|---|---|---|---|---|\n"
        for p in r.peers {
            guard let u = p.usage else { continue }
            md += "| \(p.id.supervisor) | \(u.heartbeat) | **\(String(format: "%.2f %%", u.cpuPercent))** | "
                + String(format: "%.3f s of %.0f s", Double(u.cpuNs) / 1e9, u.seconds)
                + " | \(formatBytes(u.rssEndBytes)) (\(formatBytes(u.rssMaxBytes))) | \(u.processes.joined(separator: ", ")) |\n"
        }
        md += "\nsystemd's figure is the container's whole PID 1 (it has nothing else to do there); the keep-alive thread that "
            + "feeds it lives in the proxy. supervisord has no heartbeat at all.\n\n"

        md += "### What each supervisor recorded, and every repetition\n\n"
        for p in r.peers {
            md += "**\(p.id.title)** (\(p.version)). \(p.configuration)\n\n"
            if let reason = p.reason { md += "FAIL: \(reason)\n\n" }
            if p.reps.isEmpty { continue }
            md += "| rep | pid hung → new | hang → serving | hung instance gone | refused | failed | timed out | core | recorded |\n"
            md += "|---|---|---|---|---|---|---|---|---|\n"
            for rep in p.reps {
                let core = rep.core.map { "\($0.gdbThreads) threads (\(formatBytes($0.bytes)))" } ?? (rep.coreNote ?? "none")
                md += "| \(rep.rep) | \(rep.oldPid) → \(rep.newPid.map(String.init) ?? "–") | "
                    + (rep.window.recoveryMs.map(formatMs) ?? "never within \(s.boundSeconds) s") + " | "
                    + (rep.oldGoneMs.map(formatMs) ?? "never") + " | \(rep.window.refused) | \(rep.window.failed) | \(rep.window.timedOut) | "
                    + "\(escape(core)) | \(escape(String(rep.record.prefix(300)))) |\n"
            }
            let problems = p.reps.flatMap { rep in rep.problems.map { "rep \(rep.rep): \($0)" } }
            if !problems.isEmpty { md += "\nProblems: " + problems.map(escape).joined(separator: "; ") + "\n" }
            for n in p.notes { md += "\n- \(n)" }
            md += "\n\n"
        }

        md += "### Configurations\n\n"
        md += "defib: `\(defibCommand)` (rows with the socket kept pass `--socket http=127.0.0.1:PORT`; the `--listen` row gives the "
            + "proxy `--listen 127.0.0.1:PORT` instead). The others are rendered from `bench/peers/` (`@DIR@`, `@PROXY@`, "
            + "`@PROXY_ARGS@`, `@PORT@`, `@CORES@` filled in); monit and supervisord run in the foreground as the benchmark's "
            + "children with their files in its work directory; systemd 252 is booted in an isolated container (systemd-nspawn on an "
            + "overlay of / with a tmpfs upper layer, own PID and mount namespaces and cgroup; sharing this machine's network "
            + "namespace so the load reaches the proxy on 127.0.0.1, acceptable for a loopback benchmark).\n\n"
        for t in templates {
            md += "<details><summary><code>bench/peers/\(t.name)</code></summary>\n\n```\n\(t.text.hasSuffix("\n") ? t.text : t.text + "\n")```\n\n</details>\n\n"
        }
        md += "### Checks\n\n" + CoreMarkdown.targetTable(r.targets)
        return md
    }

    /// "defib (native) restored service 3.1× faster than monit (median 1.4 s vs 4.4 s)" for every row that recovered.
    static func ratios(_ r: PeersReport) -> String {
        guard let base = r.peers.first(where: { $0.id == .defibNative }), let b = PeerSummary(base).recovery else { return "" }
        var lines: [String] = []
        for p in r.peers where p.id != .defibNative {
            let s = PeerSummary(p)
            if let o = s.recovery {
                let ratio = o.median / max(b.median, 0.001)
                lines.append("- \(p.id.title): median \(formatMs(o.median)), **\(formatRatio(ratio))** defib's default (\(formatMs(b.median))).")
            } else if s.reps > 0 {
                lines.append("- \(p.id.title): never within \(r.settings.boundSeconds) s, against defib's default \(formatMs(b.median)).")
            }
        }
        return lines.isEmpty ? "" : "Against defib's default row (native capture, socket passed), median hang → serving:\n\n" + lines.joined(separator: "\n") + "\n"
    }

    /// What the figures do and do not say, from the settings of the run.
    static func reading(_ s: PeersSettings) -> String {
        let i = Double(s.defibIntervalMs) / 1000, d = Double(s.defibDeadlineMs) / 1000
        return """
        Reading the figures:
        - Each supervisor declares the hang at a different point of the silence. defib pings every \(s.defibIntervalMs) ms and \
        declares a hang after \(s.defibDeadlineMs) ms without an answer: \(fmt(d))–\(fmt(d + i)) s after the hang began. systemd's \
        `WatchdogSec=1s` counts from the last `WATCHDOG=1`, which the proxy sends every 500 ms: it fires 0.5–1.0 s after the hang \
        began, so by its configuration it may fire up to half a second sooner than defib (the medians above say what it did in \
        this run). monit tests once per 1 s cycle \
        with a 1 s timeout (1–2 s), and its script runs gcore before the kill.
        - "hung instance gone" includes taking the core: defib's native writer and the kernel's dump (systemd rows) copy only \
        what is mapped; gcore (defib's gcore row, monit's script) drives gdb.
        - defib is started afresh for each repetition: its default restart backoff (100 ms, doubling, reset after 60 s of health) \
        would otherwise add 0.1, 0.2, 0.4, 0.8 s to repetitions a few seconds apart. monit and systemd as configured have no \
        backoff (systemd: `RestartSec=0`, `StartLimitIntervalSec=0`); supervisord never gets to restart.
        - Refusals come only where nobody holds the port between two instances (the proxy binds `--listen` itself); with the \
        socket kept, connections wait in the kernel's queue and the new instance answers them. "failed" counts mostly connections \
        the hung instance had already accepted, reset when it is killed: what a client sees when the process holding its \
        connection dies. supervisord's "timed out" are requests that waited out the \(Int(s.requestTimeoutMs)) ms timeout.

        """
    }

    private static func fmt(_ seconds: Double) -> String {
        seconds == seconds.rounded() ? String(format: "%.1f", seconds) : String(format: "%.2g", seconds)
    }

    static func escape(_ s: String) -> String {
        s.replacingOccurrences(of: "|", with: "\\|").replacingOccurrences(of: "\n", with: " ")
    }
}

extension PeersChecks {
    /// The targets of acting on proof and restarting while the core is written (only for the rows that ran).
    static func proofTargets(_ peers: [PeerResult], proxyStart530Ms: [Double]?) -> [TargetCheck] {
        var out: [TargetCheck] = []
        func row(_ id: PeerID) -> (PeerResult, PeerSummary)? {
            peers.first { $0.id == id && $0.status == "ok" && !$0.reps.isEmpty }.map { ($0, PeerSummary($0)) }
        }
        if let (r, s) = row(.defibNative) {
            let median = s.recovery?.median
            let complete = r.reps.allSatisfy { $0.core?.usable == true && $0.recorded && $0.record.contains("diagnosis corrupted-lock-word") }
            out.append(TargetCheck(id: "peers.proof-idle-400ms",
                                   target: "idle proxy, timeout-race (proof), deadline 1000 ms: fault → first HTTP 200 ≤ 400 ms (median), with a core gdb opens and the diagnosis",
                                   measured: "median \(median.map(formatMs) ?? "none") over \(s.recovered) of \(s.reps); declared on \(counts(s.declaredOn)); "
                                       + "cores usable \(s.coresUsable)/\(s.reps), diagnosis corrupted-lock-word in \(r.reps.filter { $0.record.contains("diagnosis corrupted-lock-word") }.count)/\(s.reps)",
                                   pass: (median ?? .infinity) <= 400 && s.recovered == s.reps && complete))
        }
        if let (r, s) = row(.defibNative530) {
            let start = proxyStart530Ms.flatMap { Spread($0) }?.median
            let ready = s.detectedToReady?.median
            let usable = r.reps.allSatisfy { $0.core?.usable == true }
            out.append(TargetCheck(id: "peers.530-detected-to-ready",
                                   target: "530 MiB proxy, timeout-race: detected → ready ≤ the proxy's own start time + 30 ms (medians), with a full core",
                                   measured: "detected → ready \(ready.map(formatMs) ?? "none"), the proxy alone \(start.map(formatMs) ?? "not measured") "
                                       + "(+ 30 ms = \(start.map { formatMs($0 + 30) } ?? "-")); capture order \(counts(s.captureOrders)); cores usable \(s.coresUsable)/\(s.reps)",
                                   pass: ready != nil && start != nil && ready! <= start! + 30 && usable))
        }
        if let (r, s) = row(.defibLeakedRead) {
            let silences = r.reps.compactMap { rep -> String? in rep.declaredOn }
            out.append(TargetCheck(id: "peers.leaked-read-at-deadline",
                                   target: "leaked-read (no proof): declared at the deadline, never on proof",
                                   measured: "declared on \(counts(s.declaredOn)) in \(s.reps) repetitions",
                                   pass: !silences.isEmpty && silences.allSatisfy { $0 == "deadline" } && silences.count == s.reps))
        }
        return out
    }

    static func counts(_ c: [String: Int]) -> String {
        c.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")
    }
}

extension PeersMarkdown {
    /// What defib's incidents say of each of its rows: declared on proof or at the deadline, detection → ready, the
    /// capture order; and the 530 MiB proxy's own start time.
    static func proofLines(_ r: PeersReport) -> String {
        var md = ""
        for p in r.peers where p.id.supervisor == "defib" && !p.reps.isEmpty {
            let sum = PeerSummary(p)
            md += "- \(p.id.title): declared on \(PeersChecks.counts(sum.declaredOn)); detected → ready "
                + (sum.detectedToReady.map { "median \(formatMs($0.median)) (min \(formatMs($0.min)), max \(formatMs($0.max)))" } ?? "–")
                + "; capture order \(PeersChecks.counts(sum.captureOrders))\n"
        }
        if let starts = r.settings.proxyStart530Ms, let spread = Spread(starts) {
            md += "- The 530 MiB proxy started alone (spawn → first pong, \(starts.count) runs): median \(formatMs(spread.median)) "
                + "(min \(formatMs(spread.min)), max \(formatMs(spread.max))).\n"
        }
        return md.isEmpty ? "" : md + "\n"
    }
}
