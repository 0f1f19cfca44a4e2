import DefibCore
import DefibPOSIX
import Foundation
import Glibc
import Testing

/// The installed defib as a container's entrypoint: PID 1 of its own PID namespace (`unshare --pid --fork
/// --mount-proc`, what a container engine gives ENTRYPOINT), supervising the installed defib-proxy. A hang is
/// detected, a core written, the proxy restarted; SIGTERM stops it all. And the operator outside the
/// namespace (the host) can still reach it: `defib ctl` finds the supervisor by its namespace, not by the pid
/// 1 it recorded, and `defib incidents` says whose pids it shows.
@Suite(.serialized, .timeLimit(.minutes(4)))
struct ContainerEntrypointTests {
    static let unavailable: String? = {
        if getuid() != 0 { return "needs root to create a PID namespace" }
        if (try? runCommand(["unshare", "--pid", "--fork", "--mount-proc", "true"], timeoutMs: 10_000).code) != 0 {
            return "cannot create PID and mount namespaces here"
        }
        return nil
    }()

    /// The children of `pid` (all its threads'), from /proc.
    static func children(of pid: Int32) -> [Int32] {
        let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
        return tasks.flatMap { tid in
            ((try? String(contentsOfFile: "/proc/\(pid)/task/\(tid)/children", encoding: .utf8)) ?? "")
                .split(separator: " ").compactMap { Int32($0) }
        }
    }

    /// The last NSpid field: the pid a process has inside its innermost PID namespace.
    static func innermostPid(_ pid: Int32) -> Int32? {
        let status = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
        return status.split(separator: "\n").first { $0.hasPrefix("NSpid:") }?
            .split(whereSeparator: { $0 == "\t" || $0 == " " }).last.flatMap { Int32($0) }
    }

    @Test(.enabled(if: unavailable == nil, "skipped: \(unavailable ?? "")"))
    func installedDefibAsPid1HandlesAHangAndSigtermAndAnswersFromOutside() throws {
        let dir = Scratch("pid1"); defer { dir.remove() }
        let dest = dir.path + "/dest"
        try Install.install(into: dest)
        let defibBinary = dest + "/usr/bin/defib"
        let state = dir.path + "/state"
        let port = freePort()
        // No gdb on the core: not what this test is about, and CPU the tests beside it need.
        let config = dir.path + "/defib.toml"
        try "[capture]\nstacks = false\n".write(toFile: config, atomically: true, encoding: .utf8)
        let container = try Background(["unshare", "--pid", "--fork", "--mount-proc", "--kill-child",
                                        defibBinary, "run", "--config", config, "--state-dir", state, "--interval", "100", "--deadline", "1000",
                                        "--socket", "http=127.0.0.1:\(port)", "--",
                                        dest + "/usr/bin/defib-proxy", "--route", "app.test=127.0.0.1:9"],
                                       log: dir.path + "/container.log")
        defer { container.stop() }
        func ctl(_ line: String...) throws -> CommandResult { try runCommand([defibBinary, "ctl", "--state-dir", state] + line) }

        // From the host: ctl reaches the supervisor although supervisor.pid says 1.
        let answered = try waitUntil(timeoutMs: 30_000) { try ctl("ping", "host").stdout == "pong host\n" }
        let lastTry = try ctl("ping", "host")
        try #require(answered, "ctl from outside never got a pong: \(lastTry.stderr)\n\(container.log)")
        let record = try #require(SupervisorPidFile.read(runDirectory: state + "/run/defib-proxy"))
        #expect(record.pid == 1, "defib is the namespace's PID 1: \(record)")
        let ours = SupervisorPidFile.pidNamespace(of: "self")
        #expect(record.pidNamespace != nil && record.pidNamespace != ours, "\(record) vs ours \(ours ?? "?")")

        // The host's view of it: unshare's child, pid 1 inside, found by locate() under its host pid.
        let defibPid = try #require(Self.children(of: container.pid).first, "unshare has no child")
        #expect(Self.innermostPid(defibPid) == 1)
        #expect(processName(defibPid) == "defib")
        #expect(record.locate() == .running(pid: defibPid, sameNamespace: false))
        let firstProxy = try #require(Self.children(of: defibPid).first { processName($0) == "defib-proxy" })
        let firstProxyInside = try #require(Self.innermostPid(firstProxy))
        #expect(firstProxyInside != firstProxy, "the proxy has its own pid inside the namespace")
        #expect(httpGet(port: port, path: "/healthz", host: "any")?.status == 200, "the proxy serves on the socket defib passed")

        // A hang, injected from outside.
        let fault = try ctl("fault", "timeout-race")
        #expect(fault.code == 0 && fault.stdout.hasPrefix("ok"), "\(fault.stdout)\(fault.stderr)")
        func incidents() throws -> (list: [[String: Any]], stderr: String) {
            let r = try runCommand([defibBinary, "incidents", "--state-dir", state, "--json"])
            return ((try? JSONSerialization.jsonObject(with: Data(r.stdout.utf8))) as? [[String: Any]] ?? [], r.stderr)
        }
        // Recovered once the replacement answers; the core is written from the frozen instance after that, and the
        // frozen instance is killed once it is (restart while the core is written): wait for all three.
        let recovered = try waitUntil(timeoutMs: 60_000) {
            guard let first = try incidents().list.first else { return false }
            return first["outcome"] as? String == "recovered" && first["core_path"] is String && first["killed_at"] is String
        }
        try #require(recovered, "no recovered incident:\n\(container.log)")
        let listed = try incidents()
        let incident = try #require(listed.list.first)
        #expect(incident["cause"] as? String == "missed-heartbeat")
        #expect((incident["diagnosis"] as? String)?.hasPrefix("corrupted-lock-word") == true, "\(incident["diagnosis"] ?? "")")
        #expect(incident["pid"] as? Int == Int(firstProxyInside), "the incident's pid is the proxy's pid inside the namespace")
        #expect(incident["capture_method"] as? String == "native")
        let core = try #require(incident["core_path"] as? String, "no core: \(incident)")
        let magic = try FileHandle(forReadingFrom: URL(fileURLWithPath: core)).readData(ofLength: 4)
        #expect(magic == Data([0x7f, 0x45, 0x4c, 0x46]), "the core is not an ELF file")
        #expect((incident["new_pid"] as? Int).map { $0 != incident["pid"] as? Int } == true)
        // The operator is told whose pids these are.
        #expect(listed.stderr.contains("runs in PID namespace \(record.pidNamespace ?? "?") as pid 1 (pid \(defibPid) here)"),
                "incidents did not say the pids are another namespace's: \(listed.stderr)")

        // Restarted: the hung proxy is gone, a new one answers.
        #expect(waitUntil(timeoutMs: 5000) { kill(firstProxy, 0) != 0 }, "the hung proxy is still there")
        #expect(try ctl("ping", "again").stdout == "pong again\n")
        let secondProxy = try #require(Self.children(of: defibPid).first { processName($0) == "defib-proxy" })

        // SIGTERM to PID 1 from outside: the proxy is stopped, defib exits 0, the namespace is gone.
        #expect(kill(defibPid, SIGTERM) == 0)
        let status = container.wait(timeoutMs: 30_000)
        #expect(status == .exited(code: 0), "unshare (defib's exit status): \(String(describing: status))\n\(container.log)")
        #expect(kill(secondProxy, 0) != 0, "the proxy outlived its supervisor")
        #expect(container.log.contains("received SIGTERM"), "\(container.log)")

        // And ctl now says precisely why nothing answers.
        let after = try ctl("ping")
        #expect(after.code == 2)
        #expect(after.stderr.contains("supervisor.pid names pid 1 in PID namespace \(record.pidNamespace ?? "?")"), "\(after.stderr)")
    }
}
