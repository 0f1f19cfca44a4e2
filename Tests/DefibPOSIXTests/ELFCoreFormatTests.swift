@testable import DefibPOSIX
import Testing

private func u16(_ b: [UInt8], _ o: Int) -> UInt16 { UInt16(b[o]) | UInt16(b[o + 1]) << 8 }
private func u32(_ b: [UInt8], _ o: Int) -> UInt32 { (0..<4).reduce(0) { $0 | UInt32(b[o + $1]) << (8 * $1) } }
private func u64(_ b: [UInt8], _ o: Int) -> UInt64 { (0..<8).reduce(0) { $0 | UInt64(b[o + $1]) << (8 * $1) } }

@Suite("ELF core encoding")
struct ELFCoreFormatTests {
    @Test("elf_prstatus is 336 bytes with every field at the kernel's offset")
    func prstatusLayout() {
        var pr = PrStatus()
        pr.signal = 19; pr.pending = 0x1122; pr.held = 0x3344
        pr.pid = 101; pr.ppid = 102; pr.pgrp = 103; pr.sid = 104
        pr.utime = CoreTimeval(ticks: 250, ticksPerSecond: 100)
        pr.stime = CoreTimeval(ticks: 1, ticksPerSecond: 100)
        pr.registers = (0..<27).flatMap { i in withUnsafeBytes(of: UInt64(i + 1).littleEndian) { Array($0) } }
        pr.fpValid = true
        let b = pr.encode()
        #expect(b.count == 336)
        #expect(u32(b, 0) == 19 && u16(b, 12) == 19)
        #expect(u64(b, 16) == 0x1122 && u64(b, 24) == 0x3344)
        #expect(u32(b, 32) == 101 && u32(b, 36) == 102 && u32(b, 40) == 103 && u32(b, 44) == 104)
        #expect(u64(b, 48) == 2 && u64(b, 56) == 500_000)   // utime 2.5 s
        #expect(u64(b, 64) == 0 && u64(b, 72) == 10_000)    // stime 10 ms
        #expect(u64(b, 112) == 1)                           // r15
        #expect(u64(b, 112 + 16 * 8) == 17)                 // rip is the 17th word
        #expect(u64(b, 112 + 26 * 8) == 27)                 // gs
        #expect(u32(b, 328) == 1)
    }

    @Test("elf_prpsinfo is 136 bytes; comm and psargs are cut and NUL-terminated")
    func prpsinfoLayout() {
        var ps = PrPsInfo()
        (ps.state, ps.stateLetter) = PrPsInfo.state(fromLetter: UInt8(ascii: "D"))
        ps.nice = -5; ps.flags = 0x40_0040; ps.uid = 1000; ps.gid = 1001
        ps.pid = 10; ps.ppid = 11; ps.pgrp = 12; ps.sid = 13
        ps.fname = Array("a-very-long-command-name".utf8)
        ps.psargs = Array(String(repeating: "x", count: 100).utf8)
        let b = ps.encode()
        #expect(b.count == 136)
        #expect(b[0] == 2 && b[1] == UInt8(ascii: "D") && b[2] == 0 && Int8(bitPattern: b[3]) == -5)
        #expect(u64(b, 8) == 0x40_0040 && u32(b, 16) == 1000 && u32(b, 20) == 1001)
        #expect(u32(b, 24) == 10 && u32(b, 36) == 13)
        #expect(Array(b[40..<55]) == Array("a-very-long-com".utf8) && b[55] == 0)
        #expect(b[56 + 78] == UInt8(ascii: "x") && b[56 + 79] == 0)
        #expect(PrPsInfo.state(fromLetter: UInt8(ascii: "t")).letter == UInt8(ascii: "T"))
        #expect(PrPsInfo.state(fromLetter: UInt8(ascii: "I")).letter == UInt8(ascii: "."))
    }

    @Test("notes: name padded to 4, LINUX for the xstate, descriptor padded to 4")
    func noteEncoding() {
        var w = ByteWriter()
        CoreNote(type: ELF.NT_PRPSINFO, desc: [1, 2, 3]).encode(into: &w)
        CoreNote(type: ELF.NT_X86_XSTATE, desc: [9]).encode(into: &w)
        let b = w.bytes
        #expect(u32(b, 0) == 5 && u32(b, 4) == 3 && u32(b, 8) == 3)
        #expect(Array(b[12..<17]) == Array("CORE\0".utf8) && b[17...19] == [0, 0, 0])
        #expect(Array(b[20..<24]) == [1, 2, 3, 0])
        #expect(u32(b, 24) == 6 && u32(b, 28) == 1 && u32(b, 32) == 0x202)
        #expect(Array(b[36..<42]) == Array("LINUX\0".utf8))
        #expect(b.count == 24 + 12 + 8 + 4)
        #expect(CoreNote(type: ELF.NT_PRPSINFO, desc: [1, 2, 3]).encodedSize == 24)
    }

    @Test("NT_FILE: count, page size, triples with offsets in pages, then the names")
    func fileNote() {
        let b = encodeFileNote([FileMapping(start: 0x1000, end: 0x3000, offset: 0x2000, path: "/a"),
                                FileMapping(start: 0x5000, end: 0x6000, offset: 0, path: "/bb")])
        #expect(u64(b, 0) == 2 && u64(b, 8) == 4096)
        #expect(u64(b, 16) == 0x1000 && u64(b, 24) == 0x3000 && u64(b, 32) == 2)
        #expect(u64(b, 40) == 0x5000 && u64(b, 56) == 0)
        #expect(Array(b[64...]) == Array("/a\0/bb\0".utf8))
    }

    @Test("layout: ET_CORE x86-64, PT_NOTE first, page-aligned data, offsets fixed up front")
    func layout() {
        let segments = [CoreSegment(vaddr: 0x10000, memsz: 0x3000, filesz: 0x3000, flags: 6),
                        CoreSegment(vaddr: 0x20000, memsz: 0x100000, filesz: 0, flags: 6),
                        CoreSegment(vaddr: 0x400000, memsz: 0x2000, filesz: 0x1000, flags: 5)]
        let notes = [UInt8](repeating: 0xab, count: 100)
        let layout = ELFCoreLayout(segments: segments, notesSize: notes.count)
        let h = layout.headerBytes(notes: notes)
        #expect(Array(h[0..<7]) == [0x7f, 0x45, 0x4c, 0x46, 2, 1, 1])
        #expect(u16(h, 16) == 4 && u16(h, 18) == 62)
        #expect(u64(h, 32) == 64 && u16(h, 54) == 56 && u16(h, 56) == 4)
        #expect(u64(h, 40) == 0 && u16(h, 60) == 0)
        #expect(u32(h, 64) == 4)                                            // PT_NOTE first
        #expect(u64(h, 64 + 8) == UInt64(64 + 4 * 56) && u64(h, 64 + 32) == 100)
        #expect(layout.dataOffset == 4096)
        let load0 = 64 + 56, load1 = 64 + 112, load2 = 64 + 168
        #expect(u32(h, load0) == 1 && u32(h, load0 + 4) == 6)
        #expect(u64(h, load0 + 8) == 4096 && u64(h, load0 + 16) == 0x10000 && u64(h, load0 + 32) == 0x3000)
        #expect(u64(h, load0 + 48) == 4096)
        #expect(u64(h, load1 + 8) == 4096 + 0x3000 && u64(h, load1 + 32) == 0 && u64(h, load1 + 40) == 0x100000)
        #expect(u64(h, load2 + 8) == 4096 + 0x3000 && u64(h, load2 + 32) == 0x1000 && u64(h, load2 + 40) == 0x2000)
        #expect(layout.fileSize == 4096 + 0x4000)
        #expect(h.count == 64 + 4 * 56 + 100)
    }

    @Test("65535 or more program headers use PN_XNUM with the real count in section header 0")
    func extendedNumbering() {
        let segments = (0..<70_000).map { CoreSegment(vaddr: UInt64($0) << 12, memsz: 4096, filesz: 0, flags: 4) }
        let layout = ELFCoreLayout(segments: segments, notesSize: 8)
        let h = layout.headerBytes(notes: [UInt8](repeating: 0, count: 8))
        #expect(u16(h, 56) == 0xffff)
        let shoff = Int(u64(h, 40))
        #expect(shoff == 64 + 70_001 * 56 && u16(h, 58) == 64 && u16(h, 60) == 1)
        #expect(u32(h, shoff + 4) == 0 && u64(h, shoff + 32) == 1 && u32(h, shoff + 44) == 70_001)
        #expect(layout.notesOffset == UInt64(shoff + 64))
    }

    @Test("a truncated segment keeps its offset, only p_filesz shrinks")
    func truncation() {
        var layout = ELFCoreLayout(segments: [CoreSegment(vaddr: 0x1000, memsz: 0x8000, filesz: 0x8000, flags: 6),
                                              CoreSegment(vaddr: 0x20000, memsz: 0x2000, filesz: 0x2000, flags: 6)],
                                   notesSize: 16)
        let before = layout.segments.map(\.offset)
        layout.setFileSize(0x3000, ofSegment: 0)
        layout.setFileSize(0, ofSegment: 1)
        #expect(layout.segments.map(\.offset) == before)
        #expect(layout.segments.map(\.filesz) == [0x3000, 0])
        // The file still reaches every segment's offset (the tail is a hole), so no header points past its end.
        #expect(layout.fileSize == before[1])
    }

    @Test("/proc stat with spaces and parentheses in comm parses")
    func procStat() {
        let s = ProcStat.parse("4123 (we (ir) d) S 1 4123 4123 0 -1 4194560 100 0 0 0 250 13 2 1 20 -3 5 0 100 0 0")
        #expect(s?.comm == "we (ir) d" && s?.state == UInt8(ascii: "S") && s?.ppid == 1)
        #expect(s?.flags == 4_194_560 && s?.utime == 250 && s?.stime == 13 && s?.cutime == 2 && s?.nice == -3)
        #expect(ProcStat.parse("garbage") == nil)
    }
}
