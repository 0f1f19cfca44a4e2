import DefibPOSIX
import Foundation
import Glibc
import Testing

/// The real `defib run … -- defib-proxy` with its listening socket passed: a corrupted lock word is declared on
/// proof at the first miss (well before the 1000 ms deadline), the replacement starts while the core is written
/// from the frozen instance — which runs not one instruction more — and the core is complete; a leaked read lock
/// (no proof) still waits for the deadline.
@Suite(.serialized, .timeLimit(.minutes(3)))
struct ProofTests {
    struct Supervised {
        let defib: Background
        let state: String
        let port: Int
        let dir: Scratch

        /// `firstInstanceArgs`: extra flags for the first instance only (a shell `exec`s the proxy, so the pid is its own).
        init(_ name: String, firstInstanceArgs: [String] = []) throws {
            dir = Scratch(name)
            state = "\(dir.path)/state"
            port = freePort()
            let proxy = [Binaries.proxy, "--route", "app.test=127.0.0.1:9", "--reload-interval", "0", "--threads", "2"]
            var service = proxy
            if !firstInstanceArgs.isEmpty {
                let mark = "\(dir.path)/first-instance-started"
                service = ["/bin/sh", "-c", "if [ -e \(mark) ]; then exec \(proxy.joined(separator: " ")); else : > \(mark); exec \((proxy + firstInstanceArgs).joined(separator: " ")); fi"]
            }
            defib = try Background([Binaries.defib, "run", "--state-dir", state, "--interval", "100", "--deadline", "1000",
                                    "--socket", "http=127.0.0.1:\(port)", "--"] + service,
                                   log: "\(dir.path)/defib.log")
            let ready = try waitUntil(timeoutMs: 60_000) {
                try runCommand([Binaries.defib, "ctl", "--state-dir", state, "ping", "ready"]).stdout == "pong ready\n" && defib.log.contains("is ready")
            }
            if !ready { stop(); throw TestFailure("the proxy never became ready: \(defib.log)") }
        }

        func fault(_ kind: String) throws {
            let r = try runCommand([Binaries.defib, "ctl", "--state-dir", state, "fault", kind])
            #expect(r.stdout.hasPrefix("ok fault \(kind) armed"), "\(r.stdout)\(r.stderr)")
        }

        /// The first incident once `done` says it is complete enough.
        func incident(timeoutMs: Int = 45_000, until done: ([String: Any]) -> Bool) throws -> [String: Any] {
            var found: [String: Any]?
            _ = try waitUntil(timeoutMs: timeoutMs) {
                found = try incidentsJSON(stateDir: state).first
                return found.map(done) ?? false
            }
            return try #require(found, "no incident: \(defib.log)")
        }

        func stop() {
            defib.stop()
            dir.remove()
        }
    }

    @Test func aCorruptedWordIsDeclaredOnProofAndTheCoreIsWrittenWhileTheReplacementStarts() throws {
        let s = try Supervised("proof-race")
        defer { s.stop() }
        let proxy = try #require(pidOfChild(of: s.defib.pid))
        try s.fault("timeout-race")
        let incident = try s.incident { ($0["outcome"] as? String) == "recovered" && ($0["killed_at"] as? String) != nil }
        #expect(incident["pid"] as? Int == Int(proxy))
        #expect(incident["declared_on"] as? String == "proof", "\(incident["notes"] ?? "")")
        let silence = try #require(incident["silence_ms"] as? Double)
        #expect(silence < 1000, "declared before the deadline: \(silence) ms")
        let notes = incident["notes"] as? [String] ?? []
        #expect(notes.contains { $0.hasPrefix("declared on proof after ") && $0.contains(": corrupted-lock-word: lock 'catalog' word 0xffffffffffffff") }, "\(notes)")
        #expect((incident["diagnosis"] as? String ?? "").hasPrefix("corrupted-lock-word:"))
        #expect(incident["capture_order"] as? String == "restart-while-writing", "\(notes)")
        let timeline = try #require(incident["timeline"] as? [String: Any])
        for key in ["detected", "replacement_started", "ready", "capture_done", "killed"] {
            #expect(timeline[key] is String, "timeline.\(key): \(timeline)")
        }
        // The core is complete and gdb reads every thread from it.
        #expect(incident["capture_error"] is NSNull, "\(incident["capture_error"] ?? "")")
        let core = try #require(incident["core_path"] as? String)
        #expect(access(core, R_OK) == 0)
        let id = try #require(incident["id"] as? Int)
        var info: [String: Any] = [:]
        let stacked = try waitUntil(timeoutMs: 60_000) {
            let r = try runCommand([Binaries.defib, "incidents", "info", String(id), "--state-dir", s.state, "--json"])
            info = (try? JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any]) ?? [:]
            return (info["stacks"] as? String).map { !$0.isEmpty } ?? false
        }
        #expect(stacked, "gdb never read the core: \(s.defib.log)")
        let threads = try #require(incident["threads"] as? Int)
        let stacks = info["stacks"] as? String ?? ""
        #expect(stacks.components(separatedBy: "\nThread ").count + (stacks.hasPrefix("Thread ") ? 0 : -1) == threads,
                "every thread of the core has its stack: \(threads) threads\n\(stacks.prefix(2000))")
    }

    @Test func aLeakedReadLockIsNoProofAndWaitsForTheDeadline() throws {
        let s = try Supervised("proof-leak")
        defer { s.stop() }
        let proxy = try #require(pidOfChild(of: s.defib.pid))
        try s.fault("leaked-read")
        #expect(kill(proxy, SIGHUP) == 0)   // the reload whose write waits for the leaked reader
        let incident = try s.incident { !($0["diagnosis"] as? String ?? "").isEmpty }
        #expect(incident["declared_on"] as? String == "deadline")
        #expect((incident["silence_ms"] as? Double ?? 0) >= 1000, "never before the deadline: \(incident["silence_ms"] ?? "")")
        #expect((incident["diagnosis"] as? String ?? "").hasPrefix("leaked-read-lock:"))
        #expect(!(incident["notes"] as? [String] ?? []).contains { $0.hasPrefix("declared on proof") })
        #expect(s.defib.log.contains("no proof of a deadlock in pid \(proxy): every lock word read is valid"), "\(s.defib.log)")
    }

    /// The first instance holds 512 MiB of heap, so its core takes a while; the replacement (without the heap) is
    /// up and answering long before it is done, and the frozen instance — every thread stopped by ptrace — uses
    /// no CPU (so serves nothing) from then until it is killed.
    @Test func theFrozenInstanceNeverRunsAfterTheReplacementStarted() throws {
        let s = try Supervised("proof-frozen", firstInstanceArgs: ["--ballast", "512"])
        defer { s.stop() }
        let old = try #require(pidOfChild(of: s.defib.pid))
        try s.fault("timeout-race")
        // Until the old instance is gone: sample it at every moment both run (its threads' states and CPU time, when),
        // and whether a request was answered meanwhile.
        var samples: [(at: Date, states: Set<String>, cpu: UInt64)] = []
        var answeredDuringOverlap = 0
        let gone = waitUntil(timeoutMs: 30_000) {
            let children = childProcesses(of: s.defib.pid)
            guard children.contains(old) else { return true }
            guard children.contains(where: { $0 != old }) else { return false }
            let at = Date()
            let sample = ProcSampler.sample(pid: old)
            guard !sample.threads.isEmpty else { return false }
            samples.append((at, Set(sample.threads.map(\.state)), sample.threads.reduce(UInt64(0)) { $0 + ($1.onCpuNs ?? 0) }))
            if httpGet(port: s.port, path: "/", host: "app.test", timeoutMs: 500) != nil, childProcesses(of: s.defib.pid).contains(old) {
                answeredDuringOverlap += 1
            }
            return false
        }
        #expect(gone, "the frozen instance outlived the test's bound")
        let incident = try s.incident { ($0["timeline"] as? [String: Any])?["capture_done"] is String && ($0["killed_at"] as? String) != nil }
        // Before its SIGKILL (the incident's `killed`, taken just before the signal went), every sample shows every thread
        // in a ptrace stop and not one nanosecond more CPU than the first: it ran nothing. (After the kill its exit uses
        // CPU to tear down its memory: not serving.)
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        let killed = try #require((incident["killed_at"] as? String).flatMap { formatter.date(from: $0) })
        let frozen = samples.filter { $0.at < killed }
        #expect(!frozen.isEmpty, "the old and the new instance never ran side by side before the kill (\(samples.count) samples): \(s.defib.log)")
        #expect(frozen.allSatisfy { $0.states == ["t"] }, "every thread of the frozen instance is in a ptrace stop: \(frozen.map(\.states))")
        #expect(Set(frozen.map(\.cpu)).count <= 1, "the frozen instance ran after its replacement started: \(frozen.map(\.cpu))")
        #expect(answeredDuringOverlap > 0, "the replacement answered while the old instance was frozen (\(samples.count) samples side by side): \(s.defib.log)")
        #expect(incident["capture_order"] as? String == "restart-while-writing")
        #expect(incident["capture_error"] is NSNull, "\(incident["capture_error"] ?? "")")
        #expect((incident["core_bytes"] as? Int ?? 0) > 512 << 20, "the whole heap is in the core")
        // The core was written once the replacement was ready, not while it started.
        let timeline = try #require(incident["timeline"] as? [String: Any])
        let ready = try #require((timeline["ready"] as? String).flatMap { formatter.date(from: $0) })
        let done = try #require((timeline["capture_done"] as? String).flatMap { formatter.date(from: $0) })
        #expect(ready <= done, "ready \(ready), core done \(done)")
        #expect((incident["notes"] as? [String] ?? []).contains { $0.hasPrefix("the core was written once the replacement was ready") })
    }
}
