import DefibCore
import Foundation
import Testing

/// Runtime evidence through the real loop and fake effects: the pthread wait-for graph and the runtime come
/// with the observation before the core; a runtime's tool (py-spy, jcmd) answers next and its time comes out
/// of the core's budget; a Go service's goroutines are read by delve from the core after the close, before
/// gdb's stacks. Timings as in `SupervisorLoopTests` (the hang is judged at 803 ms).
@Suite struct SupervisorRuntimeEvidenceTests {
    /// worker-1 and worker-2 hold each other's mutex; worker-0 (the ping responder) waits behind them.
    static let cycle = [
        WaitForEdge(waiterTid: 101, waiterName: "worker-1", mutex: "0x5000", ownerTid: 102, ownerName: "worker-2", kind: "normal"),
        WaitForEdge(waiterTid: 102, waiterName: "worker-2", mutex: "0x4000", ownerTid: 101, ownerName: "worker-1", kind: "normal"),
        WaitForEdge(waiterTid: 100, waiterName: "worker-0", mutex: "0x4000", ownerTid: 101, ownerName: "worker-1", kind: "normal"),
    ]

    /// What defib's Starlark script prints through `dlv core` for a Go service whose writer waits for a read
    /// lock nobody holds any more (the go-rrdns fixture's story, trimmed).
    static let goroutines = """
        Type 'help' for list of commands.
        G\t1\t4
        F\truntime.gopark\t/usr/lib/go-1.19/src/runtime/proc.go\t364
        F\tmain.main\t/src/go-rrdns/main.go\t113
        G\t19\t4
        F\truntime.gopark\t/usr/lib/go-1.19/src/runtime/proc.go\t364
        F\tsync.runtime_SemacquireMutex\t/usr/lib/go-1.19/src/runtime/sema.go\t77
        F\tsync.(*RWMutex).Lock\t/usr/lib/go-1.19/src/sync/rwmutex.go\t152
        F\tmain.(*table).reload\t/src/go-rrdns/main.go\t54
        G\t20\t4
        F\truntime.gopark\t/usr/lib/go-1.19/src/runtime/proc.go\t364
        F\tsync.(*RWMutex).RLock\t/usr/lib/go-1.19/src/sync/rwmutex.go\t71
        F\tmain.(*table).resolve\t/src/go-rrdns/main.go\t43
        G\t21\t4
        F\truntime.gopark\t/usr/lib/go-1.19/src/runtime/proc.go\t364
        F\tsync.(*RWMutex).RLock\t/usr/lib/go-1.19/src/sync/rwmutex.go\t71
        F\tmain.(*table).resolve\t/src/go-rrdns/main.go\t43
        W\t20\t824634320444
        W\t21\t824634320444
        W\t19\t824634320440
        RW\t824634320432\t1\t-1073741821\t1
        """

    static let core = "/state/cores/core.svc.1.100"
    static let goFiles = ["/state/run/svc/goroutines.1.out", "/state/run/svc/goroutines.1.star", "/state/run/svc/goroutines.1.init"]

    static func goService(_ fake: FakeEffects) {
        fake.behaviours = [.hangs(afterMs: 300), .healthy]
        fake.runtime = DetectedRuntime(runtime: .go, reason: "/usr/bin/fake-service has a .go.buildinfo section")
        fake.runtimeStacks = RuntimeStacksOutcome(evidence: RuntimeEvidence(runtime: .go, tool: "dlv core (after the restart)"))
        fake.goroutinesText = goroutines
    }

    /// A native program: no tool runs; the wait-for graph read with the lock words proves the cycle, and the
    /// core shows a thread of it first.
    @Test func aLockCycleInTheWaitForGraphIsTheDiagnosisAndNoToolRuns() throws {
        let fake = FakeEffects()
        fake.behaviours = [.hangs(afterMs: 300), .healthy]
        fake.waitFor = Self.cycle
        let run = Run(fake)
        let request = try #require(fake.observeRequests.first { $0.executable })
        #expect(request.waitForGraph && request.detectRuntime)
        #expect(Array(fake.actions.drop { $0 != "insert 1" }.prefix(6)) == [
            "insert 1", "observe 100 none capture", "update 1", "writeCore 100 native first=101", "update 1", "signal 100 SIGKILL",
        ])
        #expect(!fake.actions.contains { $0.hasPrefix("runtimeStacks") || $0.hasPrefix("startGoroutines") })
        let incident = try #require(run.incidents.first)
        #expect(incident.waitFor == Self.cycle)
        #expect(incident.runtimeEvidence == RuntimeEvidence(runtime: .native))
        #expect(incident.diagnosis == "lock-cycle: thread 101 (worker-1) holds 0x4000 and waits for 0x5000 held by thread 102 (worker-2), which waits for 0x4000 held by 101; 1 more thread waits behind the cycle: 100 (worker-0)")
        #expect(!incident.notes.contains { $0.hasPrefix("runtime") }, "a detected native program needs no note")
        #expect(fake.coreRequests.first?.budgetMs == 1000, "no tool ran: the core has the whole budget")
        #expect(run.logs.contains("info wait-for graph: 3 thread(s) blocked on pthread mutexes"))
        #expect(incident.signature == incident.computedSignature())
    }

    /// Python: py-spy answers after the observation and before the diagnosis is stored; its 300 ms come out
    /// of the core's budget (1000 ms), and the unknown diagnosis says where the Python threads wait.
    @Test func aPythonServicesStacksAreReadBeforeTheCoreWhichGetsTheRestOfTheBudget() throws {
        let fake = FakeEffects()
        fake.behaviours = [.hangs(afterMs: 300), .healthy]
        fake.runtime = DetectedRuntime(runtime: .python, reason: "/usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0 is mapped")
        let frames = [RuntimeFrame(function: "acquire", file: "/usr/lib/python3.11/threading.py", line: 100),
                      RuntimeFrame(function: "transfer_stock", file: "/srv/shop/lock_order.py", line: 31)]
        let threads = [RuntimeThread(id: "101", name: "worker-1", state: "idle", frames: frames),
                       RuntimeThread(id: "102", name: "worker-2", state: "idle", frames: frames)]
        fake.runtimeStacks = RuntimeStacksOutcome(evidence: RuntimeEvidence(runtime: .python, tool: "py-spy dump --nonblocking, 300 ms",
                                                                            groups: RuntimeStacks.group(threads, runtime: .python), total: 2))
        fake.runtimeToolMs = 300
        let run = Run(fake)
        expectInOrder(fake.actions, ["insert 1", "observe 100 none capture", "runtimeStacks 100 python", "update 1", "writeCore 100 native first=100",
                                     "update 1", "signal 100 SIGKILL", "spawn 101"])
        #expect(fake.runtimeRequests == [RuntimeStacksRequest(pid: 100, runtime: .python, budgetMs: 500, home: "/state/run/svc")],
                "the runtime's budget is at most half the capture budget")
        #expect(fake.coreRequests.first?.budgetMs == 700)
        #expect(run.logs.contains("capturing a core of pid 100 (native, budget 700 ms)"))
        let incident = try #require(run.incidents.first)
        #expect(incident.runtimeEvidence == fake.runtimeStacks?.evidence)
        #expect(incident.diagnosis.hasPrefix("unknown: ") && incident.diagnosis.contains("; python threads wait in 2 × transfer_stock (lock_order.py:31)"))
        #expect(incident.diagnosisEvidence?.contains("runtime stacks: python threads wait in 2 × transfer_stock (lock_order.py:31)") == true)
        #expect(incident.notes.contains("runtime: python (/usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0 is mapped)"))
        // The tool's time is on the critical path, bounded: the kill comes 300 ms (tool) + 40 ms (core) after the hang was declared.
        #expect(incident.killedAt == fake.wallBase.addingTimeInterval(0.803 + 0.3 + 0.04))
        #expect(run.logs.contains("info runtime python: 2 stack(s) read in 300 ms"))
    }

    /// Under a service manager's watchdog the loop waits for the tool as it waits for the core: a bounded helper
    /// keeps the manager fed until the tool's budget plus a second.
    @Test func theManagersWatchdogIsFedWhileTheToolRuns() throws {
        let fake = FakeEffects()
        fake.behaviours = [.hangs(afterMs: 300), .healthy]
        fake.runtime = DetectedRuntime(runtime: .java, reason: "/usr/lib/jvm/java-17-openjdk-amd64/lib/server/libjvm.so is mapped")
        fake.runtimeToolMs = 400
        _ = Run(fake, stopAtMs: 2000, managerWatchdogUsec: 1_000_000, managerListening: true)
        expectInOrder(fake.actions, ["runtimeStacks 100 java keeping the manager's watchdog fed", "writeCore 100 native first=100 keeping the manager's watchdog fed"])
        let keepAlive = try #require(fake.runtimeRequests.first?.managerKeepAlive)
        #expect(keepAlive.periodNs == 400_000_000 && keepAlive.untilNs == (803 + 500 + 1000) * 1_000_000)
        #expect(fake.coreRequests.first?.budgetMs == 600 && fake.coreRequests.first?.managerKeepAlive?.untilNs == (803 + 400 + 600 + 1000) * 1_000_000)
    }

    /// A forced runtime is not detected; the JVM's own deadlock report becomes the diagnosis when the native
    /// evidence explains nothing, and a tool that failed is named in the incident.
    @Test func aForcedJavaRuntimeTakesTheJVMsDeadlockReport() throws {
        let fake = FakeEffects()
        fake.behaviours = [.hangs(afterMs: 300), .healthy]
        let jvm = HangDiagnosis(kind: .lockCycle, sentence: "thread 101 (payments) holds object 0x1 (a java.lang.Object) and waits for object 0x2 (a java.lang.Object) held by thread 102 (reconciler), which waits for object 0x1 (a java.lang.Object) held by 101",
                                evidence: ["the JVM's own report (jcmd Thread.print): Found one Java-level deadlock"])
        fake.runtimeStacks = RuntimeStacksOutcome(evidence: RuntimeEvidence(runtime: .java, tool: "jcmd Thread.print, 380 ms"), diagnosis: jvm)
        let run = Run(fake, config: testConfig { $0.capture.runtime = .java })
        #expect(fake.observeRequests.first { $0.executable }?.detectRuntime == false)
        let incident = try #require(run.incidents.first)
        #expect(incident.diagnosis == jvm.line)
        #expect(incident.diagnosisEvidence?.first == "the JVM's own report (jcmd Thread.print): Found one Java-level deadlock")
        #expect(incident.notes.contains("runtime: java (forced by capture.runtime)"))
        #expect(incident.signature == incident.computedSignature() && incident.signature != nil)

        let missing = FakeEffects()
        missing.behaviours = [.hangs(afterMs: 300), .healthy]
        missing.runtimeStacks = RuntimeStacksOutcome(evidence: RuntimeEvidence(runtime: .java, error: "jcmd: not found; install a JDK (Debian: `apt-get install openjdk-17-jdk-headless`)"))
        let without = try #require(Run(missing, config: testConfig { $0.capture.runtime = .java }).incidents.first)
        #expect(without.diagnosis.hasPrefix("unknown: "))
        #expect(without.runtimeEvidence?.error == "jcmd: not found; install a JDK (Debian: `apt-get install openjdk-17-jdk-headless`)")
        #expect(without.notes.contains("runtime stacks: jcmd: not found; install a JDK (Debian: `apt-get install openjdk-17-jdk-headless`)"))
        #expect(without.capture?.path == Self.core, "the core is still written")
    }

    /// Go: nothing but a check for delve before the kill; after the close delve reads the goroutines from the
    /// core (its files removed once read), their RWMutex diagnosis replaces the unknown one, then gdb's stacks.
    @Test func aGoServicesGoroutinesAreReadFromTheCoreAfterTheCloseThenGdbsStacks() throws {
        let fake = FakeEffects()
        Self.goService(fake)
        let run = Run(fake)
        expectInOrder(fake.actions, ["observe 100 none capture", "runtimeStacks 100 go", "update 1", "writeCore 100 native first=100"])
        #expect(fake.coreRequests.first?.budgetMs == 1000)
        #expect(Array(fake.actions.drop { !$0.hasPrefix("startGoroutines") }) == [
            "startGoroutines \(Self.core)", "locks", "readGoroutines",
            "remove \(Self.goFiles[0])", "remove \(Self.goFiles[1])", "remove \(Self.goFiles[2])", "update 1",
            "startStacks \(Self.core)", "readStacks", "remove \(Self.core).stacks.txt", "update 1",
            "scanCores", "signal 101 SIGTERM", "killLeftovers 101",
        ])
        #expect(fake.goroutinesRequests == [GoroutinesRequest(binary: "/usr/bin/fake-service", core: Self.core, directory: "/state/run/svc", incidentID: 1)])
        #expect(Self.goFiles.allSatisfy { fake.files[$0] == nil }, "delve's files are gone")
        let incident = try #require(run.incidents.first)
        let evidence = try #require(incident.runtimeEvidence)
        #expect(evidence.tool == "dlv core, 50 ms after the restart" && evidence.total == 4 && evidence.error == nil)
        #expect(evidence.groups.first?.count == 2 && evidence.groups.first?.headline == "main.(*table).resolve (main.go:43)")
        #expect(incident.diagnosis == "leaked-read-lock: 2 goroutines wait in RWMutex.RLock behind 1 in RWMutex.Lock (main.(*table).reload); the writer waits for 1 reader and no goroutine is inside a read section")
        #expect(incident.diagnosisEvidence?.contains { $0.hasPrefix("sync.RWMutex at 0xc000092630 read from the core") } == true)
        #expect(incident.stacks == fake.stacksText, "gdb's stacks still follow")
        #expect(incident.signature == incident.computedSignature())
        #expect(incident.notes.contains("runtime: go (/usr/bin/fake-service has a .go.buildinfo section)"))
        #expect(run.logs.contains("goroutines for incident 1: 4 in 3 group(s); diagnosis leaked-read-lock: "))
    }

    /// No core, delve missing, or delve killed at its time limit: the incident says why there are no
    /// goroutines, and the rest of the evidence still lands.
    @Test func goroutinesThatCannotBeReadSayWhy() throws {
        let noCore = FakeEffects()
        Self.goService(noCore)
        let a = try #require(Run(noCore, config: testConfig { $0.capture.method = .none }).incidents.first)
        #expect(!noCore.actions.contains { $0.hasPrefix("startGoroutines") })
        #expect(a.runtimeEvidence?.error == "goroutines are read from the core, and there is none (capture.method = none)")
        #expect(a.notes.last == "runtime stacks: goroutines are read from the core, and there is none (capture.method = none)")

        let noDelve = FakeEffects()
        Self.goService(noDelve)
        noDelve.goroutinesFailure = "dlv: not found; install delve (Debian: `apt-get install delve`)"
        let runB = Run(noDelve)
        let b = try #require(runB.incidents.first)
        #expect(b.runtimeEvidence?.error == "dlv: not found; install delve (Debian: `apt-get install delve`)")
        #expect(b.notes.contains("runtime stacks: dlv: not found; install delve (Debian: `apt-get install delve`)"))
        #expect(b.stacks == noDelve.stacksText, "gdb's stacks are still taken")
        #expect(runB.logs.contains("error could not read goroutines from the core: dlv: not found"))

        let slow = FakeEffects()
        Self.goService(slow)
        slow.helperExit = .exited(code: 137)   // `timeout -s KILL` killed delve
        let c = try #require(Run(slow).incidents.first)
        #expect(c.runtimeEvidence?.error == "dlv did not finish within 60 s")
        #expect(c.notes.contains("runtime stacks: dlv did not finish within 60 s") && c.diagnosis.hasPrefix("unknown: "))
        #expect(Self.goFiles.allSatisfy { slow.files[$0] == nil })
    }

    /// delve still running when defib stops: killed at the bound, its files removed, the incident says so.
    @Test func delveStillRunningAtShutdownIsStoppedAndNoted() throws {
        let fake = FakeEffects()
        Self.goService(fake)
        fake.helperNeverEnds = true
        let run = Run(fake, stopAtMs: 2000)
        #expect(run.code == 0)
        expectInOrder(fake.actions, ["startGoroutines \(Self.core)", "signal 101 SIGTERM", "killLeftovers 101", "stopHelper 9000",
                                     "remove \(Self.goFiles[0])", "remove \(Self.goFiles[1])", "remove \(Self.goFiles[2])", "update 1"])
        #expect(!fake.actions.contains { $0.hasPrefix("startStacks") || $0 == "readGoroutines" })
        let incident = try #require(run.incidents.first)
        #expect(incident.notes.last == "goroutines not read: defib stopped before delve finished (the core stays; `dlv core` reads it)")
        #expect(incident.runtimeEvidence?.groups.isEmpty == true && incident.capture?.path == Self.core)
    }
}
