/// Who waits for whom among a hung process's threads, read from outside: a thread asleep in a futex wait on a
/// glibc `pthread_mutex_t` waits for the thread the mutex records as its owner. A cycle in that graph whose
/// members are all asleep with no CPU progress is a proof of deadlock, not a guess. Pure: the runtime reads
/// /proc and the mutexes, this decides.

/// One edge of the wait-for graph: `waiter` sleeps on the mutex at `mutex`, which `owner` holds.
public struct WaitForEdge: Sendable, Equatable, Codable {
    /// Kernel thread id of the waiting thread.
    public var waiterTid: Int32
    /// Its name (`comm`), e.g. "worker-a".
    public var waiterName: String
    /// The mutex's address in the process, "0x…" (the futex word the waiter sleeps on).
    public var mutex: String
    /// Kernel thread id the mutex names as its owner.
    public var ownerTid: Int32
    /// The owner's name, or "" when the owner is not a thread of the process (gone, or another process's).
    public var ownerName: String
    /// The glibc mutex kind: "normal", "recursive", "error-checking", "adaptive", with "robust"/"pi" when set.
    public var kind: String?
    /// The waiter gave the futex call a timeout (`pthread_mutex_timedlock` on a PI mutex): it gives up by itself,
    /// so a cycle through it is no proof. nil when not known.
    public var timed: Bool?

    public init(waiterTid: Int32, waiterName: String, mutex: String, ownerTid: Int32, ownerName: String, kind: String? = nil, timed: Bool? = nil) {
        self.waiterTid = waiterTid; self.waiterName = waiterName; self.mutex = mutex
        self.ownerTid = ownerTid; self.ownerName = ownerName; self.kind = kind; self.timed = timed
    }
}

/// glibc's `pthread_mutex_t` as it lies in memory on x86-64 (glibc 2.36, `struct __pthread_mutex_s`):
/// `int __lock` at 0, `unsigned __count` at 4, `int __owner` at 8, `unsigned __nusers` at 12, `int __kind` at 16.
/// The futex word a contended `pthread_mutex_lock` sleeps on is `__lock`, so the futex address is the mutex's.
public enum GlibcMutex {
    /// Offsets of the fields read.
    public static let ownerOffset: UInt64 = 8
    public static let kindOffset: UInt64 = 16
    /// `__kind` bits (glibc's PTHREAD_MUTEX_*_NP): the low bits are the type, then robust, PI and PP flags.
    public static let kindMask: Int32 = 0x3
    public static let robustFlag: Int32 = 0x10
    public static let piFlag: Int32 = 0x20
    public static let ppFlag: Int32 = 0x40
    /// Lock elision hints (PTHREAD_MUTEX_ELISION_NP / _NO_ELISION_NP): `pthread_mutexattr_settype(NORMAL)` sets
    /// NO_ELISION so that a relock deadlocks as POSIX says.
    public static let elisionFlags: Int32 = 0x300
    /// The owner recorded in `__lock` by robust and PI mutexes (the rest are FUTEX_WAITERS / OWNER_DIED bits).
    public static let futexTidMask: Int32 = 0x3fff_ffff
    /// futex(2) commands a blocked `pthread_mutex_lock` uses: FUTEX_WAIT for normal, recursive, error-checking,
    /// adaptive and robust mutexes; FUTEX_LOCK_PI / FUTEX_LOCK_PI2 for priority-inheriting ones.
    public static let futexWait = 0, futexLockPI = 6, futexLockPI2 = 13

    /// The owner of a priority-inheriting futex lock: the kernel's PI protocol keeps the owner's tid in the
    /// futex word itself (with FUTEX_WAITERS / FUTEX_OWNER_DIED above it), whoever built the lock — glibc's PI
    /// mutexes, and Swift's `Synchronization.Mutex`, which locks with FUTEX_LOCK_PI on Linux.
    public static func piOwner(lockWord: Int32) -> Int32? {
        let tid = lockWord & futexTidMask
        return tid > 0 ? tid : nil
    }

    /// The owner of a mutex a thread waits for with a plain FUTEX_WAIT (not FUTEX_LOCK_PI): `owner` for a
    /// normal, recursive, error-checking or robust glibc mutex. A PI mutex is never waited for that way (glibc
    /// locks it with FUTEX_LOCK_PI), so a word whose neighbours read as a PI kind is not a glibc mutex but some
    /// other futex (a condition, a semaphore, another runtime's lock): its "owner" would be its value — 1 for
    /// many a lock held with no waiters — and no thread at all.
    public static func plainWaitOwner(lockWord: Int32, ownerField: Int32, kindField: Int32) -> (tid: Int32, kind: String)? {
        guard kindField & piFlag == 0 else { return nil }
        return owner(lockWord: lockWord, ownerField: ownerField, kindField: kindField)
    }

    /// The mutex's owner and kind from its first 20 bytes (`lock`, `owner`, `kind` as read), or nil when they do
    /// not look like a locked glibc mutex: an unknown kind, the PP protocol (not read), or no owner recorded.
    public static func owner(lockWord: Int32, ownerField: Int32, kindField: Int32) -> (tid: Int32, kind: String)? {
        guard kindField >= 0, kindField & ~(kindMask | robustFlag | piFlag | 0x80 | elisionFlags) == 0 else { return nil }
        let type = ["normal", "recursive", "error-checking", "adaptive"][Int(kindField & kindMask)]
        var flags: [String] = []
        var tid = ownerField
        if kindField & robustFlag != 0 { flags.append("robust") }
        if kindField & piFlag != 0 { flags.append("pi") }
        // Robust and PI mutexes keep the owner's tid in the futex word itself; __owner is set too once locked.
        if kindField & (robustFlag | piFlag) != 0 { tid = lockWord & futexTidMask }
        else if lockWord == 0 { return nil }   // unlocked: nobody to wait for
        guard tid > 0 else { return nil }
        return (tid, ([type] + flags).joined(separator: "+"))
    }
}

/// One thread's /proc/TID/syscall line, read as the kernel prints it: the number and six arguments, or
/// "running" when the thread is in user space.
public struct SyscallLine: Sendable, Equatable {
    public var number: Int
    public var args: [UInt64]

    /// "202 0x55d0… 0x80 0x2 0x0 0x0 0x0 0x7f… 0x7f…" → number 202 and its six arguments; nil for "running",
    /// "-1 …" (blocked outside a system call) or garbage.
    public init?(_ text: String) {
        let parts = text.split(whereSeparator: { $0 == " " || $0 == "\n" })
        guard parts.count >= 7, let n = Int(parts[0]), n >= 0 else { return nil }
        var args: [UInt64] = []
        for p in parts[1...6] {
            guard p.hasPrefix("0x"), let v = UInt64(p.dropFirst(2), radix: 16) else { return nil }
            args.append(v)
        }
        number = n; self.args = args
    }

    /// The futex address and command (`op` without FUTEX_PRIVATE_FLAG / FUTEX_CLOCK_REALTIME) of a futex call.
    public var futex: (address: UInt64, command: Int)? {
        guard number == Syscalls.futex else { return nil }
        return (args[0], Int(args[1] & 0x7f))
    }

    /// FUTEX_LOCK_PI / FUTEX_LOCK_PI2: the futex word names its owner.
    public var isPILock: Bool {
        guard let f = futex else { return false }
        return f.command == GlibcMutex.futexLockPI || f.command == GlibcMutex.futexLockPI2
    }

    /// Whether this is the futex call a blocked `pthread_mutex_lock` makes (not a condition variable, semaphore
    /// or join, which wait with FUTEX_WAIT_BITSET and have no owner).
    public var isMutexWait: Bool {
        guard let f = futex else { return false }
        return f.command == GlibcMutex.futexWait || f.command == GlibcMutex.futexLockPI || f.command == GlibcMutex.futexLockPI2
    }
}

/// The wait-for graph and what it proves.
public enum WaitForGraph {
    /// The first cycle found, as edges in order (each edge's owner is the next edge's waiter); empty when none.
    public static func cycle(_ edges: [WaitForEdge]) -> [WaitForEdge] {
        // Every thread waits on at most one mutex: the graph is a functional graph, walk it from each node.
        var next: [Int32: WaitForEdge] = [:]
        for e in edges where next[e.waiterTid] == nil { next[e.waiterTid] = e }
        for start in edges.map(\.waiterTid).sorted() {
            var path: [WaitForEdge] = []
            var seen: [Int32: Int] = [:]
            var at = start
            while let e = next[at], seen[at] == nil {
                seen[at] = path.count
                path.append(e)
                at = e.ownerTid
            }
            if let begin = seen[at], next[at] != nil { return rotated(Array(path[begin...])) }
        }
        return []
    }

    /// A cycle starting at its lowest tid, so the same deadlock reads the same every time.
    static func rotated(_ cycle: [WaitForEdge]) -> [WaitForEdge] {
        guard let low = cycle.indices.min(by: { cycle[$0].waiterTid < cycle[$1].waiterTid }) else { return cycle }
        return Array(cycle[low...] + cycle[..<low])
    }

    /// The end of the chain that starts at `tid`: the first owner that waits for no one (nil for a cycle).
    public static func chainEnd(from tid: Int32, _ edges: [WaitForEdge]) -> WaitForEdge? {
        var next: [Int32: WaitForEdge] = [:]
        for e in edges where next[e.waiterTid] == nil { next[e.waiterTid] = e }
        var at = tid
        var seen: Set<Int32> = []
        var last: WaitForEdge?
        while let e = next[at] {
            guard seen.insert(at).inserted else { return nil }
            last = e
            at = e.ownerTid
        }
        return last
    }

    /// The diagnosis the graph supports, or nil when it explains nothing (no edges, or only chains to owners
    /// that are themselves asleep elsewhere — on I/O, a condition variable — which is not a proof of anything).
    ///
    /// - A cycle whose members are all asleep (not R or D) and made no CPU progress between `baseline` and
    ///   `sample` is `lock-cycle`: each holds what the next waits for, so none can ever run again.
    /// - A chain that ends in an owner that is running (R) or made CPU progress is `slow-holder`: the lock is
    ///   held by a live thread that has not let go, not by a deadlock.
    public static func diagnose(edges: [WaitForEdge], sample: ProcessSample?, baseline: ProcessSample?) -> HangDiagnosis? {
        guard !edges.isEmpty else { return nil }
        let threads = Dictionary((sample?.threads ?? []).map { ($0.tid, $0) }, uniquingKeysWith: { a, _ in a })
        let before = Dictionary((baseline?.threads ?? []).map { ($0.tid, $0) }, uniquingKeysWith: { a, _ in a })
        func progressed(_ tid: Int32) -> Bool? {
            guard let now = threads[tid] else { return nil }
            if now.state == "R" || now.state == "D" { return true }
            guard let then = before[tid] else { return false }
            if let a = then.onCpuNs, let b = now.onCpuNs { return b > a }
            return now.cpuTicks > then.cpuTicks
        }
        var evidence = edges.map { e in
            "thread \(e.waiterTid) (\(e.waiterName)) waits for mutex \(e.mutex)\(e.kind.map { " (\($0))" } ?? "") owned by thread \(e.ownerTid)\(e.ownerName.isEmpty ? " (not a thread of the process)" : " (\(e.ownerName))")"
        }
        let cycle = cycle(edges)
        if !cycle.isEmpty {
            let members = cycle.map(\.waiterTid)
            guard members.allSatisfy({ progressed($0) == false }) else {
                evidence.append("a cycle exists but one of its threads made progress: not a proof")
                return nil
            }
            evidence.append("every thread of the cycle is asleep in a futex wait and used no CPU" + (baseline == nil ? "" : " since the first miss"))
            var sentence = ""
            for (i, e) in cycle.enumerated() {
                let held = cycle[(i + cycle.count - 1) % cycle.count].mutex   // what the previous one waits for, it holds
                if i == 0 {
                    sentence = "thread \(e.waiterTid) (\(e.waiterName)) holds \(held) and waits for \(e.mutex) held by thread \(e.ownerTid) (\(e.ownerName))"
                } else {
                    sentence += ", which waits for \(e.mutex) held by \(e.ownerTid == cycle[0].waiterTid ? "\(e.ownerTid)" : "thread \(e.ownerTid) (\(e.ownerName))")"
                }
            }
            let outside = edges.filter { e in !members.contains(e.waiterTid) }
            if !outside.isEmpty {
                let names = outside.prefix(4).map { "\($0.waiterTid) (\($0.waiterName))" }.joined(separator: ", ")
                sentence += "; \(outside.count) more thread\(outside.count == 1 ? " waits" : "s wait") behind the cycle: \(names)"
            }
            return HangDiagnosis(kind: .lockCycle, sentence: sentence, evidence: evidence)
        }
        // No cycle: chains end in an owner that waits for no mutex. Live owners make it a slow holder.
        var ends: [Int32: (owner: Int32, name: String, mutex: String, waiters: Int)] = [:]
        for e in edges {
            guard let end = chainEnd(from: e.waiterTid, edges) else { continue }
            ends[end.ownerTid, default: (end.ownerTid, end.ownerName, end.mutex, 0)].waiters += 1
        }
        guard let live = ends.values.filter({ progressed($0.owner) == true }).max(by: { $0.waiters < $1.waiters }) else { return nil }
        let state = threads[live.owner].map { $0.state == "R" ? "is running" : "made CPU progress" } ?? "made CPU progress"
        evidence.append("the owner at the end of the chain, thread \(live.owner), \(state): the lock is held, not deadlocked")
        return HangDiagnosis(kind: .slowHolder,
                             sentence: "thread \(live.owner) (\(live.name)) holds mutex \(live.mutex) and \(state); \(live.waiters) thread\(live.waiters == 1 ? "" : "s") wait behind it",
                             evidence: evidence)
    }
}
