import Foundation

/// Diagnoses from runtime evidence: Go's RWMutex read back from the core, the JVM's own deadlock report,
/// and — for any runtime — a sentence pointing at the stacks when no rule explains the hang. Pure.
public enum RuntimeDiagnoser {
    static let rlock = "sync.(*RWMutex).RLock"
    static let lock = "sync.(*RWMutex).Lock"
    /// Offsets of RWMutex's semaphores (after the 8-byte inner Mutex): where Lock and RLock sleep.
    static let writerSemOffset: UInt64 = 8
    static let readerSemOffset: UInt64 = 12

    /// The RWMutex a goroutine waits for and whether as a writer, from its frames and its semaphore address.
    static func rwWait(_ g: RuntimeThread, semaphore: UInt64?) -> (address: UInt64, writer: Bool)? {
        guard let sema = semaphore else { return nil }
        if g.frames.contains(where: { $0.function == lock }) { return (sema &- writerSemOffset, true) }
        if g.frames.contains(where: { $0.function == rlock }) { return (sema &- readerSemOffset, false) }
        return nil
    }

    /// The first frame a person wrote below `function` on the goroutine's stack ("main.(*table).reload").
    static func caller(of function: String, in g: RuntimeThread, goroot: String?) -> RuntimeFrame? {
        guard let at = g.frames.firstIndex(where: { $0.function == function }) else { return nil }
        return g.frames[(at + 1)...].first { !RuntimeStacks.isRuntimeFrame($0, runtime: .go, goroot: goroot) }
    }

    /// The Go RWMutex story: a writer waits in Lock for K read locks, N goroutines wait in RLock behind it.
    /// When no goroutine is inside any of the read sections those readers were entering (no goroutine but
    /// the waiting ones has such a function on its stack), the K read locks were taken and never released:
    /// `leaked-read-lock`. When one is, it is a `slow-holder` inside its read section.
    public static func goRWMutex(_ dump: GoCoreDump) -> HangDiagnosis? {
        let goroot = RuntimeStacks.goSourceRoot(dump.goroutines)
        var waiters: [UInt64: (writers: [RuntimeThread], readers: [RuntimeThread])] = [:]
        for g in dump.goroutines {
            guard let w = rwWait(g, semaphore: dump.semaphoreWaits[g.id]) else { continue }
            if w.writer { waiters[w.address, default: ([], [])].writers.append(g) } else { waiters[w.address, default: ([], [])].readers.append(g) }
        }
        for rw in dump.rwMutexes.sorted(by: { $0.address < $1.address }) {
            guard let w = waiters[rw.address], let writer = w.writers.first, rw.writerPending, rw.readerWait > 0 else { continue }
            let n = w.readers.count
            let k = rw.readerWait
            let writerAt = caller(of: lock, in: writer, goroot: goroot)?.function ?? "unknown caller"
            // The read sections: the functions that called RLock on this mutex.
            let sections = Set(w.readers.compactMap { caller(of: rlock, in: $0, goroot: goroot)?.function })
            let waitingIDs = Set(w.readers.map(\.id) + w.writers.map(\.id))
            let inside = dump.goroutines.filter { g in !waitingIDs.contains(g.id) && g.frames.contains { sections.contains($0.function) } }
            let address = "0x" + String(rw.address, radix: 16)
            var evidence = [
                "sync.RWMutex at \(address) read from the core: readerCount \(rw.readerCount) (\(rw.readLocksCounted) read lock\(rw.readLocksCounted == 1 ? "" : "s") counted, a writer pending), readerWait \(k)",
                "writer: goroutine \(writer.id) in \(lock) from \(writerAt)",
                "\(n) goroutine\(n == 1 ? "" : "s") in \(rlock): " + w.readers.prefix(8).map { "\($0.id)" }.joined(separator: ", "),
            ]
            if !sections.isEmpty { evidence.append("read sections entered through: " + sections.sorted().joined(separator: ", ")) }
            if rw.readLocksCounted == Int64(n) + k {
                evidence.append("counted read locks = the \(n) waiting + the \(k) the writer waits for: every reader is accounted for")
            }
            if let holder = inside.first {
                let place = holder.frames.first { sections.contains($0.function) }?.text ?? "a read section"
                evidence.append("goroutine \(holder.id) (\(holder.state)) is inside \(place)")
                return HangDiagnosis(kind: .slowHolder,
                                     sentence: "goroutine \(holder.id) is inside a read section of the RWMutex at \(address) (\(place)); the writer (\(writerAt)) waits for \(k) reader\(k == 1 ? "" : "s") and \(n) goroutine\(n == 1 ? "" : "s") wait in RWMutex.RLock behind it",
                                     evidence: evidence)
            }
            evidence.append("no goroutine other than the waiting ones is in " + (sections.isEmpty ? "a read section" : sections.sorted().joined(separator: " or ")))
            return HangDiagnosis(kind: .leakedReadLock,
                                 sentence: "\(n) goroutine\(n == 1 ? "" : "s") wait in RWMutex.RLock behind 1 in RWMutex.Lock (\(writerAt)); the writer waits for \(k) reader\(k == 1 ? "" : "s") and no goroutine is inside a read section",
                                 evidence: evidence)
        }
        return nil
    }

    /// The JVM's "Found one Java-level deadlock" as a `lock-cycle`, naming the threads (with their native tid)
    /// and monitors of the cycle itself (threads that only wait behind it are counted apart).
    public static func javaDeadlock(_ dump: JavaThreadDump) -> HangDiagnosis? {
        let edges = dump.deadlockEdges
        guard !edges.isEmpty else { return nil }
        var next: [String: JavaThreadDump.JavaWaitEdge] = [:]
        for e in edges where next[e.waiter] == nil { next[e.waiter] = e }
        var cycle: [JavaThreadDump.JavaWaitEdge] = []
        for start in edges.map(\.waiter) {
            var seen: [String: Int] = [:]
            var path: [JavaThreadDump.JavaWaitEdge] = []
            var at = start
            while let e = next[at], seen[at] == nil { seen[at] = path.count; path.append(e); at = e.holder }
            if let begin = seen[at], next[at] != nil { cycle = Array(path[begin...]); break }
        }
        guard !cycle.isEmpty else { return nil }
        if let low = cycle.indices.min(by: { cycle[$0].waiter < cycle[$1].waiter }) { cycle = Array(cycle[low...] + cycle[..<low]) }
        let tids = Dictionary(dump.threads.map { ($0.name, $0.id) }, uniquingKeysWith: { a, _ in a })
        func who(_ name: String) -> String { tids[name].map { "thread \($0) (\(name))" } ?? "thread \"\(name)\"" }
        func short(_ resource: String) -> String {
            // "monitor 0x00007f… (object 0x000000069ec1ba70, a java.lang.Object)" → "object 0x000000069ec1ba70 (a java.lang.Object)"
            if let o = resource.range(of: "(object "), let comma = resource[o.upperBound...].firstIndex(of: ",") {
                let addr = resource[o.upperBound..<comma]
                let kind = resource[resource.index(after: comma)...].trimmingCharacters(in: CharacterSet(charactersIn: " )"))
                return "object \(addr) (\(kind))"
            }
            return resource
        }
        var sentence = ""
        for (i, e) in cycle.enumerated() {
            let held = short(cycle[(i + cycle.count - 1) % cycle.count].resource)
            if i == 0 {
                sentence = "\(who(e.waiter)) holds \(held) and waits for \(short(e.resource)) held by \(who(e.holder))"
            } else {
                sentence += ", which waits for \(short(e.resource)) held by \(e.holder == cycle[0].waiter ? (tids[e.holder] ?? "\"\(e.holder)\"") : who(e.holder))"
            }
        }
        let members = Set(cycle.map(\.waiter))
        let behind = edges.filter { !members.contains($0.waiter) }.map(\.waiter)
        if !behind.isEmpty { sentence += "; \(behind.count) more thread\(behind.count == 1 ? " waits" : "s wait") behind the cycle: " + behind.prefix(4).map(who).joined(separator: ", ") }
        let evidence = ["the JVM's own report (jcmd Thread.print): Found one Java-level deadlock"]
            + edges.map { "\"\($0.waiter)\" waits to lock \($0.resource), held by \"\($0.holder)\"" }
        return HangDiagnosis(kind: .lockCycle, sentence: sentence, evidence: evidence)
    }

    /// What runtime stacks add to a diagnosis no rule explained: where the service's own code waits.
    /// Other kinds keep their sentence and gain one evidence line.
    public static func refine(_ d: HangDiagnosis, with evidence: RuntimeEvidence) -> HangDiagnosis {
        let withCode = evidence.groups.filter { !$0.frames.isEmpty }
        guard !withCode.isEmpty else { return d }
        var out = d
        let noun = evidence.runtime == .go ? "goroutine" : "thread"
        let shown = withCode.prefix(3).map { "\($0.count) × \($0.headline)" }.joined(separator: "; ")
            + (withCode.count > 3 ? "; and \(withCode.count - 3) more" : "")
        out.evidence.removeAll { $0.hasPrefix("runtime stacks: ") }
        out.evidence.append("runtime stacks: \(evidence.runtime.rawValue) \(noun)s wait in " + shown)
        if d.kind == .unknown, !d.sentence.contains("; \(evidence.runtime.rawValue) \(noun)s wait in ") {
            out.sentence += "; \(evidence.runtime.rawValue) \(noun)s wait in " + shown
        }
        return out
    }
}

extension RuntimeDiagnoser {
    /// The incident's diagnosis from the native rules and what the runtime said: a proof from the native
    /// evidence (lock words, the pthread wait-for graph, /proc) stands; a hang they leave `unknown` takes the
    /// runtime's diagnosis (the JVM's deadlock report, Go's RWMutex); either way the runtime stacks add where
    /// the service's own code waits.
    public static func combine(native: HangDiagnosis, runtime: HangDiagnosis?, evidence: RuntimeEvidence?) -> HangDiagnosis {
        var d = native
        if native.kind == .unknown, let runtime {
            d = HangDiagnosis(kind: runtime.kind, sentence: runtime.sentence, evidence: runtime.evidence + native.evidence)
        }
        if let evidence { d = refine(d, with: evidence) }
        return d
    }
}
