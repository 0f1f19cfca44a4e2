import DefibCore
import DefibPOSIX
import Foundation
import Glibc
import Synchronization

/// SIGINT/SIGTERM during `defib-bench peers`: every process we started is killed, so nothing outlives an interrupted
/// run — the supervisors die of their parent-death signal, but the proxies they started would not (monit's start
/// script orphans its proxy on purpose, supervisord's proxy is its child).
enum PeersInterrupt {
    /// Extra cleanups (the systemd container's cgroups), run after the kills.
    private static let cleanups = Mutex<[String: @Sendable () -> Void]>([:])

    /// Blocks SIGINT and SIGTERM in the calling thread (call it before any other thread starts, so all inherit the mask)
    /// and watches them on a thread of its own: on the first one, every descendant is killed by pidfd, the cleanups
    /// run, `work` is removed and the process exits 130.
    static func install(work: String) throws {
        let queue = try SignalQueue(signals: [SIGINT, SIGTERM])
        let thread = Thread {
            while true {
                var pfd = pollfd(fd: queue.fd, events: Int16(POLLIN), revents: 0)
                _ = poll(&pfd, 1, 1000)
                guard let sig = queue.drain().first else { continue }
                progress("peers: \(signalName(sig)): killing every process this benchmark started")
                killDescendants()
                for cleanup in cleanups.withLock({ Array($0.values) }) { cleanup() }
                removeTree(work)
                _exit(130)
            }
        }
        thread.name = "peers-signals"
        thread.start()
    }

    /// Registers (or, with nil, removes) a cleanup under `key`.
    static func setCleanup(_ key: String, _ body: (@Sendable () -> Void)?) {
        cleanups.withLock { $0[key] = body }
    }

    /// SIGKILL (by pidfd) to our children and all their descendants, deepest first found, then reaps our own children.
    static func killDescendants() {
        var seen: [Int32] = []
        var frontier = childProcesses(of: getpid())
        while let pid = frontier.popLast() {
            guard !seen.contains(pid) else { continue }
            seen.append(pid)
            frontier += childProcesses(of: pid)
        }
        for pid in seen.reversed() { killProcess(pid, signal: SIGKILL) }
        for pid in childProcesses(of: getpid()) {
            var status: Int32 = 0
            _ = waitpid(pid, &status, 0)
        }
    }
}
