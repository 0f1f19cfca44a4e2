import DefibCore
import Testing

/// Reading delve's, py-spy's and the JVM's output (as the real tools print it, from the fixtures), grouping
/// stacks with the service's own frames first, and the runtime diagnoses.
struct RuntimeStacksTests {
    /// What defib's Starlark script printed through `dlv core` for Tests/Fixtures/go-rrdns after its hang
    /// (trimmed to the goroutines that matter; addresses as delve printed them).
    static let goDump = """
        Type 'help' for list of commands.
        G\t1\t4
        F\truntime.gopark\t/usr/lib/go-1.19/src/runtime/proc.go\t364
        F\tinternal/poll.(*FD).Accept\t/usr/lib/go-1.19/src/internal/poll/fd_unix.go\t614
        F\tnet.(*UnixListener).Accept\t/usr/lib/go-1.19/src/net/unixsock.go\t260
        F\tmain.main\t/src/go-rrdns/main.go\t113
        F\truntime.main\t/usr/lib/go-1.19/src/runtime/proc.go\t250
        G\t2\t4
        F\truntime.gopark\t/usr/lib/go-1.19/src/runtime/proc.go\t364
        F\truntime.forcegchelper\t/usr/lib/go-1.19/src/runtime/proc.go\t302
        G\t19\t4
        F\truntime.gopark\t/usr/lib/go-1.19/src/runtime/proc.go\t364
        F\truntime.semacquire1\t/usr/lib/go-1.19/src/runtime/sema.go\t150
        F\tsync.runtime_SemacquireMutex\t/usr/lib/go-1.19/src/runtime/sema.go\t77
        F\tsync.(*RWMutex).Lock\t/usr/lib/go-1.19/src/sync/rwmutex.go\t152
        F\tmain.(*table).reload\t/src/go-rrdns/main.go\t54
        F\tmain.reloadLoop\t/src/go-rrdns/main.go\t63
        G\t20\t4
        F\truntime.gopark\t/usr/lib/go-1.19/src/runtime/proc.go\t364
        F\tsync.(*RWMutex).RLock\t/usr/lib/go-1.19/src/sync/rwmutex.go\t71
        F\tmain.(*table).resolve\t/src/go-rrdns/main.go\t43
        F\tmain.queryLoop\t/src/go-rrdns/main.go\t70
        G\t21\t4
        F\truntime.gopark\t/usr/lib/go-1.19/src/runtime/proc.go\t364
        F\tsync.(*RWMutex).RLock\t/usr/lib/go-1.19/src/sync/rwmutex.go\t71
        F\tmain.(*table).resolve\t/src/go-rrdns/main.go\t43
        F\tmain.queryLoop\t/src/go-rrdns/main.go\t70
        G\t6\t4
        F\truntime.gopark\t/usr/lib/go-1.19/src/runtime/proc.go\t364
        F\tsync.(*RWMutex).RLock\t/usr/lib/go-1.19/src/sync/rwmutex.go\t71
        F\tmain.(*table).resolve\t/src/go-rrdns/main.go\t43
        F\tmain.servePing\t/src/go-rrdns/main.go\t85
        W\t20\t824634320444
        W\t21\t824634320444
        W\t6\t824634320444
        W\t19\t824634320440
        RW\t824634320432\t1\t-1073741820\t1
        """

    @Test func goroutinesGroupWithTheServicesFramesFirst() throws {
        let dump = try GoCoreDump.parse(Self.goDump)
        #expect(dump.goroutines.count == 6 && dump.semaphoreWaits["19"] == 824634320440 && dump.rwMutexes.count == 1)
        let groups = RuntimeStacks.group(dump.goroutines, runtime: .go)
        #expect(groups.first?.count == 2 && groups.first?.headline == "main.(*table).resolve (main.go:43)")
        #expect(groups.first?.runtimeFrames.map(\.function) == ["runtime.gopark", "sync.(*RWMutex).RLock"])
        #expect(groups.last?.frames.isEmpty == true, "runtime-only goroutines (forcegc) come last")
        let text = RuntimeStacks.render(RuntimeEvidence(runtime: .go, tool: "dlv core", groups: groups, total: 6))
        #expect(text.hasPrefix("go: 6 goroutines in 5 groups (dlv core)"))
        #expect(text.contains("2 × goroutines [waiting]: 20, 21\n      main.(*table).resolve (main.go:43)\n      main.queryLoop (main.go:70)\n      — runtime: runtime.gopark ← sync.(*RWMutex).RLock"))
    }

    @Test func aReadLockNobodyHoldsIsALeakedReadLockWithItsProof() throws {
        let d = try #require(RuntimeDiagnoser.goRWMutex(try GoCoreDump.parse(Self.goDump)))
        #expect(d.line == "leaked-read-lock: 3 goroutines wait in RWMutex.RLock behind 1 in RWMutex.Lock (main.(*table).reload); the writer waits for 1 reader and no goroutine is inside a read section")
        #expect(d.evidence.contains("sync.RWMutex at 0xc000092630 read from the core: readerCount -1073741820 (4 read locks counted, a writer pending), readerWait 1"))
        #expect(d.evidence.contains("counted read locks = the 3 waiting + the 1 the writer waits for: every reader is accounted for"))
    }

    @Test func aGoroutineInsideTheReadSectionIsASlowHolder() throws {
        let busy = Self.goDump + "\nG\t40\t3\nF\tsyscall.Syscall\t/usr/lib/go-1.19/src/syscall/syscall_linux.go\t68\nF\tmain.(*table).resolve\t/src/go-rrdns/main.go\t45\n"
        let d = try #require(RuntimeDiagnoser.goRWMutex(try GoCoreDump.parse(busy)))
        #expect(d.kind == .slowHolder && d.sentence.hasPrefix("goroutine 40 is inside a read section of the RWMutex at 0xc000092630 (main.(*table).resolve (main.go:45))"))
    }

    @Test func badToolOutputIsAnErrorNamingTheLine() {
        #expect(throws: RuntimeDumpError.self) { try GoCoreDump.parse("G\tx\t4\n") }
        #expect(throws: RuntimeDumpError.self) { try GoCoreDump.parse("could not open core\n") }
        #expect(throws: RuntimeDumpError.self) { try PySpyDump.parse("Error: Permission denied") }
        #expect(throws: RuntimeDumpError.self) { try JavaThreadDump.parse("25102:\ncom.sun.tools.attach.AttachNotSupportedException: Unable to open socket file") }
    }

    /// py-spy 0.4.3 `dump --json --nonblocking` of Tests/Fixtures/py-lock-order (one thread shown whole).
    static let pySpy = """
        [{"pid":23370,"thread_id":140377394214592,"thread_name":"audit","os_thread_id":23621,"active":false,"owns_gil":false,
          "frames":[{"name":"audit_ledger","filename":"/src/py-lock-order/lock_order.py","module":null,"short_filename":"lock_order.py","line":33,"locals":null,"is_entry":true,"is_shim_entry":false},
                    {"name":"Thread.run","filename":"/usr/lib/python3.11/threading.py","module":null,"short_filename":"threading.py","line":982,"locals":null,"is_entry":false,"is_shim_entry":false},
                    {"name":"Thread._bootstrap","filename":"/usr/lib/python3.11/threading.py","module":null,"short_filename":"threading.py","line":1002,"locals":null,"is_entry":true,"is_shim_entry":true}]},
         {"pid":23370,"thread_id":140377402607296,"thread_name":"MainThread","os_thread_id":23370,"active":false,"owns_gil":false,
          "frames":[{"name":"answer_ping","filename":"/src/py-lock-order/lock_order.py","line":41},{"name":"main","filename":"/src/py-lock-order/lock_order.py","line":67},
                    {"name":"<module>","filename":"/src/py-lock-order/lock_order.py","line":71}]}]
        """

    @Test func pythonThreadsKeepTheirNamesAndFunctions() throws {
        let threads = try PySpyDump.parse(Self.pySpy)
        #expect(threads.map(\.id) == ["23621", "23370"] && threads.map(\.name) == ["audit", "MainThread"] && threads[0].state == "idle")
        let groups = RuntimeStacks.group(threads, runtime: .python)
        #expect(groups[0].frames.map(\.function) == ["audit_ledger"] && groups[0].runtimeFrames.map(\.function) == ["Thread.run", "Thread._bootstrap"])
        let evidence = RuntimeEvidence(runtime: .python, groups: groups, total: 2)
        let d = RuntimeDiagnoser.combine(native: HangDiagnosis(kind: .unknown, sentence: "no lock explains the silence"), runtime: nil, evidence: evidence)
        #expect(d.sentence == "no lock explains the silence; python threads wait in 1 × audit_ledger (lock_order.py:33); 1 × answer_ping (lock_order.py:41)")
    }

    /// `jcmd PID Thread.print -l` of Tests/Fixtures/java-lock-order (OpenJDK 17; trimmed).
    static let jcmd = """
        25102:
        Full thread dump OpenJDK 64-Bit Server VM (17.0.15+6-Debian-1deb12u1 mixed mode, sharing):

        "main" #1 prio=5 os_prio=0 cpu=85.08ms elapsed=10.74s tid=0x00007f62c0017ed0 nid=0x620f waiting for monitor entry  [0x00007f62c7d1e000]
           java.lang.Thread.State: BLOCKED (on object monitor)
        \tat LockOrder.answerPing(LockOrder.java:58)
        \t- waiting to lock <0x000000069ec1ba70> (a java.lang.Object)
        \tat LockOrder.main(LockOrder.java:79)

        "payments" #12 daemon prio=5 os_prio=0 cpu=0.37ms elapsed=10.31s tid=0x00007f62c011b4d0 nid=0x6237 waiting for monitor entry  [0x00007f629d49d000]
           java.lang.Thread.State: BLOCKED (on object monitor)
        \tat LockOrder.pay(LockOrder.java:38)
        \t- waiting to lock <0x000000069ec1ba80> (a java.lang.Object)
        \t- locked <0x000000069ec1ba70> (a java.lang.Object)
        \tat java.lang.Thread.run(java.base@17.0.15/Thread.java:840)

        "reconciler" #13 daemon prio=5 os_prio=0 cpu=0.43ms elapsed=10.31s tid=0x00007f62c011c480 nid=0x6238 waiting for monitor entry  [0x00007f629d39d000]
           java.lang.Thread.State: BLOCKED (on object monitor)
        \tat LockOrder.reconcile(LockOrder.java:46)
        \t- waiting to lock <0x000000069ec1ba70> (a java.lang.Object)
        \t- locked <0x000000069ec1ba80> (a java.lang.Object)
        \tat java.lang.Thread.run(java.base@17.0.15/Thread.java:840)

        "VM Thread" os_prio=0 cpu=0.55ms elapsed=10.51s tid=0x00007f62c00f4430 nid=0x6221 runnable

        JNI global refs: 6, weak refs: 0


        Found one Java-level deadlock:
        =============================
        "main":
          waiting to lock monitor 0x00007f6228001680 (object 0x000000069ec1ba70, a java.lang.Object),
          which is held by "payments"

        "payments":
          waiting to lock monitor 0x00007f621c019690 (object 0x000000069ec1ba80, a java.lang.Object),
          which is held by "reconciler"

        "reconciler":
          waiting to lock monitor 0x00007f6228001680 (object 0x000000069ec1ba70, a java.lang.Object),
          which is held by "payments"

        Java stack information for the threads listed above:
        ===================================================
        "main":
        \tat LockOrder.answerPing(LockOrder.java:58)

        Found 1 deadlock.
        """

    @Test func theJVMsDeadlockReportIsALockCycleNamingThreadsAndMonitors() throws {
        let dump = try JavaThreadDump.parse(Self.jcmd)
        #expect(dump.threads.map(\.name) == ["main", "payments", "reconciler", "VM Thread"])
        #expect(dump.threads[1].id == "25143" && dump.threads[1].state == "BLOCKED (on object monitor)")
        #expect(dump.threads[1].frames.first == RuntimeFrame(function: "LockOrder.pay", file: "LockOrder.java", line: 38))
        #expect(dump.deadlockEdges.count == 3)
        let d = try #require(RuntimeDiagnoser.javaDeadlock(dump))
        #expect(d.line == "lock-cycle: thread 25143 (payments) holds object 0x000000069ec1ba70 (a java.lang.Object) and waits for object 0x000000069ec1ba80 (a java.lang.Object) held by thread 25144 (reconciler), which waits for object 0x000000069ec1ba70 (a java.lang.Object) held by 25143; 1 more thread waits behind the cycle: thread 25103 (main)")
        let groups = RuntimeStacks.group(dump.threads, runtime: .java)
        #expect(groups.last?.members == ["25121 VM Thread"], "a JVM thread with no Java frames comes last")
        let payments = try #require(groups.first { $0.members == ["25143 payments"] })
        #expect(payments.frames.map(\.function) == ["LockOrder.pay", "- waiting to lock <0x000000069ec1ba80> (a java.lang.Object)",
                                                     "- locked <0x000000069ec1ba70> (a java.lang.Object)"])
        #expect(payments.runtimeFrames.map(\.function) == ["java.lang.Thread.run"])
        // A JDK thread's monitors stay with the JDK's frames: its group has none of the service's.
        let finalizer = try JavaThreadDump.parse("""
            "Finalizer" #3 daemon prio=8 os_prio=0 cpu=0.20ms elapsed=10.47s tid=0x00007f62c00f97a0 nid=0x6224 in Object.wait()  [0x00007f62c4744000]
               java.lang.Thread.State: WAITING (on object monitor)
            \tat java.lang.Object.wait(java.base@17.0.15/Native Method)
            \t- waiting on <0x000000069ec0d798> (a java.lang.ref.ReferenceQueue$Lock)
            \tat java.lang.ref.ReferenceQueue.remove(java.base@17.0.15/ReferenceQueue.java:155)
            \t- locked <0x000000069ec0d798> (a java.lang.ref.ReferenceQueue$Lock)
            """)
        let g = try #require(RuntimeStacks.group(finalizer.threads, runtime: .java).first)
        #expect(g.frames.isEmpty && g.runtimeFrames.map(\.function) == ["java.lang.Object.wait", "java.lang.ref.ReferenceQueue.remove"])
        // A proven native diagnosis stands; an unknown one takes the JVM's.
        let native = HangDiagnosis(kind: .slowHolder, sentence: "x")
        #expect(RuntimeDiagnoser.combine(native: native, runtime: d, evidence: nil).kind == .slowHolder)
        #expect(RuntimeDiagnoser.combine(native: HangDiagnosis(kind: .unknown, sentence: "y"), runtime: d, evidence: nil).kind == .lockCycle)
    }

    @Test func goStandardLibraryFramesAreTheRuntimesAndModuleFramesTheServices() {
        func isRuntime(_ fn: String, _ file: String) -> Bool {
            RuntimeStacks.isRuntimeFrame(RuntimeFrame(function: fn, file: file), runtime: .go, goroot: "/usr/lib/go-1.19/src/")
        }
        #expect(isRuntime("sync.(*RWMutex).RLock", "/usr/lib/go-1.19/src/sync/rwmutex.go"))
        #expect(isRuntime("internal/poll.(*FD).Accept", "/usr/lib/go-1.19/src/internal/poll/fd_unix.go"))
        #expect(!isRuntime("main.(*table).resolve", "/src/main.go"))
        #expect(!isRuntime("github.com/acme/dns.(*Server).serve", "/root/go/pkg/mod/github.com/acme/dns/server.go"))
        #expect(!isRuntime("rrdns/table.Lookup", "/src/rrdns/table/table.go"))
        // Without a GOROOT seen in the stacks, the import path decides.
        #expect(RuntimeStacks.isRuntimeFrame(RuntimeFrame(function: "sync.(*Mutex).Lock", file: "/opt/go/src/sync/mutex.go"), runtime: .go))
        #expect(!RuntimeStacks.isRuntimeFrame(RuntimeFrame(function: "github.com/acme/dns.Serve", file: "/x/dns.go"), runtime: .go))
        #expect(RuntimeStacks.isRuntimeFrame(RuntimeFrame(function: "java.lang.Thread.run"), runtime: .java))
    }
}
