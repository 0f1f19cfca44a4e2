import DefibCore
import DefibPOSIX
import Glibc
import Synchronization
import Testing

private typealias S = CoreTestSupport

/// Set once by one task, read by another.
private final class DoneFlag: Sendable {
    private let flag = Atomic<Bool>(false)
    func set() { flag.store(true, ordering: .releasing) }
    var isSet: Bool { flag.load(ordering: .acquiring) }
}

/// The native writer against a real multi-threaded C process, checked with gdb and against gcore.
@Suite("native core writer", .serialized, .timeLimit(.minutes(3)))
struct NativeCoreTests {
    @Test("gdb reads the native core like gcore's: same threads, same frames, the global, the requested first thread; smaller, with holes")
    func matchesGcore() throws {
        let fixture = try S.startFixture()
        defer { fixture.stop(); S.removeTree(fixture.dir) }
        let tasks = fixture.taskIDs
        try #require(tasks.count == 6)
        let first = tasks[3]
        let corePath = fixture.dir + "/native.core"
        let result = NativeCoreWriter.capture(pid: fixture.pid, path: corePath,
                                              options: NativeCoreOptions(budgetMs: 60_000, firstThread: first))
        #expect(result.record.error == nil, "\(result.record.error ?? "")")
        #expect(result.record.method == "native" && result.record.path == corePath)
        #expect(!result.truncated && result.threads == 6 && !result.processExited)
        #expect(result.record.bytes == fileSize(corePath))
        var st = stat()
        #expect(stat(corePath, &st) == 0 && st.st_mode & 0o777 == 0o600)
        // Detached: every thread is back asleep, none left in a tracing stop.
        #expect(fixture.settledStates().allSatisfy { $0 == "S" }, "\(fixture.threadStates)")

        let native = try S.gdb(binary: fixture.binary, core: corePath, extra: ["print/x the_global"])
        #expect(Set(native.threads) == Set(tasks), "\(native.output)")
        #expect(native.currentThread == first, "\(native.output)")
        #expect(S.printed(native.output) == "0x5eed0123456789ab", "\(native.output)")

        // gcore of the same process, still parked where it was.
        let (gstatus, goutput) = try S.run(["gcore", "-o", fixture.dir + "/gcore", String(fixture.pid)], timeoutMs: 120_000)
        try #require(gstatus == .exited(code: 0), "\(goutput)")
        let gcorePath = fixture.dir + "/gcore.\(fixture.pid)"
        let reference = try S.gdb(binary: fixture.binary, core: gcorePath)
        #expect(Set(reference.threads) == Set(tasks))
        for tid in tasks {
            #expect(native.frames[tid] == reference.frames[tid], "thread \(tid): native \(native.frames[tid] ?? []) gcore \(reference.frames[tid] ?? [])")
        }
        let allFrames = native.frames.values.flatMap { $0 }
        #expect(allFrames.filter { $0 == "worker_cond_wait" }.count == 3)
        #expect(allFrames.filter { $0 == "worker_futex_wait" }.count == 2)
        #expect(allFrames.contains("main_idle"))

        // gcore writes the untouched 128 MiB reservation; the kernel's filter (and ours) does not.
        let gcoreBytes = try #require(fileSize(gcorePath))
        #expect(result.record.bytes < gcoreBytes, "native \(result.record.bytes) vs gcore \(gcoreBytes)")
        // The 32 MiB of touched-but-zero pages are holes: allocated space stays well under the file size,
        // while the 64 MiB of real data is there.
        #expect(result.allocatedBytes < result.record.bytes - (24 << 20), "allocated \(result.allocatedBytes) of \(result.record.bytes)")
        #expect(result.allocatedBytes >= 60 << 20)
    }

    @Test("past the budget the core is kept, marked truncated, and gdb still opens it")
    func budgetOverrun() throws {
        let fixture = try S.startFixture()
        defer { fixture.stop(); S.removeTree(fixture.dir) }
        let tasks = fixture.taskIDs
        let corePath = fixture.dir + "/truncated.core"
        let result = NativeCoreWriter.capture(pid: fixture.pid, path: corePath, options: NativeCoreOptions(budgetMs: 1))
        #expect(result.truncated)
        let error = try #require(result.record.error)
        #expect(error.contains("truncated") && error.contains("1 ms budget"), "\(error)")
        #expect(result.record.path == corePath && fileSize(corePath) == result.record.bytes)
        #expect(result.threads == tasks.count)
        #expect(fixture.settledStates().allSatisfy { $0 == "S" }, "\(fixture.threadStates)")

        let headers = try S.readCoreHeaders(corePath)
        #expect(headers.type == 4 && headers.machine == 62 && headers.firstNoteIsPrStatus)
        for load in headers.loads {
            #expect(load.offset % 4096 == 0 && load.offset + load.filesz <= UInt64(result.record.bytes))
        }
        let view = try S.gdb(binary: fixture.binary, core: corePath)
        #expect(Set(view.threads) == Set(tasks), "\(view.output)")
    }

    @Test("a full disk gives a 'disk full' error, no file, and a process that runs on")
    func diskFull() throws {
        try #require(geteuid() == 0, "mounting the 1 MiB tmpfs needs root")
        let fixture = try S.startFixture(dataMiB: 8, zeroMiB: 0, reserveMiB: 0)
        defer { fixture.stop(); S.removeTree(fixture.dir) }
        let mountPoint = fixture.dir + "/tiny"
        try #require(mkdir(mountPoint, 0o700) == 0)
        let (mstatus, moutput) = try S.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", mountPoint])
        try #require(mstatus == .exited(code: 0), "mount: \(moutput)")
        defer { _ = try? S.run(["umount", mountPoint]) }

        let corePath = mountPoint + "/full.core"
        let result = NativeCoreWriter.capture(pid: fixture.pid, path: corePath, options: NativeCoreOptions(budgetMs: 60_000))
        let error = try #require(result.record.error)
        #expect(error.contains("disk full") && error.contains(corePath), "\(error)")
        #expect(result.record.path == nil && result.record.bytes == 0)
        #expect(access(corePath, F_OK) != 0, "the partial core must be removed")
        #expect(fixture.settledStates().allSatisfy { $0 == "S" }, "\(fixture.threadStates)")
        // Detached cleanly: a second capture elsewhere can attach again.
        let again = NativeCoreWriter.capture(pid: fixture.pid, path: fixture.dir + "/ok.core", options: NativeCoreOptions(budgetMs: 60_000))
        #expect(again.record.error == nil, "\(again.record.error ?? "")")
    }

    @Test("ptrace refused: the error names the call, the tid and errno, and no file is left")
    func ptraceRefused() throws {
        let dir = try S.makeTempDir("eperm")
        defer { S.removeTree(dir) }
        // The kernel refuses PTRACE_SEIZE of a thread of the tracer's own process.
        let me = getpid()
        let result = NativeCoreWriter.capture(pid: me, path: dir + "/self.core", options: NativeCoreOptions(budgetMs: 5_000))
        #expect(result.record.error == "ptrace(PTRACE_SEIZE, \(me)): Operation not permitted")
        #expect(result.record.path == nil && access(dir + "/self.core", F_OK) != 0)
    }

    @Test("a pid that is gone, bad options and a bad path are clear errors that leave no file")
    func badInput() throws {
        let dir = try S.makeTempDir("gone")
        defer { S.removeTree(dir) }
        let (status, _) = try S.run(["/bin/true"])
        try #require(status == .exited(code: 0))
        // The pid of a child that has been reaped: nothing answers to it (barring a wrap-around in the meantime).
        var request = SpawnRequest(argv: ["/bin/true"], environment: [:])
        request.stdinFromDevNull = true
        let child = try spawnProcess(request)
        _ = waitForChild(child, timeoutMs: 10_000)
        child.closePidfd()
        let gone = NativeCoreWriter.capture(pid: child.pid, path: dir + "/gone.core", options: NativeCoreOptions(budgetMs: 5_000))
        #expect(gone.record.error?.contains("process \(child.pid)") == true, "\(gone.record.error ?? "")")
        #expect(access(dir + "/gone.core", F_OK) != 0)

        let badThreads = NativeCoreWriter.capture(pid: getpid(), path: dir + "/x.core",
                                                  options: NativeCoreOptions(budgetMs: 5_000, writerThreads: 0))
        #expect(badThreads.record.error == "invalid native core options: writerThreads must be 1…16, got 0")
        let badChunk = NativeCoreWriter.capture(pid: getpid(), path: dir + "/x.core",
                                                options: NativeCoreOptions(budgetMs: 5_000, chunkBytes: 1000))
        #expect(badChunk.record.error?.contains("chunkBytes") == true)
        let badBudget = NativeCoreWriter.capture(pid: getpid(), path: dir + "/x.core", options: NativeCoreOptions(budgetMs: 0))
        #expect(badBudget.record.error?.contains("budgetMs must be positive, got 0") == true)
        let badPath = NativeCoreWriter.capture(pid: getpid(), path: dir + "/no/such/dir/x.core", options: NativeCoreOptions(budgetMs: 5_000))
        #expect(badPath.record.error == "open(\(dir)/no/such/dir/x.core): No such file or directory")
        #expect(access(dir + "/x.core", F_OK) != 0)
    }

    @Test("threads that come and go during the capture neither crash nor hang it")
    func churningThreads() throws {
        let fixture = try S.startFixture(dataMiB: 4, zeroMiB: 0, reserveMiB: 0, churn: true)
        defer { fixture.stop(); S.removeTree(fixture.dir) }
        var last: NativeCoreResult?
        for i in 0..<5 {
            let r = NativeCoreWriter.capture(pid: fixture.pid, path: fixture.dir + "/churn\(i).core",
                                             options: NativeCoreOptions(budgetMs: 30_000))
            #expect(r.record.error == nil, "\(r.record.error ?? "")")
            #expect(r.threads >= 6)
            last = r
        }
        #expect(!fixture.threadStates.contains("t"), "a thread was left in a tracing stop: \(fixture.threadStates)")
        let core = try #require(last?.record.path)
        let view = try S.gdb(binary: fixture.binary, core: core, extra: ["print/x the_global"])
        #expect(view.threads.count == last?.threads)
        #expect(S.printed(view.output) == "0x5eed0123456789ab")
    }

    @Test("a process killed mid-capture: the writer returns, and the death is left for the parent to reap",
          arguments: [0, 500, 2_000, 8_000])
    func killedDuringCapture(killAfterMicroseconds: Int) async throws {
        let fixture = try S.startFixture(dataMiB: 128, zeroMiB: 0, reserveMiB: 0)
        defer { S.removeTree(fixture.dir) }
        let child = fixture.child
        let killer = Task.detached {
            usleep(UInt32(killAfterMicroseconds))
            try? child.signal(SIGKILL)
        }
        let corePath = fixture.dir + "/killed.core"
        let result = NativeCoreWriter.capture(pid: fixture.pid, path: corePath, options: NativeCoreOptions(budgetMs: 30_000))
        await killer.value
        // Wherever the kill landed (stopping, reading registers, copying), this test, the parent, still reaps it:
        // the writer reaped the dead threads it traced and left the leader's death alone.
        let status = waitForChild(child, timeoutMs: 10_000)
        child.closePidfd()
        #expect(status == .signaled(signal: SIGKILL, coreDumped: false),
                "error \(result.record.error ?? "none"), notes \(result.notes), exited \(result.processExited)")
        if let path = result.record.path {
            let headers = try S.readCoreHeaders(path)
            #expect(headers.type == 4 && headers.firstNoteIsPrStatus)
            for load in headers.loads { #expect(load.offset + load.filesz <= UInt64(result.record.bytes)) }
        } else {
            #expect(result.record.error != nil)
            #expect(access(corePath, F_OK) != 0)
        }
    }

    @Test("signals that arrive while the threads are stopped are delivered afterwards, none lost")
    func signalsDuringCapture() async throws {
        let fixture = try S.startFixture(dataMiB: 4, zeroMiB: 0, reserveMiB: 0)
        defer { fixture.stop(); S.removeTree(fixture.dir) }
        let counter = try #require(fixture.readyValue("seen").flatMap { UInt64($0.dropFirst(2), radix: 16) })
        let signal = try #require(fixture.readyValue("rtsig").flatMap { Int32($0) })
        let pid = fixture.pid
        // A steady stream of signals while capturing over and over: some arrive just as a thread is seized and
        // stop it in a signal-delivery-stop; those must be handed back on detach.
        let stop = DoneFlag()
        let sender = Task.detached { () -> Int in
            var sent = 0
            // Bursts, so the handler keeps up and the test ends quickly.
            while !stop.isSet && sent < 100_000 {
                if kill(pid, signal) == 0 { sent += 1 } else { usleep(100) }   // EAGAIN: the queue is full
                if sent % 32 == 0 { usleep(100) }
            }
            return sent
        }
        var held = 0
        for i in 0..<40 {
            let r = NativeCoreWriter.capture(pid: pid, path: fixture.dir + "/sig\(i % 2).core", options: NativeCoreOptions(budgetMs: 30_000))
            #expect(r.record.error == nil, "\(r.record.error ?? "")")
            held += r.notes.filter { $0.contains("re-delivered") }.count
        }
        stop.set()
        let sent = await sender.value
        var seen: UInt64 = 0
        for _ in 0..<1_000 {
            seen = try ProcessMemory.readUInt64(pid: pid, address: counter)
            if seen >= UInt64(sent) { break }
            usleep(10_000)
        }
        #expect(seen == UInt64(sent), "\(seen) of \(sent) signals handled (\(held) capture(s) held a signal)")
    }

    @Test("a process stopped by SIGSTOP stays stopped after the capture, and its core is complete")
    func groupStoppedProcess() throws {
        let fixture = try S.startFixture(dataMiB: 4, zeroMiB: 0, reserveMiB: 0)
        defer { fixture.stop(); S.removeTree(fixture.dir) }
        try fixture.child.signal(SIGSTOP)
        let states = fixture.settledStates(expecting: "T")
        try #require(states.allSatisfy { $0 == "T" }, "\(states)")
        let corePath = fixture.dir + "/stopped.core"
        let result = NativeCoreWriter.capture(pid: fixture.pid, path: corePath, options: NativeCoreOptions(budgetMs: 30_000))
        #expect(result.record.error == nil, "\(result.record.error ?? "")")
        #expect(result.threads == 6)
        let after = fixture.settledStates(expecting: "T")
        #expect(after.allSatisfy { $0 == "T" }, "group stop not restored: \(after)")
        let view = try S.gdb(binary: fixture.binary, core: corePath)
        #expect(view.threads.count == 6)
        try fixture.child.signal(SIGCONT)
    }
}
