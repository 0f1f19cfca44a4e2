import DefibCore
import DefibPOSIX
import Foundation
import Glibc

/// The core-capture benchmark: the same proxy captured with the native writer and gcore, interleaved, and a fresh
/// proxy of the same kind per kernel dump (the kernel method kills the process).
struct CoreBench {
    /// One kind of process.
    struct Scenario {
        var id: String
        var title: String
        var ballastMB: Int
        var extraThreads: Int
    }

    var proxy: String
    var workDirectory: String
    var reps: Int
    var warmups: Int
    var budgetMs: Int
    var log: (String) -> Void

    /// The methods, in the order of the first round; later rounds rotate it so no method always follows another.
    /// `native-direct` is the native writer with O_DIRECT, as the supervisor captures a hung service.
    static let methods = ["native", "native-direct", "gcore", "kernel"]

    /// Runs one scenario. A failure of the long-lived process ends it early with `error` set and the figures so far.
    func run(_ scenario: Scenario) -> ScenarioResult {
        var result = ScenarioResult(id: scenario.id, title: scenario.title, ballastMB: scenario.ballastMB,
                                    extraThreads: scenario.extraThreads, processRSSBytes: 0, processThreads: 0,
                                    samples: [], summaries: [], gdb: nil, error: nil)
        let dir = "\(workDirectory)/\(scenario.id)"
        var live: ManagedChild?
        defer {
            live?.stop()
            removeTree(dir)
        }
        do {
            try makeDirectories(dir)
            let started = monotonicNanoseconds()
            let (proxyChild, socket) = try ProxyLauncher.start(binary: proxy, name: "defib-proxy (\(scenario.id))",
                                                               directory: "\(dir)/live", ballastMB: scenario.ballastMB,
                                                               extraThreads: scenario.extraThreads)
            live = proxyChild
            let readyMs = try ProxyLauncher.waitForPong(proxyChild, socket: socket, sinceNs: started)
            let status = try requireStatus(proxyChild)
            result.processRSSBytes = status.rssBytes
            result.processThreads = status.threads
            log("  \(scenario.title): pid \(proxyChild.pid) ready in \(formatMs(readyMs)), RSS \(formatBytes(status.rssBytes)), \(status.threads) threads")
            if scenario.ballastMB > 0 && status.rssBytes < Int64(scenario.ballastMB) << 20 {
                throw BenchError(kind: .startup, message:
                    "defib-proxy --ballast \(scenario.ballastMB) has only \(formatBytes(status.rssBytes)) resident (VmRSS)")
            }

            // Untimed: the first gdb start reads its own binary and the proxy's symbols from disk. The first native
            // captures are a fresh process's first ones, what a real incident meets (O_DIRECT first: it leaves the page
            // cache as cold as it found it for the buffered one).
            for w in 0..<warmups {
                for method in ["native-direct", "native", "gcore"] {
                    let s = try capture(method, rep: -1 - w, live: proxyChild, dir: dir, scenario: scenario)
                    result.warmupSamples.append(s)
                    log("    warm-up \(method): \(s.error ?? formatMs(s.durationMs))")
                }
            }
            for rep in 0..<reps {
                // The kernel's process is started before the round, so its start-up is not part of any figure.
                let order = (0..<Self.methods.count).map { Self.methods[($0 + rep) % Self.methods.count] }
                for method in order {
                    let s = try capture(method, rep: rep, live: proxyChild, dir: dir, scenario: scenario)
                    result.samples.append(s)
                    log("    rep \(rep) \(method): " + (s.error ?? "\(formatMs(s.durationMs)), \(formatBytes(s.fileBytes)) file, \(formatBytes(s.allocatedBytes)) allocated, \(s.threadsInCore.map(String.init) ?? "?") threads"))
                }
            }
            result.gdb = try verifyWithGdb(live: proxyChild, dir: dir)
            log("    gdb: \(result.gdb!.pass ? "PASS" : "FAIL") — \(result.gdb!.gdbThreads) threads listed; \(result.gdb!.detail)")
        } catch {
            result.error = "\(error)"
            log("    stopped: \(error)")
        }
        result.summaries = Self.methods.map { MethodSummary.of($0, in: result.samples) }
        return result
    }

    func requireStatus(_ child: ManagedChild) throws -> ProcessStatus {
        guard child.poll() == nil, let status = ProcessStatus.read(pid: child.pid) else {
            throw BenchError(kind: .capture, message: "\(child.name) (pid \(child.pid)) is gone: \(child.status.map(describe) ?? "no /proc entry"): \(child.logTail)")
        }
        return status
    }

    /// One capture with `method`; the core is measured and removed. Throws only when the long-lived process died.
    func capture(_ method: String, rep: Int, live: ManagedChild, dir: String, scenario: Scenario) throws -> CaptureSample {
        switch method {
        case "native", "native-direct":
            let before = try requireStatus(live)
            let path = "\(dir)/\(method)-\(rep).core"
            var options = NativeCoreOptions(budgetMs: budgetMs)
            options.directIO = method == "native-direct"
            let r = NativeCoreWriter.capture(pid: live.pid, path: path, options: options)
            defer { unlink(path) }
            var sample = measured(method, rep: rep, record: r.record, before: before)
            if options.directIO && !r.notes.contains("memory written with O_DIRECT") && sample.error == nil {
                sample.error = "O_DIRECT refused on this file system"
            }
            sample.stopMs = r.stopMs
            if r.truncated && sample.error == nil { sample.error = "truncated core" }
            _ = try requireStatus(live)
            return sample
        case "gcore":
            let before = try requireStatus(live)
            let record = GcoreCapture.capture(pid: live.pid, prefix: "\(dir)/gcore-\(rep)", budgetMs: budgetMs)
            defer { record.path.map { _ = unlink($0) } }
            let sample = measured("gcore", rep: rep, record: record, before: before)
            _ = try requireStatus(live)
            return sample
        default:
            return kernelCapture(rep: rep, dir: dir, scenario: scenario)
        }
    }

    /// A sample from a record: sizes from stat(2), threads from the core's notes.
    func measured(_ method: String, rep: Int, record: CaptureRecord, before: ProcessStatus) -> CaptureSample {
        var sample = CaptureSample(method: method, rep: rep, durationMs: record.durationMs, fileBytes: 0, allocatedBytes: 0,
                                   threadsInCore: nil, processThreads: before.threads, processRSSBytes: before.rssBytes,
                                   stopMs: nil, error: record.error)
        guard let path = record.path else {
            if sample.error == nil { sample.error = "\(method) wrote no core" }
            return sample
        }
        if let sizes = fileSizes(path) {
            sample.fileBytes = sizes.size; sample.allocatedBytes = sizes.allocated
        } else {
            sample.error = sample.error ?? "stat(\(path)): \(String(cString: strerror(errno)))"
        }
        do { sample.threadsInCore = try CoreFile.threadCount(path: path) } catch {
            sample.error = sample.error ?? "\(error)"
        }
        return sample
    }

    /// A fresh process of the scenario's kind, dumped by the kernel (which kills it), reaped here.
    func kernelCapture(rep: Int, dir: String, scenario: Scenario) -> CaptureSample {
        var failed = CaptureSample(method: "kernel", rep: rep, durationMs: 0, fileBytes: 0, allocatedBytes: 0, threadsInCore: nil,
                                   processThreads: 0, processRSSBytes: 0, stopMs: nil, error: nil)
        let kdir = "\(dir)/kernel-\(rep)"
        var victim: ManagedChild?
        defer {
            victim?.stop()
            removeTree(kdir)
        }
        do {
            let started = monotonicNanoseconds()
            let (child, socket) = try ProxyLauncher.start(binary: proxy, name: "defib-proxy (\(scenario.id), kernel rep \(rep))",
                                                          directory: kdir, ballastMB: scenario.ballastMB,
                                                          extraThreads: scenario.extraThreads)
            victim = child
            _ = try ProxyLauncher.waitForPong(child, socket: socket, sinceNs: started)
            let before = try requireStatus(child)
            failed.processThreads = before.threads; failed.processRSSBytes = before.rssBytes
            switch KernelCoreCapture.begin(pid: child.pid, pidfd: child.child.pidfd) {
            case let .failure(error):
                failed.error = "\(error)"
                return failed
            case let .success(request):
                let status = waitForChild(child.child, timeoutMs: budgetMs)
                child.markReaped(status)
                let result = KernelCoreCapture.finish(request, status: status)
                defer { result.record.path.map { _ = unlink($0) } }
                return measured("kernel", rep: rep, record: result.record, before: before)
            }
        } catch {
            failed.error = "\(error)"
            return failed
        }
    }

    /// An extra native core of the live process, opened with gdb: `info threads` must list every thread.
    func verifyWithGdb(live: ManagedChild, dir: String) throws -> GdbCheck {
        let before = try requireStatus(live)
        let path = "\(dir)/verify.core"
        defer { unlink(path) }
        let r = NativeCoreWriter.capture(pid: live.pid, path: path, options: NativeCoreOptions(budgetMs: budgetMs))
        guard r.record.path != nil, !r.truncated else {
            return GdbCheck(processThreads: before.threads, coreThreads: r.threads, gdbThreads: 0, pass: false,
                            detail: "native capture failed: \(r.record.error ?? "no core")")
        }
        let coreThreads = (try? CoreFile.threadCount(path: path)) ?? -1
        let outPath = "\(dir)/gdb.out"
        defer { unlink(outPath) }
        let gdbChild = try ManagedChild(name: "gdb", argv: ["gdb", "-batch", "-nx", "-q", "-ex", "set pagination off",
                                                            "-ex", "info threads", proxy, path],
                                        workingDirectory: dir, logPath: outPath)
        guard let status = gdbChild.wait(timeoutMs: 300_000) else {
            gdbChild.stop(graceMs: 1000)
            return GdbCheck(processThreads: before.threads, coreThreads: coreThreads, gdbThreads: 0, pass: false,
                            detail: "gdb did not finish within 300 s")
        }
        gdbChild.stop()
        let output = (readTextFile(outPath, maxBytes: 4 << 20) ?? "")
        let listed = GdbOutput.threadCount(infoThreads: output)
        let complaints = GdbOutput.complaints(output)
        let pass = status == .exited(code: 0) && listed == before.threads && coreThreads == before.threads && r.threads == before.threads
        var detail = "gdb \(describe(status))"
        if !complaints.isEmpty { detail += "; gdb said: " + complaints.joined(separator: " | ") }
        return GdbCheck(processThreads: before.threads, coreThreads: coreThreads, gdbThreads: listed, pass: pass, detail: detail)
    }
}

/// Reading gdb's batch output. Pure.
enum GdbOutput {
    /// Rows of `info threads`: "* 1    Thread 0x7f… (LWP 123) …" or "  2    LWP 124 …".
    static func threadCount(infoThreads text: String) -> Int {
        var lwps = Set<String>()
        for line in text.split(separator: "\n") {
            var rest = Substring(line.drop { $0 == " " || $0 == "*" })
            guard let first = rest.first, first.isNumber else { continue }
            rest = rest.drop { $0.isNumber }
            rest = rest.drop { $0 == " " || $0 == "\t" }
            guard rest.hasPrefix("Thread ") || rest.hasPrefix("LWP ") || rest.hasPrefix("process ") else { continue }
            if let range = rest.range(of: "LWP ") {
                lwps.insert(String(rest[range.upperBound...].prefix { $0.isNumber }))
            } else {
                lwps.insert(String(rest.prefix { $0 != " " }))
            }
        }
        return lwps.count
    }

    /// gdb's distinct warnings and errors (told apart with numbers such as thread ids ignored), each as first seen
    /// with how often it came, so the report shows what gdb complained about without a line per thread.
    static func complaints(_ text: String, max: Int = 3) -> [String] {
        var order: [String] = []
        var counts: [String: Int] = [:]
        var firstSeen: [String: String] = [:]
        for line in text.split(separator: "\n") {
            guard let start = line.range(of: "warning:") ?? line.range(of: "error:") ?? line.range(of: "Error:")
                ?? line.range(of: "is not a core dump") else { continue }
            let message = String(line[start.lowerBound...].prefix(140))
            var key = "", inNumber = false
            for ch in message {
                if ch.isNumber { if !inNumber { key += "N" }; inNumber = true } else { key.append(ch); inNumber = false }
            }
            if counts[key] == nil { order.append(key); firstSeen[key] = message }
            counts[key, default: 0] += 1
        }
        return order.prefix(max).map { counts[$0]! > 1 ? "\(firstSeen[$0]!) (×\(counts[$0]!))" : firstSeen[$0]! }
    }
}
