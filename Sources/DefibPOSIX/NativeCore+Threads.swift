import CDefibShims
import Glibc

/// Every thread of one process stopped under ptrace by the calling thread (PTRACE_SEIZE + PTRACE_INTERRUPT).
/// All ptrace calls must come from the thread that created it: the kernel ties a tracee to one tracer thread.
struct StoppedProcess {
    let pid: Int32
    /// Threads in a ptrace stop, in the order they were stopped.
    private(set) var stopped: [Int32] = []
    /// Signals a thread was about to receive when it stopped (signal-delivery-stop): re-injected on detach.
    private(set) var heldSignals: [Int32: Int32] = [:]
    /// Seized threads that did not reach a stop before the deadline (uninterruptible sleep).
    private(set) var unstopped: Set<Int32> = []
    /// Threads that ended while being stopped.
    private(set) var vanished = 0
    /// Signals handed back on detach (they had arrived as the threads stopped).
    private(set) var redelivered = 0
    /// Whether the thread-group leader died while we watched (its death was left for its parent to reap).
    private(set) var leaderExited = false
    private let weAreParent: Bool

    /// The first ptrace failure that was not "this thread is gone".
    struct StopFailure: Error, CustomStringConvertible {
        var error: SystemError
        var description: String { error.description }
    }

    /// Seizes and interrupts every thread, re-scanning /proc/PID/task until no new thread appears, and waits for
    /// each one's stop until `deadline` (monotonic ns). A thread still running at the deadline stays in `unstopped`.
    init(pid: Int32, deadline: Int64) throws(StopFailure) {
        self.pid = pid
        weAreParent = Self.parentPid(of: pid) == getpid()
        var seized: Set<Int32> = []
        var waiting: Set<Int32> = []
        var rounds = 0
        while true {
            rounds += 1
            let tids = Self.threadIDs(of: pid)
            if tids.isEmpty && seized.isEmpty {
                throw StopFailure(error: SystemError("opendir(/proc/\(pid)/task)", errno: ESRCH))
            }
            // The leader first: a refusal (EPERM) is then named by the process's own pid, whatever order the
            // thread ids wrapped around into.
            let fresh = tids.filter { !seized.contains($0) }.sorted { ($0 == pid ? 0 : 1, $0) < ($1 == pid ? 0 : 1, $1) }
            if fresh.isEmpty && waiting.isEmpty { break }
            for tid in fresh {
                seized.insert(tid)
                if defib_ptrace_seize(tid) != 0 {
                    let e = errno
                    if e == ESRCH { vanished += 1; continue }
                    // Undo what is already attached: a thread can only be detached once it has stopped.
                    let failure = StopFailure(error: SystemError("ptrace(PTRACE_SEIZE, \(tid))", errno: e))
                    waitForStops(&waiting, deadline: monotonicNanoseconds() + 200_000_000)
                    unstopped = waiting
                    detachAll()
                    throw failure
                }
                if defib_ptrace_interrupt(tid) != 0 {
                    if errno == ESRCH { vanished += 1; continue }
                }
                waiting.insert(tid)
            }
            waitForStops(&waiting, deadline: deadline)
            if !waiting.isEmpty {
                unstopped = waiting
                break
            }
            // A thread created between the scan and its creator's stop is only visible on the next scan.
            if rounds > 1000 { break }
        }
    }

    private mutating func waitForStops(_ waiting: inout Set<Int32>, deadline: Int64) {
        var pause: UInt32 = 20   // µs; grows so a D-state thread does not make us spin
        while !waiting.isEmpty {
            for tid in waiting.sorted() {
                var r = defib_wait_result()
                let consumeExit: Int32 = (tid != pid || !weAreParent) ? 1 : 0
                if defib_wait_thread(tid, consumeExit, &r) != 0 {
                    // ECHILD: not traced by this thread any more (it died and was reaped elsewhere).
                    waiting.remove(tid); vanished += 1
                    continue
                }
                switch r.kind {
                case DEFIB_WAIT_STOPPED:
                    waiting.remove(tid)
                    stopped.append(tid)
                    // event 0 is a signal-delivery-stop: the thread is stopped and its registers are final; the
                    // signal is handed back on detach so the process sees it as if we had never been there.
                    if r.event == 0 && r.sig != SIGTRAP { heldSignals[tid] = r.sig }
                case DEFIB_WAIT_EXITED:
                    waiting.remove(tid); vanished += 1
                    if tid == pid { leaderExited = true }
                default:
                    break
                }
            }
            if waiting.isEmpty || monotonicNanoseconds() >= deadline { break }
            usleep(pause)
            pause = min(pause * 2, 2000)
        }
    }

    /// Re-checks the threads that had not stopped; those that have stopped since join `stopped`.
    mutating func collectLateStops() {
        var late = unstopped
        waitForStops(&late, deadline: 0)
        unstopped = late
    }

    /// Detaches every stopped thread (re-injecting held signals). Threads that never stopped cannot be detached
    /// (PTRACE_DETACH needs a stopped tracee); they stay traced until they stop or the process dies.
    mutating func detachAll() {
        collectLateStops()
        var dead: [Int32] = []
        for tid in stopped {
            let signal = heldSignals[tid] ?? 0
            if defib_ptrace_detach(tid, signal) == 0 {
                if signal != 0 { redelivered += 1 }
            } else if errno == ESRCH {
                dead.append(tid)
            }
        }
        stopped = []
        heldSignals = [:]
        reapDeadTracees(dead)
    }

    /// A stopped thread can still be killed (SIGKILL always gets through). A traced thread that died stays a zombie
    /// until its tracer waits for it, and the kernel holds back the leader's death from its parent until every other
    /// thread is reaped: so reap them here (bounded), leaving only the leader's death for the parent.
    private mutating func reapDeadTracees(_ tids: [Int32]) {
        var pending = Set(tids.filter { $0 != pid || !weAreParent })
        let deadline = monotonicNanoseconds() + 2_000_000_000
        while !pending.isEmpty {
            for tid in pending.sorted() {
                var r = defib_wait_result()
                if defib_wait_thread(tid, 1, &r) != 0 { pending.remove(tid); continue }   // ECHILD: reaped or not ours
                if r.kind == DEFIB_WAIT_EXITED { pending.remove(tid); vanished += 1; if tid == pid { leaderExited = true } }
                if r.kind == DEFIB_WAIT_STOPPED && defib_ptrace_detach(tid, 0) == 0 { pending.remove(tid) }
            }
            if monotonicNanoseconds() >= deadline { break }
            usleep(500)
        }
    }

    /// Thread ids in /proc/PID/task, ascending.
    static func threadIDs(of pid: Int32) -> [Int32] {
        guard let dir = opendir("/proc/\(pid)/task") else { return [] }
        defer { closedir(dir) }
        var out: [Int32] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            if let tid = Int32(name) { out.append(tid) }
        }
        return out.sorted()
    }

    /// The parent pid from /proc/PID/stat, or nil.
    static func parentPid(of pid: Int32) -> Int32? {
        guard let stat = try? ProcStat.read("/proc/\(pid)/stat") else { return nil }
        return stat.ppid
    }
}

/// The fields of /proc/PID/stat (or task/TID/stat) the core needs.
struct ProcStat: Equatable {
    var comm: String
    var state: UInt8
    var ppid: Int32
    var pgrp: Int32
    var session: Int32
    var flags: UInt64
    var utime: UInt64
    var stime: UInt64
    var cutime: UInt64
    var cstime: UInt64
    var nice: Int64

    /// Parses the text: "pid (comm) state ppid pgrp session …". comm may contain spaces and parentheses.
    static func parse(_ text: String) -> ProcStat? {
        let bytes = Array(text.utf8)
        guard let open = bytes.firstIndex(of: UInt8(ascii: "(")), let close = bytes.lastIndex(of: UInt8(ascii: ")")),
              close + 2 < bytes.count else { return nil }
        let comm = String(decoding: bytes[(open + 1)..<close], as: UTF8.self)
        let rest = String(decoding: bytes[(close + 2)...], as: UTF8.self).split(separator: " ")
        // rest[0] is field 3 (state); field n is rest[n - 3].
        func field(_ n: Int) -> Substring? { rest.indices.contains(n - 3) ? rest[n - 3] : nil }
        guard let state = field(3)?.utf8.first,
              let ppid = field(4).flatMap({ Int32($0) }), let pgrp = field(5).flatMap({ Int32($0) }),
              let session = field(6).flatMap({ Int32($0) }), let flags = field(9).flatMap({ UInt64($0) }),
              let utime = field(14).flatMap({ UInt64($0) }), let stime = field(15).flatMap({ UInt64($0) }),
              let cutime = field(16).flatMap({ Int64($0) }), let cstime = field(17).flatMap({ Int64($0) }),
              let nice = field(19).flatMap({ Int64($0) }) else { return nil }
        return ProcStat(comm: comm, state: state, ppid: ppid, pgrp: pgrp, session: session, flags: flags,
                        utime: utime, stime: stime, cutime: UInt64(max(cutime, 0)), cstime: UInt64(max(cstime, 0)), nice: nice)
    }

    static func read(_ path: String) throws -> ProcStat {
        let text = try readProcText(path)
        guard let s = parse(text) else {
            throw SystemError("parse(\(path))", errno: EINVAL)
        }
        return s
    }
}

/// The signal and id fields of /proc/PID/task/TID/status.
struct ProcStatus: Equatable {
    var pending: UInt64 = 0       // SigPnd: this thread's own pending signals
    var blocked: UInt64 = 0       // SigBlk
    var uid: UInt32 = 0           // real uid
    var gid: UInt32 = 0           // real gid

    static func parse(_ text: String) -> ProcStatus {
        var s = ProcStatus()
        for line in text.split(separator: "\n") {
            let parts = line.split(whereSeparator: { $0 == ":" || $0 == "\t" || $0 == " " })
            guard parts.count >= 2 else { continue }
            switch parts[0] {
            case "SigPnd": s.pending = UInt64(parts[1], radix: 16) ?? 0
            case "SigBlk": s.blocked = UInt64(parts[1], radix: 16) ?? 0
            case "Uid": s.uid = UInt32(parts[1]) ?? 0
            case "Gid": s.gid = UInt32(parts[1]) ?? 0
            default: break
            }
        }
        return s
    }
}
