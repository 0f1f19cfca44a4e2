// The ELF core format, as Linux writes it on x86-64 (fs/binfmt_elf.c): pure encoding, no I/O, so the layout and
// every struct offset can be checked by tests byte for byte.

/// Little-endian byte appender.
struct ByteWriter {
    var bytes: [UInt8] = []

    mutating func u8(_ v: UInt8) { bytes.append(v) }
    mutating func u16(_ v: UInt16) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    mutating func i32(_ v: Int32) { u32(UInt32(bitPattern: v)) }
    mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    mutating func raw(_ v: [UInt8]) { bytes.append(contentsOf: v) }
    /// `s` as bytes, cut or NUL-padded to exactly `width`, always NUL-terminated.
    mutating func fixedString(_ s: [UInt8], width: Int) {
        let used = min(s.count, width - 1)
        bytes.append(contentsOf: s[0..<used])
        bytes.append(contentsOf: repeatElement(0, count: width - used))
    }
    mutating func zeros(_ n: Int) { bytes.append(contentsOf: repeatElement(0, count: n)) }
    mutating func align(_ n: Int) { zeros((n - bytes.count % n) % n) }
}

/// ELF constants used by cores.
enum ELF {
    static let ET_CORE: UInt16 = 4
    static let EM_X86_64: UInt16 = 62
    static let PT_LOAD: UInt32 = 1
    static let PT_NOTE: UInt32 = 4
    static let PN_XNUM = 0xffff
    static let ehdrSize = 64
    static let phdrSize = 56
    static let shdrSize = 64
    static let pageSize: UInt64 = 4096

    static let NT_PRSTATUS: UInt32 = 1
    static let NT_PRFPREG: UInt32 = 2
    static let NT_PRPSINFO: UInt32 = 3
    static let NT_AUXV: UInt32 = 6
    static let NT_X86_XSTATE: UInt32 = 0x202
    static let NT_SIGINFO: UInt32 = 0x5349_4749
    static let NT_FILE: UInt32 = 0x4649_4c45
}

/// One ELF note: `{namesz, descsz, type}`, the name and the descriptor, each padded to 4 bytes.
struct CoreNote: Equatable {
    var name: String
    var type: UInt32
    var desc: [UInt8]

    /// "CORE" for everything but the extended register state, which the kernel names "LINUX".
    init(type: UInt32, desc: [UInt8]) {
        self.name = type == ELF.NT_X86_XSTATE ? "LINUX" : "CORE"
        self.type = type; self.desc = desc
    }

    var encodedSize: Int { 12 + pad4(name.utf8.count + 1) + pad4(desc.count) }

    func encode(into w: inout ByteWriter) {
        let nameBytes = Array(name.utf8) + [0]
        w.u32(UInt32(nameBytes.count)); w.u32(UInt32(desc.count)); w.u32(type)
        w.raw(nameBytes); w.align(4)
        w.raw(desc); w.align(4)
    }
}

@inline(__always) func pad4(_ n: Int) -> Int { (n + 3) & ~3 }
@inline(__always) func pageAlign(_ n: UInt64) -> UInt64 { (n + ELF.pageSize - 1) & ~(ELF.pageSize - 1) }

/// A timeval as the kernel puts it in elf_prstatus.
struct CoreTimeval: Equatable {
    var seconds: Int64 = 0
    var microseconds: Int64 = 0
    /// From clock ticks (/proc/…/stat fields are in USER_HZ).
    init(ticks: UInt64, ticksPerSecond: UInt64) {
        let hz = max(ticksPerSecond, 1)
        seconds = Int64(ticks / hz)
        microseconds = Int64((ticks % hz) * 1_000_000 / hz)
    }
    init() {}
}

/// `struct elf_prstatus` (NT_PRSTATUS, 336 bytes on x86-64).
struct PrStatus: Equatable {
    var signal: Int32 = 0           // pr_info.si_signo and pr_cursig
    var pending: UInt64 = 0         // pr_sigpend: the thread's own pending set
    var held: UInt64 = 0            // pr_sighold: the blocked set
    var pid: Int32 = 0              // the thread id
    var ppid: Int32 = 0
    var pgrp: Int32 = 0
    var sid: Int32 = 0
    var utime = CoreTimeval(), stime = CoreTimeval(), cutime = CoreTimeval(), cstime = CoreTimeval()
    /// `user_regs_struct`, 27 words, exactly as PTRACE_GETREGSET NT_PRSTATUS returns it.
    var registers: [UInt8] = []
    var fpValid = false

    static let size = 336
    static let registersSize = 27 * 8

    func encode() -> [UInt8] {
        var w = ByteWriter()
        w.i32(signal); w.i32(0); w.i32(0)          // pr_info: si_signo, si_code, si_errno
        w.u16(UInt16(truncatingIfNeeded: signal)); w.zeros(2)  // pr_cursig + padding to 16
        w.u64(pending); w.u64(held)
        w.i32(pid); w.i32(ppid); w.i32(pgrp); w.i32(sid)
        for t in [utime, stime, cutime, cstime] { w.u64(UInt64(bitPattern: t.seconds)); w.u64(UInt64(bitPattern: t.microseconds)) }
        var regs = Array(registers.prefix(Self.registersSize))
        regs += repeatElement(0, count: Self.registersSize - regs.count)
        w.raw(regs)
        w.i32(fpValid ? 1 : 0); w.zeros(4)
        return w.bytes
    }
}

/// `struct elf_prpsinfo` (NT_PRPSINFO, 136 bytes on x86-64).
struct PrPsInfo: Equatable {
    var state: UInt8 = 0       // index into "RSDTZW"
    var stateLetter: UInt8 = UInt8(ascii: "R")
    var zombie = false
    var nice: Int8 = 0
    var flags: UInt64 = 0      // task flags (stat field 9)
    var uid: UInt32 = 0
    var gid: UInt32 = 0
    var pid: Int32 = 0, ppid: Int32 = 0, pgrp: Int32 = 0, sid: Int32 = 0
    var fname: [UInt8] = []    // comm, up to 15 bytes
    var psargs: [UInt8] = []   // the command line, arguments separated by spaces, up to 79 bytes

    static let size = 136

    /// The kernel's state index and letter from a /proc stat state letter.
    static func state(fromLetter letter: UInt8) -> (index: UInt8, letter: UInt8) {
        let letters = Array("RSDTZW".utf8)
        if let i = letters.firstIndex(of: letter) { return (UInt8(i), letter) }
        if letter == UInt8(ascii: "t") { return (3, UInt8(ascii: "T")) }   // tracing stop reads as stopped
        if letter == UInt8(ascii: "X") { return (4, UInt8(ascii: "Z")) }
        return (6, UInt8(ascii: "."))
    }

    func encode() -> [UInt8] {
        var w = ByteWriter()
        w.u8(state); w.u8(stateLetter); w.u8(zombie ? 1 : 0); w.u8(UInt8(bitPattern: nice))
        w.zeros(4)
        w.u64(flags)
        w.u32(uid); w.u32(gid)
        w.i32(pid); w.i32(ppid); w.i32(pgrp); w.i32(sid)
        w.fixedString(fname, width: 16)
        w.fixedString(psargs, width: 80)
        return w.bytes
    }
}

/// NT_SIGINFO: a 128-byte siginfo_t. A live capture has no fatal signal; see `NativeCoreWriter` for what it records.
func encodeSigInfo(signal: Int32, code: Int32, senderPid: Int32, senderUid: UInt32) -> [UInt8] {
    var w = ByteWriter()
    w.i32(signal); w.i32(0); w.i32(code); w.zeros(4)   // si_signo, si_errno, si_code, padding to the union
    w.i32(senderPid); w.u32(senderUid)                  // _kill: si_pid, si_uid
    w.zeros(128 - w.bytes.count)
    return w.bytes
}

/// One file-backed mapping for NT_FILE.
struct FileMapping: Equatable {
    var start: UInt64
    var end: UInt64
    var offset: UInt64   // in bytes; stored in pages
    var path: String
}

/// NT_FILE: count, page size, count × {start, end, offset in pages}, then the NUL-terminated names.
func encodeFileNote(_ files: [FileMapping]) -> [UInt8] {
    var w = ByteWriter()
    w.u64(UInt64(files.count)); w.u64(ELF.pageSize)
    for f in files { w.u64(f.start); w.u64(f.end); w.u64(f.offset / ELF.pageSize) }
    for f in files { w.raw(Array(f.path.utf8)); w.u8(0) }
    return w.bytes
}

/// One PT_LOAD: where a mapping lives and how much of it the file holds.
struct CoreSegment: Equatable {
    var vaddr: UInt64
    var memsz: UInt64
    var filesz: UInt64
    /// PF_R = 4, PF_W = 2, PF_X = 1.
    var flags: UInt32
    /// Assigned by `ELFCoreLayout`: page-aligned, fixed before any byte is written.
    var offset: UInt64 = 0
}

/// The file layout of a core: ELF header, program headers (PT_NOTE first), the PN_XNUM section header when
/// needed, the notes, then page-aligned segment data. Every offset is known before writing starts, so memory can be
/// copied by several threads at once and the headers written last.
struct ELFCoreLayout {
    private(set) var segments: [CoreSegment]
    let notesSize: Int
    let phnum: Int               // PT_NOTE + one PT_LOAD per mapping
    let notesOffset: UInt64
    let dataOffset: UInt64
    let sectionHeaderOffset: UInt64?

    init(segments: [CoreSegment], notesSize: Int) {
        self.notesSize = notesSize
        phnum = segments.count + 1
        var offset = UInt64(ELF.ehdrSize + phnum * ELF.phdrSize)
        // The kernel's extended numbering: e_phnum = PN_XNUM and the real count in section header 0's sh_info.
        if phnum >= ELF.PN_XNUM {
            sectionHeaderOffset = offset
            offset += UInt64(ELF.shdrSize)
        } else {
            sectionHeaderOffset = nil
        }
        notesOffset = offset
        dataOffset = pageAlign(offset + UInt64(notesSize))
        var cursor = dataOffset
        var placed = segments
        for i in placed.indices {
            placed[i].offset = cursor
            cursor += pageAlign(placed[i].filesz)
        }
        self.segments = placed
    }

    /// Where the file ends when every segment is complete.
    var fileSize: UInt64 {
        segments.map { $0.offset + $0.filesz }.max().map { max($0, dataOffset) } ?? dataOffset
    }

    /// Shrinks a segment's p_filesz (a truncated copy); offsets of every segment stay where they were.
    mutating func setFileSize(_ filesz: UInt64, ofSegment index: Int) {
        segments[index].filesz = min(filesz, segments[index].filesz)
    }

    /// ELF header, program headers, the optional section header and the notes: everything before `dataOffset`.
    func headerBytes(notes: [UInt8]) -> [UInt8] {
        precondition(notes.count == notesSize, "notes were laid out at \(notesSize) bytes, got \(notes.count)")
        var w = ByteWriter()
        w.raw([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1, 0])   // magic, ELFCLASS64, ELFDATA2LSB, EV_CURRENT, ELFOSABI_NONE
        w.zeros(8)
        w.u16(ELF.ET_CORE); w.u16(ELF.EM_X86_64); w.u32(1)
        w.u64(0)                                        // e_entry
        w.u64(UInt64(ELF.ehdrSize))                     // e_phoff
        w.u64(sectionHeaderOffset ?? 0)                 // e_shoff
        w.u32(0)                                        // e_flags
        w.u16(UInt16(ELF.ehdrSize)); w.u16(UInt16(ELF.phdrSize))
        w.u16(UInt16(min(phnum, ELF.PN_XNUM)))
        w.u16(sectionHeaderOffset == nil ? 0 : UInt16(ELF.shdrSize))
        w.u16(sectionHeaderOffset == nil ? 0 : 1)       // e_shnum
        w.u16(0)                                        // e_shstrndx = SHN_UNDEF
        // PT_NOTE
        w.u32(ELF.PT_NOTE); w.u32(0)
        w.u64(notesOffset); w.u64(0); w.u64(0)
        w.u64(UInt64(notesSize)); w.u64(0); w.u64(4)
        for s in segments {
            w.u32(ELF.PT_LOAD); w.u32(s.flags)
            w.u64(s.offset); w.u64(s.vaddr); w.u64(0)
            w.u64(s.filesz); w.u64(s.memsz); w.u64(ELF.pageSize)
        }
        if sectionHeaderOffset != nil {
            // Section header 0 carries the real counts (fs/binfmt_elf.c fill_extnum_info).
            w.u32(0); w.u32(0)                          // sh_name, sh_type = SHT_NULL
            w.u64(0); w.u64(0); w.u64(0)                // sh_flags, sh_addr, sh_offset
            w.u64(1)                                    // sh_size = e_shnum
            w.u32(0)                                    // sh_link = e_shstrndx
            w.u32(UInt32(phnum))                        // sh_info = real e_phnum
            w.u64(0); w.u64(0)                          // sh_addralign, sh_entsize
        }
        precondition(UInt64(w.bytes.count) == notesOffset)
        w.raw(notes)
        return w.bytes
    }
}
