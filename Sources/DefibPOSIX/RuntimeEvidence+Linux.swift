import DefibCore
import Glibc

/// The runtime's own stacks from a hung process, before the kill: Python's threads with py-spy and Java's with
/// jcmd (Go's goroutines are read by delve from the core after the restart: `GoroutinesJob`). The pthread
/// wait-for graph (`WaitForReader`) and the runtime (`RuntimeDetector`) come with the observation before it.
public enum RuntimeEvidenceCollector {
    /// Runs the runtime's tool within the request's budget. Never throws: what fails is in `evidence.error`.
    public static func read(_ request: RuntimeStacksRequest) -> RuntimeStacksOutcome {
        let evidence = RuntimeEvidence(runtime: request.runtime)
        switch request.runtime {
        case .native:
            return RuntimeStacksOutcome(evidence: evidence)
        case .go:
            // Goroutines are read from the core after the restart: stopping the process with delve here would
            // add a second or more to the outage; the core holds the same memory. Only whether delve is there.
            var e = evidence
            e.tool = "dlv core (after the restart)"
            if case let .failure(error) = RuntimeTool.dlv.locate() { e.error = error.description }
            return RuntimeStacksOutcome(evidence: e)
        case .python:
            return RuntimeStacksOutcome(evidence: runPySpy(pid: request.pid, budgetMs: request.budgetMs, evidence: evidence))
        case .java:
            let (e, diagnosis) = runJcmd(pid: request.pid, budgetMs: request.budgetMs, home: request.home, evidence: evidence)
            return RuntimeStacksOutcome(evidence: e, diagnosis: diagnosis)
        }
    }

    /// py-spy in --nonblocking mode: it reads the interpreter's memory without stopping the process (which is
    /// hung anyway), so the native core writer's ptrace stop right after finds no tracer in its way.
    static func runPySpy(pid: Int32, budgetMs: Int, evidence: RuntimeEvidence) -> RuntimeEvidence {
        var e = evidence
        switch RuntimeTool.pySpy.locate() {
        case let .failure(error):
            e.error = error.description
        case let .success(path):
            e.tool = "py-spy dump --nonblocking"
            do {
                let run = try HelperRunner.run([path, "dump", "--json", "--nonblocking", "--pid", String(pid)],
                                               environment: RuntimeTool.cleanEnvironment(home: nil), budgetMs: budgetMs)
                if run.timedOut { e.error = "py-spy did not finish within \(budgetMs) ms"; break }
                guard run.status == .exited(code: 0) else { e.error = "py-spy failed (\(String(describing: run.status))): \(run.output.suffix(300))"; break }
                let threads = try PySpyDump.parse(jsonPart(run.output))
                e.groups = RuntimeStacks.group(threads, runtime: .python)
                e.total = threads.count
                e.tool = String(format: "py-spy dump --nonblocking, %.0f ms", run.elapsedMs)
            } catch {
                e.error = "\(error)"
            }
        }
        return e
    }

    /// `jcmd PID Thread.print -l`: the JVM's own thread dump through its attach mechanism, with lock owners and
    /// its deadlock detector's report.
    static func runJcmd(pid: Int32, budgetMs: Int, home: String?, evidence: RuntimeEvidence) -> (RuntimeEvidence, HangDiagnosis?) {
        var e = evidence
        switch RuntimeTool.jcmd.locate() {
        case let .failure(error):
            e.error = error.description
            return (e, nil)
        case let .success(path):
            e.tool = "jcmd Thread.print"
            do {
                let run = try HelperRunner.run([path, String(pid), "Thread.print", "-l"],
                                               environment: RuntimeTool.cleanEnvironment(home: home), budgetMs: budgetMs)
                if run.timedOut { e.error = "jcmd did not finish within \(budgetMs) ms"; return (e, nil) }
                guard run.status == .exited(code: 0) else { e.error = "jcmd failed (\(String(describing: run.status))): \(run.output.suffix(300))"; return (e, nil) }
                let dump = try JavaThreadDump.parse(run.output)
                e.groups = RuntimeStacks.group(dump.threads, runtime: .java)
                e.total = dump.threads.count
                e.tool = String(format: "jcmd Thread.print, %.0f ms", run.elapsedMs)
                return (e, RuntimeDiagnoser.javaDeadlock(dump))
            } catch {
                e.error = "\(error)"
                return (e, nil)
            }
        }
    }

    /// py-spy may print a warning before the JSON: start at the first '['.
    static func jsonPart(_ text: String) -> String {
        guard let i = text.firstIndex(of: "[") else { return text }
        return String(text[i...])
    }
}

/// Which runtime a process runs, from its executable and mappings.
public enum RuntimeDetector {
    /// - Java: libjvm.so is mapped.
    /// - Python: libpython is mapped, or the executable is named python/pythonX.Y (statically linked CPython).
    /// - Go: the executable has a `.go.buildinfo` section (every Go binary since 1.13, stripped or not).
    public static func detect(pid: Int32) -> (ServiceRuntime, String) {
        let maps = readTextFile("/proc/\(pid)/maps", maxBytes: 8 << 20) ?? ""
        var mapped: Set<String> = []
        for line in maps.split(separator: "\n") {
            if let slash = line.firstIndex(of: "/") { mapped.insert(String(line[slash...])) }
        }
        if let jvm = mapped.first(where: { $0.hasSuffix("/libjvm.so") }) { return (.java, "\(jvm) is mapped") }
        if let lib = mapped.first(where: { $0.split(separator: "/").last?.hasPrefix("libpython") == true }) { return (.python, "\(lib) is mapped") }
        let exe = ProcessMemory.executable(pid: pid) ?? ""
        let base = exe.split(separator: "/").last.map(String.init) ?? ""
        if isPythonName(base) { return (.python, "the executable is \(exe)") }
        if ELFSections.names(path: "/proc/\(pid)/exe").contains(".go.buildinfo") { return (.go, "\(exe) has a .go.buildinfo section") }
        return (.native, "no Go build info, libpython or libjvm")
    }
}

extension RuntimeDetector {
    /// "python", "python3", "python3.11" (what CPython's executables are called).
    static func isPythonName(_ name: String) -> Bool {
        guard name.hasPrefix("python") else { return false }
        let rest = name.dropFirst("python".count)
        return rest.allSatisfy { $0.isNumber || $0 == "." } && !rest.hasPrefix(".") && !rest.hasSuffix(".")
    }
}

/// Section names of an ELF file, read with pread (the header, the section headers, the name table).
enum ELFSections {
    static func names(path: String) -> [String] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return [] }
        defer { close(fd) }
        func read(_ offset: UInt64, _ count: Int) -> [UInt8]? {
            guard count > 0, count <= 16 << 20 else { return nil }
            var b = [UInt8](repeating: 0, count: count)
            let n = b.withUnsafeMutableBytes { pread(fd, $0.baseAddress, count, off_t(offset)) }
            return n == count ? b : nil
        }
        guard let h = read(0, 64), h[0] == 0x7f, h[1] == 0x45, h[2] == 0x4c, h[3] == 0x46, h[4] == 2, h[5] == 1 else { return [] }
        func u16(_ b: [UInt8], _ o: Int) -> Int { Int(b[o]) | Int(b[o + 1]) << 8 }
        func u32(_ b: [UInt8], _ o: Int) -> UInt64 { (0..<4).reduce(UInt64(0)) { $0 | UInt64(b[o + $1]) << (8 * UInt64($1)) } }
        func u64(_ b: [UInt8], _ o: Int) -> UInt64 { (0..<8).reduce(UInt64(0)) { $0 | UInt64(b[o + $1]) << (8 * UInt64($1)) } }
        let shoff = u64(h, 0x28), shentsize = u16(h, 0x3a), shnum = u16(h, 0x3c), shstrndx = u16(h, 0x3e)
        guard shentsize == 64, shnum > 0, shnum < 4096, shstrndx < shnum, let table = read(shoff, shnum * 64) else { return [] }
        let strOff = u64(table, shstrndx * 64 + 0x18), strSize = u64(table, shstrndx * 64 + 0x20)
        guard strSize < 1 << 20, let strings = read(strOff, Int(strSize)) else { return [] }
        return (0..<shnum).compactMap { i in
            let at = Int(u32(table, i * 64))
            guard at < strings.count else { return nil }
            return String(decoding: strings[at...].prefix { $0 != 0 }, as: UTF8.self)
        }
    }
}
