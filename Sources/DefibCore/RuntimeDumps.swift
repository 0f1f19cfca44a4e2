import Foundation

/// Readers for what the runtime tools print: delve's goroutines (through defib's Starlark script), py-spy's
/// JSON dump and the JVM's `Thread.print`. Each validates what it reads and says what was wrong: a tool's
/// output is input like any other.
public struct RuntimeDumpError: Error, Equatable, CustomStringConvertible, Sendable {
    public var tool: String
    public var problem: String
    public init(tool: String, problem: String) { self.tool = tool; self.problem = problem }
    public var description: String { "\(tool) output: \(problem)" }
}

/// A `sync.RWMutex` read from the core: its address and the fields that tell how many read locks are out.
public struct GoRWMutexState: Sendable, Equatable, Codable {
    public var address: UInt64
    /// `w.state` of the inner Mutex (non-zero while a writer holds or waits for it).
    public var writerMutexState: Int64
    /// Read locks taken and not released, minus 1<<30 while a writer is pending (Go's rwmutexMaxReaders).
    public var readerCount: Int64
    /// Read locks the pending writer still waits to see released.
    public var readerWait: Int64

    public init(address: UInt64, writerMutexState: Int64, readerCount: Int64, readerWait: Int64) {
        self.address = address; self.writerMutexState = writerMutexState; self.readerCount = readerCount; self.readerWait = readerWait
    }

    /// Go's `rwmutexMaxReaders`: a writer subtracts it from readerCount to announce itself.
    public static let maxReaders: Int64 = 1 << 30
    /// A writer has announced itself (called Lock and not yet been let in, or holds it).
    public var writerPending: Bool { readerCount < 0 }
    /// Read locks counted: released ones are not, so these are held or being waited for.
    public var readLocksCounted: Int64 { writerPending ? readerCount + Self.maxReaders : readerCount }
}

/// What delve read from a Go core.
public struct GoCoreDump: Sendable, Equatable {
    public var goroutines: [RuntimeThread]
    /// Goroutine id → the semaphore address it sleeps on (runtime.semtable's waiters).
    public var semaphoreWaits: [String: UInt64]
    public var rwMutexes: [GoRWMutexState]

    public init(goroutines: [RuntimeThread], semaphoreWaits: [String: UInt64], rwMutexes: [GoRWMutexState]) {
        self.goroutines = goroutines; self.semaphoreWaits = semaphoreWaits; self.rwMutexes = rwMutexes
    }

    /// Go's goroutine status numbers (runtime2.go, stable since Go 1.0).
    static let statusNames = ["idle", "runnable", "running", "syscall", "waiting", "moribund", "dead", "enqueue", "copystack", "preempted"]

    /// Reads the Starlark script's lines (tab-separated):
    /// `G id status` starts a goroutine, `F function file line` adds a frame (innermost first),
    /// `W goid address` a semaphore waiter, `RW address state readerCount readerWait` a RWMutex.
    /// Other lines (delve's banner) are ignored; a malformed line of these kinds is an error.
    public static func parse(_ text: String) throws -> GoCoreDump {
        var goroutines: [RuntimeThread] = []
        var waits: [String: UInt64] = [:]
        var mutexes: [GoRWMutexState] = []
        func fail(_ line: Substring, _ why: String) -> RuntimeDumpError {
            RuntimeDumpError(tool: "dlv", problem: "\(why): \"\(line.prefix(120))\"")
        }
        for line in text.split(separator: "\n") {
            let f = line.split(separator: "\t", omittingEmptySubsequences: false)
            switch f.first {
            case "G":
                guard f.count >= 3, Int(f[1]) != nil, let status = Int(f[2]) else { throw fail(line, "bad goroutine line") }
                let name = status >= 0 && status < statusNames.count ? statusNames[status] : "status \(status)"
                goroutines.append(RuntimeThread(id: String(f[1]), state: name, frames: []))
            case "F":
                guard f.count >= 4, !goroutines.isEmpty, let n = Int(f[3]) else { throw fail(line, "bad frame line") }
                goroutines[goroutines.count - 1].frames.append(RuntimeFrame(function: String(f[1]), file: String(f[2]), line: n))
            case "W":
                guard f.count >= 3, Int(f[1]) != nil, let address = UInt64(f[2]) else { throw fail(line, "bad semaphore line") }
                waits[String(f[1])] = address
            case "RW":
                guard f.count >= 5, let a = UInt64(f[1]), let s = Int64(f[2]), let c = Int64(f[3]), let w = Int64(f[4]) else {
                    throw fail(line, "bad RWMutex line")
                }
                mutexes.append(GoRWMutexState(address: a, writerMutexState: s, readerCount: c, readerWait: w))
            default:
                continue
            }
        }
        guard !goroutines.isEmpty else { throw RuntimeDumpError(tool: "dlv", problem: "no goroutines in the output") }
        return GoCoreDump(goroutines: goroutines, semaphoreWaits: waits, rwMutexes: mutexes)
    }
}

/// py-spy's `dump --json`.
public enum PySpyDump {
    /// The threads of every process in the dump, each with its Python frames (innermost first).
    public static func parse(_ text: String) throws -> [RuntimeThread] {
        guard let data = text.data(using: .utf8), let json = try? JSONSerialization.jsonObject(with: data),
              let list = json as? [[String: Any]] else {
            throw RuntimeDumpError(tool: "py-spy", problem: "not a JSON array of threads: \"\(text.prefix(120))\"")
        }
        var threads: [RuntimeThread] = []
        for t in list {
            guard let frames = t["frames"] as? [[String: Any]] else {
                throw RuntimeDumpError(tool: "py-spy", problem: "a thread without frames")
            }
            let tid = (t["os_thread_id"] as? NSNumber)?.int64Value ?? (t["thread_id"] as? NSNumber)?.int64Value ?? 0
            let active = (t["active"] as? Bool) ?? false
            let gil = (t["owns_gil"] as? Bool) ?? false
            threads.append(RuntimeThread(
                id: String(tid), name: t["thread_name"] as? String ?? "",
                state: active ? (gil ? "active, holds the GIL" : "active") : "idle",
                frames: frames.map { f in
                    RuntimeFrame(function: f["name"] as? String ?? "?", file: f["filename"] as? String ?? "",
                                 line: (f["line"] as? NSNumber)?.intValue ?? 0)
                }))
        }
        return threads
    }
}

/// The JVM's `Thread.print` (jcmd) / jstack text.
public struct JavaThreadDump: Sendable, Equatable {
    public var threads: [RuntimeThread]
    /// The JVM's own deadlock report: waiter name → (what it waits for, holder name).
    public var deadlockEdges: [JavaWaitEdge]

    /// One line of "Found one Java-level deadlock": `waiter` waits to lock `resource`, which `holder` holds.
    public struct JavaWaitEdge: Sendable, Equatable {
        public var waiter: String
        public var resource: String
        public var holder: String
    }

    public static func parse(_ text: String) throws -> JavaThreadDump {
        var threads: [RuntimeThread] = []
        var edges: [JavaWaitEdge] = []
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        var i = 0
        var inDeadlock = false
        var deadlockWaiter: String?
        var pendingResource: String?
        while i < lines.count {
            let line = lines[i]
            defer { i += 1 }
            if line.hasPrefix("Found one Java-level deadlock") || line.hasPrefix("Found a total of") { inDeadlock = true; continue }
            if line.hasPrefix("Java stack information for the threads listed above") { inDeadlock = false; continue }
            if inDeadlock {
                if line.hasPrefix("\""), line.hasSuffix("\":") {
                    deadlockWaiter = String(line.dropFirst().dropLast(2))
                } else if let w = deadlockWaiter, line.contains("waiting to lock") || line.contains("waiting for ownable synchronizer") {
                    pendingResource = line.trimmingCharacters(in: .whitespaces)
                        .replacingOccurrences(of: "waiting to lock ", with: "")
                        .replacingOccurrences(of: "waiting for ownable synchronizer ", with: "")
                        .trimmingCharacters(in: CharacterSet(charactersIn: ", "))
                    _ = w
                } else if let w = deadlockWaiter, let r = pendingResource, let q = line.range(of: "which is held by \"") {
                    let holder = line[q.upperBound...].prefix { $0 != "\"" }
                    edges.append(JavaWaitEdge(waiter: w, resource: r, holder: String(holder)))
                    pendingResource = nil
                }
                continue
            }
            // A thread header: "name" #12 daemon prio=5 os_prio=0 cpu=… tid=0x… nid=0x6237 waiting for monitor entry  [0x…]
            guard line.hasPrefix("\""), let close = line.dropFirst().firstIndex(of: "\""), line.contains(" nid=") else { continue }
            let name = String(line[line.index(after: line.startIndex)..<close])
            var tid = ""
            if let r = line.range(of: " nid=") {
                let v = line[r.upperBound...].prefix { !$0.isWhitespace }
                if v.hasPrefix("0x"), let n = Int64(v.dropFirst(2), radix: 16) { tid = String(n) } else { tid = String(v) }
            }
            var state = ""
            var frames: [RuntimeFrame] = []
            var j = i + 1
            while j < lines.count, !lines[j].isEmpty, !lines[j].hasPrefix("\"") {
                let t = lines[j].trimmingCharacters(in: .whitespaces)
                if t.hasPrefix("java.lang.Thread.State: ") {
                    state = String(t.dropFirst("java.lang.Thread.State: ".count))
                } else if t.hasPrefix("at ") {
                    frames.append(javaFrame(String(t.dropFirst(3))))
                } else if t.hasPrefix("- "), !frames.isEmpty {
                    // "- waiting to lock <0x…> (a java.lang.Object)", "- locked <0x…> …": kept (with their "- ") as
                    // annotations of the frame before them, so a group shows which monitors its threads hold and want.
                    frames.append(RuntimeFrame(function: t))
                }
                j += 1
            }
            threads.append(RuntimeThread(id: tid, name: name, state: state, frames: frames))
            i = j - 1
        }
        guard !threads.isEmpty else {
            throw RuntimeDumpError(tool: "jcmd", problem: "no thread in the output: \"\(text.prefix(160))\"")
        }
        return JavaThreadDump(threads: threads, deadlockEdges: edges)
    }

    /// "LockOrder.pay(LockOrder.java:38)" → function "LockOrder.pay", file "LockOrder.java", line 38.
    static func javaFrame(_ s: String) -> RuntimeFrame {
        guard let open = s.lastIndex(of: "("), s.hasSuffix(")") else { return RuntimeFrame(function: s) }
        let function = String(s[..<open])
        let inner = s[s.index(after: open)..<s.index(before: s.endIndex)]
        let location = inner.split(separator: "/").last.map(String.init) ?? String(inner)
        if let colon = location.lastIndex(of: ":"), let n = Int(location[location.index(after: colon)...]) {
            return RuntimeFrame(function: function, file: String(location[..<colon]), line: n)
        }
        return RuntimeFrame(function: function, file: location)
    }
}
