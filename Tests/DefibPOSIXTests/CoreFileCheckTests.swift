import DefibCore
import DefibPOSIX
import DefibTestKit
import Foundation
import Glibc
import Testing

private typealias S = CoreTestSupport

/// A core is recorded only when the file is one: ELF, ET_CORE, notes with a thread's registers, every
/// segment inside the file. A helper's exit status proves nothing (gcore exits 0 on a full disk).
@Suite(.serialized) struct CoreFileCheckTests {
    /// Copies the first `bytes` of `source` to `target`.
    static func truncatedCopy(_ source: String, to target: String, bytes: Int) throws {
        let data = try Data(contentsOf: URL(fileURLWithPath: source))
        try data.prefix(bytes).write(to: URL(fileURLWithPath: target))
    }

    static func problem(_ path: String) -> String? {
        if case let .failure(p) = CoreFileCheck.check(path: path) { return p.problem }
        return nil
    }

    @Test func aRealCoreIsGoodAndEveryTruncationOfItIsNot() throws {
        let fixture = try S.startFixture(dataMiB: 4, zeroMiB: 1, reserveMiB: 0)
        defer { fixture.stop(); S.removeTree(fixture.dir) }
        let core = fixture.dir + "/core.fixture.1.\(fixture.pid)"
        let result = NativeCoreWriter.capture(pid: fixture.pid, path: core, options: NativeCoreOptions(budgetMs: 60_000))
        try #require(result.record.error == nil, "\(result.record.error ?? "")")
        #expect(access(NativeCoreWriter.partialPath(core), F_OK) != 0, "the temporary name is gone once the core is complete")
        guard case let .success(summary) = CoreFileCheck.check(path: core) else { Issue.record("\(CoreFileCheck.check(path: core))"); return }
        #expect(summary.threads == result.threads && summary.threads >= 2)
        #expect(summary.bytes == result.record.bytes && summary.dataEnd <= summary.bytes && summary.segments > 0)

        let cut = fixture.dir + "/cut"
        try Self.truncatedCopy(core, to: cut, bytes: 40)
        #expect(Self.problem(cut)?.hasPrefix("shorter than an ELF header") == true, "\(Self.problem(cut) ?? "ok")")
        try Self.truncatedCopy(core, to: cut, bytes: 100)
        #expect(Self.problem(cut)?.contains("program headers at offset 64 end beyond the end of the file") == true, "\(Self.problem(cut) ?? "ok")")
        try Self.truncatedCopy(core, to: cut, bytes: Int(summary.bytes) / 2)
        #expect(Self.problem(cut)?.contains("past the end of the file") == true, "\(Self.problem(cut) ?? "ok")")
        try Self.truncatedCopy(core, to: cut, bytes: Int(summary.bytes) - 1)
        #expect(Self.problem(cut)?.contains("truncated") == true, "one byte short is not a core either")
        // Headers written as zeros (the native writer writes them last): no ELF header.
        var zeroed = try Data(contentsOf: URL(fileURLWithPath: core))
        zeroed.replaceSubrange(0..<4096, with: [UInt8](repeating: 0, count: 4096))
        try zeroed.write(to: URL(fileURLWithPath: cut))
        #expect(Self.problem(cut) == "no ELF header (the file starts with something else)")
    }

    @Test func somethingElseIsNamedForWhatItIs() throws {
        let scratch = ScratchDirectory("corecheck-other")
        #expect(Self.problem("/bin/true")?.hasPrefix("ELF type 3") == true || Self.problem("/bin/true")?.hasPrefix("ELF type 2") == true,
                "\(Self.problem("/bin/true") ?? "ok")")
        try "not a core\n".write(toFile: scratch.path + "/junk", atomically: false, encoding: .utf8)
        #expect(Self.problem(scratch.path + "/junk") == "shorter than an ELF header (11 bytes)")
        try #require(symlink("/bin/true", scratch.path + "/link") == 0)
        #expect(Self.problem(scratch.path + "/link") == "is a symbolic link")
        #expect(Self.problem(scratch.path) == "not a regular file")
        #expect(CoreFileCheck.deleteIfUnusable(path: scratch.path + "/junk") != nil)
        #expect(access(scratch.path + "/junk", F_OK) != 0, "junk is deleted")
    }

    @Test func gcoreIntoAFullDiskExitsZeroButNoCoreIsRecorded() throws {
        try #require(geteuid() == 0, "mounting a tmpfs needs root")
        guard resolveExecutable("gcore") != nil else { Issue.record("gcore is not installed (scripts/setup.sh installs gdb)"); return }
        let fixture = try S.startFixture(dataMiB: 8, zeroMiB: 0, reserveMiB: 0)
        defer { fixture.stop(); S.removeTree(fixture.dir) }
        try withTmpfs(size: "1m", name: "gcore") { disk in
            let prefix = disk.path + "/core.fixture.7"
            let record = GcoreCapture.capture(pid: fixture.pid, prefix: prefix, budgetMs: 60_000)
            let error = try #require(record.error, "a truncated core was recorded as good: \(record)")
            #expect(record.path == nil && record.bytes == 0)
            #expect(error.hasPrefix("gcore exited 0 but core \(prefix).\(fixture.pid) is not usable: "), "\(error)")
            #expect(error.contains("the file system is full"), "\(error)")
            #expect(disk.entries().isEmpty, "the junk and gcore's log are gone: \(disk.entries())")
        }
    }
}
