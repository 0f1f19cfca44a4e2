@testable import DefibPOSIX
import DefibCore
import Glibc
import Testing

/// The loop's reaper spares a running exec probe (which reaps its own command after killing its group).
/// The logic is tested over fake operations — calling the real reaper in a test process would steal other
/// tests' children — and the one fact it relies on, that /proc/self/task/*/children lists zombies, for real.
@Suite struct ReapSparingTests {
    /// A fake process table: pids that have ended (in the order waitid would show them) and ones still running.
    final class Table {
        var ended: [Int32]
        var running: [Int32]
        var reaped: [Int32] = []
        init(ended: [Int32], running: [Int32] = []) { self.ended = ended; self.running = running }
        func peek() -> Int32 { ended.first ?? 0 }
        func children() -> [Int32] { (ended + running).sorted() }
        func reap(_ pid: Int32) -> ChildStatus? {
            guard let i = ended.firstIndex(of: pid) else { return nil }
            ended.remove(at: i); reaped.append(pid)
            return .exited(code: pid % 7)
        }
    }

    func run(_ t: Table, sparing: Set<Int32>) -> [Reaped] {
        reapEnded(sparing: sparing, peek: t.peek, children: t.children, reap: t.reap)
    }

    @Test func everyEndedChildButTheSparedIsReaped() {
        let t = Table(ended: [10, 20, 30], running: [40])
        #expect(run(t, sparing: [20]).map(\.pid) == [10, 30])
        #expect(t.ended == [20])
        // The spared one first: the others are found through the children list, not by peeking again.
        let u = Table(ended: [20, 10, 30], running: [40])
        #expect(run(u, sparing: [20]).map(\.pid) == [10, 30])
        #expect(u.ended == [20] && u.running == [40])
        // Nothing spared: plain reaping in peek order, statuses kept.
        let v = Table(ended: [8, 9])
        #expect(run(v, sparing: []) == [Reaped(pid: 8, status: .exited(code: 1)), Reaped(pid: 9, status: .exited(code: 2))])
    }

    @Test func aZombieChildIsListedAmongOurChildren() throws {
        var request = SpawnRequest(argv: ["/bin/true"], environment: [:])
        request.parentDeathSignal = 0
        let child = try spawnProcess(request)
        defer { child.closePidfd() }
        #expect(waitUntil(timeoutMs: 30_000) { readTextFile("/proc/\(child.pid)/stat").flatMap(ProcParse.stat)?.state == "Z" })
        #expect(childProcesses(of: getpid()).contains(child.pid))
        #expect(waitForChild(child, timeoutMs: 10_000) == .exited(code: 0))   // reaped by pid: no other test's child touched
        #expect(!childProcesses(of: getpid()).contains(child.pid))
    }
}
