import CDefibShims
import Glibc
import Synchronization

/// One piece of a segment to copy: at most `chunkBytes`, page-aligned, copied and written by one thread.
struct CopyUnit: Equatable {
    var segment: Int
    var address: UInt64
    var length: Int
    var fileOffset: UInt64
    /// Pages of anonymous memory that are neither present nor swapped out are zero: they need not be read at all.
    var skipAbsentPages: Bool
}

/// Why copying stopped early.
enum CopyFailure: Equatable {
    /// ENOSPC / EDQUOT from pwrite: the core cannot be kept.
    case diskFull(SystemError)
    /// Any other write error.
    case writeFailed(SystemError)
    /// process_vm_readv said ESRCH: the process died under us (killed: ptrace cannot stop SIGKILL).
    case processGone
}

/// Copies process memory into the core file with a few threads: process_vm_readv in `chunkBytes` pieces, all-zero
/// pages left as holes, pwrite at offsets fixed by the layout. Stops taking new units at the deadline.
final class CoreMemoryCopier: @unchecked Sendable {
    let pid: Int32
    let fd: Int32
    let path: String
    let units: [CopyUnit]
    let chunkBytes: Int
    let deadline: Int64
    let pagemapFD: Int32

    private let nextUnit = Atomic<Int>(0)
    private let stopFlag = Atomic<Bool>(false)
    private let deadlineHit = Atomic<Bool>(false)
    private let copiedBytes = Atomic<Int>(0)
    private let failureBox = Mutex<CopyFailure?>(nil)
    /// One flag per unit, each written only by the thread that copied that unit, read after every thread joined.
    private let done: UnsafeMutableBufferPointer<Bool>

    /// The same file opened with O_DIRECT (-1 when not asked for, or refused): page-aligned runs go to the disk
    /// without page-cache pages to allocate. On this kind of VM (memory handed back to the host by free page
    /// reporting) a first large write into the page cache pays a host fault for every new page: a fresh process's
    /// first core was 8.7× slower than the steady state, through the page cache; direct writes do not depend on it.
    let directFD: Int32
    private let directRefused = Atomic<Bool>(false)

    init(pid: Int32, fd: Int32, path: String, units: [CopyUnit], chunkBytes: Int, deadline: Int64, directIO: Bool = false) {
        self.pid = pid; self.fd = fd; self.path = path; self.units = units
        self.chunkBytes = chunkBytes; self.deadline = deadline
        // Reopened through /proc/self/fd: the very file we created, never a path looked up again.
        directFD = directIO ? open("/proc/self/fd/\(fd)", O_WRONLY | O_CLOEXEC | directIOFlag) : -1
        pagemapFD = open("/proc/\(pid)/pagemap", O_RDONLY | O_CLOEXEC)
        done = .allocate(capacity: max(units.count, 1))
        done.initialize(repeating: false)
    }

    deinit {
        done.deallocate()
        if pagemapFD >= 0 { close(pagemapFD) }
        if directFD >= 0 { close(directFD) }
    }

    /// Whether every data write went through O_DIRECT (false when it was not asked for, or a write was refused).
    var wroteDirect: Bool { directFD >= 0 && !directRefused.load(ordering: .relaxed) }

    var timedOut: Bool { deadlineHit.load(ordering: .acquiring) }
    var failure: CopyFailure? { failureBox.withLock { $0 } }
    /// Bytes actually written (non-zero pages).
    var bytesWritten: Int { copiedBytes.load(ordering: .relaxed) }
    func isDone(_ unit: Int) -> Bool { done[unit] }

    /// Copies with `threads` threads in total, the calling thread being one of them; returns when all have stopped.
    func run(threads: Int) {
        var extra: [pthread_t] = []
        for _ in 1..<max(threads, 1) {
            var tid = pthread_t()
            let context = Unmanaged.passRetained(self).toOpaque()
            if pthread_create(&tid, nil, coreCopierThreadMain, context) == 0 {
                extra.append(tid)
            } else {
                Unmanaged<CoreMemoryCopier>.fromOpaque(context).release()   // fewer helpers is still correct
            }
        }
        work()
        for tid in extra { pthread_join(tid, nil) }
    }

    fileprivate func work() {
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: chunkBytes, alignment: Int(ELF.pageSize))
        defer { buffer.deallocate() }
        let maxPages = chunkBytes / Int(ELF.pageSize)
        let present = UnsafeMutableBufferPointer<UInt64>.allocate(capacity: maxPages)
        defer { present.deallocate() }
        while !stopFlag.load(ordering: .relaxed) {
            let index = nextUnit.wrappingAdd(1, ordering: .relaxed).oldValue
            if index >= units.count { return }
            if monotonicNanoseconds() >= deadline {
                deadlineHit.store(true, ordering: .releasing)
                stopFlag.store(true, ordering: .relaxed)
                return
            }
            if let failure = copy(units[index], buffer: buffer, present: present) {
                failureBox.withLock { if $0 == nil { $0 = failure } }
                stopFlag.store(true, ordering: .relaxed)
                return
            }
            done[index] = true
        }
    }

    private func copy(_ unit: CopyUnit, buffer: UnsafeMutableRawPointer, present: UnsafeMutableBufferPointer<UInt64>) -> CopyFailure? {
        let page = Int(ELF.pageSize)
        let pages = unit.length / page
        // Which pages may hold data: from /proc/PID/pagemap (bit 63 present, bit 62 swapped) for anonymous memory.
        var mayHoldData = [Bool](repeating: true, count: pages)
        if unit.skipAbsentPages && pagemapFD >= 0 {
            let want = pages * 8
            let got = pread(pagemapFD, present.baseAddress, want, off_t(unit.address / ELF.pageSize * 8))
            if got == want {
                for i in 0..<pages { mayHoldData[i] = present[i] & (0b11 << 62) != 0 }
            }
        }
        var i = 0
        while i < pages {
            guard mayHoldData[i] else { i += 1; continue }
            var j = i
            while j < pages && mayHoldData[j] { j += 1 }
            // Pages i..<j: read them in one call, then fall back page by page past an unreadable one.
            let start = i * page, length = (j - i) * page
            let n = defib_read_memory(pid, unit.address + UInt64(start), buffer + start, length)
            if n < 0 && errno == ESRCH { return .processGone }
            let readable = max(n, 0)
            if readable < length {
                // A hole the kernel cannot read (e.g. a file mapping past end of file) becomes zeros, as in its own dumps.
                var p = start + readable / page * page
                while p < start + length {
                    let r = defib_read_memory(pid, unit.address + UInt64(p), buffer + p, page)
                    if r < 0 && errno == ESRCH { return .processGone }
                    if r != page { memset(buffer + p, 0, page) }
                    p += page
                }
            }
            if let failure = writeNonZeroRuns(buffer: buffer, from: start, to: start + length, unit: unit) { return failure }
            i = j
        }
        return nil
    }

    private func writeNonZeroRuns(buffer: UnsafeMutableRawPointer, from: Int, to: Int, unit: CopyUnit) -> CopyFailure? {
        let page = Int(ELF.pageSize)
        var p = from
        while p < to {
            if defib_is_zero(buffer + p, page) != 0 { p += page; continue }
            var q = p + page
            while q < to && defib_is_zero(buffer + q, page) == 0 { q += page }
            if let failure = writeAll(buffer + p, count: q - p, at: unit.fileOffset + UInt64(p)) { return failure }
            copiedBytes.wrappingAdd(q - p, ordering: .relaxed)
            p = q
        }
        return nil
    }

    private func writeAll(_ data: UnsafeMutableRawPointer, count: Int, at offset: UInt64) -> CopyFailure? {
        let page = Int(ELF.pageSize)
        if directFD >= 0 && !directRefused.load(ordering: .relaxed) && offset % UInt64(page) == 0 && count % page == 0
            && Int(bitPattern: data) % page == 0 {
            var written = 0
            while written < count {
                let n = pwrite(directFD, data + written, count - written, off_t(offset) + off_t(written))
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { break }
                written += n
            }
            if written == count { return nil }
            // Refused (a file system without O_DIRECT says EINVAL) or short: the rest through the page cache.
            if errno == ENOSPC || errno == EDQUOT {
                return .diskFull(SystemError("pwrite(\(path), offset \(offset + UInt64(written)), O_DIRECT)"))
            }
            directRefused.store(true, ordering: .relaxed)
        }
        var written = 0
        while written < count {
            let n = pwrite(fd, data + written, count - written, off_t(offset) + off_t(written))
            if n < 0 {
                if errno == EINTR { continue }
                let error = SystemError("pwrite(\(path), offset \(offset + UInt64(written)))")
                return (errno == ENOSPC || errno == EDQUOT) ? .diskFull(error) : .writeFailed(error)
            }
            if n == 0 { return .diskFull(SystemError("pwrite(\(path), offset \(offset + UInt64(written)))", errno: ENOSPC)) }
            written += n
        }
        return nil
    }
}

private func coreCopierThreadMain(_ context: UnsafeMutableRawPointer?) -> UnsafeMutableRawPointer? {
    let copier = Unmanaged<CoreMemoryCopier>.fromOpaque(context!).takeRetainedValue()
    copier.work()
    return nil
}

/// O_DIRECT, which Glibc's module does not export (it needs _GNU_SOURCE).
#if arch(arm64)
let directIOFlag: Int32 = 0o200000
#else
let directIOFlag: Int32 = 0o40000
#endif
