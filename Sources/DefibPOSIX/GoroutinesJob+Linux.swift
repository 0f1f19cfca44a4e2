import DefibCore
import Glibc

/// Go's goroutines from the core, after the restart: delve (`dlv core`) runs a Starlark script that prints every
/// goroutine's stack, the goroutines asleep on runtime semaphores (`runtime.semtable`, with the address each
/// sleeps on) and the `sync.RWMutex` behind each Lock/RLock waiter (readerCount, readerWait) — read from the
/// core's memory, the proof of how many read locks were never released. A child process the supervisor reaps,
/// like gdb's stacks, bounded by `timeout`; what it prints is read by `GoroutinesReport` (DefibCore).
public enum GoroutinesJob {
    /// Starts delve on the request's core, its files (script, init commands, output) in the request's
    /// directory, a directory defib made (0700); delve's HOME is there too. On failure nothing is left behind.
    public static func start(_ request: GoroutinesRequest) throws -> ChildProcess {
        let dlv: String
        switch RuntimeTool.dlv.locate() {
        case let .success(p): dlv = p
        case let .failure(e): throw e
        }
        guard let timeout = resolveExecutable("timeout", path: "/usr/bin:/bin") else {
            throw RuntimeToolError(tool: "timeout", problem: "not found (coreutils)")
        }
        do {
            try writePrivate(request.scriptPath, starlark)
            try writePrivate(request.initPath, "source \(request.scriptPath)\nexit\n")
            let out = open(request.outputPath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0o600)
            if out < 0 { throw SystemError("open(\(request.outputPath))") }
            defer { close(out) }
            var spawn = SpawnRequest(argv: [timeout, "-s", "KILL", String(request.timeLimitSeconds), dlv, "core", request.binary, request.core,
                                            "--allow-non-terminal-interactive=true", "--init", request.initPath],
                                     environment: RuntimeTool.cleanEnvironment(home: request.directory))
            spawn.stdoutFD = out; spawn.stderrFD = out; spawn.stdinFromDevNull = true
            return try spawnProcess(spawn)
        } catch {
            for path in request.files { unlink(path) }
            throw error
        }
    }

    /// What delve wrote (at most 16 MiB).
    public static func read(outputPath: String) -> String { readTextFile(outputPath, maxBytes: 16 << 20) ?? "" }

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
