import Foundation
import Testing
import DefibPOSIX
import Glibc
@testable import defib_bench

@Suite("Bench statistics and targets")
struct BenchTargetTests {
    @Test func spreadTakesTheMiddleValueAndAveragesTheTwoMiddleOnes() throws {
        let odd = try #require(Spread([5, 1, 3]))
        #expect(odd.median == 3 && odd.min == 1 && odd.max == 5 && odd.count == 3)
        let even = try #require(Spread([4, 1, 3, 100]))
        #expect(even.median == 3.5)
        #expect(Spread([]) == nil)
    }

    static func sample(_ method: String, ms: Double, file: Int64, allocated: Int64, error: String? = nil) -> CaptureSample {
        CaptureSample(method: method, rep: 0, durationMs: ms, fileBytes: file, allocatedBytes: allocated, threadsInCore: 9,
                      processThreads: 9, processRSSBytes: 600 << 20, stopMs: nil, error: error)
    }

    static func scenario(_ id: String, _ samples: [CaptureSample]) -> ScenarioResult {
        ScenarioResult(id: id, title: id, ballastMB: id == "idle" ? 0 : 512, extraThreads: 0, processRSSBytes: 0, processThreads: 9,
                       samples: samples, summaries: CoreBench.methods.map { MethodSummary.of($0, in: samples) },
                       gdb: GdbCheck(processThreads: 9, coreThreads: 9, gdbThreads: 9, pass: true, detail: "gdb exited with code 0"),
                       error: nil)
    }

    @Test func targetsPassOnlyAtTheirThresholds() throws {
        // idle: gcore 20× native exactly passes; 512 MiB: gcore 4.9× fails, kernel slower passes, 3.2 GB/s passes.
        let idle = Self.scenario("idle", [
            Self.sample("native", ms: 10, file: 100, allocated: 50), Self.sample("gcore", ms: 200, file: 900, allocated: 900),
            Self.sample("kernel", ms: 30, file: 95, allocated: 50),
        ])
        let big = Self.scenario("ballast", [
            Self.sample("native", ms: 200, file: 700, allocated: 640_000_000),
            Self.sample("gcore", ms: 980, file: 1200, allocated: 1200),
            Self.sample("kernel", ms: 201, file: 600, allocated: 640_000_000),
        ])
        let byID = Dictionary(uniqueKeysWithValues: CoreTargets.evaluate(idle: idle, ballast: big).map { ($0.id, $0) })
        #expect(byID["idle.native-vs-gcore"]?.pass == true)
        #expect(byID["ballast.native-vs-gcore"]?.pass == false)
        #expect(byID["ballast.native-vs-kernel"]?.pass == true)
        #expect(byID["idle.size-vs-kernel"]?.pass == true)          // 100 / 95 = 1.05
        #expect(byID["ballast.size-vs-kernel"]?.pass == false)      // 700 / 600 = 1.17
        #expect(byID["ballast.allocated-vs-kernel"]?.pass == true)
        #expect(byID["ballast.native-throughput"]?.pass == true)    // 640 MB in 0.2 s = 3.2 GB/s
        #expect(byID["idle.gdb-threads"]?.pass == true)
    }

    @Test func aMethodThatAlwaysFailedFailsItsTargetsAndSaysWhy() throws {
        let big = Self.scenario("ballast", [
            Self.sample("native", ms: 100, file: 700, allocated: 700),
            Self.sample("gcore", ms: 0, file: 0, allocated: 0, error: "gcore failed (exited(code: 1)): ptrace denied"),
        ])
        let checks = CoreTargets.evaluate(idle: nil, ballast: big)
        let gcore = try #require(checks.first { $0.id == "ballast.native-vs-gcore" })
        #expect(!gcore.pass)
        #expect(gcore.measured.contains("ptrace denied"))
        let kernel = try #require(checks.first { $0.id == "ballast.native-vs-kernel" })
        #expect(!kernel.pass)
        #expect(checks.filter { $0.id.hasPrefix("?") || $0.id.hasPrefix("idle") }.allSatisfy { !$0.pass })
    }

    @Test func aSlowFirstCaptureIsCalledOutOnlyWhenItWasSlow() {
        var big = Self.scenario("ballast", [
            Self.sample("native", ms: 200, file: 700, allocated: 700), Self.sample("gcore", ms: 1000, file: 900, allocated: 900),
        ])
        let machine = MachineState(nproc: 2, memTotalBytes: 0, memAvailableBytes: 0, memFreeBytes: 0, cachedBytes: 0, dirtyBytes: 0,
                                   load: [], kernel: "", cpuModel: "")
        func render() -> String {
            CoreMarkdown.render(CoreReport(part: "core", startedAt: "", finishedAt: "", machineBefore: machine, machineAfter: machine,
                                           figures: CoreFigures(gdbVersion: "gdb", reps: 1, warmups: 1, scenarios: [big])))
        }
        big.warmupSamples = [Self.sample("native", ms: 1100, file: 700, allocated: 700), Self.sample("gcore", ms: 1100, file: 900, allocated: 900)]
        let slow = render()
        #expect(slow.contains("native 1100 ms, gcore 1100 ms."))
        #expect(slow.contains("The first native capture took 5.5× its median"))
        #expect(!slow.contains("gcore capture took"))
        big.warmupSamples = [Self.sample("native", ms: 150, file: 700, allocated: 700)]
        #expect(!render().contains("capture took"))
    }

    @Test func failedSamplesAreLeftOutOfTheFiguresButCounted() {
        let s = MethodSummary.of("native", in: [
            Self.sample("native", ms: 10, file: 1, allocated: 1),
            Self.sample("native", ms: 1000, file: 1, allocated: 1, error: "truncated core"),
        ])
        #expect(s.runs == 2)
        #expect(s.failures == ["truncated core"])
        #expect(s.wallMs?.median == 10)
    }
}

@Suite("Bench parsers")
struct BenchParserTests {
    @Test func procStatusReadsRSSPeakThreadsAndWakeups() {
        let text = "Name:\tdefib\nVmHWM:\t   30000 kB\nVmRSS:\t   25000 kB\nThreads:\t3\nvoluntary_ctxt_switches:\t1234\nnonvoluntary_ctxt_switches:\t5\n"
        let s = ProcessStatus.parse(text)
        #expect(s == ProcessStatus(rssBytes: 25000 * 1024, hwmBytes: 30000 * 1024, threads: 3, voluntarySwitches: 1234))
    }

    @Test func cpuPressureIsTheStallShareBetweenTwoReadings() throws {
        var a = MachineState(nproc: 2, memTotalBytes: 0, memAvailableBytes: 0, memFreeBytes: 0, cachedBytes: 0, dirtyBytes: 0,
                             load: [], kernel: "", cpuModel: "", cpuSomeStallUs: 1_000_000, atMonotonicNs: 0)
        var b = a
        b.cpuSomeStallUs = 3_500_000; b.atMonotonicNs = 10_000_000_000     // 2.5 s stalled in 10 s
        #expect(try #require(MachineState.cpuStallPercent(from: a, to: b)) == 25)
        a.cpuSomeStallUs = nil
        #expect(MachineState.cpuStallPercent(from: a, to: b) == nil)
        #expect(MachineState.pressureLine(from: a, to: b) == "")
    }

    @Test func gdbInfoThreadsRowsAreCountedOncePerLWP() {
        let out = """
        [New LWP 101]
        [New LWP 102]
        warning: Section `.reg-xstate/101' in core file too small.
          Id   Target Id                          Frame
        * 1    Thread 0x7f00 (LWP 101) "defib-proxy" 0x00007f in epoll_wait ()
          2    Thread 0x7f01 (LWP 102) "NIO-ELT-0-#0" 0x00007f in epoll_wait ()
          3    LWP 103                            0x00007f in futex_wait ()
          4    Thread 0x7f02 (LWP 104) warning: Section `.reg-xstate/104' in core file too small.
        """
        #expect(GdbOutput.threadCount(infoThreads: out) == 4)
        #expect(GdbOutput.complaints(out) == ["warning: Section `.reg-xstate/101' in core file too small. (×2)"])
    }

    /// A minimal ET_CORE: ELF header, one PT_NOTE with 2 NT_PRSTATUS "CORE" notes and one NT_X86_XSTATE "LINUX".
    static func tinyCore() -> [UInt8] {
        var b = [UInt8](repeating: 0, count: 64)
        b[0...3] = [0x7f, 0x45, 0x4c, 0x46]; b[4] = 2; b[5] = 1; b[6] = 1
        func put(_ v: UInt64, _ at: Int, _ n: Int, into a: inout [UInt8]) { for i in 0..<n { a[at + i] = UInt8((v >> (8 * UInt64(i))) & 0xff) } }
        put(4, 16, 2, into: &b)       // ET_CORE
        put(64, 32, 8, into: &b)      // e_phoff
        put(56, 54, 2, into: &b)      // e_phentsize
        put(1, 56, 2, into: &b)       // e_phnum
        func note(_ name: String, _ type: UInt32, _ desc: Int) -> [UInt8] {
            var n = [UInt8](repeating: 0, count: 12)
            let nameBytes = Array(name.utf8) + [0]
            put(UInt64(nameBytes.count), 0, 4, into: &n); put(UInt64(desc), 4, 4, into: &n); put(UInt64(type), 8, 4, into: &n)
            n += nameBytes + [UInt8](repeating: 0, count: (4 - nameBytes.count % 4) % 4)
            n += [UInt8](repeating: 0, count: (desc + 3) & ~3)
            return n
        }
        let notes = note("CORE", 1, 336) + note("LINUX", 0x202, 2432) + note("CORE", 1, 336)
        var ph = [UInt8](repeating: 0, count: 56)
        put(4, 0, 4, into: &ph)                         // PT_NOTE
        put(120, 8, 8, into: &ph)                       // p_offset
        put(UInt64(notes.count), 32, 8, into: &ph)      // p_filesz
        return b + ph + notes
    }

    @Test func coreFileCountsThreadNotes() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("defib-bench-test-\(getpid()).core").path
        defer { unlink(path) }
        try Data(Self.tinyCore()).write(to: URL(fileURLWithPath: path))
        #expect(try CoreFile.threadCount(path: path) == 2)
    }

    @Test func coreFileRejectsWhatIsNotACore() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("defib-bench-test-\(getpid()).txt").path
        defer { unlink(path) }
        try Data(String(repeating: "not an elf ", count: 10).utf8).write(to: URL(fileURLWithPath: path))
        #expect(throws: CoreFile.FormatError.self) { try CoreFile.threadCount(path: path) }
        var truncated = Self.tinyCore()
        truncated.removeLast(100)
        try Data(truncated).write(to: URL(fileURLWithPath: path))
        let error = #expect(throws: CoreFile.FormatError.self) { try CoreFile.threadCount(path: path) }
        #expect(error?.description.contains(path) == true)
    }
}

@Suite("Bench report")
struct BenchReportTests {
    @Test func reportListsEveryTargetAndFailedParts() {
        let machine = MachineState(nproc: 2, memTotalBytes: 24 << 30, memAvailableBytes: 20 << 30, memFreeBytes: 19 << 30,
                                   cachedBytes: 1 << 30, dirtyBytes: 0, load: [1, 2, 3], kernel: "6.18", cpuModel: "cpu")
        let ok = PartEnvelope(part: "core", status: "ok", reason: nil, startedAt: nil,
                              targets: [TargetCheck(id: "a", target: "x ≥ 20×", measured: "83×", pass: true),
                                        TargetCheck(id: "b", target: "y | z", measured: "1.2×", pass: false)],
                              markdown: "## Core\n\nfigures\n")
        let failed = PartEnvelope(part: "peers", status: "FAIL", reason: "wrk not installed", startedAt: nil, targets: nil, markdown: nil)
        let md = ReportAssembler.render(parts: [ok, failed], command: "make bench", generatedAt: "2026-11-25T00:00:00Z",
                                        machine: machine, toolchain: nil)
        #expect(md.contains("by `make bench`"))
        #expect(md.contains("One run on one machine; ratios and medians"))
        #expect(md.contains("| **PASS** | core | x ≥ 20× | 83× |"))
        #expect(md.contains("| **FAIL** | core | y \\| z | 1.2× |"))
        #expect(md.contains("| **FAIL** | peers |"))
        #expect(md.contains("wrk not installed"))
        #expect(md.contains("## Core"))
    }

    @Test func aMissingPartFileIsAFailNamingTheFile() {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("defib-bench-empty-\(getpid())").path
        let envelope = ReportAssembler.load(part: "core", outDirectory: dir)
        #expect(envelope.status == "FAIL")
        #expect(envelope.reason?.contains("\(dir)/core.json") == true)
    }
}

@Suite("Bench readers on a real core", .serialized)
struct BenchRealCoreTests {
    /// A python3 process with 3 extra threads, its native core, then the note count and gdb's `info threads`.
    @Test(.timeLimit(.minutes(2)))
    func noteCountAndGdbAgreeOnARealMultiThreadedCore() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("defib-bench-real-\(getpid())").path
        try makeDirectories(dir)
        defer { removeTree(dir) }
        let script = "import threading, time\n"
            + "for _ in range(3): threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"
            + "time.sleep(60)\n"
        let child = try ManagedChild(name: "python3", argv: ["python3", "-c", script], workingDirectory: dir, logPath: "\(dir)/py.log")
        defer { child.stop(graceMs: 1000) }
        var threads = 0
        for _ in 0..<200 where threads < 4 {
            threads = ProcessStatus.read(pid: child.pid)?.threads ?? 0
            sleepMs(25)
        }
        try #require(threads == 4, "python3 never reached 4 threads: \(child.logTail)")
        let core = "\(dir)/py.core"
        let result = NativeCoreWriter.capture(pid: child.pid, path: core, options: NativeCoreOptions(budgetMs: 30_000))
        try #require(result.record.path != nil, "native capture failed: \(result.record.error ?? "")")
        #expect(try CoreFile.threadCount(path: core) == 4)
        let gdb = try ManagedChild(name: "gdb", argv: ["gdb", "-batch", "-nx", "-q", "-ex", "info threads", "/proc/\(child.pid)/exe", core],
                                   workingDirectory: dir, logPath: "\(dir)/gdb.out")
        let status = gdb.wait(timeoutMs: 60_000)
        gdb.stop(graceMs: 1000)
        #expect(status == .exited(code: 0))
        #expect(GdbOutput.threadCount(infoThreads: readTextFile("\(dir)/gdb.out") ?? "") == 4)
    }
}
