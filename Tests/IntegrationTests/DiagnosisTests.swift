import DefibPOSIX
import Foundation
import Glibc
import Testing

/// One way to make the supervised proxy fail, and the diagnosis it must get.
struct DiagnosisCase: Sendable, CustomTestStringConvertible {
    enum Trigger: Sendable {
        /// `defib ctl fault KIND`.
        case fault(String)
        /// `defib ctl fault KIND`, then a signal to the proxy (SIGHUP: the reload whose write the leaked read blocks).
        case faultThenSignal(String, Int32)
        /// A signal to the proxy.
        case signal(Int32)
    }

    var name: String
    var trigger: Trigger
    var expected: String
    var testDescription: String { "\(name) → \(expected)" }

    static let all: [DiagnosisCase] = [
        DiagnosisCase(name: "timeout-race", trigger: .fault("timeout-race"), expected: "corrupted-lock-word"),
        DiagnosisCase(name: "leaked-read", trigger: .faultThenSignal("leaked-read", SIGHUP), expected: "leaked-read-lock"),
        DiagnosisCase(name: "guard-across-else", trigger: .fault("guard-across-else"), expected: "self-deadlock"),
        DiagnosisCase(name: "write-then-read", trigger: .fault("write-then-read"), expected: "self-deadlock"),
        DiagnosisCase(name: "slow-holder", trigger: .fault("slow-holder"), expected: "slow-holder"),
        DiagnosisCase(name: "dead-loop", trigger: .fault("dead-loop"), expected: "dead-loop"),
        DiagnosisCase(name: "crash", trigger: .fault("crash"), expected: "signaled"),
        DiagnosisCase(name: "exit", trigger: .fault("exit"), expected: "exited"),
        DiagnosisCase(name: "SIGSTOP", trigger: .signal(SIGSTOP), expected: "stopped"),
    ]
}

/// The real `defib run … -- defib-proxy` for each fault: the incident's diagnosis names the right kind of
/// hang (or death), from the evidence the supervisor reads without the service's help.
@Suite(.serialized, .timeLimit(.minutes(3)))
struct DiagnosisTests {
    /// Runs the case and returns the first incident once its diagnosis is known.
    func diagnose(_ c: DiagnosisCase) throws -> [String: Any] {
        let dir = Scratch("diagnosis"); defer { dir.remove() }
        let state = "\(dir.path)/state"
        let defib = try Background([Binaries.defib, "run", "--state-dir", state, "--interval", "100", "--deadline", "1000",
                                    "--capture", "none", "--", Binaries.proxy, "--listen", "127.0.0.1:\(freePort())",
                                    "--route", "app.test=127.0.0.1:9", "--reload-interval", "0", "--threads", "2"],
                                   log: "\(dir.path)/defib.log")
        defer {
            let proxy = pidOfChild(of: defib.pid)
            defib.stop()
            // A proxy left stopped would never see the supervisor's SIGTERM.
            if let proxy { kill(proxy, SIGCONT) }
        }
        // Ready in defib's eyes (its own first pong), not only answering ours: a fault before that would
        // be a start timeout.
        let ready = try waitUntil(timeoutMs: 30_000) {
            try runCommand([Binaries.defib, "ctl", "--state-dir", state, "ping", "ready"]).stdout == "pong ready\n"
                && defib.log.contains("is ready")
        }
        try #require(ready, "the proxy never answered: \(defib.log)")
        let proxy = try #require(pidOfChild(of: defib.pid))
        func fault(_ kind: String) throws {
            let r = try runCommand([Binaries.defib, "ctl", "--state-dir", state, "fault", kind])
            #expect(r.stdout.hasPrefix("ok fault \(kind) armed"), "\(r.stdout)\(r.stderr)")
        }
        switch c.trigger {
        case let .fault(kind):
            try fault(kind)
        case let .faultThenSignal(kind, signal):
            try fault(kind)
            #expect(kill(proxy, signal) == 0)
        case let .signal(signal):
            #expect(kill(proxy, signal) == 0)
        }
        var incident: [String: Any]?
        let diagnosed = try waitUntil(timeoutMs: 45_000) {
            incident = try incidentsJSON(stateDir: state).first
            return !(incident?["diagnosis"] as? String ?? "").isEmpty
        }
        try #require(diagnosed, "no diagnosed incident for \(c.name): \(defib.log)")
        let found = try #require(incident)
        #expect(found["pid"] as? Int == Int(proxy), "the incident is about the instance we broke")
        return found
    }

    @Test(arguments: DiagnosisCase.all)
    func eachFaultGetsItsDiagnosis(_ c: DiagnosisCase) throws {
        let incident = try diagnose(c)
        let diagnosis = incident["diagnosis"] as? String ?? ""
        print("\(c.name): \(diagnosis)")
        #expect(diagnosis.hasPrefix(c.expected + ":"), "\(c.name): '\(diagnosis)'\nevidence: \(incident["diagnosis_evidence"] ?? "none")\nlocks: \(incident["lock_state"] ?? "none")\nthreads: \(incident["thread_states"] ?? "")")
        let catalog = (incident["lock_state"] as? [[String: Any]] ?? []).first { $0["name"] as? String == "catalog" && $0["source"] as? String == "memory" }
        switch c.name {
        case "leaked-read":
            // Named: the event-loop thread holding the leaked guard, and how long it has held it.
            #expect(diagnosis.contains("but no thread is running inside it: thread ") && diagnosis.contains("holding it for"), "\(diagnosis)")
            #expect(diagnosis.contains("writer catalog.reload"), "\(diagnosis)")
            #expect(catalog?["holder_waiting_for_readers"] as? Bool == true, "\(catalog ?? [:])")
            #expect((catalog?["read_holders"] as? [[String: Any]])?.count == 1, "\(catalog ?? [:])")
        case "guard-across-else":
            #expect(diagnosis.contains("thread 'catalog-updates' waits for itself"), "\(diagnosis)")
            let events = catalog?["events"] as? [[String: Any]] ?? []
            #expect(events.contains { $0["kind"] as? String == "write-while-holding-read" }, "\(events)")
        case "write-then-read":
            #expect(diagnosis.contains("holds the write lock of 'catalog'") && diagnosis.contains("waits to take it again for reading")
                    && diagnosis.contains("'catalog-check' waits for itself"), "\(diagnosis)")
        case "slow-holder":
            // Named by its label, with how long it has held the lock.
            #expect(diagnosis.contains("catalog.update app=app.test") && diagnosis.contains("has held the write lock of 'catalog' for"), "\(diagnosis)")
            #expect(catalog?["holder_waiting_for_readers"] as? Bool == false, "\(catalog ?? [:])")
        case "timeout-race":
            #expect((incident["lock_words"] as? [String] ?? []).contains("0xfffffffffffffffe"), "\(incident["lock_words"] ?? "")")
        default:
            break
        }
    }
}
