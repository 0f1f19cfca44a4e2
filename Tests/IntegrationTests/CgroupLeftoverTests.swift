import DefibCore
import DefibPOSIX
import DefibTestKit
import Foundation
import Glibc
import Testing

/// A supervisor SIGKILLed while its service has 200 setsid'd children that ignore SIGTERM: they outlive
/// it (reparented away, out of reach of a process-group kill or a subreaper), and the next `defib run`
/// finds them in the service's cgroup and kills them before it starts anything.
@Suite(.serialized, .timeLimit(.minutes(3)))
struct CgroupLeftoverTests {
    static var helper: String { "\(Binaries.directory)/defib-test-helper" }
    static let script = "for i in $(seq 200); do setsid sh -c 'trap \"\" TERM; exec sleep 600' & done; exec sleep 600"

    static func isAlive(_ pid: Int32) -> Bool {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8), let close = stat.lastIndex(of: ")") else { return false }
        let state = stat[stat.index(close, offsetBy: 2)]
        return state != "Z" && state != "X"
    }

    static func parent(_ pid: Int32) -> Int32? {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8), let close = stat.lastIndex(of: ")") else { return nil }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        return fields.count > 1 ? Int32(fields[1]) : nil
    }

    /// Starts the helper supervisor and waits until its instance leaf holds the instance and 200 settled sleeps.
    static func startSupervisor(state: String, name: String, log: String) throws -> (Background, leaf: String, sleepers: [Int32]) {
        let supervisor = try Background([helper, "supervise-in-cgroup", state, name, "--", "sh", "-c", script], log: log)
        var leaf: String?
        #expect(waitUntil(timeoutMs: 30_000) {
            leaf = supervisor.log.split(separator: "\n").first { $0.hasPrefix("ready ") }.map { String($0.split(separator: " ")[2]) }
            return leaf != nil
        }, "\(supervisor.log)")
        let path = try #require(leaf)
        var sleepers: [Int32] = []
        _ = waitUntil(timeoutMs: 60_000) {
            sleepers = ((try? String(contentsOfFile: path + "/cgroup.procs", encoding: .utf8)) ?? "").split(separator: "\n").compactMap { Int32($0) }
                .filter { processName($0) == "sleep" && parent($0) != supervisor.pid }
            return sleepers.count == 200
        }
        return (supervisor, path, sleepers)
    }

    @Test func theNextDefibKillsWhatAKilledSupervisorLeftInTheCgroup() throws {
        try #require(geteuid() == 0 && ServiceCgroup.currentLocation() != nil, "needs root and cgroup v2")
        let dir = Scratch("cgroup-leftover"); defer { dir.remove() }
        let state = dir.path + "/state"
        let (supervisor, leaf, sleepers) = try Self.startSupervisor(state: state, name: "web", log: dir.path + "/helper.log")
        defer { supervisor.stop() }
        try #require(sleepers.count == 200, "only \(sleepers.count) settled: \(supervisor.log)")
        for pid in sleepers { kill(pid, SIGTERM) }
        try supervisor.child.signal(SIGKILL)
        _ = supervisor.wait(timeoutMs: 10_000)
        usleep(300_000)
        let orphans = sleepers.filter(Self.isAlive)
        #expect(orphans.count == 200, "they ignore SIGTERM and outlive their supervisor")
        #expect(orphans.allSatisfy { Self.parent($0) != supervisor.pid }, "reparented away from it")

        let defib = try Background([Binaries.defib, "run", "--state-dir", state, "--name", "web", "--interval", "50", "--deadline", "400",
                                    "--capture", "none", "--", "\(Binaries.fixtures)/pingable.py"], env: ["MODE": "ok"], log: dir.path + "/defib.log")
        defer { defib.stop() }
        #expect(waitUntil(timeoutMs: 20_000) {
            (try? runCommand([Binaries.defib, "ctl", "--state-dir", state, "ping", "1"]).stdout) == "pong 1\n"
        }, "\(defib.log)")
        #expect(defib.log.contains("killed 20"), "\(defib.log)")
        #expect(defib.log.contains("process(es) a dead supervisor of web left in its cgroup"), "\(defib.log)")
        #expect(sleepers.filter(Self.isAlive).isEmpty, "still alive: \(sleepers.filter(Self.isAlive).count)")
        #expect(access(leaf, F_OK) != 0, "the dead instance's leaf is removed")
    }

    @Test func aSupervisorInANonRootCgroupMovesItselfIntoALeaf() throws {
        try #require(geteuid() == 0)
        let location = try #require(ServiceCgroup.currentLocation(), "needs cgroup v2")
        let dir = Scratch("cgroup-leaf"); defer { dir.remove() }
        // A cgroup standing for a unit's (delegated) cgroup, the helper started inside it.
        let own = "defib-test-unit-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let ownDir = try #require(location.directory(of: location.ownCgroup)) + "/" + own
        try #require(mkdir(ownDir, 0o755) == 0)
        defer { ServiceCgroupTestCleanup.remove(ownDir) }
        let procs = open(ownDir + "/cgroup.procs", O_WRONLY | O_CLOEXEC)
        try #require(procs >= 0)
        defer { close(procs) }
        var environment = currentEnvironment()
        environment["MODE"] = "ok"
        let log = dir.path + "/helper.log"
        let out = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        var request = SpawnRequest(argv: [Self.helper, "supervise-in-cgroup", dir.path + "/state", "web", "--", "sleep", "600"], environment: environment)
        request.cgroupProcsFD = procs
        request.parentDeathSignal = 0; request.stdinFromDevNull = true; request.stdoutFD = out; request.stderrFD = out
        let helper = try spawnProcess(request)
        close(out)
        defer { try? helper.signal(SIGKILL); _ = waitForChild(helper, timeoutMs: 5000); helper.closePidfd() }
        let text = { (try? String(contentsOfFile: log, encoding: .utf8)) ?? "" }
        try #require(waitUntil(timeoutMs: 30_000) { text().contains("ready ") }, "\(text())")
        let base = (location.ownCgroup == "/" ? "" : location.ownCgroup) + "/" + own
        let helperCgroup = (try? String(contentsOfFile: "/proc/\(helper.pid)/cgroup", encoding: .utf8)) ?? ""
        #expect(helperCgroup.contains("0::\(base)/supervisor\n"), "\(helperCgroup)")
        let childPid = try #require(text().split(separator: " ").dropFirst().first.flatMap { Int32($0) })
        let childCgroup = (try? String(contentsOfFile: "/proc/\(childPid)/cgroup", encoding: .utf8)) ?? ""
        let name = ServiceCgroup.cgroupName(stateDirectory: dir.path + "/state", service: "web")
        #expect(childCgroup.contains("0::\(base)/\(name)/instance-1\n"), "\(childCgroup)")
        #expect(((try? String(contentsOfFile: ownDir + "/cgroup.procs", encoding: .utf8)) ?? "x").isEmpty, "no process left beside the service cgroups")
    }
}

/// Removes a test's cgroup tree (killing what is in it) from the leaves up.
enum ServiceCgroupTestCleanup {
    static func remove(_ dir: String) {
        let kill = open(dir + "/cgroup.kill", O_WRONLY | O_CLOEXEC)
        if kill >= 0 { _ = write(kill, "1", 1); close(kill) }
        for _ in 0..<500 {
            let events = (try? String(contentsOfFile: dir + "/cgroup.events", encoding: .utf8)) ?? ""
            if !events.contains("populated 1") { break }
            usleep(10_000)
        }
        func rm(_ d: String) {
            for child in (try? FileManager.default.contentsOfDirectory(atPath: d)) ?? [] {
                var st = stat()
                if stat(d + "/" + child, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR { rm(d + "/" + child) }
            }
            rmdir(d)
        }
        rm(dir)
    }
}
