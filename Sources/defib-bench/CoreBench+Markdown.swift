import Foundation

/// The core part's section of REPORT.md. Pure.
enum CoreMarkdown {
    static func render(_ r: CoreReport) -> String {
        var md = r.sectionHeading("Core capture: native writer vs gcore vs the kernel's dump", note: "\(r.gdbVersion).")
        md += """
        How it was measured:
        - The reference proxy (`defib-proxy`, release build) in two kinds: idle, and grown with `--ballast 512 --extra-threads 8` \
        (512 MiB of touched, non-zero heap and 8 more threads).
        - Per kind, **one long-lived process** is captured by the native writer (`NativeCoreWriter`, 2 writer threads, the \
        supervisor's default) and by gcore (`GcoreCapture`, gdb's `gcore`); both leave it running. The kernel's dump kills \
        its process, so **each kernel repetition gets a fresh process of the same kind** (same flags, started and answering \
        pings before the round begins; its start-up is in no figure).
        - \(r.reps) timed repetitions per method, interleaved: each round runs native, gcore and kernel once, the order \
        rotated every round. \(r.warmups) untimed native and gcore capture(s) first (gdb's first start reads its binary \
        and the proxy's symbols from disk).
        - Wall time is what the supervisor would spend: native and gcore from the call until the core is complete; the \
        kernel from preparing the signal until the reaped process's core file is found.
        - Cores are written into the page cache on the same file system (no `drop_caches`, no fsync), measured with \
        stat(2), their threads counted from the NT_PRSTATUS notes in each file, then deleted.
        - **Throughput** = the core's allocated bytes (st_blocks × 512: the memory really copied out of the process; \
        pages left as holes are not counted) ÷ wall time. "RSS/s" = the process's VmRSS ÷ wall time, the same \
        numerator for every method.
        - gdb check: one extra, untimed native core of each long-lived process, opened with \
        `gdb -batch -ex 'info threads' defib-proxy CORE`; every thread of the process must be listed. (gdb 13's \
        "Section `.reg-xstate/N' in core file too small" warning also comes with the kernel's own cores on this CPU.)

        """
        for s in r.scenarios {
            md += "\n### \(s.title)\n\n"
            md += "Process: VmRSS \(formatBytes(s.processRSSBytes)), \(s.processThreads) threads.\n\n"
            md += "| method | runs | wall median | min | max | core file | allocated | throughput | RSS/s | threads in core |\n"
            md += "|---|---|---|---|---|---|---|---|---|---|\n"
            for m in s.summaries {
                let label = m.method == "kernel" ? "kernel (fresh process each)" : m.method
                let runs = m.failures.isEmpty ? "\(m.runs)" : "\(m.runs - m.failures.count) of \(m.runs)"
                guard let wall = m.wallMs else {
                    md += "| \(label) | \(runs) | failed: \(m.failures.first ?? "no runs") | | | | | | | |\n"
                    continue
                }
                md += "| \(label) | \(runs) | **\(formatMs(wall.median))** | \(formatMs(wall.min)) | \(formatMs(wall.max)) | "
                md += "\(m.fileBytes.map { formatBytes(Int64($0.median)) } ?? "–") | "
                md += "\(m.allocatedBytes.map { formatBytes(Int64($0.median)) } ?? "–") | "
                md += "\(m.writeRate.map { formatRate($0.median) } ?? "–") | "
                md += "\(m.residentRate.map { formatRate($0.median) } ?? "–") | "
                md += "\(m.threadsInCore.map(String.init).joined(separator: ", ")) |\n"
            }
            if let native = s.summary("native")?.wallMs {
                for other in ["gcore", "kernel"] {
                    if let o = s.summary(other)?.wallMs {
                        let ratio = o.median / native.median
                        md += ratio >= 1
                            ? "\nnative is \(formatRatio(ratio)) faster than \(other) (median ÷ median)."
                            : "\nnative is \(formatRatio(1 / ratio)) slower than \(other) (median ÷ median)."
                    }
                }
                md += "\n"
            }
            if !s.warmupSamples.isEmpty {
                md += "\nWarm-up captures of this process, before the timed ones (not in the figures above): "
                    + s.warmupSamples.map { "\($0.method) \($0.error ?? formatMs($0.durationMs))" }.joined(separator: ", ") + "."
                // A slow first capture is the case a real incident meets: say so when it happened.
                let slow = s.warmupSamples.filter { w in
                    guard w.error == nil, let median = s.summary(w.method)?.wallMs?.median else { return false }
                    return w.durationMs > 2 * median
                }
                if !slow.isEmpty {
                    md += " The first " + slow.map { "\($0.method) capture took \(formatRatio($0.durationMs / s.summary($0.method)!.wallMs!.median)) its median" }
                        .joined(separator: " and the first ")
                        + ": a real incident meets that first-capture case. A plausible (unverified) cause on this VM: it runs "
                        + "virtio_balloon and a DAMON `pageout` scheme, so free memory may have been handed back to the host, and "
                        + "the first large write into the page cache pays to get it back; later cores reuse the pages the previous, "
                        + "deleted core freed."
                }
                md += "\n"
            }
            let stops = s.samples.compactMap(\.stopMs)
            if let stop = Spread(stops) { md += "\nNative: all threads stopped in \(formatMs(stop.median)) (median).\n" }
            for m in s.summaries where !m.failures.isEmpty {
                md += "\n\(m.method) failures: " + m.failures.prefix(3).joined(separator: "; ") + "\n"
            }
            if let gdb = s.gdb {
                md += "\ngdb check: **\(gdb.pass ? "PASS" : "FAIL")**: process \(gdb.processThreads) threads, native core "
                    + "\(gdb.coreThreads) NT_PRSTATUS notes, gdb listed \(gdb.gdbThreads) threads; \(gdb.detail).\n"
            }
            if let e = s.error { md += "\n**Scenario stopped early:** \(e)\n" }
        }
        md += "\n### Targets\n\n" + targetTable(r.targets)
        return md
    }

    /// A PASS/FAIL table.
    static func targetTable(_ targets: [TargetCheck]) -> String {
        var md = "| | target | measured |\n|---|---|---|\n"
        for t in targets {
            md += "| **\(t.pass ? "PASS" : "FAIL")** | \(t.target) | \(t.measured.replacingOccurrences(of: "|", with: "\\|")) |\n"
        }
        return md
    }
}
