import DefibCore
import Foundation
import Testing

/// The pure parts of defib's coredumpctl side: MATCH parsing, systemd's reading of a cgroup, the journal
/// entry that announces a core, and how an incident says what ended its process.
struct CoredumpctlModelTests {
    @Test func matchesParseAsCoredumpctlsDo() throws {
        let cwd = "/srv/app"
        #expect(try IncidentMatch.parse("last", workingDirectory: cwd) == .last)
        #expect(try IncidentMatch.parse("4123", workingDirectory: cwd) == .number(4123))
        #expect(try IncidentMatch.parse("defib-proxy", workingDirectory: cwd) == .field(.comm, "defib-proxy"))
        #expect(try IncidentMatch.parse("/usr/bin/x", workingDirectory: cwd) == .field(.exe, "/usr/bin/x"))
        #expect(try IncidentMatch.parse("bin/../x", workingDirectory: cwd) == .field(.exe, "/srv/app/x"), "relative paths from the cwd")
        #expect(try IncidentMatch.parse("./x", workingDirectory: cwd) == .field(.exe, "/srv/app/x"))
        #expect(try IncidentMatch.parse("PID=7", workingDirectory: cwd) == .field(.pid, "7"))
        #expect(try IncidentMatch.parse("COREDUMP_PID=7", workingDirectory: cwd) == .field(.pid, "7"))
        #expect(try IncidentMatch.parse("INCIDENT_ID=3", workingDirectory: cwd) == .field(.id, "3"))
        #expect(try IncidentMatch.parse("DIAGNOSIS=dead-loop", workingDirectory: cwd) == .field(.diagnosis, "dead-loop"))
        #expect(try IncidentMatch.parse("EXE=x", workingDirectory: cwd) == .field(.exe, "/srv/app/x"))
        #expect(try IncidentMatch.parse("SIGNATURE=a=b", workingDirectory: cwd) == .field(.signature, "a=b"), "only the first = splits")
        for bad in ["", "PID=", "PID=-1", "UID=x", "NOPE=1", "pid=1"] {
            #expect(throws: IncidentMatchError.self, "\(bad)") { try IncidentMatch.parse(bad, workingDirectory: cwd) }
        }
        #expect((try? IncidentMatch.parse("NOPE=1", workingDirectory: cwd)) == nil)
        do { _ = try IncidentMatch.parse("NOPE=1", workingDirectory: cwd) } catch {
            #expect("\(error)".contains("unknown match field 'NOPE'") && "\(error)".contains("SERVICE"))
        }
    }

    @Test func cgroupsAreReadAsSystemdReadsThem() {
        #expect(SystemdCgroup.split("/system.slice/system-defib.slice/defib@proxy.service") == ("system-defib.slice", "defib@proxy.service"))
        #expect(SystemdCgroup.split("/system.slice/docker-1.scope/sub") == ("system.slice", "docker-1.scope"))
        #expect(SystemdCgroup.split("/user.slice").unit == nil)
        #expect(SystemdCgroup.split("/defib-sd.1/payload").unit == nil, "a directory that is no unit")
        #expect(SystemdCgroup.split("/").unit == nil)

        let hybrid = "9:name=systemd:/host/x\n4:memory:/m\n0::/machine/payload/system.slice/a.service\n"
        #expect(SystemdCgroup.path(fromProcCgroup: hybrid, unified: true) == "/machine/payload/system.slice/a.service")
        #expect(SystemdCgroup.path(fromProcCgroup: hybrid, unified: false) == "/host/x")
        #expect(SystemdCgroup.path(fromProcCgroup: "0::/a.service\n", unified: false) == "/a.service", "the other hierarchy as a fallback")
        #expect(SystemdCgroup.path(fromProcCgroup: "garbage", unified: true) == nil)

        #expect(SystemdCgroup.relative("/machine/payload/system.slice/a.service", pid1Path: "/machine/payload/init.scope") == "/system.slice/a.service")
        #expect(SystemdCgroup.relative("/system.slice/a.service", pid1Path: "/init.scope") == "/system.slice/a.service")
        #expect(SystemdCgroup.relative("/elsewhere/a.service", pid1Path: "/machine/init.scope") == "/elsewhere/a.service")
        #expect(SystemdCgroup.relative("/machinex/a.service", pid1Path: "/machine/init.scope") == "/machinex/a.service", "a prefix is a path component")
    }

    @Test func theCommandLineIsQuotedForAShell() {
        let p = IncidentProcess(uid: 0, gid: 0, comm: "x", argv: ["/bin/x", "--route", "a b", "it's", "", "k=v,w:1"])
        #expect(p.commandLine == "/bin/x --route 'a b' 'it'\\''s' '' k=v,w:1")
    }

    static func hang(core: String? = "/var/lib/defib/cores/core.proxy.7.4000.zst") -> Incident {
        var i = Incident(id: 7, service: "proxy", pid: 4000, binaryPath: "/usr/local/bin/defib-proxy",
                         detectedAt: Date(timeIntervalSince1970: 1_795_000_000.25),
                         cause: .missedHeartbeat(misses: 1, lastPongAt: nil, lastError: nil))
        i.killedAt = Date(timeIntervalSince1970: 1_795_000_001)
        i.outcome = .recovered
        i.diagnosis = "corrupted-lock-word: lock 'catalog' holds 0xfffffffffffffffe"
        i.signature = "00000000feedbeef"
        i.stacks = "Thread 1 (LWP 4000):\n#0  futex_wait ()\n"
        i.process = IncidentProcess(uid: 0, gid: 0, comm: "defib-proxy", argv: ["/usr/local/bin/defib-proxy", "--route", "a b"],
                                    cgroup: "/system.slice/system-defib.slice/defib@proxy.service")
        if let core { i.capture = CaptureRecord(method: "native", path: core, bytes: 1000, durationMs: 5, error: nil) }
        return i
    }

    @Test func theAnnouncementCarriesWhatCoredumpctlReads() throws {
        let fields = try CoredumpEntry.fields(for: Self.hang(), hostname: "vm", stateDirectory: "/var/lib/defib/proxy").get()
        let map = Dictionary(fields, uniquingKeysWith: { a, _ in a })
        #expect(fields.count == map.count, "no field twice")
        #expect(map["MESSAGE_ID"] == "fc2e22bc6ee647b6b90729ab34a250b1" && map["PRIORITY"] == "2")
        // coredumpctl list skips an entry without any of these.
        #expect(map["COREDUMP_PID"] == "4000" && map["COREDUMP_UID"] == "0" && map["COREDUMP_GID"] == "0")
        #expect(map["COREDUMP_SIGNAL"] == "9" && map["COREDUMP_SIGNAL_NAME"] == "SIGKILL" && map["COREDUMP_COMM"] == "defib-proxy")
        // coredumpctl debug needs these.
        #expect(map["COREDUMP_EXE"] == "/usr/local/bin/defib-proxy" && map["COREDUMP_FILENAME"] == "/var/lib/defib/cores/core.proxy.7.4000.zst")
        #expect(map["COREDUMP_TIMESTAMP"] == "1795000000250000", "microseconds")
        #expect(map["COREDUMP_CMDLINE"] == "/usr/local/bin/defib-proxy --route 'a b'")
        #expect(map["COREDUMP_UNIT"] == "defib@proxy.service" && map["COREDUMP_SLICE"] == "system-defib.slice" && map["COREDUMP_HOSTNAME"] == "vm")
        #expect(map["COREDUMP_CGROUP"] == "/system.slice/system-defib.slice/defib@proxy.service")
        #expect(map["COREDUMP_TRUNCATED"] == nil)
        #expect(map["INCIDENT_ID"] == "7" && map["SERVICE"] == "proxy" && map["SIGNATURE"] == "00000000feedbeef")
        #expect(map["DIAGNOSIS"]?.hasPrefix("corrupted-lock-word") == true && map["CORE_PATH"] == map["COREDUMP_FILENAME"])
        let message = try #require(map["MESSAGE"])
        #expect(message.hasPrefix("Process 4000 (defib-proxy) of user 0 dumped core"))
        for line in ["Diagnosis: corrupted-lock-word", "Signature: 00000000feedbeef", "defib incidents info 7 --state-dir /var/lib/defib/proxy",
                     "Thread 1 (LWP 4000):"] {
            #expect(message.contains(line), "\(line)")
        }
    }

    @Test func aGzipCoreIsAnnouncedWithoutAFileCoredumpctlCannotRead() throws {
        var truncated = Self.hang(core: "/c/core.gz")
        truncated.notes = ["core truncated at the 10 ms budget"]
        let map = Dictionary(try CoredumpEntry.fields(for: truncated, hostname: nil, stateDirectory: "/s").get(), uniquingKeysWith: { a, _ in a })
        #expect(map["COREDUMP_FILENAME"] == nil && map["CORE_PATH"] == "/c/core.gz" && map["COREDUMP_HOSTNAME"] == nil)
        #expect(map["MESSAGE"]?.contains("gzip: coredumpctl cannot read it") == true && map["COREDUMP_TRUNCATED"] == "1")
    }

    @Test func nothingIsAnnouncedWithoutACoreAProcessOrAnEnd() {
        #expect(throws: CoredumpEntry.Skip.noCore) { try CoredumpEntry.fields(for: Self.hang(core: nil), hostname: nil, stateDirectory: "/s").get() }
        var unknown = Self.hang(); unknown.process = nil
        #expect(throws: CoredumpEntry.Skip.unknownProcess) { try CoredumpEntry.fields(for: unknown, hostname: nil, stateDirectory: "/s").get() }
        var alive = Self.hang(); alive.killedAt = nil
        #expect(throws: CoredumpEntry.Skip.notEnded) { try CoredumpEntry.fields(for: alive, hostname: nil, stateDirectory: "/s").get() }
    }

    @Test func theEndingSignalAndTheDiagnosisKind() {
        var i = Self.hang()
        #expect(i.endingSignal == 9, "defib's kill")
        i.signal = 31
        #expect(i.endingSignal == 31, "the kernel method's core-dumping signal")
        let died = Incident(service: "s", pid: 1, detectedAt: Date(), cause: .signaled(signal: 11, coreDumped: true))
        #expect(died.endingSignal == 11)
        #expect(Incident(service: "s", pid: 1, detectedAt: Date(), cause: .exited(code: 1)).endingSignal == nil)
        #expect(i.diagnosisKind == "corrupted-lock-word")
        i.diagnosis = ""
        #expect(i.diagnosisKind == nil)
        #expect(signalName(24) == "SIGXCPU" && signalName(64) == "signal 64")
    }
}
