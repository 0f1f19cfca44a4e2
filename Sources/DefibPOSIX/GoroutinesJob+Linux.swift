import DefibCore
import Glibc

/// Go's goroutines from the core, after the restart: delve (`dlv core`) runs a Starlark script that prints every
/// goroutine's stack, the goroutines asleep on runtime semaphores (`runtime.semtable`, with the address each
/// sleeps on) and the `sync.RWMutex` behind each Lock/RLock waiter (readerCount, readerWait) — read from the
/// core's memory, the proof of how many read locks were never released. A child process the supervisor reaps,
/// like gdb's stacks, bounded by `timeout`.
public struct GoroutinesJob: Sendable {
    public let child: ChildProcess
    public let incidentID: Int64
    public let outputPath: String
    let scriptPath: String
    let initPath: String
    let startedNs: Int64

    /// The most the job may take before `timeout` kills delve.
    public static let timeLimitSeconds = 60

    /// Starts delve on `core` of `binary`, its files (script, init commands, output) in `scratch`, a directory
    /// defib made (0700); delve's HOME is there too.
    public static func start(binary: String, core: String, scratch: String, incidentID: Int64) throws -> GoroutinesJob {
        let dlv: String
        switch RuntimeTool.dlv.locate() {
        case let .success(p): dlv = p
        case let .failure(e): throw e
        }
        guard let timeout = resolveExecutable("timeout", path: "/usr/bin:/bin") else {
            throw RuntimeToolError(tool: "timeout", problem: "not found (coreutils)")
        }
        let base = "\(scratch)/goroutines.\(incidentID)"
        let script = base + ".star", initFile = base + ".init", output = base + ".out"
        try writePrivate(script, starlark)
        try writePrivate(initFile, "source \(script)\nexit\n")
        let out = open(output, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0o600)
        if out < 0 { throw SystemError("open(\(output))") }
        defer { close(out) }
        var request = SpawnRequest(argv: [timeout, "-s", "KILL", String(timeLimitSeconds), dlv, "core", binary, core,
                                          "--allow-non-terminal-interactive=true", "--init", initFile],
                                   environment: RuntimeTool.cleanEnvironment(home: scratch))
        request.stdoutFD = out; request.stderrFD = out; request.stdinFromDevNull = true
        return GoroutinesJob(child: try spawnProcess(request), incidentID: incidentID, outputPath: output, scriptPath: script, initPath: initFile,
                             startedNs: monotonicNanoseconds())
    }

    /// Reads what delve printed and removes the job's files: the evidence (grouped goroutines, or the error) and
    /// the RWMutex diagnosis when the goroutines show one.
    public func finish(status: ChildStatus) -> (evidence: RuntimeEvidence, diagnosis: HangDiagnosis?) {
        let text = readTextFile(outputPath, maxBytes: 16 << 20) ?? ""
        for p in [outputPath, scriptPath, initPath] { unlink(p) }
        let ms = Double(monotonicNanoseconds() - startedNs) / 1e6
        var evidence = RuntimeEvidence(runtime: .go, tool: String(format: "dlv core, %.0f ms after the restart", ms))
        do {
            let dump = try GoCoreDump.parse(text)
            evidence.groups = RuntimeStacks.group(dump.goroutines, runtime: .go)
            evidence.total = dump.goroutines.count
            if status != .exited(code: 0) { evidence.error = "dlv ended \(status) (output kept)" }
            return (evidence, RuntimeDiagnoser.goRWMutex(dump))
        } catch {
            let tail = text.split(separator: "\n").suffix(3).joined(separator: " / ")
            evidence.error = status == .signaled(signal: SIGKILL, coreDumped: false)
                ? "dlv did not finish within \(Self.timeLimitSeconds) s" : "\(error)\(tail.isEmpty ? "" : " (dlv said: \(tail))")"
            return (evidence, nil)
        }
    }

    /// Kills delve (shutdown) and removes the files.
    public func cancel() {
        child.signalGroup(SIGKILL)
        _ = waitForChild(child, timeoutMs: 2000)
        child.closePidfd()
        for p in [outputPath, scriptPath, initPath] { unlink(p) }
    }

    static func writePrivate(_ path: String, _ text: String) throws {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0o600)
        if fd < 0 { throw SystemError("open(\(path))") }
        defer { close(fd) }
        let bytes = Array(text.utf8)
        let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        if n != bytes.count { throw SystemError("write(\(path))") }
    }

    /// The Starlark script (delve's scripting language). Output lines, tab-separated:
    /// `G id status`, `F function file line` (innermost first), `W goid semaphore-address`,
    /// `RW address w.state readerCount readerWait`. Addresses in decimal.
    static let starlark = #"""
def ev(e):
    return eval(None, e).Variable

def isnil(e):
    v = ev(e)
    return len(v.Children) == 0 or v.Children[0].Addr == 0

def num(v):
    # int32 in Go <= 1.19, atomic.Int32 (a struct with field v) since 1.20
    if len(v.Children) > 0:
        for c in v.Children:
            if c.Name == "v":
                return c.Value
    return v.Value

def main():
    kinds = {}
    for g in goroutines().Goroutines:
        print("G\t%d\t%d" % (g.ID, g.Status))
        st = stacktrace(g.ID, 64, False, False, 0)
        for loc in st.Locations:
            fn = loc.Location.Function
            name = fn.Name_ if fn else "?"
            if name == "sync.(*RWMutex).Lock":
                kinds[g.ID] = 8
            elif name == "sync.(*RWMutex).RLock" and g.ID not in kinds:
                kinds[g.ID] = 12
            print("F\t%s\t%s\t%d" % (name, loc.Location.File, loc.Location.Line))
    mutexes = {}
    for i in range(251):
        base = "runtime.semtable[%d].root" % i
        if int(ev(base + ".nwait").Value) == 0:
            continue
        todo = [base + ".treap"]
        while todo:
            e = todo.pop()
            if isnil(e):
                continue
            w = e
            for k in range(100000):
                if isnil(w):
                    break
                elem = int(ev(w + ".elem").Value)
                goid = int(ev(w + ".g.goid").Value)
                print("W\t%d\t%d" % (goid, elem))
                if goid in kinds:
                    mutexes[elem - kinds[goid]] = True
                w = w + ".waitlink"
            todo.append(e + ".prev")
            todo.append(e + ".next")
    for addr in mutexes:
        rw = "(*(*sync.RWMutex)(%d))" % addr
        print("RW\t%d\t%s\t%s\t%s" % (addr, ev(rw + ".w.state").Value, num(ev(rw + ".readerCount")), num(ev(rw + ".readerWait"))))
"""#
}
