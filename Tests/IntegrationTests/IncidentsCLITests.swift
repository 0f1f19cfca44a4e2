import DefibCore
import DefibPOSIX
import DefibStore
import Foundation
import Glibc
import Testing

/// The real `defib incidents …` and `defib check-config` binaries against stores written through DefibStore.
@Suite(.serialized, .timeLimit(.minutes(3)))
struct IncidentsCLITests {
    static let t0: Int64 = 1_795_000_000_000   // 2026-11-18T11:06:40Z
    static func at(_ ms: Int64) -> Date { Date(timeIntervalSince1970: Double(t0 + ms) / 1000) }

    /// In UTC: the expected times below are UTC, and tables show local time.
    func defib(_ args: [String]) throws -> CommandResult { try runCommand([Binaries.defib] + args, env: ["TZ": "UTC"]) }

    /// Three incidents: an old exit of `cache`, a recovered hang of `proxy` with a (fake) core and a corrupted
    /// lock word, and the newest, still open, of `proxy`.
    func populate(_ dir: Scratch) throws -> (exit: Int64, hang: Int64, open: Int64, core: String) {
        let store = try IncidentStore.open(stateDirectory: dir.path)
        let core = "\(dir.path)/core.proxy.2"
        try Data(repeating: 0xAB, count: 3 * 1024 * 1024).write(to: URL(fileURLWithPath: core))

        let exit = try store.insert(Incident(service: "cache", pid: 100, detectedAt: Self.at(0), cause: .exited(code: 7)))

        var hang = Incident(service: "proxy", pid: 200, binaryPath: "/usr/local/bin/defib-proxy", startedAt: Self.at(60_000),
                            detectedAt: Self.at(120_000),
                            cause: .missedHeartbeat(misses: 1, lastPongAt: Self.at(119_000), lastError: "no reply within 1000 ms"))
        hang.killedAt = Self.at(120_850); hang.restartedAt = Self.at(120_950); hang.readyAt = Self.at(121_377)
        hang.newPid = 201
        hang.outcome = .recovered
        hang.capture = CaptureRecord(method: "gcore", path: core, bytes: 3 * 1024 * 1024, durationMs: 802.5, error: nil)
        hang.lockState = [LockState(name: "catalog", address: "0x7f0000001000", word: "0xFFFFFFFFFFFFFFFE", source: "memory",
                                    lastHolder: "reload#3", readersWaiting: 12, writersWaiting: 1)]
        hang.diagnosis = "corrupted-lock-word: lock 'catalog' word 0xfffffffffffffffe: WRITER and WRITER_PARKED set with a saturated reader count; no thread can be in the critical section, every reader and writer waits forever"
        hang.notes = ["captured before the kill"]
        hang.stacks = "Thread 2 (LWP 202):\n#0  syscall () at futex.S:38\n"
        let hangID = try store.insert(hang)

        let open = try store.insert(Incident(service: "proxy", pid: 201, detectedAt: Self.at(600_000),
                                             cause: .signaled(signal: 11, coreDumped: false)))
        return (exit, hangID, open, core)
    }

    // MARK: list

    @Test func listIsATableNewestFirstAndTheDefaultVerb() throws {
        let dir = Scratch("cli-list"); defer { dir.remove() }
        let ids = try populate(dir)
        let r = try defib(["incidents", "--state-dir", dir.path])
        #expect(r.code == 0, "\(r.stderr)")
        let lines = r.stdout.split(separator: "\n").map(String.init)
        #expect(lines.count == 4, "\(r.stdout)")
        #expect(lines.first?.hasPrefix("ID") == true)
        for column in ["DETECTED (UTC)", "SERVICE", "PID", "CAUSE", "OUTCOME", "RESTORE", "CORE", "DIAGNOSIS"] {
            #expect(lines.first?.contains(column) == true, "missing column \(column)")
        }
        #expect(lines[1].hasPrefix("\(ids.open) "), "newest first: \(lines[1])")
        #expect(lines[2].hasPrefix("\(ids.hang) "))
        #expect(lines[3].hasPrefix("\(ids.exit) "))
        #expect(lines[2].contains("2026-11-18 11:08:40") && lines[2].contains("missed-heartbeat") && lines[2].contains("recovered"))
        #expect(lines[2].contains("1377 ms") && lines[2].contains("3.0 MiB") && lines[2].contains("corrupted-lock-word"))
        #expect(lines[1].contains("signaled") && lines[1].contains("open"))

        let explicit = try defib(["incidents", "list", "--state-dir", dir.path])
        #expect(explicit.stdout == r.stdout)

        // The state directory can come from the config file `defib run` uses.
        let config = "\(dir.path)/defib.toml"
        try "state_dir = \"\(dir.path)\"\n".write(toFile: config, atomically: true, encoding: .utf8)
        let viaConfig = try defib(["incidents", "--config", config])
        #expect(viaConfig.code == 0 && viaConfig.stdout == r.stdout, "\(viaConfig.stderr)")
    }

    @Test func listJSONCarriesTheContractAndHonoursFilters() throws {
        let dir = Scratch("cli-json"); defer { dir.remove() }
        let ids = try populate(dir)
        let all = try incidentsJSON(stateDir: dir.path)
        #expect(all.map { $0["id"] as? Int } == [ids.open, ids.hang, ids.exit].map { Int($0) })
        let hang = all[1]
        #expect(hang["service"] as? String == "proxy")
        #expect(hang["pid"] as? Int == 200)
        #expect(hang["cause"] as? String == "missed-heartbeat")
        #expect(hang["detected_at"] as? String == "2026-11-18T11:08:40.000Z")
        #expect(hang["core_path"] as? String == "\(dir.path)/core.proxy.2")
        #expect(hang["capture_ms"] as? Double == 802.5)
        #expect(hang["core_bytes"] as? Int == 3 * 1024 * 1024)
        #expect(hang["new_pid"] as? Int == 201)
        #expect((hang["diagnosis"] as? String)?.hasPrefix("corrupted-lock-word") == true)
        #expect(hang["lock_words"] as? [String] == ["0xfffffffffffffffe"])
        #expect(hang["restore_ms"] as? Int == 1377)
        #expect(hang["stacks"] == nil, "the list leaves stacks to info")
        #expect(all[2]["core_path"] is NSNull)
        #expect(all[2]["diagnosis"] as? String == "")

        func listed(_ args: [String]) throws -> [Int] {
            let r = try defib(["incidents", "--state-dir", dir.path, "--json"] + args)
            #expect(r.code == 0, "\(args): \(r.stderr)")
            let arr = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [[String: Any]] ?? []
            return arr.compactMap { $0["id"] as? Int }
        }
        #expect(try listed(["--service", "proxy"]) == [Int(ids.open), Int(ids.hang)])
        #expect(try listed(["--service", "nobody"]) == [])
        #expect(try listed(["-n", "1"]) == [Int(ids.open)])
        #expect(try listed(["--limit", "2"]) == [Int(ids.open), Int(ids.hang)])
        #expect(try listed(["--since", "2026-11-18T11:08:00Z"]) == [Int(ids.open), Int(ids.hang)])
        #expect(try listed(["--until", "2026-11-18 11:08:40"]) == [Int(ids.hang), Int(ids.exit)], "until is inclusive")
        #expect(try listed(["--since", "2026-11-18 11:07", "--until", "2026-11-18 11:10"]) == [Int(ids.hang)])
        #expect(try listed(["--since", "2026-11-19"]) == [])

        let empty = Scratch("cli-empty"); defer { empty.remove() }
        _ = try IncidentStore.open(stateDirectory: empty.path)
        let none = try defib(["incidents", "--state-dir", empty.path])
        #expect(none.code == 0 && none.stdout == "No incidents.\n")
        let noneJSON = try defib(["incidents", "--state-dir", empty.path, "--json"])
        #expect(noneJSON.code == 0 && noneJSON.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "[]")
    }

    // MARK: info

    @Test func infoShowsTheDiagnosisFirstThenTheStory() throws {
        let dir = Scratch("cli-info"); defer { dir.remove() }
        let ids = try populate(dir)
        let r = try defib(["incidents", "info", String(ids.hang), "--state-dir", dir.path])
        #expect(r.code == 0, "\(r.stderr)")
        let lines = r.stdout.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        #expect(lines.first == "Incident \(ids.hang) · proxy · pid 200 · recovered")
        #expect(lines.dropFirst().first?.hasPrefix("Diagnosis: corrupted-lock-word: lock 'catalog'") == true)
        let text = r.stdout
        for expected in ["missed-heartbeat: control channel silent", "recovered in 1377 ms", "New pid", "201",
                         "/usr/local/bin/defib-proxy",
                         "started", "-60.0 s", "detected", "+0 ms", "killed", "+850 ms", "restarted", "+950 ms", "ready", "+1377 ms",
                         "method", "gcore", "\(dir.path)/core.proxy.2  (3.0 MiB)", "803 ms",
                         "catalog", "0xfffffffffffffffe", "memory", "reload#3", "12 readers, 1 writer", "<- corrupted",
                         "- captured before the kill", "Thread 2 (LWP 202):"] {
            #expect(text.contains(expected), "info lacks '\(expected)':\n\(text)")
        }
        let order = ["Diagnosis:", "Cause", "Timeline", "Capture", "Locks", "Notes", "Stacks"].map { text.range(of: $0)?.lowerBound }
        #expect(order.allSatisfy { $0 != nil } && order.map { $0! } == order.map { $0! }.sorted(), "sections out of order:\n\(text)")

        let last = try defib(["incidents", "info", "last", "--state-dir", dir.path])
        #expect(last.stdout.hasPrefix("Incident \(ids.open) · proxy · pid 201 · open"))
        #expect(last.stdout.contains("Diagnosis: none"))
        #expect(last.stdout.contains("killed by signal 11 (SIGSEGV)"))

        let json = try defib(["incidents", "info", String(ids.hang), "--state-dir", dir.path, "--json"])
        let obj = try #require(try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: Any])
        #expect(obj["id"] as? Int == Int(ids.hang))
        #expect(obj["stacks"] as? String == "Thread 2 (LWP 202):\n#0  syscall () at futex.S:38\n")
        #expect((obj["lock_state"] as? [[String: Any]])?.first?["readers_waiting"] as? Int == 12)
    }

    @Test func badArgumentsGetClearErrors() throws {
        let dir = Scratch("cli-errors"); defer { dir.remove() }
        let bare = Scratch("cli-bare"); defer { bare.remove() }
        _ = try populate(dir)

        let unknown = try defib(["incidents", "info", "42", "--state-dir", dir.path])
        #expect(unknown.code == 1)
        #expect(unknown.stderr.contains("no incident 42 in \(dir.path)/incidents.sqlite"), "\(unknown.stderr)")

        let malformed = try defib(["incidents", "info", "abc", "--state-dir", dir.path])
        #expect(malformed.code == 64)
        #expect(malformed.stderr.contains("malformed incident id 'abc': expected a positive number or 'last'"), "\(malformed.stderr)")

        let noDir = try defib(["incidents", "list"])
        #expect(noDir.code == 64)
        #expect(noDir.stderr.contains("missing --state-dir"), "\(noDir.stderr)")

        let wrongDir = try defib(["incidents", "--state-dir", "\(bare.path)/typo"])
        #expect(wrongDir.code == 1)
        #expect(wrongDir.stderr.contains("no incident database at \(bare.path)/typo/incidents.sqlite"), "\(wrongDir.stderr)")
        let noDatabase = try defib(["incidents", "info", "1", "--state-dir", bare.path])
        #expect(noDatabase.code == 1)
        #expect(noDatabase.stderr.contains("no incident database at \(bare.path)/incidents.sqlite"), "\(noDatabase.stderr)")
        // A state directory `defib run` has not opened yet lists nothing, and says why on stderr.
        let notYet = try defib(["incidents", "--state-dir", bare.path, "--json"])
        #expect(notYet.code == 0 && notYet.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "[]")
        #expect(notYet.stderr.contains("no incident database at \(bare.path)/incidents.sqlite yet"), "\(notYet.stderr)")

        let noneYet = try IncidentStore.open(stateDirectory: bare.path)
        _ = noneYet
        let lastOfNothing = try defib(["incidents", "info", "last", "--state-dir", bare.path])
        #expect(lastOfNothing.code == 1)
        #expect(lastOfNothing.stderr.contains("no incidents in \(bare.path)/incidents.sqlite"), "\(lastOfNothing.stderr)")

        let badDate = try defib(["incidents", "--state-dir", dir.path, "--since", "last tuesday"])
        #expect(badDate.code == 64)
        #expect(badDate.stderr.contains("malformed date 'last tuesday' for --since"), "\(badDate.stderr)")

        let badLimit = try defib(["incidents", "--state-dir", dir.path, "-n", "0"])
        #expect(badLimit.code == 64)
        #expect(badLimit.stderr.contains("--limit must be a positive number"), "\(badLimit.stderr)")
    }

    // MARK: gdb and export, on a real core

    @Test func gdbAndExportWorkOnARealCore() throws {
        let dir = Scratch("cli-core"); defer { dir.remove() }
        let sleeper = try Background(["sleep", "300"], log: "\(dir.path)/sleep.log")
        defer { sleeper.stop(graceMs: 1000) }
        let gcore = try runCommand(["gcore", "-o", "\(dir.path)/core.sleep", String(sleeper.pid)], timeoutMs: 120_000)
        try #require(gcore.code == 0, "gcore failed: \(gcore.stdout)\(gcore.stderr)")
        let core = "\(dir.path)/core.sleep.\(sleeper.pid)"
        let coreSize = try #require(try FileManager.default.attributesOfItem(atPath: core)[.size] as? Int)

        let store = try IncidentStore.open(stateDirectory: dir.path)
        var incident = Incident(service: "sleep", pid: sleeper.pid, binaryPath: resolveExecutable("sleep"), detectedAt: Date(),
                                cause: .missedHeartbeat(misses: 1, lastPongAt: nil, lastError: nil))
        incident.capture = CaptureRecord(method: "gcore", path: core, bytes: Int64(coreSize), durationMs: 900, error: nil)
        incident.stacks = "Thread 1 (LWP \(sleeper.pid)):\n#0  clock_nanosleep ()\n"
        let id = try store.insert(incident)
        let noCore = try store.insert(Incident(service: "sleep", pid: 1, detectedAt: Date(), cause: .exited(code: 1)))

        // gdb, non-interactively through the arguments after --.
        let gdb = try defib(["incidents", "gdb", String(id), "--state-dir", dir.path, "--", "-batch", "-nx", "-ex", "info threads"])
        #expect(gdb.code == 0, "\(gdb.stderr)")
        let gdbOutput = gdb.stdout + gdb.stderr
        #expect(gdbOutput.contains("Core was generated by `sleep"), "gdb output:\n\(gdbOutput)")
        #expect(gdbOutput.contains("(LWP \(sleeper.pid))") && gdbOutput.contains("nanosleep"), "gdb output:\n\(gdbOutput)")

        let none = try defib(["incidents", "gdb", String(noCore), "--state-dir", dir.path])
        #expect(none.code == 1)
        #expect(none.stderr.contains("incident \(noCore) has no core"), "\(none.stderr)")

        // Export to a directory: the core is a hard link (same file system), the JSON and stacks are there.
        let out = "\(dir.path)/export"
        let exported = try defib(["incidents", "export", String(id), "--state-dir", dir.path, "--output", out])
        #expect(exported.code == 0, "\(exported.stderr)")
        #expect(exported.stdout.hasPrefix("wrote \(out)/: incident.json, stacks.txt, core.sleep.\(sleeper.pid)"), "\(exported.stdout)")
        var original = stat(), copy = stat()
        #expect(stat(core, &original) == 0 && stat("\(out)/core.sleep.\(sleeper.pid)", &copy) == 0)
        #expect(original.st_ino == copy.st_ino, "hard link expected")
        let json = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: "\(out)/incident.json"))) as? [String: Any])
        #expect(json["id"] as? Int == Int(id))
        #expect(try String(contentsOfFile: "\(out)/stacks.txt", encoding: .utf8) == incident.stacks)
        var dirStat = stat()
        #expect(stat(out, &dirStat) == 0 && dirStat.st_mode & 0o777 == 0o700, "an export holds a core: private")

        let again = try defib(["incidents", "export", String(id), "--state-dir", dir.path, "--output", out])
        #expect(again.code == 1 && again.stderr.contains("\(out) already exists"), "\(again.stderr)")

        // Export to a tarball: tar lists the three files under incident-ID/.
        let tarball = "\(dir.path)/incident.tar.gz"
        let packed = try defib(["incidents", "export", "last", "--state-dir", dir.path, "-o", tarball])
        #expect(packed.code == 0, "\(packed.stderr)")
        #expect(packed.stdout.hasPrefix("wrote \(tarball) ("), "\(packed.stdout)")
        let listing = try runCommand(["tar", "-tzf", tarball])
        let members = Set(listing.stdout.split(separator: "\n").map(String.init))
        #expect(members.isSuperset(of: ["incident-\(noCore)/incident.json"]), "\(members)")
        let packedCore = try defib(["incidents", "export", String(id), "--state-dir", dir.path, "-o", "\(dir.path)/core.tgz"])
        #expect(packedCore.code == 0, "\(packedCore.stderr)")
        let coreListing = try runCommand(["tar", "-tzf", "\(dir.path)/core.tgz"])
        #expect(Set(coreListing.stdout.split(separator: "\n").map(String.init)).isSuperset(of: [
            "incident-\(id)/incident.json", "incident-\(id)/stacks.txt", "incident-\(id)/core.sleep.\(sleeper.pid)"]), "\(coreListing.stdout)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path).allSatisfy { !$0.hasPrefix(".defib-export-") },
                "the staging directory is removed")

        // A core that was deleted since: gdb says so.
        try FileManager.default.removeItem(atPath: core)
        let gone = try defib(["incidents", "gdb", String(id), "--state-dir", dir.path])
        #expect(gone.code == 1)
        #expect(gone.stderr.contains("the core of incident \(id) is gone: \(core)"), "\(gone.stderr)")
        let listed = try defib(["incidents", "--state-dir", dir.path])
        #expect(listed.stdout.contains("(gone)"), "\(listed.stdout)")
    }

    // MARK: check-config

    @Test func checkConfigAcceptsTheExampleAndListsEveryProblem() throws {
        let example = URL(fileURLWithPath: #filePath).resolvingSymlinksInPath().deletingLastPathComponent()
            .appendingPathComponent("../../units/example.toml").standardized.path
        let ok = try defib(["check-config", example])
        #expect(ok.code == 0, "\(ok.stderr)")
        #expect(ok.stdout.hasPrefix("\(example): ok\n"), "\(ok.stdout)")
        for expected in ["/var/lib/defib", "proxy: /usr/local/bin/defib-proxy", "ping every 200 ms", "/var/lib/defib/run/proxy/control.sock",
                         "native, budget 10000 ms", "hang at 1000 ms", "http = 127.0.0.1:8080", "/var/lib/defib/incidents.sqlite"] {
            #expect(ok.stdout.contains(expected), "summary lacks '\(expected)':\n\(ok.stdout)")
        }

        let dir = Scratch("cli-config"); defer { dir.remove() }
        let bad = "\(dir.path)/bad.toml"
        try """
            state_dir = "/var/lib/defib"
            [service]
            argv = ["/bin/true"]
            [heartbeat]
            intervall_ms = 100
            deadline_ms = "1s"
            [capture]
            method = "teleport"
            """.write(toFile: bad, atomically: true, encoding: .utf8)
        let r = try defib(["check-config", bad])
        #expect(r.code == 1)
        #expect(r.stdout.isEmpty)
        #expect(r.stderr.contains("\(bad):5: heartbeat.intervall_ms: unknown key (did you mean interval_ms?)"), "\(r.stderr)")
        #expect(r.stderr.contains("\(bad):6: heartbeat.deadline_ms: expected an integer, got string \"1s\""), "\(r.stderr)")
        #expect(r.stderr.contains("\(bad):8: capture.method: unknown capture method \"teleport\""), "\(r.stderr)")
        #expect(r.stderr.contains("3 problems found"), "\(r.stderr)")

        let incomplete = "\(dir.path)/incomplete.toml"
        try "[heartbeat]\nmisses = 2\n".write(toFile: incomplete, atomically: true, encoding: .utf8)
        let missing = try defib(["check-config", incomplete])
        #expect(missing.code == 1)
        #expect(missing.stderr.contains("\(incomplete): state_dir: required"), "\(missing.stderr)")
        #expect(missing.stderr.contains("\(incomplete): service.argv: required"), "\(missing.stderr)")

        let syntax = "\(dir.path)/syntax.toml"
        try "state_dir = \"/x\"\n[heartbeat\n".write(toFile: syntax, atomically: true, encoding: .utf8)
        let broken = try defib(["check-config", syntax])
        #expect(broken.code == 1)
        #expect(broken.stderr.contains("\(syntax):2:"), "\(broken.stderr)")

        let absent = try defib(["check-config", "\(dir.path)/nope.toml"])
        #expect(absent.code == 1)
        #expect(absent.stderr.contains("\(dir.path)/nope.toml: cannot read: no such file"), "\(absent.stderr)")
    }
}
