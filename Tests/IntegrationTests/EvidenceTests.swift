import DefibPOSIX
import Foundation
import Glibc
import Testing

/// What happens to cores after the restart, with the real binaries and a real service that hangs again
/// and again (Fixtures/pingable.py, hang-after:N): retention, compression, and a full disk.
@Suite(.serialized, .timeLimit(.minutes(3)))
struct EvidenceTests {
    static var pingable: String { "\(Binaries.fixtures)/pingable.py" }

    /// A config for pingable.py that hangs after `hangAfter` pings, with extra TOML appended.
    static func config(_ dir: Scratch, hangAfter: Int, extra: String) throws -> String {
        let path = "\(dir.path)/defib.toml"
        try """
            state_dir = "\(dir.path)/state"
            [service]
            name = "pingable"
            argv = ["\(pingable)"]
            env = { MODE = "hang-after:\(hangAfter)" }
            [heartbeat]
            interval_ms = 50
            deadline_ms = 400
            [restart]
            intensity_max = 50
            backoff_initial_ms = 50
            backoff_max_ms = 50
            \(extra)
            """.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    @Test func retentionKeepsTheFirstCoreOfTheSignatureAndTheNewestWithinTheLimit() throws {
        let dir = Scratch("retention"); defer { dir.remove() }
        let cfg = try Self.config(dir, hangAfter: 5, extra: "[capture]\nmethod = \"native\"\nstacks = false\n[retention]\nmax_per_service = 2\n")
        let defib = try Background([Binaries.defib, "run", "--config", cfg], log: "\(dir.path)/defib.log")
        defer { defib.stop() }
        let state = "\(dir.path)/state"
        let four = waitUntil(timeoutMs: 60_000) {
            ((try? incidentsJSON(stateDir: state)) ?? []).filter { $0["outcome"] as? String == "recovered" }.count >= 4
        }
        #expect(four, "\(defib.log)")
        defib.stop()
        let incidents = try incidentsJSON(stateDir: state).sorted { ($0["id"] as? Int ?? 0) < ($1["id"] as? Int ?? 0) }
        let withCore = incidents.filter { $0["core_path"] is String }
        let files = try FileManager.default.contentsOfDirectory(atPath: "\(state)/cores").filter { $0.hasPrefix("core.") }
        #expect(files.count == withCore.count && withCore.count <= 2, "files \(files), incidents with a core \(withCore.count)")
        #expect((withCore.first?["id"] as? Int) == 1, "the first core of the signature is kept: \(withCore.map { $0["id"] ?? "" })")
        let trimmed = incidents.filter { ($0["notes"] as? [String] ?? []).contains { $0.contains("removed by retention (max-per-service)") } }
        #expect(!trimmed.isEmpty && trimmed.allSatisfy { $0["core_path"] is NSNull })
        #expect(Set(incidents.compactMap { $0["signature"] as? String }).count == 1, "repeats share a signature")
    }

    @Test func coresAreCompressedAfterTheStacksAndGdbStillOpensThem() throws {
        let dir = Scratch("compress"); defer { dir.remove() }
        let cfg = try Self.config(dir, hangAfter: 5, extra: "[capture]\nmethod = \"native\"\nstacks = true\ncompress = \"gzip\"\n")
        let defib = try Background([Binaries.defib, "run", "--config", cfg], log: "\(dir.path)/defib.log")
        defer { defib.stop() }
        let state = "\(dir.path)/state"
        var incident: [String: Any] = [:]
        let compressed = waitUntil(timeoutMs: 60_000) {
            guard let first = ((try? incidentsJSON(stateDir: state)) ?? []).last, (first["core_path"] as? String)?.hasSuffix(".gz") == true else { return false }
            incident = first
            return true
        }
        defib.stop()
        #expect(compressed, "\(defib.log)")
        let id = String(incident["id"] as? Int ?? 0)
        let info = try runCommand([Binaries.defib, "incidents", "info", id, "--state-dir", state, "--json"])
        let object = try #require(try JSONSerialization.jsonObject(with: Data(info.stdout.utf8)) as? [String: Any])
        #expect((object["stacks"] as? String)?.contains("Thread") == true, "stacks were taken before the compression")
        #expect((object["notes"] as? [String] ?? []).contains { $0.hasPrefix("core compressed with gzip") })
        let core = try #require(incident["core_path"] as? String)
        #expect(!FileManager.default.fileExists(atPath: String(core.dropLast(3))), "the uncompressed core is gone")
        let gdb = try runCommand([Binaries.defib, "incidents", "gdb", id, "--state-dir", state, "--", "-batch", "-nx", "-ex", "info threads"],
                                 env: ["TMPDIR": dir.path], timeoutMs: 120_000)
        #expect(gdb.code == 0 && gdb.stdout.contains("Thread"), "\(gdb.stdout)\n\(gdb.stderr)")
    }

    @Test(.enabled(if: getuid() == 0, "needs root to mount a small tmpfs"))
    func aFullDiskFailsTheCaptureCleanlyAndTheRestartStillHappens() throws {
        let dir = Scratch("diskfull"); defer { dir.remove() }
        let cores = "\(dir.path)/tiny"
        try FileManager.default.createDirectory(atPath: cores, withIntermediateDirectories: true)
        try #require(try runCommand(["mount", "-t", "tmpfs", "-o", "size=256k", "defib-test", cores]).code == 0)
        defer { _ = try? runCommand(["umount", "-l", cores]) }
        let cfg = try Self.config(dir, hangAfter: 5, extra: "[capture]\nmethod = \"native\"\ndirectory = \"\(cores)\"\n")
        let defib = try Background([Binaries.defib, "run", "--config", cfg], log: "\(dir.path)/defib.log")
        defer { defib.stop() }
        let state = "\(dir.path)/state"
        let recovered = waitUntil(timeoutMs: 30_000) {
            ((try? incidentsJSON(stateDir: state)) ?? []).contains { $0["outcome"] as? String == "recovered" }
        }
        defib.stop()
        #expect(recovered, "the restart happens although the core could not be written: \(defib.log)")
        let incident = try #require(try incidentsJSON(stateDir: state).last)
        #expect(incident["core_path"] is NSNull)
        #expect((incident["capture_error"] as? String)?.contains("disk full") == true, "\(incident["capture_error"] ?? "nil")")
        let left = try FileManager.default.contentsOfDirectory(atPath: cores)
        #expect(left.isEmpty, "no partial core left: \(left)")
    }
}
