import DefibCore
import DefibPOSIX
import Glibc
import Synchronization
import Testing

/// Helpers for the core-capture tests: temp dirs, the compiled fixture, running gdb and reading its answers.
enum CoreTestSupport {
    /// A fresh directory under /tmp; remove it with `removeTree`.
    static func makeTempDir(_ label: String) throws -> String {
        var template = Array("/tmp/defib-\(label)-XXXXXX".utf8CString)
        let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        guard made != nil else { throw SystemError("mkdtemp") }
        return String(decoding: template.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// rm -rf of a directory this test created.
    static func removeTree(_ path: String) {
        guard path.hasPrefix("/tmp/defib-") else { return }
        _ = try? run(["/bin/rm", "-rf", path], timeoutMs: 30_000)
    }

    /// Runs a program to completion (stdout and stderr together), killing it past the timeout.
    static func run(_ argv: [String], timeoutMs: Int = 120_000, cwd: String? = nil) throws -> (status: ChildStatus?, output: String) {
        let dir = try makeTempDir("run")
        defer { unlink(dir + "/out"); rmdir(dir) }
        let out = open(dir + "/out", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard out >= 0 else { throw SystemError("open(\(dir)/out)") }
        var request = SpawnRequest(argv: argv, environment: currentEnvironment(), workingDirectory: cwd)
        request.stdoutFD = out; request.stderrFD = out; request.stdinFromDevNull = true
        let child: ChildProcess
        do { child = try spawnProcess(request) } catch { close(out); throw error }
        close(out)
        defer { child.closePidfd() }
        var status = waitForChild(child, timeoutMs: timeoutMs)
        if status == nil {
            try? child.signal(SIGKILL)
            status = waitForChild(child, timeoutMs: 10_000)
            Issue.record("\(argv.joined(separator: " ")) did not finish within \(timeoutMs) ms")
        }
        return (status, readText(dir + "/out"))
    }

    static func readText(_ path: String) -> String {
        guard let bytes = try? readWholeFile(path) else { return "" }
        return String(decoding: bytes, as: UTF8.self)
    }

    static func readWholeFile(_ path: String) throws -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw SystemError("open(\(path))") }
        defer { close(fd) }
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n <= 0 { break }
            out += buf[0..<n]
        }
        return out
    }

    // MARK: the fixture

    private static let builtFixture = Mutex<String?>(nil)

    /// The fixture binary, compiled with `cc -g -O0 -pthread` into /tmp/defib-core-fixture-HASH (one per source
    /// version, shared by test runs; built in a temp dir and renamed into place so parallel runs never see half a file).
    static func fixtureBinary() throws -> String {
        try builtFixture.withLock { cached in
            if let cached { return cached }
            var hash: UInt64 = 0xcbf2_9ce4_8422_2325   // FNV-1a of the source
            for byte in hungThreadsFixtureSource.utf8 { hash = (hash ^ UInt64(byte)) &* 0x100_0000_01b3 }
            let binary = "/tmp/defib-core-fixture-\(String(hash, radix: 16))"
            if access(binary, X_OK) == 0 { cached = binary; return binary }
            let dir = try makeTempDir("fixture")
            defer { removeTree(dir) }
            let source = dir + "/hung_threads.c"
            let fd = open(source, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
            guard fd >= 0 else { throw SystemError("open(\(source))") }
            let bytes = Array(hungThreadsFixtureSource.utf8)
            _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            close(fd)
            let built = dir + "/hung_threads"
            let (status, output) = try run(["cc", "-g", "-O0", "-pthread", "-o", built, source], timeoutMs: 60_000)
            guard status == .exited(code: 0) else {
                throw FixtureError(message: "cc failed (\(String(describing: status))): \(output)")
            }
            guard rename(built, binary) == 0 else { throw SystemError("rename(\(built), \(binary))") }
            cached = binary
            return binary
        }
    }

    struct FixtureError: Error, CustomStringConvertible {
        var message: String
        var description: String { message }
    }

    /// A running fixture process; `stop()` kills and reaps it.
    struct Fixture {
        let child: ChildProcess
        let binary: String
        let dir: String
        var pid: Int32 { child.pid }

        /// A `key=value` from the fixture's ready line ("seen", "rtsig" …).
        func readyValue(_ key: String) -> String? {
            let line = readText(dir + "/stdout")
            guard let r = line.range(of: key + "=") else { return nil }
            return String(line[r.upperBound...].prefix(while: { !$0.isWhitespace }))
        }

        /// Threads in /proc/PID/task now.
        var taskCount: Int { taskIDs.count }
        var taskIDs: [Int32] {
            guard let d = opendir("/proc/\(pid)/task") else { return [] }
            defer { closedir(d) }
            var ids: [Int32] = []
            while let e = readdir(d) {
                let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
                if let id = Int32(name) { ids.append(id) }
            }
            return ids.sorted()
        }

        /// The state letter of every thread (from task/TID/stat).
        var threadStates: [Character] {
            taskIDs.compactMap { tid in
                let text = readText("/proc/\(pid)/task/\(tid)/stat")
                guard let close = text.lastIndex(of: ")") else { return nil }
                return text[text.index(close, offsetBy: 2)...].first
            }
        }

        /// Thread states once every thread is back asleep (a detached thread runs briefly to re-enter its wait),
        /// or whatever they are after 10 s.
        func settledStates(expecting letter: Character = "S") -> [Character] {
            var states = threadStates
            for _ in 0..<1_000 where !states.allSatisfy({ $0 == letter }) {
                usleep(10_000)
                states = threadStates
            }
            return states
        }

        func stop() {
            try? child.signal(SIGKILL)
            _ = waitForChild(child, timeoutMs: 10_000)
            child.closePidfd()
        }
    }

    /// Starts the fixture and waits (≤ 20 s) until it says every worker is parked.
    static func startFixture(conds: Int = 3, futexes: Int = 2, dataMiB: Int = 64, zeroMiB: Int = 32, reserveMiB: Int = 128,
                             churn: Bool = false, cwd: String? = nil) throws -> Fixture {
        let binary = try fixtureBinary()
        let dir = try makeTempDir("fixture-run")
        let out = open(dir + "/stdout", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard out >= 0 else { throw SystemError("open(\(dir)/stdout)") }
        var request = SpawnRequest(argv: [binary, String(conds), String(futexes), String(dataMiB), String(zeroMiB),
                                          String(reserveMiB), churn ? "1" : "0"],
                                   environment: currentEnvironment(), workingDirectory: cwd ?? dir)
        request.stdoutFD = out; request.stdinFromDevNull = true
        // No parent-death signal: it fires when the spawning *thread* exits, and Swift Testing's pool threads come
        // and go. The fixture ends itself after 5 minutes (alarm) if a crashed test leaves it behind.
        request.parentDeathSignal = 0
        let child: ChildProcess
        do { child = try spawnProcess(request) } catch { close(out); throw error }
        close(out)
        let fixture = Fixture(child: child, binary: binary, dir: dir)
        let deadline = monotonicNanoseconds() + 20_000_000_000
        while monotonicNanoseconds() < deadline {
            if readText(dir + "/stdout").contains("ready") { return fixture }
            if waitForChildNoReap(child) { break }
            usleep(5_000)
        }
        fixture.stop()
        throw FixtureError(message: "fixture did not report ready: \(readText(dir + "/stdout"))")
    }

    // A zombie: it exited (it is not reaped here, so `stop()` still can).
    private static func waitForChildNoReap(_ child: ChildProcess) -> Bool {
        readText("/proc/\(child.pid)/stat").contains(") Z ")
    }

    // MARK: gdb

    /// gdb's view of a core: threads (LWP ids), which one is current, function names per thread, and extra output.
    struct GdbView {
        var output: String
        var threads: [Int32] = []
        var currentThread: Int32?
        var frames: [Int32: [String]] = [:]
    }

    /// `gdb -batch -nx -ex 'info threads' -ex 'thread apply all bt' [extra commands] BINARY CORE`.
    static func gdb(binary: String, core: String, extra: [String] = []) throws -> GdbView {
        var argv = ["gdb", "-batch", "-nx", "-q", "-ex", "set pagination off", "-ex", "set width 0",
                    "-ex", "info threads", "-ex", "thread apply all bt"]
        for e in extra { argv += ["-ex", e] }
        argv += [binary, core]
        let (status, output) = try run(argv, timeoutMs: 120_000)
        #expect(status == .exited(code: 0), "gdb: \(output)")
        return parseGdb(output)
    }

    /// Parses `info threads` and `thread apply all bt` output.
    static func parseGdb(_ output: String) -> GdbView {
        var view = GdbView(output: output)
        var inBacktraces = false
        var current: Int32?
        for line in output.split(separator: "\n", omittingEmptySubsequences: true) {
            if line.hasPrefix("Thread ") && line.hasSuffix(":") {
                inBacktraces = true
                current = lwp(in: line)
                if let current { view.frames[current] = [] }
                continue
            }
            if !inBacktraces, let id = lwp(in: line), line.first == "*" || line.first == " " {
                view.threads.append(id)
                if line.first == "*" { view.currentThread = id }
                continue
            }
            if inBacktraces, let current, line.hasPrefix("#"), let name = functionName(in: line) {
                view.frames[current, default: []].append(name)
            }
        }
        return view
    }

    /// "LWP 1234" → 1234.
    static func lwp(in line: Substring) -> Int32? {
        guard let r = line.range(of: "LWP ") else { return nil }
        return Int32(line[r.upperBound...].prefix(while: { $0.isNumber }))
    }

    /// "#3  0x00007f… in __pthread_cond_wait_common (…) at …" or "#5  worker_cond_wait (arg=…) at …" → the name.
    static func functionName(in line: Substring) -> String? {
        var rest = line.drop(while: { $0 != " " }).drop(while: { $0 == " " })
        if rest.hasPrefix("0x"), let r = rest.range(of: " in ") { rest = rest[r.upperBound...] }
        let name = rest.prefix(while: { $0 != " " && $0 != "(" })
        return name.isEmpty ? nil : String(name)
    }

    /// `print EXPR` output value as the text after " = ".
    static func printed(_ output: String, marker: String = "$1 = ") -> String? {
        guard let r = output.range(of: marker) else { return nil }
        return String(output[r.upperBound...].prefix(while: { $0 != "\n" }))
    }

    // MARK: ELF

    /// The program headers of an ELF core read back from the file, checked for consistency.
    struct CoreHeaders {
        var type: UInt16
        var machine: UInt16
        var phnum: Int
        var noteOffset: UInt64
        var noteSize: UInt64
        var loads: [(offset: UInt64, vaddr: UInt64, filesz: UInt64, memsz: UInt64, flags: UInt32)]
        var firstNoteIsPrStatus: Bool
    }

    static func readCoreHeaders(_ path: String) throws -> CoreHeaders {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw SystemError("open(\(path))") }
        defer { close(fd) }
        func bytes(_ offset: UInt64, _ count: Int) -> [UInt8] {
            var b = [UInt8](repeating: 0, count: count)
            let n = b.withUnsafeMutableBytes { pread(fd, $0.baseAddress, count, off_t(offset)) }
            return Array(b.prefix(max(n, 0)))
        }
        func u16(_ b: [UInt8], _ o: Int) -> UInt16 { UInt16(b[o]) | UInt16(b[o + 1]) << 8 }
        func u32(_ b: [UInt8], _ o: Int) -> UInt32 { (0..<4).reduce(0) { $0 | UInt32(b[o + $1]) << (8 * $1) } }
        func u64(_ b: [UInt8], _ o: Int) -> UInt64 { (0..<8).reduce(0) { $0 | UInt64(b[o + $1]) << (8 * $1) } }
        let eh = bytes(0, 64)
        guard eh.count == 64, eh[0..<4] == [0x7f, 0x45, 0x4c, 0x46] else { throw FixtureError(message: "\(path): not ELF") }
        var phnum = Int(u16(eh, 56))
        if phnum == 0xffff { phnum = Int(u32(bytes(u64(eh, 40), 64), 44)) }
        let phoff = u64(eh, 32)
        let ph = bytes(phoff, phnum * 56)
        var headers = CoreHeaders(type: u16(eh, 16), machine: u16(eh, 18), phnum: phnum, noteOffset: 0, noteSize: 0,
                                  loads: [], firstNoteIsPrStatus: false)
        for i in 0..<phnum {
            let o = i * 56
            let type = u32(ph, o)
            if type == 4 { headers.noteOffset = u64(ph, o + 8); headers.noteSize = u64(ph, o + 32) }
            if type == 1 {
                headers.loads.append((u64(ph, o + 8), u64(ph, o + 16), u64(ph, o + 32), u64(ph, o + 40), u32(ph, o + 4)))
            }
        }
        let firstNote = bytes(headers.noteOffset, 12)
        headers.firstNoteIsPrStatus = firstNote.count == 12 && u32(firstNote, 8) == 1
        return headers
    }
}
