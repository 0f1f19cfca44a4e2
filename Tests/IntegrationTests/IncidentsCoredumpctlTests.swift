import DefibCore
import DefibPOSIX
import DefibStore
import Foundation
import Glibc
import Testing

/// `defib incidents` at coredumpctl's level: every contract form against the real binary, on stores written
/// through DefibStore, with a real core (gcore of a real process) where the verb needs one.
@Suite(.serialized, .timeLimit(.minutes(4)))
struct IncidentsCoredumpctlTests {
    static let t0: Int64 = 1_795_000_000_000   // 2026-11-18T11:06:40Z
    static func at(_ ms: Int64) -> Date { Date(timeIntervalSince1970: Double(t0 + ms) / 1000) }

    func defib(_ args: [String], env: [String: String] = ["TZ": "UTC"]) throws -> CommandResult {
        try runCommand([Binaries.defib] + args, env: env)
    }

    struct Seeded {
        var dir: String
        var exit: Int64, hang: Int64, second: Int64, open: Int64
        var hangPid: Int32, secondPid: Int32
    }

    /// Four incidents: an exit of `cache` (no process identity: a death is reaped first), a recovered hang of
    /// `proxy` (pid 4000, defib-proxy, uid 0, corrupted lock word, signed), a second hang of `proxy` with the
    /// same signature (pid 4100), and the newest, open, of `worker` (pid 200, uid 1000, a dead loop).
    func seed(_ dir: Scratch) throws -> Seeded {
        let store = try IncidentStore.open(stateDirectory: dir.path)
        let exit = try store.insert(Incident(service: "cache", pid: 100, binaryPath: "/usr/bin/cache", detectedAt: Self.at(0), cause: .exited(code: 7)))
        func hang(pid: Int32, at ms: Int64) -> Incident {
            var i = Incident(service: "proxy", pid: pid, binaryPath: "/usr/local/bin/defib-proxy", startedAt: Self.at(ms - 60_000),
                             detectedAt: Self.at(ms), cause: .missedHeartbeat(misses: 1, lastPongAt: Self.at(ms - 1000), lastError: nil))
            i.killedAt = Self.at(ms + 850); i.restartedAt = Self.at(ms + 950); i.readyAt = Self.at(ms + 1377)
            i.outcome = .recovered
            i.diagnosis = "corrupted-lock-word: lock 'catalog' holds 0xfffffffffffffffe"
            i.signature = "00000000feedbeef"
            i.process = IncidentProcess(uid: 0, gid: 0, comm: "defib-proxy", argv: ["/usr/local/bin/defib-proxy", "--route", "a b"],
                                        cgroup: "/system.slice/system-defib.slice/defib@proxy.service")
            return i
        }
        let hangID = try store.insert(hang(pid: 4000, at: 120_000))
        let second = try store.insert(hang(pid: 4100, at: 300_000))
        var worker = Incident(service: "worker", pid: 200, binaryPath: "/opt/worker/bin/worker", detectedAt: Self.at(600_000),
                              cause: .missedHeartbeat(misses: 1, lastPongAt: nil, lastError: nil))
        worker.diagnosis = "dead-loop: one thread spins"
        worker.signature = "00000000c0ffee00"
        worker.process = IncidentProcess(uid: 1000, gid: 1000, comm: "worker", argv: ["worker"])
        let open = try store.insert(worker)
        return Seeded(dir: dir.path, exit: exit, hang: hangID, second: second, open: open, hangPid: 4000, secondPid: 4100)
    }

    func ids(_ r: CommandResult) throws -> [Int] {
        #expect(r.code == 0, "\(r.stderr)")
        let array = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [[String: Any]], "\(r.stdout)")
        return array.compactMap { $0["id"] as? Int }
    }

    // MARK: the contract forms of the issue

    @Test func theContractForms() throws {
        let dir = Scratch("ctl-contract"); defer { dir.remove() }
        let s = try seed(dir)

        // -1 --json=pretty: one object, the newest.
        let one = try defib(["incidents", "-1", "--state-dir", s.dir, "--json=pretty"])
        #expect(one.code == 0, "\(one.stderr)")
        let object = try #require(try JSONSerialization.jsonObject(with: Data(one.stdout.utf8)) as? [String: Any], "\(one.stdout)")
        #expect(object["id"] as? Int == Int(s.open))
        #expect(one.stdout.contains("\n  \"id\""), "pretty: one member per line")

        // PID=, COMM=.
        #expect(try ids(defib(["incidents", "list", "--state-dir", s.dir, "PID=\(s.hangPid)", "--json"])) == [Int(s.hang)])
        #expect(try ids(defib(["incidents", "list", "--state-dir", s.dir, "COMM=defib-proxy", "--json"])) == [Int(s.second), Int(s.hang)])

        // SERVICE=nosuch: "No incidents." on stderr, exit 1, nothing on stdout.
        let none = try defib(["incidents", "list", "--state-dir", s.dir, "SERVICE=nosuch"])
        #expect(none.code == 1 && none.stdout.isEmpty && none.stderr.contains("No incidents."), "\(none)")

        // signatures --json.
        let sig = try defib(["incidents", "signatures", "--state-dir", s.dir, "--json"])
        #expect(sig.code == 0, "\(sig.stderr)")
        let rows = try #require(try JSONSerialization.jsonObject(with: Data(sig.stdout.utf8)) as? [[String: Any]], "\(sig.stdout)")
        #expect(rows.count == 2, "cache's exit has no signature; proxy's two hangs share one")
        #expect(rows.allSatisfy { Set($0.keys) == ["signature", "count", "stalls", "first_seen", "last_seen", "diagnosis_kind", "services", "last_incident"] },
                "\(rows)")
        let proxy = try #require(rows.first { $0["signature"] as? String == "00000000feedbeef" })
        #expect(proxy["count"] as? Int == 2)
        #expect(proxy["stalls"] as? Int == 0, "both were hangs")
        #expect(proxy["first_seen"] as? String == "2026-11-18T11:08:40.000Z" && proxy["last_seen"] as? String == "2026-11-18T11:11:40.000Z")
        #expect(proxy["diagnosis_kind"] as? String == "corrupted-lock-word")
        #expect(proxy["services"] as? [String] == ["proxy"])
        #expect(proxy["last_incident"] as? Int == Int(s.second))
        #expect(rows.first?["signature"] as? String == "00000000c0ffee00", "the most recently seen first")
        let since = try defib(["incidents", "signatures", "--state-dir", s.dir, "--since", "2026-11-18T11:10:00Z", "--json"])
        let recent = try #require(try JSONSerialization.jsonObject(with: Data(since.stdout.utf8)) as? [[String: Any]])
        #expect(recent.first { $0["signature"] as? String == "00000000feedbeef" }?["count"] as? Int == 1, "--since counts only what is after it")
        let table = try defib(["incidents", "signatures", "--state-dir", s.dir])
        #expect(table.stdout.hasPrefix("SIGNATURE") && table.stdout.contains("00000000feedbeef") && table.stdout.contains("corrupted-lock-word"),
                "\(table.stdout)")
    }

    @Test func matchesSelectLikeCoredumpctls() throws {
        let dir = Scratch("ctl-match"); defer { dir.remove() }
        let s = try seed(dir)
        func listed(_ args: [String]) throws -> [Int] { try ids(defib(["incidents", "--state-dir", s.dir, "--json"] + args)) }

        #expect(try listed([]) == [s.open, s.second, s.hang, s.exit].map { Int($0) }, "newest first")
        #expect(try listed(["-r"]) == [s.exit, s.hang, s.second, s.open].map { Int($0) }, "-r: oldest first, as coredumpctl")
        #expect(try listed(["--reverse", "-n", "2"]) == [s.second, s.open].map { Int($0) }, "-n: the newest N, in the order asked")
        #expect(try listed([String(s.hang)]) == [Int(s.hang)], "a number that is an incident id is that incident")
        #expect(try listed(["4100"]) == [Int(s.second)], "a number that is no id is a pid")
        #expect(try listed(["/usr/local/bin/defib-proxy"]) == [s.second, s.hang].map { Int($0) }, "a path is the executable")
        #expect(try listed(["EXE=/usr/local/bin/../bin/defib-proxy"]) == [s.second, s.hang].map { Int($0) })
        #expect(try listed(["worker"]) == [Int(s.open)], "a word is the process name")
        #expect(try listed(["COREDUMP_COMM=worker"]) == [Int(s.open)], "coredumpctl's own field names work")
        #expect(try listed(["UID=1000"]) == [Int(s.open)])
        #expect(try listed(["GID=0"]) == [s.second, s.hang].map { Int($0) })
        #expect(try listed(["SERVICE=cache"]) == [Int(s.exit)])
        #expect(try listed(["CAUSE=exited"]) == [Int(s.exit)])
        #expect(try listed(["SIGNATURE=00000000feedbeef"]) == [s.second, s.hang].map { Int($0) })
        #expect(try listed(["DIAGNOSIS=dead-loop"]) == [Int(s.open)], "DIAGNOSIS matches the kind")
        #expect(try listed(["OUTCOME=recovered"]) == [s.second, s.hang].map { Int($0) })
        #expect(try listed(["PID=4000", "PID=4100"]) == [s.second, s.hang].map { Int($0) }, "the same field twice: either")
        #expect(try listed(["COMM=defib-proxy", "PID=4000"]) == [Int(s.hang)], "different fields: both")
        #expect(try listed(["last"]) == [Int(s.open)])
        #expect(try listed(["--since", "2026-11-18 11:10", "--until", "2026-11-18T11:15:00Z"]) == [Int(s.second)])
        #expect(try listed(["-S", "2026-11-18 11:10", "-U", "2026-11-18 11:15"]) == [Int(s.second)])

        for bad in [["PID=x"], ["FOO=1"], ["PID="]] {
            let r = try defib(["incidents", "--state-dir", s.dir] + bad)
            #expect(r.code == 64, "\(bad): \(r)")
        }
        let unknown = try defib(["incidents", "--state-dir", s.dir, "FOO=1"])
        #expect(unknown.stderr.contains("unknown match field 'FOO'") && unknown.stderr.contains("COMM"), "\(unknown.stderr)")
        let nothing = try defib(["incidents", "--state-dir", s.dir, "COMM=nobody", "--json"])
        #expect(nothing.code == 1 && nothing.stdout.isEmpty && nothing.stderr.contains("No incidents."))
        let since = try defib(["incidents", "--state-dir", s.dir, "--since", "2026-11-19", "--until", "2026-11-18"])
        #expect(since.code == 64 && since.stderr.contains("--since must not be after --until"), "\(since)")
    }

    // MARK: the table, -F, JSON modes, time zones

    @Test func theTableHasCoredumpctlsColumnsAndDefibsInLocalTime() throws {
        let dir = Scratch("ctl-table"); defer { dir.remove() }
        let s = try seed(dir)
        let local = try defib(["incidents", "--state-dir", s.dir], env: ["TZ": "Asia/Kolkata"])
        let paris = try defib(["incidents", "--state-dir", s.dir], env: ["TZ": "Europe/Paris"])
        #expect(paris.stdout.hasPrefix("ID  DETECTED (CET)"), "the zone's abbreviation: \(paris.stdout.prefix(40))")
        #expect(local.code == 0, "\(local.stderr)")
        let lines = local.stdout.split(separator: "\n").map(String.init)
        let header = try #require(lines.first)
        for column in ["ID", "DETECTED (IST)", "PID", "UID", "GID", "SIG", "COREFILE", "CORE", "EXE", "SERVICE", "CAUSE", "OUTCOME", "RESTORE", "DIAGNOSIS"] {
            #expect(header.contains(column), "missing \(column): \(header)")
        }
        let hang = try #require(lines.first { $0.hasPrefix("\(s.hang) ") })
        #expect(hang.contains("2026-11-18 16:38:40"), "local time (IST is UTC+5:30): \(hang)")
        for cell in ["4000", "KILL", "none", "/usr/local/bin/defib-proxy", "proxy", "missed-heartbeat", "recovered", "1377 ms", "corrupted-lock-word"] {
            #expect(hang.contains(cell), "'\(cell)' missing: \(hang)")
        }
        let exit = try #require(lines.first { $0.hasPrefix("\(s.exit) ") })
        #expect(exit.contains("exited") && !exit.contains("KILL"), "an exit has no signal: \(exit)")

        let utc = try defib(["incidents", "--state-dir", s.dir, "--utc"], env: ["TZ": "Asia/Kolkata"])
        #expect(utc.stdout.contains("DETECTED (UTC)") && utc.stdout.contains("2026-11-18 11:08:40"), "\(utc.stdout)")
        // Dates given without a zone are local time, as coredumpctl reads them.
        let localSince = try defib(["incidents", "--state-dir", s.dir, "--json", "--since", "2026-11-18 16:40"], env: ["TZ": "Asia/Kolkata"])
        #expect(try ids(localSince) == [s.open, s.second].map { Int($0) })

        let bare = try defib(["incidents", "--state-dir", s.dir, "--no-legend"])
        #expect(bare.stdout.split(separator: "\n").count == 4 && bare.stdout.hasPrefix("\(s.open) "), "\(bare.stdout)")

        let pids = try defib(["incidents", "--state-dir", s.dir, "-F", "PID"])
        #expect(pids.code == 0 && pids.stdout == "200\n4100\n4000\n100\n", "\(pids)")
        let comms = try defib(["incidents", "--state-dir", s.dir, "-F", "COMM", "-r"])
        #expect(comms.stdout == "defib-proxy\ndefib-proxy\nworker\n", "a death has no COMM: \(comms.stdout)")
        let restore = try defib(["incidents", "--state-dir", s.dir, "--field", "restore_ms", "SERVICE=proxy"])
        #expect(restore.stdout == "1377\n1377\n", "any JSON key works: \(restore.stdout)")
        let badField = try defib(["incidents", "--state-dir", s.dir, "-F", "NOPE"])
        #expect(badField.code == 64 && badField.stderr.contains("unknown field 'NOPE'"), "\(badField.stderr)")

        let short = try defib(["incidents", "--state-dir", s.dir, "--json=short"])
        #expect(short.stdout.split(separator: "\n").count == 1 && short.stdout.hasPrefix("[{\"id\":"), "\(short.stdout.prefix(80))")
        let spaced = try defib(["incidents", "--state-dir", s.dir, "--json", "short"])
        #expect(spaced.stdout == short.stdout, "--json MODE as a separate argument")
        let off = try defib(["incidents", "--state-dir", s.dir, "--json=off"])
        #expect(off.stdout.hasPrefix("ID "), "--json=off is the table")
        let object = try #require(try JSONSerialization.jsonObject(with: Data(short.stdout.utf8)) as? [[String: Any]]).first { $0["id"] as? Int == Int(s.hang) }
        #expect(object?["comm"] as? String == "defib-proxy" && object?["uid"] as? Int == 0 && object?["gid"] as? Int == 0)
        #expect(object?["signal"] as? Int == 9 && object?["signal_name"] as? String == "SIGKILL")
        #expect(object?["argv"] as? [String] == ["/usr/local/bin/defib-proxy", "--route", "a b"])
        #expect(object?["unit"] as? String == "defib@proxy.service" && object?["diagnosis_kind"] as? String == "corrupted-lock-word")
    }

    @Test func sinceTakesARelativeTimeAsASeparateArgument() throws {
        let dir = Scratch("ctl-since"); defer { dir.remove() }
        let store = try IncidentStore.open(stateDirectory: dir.path)
        let now = Date()
        _ = try store.insert(Incident(service: "a", pid: 1, detectedAt: now.addingTimeInterval(-3 * 3600), cause: .exited(code: 1)))
        let recent = try store.insert(Incident(service: "a", pid: 2, detectedAt: now.addingTimeInterval(-3600), cause: .exited(code: 1)))
        #expect(try ids(defib(["incidents", "--state-dir", dir.path, "--since", "-2h", "--json"])) == [Int(recent)])
        #expect(try ids(defib(["incidents", "--state-dir", dir.path, "--since=-2h", "--json"])) == [Int(recent)])
        #expect(try ids(defib(["incidents", "--state-dir", dir.path, "-S", "-2h", "--json"])) == [Int(recent)])
        #expect(try ids(defib(["incidents", "--state-dir", dir.path, "--until", "-2h", "--json"])).count == 1)
    }

    // MARK: info

    @Test func infoWithoutArgumentsIsTheNewestAndMatchesShowEach() throws {
        let dir = Scratch("ctl-info"); defer { dir.remove() }
        let s = try seed(dir)
        let newest = try defib(["incidents", "info", "--state-dir", s.dir])
        #expect(newest.code == 0 && newest.stdout.hasPrefix("Incident \(s.open) · worker · pid 200 · open"), "\(newest)")
        let hang = try defib(["incidents", "info", String(s.hang), "--state-dir", s.dir], env: ["TZ": "Europe/Paris"])
        for expected in ["Process", "pid 4000 (defib-proxy), uid 0 (root), gid 0 (root)", "Command line", "/usr/local/bin/defib-proxy --route 'a b'",
                         "Unit", "defib@proxy.service", "Signal", "9 (SIGKILL)", "Signature", "00000000feedbeef",
                         "Timeline (CET; offsets from detection)", "2026-11-18 12:08:40.000"] {
            #expect(hang.stdout.contains(expected), "info lacks '\(expected)':\n\(hang.stdout)")
        }
        let both = try defib(["incidents", "info", "--state-dir", s.dir, "COMM=defib-proxy"])
        #expect(both.stdout.components(separatedBy: "\nIncident ").count == 2 && both.stdout.hasPrefix("Incident \(s.second) "), "\(both.stdout)")
        let array = try defib(["incidents", "info", "--state-dir", s.dir, "COMM=defib-proxy", "--json=short"])
        let objects = try #require(try JSONSerialization.jsonObject(with: Data(array.stdout.utf8)) as? [[String: Any]], "\(array.stdout)")
        #expect(objects.map { $0["id"] as? Int } == [Int(s.second), Int(s.hang)] && objects.allSatisfy { $0.keys.contains("stacks") })
        let single = try defib(["incidents", "info", String(s.hang), "--state-dir", s.dir, "--json"])
        #expect((try JSONSerialization.jsonObject(with: Data(single.stdout.utf8)) as? [String: Any])?["id"] as? Int == Int(s.hang))
        let byPid = try defib(["incidents", "info", "4100", "--state-dir", s.dir])
        #expect(byPid.stdout.hasPrefix("Incident \(s.second) "), "a number that is no id is a pid: \(byPid.stdout.prefix(60))")
        let neither = try defib(["incidents", "info", "999", "--state-dir", s.dir])
        #expect(neither.code == 1 && neither.stderr.contains("no incident 999 in \(s.dir)/incidents.sqlite, and no incident of pid 999"), "\(neither.stderr)")
        let byName = try defib(["incidents", "info", "worker", "--state-dir", s.dir])
        #expect(byName.code == 0 && byName.stdout.hasPrefix("Incident \(s.open) "), "a word is a process name")
    }

    // MARK: dump and debug, on a real core

    /// A real core (gcore of a sleeping process), recorded as incident `plain`; the same core compressed with
    /// zstd and gzip as two more incidents; and one whose "core" is not an ELF core.
    func seedCores(_ dir: Scratch) throws -> (plain: Int64, zst: Int64, gz: Int64, bogus: Int64, core: String, pid: Int32) {
        let sleeper = try Background(["sleep", "300"], log: "\(dir.path)/sleep.log")
        defer { sleeper.stop(graceMs: 1000) }
        let gcore = try runCommand(["gcore", "-o", "\(dir.path)/core.sleep", String(sleeper.pid)], timeoutMs: 120_000)
        try #require(gcore.code == 0, "gcore failed: \(gcore.stdout)\(gcore.stderr)")
        let core = "\(dir.path)/core.sleep.\(sleeper.pid)"
        for (tool, args) in [("zstd", ["-q", "-k", "-1", core, "-o", core + ".zst"]), ("gzip", ["-k", "-1", core])] {
            let r = try runCommand([tool] + args, timeoutMs: 120_000)
            try #require(r.code == 0, "\(tool): \(r.stderr)")
        }
        try Data(repeating: 0x42, count: 4096).write(to: URL(fileURLWithPath: "\(dir.path)/core.bogus"))
        let store = try IncidentStore.open(stateDirectory: dir.path)
        func insert(_ path: String, ms: Int64) throws -> Int64 {
            var i = Incident(service: "sleep", pid: sleeper.pid, binaryPath: resolveExecutable("sleep"), detectedAt: Self.at(ms),
                             cause: .missedHeartbeat(misses: 1, lastPongAt: nil, lastError: nil))
            i.capture = CaptureRecord(method: "native", path: path, bytes: Int64((try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? 0),
                                      durationMs: 10, error: nil)
            i.killedAt = Self.at(ms + 100)
            i.process = IncidentProcess(uid: 0, gid: 0, comm: "sleep", argv: ["sleep", "300"])
            return try store.insert(i)
        }
        return (try insert(core, ms: 0), try insert(core + ".zst", ms: 1000), try insert(core + ".gz", ms: 2000),
                try insert("\(dir.path)/core.bogus", ms: 3000), core, sleeper.pid)
    }

    @Test func dumpWritesTheCoreDecompressedAndOnlyARealCore() throws {
        let dir = Scratch("ctl-dump"); defer { dir.remove() }
        let c = try seedCores(dir)
        let original = try Data(contentsOf: URL(fileURLWithPath: c.core))

        // --output -: the ELF core on stdout, the summary on stderr.
        let out = "\(dir.path)/dumped"
        for (id, label) in [(c.plain, "plain"), (c.zst, "zstd"), (c.gz, "gzip")] {
            let r = try runCommand(["/bin/sh", "-c", "\"$0\" incidents dump \(id) --state-dir \"$1\" --output - > \"$2\"", Binaries.defib, dir.path, out + label])
            #expect(r.code == 0, "\(label): \(r.stderr)")
            let dumped = try Data(contentsOf: URL(fileURLWithPath: out + label))
            let same = dumped == original   // a Bool: a failed #expect on two Data would diff megabytes
            #expect(same, "\(label): the dump is the original core, byte for byte (\(dumped.count) vs \(original.count) bytes)")
            #expect(dumped.prefix(4) == Data([0x7f, 0x45, 0x4c, 0x46]))
            #expect(r.stderr.contains("Incident \(id) · sleep · pid \(c.pid) (sleep)"), "\(r.stderr)")
        }
        // `dump last` is the newest: the bogus one, refused before a byte is written.
        let bogus = try runCommand(["/bin/sh", "-c", "\"$0\" incidents dump last --state-dir \"$1\" --output - > \"$2\"", Binaries.defib, dir.path, out + "-bogus"])
        #expect(bogus.code == 1 && bogus.stderr.contains("is not an ELF file"), "\(bogus.stderr)")
        #expect((try? Data(contentsOf: URL(fileURLWithPath: out + "-bogus")))?.isEmpty == true)

        // --output FILE: created 0600, the summary on stdout; never over an existing file or through a symlink.
        let file = "\(dir.path)/core.out"
        let r = try defib(["incidents", "dump", String(c.zst), "--state-dir", dir.path, "-o", file])
        #expect(r.code == 0 && r.stdout.contains("(zstd, decompressed) → \(file)"), "\(r)")
        let sameFile = try Data(contentsOf: URL(fileURLWithPath: file)) == original
        #expect(sameFile)
        var st = stat()
        #expect(stat(file, &st) == 0 && st.st_mode & 0o777 == 0o600)
        let again = try defib(["incidents", "dump", String(c.zst), "--state-dir", dir.path, "-o", file])
        #expect(again.code == 1 && again.stderr.contains("\(file) already exists"), "\(again.stderr)")
        symlink("/dev/null", "\(dir.path)/link")
        let link = try defib(["incidents", "dump", String(c.plain), "--state-dir", dir.path, "-o", "\(dir.path)/link"])
        #expect(link.code == 1, "a symlink is not followed: \(link)")
        let more = try runCommand(["/bin/sh", "-c", "\"$0\" incidents dump COMM=sleep --until 2026-11-18T11:06:41.500Z --state-dir \"$1\" > /dev/null", Binaries.defib, dir.path])
        #expect(more.stderr.contains("More than one incident matches; dumped the newest."), "\(more.stderr)")
        let dash = try defib(["incidents", "export", String(c.plain), "--state-dir", dir.path, "--output", "-"])
        #expect(dash.code == 64 && dash.stderr.contains("dump --output -") && !FileManager.default.fileExists(atPath: "-"), "\(dash)")
        let noCore = try IncidentStore.open(stateDirectory: dir.path).insert(Incident(service: "x", pid: 9, detectedAt: Self.at(9000), cause: .exited(code: 1)))
        let none = try defib(["incidents", "dump", String(noCore), "--state-dir", dir.path, "-o", "\(dir.path)/nothing"])
        #expect(none.code == 1 && none.stderr.contains("incident \(noCore) has no core"), "\(none.stderr)")
    }

    @Test func debugRunsTheDebuggerOnTheCoreDecompressedIfNeeded() throws {
        let dir = Scratch("ctl-debug"); defer { dir.remove() }
        let c = try seedCores(dir)
        let tmp = "\(dir.path)/tmp"
        try FileManager.default.createDirectory(atPath: tmp, withIntermediateDirectories: true)
        for id in [c.plain, c.zst] {
            let r = try defib(["incidents", "debug", String(id), "--state-dir", dir.path, "-A", "-batch -nx -ex 'info threads'"],
                              env: ["TZ": "UTC", "TMPDIR": tmp])
            #expect(r.code == 0, "\(r.stderr)")
            let text = r.stdout + r.stderr
            #expect(text.contains("Core was generated by `sleep") && text.contains("(LWP \(c.pid))"), "incident \(id):\n\(text)")
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: tmp).isEmpty, "the decompressed core is removed afterwards")
        // --debugger and $SYSTEMD_DEBUGGER choose the program; gdb is the same verb.
        let echo = try defib(["incidents", "debug", String(c.plain), "--state-dir", dir.path, "--debugger", "echo", "-A", "hello"])
        #expect(echo.stdout == "hello \(resolveExecutable("sleep") ?? "") -c \(c.core)\n", "\(echo)")
        let env = try defib(["incidents", "debug", String(c.plain), "--state-dir", dir.path], env: ["SYSTEMD_DEBUGGER": "echo"])
        #expect(env.stdout.hasSuffix("-c \(c.core)\n"), "\(env)")
        let gdb = try defib(["incidents", "gdb", String(c.plain), "--state-dir", dir.path, "--gdb", "echo", "--", "-q"])
        #expect(gdb.stdout == "-q \(resolveExecutable("sleep") ?? "") -c \(c.core)\n", "\(gdb)")
        // The newest of PID=… is the one whose "core" is no ELF core: refused, the debugger never runs.
        let bogus = try defib(["incidents", "debug", "--state-dir", dir.path, "PID=\(c.pid)", "--debugger", "echo"])
        #expect(bogus.code == 1 && bogus.stdout.isEmpty && bogus.stderr.contains("core.bogus is not an ELF file"), "\(bogus)")
    }

    // MARK: the supervisor fills what the views need

    /// A real hang under `defib run`: the incident knows the process (uid, gid, comm, argv, the signal that
    /// ended it), `COMM=` finds it, and the announcement spot runs once the core is final (without a journal
    /// the note says so; under journald it says "announced", which the container test shows with coredumpctl).
    @Test func aHungServicesIncidentKnowsItsProcessAndReachesTheAnnouncement() throws {
        let dir = Scratch("ctl-run"); defer { dir.remove() }
        let state = "\(dir.path)/state"
        let cfg = try writePingableConfig(at: "\(dir.path)/defib.toml", stateDir: state, name: "pingable", mode: "hang-after:5",
                                          extra: "[restart]\nintensity_max = 50\n[capture]\nmethod = \"native\"\nstacks = false\nannounce_to_coredumpctl = true\n")
        let supervisor = try Background([Binaries.defib, "run", "--config", cfg], log: "\(dir.path)/defib.log")
        defer { supervisor.stop() }
        var incident: [String: Any] = [:]
        let noted = waitUntil(timeoutMs: 60_000) {
            guard let first = ((try? incidentsJSON(stateDir: state)) ?? []).last,
                  (first["notes"] as? [String] ?? []).contains(where: { $0.contains("announced to coredumpctl") }) else { return false }
            incident = first
            return true
        }
        supervisor.stop()
        #expect(noted, "\(supervisor.log)")
        let comm = incident["comm"] as? String ?? ""
        #expect(comm.hasPrefix("python3"), "the interpreter runs the script: \(incident)")
        #expect(incident["uid"] as? Int == Int(getuid()) && incident["gid"] as? Int == Int(getgid()))
        #expect((incident["argv"] as? [String])?.last?.hasSuffix("pingable.py") == true, "\(incident["argv"] ?? "")")
        #expect(incident["signal"] as? Int == 9 && incident["signal_name"] as? String == "SIGKILL")
        let note = (incident["notes"] as? [String] ?? []).first { $0.contains("announced to coredumpctl") } ?? ""
        let journal = access("/run/systemd/journal/socket", F_OK) == 0
        #expect(journal ? note.hasPrefix("announced to coredumpctl") : note.contains("no journal here"), "\(note)")
        let byName = try defib(["incidents", "--state-dir", state, "COMM=\(comm)", "-F", "ID"])
        #expect(byName.stdout.split(separator: "\n").contains(Substring(String(incident["id"] as? Int ?? -1))), "\(byName)")
    }

    /// A real death under `defib run`: it is reaped before its incident opens, so who it was is what /proc said
    /// when it started (its uid, gid, name and command line), and `COMM=` finds it. Its signal is the exit's: none.
    @Test func aDeadServicesIncidentKnowsWhoItWasAtItsStart() throws {
        let dir = Scratch("ctl-death"); defer { dir.remove() }
        let state = "\(dir.path)/state"
        let cfg = try writePingableConfig(at: "\(dir.path)/defib.toml", stateDir: state, name: "dying", mode: "exit-after:3:7",
                                          extra: "[restart]\nintensity_max = 50\n")
        let supervisor = try Background([Binaries.defib, "run", "--config", cfg], log: "\(dir.path)/defib.log")
        defer { supervisor.stop() }
        var incident: [String: Any] = [:]
        let recorded = waitUntil(timeoutMs: 60_000) {
            guard let first = ((try? incidentsJSON(stateDir: state)) ?? []).last else { return false }
            incident = first
            return true
        }
        supervisor.stop()
        #expect(recorded, "\(supervisor.log)")
        #expect(incident["cause"] as? String == "exited", "\(incident)")
        let comm = incident["comm"] as? String ?? ""
        #expect(comm.hasPrefix("python3"), "the interpreter runs the script: \(incident)")
        #expect(incident["uid"] as? Int == Int(getuid()) && incident["gid"] as? Int == Int(getgid()))
        #expect((incident["argv"] as? [String])?.last?.hasSuffix("pingable.py") == true, "\(incident["argv"] ?? "")")
        #expect(incident["signal"] is NSNull, "an exit ends with no signal: \(incident["signal"] ?? "")")
        let byName = try defib(["incidents", "--state-dir", state, "COMM=\(comm)", "-F", "ID"])
        #expect(byName.stdout.split(separator: "\n").contains(Substring(String(incident["id"] as? Int ?? -1))), "\(byName)")
    }

    /// One that dies before it ever answers has the reading taken right after its exec.
    @Test func aServiceThatDiesBeforeItIsReadyKeepsWhoItWasAtItsSpawn() throws {
        let dir = Scratch("ctl-early"); defer { dir.remove() }
        let state = "\(dir.path)/state"
        let sleep = try #require(resolveExecutable("sleep"))
        let supervisor = try Background([Binaries.defib, "run", "--state-dir", state, "--", sleep, "0.3"], log: "\(dir.path)/defib.log")
        defer { supervisor.stop() }
        var incident: [String: Any] = [:]
        let recorded = waitUntil(timeoutMs: 60_000) {
            guard let first = ((try? incidentsJSON(stateDir: state)) ?? []).last else { return false }
            incident = first
            return true
        }
        supervisor.stop()
        #expect(recorded, "\(supervisor.log)")
        #expect(incident["cause"] as? String == "exited" && incident["comm"] as? String == "sleep", "\(incident)")
        #expect(incident["argv"] as? [String] == [sleep, "0.3"] && incident["uid"] as? Int == Int(getuid()), "\(incident)")
    }

    // MARK: permissions and the pager

    @Test func aUserWhoCannotReadTheStateDirectoryIsToldSo() throws {
        let dir = Scratch("ctl-perm"); defer { dir.remove() }
        let state = "\(dir.path)/state"
        try FileManager.default.createDirectory(atPath: state, withIntermediateDirectories: true)
        _ = try IncidentStore.open(stateDirectory: state).insert(Incident(service: "a", pid: 1, detectedAt: Date(), cause: .exited(code: 1)))
        chmod(state, 0o700)
        chmod(dir.path, 0o755)
        // A copy of the binary nobody can run, wherever the build directory is.
        let bin = "\(dir.path)/defib"
        try FileManager.default.copyItem(atPath: Binaries.defib, toPath: bin)
        chmod(bin, 0o755)
        for args in [["incidents", "--state-dir", state], ["incidents", "info", "--state-dir", state], ["incidents", "signatures", "--state-dir", state]] {
            let r = try runCommand(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", bin] + args)
            #expect(r.code == 1, "\(args): \(r)")
            #expect(r.stderr.contains("permission denied: cannot read \(state)") && !r.stdout.contains("No incidents"), "\(args): \(r)")
        }
    }

    @Test func aPagerOnlyOnATerminal() throws {
        let dir = Scratch("ctl-pager"); defer { dir.remove() }
        let s = try seed(dir)
        let recorder = "\(dir.path)/pager.sh"
        try "#!/bin/sh\ncat > \"\(dir.path)/paged.$$\"\n".write(toFile: recorder, atomically: true, encoding: .utf8)
        chmod(recorder, 0o755)
        func paged() -> [String] { ((try? FileManager.default.contentsOfDirectory(atPath: dir.path)) ?? []).filter { $0.hasPrefix("paged.") } }

        // Not a terminal: no pager, whatever PAGER says.
        let plain = try defib(["incidents", "--state-dir", s.dir], env: ["PAGER": recorder, "TERM": "xterm"])
        #expect(plain.code == 0 && plain.stdout.hasPrefix("ID ") && paged().isEmpty)

        // On a terminal (script(1) gives one): $SYSTEMD_PAGER/$PAGER get the output.
        func onTerminal(_ args: String, env: String) throws -> CommandResult {
            try runCommand(["script", "-qec", "env \(env) TERM=xterm '\(Binaries.defib)' incidents --state-dir '\(s.dir)' \(args)", "/dev/null"])
        }
        let viaPager = try onTerminal("", env: "PAGER='\(recorder)'")
        #expect(viaPager.code == 0, "\(viaPager)")
        let files = paged()
        #expect(files.count == 1, "the pager ran once: \(files) \(viaPager)")
        let text = (try? String(contentsOfFile: "\(dir.path)/\(files.first ?? "")", encoding: .utf8)) ?? ""
        #expect(text.hasPrefix("ID ") && text.contains("defib-proxy"), "the pager got the table: \(text)")
        for file in files { unlink("\(dir.path)/\(file)") }

        let systemdPager = try onTerminal("-r", env: "PAGER=false SYSTEMD_PAGER='\(recorder)'")
        #expect(systemdPager.code == 0 && paged().count == 1, "$SYSTEMD_PAGER wins over $PAGER: \(systemdPager)")
        for file in paged() { unlink("\(dir.path)/\(file)") }

        let noPager = try onTerminal("--no-pager", env: "PAGER='\(recorder)'")
        #expect(noPager.stdout.contains("defib-proxy") && paged().isEmpty, "--no-pager: \(noPager)")
        let cat = try onTerminal("", env: "PAGER=cat")
        #expect(cat.stdout.contains("defib-proxy") && paged().isEmpty, "PAGER=cat means none")
    }
}
