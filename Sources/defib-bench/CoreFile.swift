import Glibc

/// Reads the thread count of an ELF core (its NT_PRSTATUS notes), whoever wrote it: the same count for the
/// native writer, gcore and the kernel, without trusting any of them.
enum CoreFile {
    /// Why a file is not a readable x86-64 ELF core.
    struct FormatError: Error, CustomStringConvertible, Equatable {
        /// The file.
        var path: String
        /// What is wrong with it.
        var problem: String
        /// "core /x/core.1: not an ELF file".
        var description: String { "core \(path): \(problem)" }
    }

    /// NT_PRSTATUS notes (one per thread) in the core at `path`.
    static func threadCount(path: String) throws(FormatError) -> Int {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw FormatError(path: path, problem: "open: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        func read(_ offset: UInt64, _ count: Int) throws(FormatError) -> [UInt8] {
            var buf = [UInt8](repeating: 0, count: count)
            var done = 0
            while done < count {
                let n = buf.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + done, count - done, off_t(offset) + off_t(done)) }
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { throw FormatError(path: path, problem: "short read of \(count) bytes at offset \(offset)") }
                done += n
            }
            return buf
        }
        let header = try read(0, 64)
        let layout = try noteSegments(header: header, programHeaders: { offset, count throws(FormatError) in
            try read(offset, count)
        }, path: path)
        var threads = 0
        for (offset, size) in layout {
            // Notes are small (a few KiB per thread); cap to refuse nonsense sizes.
            guard size <= 64 << 20 else { throw FormatError(path: path, problem: "PT_NOTE of \(size) bytes is implausible") }
            threads += try countPrStatus(notes: try read(offset, Int(size)), path: path)
        }
        return threads
    }

    /// The (offset, size) of every PT_NOTE segment, from the 64-byte ELF header and a reader for the rest.
    static func noteSegments(header: [UInt8], programHeaders: (UInt64, Int) throws(FormatError) -> [UInt8],
                             path: String) throws(FormatError) -> [(UInt64, UInt64)] {
        guard header.count >= 64, header[0..<4] == [0x7f, 0x45, 0x4c, 0x46] else {
            throw FormatError(path: path, problem: "not an ELF file")
        }
        guard header[4] == 2, header[5] == 1 else { throw FormatError(path: path, problem: "not a 64-bit little-endian ELF file") }
        guard le16(header, 16) == 4 else { throw FormatError(path: path, problem: "ELF type \(le16(header, 16)) is not ET_CORE (4)") }
        let phoff = le64(header, 32)
        let phentsize = Int(le16(header, 54))
        var phnum = Int(le16(header, 56))
        guard phentsize >= 56 else { throw FormatError(path: path, problem: "e_phentsize \(phentsize) < 56") }
        if phnum == 0xffff {
            // PN_XNUM: the real count is in section header 0's sh_info.
            let shoff = le64(header, 40)
            let section0 = try programHeaders(shoff, 64)
            phnum = Int(le32(section0, 44))
        }
        guard phnum > 0, phnum < 1 << 24 else { throw FormatError(path: path, problem: "\(phnum) program headers") }
        let table = try programHeaders(phoff, phnum * phentsize)
        var out: [(UInt64, UInt64)] = []
        for i in 0..<phnum {
            let base = i * phentsize
            if le32(table, base) == 4 {   // PT_NOTE
                out.append((le64(table, base + 8), le64(table, base + 32)))
            }
        }
        return out
    }

    /// How many notes of type NT_PRSTATUS (1) named "CORE" are in a PT_NOTE segment's bytes.
    static func countPrStatus(notes: [UInt8], path: String) throws(FormatError) -> Int {
        var i = 0, count = 0
        func pad4(_ n: Int) -> Int { (n + 3) & ~3 }
        while i + 12 <= notes.count {
            let namesz = Int(le32(notes, i)), descsz = Int(le32(notes, i + 4)), type = le32(notes, i + 8)
            let nameStart = i + 12
            let next = nameStart + pad4(namesz) + pad4(descsz)
            guard namesz >= 0, descsz >= 0, next <= notes.count else {
                throw FormatError(path: path, problem: "note at offset \(i) of a PT_NOTE runs past its end")
            }
            let name = notes[nameStart..<nameStart + namesz].prefix { $0 != 0 }
            if type == 1 && Array(name) == Array("CORE".utf8) { count += 1 }
            i = next
        }
        return count
    }

    static func le16(_ b: [UInt8], _ o: Int) -> UInt16 { UInt16(b[o]) | UInt16(b[o + 1]) << 8 }
    static func le32(_ b: [UInt8], _ o: Int) -> UInt32 { (0..<4).reduce(0) { $0 | UInt32(b[o + $1]) << (8 * UInt32($1)) } }
    static func le64(_ b: [UInt8], _ o: Int) -> UInt64 { (0..<8).reduce(0) { $0 | UInt64(b[o + $1]) << (8 * UInt64($1)) } }
}
