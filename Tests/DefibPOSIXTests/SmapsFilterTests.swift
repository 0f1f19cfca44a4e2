import DefibPOSIX
import Testing

/// Recorded /proc/PID/smaps text (the C fixture plus a few hand-made shared mappings), trimmed to the counters the
/// parser reads and a few it must skip.
private let sampleSmaps = """
565358f63000-565358f64000 r--p 00000000 fe:00 16244902                   /tmp/coredev/fixture
Size:                  4 kB
Rss:                   4 kB
Private_Dirty:         4 kB
Anonymous:             0 kB
THPeligible:           0
VmFlags: rd mr mw me 
565358f64000-565358f65000 r-xp 00001000 fe:00 16244902                   /tmp/coredev/fixture
Size:                  4 kB
Anonymous:             0 kB
VmFlags: rd ex mr mw me 
565358f67000-565358f68000 rw-p 00003000 fe:00 16244902                   /tmp/coredev/fixture
Size:                  4 kB
Rss:                   4 kB
Anonymous:             4 kB
VmFlags: rd wr mr mw me ac 
56535ee42000-56535ee63000 rw-p 00000000 00:00 0                          [heap]
Size:                132 kB
Rss:                   8 kB
Anonymous:             8 kB
VmFlags: rd wr mr mw me ac 
7fc3c57fb000-7fc3c57fc000 ---p 00000000 00:00 0 
Size:                  4 kB
Anonymous:             0 kB
VmFlags: mr mw me 
7fc3c8000000-7fc3d0000000 rw-p 00000000 00:00 0 
Size:             131072 kB
Rss:                   0 kB
Anonymous:             0 kB
Swap:                  0 kB
VmFlags: rd wr mr mw me nr 
7fc3d0000000-7fc3d6000000 rw-p 00000000 00:00 0 
Size:              98304 kB
Rss:               98304 kB
Anonymous:         98304 kB
VmFlags: rd wr mr mw me ac 
7fc3d1000000-7fc3d1001000 rw-p 00000000 00:00 0 
Size:                  4 kB
Anonymous:             0 kB
Swap:                  4 kB
VmFlags: rd wr mr mw me ac 
7fc3d6135000-7fc3d615b000 r--p 00000000 fe:00 333151                     /usr/lib/x86_64-linux-gnu/libc.so.6
Size:                152 kB
Anonymous:             0 kB
VmFlags: rd mr mw me 
7fc3d615b000-7fc3d62b1000 r-xp 00026000 fe:00 333151                     /usr/lib/x86_64-linux-gnu/libc.so.6
Size:               1368 kB
Anonymous:             0 kB
VmFlags: rd ex mr mw me 
7fc3d6308000-7fc3d630a000 rw-p 001d3000 fe:00 333151                     /usr/lib/x86_64-linux-gnu/libc.so.6
Size:                  8 kB
Rss:                   8 kB
Anonymous:             8 kB
VmFlags: rd wr mr mw me ac 
7fc3d6322000-7fc3d6326000 r--p 00000000 00:00 0                          [vvar]
Size:                 16 kB
Anonymous:             0 kB
VmFlags: rd mr pf io de dd 
7fc3d6328000-7fc3d632a000 r-xp 00000000 00:00 0                          [vdso]
Size:                  8 kB
Anonymous:             0 kB
VmFlags: rd ex mr mw me de 
7fc3d6400000-7fc3d6500000 rw-s 00000000 00:01 2048                       /dev/zero (deleted)
Size:               1024 kB
Anonymous:             0 kB
VmFlags: rd wr sh mr mw me ms 
7fc3d6500000-7fc3d6600000 rw-s 00000000 fe:00 4242                       /var/lib/app/shared file.db
Size:               1024 kB
Anonymous:             0 kB
VmFlags: rd wr sh mr mw me ms 
7fc3d6600000-7fc3d6700000 rw-p 00000000 00:00 0 
Size:               1024 kB
Anonymous:          1024 kB
VmFlags: rd wr mr mw me ac dd 
7ffd0baac000-7ffd0bacd000 rw-p 00000000 00:00 0                          [stack]
Size:                132 kB
Anonymous:            12 kB
VmFlags: rd wr mr mw me gd ac 
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
Size:                  4 kB
Anonymous:             0 kB
VmFlags: ex 
"""

@Suite("smaps parsing and the kernel's dump filter")
struct SmapsFilterTests {
    @Test("every mapping line is parsed with its counters, flags and a path that may contain spaces")
    func parsesRecordedSmaps() throws {
        let entries = try SmapsParser.parse(sampleSmaps)
        #expect(entries.count == 18)
        let exe = entries[0]
        #expect(exe.start == 0x5653_58f6_3000 && exe.end == 0x5653_58f6_4000)
        #expect(exe.permissions == "r--p" && exe.offset == 0 && exe.inode == 16_244_902)
        #expect(exe.path == "/tmp/coredev/fixture")
        #expect(exe.vmFlags == ["rd", "mr", "mw", "me"])
        let data = entries[6]
        #expect(data.anonymousKB == 98_304 && data.rssKB == 98_304 && data.size == 96 << 20)
        #expect(entries[7].swapKB == 4)
        #expect(entries[10].offset == 0x1d3000)
        #expect(entries[14].path == "/var/lib/app/shared file.db" && entries[14].isShared)
        #expect(entries[4].path == "" && !entries[4].isReadable)
        #expect(entries[17].path == "[vsyscall]" && entries[17].end == 0xffff_ffff_ff60_1000)
    }

    @Test("mapping choice follows coredump_filter 0x33")
    func defaultFilter() throws {
        let entries = try SmapsParser.parse(sampleSmaps)
        let chosen = entries.map { CoreDumpFilter.extent(for: $0) }
        let expected: [DumpExtent] = [
            .firstPageIfELF,  // executable, offset 0, readable: its ELF header page
            .nothing,         // executable text: read from the file by the debugger
            .whole,           // executable .data with written pages
            .whole,           // [heap]
            .nothing,         // guard page ---p
            .nothing,         // untouched reservation
            .whole,           // touched anonymous buffer
            .whole,           // swapped-out anonymous pages count as written
            .firstPageIfELF,  // libc first mapping
            .nothing,         // libc text (offset ≠ 0)
            .whole,           // libc .data written
            .nothing,         // [vvar]
            .whole,           // [vdso] always
            .whole,           // shared anonymous (/dev/zero (deleted)): bit 1
            .nothing,         // shared file: bit 3 is off by default
            .nothing,         // MADV_DONTDUMP
            .whole,           // [stack]
            .nothing,         // [vsyscall]
        ]
        #expect(chosen == expected)
    }

    @Test("a filter with bit 2 dumps private file mappings whole; without bit 4 no ELF header page")
    func customFilter() throws {
        let entries = try SmapsParser.parse(sampleSmaps)
        #expect(CoreDumpFilter.extent(for: entries[9], filter: 0x37) == .whole)
        #expect(CoreDumpFilter.extent(for: entries[8], filter: 0x23) == .nothing)
        #expect(CoreDumpFilter.extent(for: entries[14], filter: 0x3b) == .whole)
        #expect(CoreDumpFilter.extent(for: entries[6], filter: 0x32) == .nothing)
    }

    @Test("a malformed mapping line is an error naming the line and the problem")
    func malformedLine() {
        let bad = "7fc3d6328000-7fc3d632a000 r-xp 00000000 00:00 0 [vdso]\nnot a mapping line at all\n"
        #expect {
            try SmapsParser.parse(bad)
        } throws: { error in
            guard let e = error as? SmapsParseError else { return false }
            return e.line == 2 && "\(e)".contains("smaps line 2") && "\(e)".contains("not a mapping line at all")
        }
        #expect(throws: SmapsParseError.self) { try SmapsParser.parse("zzzz-0000 rw-p 0 00:00 0\n") }
        #expect(throws: SmapsParseError.self) { try SmapsParser.parse("Rss: 4 kB\n") }
    }

    @Test("plain /proc/PID/maps text parses too (no counters)")
    func parsesMaps() throws {
        let entries = try SmapsParser.parse("""
        00400000-00452000 r-xp 00000000 08:02 173521      /usr/bin/dbus-daemon
        7fff5e7a4000-7fff5e7c5000 rw-p 00000000 00:00 0 [stack]
        """)
        #expect(entries.count == 2)
        #expect(entries[1].path == "[stack]" && entries[1].anonymousKB == 0)
    }
}
