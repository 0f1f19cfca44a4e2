import Glibc

/// One mapping of /proc/PID/smaps: the maps line plus the counters and VmFlags the core writer needs.
public struct SmapsEntry: Sendable, Equatable {
    /// First address.
    public var start: UInt64
    /// One past the last address.
    public var end: UInt64
    /// "rw-p", "r-xp", "rw-s" …
    public var permissions: String
    /// File offset of `start`, in bytes.
    public var offset: UInt64
    /// Inode of the backing file; 0 for anonymous memory.
    public var inode: UInt64
    /// The path or pseudo-name ("[heap]", "[vdso]", "/dev/zero (deleted)"); empty for anonymous memory.
    public var path: String
    /// `Anonymous:` in KiB: private pages written (copied on write or anonymous and touched).
    public var anonymousKB: UInt64 = 0
    /// `Swap:` in KiB: anonymous pages written and then swapped out (still "written to").
    public var swapKB: UInt64 = 0
    /// `Rss:` in KiB.
    public var rssKB: UInt64 = 0
    /// The two-letter VmFlags ("rd", "wr", "dd", "io" …).
    public var vmFlags: Set<String> = []

    /// A mapping with no counters and no flags (counters are filled in by the parser).
    public init(start: UInt64, end: UInt64, permissions: String, offset: UInt64, inode: UInt64, path: String) {
        self.start = start; self.end = end; self.permissions = permissions
        self.offset = offset; self.inode = inode; self.path = path
    }

    /// Size in bytes.
    public var size: UInt64 { end - start }
    /// `r` in the permissions.
    public var isReadable: Bool { permissions.hasPrefix("r") }
    /// `w` in the permissions.
    public var isWritable: Bool { permissions.dropFirst().first == "w" }
    /// `x` in the permissions.
    public var isExecutable: Bool { permissions.dropFirst(2).first == "x" }
    /// `s` in the fourth column: a MAP_SHARED mapping.
    public var isShared: Bool { permissions.dropFirst(3).first == "s" }
    /// Backed by a file (including shmem files such as "/dev/zero (deleted)" and memfds).
    public var isFileBacked: Bool { inode != 0 }
}

/// A line of smaps that is not what the kernel writes.
public struct SmapsParseError: Error, Equatable, CustomStringConvertible, Sendable {
    /// 1-based line number in the text.
    public var line: Int
    /// The offending line.
    public var text: String
    /// What is wrong with it.
    public var reason: String
    /// "smaps line 3: bad address range …: "<line>"".
    public var description: String { "smaps line \(line): \(reason): \"\(text)\"" }
}

/// Parses the text of /proc/PID/smaps (or /proc/PID/maps, which gives entries with no counters).
public enum SmapsParser {
    /// Every mapping in file order. Unknown `Key: value` lines are ignored; a malformed mapping line is an error.
    /// Works on bytes: a large process's smaps (100 KB and more) is parsed while it is frozen, and character-wise
    /// parsing took 10 ms of that freeze.
    public static func parse(_ text: String) throws -> [SmapsEntry] {
        var text = text
        return try text.withUTF8 { try parse(bytes: $0) }
    }

    static func parse(bytes: UnsafeBufferPointer<UInt8>) throws -> [SmapsEntry] {
        var entries: [SmapsEntry] = []
        var lineNumber = 0
        var i = 0
        let n = bytes.count
        while i < n {
            var j = i
            while j < n && bytes[j] != UInt8(ascii: "\n") { j += 1 }
            lineNumber += 1
            let line = UnsafeBufferPointer(rebasing: bytes[i..<j])
            i = j + 1
            if line.isEmpty { continue }
            if line.starts(with: vmFlagsKey) {
                guard !entries.isEmpty else { throw error(lineNumber, line, "VmFlags before any mapping line") }
                entries[entries.count - 1].vmFlags = Set(words(UnsafeBufferPointer(rebasing: line[vmFlagsKey.count...])).map { String(decoding: $0, as: UTF8.self) })
                continue
            }
            if let colon = line.firstIndex(of: UInt8(ascii: ":")), colon > 0,
               !line[..<colon].contains(UInt8(ascii: " ")), !line[..<colon].contains(UInt8(ascii: "-")) {
                // A counter ("Rss:   1234 kB"): a single word before the colon; a mapping line starts with hex and a dash.
                guard !entries.isEmpty else { throw error(lineNumber, line, "counter before any mapping line") }
                let key = UnsafeBufferPointer(rebasing: line[..<colon])
                let value = words(UnsafeBufferPointer(rebasing: line[(colon + 1)...])).first.flatMap { decimal($0) } ?? 0
                if key.elementsEqual(anonymousKey) { entries[entries.count - 1].anonymousKB = value }
                else if key.elementsEqual(swapKey) { entries[entries.count - 1].swapKB = value }
                else if key.elementsEqual(rssKey) { entries[entries.count - 1].rssKB = value }
                continue
            }
            entries.append(try parseMapping(line, lineNumber: lineNumber))
        }
        return entries
    }

    private static let vmFlagsKey = Array("VmFlags:".utf8)
    private static let anonymousKey = Array("Anonymous".utf8)
    private static let swapKey = Array("Swap".utf8)
    private static let rssKey = Array("Rss".utf8)

    private static func error(_ lineNumber: Int, _ line: UnsafeBufferPointer<UInt8>, _ reason: String) -> SmapsParseError {
        SmapsParseError(line: lineNumber, text: String(decoding: line, as: UTF8.self), reason: reason)
    }

    /// The space-separated words of `bytes`.
    private static func words(_ bytes: UnsafeBufferPointer<UInt8>) -> [UnsafeBufferPointer<UInt8>] {
        var out: [UnsafeBufferPointer<UInt8>] = []
        var i = 0
        while i < bytes.count {
            while i < bytes.count && bytes[i] == UInt8(ascii: " ") { i += 1 }
            let start = i
            while i < bytes.count && bytes[i] != UInt8(ascii: " ") { i += 1 }
            if i > start { out.append(UnsafeBufferPointer(rebasing: bytes[start..<i])) }
        }
        return out
    }

    private static func decimal(_ digits: UnsafeBufferPointer<UInt8>) -> UInt64? { number(digits, radix: 10) }

    private static func number(_ digits: UnsafeBufferPointer<UInt8>, radix: UInt64) -> UInt64? {
        guard !digits.isEmpty else { return nil }
        var value: UInt64 = 0
        for byte in digits {
            let digit: UInt64
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = UInt64(byte - UInt8(ascii: "0"))
            case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = UInt64(byte - UInt8(ascii: "a")) + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = UInt64(byte - UInt8(ascii: "A")) + 10
            default: return nil
            }
            guard digit < radix else { return nil }
            let (m, o1) = value.multipliedReportingOverflow(by: radix)
            let (sum, o2) = m.addingReportingOverflow(digit)
            guard !o1 && !o2 else { return nil }
            value = sum
        }
        return value
    }

    private static func parseMapping(_ line: UnsafeBufferPointer<UInt8>, lineNumber: Int) throws -> SmapsEntry {
        func fail(_ reason: String) -> SmapsParseError { error(lineNumber, line, reason) }
        func text(_ b: UnsafeBufferPointer<UInt8>) -> String { String(decoding: b, as: UTF8.self) }
        // "start-end perms offset dev inode   path": the path may contain spaces, so split only the first five fields.
        var fields: [UnsafeBufferPointer<UInt8>] = []
        var i = 0
        while fields.count < 5 {
            while i < line.count && line[i] == UInt8(ascii: " ") { i += 1 }
            guard i < line.count else { break }
            let start = i
            while i < line.count && line[i] != UInt8(ascii: " ") { i += 1 }
            fields.append(UnsafeBufferPointer(rebasing: line[start..<i]))
        }
        guard fields.count == 5 else { throw fail("expected start-end perms offset dev inode [path]") }
        let bounds = fields[0].split(separator: UInt8(ascii: "-"), omittingEmptySubsequences: false)
        guard bounds.count == 2, let start = number(UnsafeBufferPointer(rebasing: bounds[0]), radix: 16),
              let end = number(UnsafeBufferPointer(rebasing: bounds[1]), radix: 16), start <= end else {
            throw fail("bad address range \"\(text(fields[0]))\"")
        }
        let perms = fields[1]
        guard perms.count == 4 else { throw fail("bad permissions \"\(text(perms))\"") }
        guard let offset = number(fields[2], radix: 16) else { throw fail("bad offset \"\(text(fields[2]))\"") }
        guard fields[3].contains(UInt8(ascii: ":")) else { throw fail("bad device \"\(text(fields[3]))\"") }
        guard let inode = decimal(fields[4]) else { throw fail("bad inode \"\(text(fields[4]))\"") }
        while i < line.count && line[i] == UInt8(ascii: " ") { i += 1 }
        let path = text(UnsafeBufferPointer(rebasing: line[i...]))
        return SmapsEntry(start: start, end: end, permissions: text(perms), offset: offset, inode: inode, path: path)
    }
}

/// How much of a mapping goes into the core.
public enum DumpExtent: Sendable, Equatable {
    /// A PT_LOAD with p_filesz 0: the mapping is described but not copied.
    case nothing
    /// The whole mapping.
    case whole
    /// The first page, but only if it starts with an ELF header (the reader checks the magic in memory).
    case firstPageIfELF
}

/// The kernel's choice of what to dump for each mapping (fs/coredump.c `vma_dump_size`) with the default
/// /proc/PID/coredump_filter 0x33: anonymous private, anonymous shared, ELF headers, private huge pages.
public enum CoreDumpFilter {
    /// The default coredump_filter.
    public static let defaultBits: UInt32 = 0x33

    /// Decides one mapping from its smaps entry. Pure: the ELF-magic test for `.firstPageIfELF` is the caller's.
    public static func extent(for entry: SmapsEntry, filter: UInt32 = defaultBits) -> DumpExtent {
        func bit(_ n: UInt32) -> Bool { filter & (1 << n) != 0 }
        // VM_DONTDUMP (madvise DONTDUMP, vvar) and VM_IO device memory are never read.
        if entry.vmFlags.contains("dd") || entry.vmFlags.contains("io") { return .nothing }
        // Raw PFN maps have no struct pages to read; the kernel's VM_IO check catches most, we skip them all.
        if entry.vmFlags.contains("pf") { return .nothing }
        if entry.path == "[vvar]" || entry.path == "[vvar_vclock]" || entry.path == "[vsyscall]" { return .nothing }
        // The kernel always dumps the vDSO: gdb needs its symbols to unwind through signal frames.
        if entry.path == "[vdso]" { return .whole }
        if entry.vmFlags.contains("ht") {
            return (entry.isShared ? bit(6) : bit(5)) ? .whole : .nothing
        }
        if entry.isShared {
            // A shared mapping of an unlinked file is "anonymous shared" (MAP_SHARED|MAP_ANONYMOUS, SysV shm, memfd).
            let unlinked = !entry.isFileBacked || entry.path.isEmpty || entry.path.hasSuffix(" (deleted)")
            return (unlinked ? bit(1) : bit(3)) ? .whole : .nothing
        }
        // A private mapping with written pages (the kernel's "has anon_vma").
        if entry.anonymousKB > 0 || entry.swapKB > 0 { return bit(0) ? .whole : .nothing }
        if !entry.isFileBacked { return .nothing }
        if bit(2) { return .whole }
        if bit(4) && entry.offset == 0 && entry.isReadable { return .firstPageIfELF }
        return .nothing
    }
}

/// Reads a whole (small, /proc) text file. Errors name the path.
func readProcFile(_ path: String, maxBytes: Int = 64 << 20) throws -> [UInt8] {
    let fd = retryingEINTR { open(path, O_RDONLY | O_CLOEXEC) }
    if fd < 0 { throw SystemError("open(\(path))") }
    defer { close(fd) }
    var out: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 64 << 10)
    while out.count < maxBytes {
        let n = buffer.withUnsafeMutableBytes { b in retryingEINTR { read(fd, b.baseAddress, b.count) } }
        if n < 0 { throw SystemError("read(\(path))") }
        if n == 0 { break }
        out.append(contentsOf: buffer[0..<n])
    }
    return out
}

/// Reads a /proc text file as a String.
func readProcText(_ path: String) throws -> String {
    String(decoding: try readProcFile(path), as: UTF8.self)
}
