import DefibCore
import DefibPOSIX
import DefibTestKit
import Foundation
import Glibc
import Testing

private typealias S = CoreTestSupport

/// A stall's evidence against a real multi-threaded C process: a stacks-only core is a small fraction of the full
/// one and gdb unwinds every thread from it to the same frames; `core` over budget falls back to stacks.
@Suite("stall evidence capture", .serialized, .timeLimit(.minutes(3)))
struct StallCaptureTests {
    @Test("a stacks-only core: every thread's frames as in the full core, no heap, the pause measured, the process runs on")
    func stacksOnlyMatchesTheFullCore() throws {
        let fixture = try S.startFixture(dataMiB: 64, zeroMiB: 8, reserveMiB: 16)
        defer { fixture.stop(); S.removeTree(fixture.dir) }
        let tasks = fixture.taskIDs
        try #require(tasks.count == 6)
        let full = fixture.dir + "/full.core"
        let fullResult = NativeCoreWriter.capture(pid: fixture.pid, path: full, options: NativeCoreOptions(budgetMs: 60_000))
        try #require(fullResult.record.error == nil, "\(fullResult.record.error ?? "")")

        let path = fixture.dir + "/stall.core"
        let capture = StallEvidenceCapture.capture(StallEvidenceRequest(pid: fixture.pid, mode: .stacks, budgetMs: 2000, path: path))
        #expect(capture.record.error == nil, "\(capture.record.error ?? "")")
        #expect(capture.mode == .stacks && capture.threads == 6 && capture.record.path == path)
        #expect(capture.pauseMs > 0 && capture.pauseMs < 2000 + 1000, "pause \(capture.pauseMs) ms")
        var st = stat()
        #expect(stat(path, &st) == 0 && st.st_mode & 0o777 == 0o600)
        // 64 MiB of data stay out: the file's allocated blocks are a few MiB at most.
        #expect(Int64(st.st_blocks) * 512 < 8 << 20, "stacks-only core allocates \(Int64(st.st_blocks) * 512) bytes")
        #expect(fixture.settledStates().allSatisfy { $0 == "S" }, "\(fixture.threadStates)")

        let stacks = try S.gdb(binary: fixture.binary, core: path)
        let reference = try S.gdb(binary: fixture.binary, core: full)
        #expect(Set(stacks.threads) == Set(tasks), "\(stacks.output)")
        for tid in tasks {
            #expect(stacks.frames[tid] == reference.frames[tid], "thread \(tid): stacks-only \(stacks.frames[tid] ?? []) full \(reference.frames[tid] ?? [])")
        }
        let frames = stacks.frames.values.flatMap { $0 }
        #expect(frames.filter { $0 == "worker_cond_wait" }.count == 3 && frames.contains("main_idle"), "\(stacks.output)")
    }

    @Test("core: a process holding more than the budget allows gets stacks only, and says why")
    func coreOverBudgetIsStacksOnly() throws {
        let fixture = try S.startFixture(dataMiB: 64, zeroMiB: 0, reserveMiB: 0)
        defer { fixture.stop(); S.removeTree(fixture.dir) }
        let path = fixture.dir + "/stall.core"
        // 1 ms allows 512 KiB of resident memory; the fixture holds 64 MiB.
        let capture = StallEvidenceCapture.capture(StallEvidenceRequest(pid: fixture.pid, mode: .core, budgetMs: 1, path: path))
        #expect(capture.mode == .stacks, "\(capture)")
        #expect(capture.notes.contains { $0.contains("stacks only") }, "\(capture.notes)")
        #expect(capture.record.path == path || capture.record.error != nil)

        // With room for it, the full core is written.
        // (A generous budget: the machine is shared; the bound is the freeze, not a target.)
        let roomy = StallEvidenceCapture.capture(StallEvidenceRequest(pid: fixture.pid, mode: .core, budgetMs: 60_000, path: fixture.dir + "/full"))
        #expect(roomy.mode == .core && roomy.record.error == nil, "\(roomy.record.error ?? "") \(roomy.notes)")
        #expect(roomy.record.bytes > 64 << 20)
    }

    @Test("a SIGSTOPped process stays stopped after its stacks are taken")
    func stoppedStaysStopped() throws {
        let fixture = try S.startFixture(dataMiB: 4, zeroMiB: 0, reserveMiB: 0)
        defer { fixture.stop(); S.removeTree(fixture.dir) }
        try fixture.child.signal(SIGSTOP)
        try #require(fixture.settledStates(expecting: "T").allSatisfy { $0 == "T" })
        let capture = StallEvidenceCapture.capture(StallEvidenceRequest(pid: fixture.pid, mode: .stacks, budgetMs: 1000, path: fixture.dir + "/s"))
        #expect(capture.record.error == nil && capture.threads == 6, "\(capture)")
        #expect(fixture.settledStates(expecting: "T").allSatisfy { $0 == "T" }, "group stop not restored")
        let view = try S.gdb(binary: fixture.binary, core: fixture.dir + "/s")
        #expect(view.threads.count == 6, "\(view.output)")
        try fixture.child.signal(SIGCONT)
    }
}

/// A stall capture a killed supervisor left behind: removed at the next start (a stacks-only one always; a full
/// one's partial file and gdb's output), a complete full one kept.
@Suite struct StallLeftoverTests {
    @Test func aDeadSupervisorsStallCapturesAreRemovedAtTheNextStart() throws {
        let scratch = ScratchDirectory("stall-leftovers")
        let cores = try SafeDirectory.open(scratch.path + "/cores")
        let files = ["stall.web.1.100", "stall.web.1.100.stacks.txt", "stall.web.2.100.partial", "stall-core.web.3.100.partial",
                     "stall-core.web.3.100.stacks.txt", "stall-core.web.4.100", "core.web.5.100"]
        for f in files { try "x".write(toFile: cores.path + "/" + f, atomically: false, encoding: .utf8) }
        let removed = Set(LeftoverFiles.removeTemporaries(coreDirectory: cores, runDirectory: nil))
        #expect(removed == Set(files.prefix(5).map { cores.path + "/" + $0 }), "\(removed.sorted())")
        #expect(Set(try FileManager.default.contentsOfDirectory(atPath: cores.path)) == ["stall-core.web.4.100", "core.web.5.100"])
    }
}
