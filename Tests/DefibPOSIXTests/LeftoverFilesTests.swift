import DefibCore
import DefibPOSIX
import DefibTestKit
import Foundation
import Glibc
import Testing

private typealias S = CoreTestSupport

/// What a killed defib leaves behind, settled by the next one: a partial core is kept only if it checks
/// out as a core, junk is deleted, temporary files go, and nothing else is touched.
@Suite(.serialized) struct LeftoverFilesTests {
    @Test func aPartialCoreIsKeptWhenItChecksOutAndDeletedWhenItDoesNot() throws {
        let fixture = try S.startFixture(dataMiB: 2, zeroMiB: 0, reserveMiB: 0)
        defer { fixture.stop(); S.removeTree(fixture.dir) }
        let scratch = ScratchDirectory("leftover-cores")
        let cores = try SafeDirectory.open(scratch.path + "/cores")
        // A real, complete core under its temporary name (the writer died between its last write and the rename) …
        let good = cores.path + "/core.web.7.\(fixture.pid)"
        let result = NativeCoreWriter.capture(pid: fixture.pid, path: good, options: NativeCoreOptions(budgetMs: 60_000))
        try #require(result.record.error == nil)
        try #require(rename(good, NativeCoreWriter.partialPath(good)) == 0)
        // … and for another incident, one whose headers were never written (the writer copies memory first).
        var zeros = try Data(contentsOf: URL(fileURLWithPath: NativeCoreWriter.partialPath(good)))
        zeros.replaceSubrange(0..<4096, with: [UInt8](repeating: 0, count: 4096))
        try zeros.write(to: URL(fileURLWithPath: cores.path + "/core.web.8.\(fixture.pid).partial"))
        try "log".write(toFile: cores.path + "/core.web.8.gcore.log", atomically: false, encoding: .utf8)
        // Another service's core with the same incident number is not this incident's.
        try "x".write(toFile: cores.path + "/core.api.7.1234.partial", atomically: false, encoding: .utf8)

        let kept = LeftoverFiles.settleCores(coreDirectory: cores, service: "web", incidentID: 7)
        #expect(kept.count == 1)
        #expect(kept.first?.keptAt == good && kept.first?.method == "native" && kept.first?.problem == nil, "\(kept)")
        #expect(access(good, F_OK) == 0 && access(NativeCoreWriter.partialPath(good), F_OK) != 0, "renamed to its final name")
        let incident = Incident(id: 7, service: "web", pid: fixture.pid, detectedAt: Date(), cause: .triggered(reason: "test"))
        let record = LeftoverFiles.captureRecord(for: incident, settled: kept)
        #expect(record.capture?.path == good && record.capture?.error?.hasPrefix("partial: the supervisor died while writing this core") == true)

        let junk = LeftoverFiles.settleCores(coreDirectory: cores, service: "web", incidentID: 8)
        #expect(junk.count == 1 && junk.first?.keptAt == nil)
        #expect(junk.first?.problem == "no ELF header (the file starts with something else)", "\(junk)")
        #expect(access(cores.path + "/core.web.8.\(fixture.pid).partial", F_OK) != 0, "junk deleted")
        #expect(access(cores.path + "/core.web.8.gcore.log", F_OK) != 0)
        let junkRecord = LeftoverFiles.captureRecord(for: incident, settled: junk)
        #expect(junkRecord.capture?.path == nil && junkRecord.capture?.error?.contains("was not usable and was deleted") == true)
        #expect(access(cores.path + "/core.api.7.1234.partial", F_OK) == 0, "not this service's")

        // A capture that had finished: its core is the incident's, and is left as it is.
        var finished = incident
        finished.capture = CaptureRecord(method: "native", path: good, bytes: 1, durationMs: 1, error: nil)
        #expect(LeftoverFiles.settleCores(coreDirectory: cores, service: "web", incidentID: 7, recordedCore: good).isEmpty)
        #expect(LeftoverFiles.captureRecord(for: finished, settled: []).capture == nil, "the incident keeps its own record")
    }

    @Test func temporaryFilesOfKilledWritersAreRemovedAndNothingElse() throws {
        let scratch = ScratchDirectory("leftover-temps")
        let cores = try SafeDirectory.open(scratch.path + "/cores")
        let run = try SafeDirectory.open(scratch.path + "/run/web")
        let files = ["core.web.3.100", "core.web.3.100.zst", "core.web.4.200.gz", "core.web.5.300.partial", "core.web.5.300.stacks.txt",
                     "core.web.6.gcore.log", "notes.txt"]
        for f in files { try "x".write(toFile: cores.path + "/" + f, atomically: false, encoding: .utf8) }
        for f in ["flight-recorder", "flight-recorder.tmp.4242", "supervisor.lock"] { try "x".write(toFile: run.path + "/" + f, atomically: false, encoding: .utf8) }
        // Someone else's file with a matching name is not defib's to remove.
        try "x".write(toFile: cores.path + "/core.web.9.1.partial", atomically: false, encoding: .utf8)
        chown(cores.path + "/core.web.9.1.partial", OtherUser.nobody.uid, OtherUser.nobody.gid)
        try #require(symlink("/etc/hostname", cores.path + "/core.web.9.2.partial") == 0)

        let removed = Set(LeftoverFiles.removeTemporaries(coreDirectory: cores, runDirectory: run))
        #expect(removed == Set(["core.web.3.100.zst", "core.web.5.300.partial", "core.web.5.300.stacks.txt", "core.web.6.gcore.log"].map { cores.path + "/" + $0 }
                                + [run.path + "/flight-recorder.tmp.4242"]), "\(removed.sorted())")
        let left = Set(try FileManager.default.contentsOfDirectory(atPath: cores.path))
        #expect(left == ["core.web.3.100", "core.web.4.200.gz", "notes.txt", "core.web.9.1.partial", "core.web.9.2.partial"], "\(left.sorted())")
        #expect(Set(try FileManager.default.contentsOfDirectory(atPath: run.path)) == ["flight-recorder", "supervisor.lock"])
    }
}
