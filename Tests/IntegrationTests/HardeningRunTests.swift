import DefibCore
import DefibPOSIX
import DefibTestKit
import Foundation
import Glibc
import Testing

/// `defib run` as an operator and an attacker would try it: a second copy, directories it did not make,
/// a program that cannot run, a damaged store, a supervisor SIGKILLed mid-capture, bad arguments — each
/// refused with exit 64 and a message naming the problem, or survived without losing the service or the
/// incident. Real processes, a real second user (`nobody`).
@Suite(.serialized, .timeLimit(.minutes(3)))
struct HardeningRunTests {
    static var pingable: String { "\(Binaries.fixtures)/pingable.py" }

    func run(_ state: String, name: String = "edge", mode: String = "ok", extra: [String] = [], program: [String]? = nil,
             env: [String: String] = [:], log: String) throws -> Background {
        try Background([Binaries.defib, "run", "--state-dir", state, "--name", name, "--interval", "50", "--deadline", "400",
                        "--capture", "none"] + extra + ["--"] + (program ?? [Self.pingable]),
                       env: env.merging(["MODE": mode]) { a, _ in a }, log: log)
    }

    func answers(_ state: String, name: String = "edge", token: String = "7") -> Bool {
        (try? runCommand([Binaries.defib, "ctl", "--state-dir", state, "--name", name, "ping", token]).stdout) == "pong \(token)\n"
    }

    static func mode(_ path: String) -> mode_t {
        var st = stat()
        return lstat(path, &st) == 0 ? st.st_mode & 0o7777 : 0
    }

    @Test func aSecondSupervisorOfTheSameServiceIsRefusedNamingTheFirst() throws {
        let dir = Scratch("second"); defer { dir.remove() }
        let state = dir.path + "/state"
        let first = try run(state, log: dir.path + "/first.log")
        defer { first.stop() }
        try #require(waitUntil(timeoutMs: 20_000) { answers(state) }, "\(first.log)")
        let child = try #require(pidOfChild(of: first.pid))

        let second = try runCommand([Binaries.defib, "run", "--state-dir", state, "--name", "edge", "--capture", "none", "--", Self.pingable],
                                    env: ["MODE": "ok"], timeoutMs: 30_000)
        #expect(second.code == 64, "\(second.stderr)")
        #expect(second.stderr.contains("another defib (pid \(first.pid)) already supervises 'edge'"), "\(second.stderr)")
        #expect(second.stderr.contains("\(state)/run/edge/supervisor.lock"))
        // The first is untouched: same child, still answering, no false incident.
        #expect(answers(state, token: "8"))
        #expect(pidOfChild(of: first.pid) == child)
        #expect(try incidentsJSON(stateDir: state).isEmpty)
        // Another service in the same state directory is another lock.
        let other = try run(state, name: "other", log: dir.path + "/other.log")
        defer { other.stop() }
        #expect(waitUntil(timeoutMs: 20_000) { answers(state, name: "other") }, "\(other.log)")

        // The first dies without a word: its lock goes with it, and the next one takes over.
        try first.child.signal(SIGKILL)
        _ = first.wait(timeoutMs: 10_000)
        let third = try run(state, log: dir.path + "/third.log")
        defer { third.stop() }
        #expect(waitUntil(timeoutMs: 20_000) { answers(state, token: "9") }, "\(third.log)")
        #expect(third.log.contains("took over the supervisor lock of edge from pid \(first.pid), which is no longer running"), "\(third.log)")
    }

    @Test func directoriesDefibDidNotMakeAreRefusedAndLeftAsTheyWere() throws {
        let dir = Scratch("unsafe"); defer { dir.remove() }
        let nobody = OtherUser.nobody
        func refused(_ state: String, _ extra: [String] = []) throws -> String {
            let r = try runCommand([Binaries.defib, "run", "--state-dir", state, "--capture", "none"] + extra + ["--", Self.pingable],
                                   env: ["MODE": "ok"], timeoutMs: 30_000)
            #expect(r.code == 64, "\(state): \(r.stderr)")
            return r.stderr
        }
        // A world-writable (1777) state directory: refused, and no longer chmod'ed to 0700.
        let open = dir.path + "/open"
        try #require(mkdir(open, 0o700) == 0 && chmod(open, 0o1777) == 0)
        #expect(try refused(open).contains("state directory \(open): is writable by everyone (mode 1777)"))
        #expect(Self.mode(open) == 0o1777)
        // Pre-created by another user (who could swap the run directory and answer pings for a stopped service).
        let theirs = dir.path + "/theirs"
        try #require(mkdir(theirs, 0o700) == 0 && chown(theirs, nobody.uid, nobody.gid) == 0)
        #expect(try refused(theirs).contains("state directory \(theirs): is owned by uid \(nobody.uid), not by defib's uid 0"))
        var st = stat()
        #expect(stat(theirs, &st) == 0 && st.st_uid == nobody.uid && st.st_mode & 0o7777 == 0o700, "not chown'ed or chmod'ed")
        #expect((try? FileManager.default.contentsOfDirectory(atPath: theirs))?.isEmpty == true, "nothing written in it")
        // The state directory itself a link: refused, the target untouched.
        let target = dir.path + "/target"
        try #require(mkdir(target, 0o755) == 0 && chmod(target, 0o755) == 0 && symlink(target, dir.path + "/link") == 0)
        #expect(try refused(dir.path + "/link").contains("is a symbolic link"))
        #expect(Self.mode(target) == 0o755 && (try? FileManager.default.contentsOfDirectory(atPath: target))?.isEmpty == true)
        // A `cores` link inside a good state directory: never followed, nothing written into its target.
        let good = dir.path + "/good"
        try #require(mkdir(good, 0o700) == 0 && symlink(target, good + "/cores") == 0)
        #expect(try refused(good).contains("core directory \(good)/cores: is a symbolic link"))
        #expect((try? FileManager.default.contentsOfDirectory(atPath: target))?.isEmpty == true)
        // A group-writable run directory somebody made.
        let runBad = dir.path + "/runbad"
        try #require(mkdir(runBad, 0o700) == 0 && mkdir(runBad + "/run", 0o770) == 0 && chmod(runBad + "/run", 0o770) == 0)
        #expect(try refused(runBad).contains("run directory \(runBad)/run: is writable by its group (mode 770)"))
        #expect(Self.mode(runBad + "/run") == 0o770)
    }

    @Test func aProgramThatCannotRunIsRefusedBeforeTheFirstStart() throws {
        let dir = Scratch("noprog"); defer { dir.remove() }
        try "#!/bin/sh\nexit 0\n".write(toFile: dir.path + "/not-executable", atomically: false, encoding: .utf8)
        chmod(dir.path + "/not-executable", 0o644)
        for (program, message) in [("/nonexistent/defib-test-program", "cannot run /nonexistent/defib-test-program: no such file"),
                                   (dir.path + "/not-executable", "cannot run \(dir.path)/not-executable: is not executable (mode 644)"),
                                   ("defib-no-such-program", "cannot run defib-no-such-program: not found in PATH")] {
            let state = dir.path + "/state-\(program.hashValue & 0xffff)"
            let r = try runCommand([Binaries.defib, "run", "--state-dir", state, "--", program], timeoutMs: 30_000)
            #expect(r.code == 64, "\(program): \(r.stderr)")
            #expect(r.stderr.contains(message), "\(r.stderr)")
            #expect(access(state + "/incidents.sqlite", F_OK) != 0, "refused before any incident, not retried")
        }
    }

    @Test func badArgumentsAreNamed() throws {
        let dir = Scratch("badargs"); defer { dir.remove() }
        let negative = try runCommand([Binaries.defib, "run", "--state-dir", dir.path, "--deadline", "-1", "--", "true"])
        #expect(negative.code == 64 && negative.stderr.contains("heartbeat.deadline_ms: must be between 50 and 604800000 ms, got -1"), "\(negative.stderr)")
        #expect(!negative.stderr.contains("Missing value"))
        let devNull = try runCommand([Binaries.defib, "run", "--config", "/dev/null"])
        #expect(devNull.code == 64 && devNull.stderr.contains("missing --state-dir"), "an empty configuration: \(devNull.stderr)")
        #expect(!devNull.stderr.contains("permission denied"))
        try "state_dir = \"\(dir.path)/s\\u0000x\"\n".write(toFile: dir.path + "/nul.toml", atomically: false, encoding: .utf8)
        let nul = try runCommand([Binaries.defib, "run", "--config", dir.path + "/nul.toml", "--", "true"])
        #expect(nul.code == 64 && nul.stderr.contains("NUL character"), "\(nul.stderr)")
        // 100 000 arguments for the service are read in linear time (ArgumentParser alone took minutes for
        // a tenth of that): the run gets to its own validation and names the bad deadline.
        let many = try runCommand([Binaries.defib, "run", "--state-dir", dir.path, "--deadline", "10", "--", "true"] + (0..<100_000).map(String.init),
                                  timeoutMs: 120_000)
        #expect(many.code == 64 && many.stderr.contains("got 10"), "\(many.stderr.prefix(300))")
    }

    @Test func theServiceGetsAllItsArguments() throws {
        let dir = Scratch("manyargs"); defer { dir.remove() }
        let out = dir.path + "/count"
        let defib = try Background([Binaries.defib, "run", "--state-dir", dir.path + "/state", "--name", "counter", "--capture", "none", "--",
                                    "/bin/sh", "-c", "echo $# \"$1\" \"${10000}\" > \(out); exec sleep 60", "sh"] + (1...10_000).map { "a\($0)" },
                                   log: dir.path + "/defib.log")
        defer { defib.stop() }
        #expect(waitUntil(timeoutMs: 30_000) { (try? String(contentsOfFile: out, encoding: .utf8)) == "10000 a1 a10000\n" },
                "\((try? String(contentsOfFile: out, encoding: .utf8)) ?? "") \(defib.log)")
    }

    @Test func aUserWhoCannotReadTheStoreIsToldSo() throws {
        let dir = Scratch("noread"); defer { dir.remove() }
        let state = dir.path + "/state"
        let defib = try run(state, log: dir.path + "/defib.log")
        try #require(waitUntil(timeoutMs: 20_000) { answers(state) }, "\(defib.log)")
        defib.stop()
        let asRoot = try runCommand([Binaries.defib, "incidents", "--state-dir", state])
        #expect(asRoot.code == 0)
        let asNobody = try runCommand(OtherUser.asNobody([Binaries.defib, "incidents", "--state-dir", state]))
        #expect(asNobody.code == 1, "\(asNobody.stdout)\(asNobody.stderr)")
        #expect(asNobody.stderr.contains("permission denied: cannot read \(state)"), "\(asNobody.stderr)")
        #expect(!asNobody.stdout.contains("No incidents"))
        let info = try runCommand(OtherUser.asNobody([Binaries.defib, "incidents", "info", "last", "--state-dir", state]))
        #expect(info.code == 1 && info.stderr.contains("permission denied"), "\(info.stderr)")
    }

    @Test func aDamagedStoreIsMovedAsideAndTheServiceSupervised() throws {
        let dir = Scratch("damaged"); defer { dir.remove() }
        let state = dir.path + "/state"
        try #require(mkdir(state, 0o700) == 0)
        let junk = Array("this was incidents.sqlite before a disk error\n".utf8) + [UInt8](repeating: 0xA5, count: 8192)
        try Data(junk).write(to: URL(fileURLWithPath: state + "/incidents.sqlite"))
        let defib = try run(state, log: dir.path + "/defib.log")
        defer { defib.stop() }
        #expect(waitUntil(timeoutMs: 20_000) { answers(state) }, "supervised despite the damaged store: \(defib.log)")
        let aside = try FileManager.default.contentsOfDirectory(atPath: state).filter { $0.hasPrefix("incidents.sqlite.damaged-") }
        #expect(aside.count == 1, "\(aside)")
        if let name = aside.first {
            #expect(try [UInt8](Data(contentsOf: URL(fileURLWithPath: state + "/" + name))) == junk, "moved, not rewritten")
            #expect(defib.log.contains("incident store \(state)/incidents.sqlite is damaged") && defib.log.contains("moved aside to \(state)/\(name)"),
                    "said loudly: \(defib.log)")
        }
        #expect(try incidentsJSON(stateDir: state).isEmpty, "a new, working store")
    }

    /// SIGKILL of defib while it writes a native core: the next defib closes the incident `supervisor-died`,
    /// keeps what had been saved, and deletes the core it can tell is partial (no headers yet).
    @Test func aSupervisorKilledMidCaptureLeavesNothingOpenOrHalfWritten() throws {
        let dir = Scratch("midcapture"); defer { dir.remove() }
        let state = dir.path + "/state"
        let cores = state + "/cores"
        let ballast = "\(Binaries.fixtures)/ballast.py"
        let defib = try Background([Binaries.defib, "run", "--state-dir", state, "--name", "big", "--interval", "50", "--deadline", "400",
                                    "--capture", "native", "--capture-budget", "60000", "--", ballast],
                                   env: ["MODE": "hang-after:10", "BALLAST_MB": "768"], log: dir.path + "/defib.log")
        defer { defib.stop() }
        // Killed once the writer is well into the memory (it writes the headers last).
        var partial: String?
        let deadline = monotonicNanoseconds() + 60_000_000_000
        while partial == nil && monotonicNanoseconds() < deadline {
            partial = ((try? FileManager.default.contentsOfDirectory(atPath: cores)) ?? []).first {
                $0.hasSuffix(".partial") && (fileSize(cores + "/" + $0) ?? 0) >= 64 << 20
            }
            if partial == nil { usleep(500) }
        }
        let name = try #require(partial, "no capture started: \(defib.log)")
        try defib.child.signal(SIGKILL)
        #expect(defib.wait(timeoutMs: 10_000) == .signaled(signal: SIGKILL, coreDumped: false))
        #expect(access(cores + "/" + name, F_OK) == 0, "killed while the core was still being written")
        let stored = try incidentsJSON(stateDir: state)
        #expect(stored.first?["outcome"] as? String == "open", "the dead supervisor left it open: \(stored)")

        let next = try Background([Binaries.defib, "run", "--state-dir", state, "--name", "big", "--interval", "50", "--deadline", "400",
                                   "--capture", "none", "--", Self.pingable], env: ["MODE": "ok"], log: dir.path + "/next.log")
        defer { next.stop() }
        #expect(waitUntil(timeoutMs: 20_000) { answers(state, name: "big") }, "\(next.log)")
        let incident = try #require(try incidentsJSON(stateDir: state).first)
        #expect(incident["outcome"] as? String == "supervisor-died", "\(incident)")
        let notes = incident["notes"] as? [String] ?? []
        #expect(notes.contains { $0.hasPrefix("the supervisor (pid \(defib.pid)) died while this incident was open") }, "\(notes)")
        #expect(notes.contains { $0.hasPrefix("partial core \(cores)/\(name)") && $0.contains("deleted: no ELF header") }, "\(notes)")
        #expect(incident["core_path"] is NSNull)
        #expect((incident["capture_error"] as? String)?.contains("the supervisor died while writing the core") == true, "\(incident)")
        #expect(!((incident["diagnosis"] as? String) ?? "").isEmpty, "what was saved before the death is kept")
        #expect(((try? FileManager.default.contentsOfDirectory(atPath: cores)) ?? []).isEmpty, "no partial core left")
        #expect(next.log.contains("was left open by a dead supervisor: closed as supervisor-died"), "\(next.log)")
    }
}
