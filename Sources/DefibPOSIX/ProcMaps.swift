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
    public static func parse(_ text: String) throws -> [SmapsEntry] {
        var entries: [SmapsEntry] = []
        var lineNumber = 0
        for rawLine in text.split(separator: "\n", omittingEmptySubsequences: false) {
            lineNumber += 1
            let line = rawLine
            if line.isEmpty { continue }
            if line.hasPrefix("VmFlags:") {
                guard !entries.isEmpty else {
                    throw SmapsParseError(line: lineNumber, text: String(line), reason: "VmFlags before any mapping line")
                }
                entries[entries.count - 1].vmFlags = Set(line.dropFirst("VmFlags:".count).split(separator: " ").map(String.init))
                continue
            }
            if let colon = line.firstIndex(of: ":"), isCounterKey(line[..<colon]) {
                guard !entries.isEmpty else {
                    throw SmapsParseError(line: lineNumber, text: String(line), reason: "counter before any mapping line")
                }
                let key = line[..<colon]
                let value = UInt64(line[line.index(after: colon)...].split(separator: " ").first ?? "") ?? 0
                switch key {
                case "Anonymous": entries[entries.count - 1].anonymousKB = value
                case "Swap": entries[entries.count - 1].swapKB = value
                case "Rss": entries[entries.count - 1].rssKB = value
                default: break
                }
                continue
            }
            entries.append(try parseMapping(line, lineNumber: lineNumber))
        }
        return entries
    }

    // Counter keys are single words ("Rss", "Private_Dirty", "THPeligible"); a mapping line starts with hex and a dash.
    private static func isCounterKey(_ key: Substring) -> Bool {
        !key.isEmpty && !key.contains(" ") && !key.contains("-")
    }

    private static func parseMapping(_ line: Substring, lineNumber: Int) throws -> SmapsEntry {
        func fail(_ reason: String) -> SmapsParseError {
            SmapsParseError(line: lineNumber, text: String(line), reason: reason)
        }
        // "start-end perms offset dev inode   path": the path may contain spaces, so split only the first five fields.
        var fields: [Substring] = []
        var rest = line[...]
        for _ in 0..<5 {
            rest = rest.drop(while: { $0 == " " })
            guard let space = rest.firstIndex(of: " ") else {
                if !rest.isEmpty { fields.append(rest); rest = rest[rest.endIndex...] }
                break
            }
            fields.append(rest[..<space])
            rest = rest[space...]
        }
        guard fields.count == 5 else { throw fail("expected start-end perms offset dev inode [path]") }
        let range = fields[0].split(separator: "-")
        guard range.count == 2, let start = UInt64(range[0], radix: 16), let end = UInt64(range[1], radix: 16), start <= end else {
            throw fail("bad address range \"\(fields[0])\"")
        }
        let perms = fields[1]
        guard perms.count == 4 else { throw fail("bad permissions \"\(perms)\"") }
        guard let offset = UInt64(fields[2], radix: 16) else { throw fail("bad offset \"\(fields[2])\"") }
        guard fields[3].contains(":") else { throw fail("bad device \"\(fields[3])\"") }
        guard let inode = UInt64(fields[4]) else { throw fail("bad inode \"\(fields[4])\"") }
        let path = String(rest.drop(while: { $0 == " " }))
        return SmapsEntry(start: start, end: end, permissions: String(perms), offset: offset, inode: inode, path: path)
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
