import CDefibShims
import DefibCore
import Glibc

/// How the native core writer works.
public struct NativeCoreOptions: Sendable, Equatable {
    /// Wall-time budget for the whole capture. Past it no more memory is copied: the core is kept, marked truncated.
    public var budgetMs: Int
    /// Threads copying memory (the calling thread is one of them).
    public var writerThreads: Int = 2
    /// The thread to put first, which gdb shows as the current thread; nil = the thread-group leader.
    public var firstThread: Int32? = nil
    /// Bytes read with one process_vm_readv (512 KiB measured best here; larger chunks thrash the cache).
    public var chunkBytes: Int = 512 << 10
    /// How long to wait for every thread to stop (threads in uninterruptible sleep never do). Not part of the budget:
    /// registers of every thread are worth more than memory.
    public var stopTimeoutMs: Int = 500
    /// Write memory with O_DIRECT (falling back to the page cache where refused): a first capture does not pay for
    /// new page-cache pages (see `CoreMemoryCopier.directFD`); a steady stream of captures into a warm cache is faster
    /// without it.
    public var directIO = false
    /// A stacks-only core (a stall's evidence): per thread, this many bytes of its stack from the stack pointer up,
    /// plus the small mappings gdb needs to unwind and to find the libraries; no heap. nil = the full core.
    public var stacksOnly: Int? = nil

    /// Options with a budget and the defaults for everything else.
    public init(budgetMs: Int, writerThreads: Int = 2, firstThread: Int32? = nil, chunkBytes: Int = 512 << 10,
                stopTimeoutMs: Int = 500) {
        self.budgetMs = budgetMs; self.writerThreads = writerThreads; self.firstThread = firstThread
        self.chunkBytes = chunkBytes; self.stopTimeoutMs = stopTimeoutMs
    }

    /// What the supervisor captures a hung service with: the defaults, with O_DIRECT (an incident's capture is a
    /// first capture: the page cache holds nothing it could reuse).
    public static func supervisor(budgetMs: Int, firstThread: Int32?) -> NativeCoreOptions {
        var options = NativeCoreOptions(budgetMs: budgetMs, firstThread: firstThread)
        options.directIO = true
        return options
    }

    /// The first invalid option, named with its value, or nil.
    public var validationError: String? {
        if budgetMs <= 0 { return "budgetMs must be positive, got \(budgetMs)" }
        if !(1...16).contains(writerThreads) { return "writerThreads must be 1…16, got \(writerThreads)" }
        if chunkBytes < 4096 || chunkBytes % 4096 != 0 || chunkBytes > 64 << 20 {
            return "chunkBytes must be a multiple of 4096 between 4096 and 64 MiB, got \(chunkBytes)"
        }
        if stopTimeoutMs <= 0 { return "stopTimeoutMs must be positive, got \(stopTimeoutMs)" }
        return nil
    }
}

/// What the native core writer did.
public struct NativeCoreResult: Sendable, Equatable {
    /// Method "native"; `path` nil when no file was kept; `error` says why it failed or that it was truncated.
    public var record: CaptureRecord
    /// Threads in the core (stopped and registers read).
    public var threads: Int
    /// Disk space the core really takes (st_blocks × 512): zero pages are holes.
    public var allocatedBytes: Int64
    /// True when the budget ran out (or the process died) before all memory was copied. Headers are still valid.
    public var truncated: Bool
    /// Milliseconds from the first PTRACE_SEIZE until every thread was stopped.
    public var stopMs: Double
    /// Things worth recording that did not make the capture fail ("2 threads did not stop …").
    public var notes: [String]
    /// True when the process's main thread died during the capture. Its exit status was left for the parent to reap.
    public var processExited: Bool
    /// Milliseconds from the first PTRACE_SEIZE until every thread was detached again: the pause the service saw.
    public var frozenMs: Double = 0
}

/// Writes an ELF core of a live process from the outside, the way the kernel would (see
/// /work/shared/reference/core-capture.md): stop every thread with ptrace, read registers, copy the mappings the
/// kernel's default coredump_filter would, detach. The process keeps running afterwards.
public enum NativeCoreWriter {
    /// Captures `pid` into `path` (created 0600, replaced if it exists). Every ptrace call is made from the calling
    /// thread. Never throws: failures are in `record.error`, and no file is left when nothing useful was written.
    /// While it runs no other thread of this process may call waitpid(-1, __WALL): that would consume the ptrace
    /// stops it waits for. A death of the main thread is never reaped here; the parent's own wait sees it.
    public static func capture(pid: Int32, path: String, options: NativeCoreOptions) -> NativeCoreResult {
        switch freeze(pid: pid, path: path, options: options) {
        case let .failed(result): return result
        case let .frozen(frozen): return write(frozen, detach: true)
        }
    }
}

/// Restart while the core is written: the capture split in two around the replacement's spawn.
extension NativeCoreWriter {
    /// What `freeze` did: a process ready for `write`, or the failed capture.
    public enum Freeze {
        case frozen(FrozenProcess)
        case failed(NativeCoreResult)
    }

    /// The first half of a capture: every thread stopped (by the calling thread, which must also be the one that
    /// detaches, if anyone does), registers and mappings read, the core file open. The process can do nothing
    /// until `write` detaches it, or it is killed.
    public static func freeze(pid: Int32, path: String, options: NativeCoreOptions) -> Freeze {
        let started = monotonicNanoseconds()
        func elapsedMs() -> Double { Double(monotonicNanoseconds() - started) / 1e6 }
        var notes: [String] = []
        func failed(_ message: String, stopMs: Double = 0, exited: Bool = false) -> Freeze {
            .failed(NativeCoreResult(record: CaptureRecord(method: "native", path: nil, bytes: 0, durationMs: elapsedMs(), error: message),
                                     threads: 0, allocatedBytes: 0, truncated: false, stopMs: stopMs, notes: notes, processExited: exited))
        }
        if let problem = options.validationError { return failed("invalid native core options: \(problem)") }
        if pid <= 0 { return failed("invalid pid \(pid)") }
        if path.isEmpty { return failed("invalid core path: empty") }

        // Read before stopping: the state the process was in (S, D …) is evidence, "t" (traced) is not.
        let processStat: ProcStat
        do { processStat = try ProcStat.read("/proc/\(pid)/stat") } catch {
            return failed("process \(pid) not found (\(error))")
        }
        // Open before stopping, so a bad path never stops the process. The core is written under a temporary
        // name and renamed into place once complete: a file under the final name is always a whole core, and
        // one left by a supervisor that died mid-write is recognisable (`partialSuffix`). O_EXCL: a file
        // someone else put there is never written into.
        let partial = Self.partialPath(path)
        var fd = retryingEINTR { open(partial, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0o600) }
        if fd < 0 && errno == EEXIST {
            unlink(partial)   // a dead writer's leftover of this very core
            fd = retryingEINTR { open(partial, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0o600) }
        }
        if fd < 0 { return failed("\(SystemError("open(\(path))"))") }   // named by the core's own path: the operator's
        fchmod(fd, 0o600)   // O_CREAT's mode went through the umask
        // A stacks-only core is a stall's evidence: the service may be running, so everything that can be read
        // before the stop is (its mappings, its threads' /proc files), and the budget is the freeze itself.
        let preread = options.stacksOnly == nil ? nil : PreStopReading.read(pid: pid)

        let stopStarted = monotonicNanoseconds()
        let deadline = (options.stacksOnly == nil ? started : stopStarted) + Int64(options.budgetMs) * 1_000_000
        var process: StoppedProcess
        do {
            process = try StoppedProcess(pid: pid, deadline: stopStarted + Int64(options.stopTimeoutMs) * 1_000_000)
        } catch {
            close(fd)
            unlink(partial)
            if error.error.errno == ESRCH { return failed("process \(pid) is gone (\(error))") }
            return failed("\(error)")
        }
        let stopMs = Double(monotonicNanoseconds() - stopStarted) / 1e6
        func giveUp(_ message: String) -> Freeze {
            close(fd)
            unlink(partial)
            process.detachAll()
            return failed(message, stopMs: stopMs, exited: process.leaderExited)
        }
        if process.stopped.isEmpty {
            if !process.unstopped.isEmpty {
                return giveUp("no thread of process \(pid) stopped within \(options.stopTimeoutMs) ms (\(process.unstopped.count) running: "
                              + "throttled, starved of CPU, or in uninterruptible sleep)")
            }
            return giveUp("process \(pid) exited before any thread could be stopped")
        }
        if !process.unstopped.isEmpty {
            notes.append("\(process.unstopped.count) thread(s) did not stop within \(options.stopTimeoutMs) ms (uninterruptible sleep?): "
                         + "\(process.unstopped.sorted().map(String.init).joined(separator: ", ")); they are not in the core")
        }

        // Only the registers here (ptrace: this thread's to read); the rest is read by whoever writes the core.
        let registers = ProcessSnapshot.registers(pid: pid, threads: process.stopped, first: options.firstThread)
        notes += registers.notes
        if registers.threads.isEmpty { return giveUp("every thread of process \(pid) vanished while its registers were read") }
        return .frozen(FrozenProcess(pid: pid, path: path, options: options, started: started, stopStarted: stopStarted, deadline: deadline,
                                     fd: fd, process: process, stat: processStat, threads: registers.threads, preread: preread,
                                     notes: notes, stopMs: stopMs))
    }

    /// The second half: the memory copied (by `options.writerThreads` threads, the calling one among them), then —
    /// with `detach` — the process let go (call it from the thread that froze it), then the headers. Without
    /// `detach` the process stays frozen (the caller kills it: it must never run again) and any thread may call it.
    public static func write(_ frozen: FrozenProcess, detach: Bool, writerThreads: Int? = nil) -> NativeCoreResult {
        let pid = frozen.pid, path = frozen.path, partial = Self.partialPath(frozen.path), options = frozen.options, fd = frozen.fd, stopMs = frozen.stopMs
        var process = frozen.process
        var notes = frozen.notes
        func elapsedMs() -> Double { Double(monotonicNanoseconds() - frozen.started) / 1e6 }
        func failed(_ message: String, stopMs: Double = 0, exited: Bool = false) -> NativeCoreResult {
            NativeCoreResult(record: CaptureRecord(method: "native", path: nil, bytes: 0, durationMs: elapsedMs(), error: message),
                             threads: 0, allocatedBytes: 0, truncated: false, stopMs: stopMs, notes: notes, processExited: exited)
        }
        let deadline = frozen.deadline
        var closed = false
        defer { if !closed { close(fd) } }
        var attached = detach
        defer { if attached { process.detachAll() } }

        // Everything below reads a stopped process; a failure to read a /proc file means it died.
        let snapshot: ProcessSnapshot
        do {
            snapshot = try ProcessSnapshot.read(pid: pid, threads: frozen.threads, stat: frozen.stat, stacksOnly: options.stacksOnly,
                                                preread: frozen.preread)
        } catch {
            unlink(partial)
            return failed("reading process \(pid) after stopping it: \(error)", stopMs: stopMs, exited: process.leaderExited)
        }
        let plan = CorePlan(snapshot: snapshot, chunkBytes: options.chunkBytes)
        let copier = CoreMemoryCopier(pid: pid, fd: fd, path: path, units: plan.units, chunkBytes: options.chunkBytes,
                                      deadline: deadline, directIO: options.directIO)
        copier.run(threads: writerThreads ?? options.writerThreads)
        if options.directIO { notes.append(copier.wroteDirect ? "memory written with O_DIRECT" : "O_DIRECT refused here: memory written through the page cache") }

        // Memory is copied: let the process go before the headers are written.
        var frozenMs: Double = 0
        if attached {
            process.detachAll(); attached = false
            frozenMs = Double(monotonicNanoseconds() - frozen.stopStarted) / 1e6
        }

        var layout = plan.layout
        var truncated = false
        var error: String? = nil
        switch copier.failure {
        case .diskFull(let e)?:
            unlink(partial)
            return failed("disk full while writing core \(path): \(e)", stopMs: stopMs, exited: process.leaderExited)
        case .writeFailed(let e)?:
            unlink(partial)
            return failed("writing core \(path): \(e)", stopMs: stopMs, exited: process.leaderExited)
        case .processGone?:
            truncated = true
            error = "truncated: process \(pid) died during the capture"
        case nil:
            break
        }
        if copier.timedOut {
            truncated = true
            error = "truncated: the \(options.budgetMs) ms budget ran out"
        }
        if truncated {
            // A segment keeps the copied prefix of its units; the rest reads as "not in the core" rather than zeros.
            var complete = 0, withData = 0
            for (segment, unitIndices) in plan.unitsBySegment.enumerated() where !unitIndices.isEmpty {
                withData += 1
                var prefix: UInt64 = 0
                for u in unitIndices {
                    guard copier.isDone(u) else { break }
                    prefix += UInt64(plan.units[u].length)
                }
                if prefix == layout.segments[segment].filesz { complete += 1 }
                layout.setFileSize(prefix, ofSegment: segment)
            }
            error! += " after \(copier.bytesWritten >> 20) MiB written; \(complete) of \(withData) mappings complete"
        }

        let header = layout.headerBytes(notes: plan.notes)
        let headerWrite = header.withUnsafeBytes { raw -> Int in
            var done = 0
            while done < raw.count {
                let n = pwrite(fd, raw.baseAddress! + done, raw.count - done, off_t(done))
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { return n == 0 ? -2 : -1 }
                done += n
            }
            return 0
        }
        /// A write that did not land: the partial core is removed and the error says whether the disk was full.
        func writeFailed(_ e: SystemError) -> NativeCoreResult {
            unlink(partial)
            let full = e.errno == ENOSPC || e.errno == EDQUOT
            return failed(full ? "disk full while writing core \(path): \(e)" : "writing core \(path): \(e)",
                          stopMs: stopMs, exited: process.leaderExited)
        }
        if headerWrite != 0 {
            let e = SystemError("pwrite(\(path), headers)", errno: headerWrite == -2 ? ENOSPC : errno)
            return writeFailed(e)
        }
        if retryingEINTR({ ftruncate(fd, off_t(layout.fileSize)) }) != 0 {
            let e = SystemError("ftruncate(\(path), \(layout.fileSize))")
            return writeFailed(e)
        }
        var st = stat()
        fstat(fd, &st)
        // close(2) is where some file systems (NFS, quotas) report a write that could not land.
        closed = true
        if close(fd) != 0 {
            let e = SystemError("close(\(path))")
            return writeFailed(e)
        }
        if rename(partial, path) != 0 {
            let e = SystemError("rename(\(partial), \(path))")
            unlink(partial)
            return failed("\(e)", stopMs: stopMs, exited: process.leaderExited)
        }
        if process.leaderExited { notes.append("the main thread exited during the capture") }
        if process.redelivered > 0 {
            notes.append("re-delivered \(process.redelivered) signal(s) that arrived as the threads stopped")
        }
        if process.vanished > 0 { notes.append("\(process.vanished) thread(s) ended during the capture") }
        return NativeCoreResult(
            record: CaptureRecord(method: "native", path: path, bytes: Int64(st.st_size), durationMs: elapsedMs(), error: error),
            threads: snapshot.threads.count, allocatedBytes: Int64(st.st_blocks) * 512, truncated: truncated,
            stopMs: stopMs, notes: notes, processExited: process.leaderExited, frozenMs: frozenMs)
    }
}

/// A process frozen for its core by `NativeCoreWriter.freeze`: every thread stopped, their registers read, the
/// file open. Handed to `NativeCoreWriter.write` once (by the freezing thread, or by a writer thread when the
/// process is to be killed rather than detached).
public final class FrozenProcess: @unchecked Sendable {
    public let pid: Int32
    let path: String
    let options: NativeCoreOptions
    let started: Int64
    /// When the first thread was seized, and when the copy must stop (the budget from the capture's start; for a
    /// stacks-only core, from the stop: its budget is the freeze itself).
    let stopStarted: Int64
    let deadline: Int64
    let fd: Int32
    let process: StoppedProcess
    /// /proc/PID/stat as read before the stop (its state is evidence; "t" is not).
    let stat: ProcStat
    /// The stopped threads' registers (what only the tracer can read), the first one gdb's current thread.
    let threads: [ThreadSnapshot]
    /// A stacks-only capture's reading from before the stop.
    let preread: PreStopReading?
    let notes: [String]
    /// Milliseconds the stop took.
    public let stopMs: Double
    /// Threads stopped and in the core.
    public var threadCount: Int { threads.count }

    init(pid: Int32, path: String, options: NativeCoreOptions, started: Int64, stopStarted: Int64, deadline: Int64, fd: Int32,
         process: StoppedProcess, stat: ProcStat, threads: [ThreadSnapshot], preread: PreStopReading?, notes: [String], stopMs: Double) {
        self.pid = pid; self.path = path; self.options = options; self.started = started; self.stopStarted = stopStarted
        self.deadline = deadline; self.fd = fd; self.process = process
        self.stat = stat; self.threads = threads; self.preread = preread; self.notes = notes; self.stopMs = stopMs
    }
}

extension NativeCoreWriter {
    /// Appended to a core's name while it is being written: `core.web.12.4123.partial`.
    public static let partialSuffix = ".partial"

    /// Where the core for `path` is written until it is complete.
    public static func partialPath(_ path: String) -> String { path + partialSuffix }
}

/// One stopped thread's registers and signal state.
struct ThreadSnapshot {
    var tid: Int32
    var registers: [UInt8]
    var fpRegisters: [UInt8]?
    var xstate: [UInt8]?
    var status: ProcStatus
    var stat: ProcStat?
}

/// Everything read from a stopped process, in the order the core wants it.
struct ProcessSnapshot {
    var pid: Int32
    var stat: ProcStat
    var status: ProcStatus
    var threads: [ThreadSnapshot]
    var mappings: [SmapsEntry]
    var extents: [DumpExtent]
    /// For `.firstPageIfELF` mappings: whether memory starts with the ELF magic.
    var elfHeaderAt: Set<UInt64>
    var auxv: [UInt8]
    var commandLine: [UInt8]
    var notes: [String]

    /// The registers of every stopped thread, the requested one first (gdb's current thread is the first
    /// NT_PRSTATUS: `first`, else the leader). ptrace: only the thread that stopped them may call it. Each thread's
    /// /proc status and stat are left for `read` (any thread may read them).
    static func registers(pid: Int32, threads tids: [Int32], first: Int32?) -> (threads: [ThreadSnapshot], notes: [String]) {
        var notes: [String] = []
        var order = tids
        let wanted = first ?? pid
        if let i = order.firstIndex(of: wanted) {
            order.remove(at: i); order.insert(wanted, at: 0)
        } else if let first, !order.isEmpty {
            notes.append("requested first thread \(first) is not a stopped thread of \(pid); using \(order[0])")
        }
        var threads: [ThreadSnapshot] = []
        for tid in order {
            var regs = [UInt8](repeating: 0, count: PrStatus.registersSize)
            let n = regs.withUnsafeMutableBytes { defib_ptrace_getregset(tid, Int32(ELF.NT_PRSTATUS), $0.baseAddress, $0.count) }
            if n != PrStatus.registersSize {
                notes.append("thread \(tid) left out: \(SystemError("ptrace(PTRACE_GETREGSET, \(tid), NT_PRSTATUS)"))")
                continue
            }
            var fp = [UInt8](repeating: 0, count: 512)
            let fn = fp.withUnsafeMutableBytes { defib_ptrace_getregset(tid, Int32(ELF.NT_PRFPREG), $0.baseAddress, $0.count) }
            var xs = [UInt8](repeating: 0, count: 32 << 10)
            let xn = xs.withUnsafeMutableBytes { defib_ptrace_getregset(tid, Int32(ELF.NT_X86_XSTATE), $0.baseAddress, $0.count) }
            threads.append(ThreadSnapshot(tid: tid, registers: regs, fpRegisters: fn == 512 ? fp : nil,
                                          xstate: xn > 0 ? Array(xs.prefix(xn)) : nil, status: ProcStatus(), stat: nil))
        }
        return (threads, notes)
    }

    /// The rest of what the core needs from the stopped process — its mappings and what the kernel's dump would
    /// take of each, its status, auxv and command line, each thread's status and stat — by any thread of ours
    /// (/proc and process_vm_readv). For a large process this is most of the freeze before the copy (its smaps is
    /// a page-table walk), so a capture that restarts the service first reads it after the replacement's spawn.
    static func read(pid: Int32, threads registered: [ThreadSnapshot], stat: ProcStat, stacksOnly: Int? = nil,
                     preread: PreStopReading? = nil) throws -> ProcessSnapshot {
        var mappings = try preread?.mappings ?? SmapsParser.parse(try readProcText("/proc/\(pid)/smaps"))
        let filter = preread?.filter ?? (try? readProcText("/proc/\(pid)/coredump_filter"))
            .flatMap { UInt32($0.trimmingCharacters(in: " \n"), radix: 16) } ?? CoreDumpFilter.defaultBits
        var extents = mappings.map { CoreDumpFilter.extent(for: $0, filter: filter) }
        var elfHeaderAt: Set<UInt64> = []
        for (m, e) in zip(mappings, extents) where e == .firstPageIfELF {
            var magic: UInt32 = 0
            let n = withUnsafeMutableBytes(of: &magic) { defib_read_memory(pid, m.start, $0.baseAddress, 4) }
            if n == 4 && magic == 0x464c_457f { elfHeaderAt.insert(m.start) }
        }
        let status = try preread?.status ?? ProcStatus.parse(try readProcText("/proc/\(pid)/status"))
        let auxv = preread?.auxv ?? (try? readProcFile("/proc/\(pid)/auxv")) ?? []
        let cmdline = preread?.commandLine ?? (try? readProcFile("/proc/\(pid)/cmdline", maxBytes: 4096)) ?? []
        var threads = registered
        for i in threads.indices {
            let tid = threads[i].tid
            threads[i].status = preread?.threadStatus[tid] ?? (try? readProcText("/proc/\(pid)/task/\(tid)/status")).map(ProcStatus.parse) ?? ProcStatus()
            threads[i].stat = preread?.threadStat[tid] ?? (try? ProcStat.read(tid == pid ? "/proc/\(pid)/stat" : "/proc/\(pid)/task/\(tid)/stat"))
        }
        if let stackBytes = stacksOnly {
            (mappings, extents) = StacksOnlyScope.narrow(mappings: mappings, extents: extents,
                                                         stackPointers: threads.map { StacksOnlyScope.stackPointer($0.registers) },
                                                         stackBytes: stackBytes)
        }
        return ProcessSnapshot(pid: pid, stat: stat, status: status, threads: threads, mappings: mappings, extents: extents,
                               elfHeaderAt: elfHeaderAt, auxv: auxv, commandLine: cmdline, notes: [])
    }
}

/// The notes, the layout and the copy units of one core, decided before any byte is written.
struct CorePlan {
    var notes: [UInt8]
    var layout: ELFCoreLayout
    var units: [CopyUnit]
    /// Unit indices of each segment, in address order.
    var unitsBySegment: [[Int]]

    init(snapshot s: ProcessSnapshot, chunkBytes: Int) {
        notes = Self.encodeNotes(s)
        var segments: [CoreSegment] = []
        for (m, extent) in zip(s.mappings, s.extents) {
            let filesz: UInt64
            switch extent {
            case .nothing: filesz = 0
            case .whole: filesz = m.size
            case .firstPageIfELF: filesz = s.elfHeaderAt.contains(m.start) ? min(ELF.pageSize, m.size) : 0
            }
            let flags: UInt32 = (m.isReadable ? 4 : 0) | (m.isWritable ? 2 : 0) | (m.isExecutable ? 1 : 0)
            segments.append(CoreSegment(vaddr: m.start, memsz: m.size, filesz: filesz, flags: flags))
        }
        layout = ELFCoreLayout(segments: segments, notesSize: notes.count)
        units = []
        unitsBySegment = Array(repeating: [], count: segments.count)
        // Small mappings first (stacks, .data, the vDSO): if the budget runs out it cuts the big buffers, not the
        // memory a backtrace needs.
        let bySize = layout.segments.indices.filter { layout.segments[$0].filesz > 0 }
            .sorted { (layout.segments[$0].filesz, $0) < (layout.segments[$1].filesz, $1) }
        for index in bySize {
            let seg = layout.segments[index]
            let anonymous = !s.mappings[index].isFileBacked && s.mappings[index].path != "[vdso]"
            var offset: UInt64 = 0
            while offset < seg.filesz {
                let length = Int(min(UInt64(chunkBytes), seg.filesz - offset))
                unitsBySegment[index].append(units.count)
                units.append(CopyUnit(segment: index, address: seg.vaddr + offset, length: length,
                                      fileOffset: seg.offset + offset, skipAbsentPages: anonymous))
                offset += UInt64(length)
            }
        }
    }

    /// Notes in the kernel's order: first thread PRSTATUS, PRPSINFO, SIGINFO, AUXV, FILE, then its FPREGSET and
    /// XSTATE; each later thread PRSTATUS, FPREGSET, XSTATE.
    static func encodeNotes(_ s: ProcessSnapshot) -> [UInt8] {
        let hz = UInt64(max(sysconf(Int32(_SC_CLK_TCK)), 1))
        var list: [CoreNote] = []
        for (i, t) in s.threads.enumerated() {
            var pr = PrStatus()
            // A live capture has no fatal signal. SIGSTOP is what it is: the process stopped from outside, as gcore
            // records it, so gdb says "stopped" rather than naming a crash that never happened.
            pr.signal = SIGSTOP
            pr.pending = t.status.pending
            pr.held = t.status.blocked
            pr.pid = t.tid; pr.ppid = s.stat.ppid; pr.pgrp = s.stat.pgrp; pr.sid = s.stat.session
            if let st = t.stat {
                pr.utime = CoreTimeval(ticks: st.utime, ticksPerSecond: hz)
                pr.stime = CoreTimeval(ticks: st.stime, ticksPerSecond: hz)
            }
            pr.cutime = CoreTimeval(ticks: s.stat.cutime, ticksPerSecond: hz)
            pr.cstime = CoreTimeval(ticks: s.stat.cstime, ticksPerSecond: hz)
            pr.registers = t.registers
            pr.fpValid = t.fpRegisters != nil
            list.append(CoreNote(type: ELF.NT_PRSTATUS, desc: pr.encode()))
            if i == 0 {
                list.append(CoreNote(type: ELF.NT_PRPSINFO, desc: Self.psinfo(s).encode()))
                list.append(CoreNote(type: ELF.NT_SIGINFO,
                                     desc: encodeSigInfo(signal: SIGSTOP, code: 0, senderPid: getpid(), senderUid: getuid())))
                if !s.auxv.isEmpty { list.append(CoreNote(type: ELF.NT_AUXV, desc: s.auxv)) }
                let files = s.mappings.filter(\.isFileBacked)
                    .map { FileMapping(start: $0.start, end: $0.end, offset: $0.offset, path: $0.path) }
                list.append(CoreNote(type: ELF.NT_FILE, desc: encodeFileNote(files)))
            }
            if let fp = t.fpRegisters { list.append(CoreNote(type: ELF.NT_PRFPREG, desc: fp)) }
            if let xs = t.xstate { list.append(CoreNote(type: ELF.NT_X86_XSTATE, desc: xs)) }
        }
        var w = ByteWriter()
        for note in list { note.encode(into: &w) }
        return w.bytes
    }

    static func psinfo(_ s: ProcessSnapshot) -> PrPsInfo {
        var ps = PrPsInfo()
        let state = PrPsInfo.state(fromLetter: s.stat.state)
        ps.state = state.index; ps.stateLetter = state.letter
        ps.zombie = state.letter == UInt8(ascii: "Z")
        ps.nice = Int8(clamping: s.stat.nice)
        ps.flags = s.stat.flags
        ps.uid = s.status.uid; ps.gid = s.status.gid
        ps.pid = s.pid; ps.ppid = s.stat.ppid; ps.pgrp = s.stat.pgrp; ps.sid = s.stat.session
        ps.fname = Array(s.stat.comm.utf8)
        // The kernel's psargs: argv joined by spaces (NULs become spaces), at most 79 bytes.
        var args = s.commandLine
        while args.last == 0 { args.removeLast() }
        ps.psargs = args.map { $0 == 0 ? UInt8(ascii: " ") : $0 }
        return ps
    }
}
