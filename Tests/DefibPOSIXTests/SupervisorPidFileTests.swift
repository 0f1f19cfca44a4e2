import DefibPOSIX
import Foundation
import Glibc
import Testing

/// supervisor.pid: the pid and the PID namespace it is counted in, so a reader in another namespace (the host,
/// when defib is a container's PID 1) is not fooled by the bare pid.
@Suite struct SupervisorPidFileTests {
    @Test func theTextCarriesThePidAndItsNamespaceAndOldFilesStillParse() throws {
        let record = SupervisorPidFile(pid: 1, pidNamespace: "pid:[4026532841]")
        #expect(record.text == "1\npidns=pid:[4026532841]\n")
        #expect(SupervisorPidFile(text: record.text) == record)
        // What defibs wrote before the namespace was recorded: the pid alone.
        #expect(SupervisorPidFile(text: "4123\n") == SupervisorPidFile(pid: 4123, pidNamespace: nil))
        #expect(SupervisorPidFile(text: "") == nil)
        #expect(SupervisorPidFile(text: "pidns=pid:[1]\n") == nil)
        #expect(SupervisorPidFile(text: "-3\n") == nil)
    }

    @Test func writeRecordsThisProcessInItsOwnNamespaceAndNeverFollowsALink() throws {
        let dir = "/tmp/defib-pidfile-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }

        // A link planted at the temporary name must not be written through.
        let victim = dir + "/victim"
        try "untouched".write(toFile: victim, atomically: false, encoding: .utf8)
        #expect(symlink(victim, dir + "/supervisor.pid.new") == 0)
        try SupervisorPidFile.write(runDirectory: dir)
        #expect(try String(contentsOfFile: victim, encoding: .utf8) == "untouched")

        let record = try #require(SupervisorPidFile.read(runDirectory: dir))
        #expect(record.pid == getpid())
        let ours = try #require(SupervisorPidFile.pidNamespace(of: "self"))
        #expect(ours.hasPrefix("pid:["), "\(ours)")
        #expect(record.pidNamespace == ours)
        var st = stat()
        #expect(lstat(dir + "/supervisor.pid", &st) == 0)
        #expect(st.st_mode & S_IFMT == S_IFREG && st.st_mode & 0o777 == 0o600)
    }

    @Test func locateTellsRunningFromGoneFromInvisible() throws {
        let ours = SupervisorPidFile.pidNamespace(of: "self")
        // This test process is not a defib: a record naming it is a stale file (the pid was reused).
        #expect(SupervisorPidFile(pid: getpid(), pidNamespace: ours).locate() == .gone)
        // A pid nothing runs under, in our namespace.
        var request = SpawnRequest(argv: ["/bin/true"], environment: [:])
        request.parentDeathSignal = 0
        let child = try spawnProcess(request)
        #expect(waitForChild(child, timeoutMs: 30_000) != nil)
        child.closePidfd()
        let dead = child.pid
        #expect(SupervisorPidFile(pid: dead, pidNamespace: ours).locate() == .gone)
        // A namespace none of whose processes is visible from here: not called dead, not called alive.
        #expect(SupervisorPidFile(pid: 1, pidNamespace: "pid:[1]").locate() == .notVisible)
    }
}
