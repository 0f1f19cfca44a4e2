import Glibc
import DefibCore

/// Which memory a stacks-only core keeps: what gdb needs to unwind every thread and to find the libraries, and
/// nothing a stalled service would pay for in freeze time. A stall's evidence is taken from a service that may
/// come back any moment; its heap is not worth the pause (a full core copies every written page).
///
/// Kept: each thread's stack from its stack pointer (less the 128-byte red zone) up to `stackBytes`; the private
/// file mappings the kernel's rule keeps (the libraries' .data, .got and relocated pages: gdb reads the dynamic
/// linker's list of libraries there); small private anonymous mappings (`.bss`, the dynamic linker's own
/// allocations); the vDSO; the ELF header pages. Left out (described, not copied): `[heap]`, large anonymous
/// mappings (malloc arenas, Swift's heap, thread stacks below their stack pointer), shared memory.
enum StacksOnlyScope {
    /// An anonymous mapping larger than this is left out unless a thread's stack is in it.
    static let smallAnonymousBytes: UInt64 = 256 << 10
    /// Below the stack pointer the x86-64 ABI lets a leaf function keep 128 bytes.
    static let redZone: UInt64 = 128

    /// `rsp` from a `user_regs_struct` (x86-64: the 20th 8-byte register, offset 152).
    static func stackPointer(_ registers: [UInt8]) -> UInt64 {
        guard registers.count >= 160 else { return 0 }
        var value: UInt64 = 0
        for i in 0..<8 { value |= UInt64(registers[152 + i]) << (8 * UInt64(i)) }
        return value
    }

    /// The mappings and extents of a stacks-only core: a mapping holding a stack pointer is split so that only the
    /// live part of the stack (from the pointer's page, at most `stackBytes`) is copied.
    static func narrow(mappings: [SmapsEntry], extents: [DumpExtent], stackPointers: [UInt64],
                       stackBytes: Int) -> (mappings: [SmapsEntry], extents: [DumpExtent]) {
        let page = ELF.pageSize
        var outMappings: [SmapsEntry] = []
        var outExtents: [DumpExtent] = []
        for (m, extent) in zip(mappings, extents) {
            let pointers = stackPointers.filter { $0 >= m.start && $0 < m.end }
            if let sp = pointers.min(), !m.isShared {
                let low = max(m.start, (sp >= redZone ? sp - redZone : 0) / page * page)
                let high = min(m.end, low + (UInt64(max(stackBytes, Int(page))) + page - 1) / page * page)
                for (start, end, kept) in [(m.start, low, false), (low, high, true), (high, m.end, false)] where end > start {
                    var piece = m
                    piece.start = start
                    piece.end = end
                    if m.isFileBacked { piece.offset = m.offset + (start - m.start) }
                    outMappings.append(piece)
                    outExtents.append(kept ? .whole : .nothing)
                }
                continue
            }
            var kept = extent
            if m.isShared || m.path == "[heap]" {
                kept = .nothing
            } else if !m.isFileBacked && m.path != "[vdso]" && m.size > smallAnonymousBytes {
                kept = .nothing
            }
            outMappings.append(m)
            outExtents.append(kept)
        }
        return (outMappings, outExtents)
    }
}

/// What a stacks-only capture reads about a process before stopping it, so the stop lasts only as long as the
/// registers and the stacks take: its mappings, its status, and each thread's status and times (a thread that
/// appears after this reading is stopped and unwound all the same, with empty masks and times).
struct PreStopReading {
    var mappings: [SmapsEntry]?
    var filter: UInt32?
    var status: ProcStatus?
    var auxv: [UInt8]?
    var commandLine: [UInt8]?
    var threadStatus: [Int32: ProcStatus] = [:]
    var threadStat: [Int32: ProcStat] = [:]

    static func read(pid: Int32) -> PreStopReading {
        var r = PreStopReading()
        r.mappings = (try? readProcText("/proc/\(pid)/smaps")).flatMap { try? SmapsParser.parse($0) }
        r.filter = (try? readProcText("/proc/\(pid)/coredump_filter")).flatMap { UInt32($0.trimmingCharacters(in: " \n"), radix: 16) }
        r.status = (try? readProcText("/proc/\(pid)/status")).map(ProcStatus.parse)
        r.auxv = try? readProcFile("/proc/\(pid)/auxv")
        r.commandLine = try? readProcFile("/proc/\(pid)/cmdline", maxBytes: 4096)
        for tid in threadIDs(pid: pid) {
            if let status = (try? readProcText("/proc/\(pid)/task/\(tid)/status")).map(ProcStatus.parse) { r.threadStatus[tid] = status }
            if let stat = try? ProcStat.read(tid == pid ? "/proc/\(pid)/stat" : "/proc/\(pid)/task/\(tid)/stat") { r.threadStat[tid] = stat }
        }
        return r
    }

    /// /proc/PID/task's entries.
    static func threadIDs(pid: Int32) -> [Int32] {
        guard let dir = opendir("/proc/\(pid)/task") else { return [] }
        defer { closedir(dir) }
        var tids: [Int32] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if let tid = Int32(name) { tids.append(tid) }
        }
        return tids
    }
}
