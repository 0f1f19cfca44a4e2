import DefibCore
import DefibPOSIX
import Foundation
import Glibc
import Testing

/// systemd-timesyncd run as it is, under a plain fork with a NOTIFY_SOCKET this test serves (in its own network
/// namespace: it can never reach an NTP server or set this machine's clock). It drops to its own user before it
/// speaks sd_notify, so a root-only socket never hears from it; a socket that user can write to hears READY=1 and
/// WATCHDOG=1 from its pid.
@Suite(.serialized, .timeLimit(.minutes(2)))
struct TimesyncdNotifyTests {
    struct Run {
        var pid: Int32
        var messages: [NotifyServer.Message]
        var status: String
    }

    /// Runs timesyncd against a notify socket in a directory of `directoryMode` with a socket of `socketMode`,
    /// until `done` holds for what arrived (or `timeoutMs`), then stops it.
    func run(directoryMode: mode_t, socketMode: mode_t, timeoutMs: Int, until done: ([NotifyServer.Message]) -> Bool) throws -> Run {
        let program = try TimesyncdProgram()
        let scratch = Scratch("timesyncd")
        defer { scratch.remove() }
        #expect(chmod(scratch.path, directoryMode) == 0)
        let server = try NotifyServer(path: scratch.path + "/notify.sock")
        #expect(chmod(server.path, socketMode) == 0)
        let process = try Background(program.argv, env: program.environment(notifySocket: server.path, watchdogUsec: 2_000_000),
                                     log: "/tmp/defib-timesyncd-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).log")
        defer { process.stop(); unlink(process.logPath) }
        var messages: [NotifyServer.Message] = []
        // It has dropped privileges once its uid is its user's.
        _ = waitUntil(timeoutMs: 20_000) { (readTextFile("/proc/\(process.pid)/status") ?? "").contains("Uid:\t997") }
        _ = waitUntil(timeoutMs: timeoutMs) { messages += server.receiveAll(); return done(messages) }
        return Run(pid: process.pid, messages: messages, status: readTextFile("/proc/\(process.pid)/status") ?? "")
    }

    @Test func aUserWritableSocketHearsReadyAndKeepAlivesFromItsPid() throws {
        let r = try run(directoryMode: 0o755, socketMode: 0o666, timeoutMs: 30_000) { m in
            m.contains { $0.text.contains("READY=1") } && m.filter { $0.text.contains("WATCHDOG=1") }.count >= 2
        }
        #expect(r.messages.contains { $0.text.contains("READY=1") }, "\(r.messages)")
        #expect(r.messages.filter { $0.text.contains("WATCHDOG=1") }.count >= 2, "\(r.messages)")
        #expect(r.messages.allSatisfy { $0.pid == r.pid }, "sent by another pid: \(r.messages)")
        // Its own user (systemd-timesync), no supplementary groups, CAP_SYS_TIME alone.
        #expect(r.status.contains("Uid:\t997\t997\t997\t997") && r.status.contains("Gid:\t997\t997\t997\t997"), "\(r.status)")
        #expect(r.status.contains("CapEff:\t0000000002000000"), "\(r.status)")
    }

    @Test func aRootOnlySocketNeverHearsFromIt() throws {
        let r = try run(directoryMode: 0o700, socketMode: 0o600, timeoutMs: 3_000) { !$0.isEmpty }
        #expect(r.status.contains("Uid:\t997"), "it did not drop to its user: \(r.status)")
        #expect(r.messages.isEmpty, "its sendmsg should fail with EACCES once it is not root: \(r.messages)")
    }
}
