import DefibPOSIX
import Foundation
import Glibc
import Testing

/// The proxy's dead loop on a CPU that four stress-ng workers also want: the loop gets only its fair share
/// of the core, so /proc calls the process starved and defib extends the deadline (the kill decision for a
/// starved process is unchanged) — but at the hang its threads never slept and it got hundreds of
/// milliseconds of CPU without answering, so the incident says dead-loop, not "unknown … starved".
/// The proxy and stress-ng share one CPU (taskset), both at nice 10: they contend with each other as the
/// test needs, while the rest of the machine — other tests, other builds — keeps the other cores and most
/// of that one.
@Suite(.serialized, .timeLimit(.minutes(3)))
struct OverloadDeadLoopTests {
    @Test func aDeadLoopUnderCPUContentionIsDiagnosedDeadLoop() throws {
        try #require(resolveExecutable("stress-ng") != nil, "stress-ng is installed by scripts/setup.sh")
        let cpus = sysconf(Int32(_SC_NPROCESSORS_ONLN))
        let cpu = String(max(0, cpus - 1))
        let dir = Scratch("overload-deadloop"); defer { dir.remove() }
        let state = "\(dir.path)/state"
        let defib = try Background([Binaries.defib, "run", "--state-dir", state, "--name", "proxy", "--interval", "100", "--deadline", "1000",
                                    "--capture", "none", "--", "nice", "-n", "10", "taskset", "-c", cpu, Binaries.proxy, "--listen", "127.0.0.1:\(freePort())",
                                    "--route", "app.test=127.0.0.1:9", "--reload-interval", "0", "--threads", "2"],
                                   log: "\(dir.path)/defib.log")
        defer {
            let proxy = pidOfChild(of: defib.pid)
            defib.stop()
            if let proxy { kill(proxy, SIGKILL) }
        }
        let ready = try waitUntil(timeoutMs: 30_000) {
            try runCommand([Binaries.defib, "ctl", "--state-dir", state, "ping", "ready"]).stdout == "pong ready\n"
                && defib.log.contains("is ready")
        }
        try #require(ready, "the proxy never answered: \(defib.log)")
        let stress = try Background(["nice", "-n", "10", "taskset", "-c", cpu, "stress-ng", "--cpu", "4", "--timeout", "90s"], log: "\(dir.path)/stress.log")
        defer { stress.stop(graceMs: 2000) }
        // Four workers running on that CPU before the fault.
        #expect(waitUntil(timeoutMs: 10_000) { childProcesses(of: stress.pid).count >= 4 }, "\(stress.log)")
        let fault = try runCommand([Binaries.defib, "ctl", "--state-dir", state, "fault", "dead-loop"])
        #expect(fault.stdout.hasPrefix("ok fault dead-loop armed"), "\(fault.stdout)\(fault.stderr)")
        var incident: [String: Any]?
        let diagnosed = try waitUntil(timeoutMs: 60_000) {
            incident = try incidentsJSON(stateDir: state).first
            return !(incident?["diagnosis"] as? String ?? "").isEmpty
        }
        try #require(diagnosed, "no diagnosed incident: \(defib.log)")
        let found = try #require(incident)
        let diagnosis = found["diagnosis"] as? String ?? ""
        let progress = found["progress"] as? [String: Any] ?? [:]
        print("dead loop under contention: \(diagnosis) (progress \(progress["kind"] ?? "?"): \(progress["reason"] ?? ""))")
        // The contended path was taken: /proc said starved and the deadline was extended, as for any starved process.
        #expect(progress["kind"] as? String == "starved", "not contended enough to exercise the case: \(progress)")
        #expect(diagnosis.hasPrefix("dead-loop:"), "'\(diagnosis)'\nevidence: \(found["diagnosis_evidence"] ?? "none")\nthreads: \(found["thread_states"] ?? "")")
    }
}
