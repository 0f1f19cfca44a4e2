import DefibCore
import Glibc

/// Reads the pthread mutex wait-for graph of a live (hung) process from outside: for every thread asleep in the
/// futex call a contended `pthread_mutex_lock` makes (/proc/PID/task/TID/syscall), the mutex at the futex address
/// is read with process_vm_readv and its owner recorded. Nothing is stopped or written; a futex that does not
/// look like a locked glibc mutex owned by a thread of the process is no edge (condition variables, semaphores,
/// joins and Go/Java runtime parking all wait on futexes too).
public enum WaitForReader {
    /// The edges seen in two reads `gapMs` apart (the same waiter, mutex and owner both times): a thread that
    /// was only passing through a contended lock between the two is not reported.
    public static func readStable(pid: Int32, gapMs: Int = 5) -> (edges: [WaitForEdge], notes: [String]) {
        let first = read(pid: pid)
        guard !first.edges.isEmpty else { return first }
        usleep(useconds_t(gapMs * 1000))
        let second = read(pid: pid)
        let again = Set(second.edges.map { "\($0.waiterTid) \($0.mutex) \($0.ownerTid)" })
        let stable = first.edges.filter { again.contains("\($0.waiterTid) \($0.mutex) \($0.ownerTid)") }
        var notes = first.notes
        if stable.count < first.edges.count {
            notes.append("wait-for graph: \(first.edges.count - stable.count) edge(s) changed within \(gapMs) ms and were left out")
        }
        return (stable, notes)
    }

    /// The edges, and notes on what could not be read.
    public static func read(pid: Int32) -> (edges: [WaitForEdge], notes: [String]) {
        let tids = threadIDs(pid: pid)
        let alive = Set(tids)
        var names: [Int32: String] = [:]
        for tid in tids {
            names[tid] = readTextFile("/proc/\(pid)/task/\(tid)/comm").map { $0.hasSuffix("\n") ? String($0.dropLast()) : $0 } ?? ""
        }
        var edges: [WaitForEdge] = []
        var notes: [String] = []
        for tid in tids {
            guard let text = readTextFile("/proc/\(pid)/task/\(tid)/syscall"), let call = SyscallLine(text), call.isMutexWait,
                  let futex = call.futex else { continue }
            let lockWord: Int32
            do {
                lockWord = Int32(truncatingIfNeeded: try ProcessMemory.readUInt64(pid: pid, address: futex.address))
            } catch {
                notes.append("wait-for graph: thread \(tid) waits on futex \(hex(futex.address)), not readable: \(error)")
                continue
            }
            // The rest of a glibc mutex (owner, kind); absent for a bare PI futex at the end of a mapping.
            let ownerField = (try? ProcessMemory.readUInt64(pid: pid, address: futex.address + GlibcMutex.ownerOffset)).map { Int32(truncatingIfNeeded: $0) }
            let kindField = (try? ProcessMemory.readUInt64(pid: pid, address: futex.address + GlibcMutex.kindOffset)).map { Int32(truncatingIfNeeded: $0) }
            let owner: (tid: Int32, kind: String)
            if call.isPILock {
                let glibc = ownerField.flatMap { o in kindField.flatMap { k in GlibcMutex.owner(lockWord: lockWord, ownerField: o, kindField: k) } }
                // The kernel's PI protocol: the owner is in the word, whoever made the lock.
                guard let piTid = GlibcMutex.piOwner(lockWord: lockWord), alive.contains(piTid) else { continue }
                owner = (piTid, glibc?.kind.contains("pi") == true ? glibc!.kind : "pi-futex")
            } else {
                guard let g = ownerField.flatMap({ o in kindField.flatMap { k in GlibcMutex.plainWaitOwner(lockWord: lockWord, ownerField: o, kindField: k) } })
                else { continue }
                owner = g
            }
            // The owner must be a thread of this process: a random futex rarely names one, a mutex always does
            // (or names a thread that has exited holding it, which is reported as such).
            let ownerName = alive.contains(owner.tid) ? names[owner.tid] ?? "" : ""
            if !alive.contains(owner.tid) {
                notes.append("wait-for graph: mutex \(hex(futex.address)) names owner \(owner.tid), not a thread of pid \(pid) (exited holding it, or shared with another process)")
            }
            edges.append(WaitForEdge(waiterTid: tid, waiterName: names[tid] ?? "", mutex: hex(futex.address), ownerTid: owner.tid,
                                     ownerName: ownerName, kind: owner.kind, timed: call.args[3] != 0))
        }
        return (edges, notes)
    }

    static func hex(_ v: UInt64) -> String { "0x" + String(v, radix: 16) }
}
