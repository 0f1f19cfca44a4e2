import Glibc

/// What a core file that passed the check holds.
public struct CoreFileSummary: Sendable, Equatable {
    /// The file's size.
    public var bytes: Int64
    /// NT_PRSTATUS notes: one per thread.
    public var threads: Int
    /// PT_LOAD segments.
    public var segments: Int
    /// Where the last segment's data ends (never beyond `bytes`).
    public var dataEnd: Int64
}

/// Why a core file is not a usable core: said in the incident's capture error.
public struct CoreFileProblem: Error, Sendable, Equatable, CustomStringConvertible {
    /// The file.
    public var path: String
    /// What is wrong with it.
    public var problem: String
    /// "core PATH is not usable: PROBLEM".
    public var description: String { "core \(path) is not usable: \(problem)" }
}

/// Checks that a file is a whole ELF core before defib records it as one. A helper's exit status proves
/// nothing: gcore into a full file system exits 0 and leaves a truncated file, and the kernel writes what
/// fits. A core passes when it has an ELF header of this machine's class and byte order with type ET_CORE,
/// program headers inside the file, a PT_NOTE segment holding at least one NT_PRSTATUS note (a thread's
/// registers: without them gdb shows nothing), and every segment's file extent within the file's size.
/// Reads the headers and notes only, never the memory (milliseconds for any size), and never follows a link.
public enum CoreFileCheck {
    static let ET_CORE: UInt16 = 4
    static let PT_LOAD: UInt32 = 1
    static let PT_NOTE: UInt32 = 4
    static let NT_PRSTATUS: UInt32 = 1
    static let PN_XNUM = 0xffff
    /// Notes larger than this are not read (a real one is kilobytes per thread).
    static let maxNotesBytes = 64 << 20
    /// More program headers than this is not a core of a real process.
    static let maxSegments = 1 << 22

    /// The summary of a good core at `path`, or the problem.
    public static func check(path: String) -> Result<CoreFileSummary, CoreFileProblem> {
        func bad(_ text: String) -> Result<CoreFileSummary, CoreFileProblem> { .failure(CoreFileProblem(path: path, problem: text)) }
        let fd = Glibc.open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY)
        guard fd >= 0 else { return bad(errno == ELOOP ? "is a symbolic link" : SystemError("open").description) }
        defer { Glibc.close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { return bad(SystemError("fstat").description) }
        guard (st.st_mode & S_IFMT) == S_IFREG else { return bad("not a regular file") }
        let size = Int64(st.st_size)
        guard size > 0 else { return bad("empty file") }
        func read(_ count: Int, at offset: Int64) -> [UInt8]? {
            guard count >= 0, offset >= 0, offset <= size, Int64(count) <= size - offset else { return nil }
            var out = [UInt8](repeating: 0, count: count)
            var done = 0
            while done < count {
                let n = out.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + done, count - done, off_t(offset) + off_t(done)) }
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { return nil }
                done += n
            }
            return out
        }
        guard let ehdr = read(64, at: 0) else { return bad("shorter than an ELF header (\(size) bytes)") }
        guard ehdr[0] == 0x7f, ehdr[1] == 0x45, ehdr[2] == 0x4c, ehdr[3] == 0x46 else { return bad("no ELF header (the file starts with something else)") }
        guard ehdr[4] == 2, ehdr[5] == 1 else { return bad("not a 64-bit little-endian ELF file") }
        let type = u16(ehdr, 16)
        guard type == ET_CORE else { return bad("ELF type \(type), not a core (ET_CORE)") }
        let phoff = Int64(u64(ehdr, 32))
        let shoff = Int64(u64(ehdr, 40))
        let phentsize = Int(u16(ehdr, 54))
        var phnum = Int(u16(ehdr, 56))
        guard phentsize == 56 else { return bad("program header size \(phentsize), expected 56") }
        if phnum == PN_XNUM {
            // Extended numbering: the real count is in section header 0's sh_info.
            guard let sh0 = read(64, at: shoff) else { return bad("extended program header count, but section header 0 is beyond the end of the file") }
            phnum = Int(u32(sh0, 44))
        }
        guard phnum >= 1, phnum <= maxSegments else { return bad("\(phnum) program headers") }
        guard let phdrs = read(phnum * 56, at: phoff) else {
            return bad("its \(phnum) program headers at offset \(phoff) end beyond the end of the file (\(size) bytes): truncated")
        }
        var notes: (offset: Int64, size: Int64)?
        var loads = 0
        var dataEnd: Int64 = 0
        for i in 0..<phnum {
            let base = i * 56
            let pType = u32(phdrs, base)
            let offset = u64(phdrs, base + 8)
            let filesz = u64(phdrs, base + 32)
            let (end, overflow) = offset.addingReportingOverflow(filesz)
            guard !overflow, end <= UInt64(size) else {
                return bad("segment \(i) (\(pType == PT_NOTE ? "PT_NOTE" : pType == PT_LOAD ? "PT_LOAD" : "type \(pType)")) ends at byte \(overflow ? "beyond 2^64" : String(end)), past the end of the file (\(size) bytes): truncated")
            }
            if pType == PT_LOAD { loads += 1; dataEnd = max(dataEnd, Int64(end)) }
            if pType == PT_NOTE, notes == nil { notes = (Int64(offset), Int64(filesz)) }
        }
        guard let notes else { return bad("no PT_NOTE segment") }
        guard notes.size <= Int64(maxNotesBytes), let noteBytes = read(Int(notes.size), at: notes.offset) else {
            return bad("its notes (\(notes.size) bytes) cannot be read")
        }
        var threads = 0
        var cursor = 0
        while cursor + 12 <= noteBytes.count {
            let nameSize = Int(u32(noteBytes, cursor))
            let descSize = Int(u32(noteBytes, cursor + 4))
            let noteType = u32(noteBytes, cursor + 8)
            let next = cursor + 12 + align4(nameSize) + align4(descSize)
            guard nameSize <= noteBytes.count, descSize <= noteBytes.count, next <= noteBytes.count else {
                return bad("a note at offset \(Int(notes.offset) + cursor) runs past the PT_NOTE segment")
            }
            let name = noteBytes[(cursor + 12)..<(cursor + 12 + nameSize)].prefix { $0 != 0 }
            if noteType == NT_PRSTATUS, Array(name) == Array("CORE".utf8), descSize > 0 { threads += 1 }
            cursor = next
        }
        guard threads > 0 else { return bad("no NT_PRSTATUS note: no thread's registers") }
        return .success(CoreFileSummary(bytes: size, threads: threads, segments: loads, dataEnd: dataEnd))
    }

    /// Checks the core at `path` and deletes it when it is not usable (it is junk that retention would
    /// otherwise count as a core). Returns the problem, or nil for a good core.
    public static func deleteIfUnusable(path: String) -> CoreFileProblem? {
        switch check(path: path) {
        case .success: return nil
        case let .failure(problem):
            unlink(path)
            return problem
        }
    }

    private static func align4(_ n: Int) -> Int { (n + 3) & ~3 }
    private static func u16(_ b: [UInt8], _ at: Int) -> UInt16 { UInt16(b[at]) | UInt16(b[at + 1]) << 8 }
    private static func u32(_ b: [UInt8], _ at: Int) -> UInt32 { (0..<4).reduce(UInt32(0)) { $0 | UInt32(b[at + $1]) << (8 * UInt32($1)) } }
    private static func u64(_ b: [UInt8], _ at: Int) -> UInt64 { (0..<8).reduce(UInt64(0)) { $0 | UInt64(b[at + $1]) << (8 * UInt64($1)) } }
}
