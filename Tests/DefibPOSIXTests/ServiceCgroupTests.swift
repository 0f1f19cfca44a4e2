import DefibPOSIX
import DefibTestKit
import Foundation
import Glibc
import Testing

/// Each service instance in its own cgroup v2 leaf: what it starts cannot escape by setsid or by ignoring
/// SIGTERM, and dies with one write to cgroup.kill. (A SIGKILLed supervisor's leftovers cleaned by the next
/// one: IntegrationTests' CgroupLeftoverTests, with real supervisor processes.)
@Suite struct ServiceCgroupTests {
    @Test func theCgroupV2LocationIsReadFromProc() {
        let hybrid = """
            25 31 0:23 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
            41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:10 - cgroup2 cgroup2 rw
            42 25 0:39 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
            """
        let location = CgroupV2Location.parse(mountinfo: hybrid, cgroup: "4:memory:/x\n1:cpu:/\n0::/system.slice/defib.service\n")
        #expect(location == CgroupV2Location(mountPoint: "/sys/fs/cgroup/unified", mountRoot: "/", ownCgroup: "/system.slice/defib.service"))
        #expect(location?.directory(of: "/system.slice/defib.service") == "/sys/fs/cgroup/unified/system.slice/defib.service")
        #expect(location?.directory(of: "/") == "/sys/fs/cgroup/unified")
        // A container that sees a bind-mounted subtree, with an escaped space in the mount point.
        let bound = CgroupV2Location.parse(mountinfo: "50 40 0:30 /kubepods/pod1 /sys/fs/my\\040cg rw - cgroup2 cgroup2 rw\n",
                                           cgroup: "0::/kubepods/pod1/c\n")
        #expect(bound?.mountPoint == "/sys/fs/my cg")
        #expect(bound?.directory(of: "/kubepods/pod1/c") == "/sys/fs/my cg/c")
        #expect(bound?.directory(of: "/elsewhere") == nil)
        // cgroup v1 only: nothing to use, and the runtime is told why.
        #expect(CgroupV2Location.parse(mountinfo: "42 25 0:39 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n", cgroup: "1:cpu:/\n") == nil)
    }

    @Test func whereThereIsNoCgroupTheReasonIsOneLine() {
        let fake = CgroupV2Location(mountPoint: "/nonexistent/cgroup2", mountRoot: "/", ownCgroup: "/")
        guard case let .failure(why) = ServiceCgroup.prepare(stateDirectory: "/var/lib/defib", service: "web", runDirectory: nil, location: fake) else {
            Issue.record("a cgroup under a path that does not exist"); return
        }
        #expect(why.description.hasPrefix("no cgroup for the service: cannot create a cgroup: mkdir(/nonexistent/cgroup2/defib-web-"), "\(why)")
        #expect(why.description.contains("using process groups and the subreaper instead"))
        #expect(!why.description.contains("\n"))
    }

    @Test func namesAreStablePerStateDirectoryAndService() {
        let a = ServiceCgroup.cgroupName(stateDirectory: "/var/lib/defib", service: "web")
        #expect(a == ServiceCgroup.cgroupName(stateDirectory: "/var/lib/defib", service: "web"))
        #expect(a != ServiceCgroup.cgroupName(stateDirectory: "/srv/defib", service: "web"))
        #expect(a.hasPrefix("defib-web-") && a.count == "defib-web-".count + 16)
        #expect(ServiceCgroup.cgroupName(stateDirectory: "/s", service: "a b/c").hasPrefix("defib-a_b_c-"))
    }

    @Test func twoHundredSetsidChildrenIgnoringSIGTERMDieWithTheInstance() throws {
        try #require(geteuid() == 0)
        let scratch = ScratchDirectory("cgroup-kill")
        let run = try SafeDirectory.open(scratch.path + "/state/run/web")
        let cgroup = try ServiceCgroup.prepare(stateDirectory: scratch.path + "/state", service: "web", runDirectory: run).get()
        defer { cgroup.remove() }
        #expect(try String(contentsOfFile: run.path + "/cgroup", encoding: .utf8) == cgroup.cgroupPath + "\n", "recorded for a later supervisor")
        let instance = try cgroup.newInstance()
        // Each grandchild leaves the process group (setsid) and ignores SIGTERM, as the issue's daemon did.
        let script = "for i in $(seq 200); do setsid sh -c 'trap \"\" TERM; exec sleep 600' & done; echo started > \(scratch.path)/started; exec sleep 600"
        var request = SpawnRequest(argv: ["sh", "-c", script], environment: currentEnvironment())
        request.cgroupProcsFD = instance.procsFD
        request.parentDeathSignal = 0; request.stdinFromDevNull = true
        let child = try spawnProcess(request)
        defer { try? child.signal(SIGKILL); _ = waitForChild(child, timeoutMs: 5000); child.closePidfd() }
        // Settled: 200 sleeps, each past its setsid and exec.
        var members: [Int32] = []
        for _ in 0..<3000 {
            members = instance.members()
            let sleeping = members.filter { $0 != child.pid && processName($0) == "sleep" && Self.sessionID($0) == $0 }
            if members.count >= 201 && sleeping.count == 200 { break }
            usleep(10_000)
        }
        #expect(members.count == 201, "the instance and its 200 grandchildren are all in its leaf: \(members.count)")
        #expect(members.contains(child.pid))
        let grandchildren = members.filter { $0 != child.pid }
        let sessions = Set(grandchildren.compactMap { ServiceCgroupTests.sessionID($0) })
        #expect(sessions.count == 200 && !sessions.contains(child.pid), "each left the instance's session")
        for pid in grandchildren { kill(pid, SIGTERM) }
        usleep(200_000)
        #expect(grandchildren.filter(ServiceCgroupTests.isAlive).count == 200, "they ignore SIGTERM")
        #expect(instance.kill(waitMs: 20_000), "cgroup.kill empties the leaf")
        #expect(grandchildren.filter(ServiceCgroupTests.isAlive).isEmpty, "none outlives it")
        _ = waitForChild(child, timeoutMs: 5000)
        #expect(instance.remove())
        #expect(cgroup.members().isEmpty)
    }

    @Test func anInstanceIsBornInItsLeafOrMovesThereWhenTheKernelRefuses() throws {
        try #require(geteuid() == 0)
        let scratch = ScratchDirectory("cgroup-born")
        let run = try SafeDirectory.open(scratch.path + "/state/run/web")
        let cgroup = try ServiceCgroup.prepare(stateDirectory: scratch.path + "/state", service: "web", runDirectory: run).get()
        defer { cgroup.remove() }
        // Born there: clone3 CLONE_INTO_CGROUP with the leaf's directory, no cgroup.procs to fall back on.
        let born = try cgroup.newInstance()
        var request = SpawnRequest(argv: ["sleep", "600"], environment: currentEnvironment())
        request.cgroupDirFD = born.directoryFD
        request.parentDeathSignal = 0; request.stdinFromDevNull = true
        let first = try spawnProcess(request)
        defer { try? first.signal(SIGKILL); _ = waitForChild(first, timeoutMs: 5000); first.closePidfd() }
        #expect(Self.cgroupLine(first.pid) == "0::\(born.cgroupPath)", "in its leaf from its first instruction")
        #expect(born.members() == [first.pid])
        // A descriptor that is no cgroup: clone3 refuses it, and the child moves itself through cgroup.procs.
        let moved = try cgroup.newInstance()
        let notACgroup = open(scratch.path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        defer { close(notACgroup) }
        request.cgroupDirFD = notACgroup
        request.cgroupProcsFD = moved.procsFD
        let second = try spawnProcess(request)
        defer { try? second.signal(SIGKILL); _ = waitForChild(second, timeoutMs: 5000); second.closePidfd() }
        #expect(Self.cgroupLine(second.pid) == "0::\(moved.cgroupPath)")
        #expect(moved.members() == [second.pid])
        for (child, leaf) in [(first, born), (second, moved)] {
            try? child.signal(SIGKILL); _ = waitForChild(child, timeoutMs: 5000)
            #expect(leaf.remove())
        }
    }

    /// Under systemd, defib writes only in a cgroup the unit delegated (Delegate=yes: systemd sets the
    /// `trusted.delegate` attribute); otherwise the warning says what to add. A real cgroup, the real attribute.
    @Test func aSystemdCgroupIsUsedOnlyWhenDelegated() throws {
        let location = try #require(ServiceCgroup.currentLocation(), "needs cgroup v2")
        try #require(geteuid() == 0, "needs root")
        let dir = location.mountPoint + "/defib-test-delegate-\(getpid())"
        try #require(mkdir(dir, 0o755) == 0)
        defer { rmdir(dir) }
        let unit = "/system.slice/defib-web.service"
        let refusal = ServiceCgroup.systemdRefusal(cgroup: unit, directory: dir, underSystemd: true)
        #expect(refusal == "defib's cgroup \(unit) belongs to systemd and was not delegated (add Delegate=yes to the unit)")
        #expect(ServiceCgroup.systemdRefusal(cgroup: unit, directory: dir, underSystemd: false) == nil, "no systemd: defib's own")
        #expect(ServiceCgroup.systemdRefusal(cgroup: "/", directory: location.mountPoint, underSystemd: true) == nil, "the root cgroup")
        #expect(try Self.setDelegate(dir, "1"))
        #expect(ServiceCgroup.systemdRefusal(cgroup: unit, directory: dir, underSystemd: true) == nil, "delegated")
        #expect(try Self.setDelegate(dir, "0"))
        #expect(ServiceCgroup.systemdRefusal(cgroup: unit, directory: dir, underSystemd: true) != nil, "delegate=0 is no delegation")
    }

    /// What systemd does for Delegate=yes (setxattr through python3: Glibc's module map leaves sys/xattr.h out).
    static func setDelegate(_ dir: String, _ value: String) throws -> Bool {
        let result = try CoreTestSupport.run(["python3", "-c", "import os, sys; os.setxattr(sys.argv[1], 'trusted.delegate', sys.argv[2].encode())",
                                              dir, value], timeoutMs: 10_000)
        return result.status == .exited(code: 0)
    }

    /// The cgroup v2 line of /proc/PID/cgroup.
    static func cgroupLine(_ pid: Int32) -> String? {
        (try? String(contentsOfFile: "/proc/\(pid)/cgroup", encoding: .utf8))?.split(separator: "\n").first { $0.hasPrefix("0::") }.map(String.init)
    }

    /// Alive: exists and is not a zombie (the reaper of killed orphans may be slow).
    static func isAlive(_ pid: Int32) -> Bool {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return false }
        let state = stat[stat.index(close, offsetBy: 2)]
        return state != "Z" && state != "X"
    }

    static func sessionID(_ pid: Int32) -> Int32? {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8), let close = stat.lastIndex(of: ")") else { return nil }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        return fields.count > 3 ? Int32(fields[3]) : nil   // state ppid pgrp session
    }
}
