import DefibCore
import DefibPOSIX
import DefibTestKit
import Foundation
import Glibc
import Testing

/// The supervisor loop's hardening end to end, with real processes: each instance in a cgroup of its own,
/// a store on a full disk, a child flooding its NOTIFY_SOCKET or its control channel.
@Suite struct HardenedRuntimeTests {
    static var pingable: String { "\(Binaries.fixtures)/pingable.py" }

    static func isAlive(_ pid: Int32) -> Bool {
        guard kill(pid, 0) == 0 else { return false }
        return !((readTextFile("/proc/\(pid)/stat") ?? "").split(separator: ")").last?.hasPrefix(" Z") ?? true)
    }

    static func pids(_ file: String) -> [Int32] {
        ((try? String(contentsOfFile: file, encoding: .utf8)) ?? "").split(separator: "\n").compactMap { Int32($0) }
    }

    static func cgroup(of pid: Int32) -> String {
        (readTextFile("/proc/\(pid)/cgroup") ?? "").split(separator: "\n").first { $0.hasPrefix("0::") }.map { String($0.dropFirst(3)) } ?? ""
    }

    /// Kills (by pid) whatever a test's daemons left, however the test ends.
    static func reap(_ file: String) { for pid in pids(file) where isAlive(pid) { kill(pid, SIGKILL) } }

    /// A control socket defib may not open (another user's, mode 0600, and defib without CAP_DAC_OVERRIDE, as
    /// under a unit whose CapabilityBoundingSet= drops it) is named as such, with what defib needs, rather than
    /// as a bare errno: this is what a start timeout's last error and every missed ping then say.
    @Test func aControlSocketDefibMayNotOpenSaysWhatIsMissing() throws {
        try #require(geteuid() == 0 && access("/usr/bin/setpriv", X_OK) == 0, "needs root and setpriv")
        let dir = Scratch("eacces"); defer { dir.remove() }
        let path = dir.path + "/control.sock"
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        try #require(fd >= 0)
        defer { close(fd) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in for (i, b) in path.utf8.enumerated() { raw[i] = b } }
        let bound = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        try #require(bound == 0 && listen(fd, 4) == 0)
        try #require(chmod(path, 0o600) == 0 && chown(path, 65534, 65534) == 0)
        let ctl = try runCommand(["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--",
                                  Binaries.defib, "ctl", "--socket", path, "--timeout", "500", "ping"])
        #expect(ctl.code != 0)
        #expect(ctl.stderr.contains("permission denied") && ctl.stderr.contains("CAP_DAC_OVERRIDE"), "\(ctl)")
        // With the capability, root gets in (and hears nothing back from a socket nobody serves).
        let root = try runCommand([Binaries.defib, "ctl", "--socket", path, "--timeout", "300", "ping"])
        #expect(!root.stderr.contains("permission denied"), "\(root)")
    }

    /// The instance and the chain of daemons it started (each setsid'd, ignoring SIGTERM) share the instance's
    /// cgroup leaf; the hang's kill takes them all at once — including the ones a one-pass sweep of orphans
    /// would miss, since they are orphaned only when the one above them dies — and the replacement gets a
    /// leaf of its own. At exit the service cgroup goes.
    @Test func theHangKillTakesEverythingTheInstanceStarted() throws {
        try #require(geteuid() == 0 && ServiceCgroup.currentLocation() != nil, "needs root and cgroup v2")
        let dir = Scratch("leaf-kill"); defer { dir.remove() }
        let state = dir.path + "/state", daemons = dir.path + "/daemons"
        defer { Self.reap(daemons) }
        let defib = try Background([Binaries.defib, "run", "--state-dir", state, "--name", "chain", "--interval", "50", "--deadline", "400",
                                    "--capture", "none", "--", Self.pingable],
                                   env: ["MODE": "hang-after:20", "DAEMON_PIDFILE": daemons, "DAEMON_CHAIN": "3"], log: dir.path + "/defib.log")
        try #require(waitUntil(timeoutMs: 20_000) { Self.pids(daemons).count >= 3 }, "\(defib.log)")
        let first = Array(Self.pids(daemons).prefix(3))
        let leaf = Self.cgroup(of: first[0])
        let serviceCgroup = ServiceCgroup.cgroupName(stateDirectory: state, service: "chain")
        #expect(leaf.hasSuffix("/\(serviceCgroup)/instance-1"), "\(leaf)")
        #expect(first.allSatisfy { Self.cgroup(of: $0) == leaf }, "the whole chain is in the instance's leaf")
        let recovered = waitUntil(timeoutMs: 30_000) {
            (try? incidentsJSON(stateDir: state))?.contains { $0["outcome"] as? String == "recovered" } == true
        }
        #expect(recovered, "\(defib.log)")
        #expect(waitUntil(timeoutMs: 10_000) { first.allSatisfy { !Self.isAlive($0) } },
                "alive after the kill: \(first.filter(Self.isAlive)) \(defib.log)")
        let second = Self.pids(daemons).dropFirst(3).first
        if let second { #expect(Self.cgroup(of: second).hasSuffix("/\(serviceCgroup)/instance-2"), "\(Self.cgroup(of: second))") }
        let location = try #require(ServiceCgroup.currentLocation())
        let serviceDir = try #require(location.directory(of: (leaf as NSString).deletingLastPathComponent))
        #expect(defib.stop() == .exited(code: 0), "\(defib.log)")
        #expect(Self.pids(daemons).allSatisfy { !Self.isAlive($0) }, "every daemon of every instance is gone")
        #expect(access(serviceDir, F_OK) != 0, "the service cgroup \(serviceDir) is removed at exit")
    }

    /// defib is SIGKILLed while its instance runs: the instance dies with it (its parent-death signal), but the
    /// daemons it started do not. The next defib of the service kills them (they are in the dead one's cgroup)
    /// before its own first start, and says so.
    @Test func whatAKilledDefibsInstanceLeftIsKilledByTheNextOne() throws {
        try #require(geteuid() == 0 && ServiceCgroup.currentLocation() != nil, "needs root and cgroup v2")
        let dir = Scratch("killed-defib"); defer { dir.remove() }
        let state = dir.path + "/state", daemons = dir.path + "/daemons"
        defer { Self.reap(daemons) }
        let argv = [Binaries.defib, "run", "--state-dir", state, "--name", "web", "--interval", "50", "--deadline", "400", "--capture", "none",
                    "--", Self.pingable]
        let env = ["MODE": "ok", "DAEMON_PIDFILE": daemons, "DAEMON_CHAIN": "2"]
        let first = try Background(argv, env: env, log: dir.path + "/first.log")
        try #require(waitUntil(timeoutMs: 20_000) { Self.pids(daemons).count >= 2 }, "\(first.log)")
        let left = Self.pids(daemons)
        try first.child.signal(SIGKILL)
        _ = first.wait(timeoutMs: 10_000)
        usleep(200_000)
        #expect(left.allSatisfy(Self.isAlive), "its daemons outlive a SIGKILLed defib")
        let second = try Background(argv, env: ["MODE": "ok"], log: dir.path + "/second.log")
        defer { second.stop() }
        #expect(waitUntil(timeoutMs: 20_000) {
            (try? runCommand([Binaries.defib, "ctl", "--state-dir", state, "ping", "1"]).stdout) == "pong 1\n"
        }, "\(second.log)")
        #expect(left.allSatisfy { !Self.isAlive($0) }, "still alive: \(left.filter(Self.isAlive))")
        #expect(second.log.contains("process(es) a dead supervisor of web left in its cgroup"), "\(second.log)")
    }

    /// The state directory on a tmpfs that fills up while the service hangs, again and again: every hang is
    /// still captured, killed and restarted (the supervision does not care what the disk does); the incidents
    /// the full store refuses are logged in full meanwhile; once space is freed they land in the store.
    @Test func aFullDiskDoesNotStopTheSupervisionAndTheIncidentsLandLater() throws {
        try #require(geteuid() == 0, "mounting a tmpfs needs root")
        try withTmpfs(size: "8m", name: "state-full") { disk in
            let state = disk.path + "/state"
            let config = try writePingableConfig(at: disk.path + "/defib.toml", stateDir: state, name: "full", mode: "hang-after:30",
                                                 extra: "[capture]\nmethod = \"none\"\n[restart]\nintensity_max = 100")
            let logPath = "/tmp/defib-test-full-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).log"
            defer { unlink(logPath) }
            let defib = try Background([Binaries.defib, "run", "--config", config], log: logPath)
            defer { defib.stop() }
            try #require(waitUntil(timeoutMs: 20_000) {
                (try? runCommand([Binaries.defib, "ctl", "--state-dir", state, "--name", "full", "ping", "1"]).stdout) == "pong 1\n"
            }, "\(defib.log)")
            try disk.fill()
            // Hangs go on being handled: two replacements started while the disk is full.
            let restarts = { defib.log.components(separatedBy: "started full: pid").count - 1 }
            let before = restarts()
            #expect(waitUntil(timeoutMs: 30_000) { restarts() >= before + 2 }, "\(defib.log)")
            #expect(defib.log.contains("could not record incident: ") && defib.log.contains("kept in memory and written when the store takes it"),
                    "\(defib.log)")
            #expect(defib.log.contains("incident not stored: {\"id\":null"), "logged in full meanwhile: \(defib.log)")
            disk.unfill()
            let landed = try waitUntil(timeoutMs: 20_000) {
                try incidentsJSON(stateDir: state).filter { $0["outcome"] as? String == "recovered" }.count >= 2
            }
            #expect(landed, "\((try? incidentsJSON(stateDir: state).count) ?? -1) stored: \(defib.log.suffix(3000))")
            #expect(defib.log.contains("stored now (the store had refused it)"), "\(defib.log.suffix(3000))")
            #expect(!defib.log.contains("giving up"), "the supervision never stopped")
        }
    }

    /// A child that floods its NOTIFY_SOCKET (its own pid and a forked one, long and short datagrams, as fast as
    /// it can): defib's log stays a few hundred lines and says how much it left out.
    @Test func aChildFloodingSdNotifyCostsABoundedLog() throws {
        let dir = Scratch("notify-flood"); defer { dir.remove() }
        let counter = dir.path + "/sent"
        let defib = try Background([Binaries.defib, "run", "--state-dir", dir.path + "/state", "--heartbeat", "notify", "--interval", "200",
                                    "--capture", "none", "--", "\(Binaries.fixtures)/notify_flood.py"],
                                   env: ["COUNT_FILE": counter], log: dir.path + "/defib.log")
        #expect(waitUntil(timeoutMs: 30_000) { (Int((try? String(contentsOfFile: counter, encoding: .utf8)) ?? "") ?? 0) >= 20_000 }, "\(defib.log)")
        #expect(defib.stop() == .exited(code: 0))
        let sent = Int((try? String(contentsOfFile: counter, encoding: .utf8)) ?? "") ?? 0
        let lines = defib.log.split(separator: "\n")
        #expect(lines.count < 1_000, "\(lines.count) log lines for \(sent)+ datagrams")
        #expect(defib.log.utf8.count < 1 << 20, "\(defib.log.utf8.count) bytes of log")
        #expect(defib.log.contains("rejected sd_notify messages suppressed"), "\(defib.log.suffix(2000))")
        #expect(defib.log.contains("sd_notify messages suppressed (rate limit"), "\(defib.log.suffix(2000))")
        #expect(!defib.log.contains(String(repeating: "x", count: 2048)), "a 60 KB message is cut")
    }

    /// Pids defib says it started, in order.
    static func started(_ log: String, name: String) -> [Int32] {
        log.components(separatedBy: "started \(name): pid ").dropFirst().compactMap { Int32($0.prefix { $0.isNumber }) }
    }

    static func owner(_ path: String) -> (mode: mode_t, uid: uid_t, gid: gid_t)? {
        var st = stat()
        guard lstat(path, &st) == 0 else { return nil }
        return (st.st_mode & 0o7777, st.st_uid, st.st_gid)
    }

    /// `--user nobody`: the service runs as nobody and makes its control socket in run/NAME/instance, a directory
    /// defib makes anew (0770, root and nobody's group) before every start below run/NAME (0710, the same group);
    /// defib pings it there, before and after a hang's restart. What the service left in its directory — here a
    /// link to /etc/shadow — is gone at the next start, never followed.
    @Test func aServiceRunAsNobodyAnswersPingsFromItsInstanceDirectory() throws {
        try #require(geteuid() == 0, "changing user needs root")
        let nobody = OtherUser.nobody
        let dir = Scratch("as-nobody"); defer { dir.remove() }
        let state = dir.path + "/state", runDir = state + "/run/svc", instance = runDir + "/instance"
        let defib = try Background([Binaries.defib, "run", "--state-dir", state, "--name", "svc", "--user", "nobody", "--interval", "50",
                                    "--deadline", "400", "--capture", "none", "--", Self.pingable],
                                   env: ["MODE": "hang-after:60"], log: dir.path + "/defib.log")
        defer { defib.stop() }
        let pong = { (try? runCommand([Binaries.defib, "ctl", "--state-dir", state, "--name", "svc", "ping", "9"]).stdout) == "pong 9\n" }
        try #require(waitUntil(timeoutMs: 20_000, pong), "\(defib.log)")
        let plant = instance + "/planted"
        #expect(symlink("/etc/shadow", plant) == 0 && lchown(plant, nobody.uid, nobody.gid) == 0)
        let first = try #require(Self.started(defib.log, name: "svc").first)
        #expect((readTextFile("/proc/\(first)/status") ?? "").contains("Uid:\t\(nobody.uid)\t\(nobody.uid)\t\(nobody.uid)\t\(nobody.uid)"))
        #expect(Self.owner(state)?.mode == 0o711 && Self.owner(state + "/run")?.mode == 0o711)
        let run = try #require(Self.owner(runDir)), inst = try #require(Self.owner(instance))
        #expect(run.mode == 0o710 && run.uid == 0 && run.gid == nobody.gid, "run/svc: \(run)")
        #expect(inst.mode == 0o770 && inst.uid == 0 && inst.gid == nobody.gid, "run/svc/instance: \(inst)")
        #expect(Self.owner(instance + "/control.sock")?.uid == nobody.uid, "the service made its socket itself")

        let restarted = waitUntil(timeoutMs: 30_000) { Self.started(defib.log, name: "svc").count >= 2 }
        try #require(restarted, "\(defib.log)")
        #expect(waitUntil(timeoutMs: 20_000, pong), "pinged in the new instance directory: \(defib.log)")
        let second = Self.started(defib.log, name: "svc")[1]
        #expect((readTextFile("/proc/\(second)/status") ?? "").contains("Uid:\t\(nobody.uid)\t"))
        let remade = try #require(Self.owner(instance))
        #expect(remade.mode == 0o770 && remade.gid == nobody.gid, "made anew for the new instance: \(remade)")
        #expect(Self.owner(plant) == nil, "what the old instance left is gone")
        #expect(Self.owner("/etc/shadow")?.uid == 0, "and the link was not followed")
        #expect(waitUntil(timeoutMs: 10_000) { (try? incidentsJSON(stateDir: state))?.first?["outcome"] as? String == "recovered" })
    }

    /// Every ping is answered with 100 MB and no newline: each is an unexpected reply after 4 KiB, the loop
    /// stays responsive (SIGTERM ends it promptly), and the busy writer is not called starved.
    @Test func aFloodingControlChannelIsAMissNotAStall() throws {
        let dir = Scratch("reply-flood"); defer { dir.remove() }
        let state = dir.path + "/state"
        let defib = try Background([Binaries.defib, "run", "--state-dir", state, "--interval", "100", "--deadline", "600",
                                    "--capture", "none", "--", Self.pingable], env: ["MODE": "flood-reply-after:5"], log: dir.path + "/defib.log")
        let found = waitUntil(timeoutMs: 30_000) { (try? incidentsJSON(stateDir: state))?.isEmpty == false }
        #expect(found, "\(defib.log)")
        #expect(defib.stop(graceMs: 20_000) == .exited(code: 0), "SIGTERM is handled while replies flood in: \(defib.log)")
        let incident = try #require(try incidentsJSON(stateDir: state).first)
        #expect((incident["cause_detail"] as? String ?? "").contains("unexpected reply: more than 4096 bytes without a newline"), "\(incident)")
        #expect(!defib.log.contains("starved, not stuck"), "\(defib.log)")
    }
}
