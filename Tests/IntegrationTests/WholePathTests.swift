import DefibPOSIX
import Foundation
import Glibc
import Testing

/// The whole path with real parts: defib supervising defib-proxy in front of a real HTTP backend,
/// the parking_lot `try_write_for` race injected, detection, gcore, kill, restart, incident.
@Suite(.serialized, .timeLimit(.minutes(3)))
struct WholePathTests {
    @Test func timeoutRaceIsDetectedCapturedAndRecovered() throws {
        let dir = Scratch("whole"); defer { dir.remove() }
        // A real backend.
        let backendPort = freePort()
        let site = "\(dir.path)/site"
        try FileManager.default.createDirectory(atPath: site, withIntermediateDirectories: true)
        try "hello from the backend\n".write(toFile: "\(site)/hello.txt", atomically: true, encoding: .utf8)
        let backend = try Background(["python3", "-m", "http.server", String(backendPort), "--bind", "127.0.0.1", "--directory", site],
                                     log: "\(dir.path)/backend.log")
        defer { backend.stop() }
        // The supervised proxy.
        let proxyPort = freePort()
        let state = "\(dir.path)/state"
        let defib = try Background([Binaries.defib, "run", "--state-dir", state, "--interval", "100", "--deadline", "1000",
                                    "--capture", "gcore", "--", Binaries.proxy, "--listen", "127.0.0.1:\(proxyPort)",
                                    "--route", "app.test=127.0.0.1:\(backendPort)"],
                                   log: "\(dir.path)/defib.log")
        defer { defib.stop() }

        let served = waitUntil(timeoutMs: 30_000) { httpGet(port: proxyPort, path: "/hello.txt", host: "app.test")?.status == 200 }
        try #require(served, "proxy never served: \(defib.log)")
        #expect(httpGet(port: proxyPort, path: "/hello.txt", host: "app.test")?.body == "hello from the backend\n")
        #expect(httpGet(port: proxyPort, path: "/healthz", host: "anything")?.status == 200)

        let locks = try runCommand([Binaries.defib, "ctl", "--state-dir", state, "locks"])
        #expect(locks.code == 0)
        #expect(locks.stdout.contains("\"catalog\""), "\(locks.stdout)")
        let firstPid = try #require(pidOfChild(of: defib.pid))

        // Inject the race.
        let fault = try runCommand([Binaries.defib, "ctl", "--state-dir", state, "fault", "timeout-race"])
        #expect(fault.code == 0, "\(fault.stdout)\(fault.stderr)")
        #expect(fault.stdout.hasPrefix("ok"), "\(fault.stdout)")

        // The supervisor notices, captures, restarts, and closes the incident.
        let recovered = try waitUntil(timeoutMs: 60_000) {
            try incidentsJSON(stateDir: state).first?["outcome"] as? String == "recovered"
        }
        try #require(recovered, "no recovered incident: \(defib.log)")
        let incident = try #require(try incidentsJSON(stateDir: state).first)
        #expect(incident["cause"] as? String == "missed-heartbeat")
        #expect(incident["pid"] as? Int == Int(firstPid))
        let newPid = try #require(incident["new_pid"] as? Int)
        #expect(newPid != Int(firstPid))
        #expect(kill(firstPid, 0) != 0, "the hung instance must be gone")
        // The word read from memory at the kill (0x…ff once a reader parked, step 8 of the spec) and the
        // flight recorder's word right after the timed-out writer's revert (0x…fe, step 7).
        let words = incident["lock_words"] as? [String] ?? []
        #expect(words.contains("0xfffffffffffffffe"), "lock words: \(words)")
        #expect(words.allSatisfy { $0 == "0xfffffffffffffffe" || $0 == "0xffffffffffffffff" }, "lock words: \(words)")
        #expect((incident["diagnosis"] as? String)?.hasPrefix("corrupted-lock-word") == true)
        #expect(incident["detected_at"] is String)
        #expect((incident["capture_ms"] as? Double ?? 0) > 0)
        let corePath = try #require(incident["core_path"] as? String, "no core: \(incident)")
        #expect((incident["core_bytes"] as? Int ?? 0) > 0)
        var st = stat()
        #expect(stat(corePath, &st) == 0)
        #expect(st.st_mode & 0o777 == 0o600, "cores are private")

        // gdb opens the core and sees the proxy's threads.
        let gdb = try runCommand(["gdb", "-batch", "-nx", "-ex", "info threads", Binaries.proxy, corePath], timeoutMs: 120_000)
        let threadLines = gdb.stdout.split(separator: "\n").filter { $0.range(of: #"^\*?\s+\d+\s+Thread"#, options: .regularExpression) != nil }
        #expect(threadLines.count >= 3, "gdb saw \(threadLines.count) threads:\n\(gdb.stdout)\n\(gdb.stderr)")

        // The new instance answers and serves.
        #expect(try runCommand([Binaries.defib, "ctl", "--state-dir", state, "ping", "after"]).stdout == "pong after\n")
        #expect(httpGet(port: proxyPort, path: "/hello.txt", host: "app.test")?.status == 200)

        // Stacks arrive off the critical path.
        let stacked = try waitUntil(timeoutMs: 90_000) {
            let r = try runCommand([Binaries.defib, "incidents", "info", String(incident["id"] as? Int ?? 0), "--state-dir", state, "--json"])
            guard let obj = try? JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any] else { return false }
            return (obj["stacks"] as? String)?.contains("Thread") == true
        }
        #expect(stacked, "stacks never stored: \(defib.log)")

        #expect(defib.stop() == .exited(code: 0))
        #expect(waitUntil(timeoutMs: 3000) { kill(Int32(newPid), 0) != 0 }, "the proxy outlived its supervisor")
    }
}
