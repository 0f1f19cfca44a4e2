import DefibPOSIX
import Foundation
import Glibc
import Testing

/// The fixtures under Tests/Fixtures, built once per test run into the build directory (cc, go build, javac).
enum RuntimeFixtures {
    static var source: String { (#filePath as NSString).deletingLastPathComponent + "/../Fixtures" }
    static var output: String { Binaries.directory + "/runtime-fixtures" }

    static func prepareOutput() throws {
        try FileManager.default.createDirectory(atPath: output, withIntermediateDirectories: true)
    }

    /// The C program: two named threads, two pthread mutexes in opposite order.
    static let c: Result<String, TestFailure> = build("c-lock-order") {
        let exe = "\(output)/lock_order_c"
        let r = try runCommand(["cc", "-O0", "-g", "-pthread", "-o", exe, "\(source)/c-lock-order/lock_order.c"])
        guard r.code == 0 else { throw TestFailure("cc failed: \(r.stderr)") }
        return exe
    }

    /// The Go program, `go build` with symbols (not stripped), its own module and build cache in the build directory.
    static let go: Result<String, TestFailure> = build("go-rrdns") {
        let exe = "\(output)/rrdns"
        let r = try runCommand(["go", "build", "-buildvcs=false", "-o", exe, "."],
                               env: ["GOCACHE": "\(output)/go-cache", "GOPATH": "\(output)/gopath", "GOFLAGS": "-mod=mod", "GO111MODULE": "on",
                                     "PWD": "\(source)/go-rrdns"],
                               workingDirectory: "\(source)/go-rrdns", timeoutMs: 300_000)
        guard r.code == 0 else { throw TestFailure("go build failed: \(r.stderr)") }
        return exe
    }

    /// The Java program's classes.
    static let java: Result<String, TestFailure> = build("java-lock-order") {
        let classes = "\(output)/java-classes"
        let r = try runCommand(["javac", "-d", classes, "\(source)/java-lock-order/LockOrder.java"], timeoutMs: 300_000)
        guard r.code == 0 else { throw TestFailure("javac failed: \(r.stderr)") }
        return classes
    }

    static func build(_ what: String, _ body: () throws -> String) -> Result<String, TestFailure> {
        do {
            try prepareOutput()
            return .success(try body())
        } catch let e as TestFailure {
            return .failure(e)
        } catch {
            return .failure(TestFailure("\(what): \(error)"))
        }
    }
}

/// Each fixture hangs under the real `defib run`; the incident carries the runtime's evidence and the diagnosis
/// it proves, the core opens, and the service is restarted.
@Suite(.serialized, .timeLimit(.minutes(3)))
struct RuntimeEvidenceTests {
    /// Supervises `argv` (hanging once, after 5 pings), waits for the first incident to be recovered and for
    /// `ready` to hold on its `info --json`, then stops defib. Returns that JSON and the state directory.
    static func hangOnce(_ name: String, argv: [String], extra: String = "", heartbeat: String = "", env: String = "", dir: Scratch,
                         defibEnv: [String: String] = [:],
                         ready: ([String: Any]) -> Bool = { _ in true }) throws -> [String: Any] {
        let state = "\(dir.path)/state"
        let argvTOML = argv.map { "\"\($0)\"" }.joined(separator: ", ")
        try """
            state_dir = "\(state)"
            [service]
            name = "\(name)"
            argv = [\(argvTOML)]
            env = { HANG_AFTER = "5", HANG_ONCE = "\(dir.path)/hung-once"\(env) }
            [heartbeat]
            \(heartbeat)
            interval_ms = 100
            deadline_ms = 1000
            [capture]
            method = "native"
            stacks = true
            \(extra)
            [restart]
            intensity_max = 20
            backoff_initial_ms = 50
            backoff_max_ms = 50
            """.write(toFile: "\(dir.path)/defib.toml", atomically: true, encoding: .utf8)
        let defib = try Background([Binaries.defib, "run", "--config", "\(dir.path)/defib.toml"], env: defibEnv, log: "\(dir.path)/defib.log")
        defer { defib.stop() }
        var info: [String: Any] = [:]
        let done = try waitUntil(timeoutMs: 90_000) {
            guard let first = ((try? incidentsJSON(stateDir: state)) ?? []).last, first["outcome"] as? String == "recovered",
                  let id = first["id"] as? Int else { return false }
            let r = try runCommand([Binaries.defib, "incidents", "info", String(id), "--state-dir", state, "--json"])
            guard r.code == 0, let object = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any] else { return false }
            info = object
            return object["stacks"] is String && ready(object)
        }
        #expect(done, "no complete incident: \(info)\n\(defib.log.suffix(3000))")
        #expect((info["new_pid"] as? Int).map { $0 != info["pid"] as? Int } == true, "restarted")
        return info
    }

    static func runtimeStacksText(_ info: [String: Any]) -> String {
        guard let groups = info["runtime_stacks"], let data = try? JSONSerialization.data(withJSONObject: groups) else { return "" }
        return String(decoding: data, as: UTF8.self)
    }

    @Test func cThreadsInALockOrderCycleAreProvedDeadlockedByName() throws {
        let exe = try RuntimeFixtures.c.get()
        let dir = Scratch("rt-c"); defer { dir.remove() }
        let info = try Self.hangOnce("c-lock-order", argv: [exe], dir: dir)
        let diagnosis = info["diagnosis"] as? String ?? ""
        let edges = info["wait_for"] as? [[String: Any]] ?? []
        #expect(diagnosis.hasPrefix("lock-cycle: "), "\(diagnosis)")
        #expect(edges.count == 3, "one edge per thread blocked on a mutex: \(edges)")
        let byName = Dictionary(edges.map { ($0["waiter_name"] as? String ?? "", $0["waiter_tid"] as? Int ?? 0) }, uniquingKeysWith: { a, _ in a })
        for name in ["worker-a", "worker-b"] {
            let tid = try #require(byName[name], "\(name) in wait_for: \(edges)")
            #expect(diagnosis.contains("thread \(tid) (\(name))") || diagnosis.contains("held by \(tid)") && diagnosis.contains("(\(name))"), "\(diagnosis)")
        }
        #expect(byName["ping"] != nil && diagnosis.contains("(ping)"), "the ping responder waits behind the cycle: \(diagnosis)")
        #expect(edges.allSatisfy { $0["mutex_kind"] as? String == "normal" })
        #expect(info["runtime"] as? String == "native")
        // The core opens in gdb, and its stacks show the two workers in pthread_mutex_lock.
        let stacks = info["stacks"] as? String ?? ""
        #expect(stacks.contains("worker_a") && stacks.contains("worker_b") && stacks.contains("lock"), "\(stacks.prefix(2000))")
        let text = try runCommand([Binaries.defib, "incidents", "info", String(info["id"] as? Int ?? 0), "--state-dir", "\(dir.path)/state"])
        #expect(text.stdout.contains("Wait-for (pthread mutexes)") && text.stdout.contains("worker-a"), "\(text.stdout.prefix(3000))")
    }

    @Test func aGoServiceLeakingARLockIsDiagnosedFromItsGoroutinesInTheCore() throws {
        let exe = try RuntimeFixtures.go.get()
        let dir = Scratch("rt-go"); defer { dir.remove() }
        // Watched as a server that knows nothing of defib: a tcp probe on its own port, not the control channel.
        let port = freePort()
        let info = try Self.hangOnce("go-rrdns", argv: [exe], heartbeat: """
            source = "tcp"
            probe = "127.0.0.1:\(port)"
            probe_send = "ping 1"
            probe_expect = "pong 1"
            """, env: ", LISTEN = \"127.0.0.1:\(port)\"", dir: dir) { object in
            !(object["runtime_stacks"] as? [Any] ?? []).isEmpty || object["runtime_error"] is String
        }
        let diagnosis = info["diagnosis"] as? String ?? ""
        #expect(info["runtime"] as? String == "go")
        #expect((info["cause_detail"] as? String ?? "").contains("tcp"), "the probe's miss: \(info["cause_detail"] ?? "")")
        #expect(info["runtime_error"] is NSNull, "\(info["runtime_error"] ?? "")")
        #expect(diagnosis.hasPrefix("leaked-read-lock: "), "\(diagnosis)\n\(info["notes"] ?? "")")
        #expect(diagnosis.contains("RWMutex.Lock (main.(*table).reload)") && diagnosis.contains("the writer waits for 1 reader"), "\(diagnosis)")
        let stacks = Self.runtimeStacksText(info)
        #expect(stacks.contains("RLock") && stacks.contains("main.(*table).resolve"), "\(stacks.prefix(2000))")
        let evidence = info["diagnosis_evidence"] as? [String] ?? []
        #expect(evidence.contains { $0.hasPrefix("sync.RWMutex at 0x") && $0.contains("readerWait 1") }, "\(evidence)")
        let text = try runCommand([Binaries.defib, "incidents", "info", String(info["id"] as? Int ?? 0), "--state-dir", "\(dir.path)/state"])
        let runtimeAt = text.stdout.range(of: "Runtime stacks")?.lowerBound
        let nativeAt = text.stdout.range(of: "\nStacks\n")?.lowerBound
        #expect(runtimeAt != nil && nativeAt != nil && runtimeAt! < nativeAt!, "Runtime stacks above the native ones:\n\(text.stdout.prefix(4000))")
    }

    @Test func aPythonServicesIncidentHasItsPythonFunctions() throws {
        let dir = Scratch("rt-py"); defer { dir.remove() }
        let info = try Self.hangOnce("py-lock-order", argv: ["python3", "\(RuntimeFixtures.source)/py-lock-order/lock_order.py"], dir: dir)
        #expect(info["runtime"] as? String == "python")
        #expect(info["runtime_error"] is NSNull, "\(info["runtime_error"] ?? "")")
        let stacks = Self.runtimeStacksText(info)
        for function in ["transfer_stock", "audit_ledger", "answer_ping"] {
            #expect(stacks.contains(function), "\(function) in \(stacks.prefix(2000))")
        }
        #expect((info["diagnosis"] as? String ?? "").contains("python threads wait in"), "\(info["diagnosis"] ?? "")")
    }

    @Test func aJavaDeadlockIsTheJVMsOwnLockCycle() throws {
        let classes = try RuntimeFixtures.java.get()
        let dir = Scratch("rt-java"); defer { dir.remove() }
        let info = try Self.hangOnce("java-lock-order", argv: ["java", "-Xmx64m", "-XX:+UseSerialGC", "-cp", classes, "LockOrder"], dir: dir)
        let diagnosis = info["diagnosis"] as? String ?? ""
        #expect(info["runtime"] as? String == "java")
        #expect(diagnosis.hasPrefix("lock-cycle: "), "\(diagnosis)\n\(info["notes"] ?? "")")
        #expect(diagnosis.contains("(payments)") && diagnosis.contains("(reconciler)"), "\(diagnosis)")
        let stacks = Self.runtimeStacksText(info)
        #expect(stacks.contains("LockOrder.pay") && stacks.contains("LockOrder.reconcile"), "\(stacks.prefix(2000))")
    }

    @Test func aMissingToolIsNamedWithItsPackageAndTheRestOfTheEvidenceIsStillTaken() throws {
        let dir = Scratch("rt-missing"); defer { dir.remove() }
        let info = try Self.hangOnce("py-missing", argv: ["python3", "\(RuntimeFixtures.source)/py-lock-order/lock_order.py"], dir: dir,
                                     defibEnv: ["DEFIB_HELPER_PATH": "\(dir.path)/no-tools"])
        #expect(info["runtime"] as? String == "python")
        let error = info["runtime_error"] as? String ?? ""
        #expect(error.hasPrefix("py-spy: not found; install py-spy from PyPI"), "\(error)")
        #expect((info["notes"] as? [String] ?? []).contains { $0.hasPrefix("runtime stacks: py-spy: not found") })
        #expect(info["core_path"] is String && info["stacks"] is String, "the core and gdb's stacks are still there")
    }

    @Test func aForcedNativeRuntimeRunsNoRuntimeTool() throws {
        let dir = Scratch("rt-native"); defer { dir.remove() }
        let info = try Self.hangOnce("py-native", argv: ["python3", "\(RuntimeFixtures.source)/py-lock-order/lock_order.py"],
                                     extra: "runtime = \"native\"", dir: dir)
        #expect(info["runtime"] as? String == "native")
        #expect((info["runtime_stacks"] as? [Any])?.isEmpty == true && info["runtime_tool"] is NSNull)
        #expect((info["notes"] as? [String] ?? []).contains("runtime: native (forced by capture.runtime)"))
    }
}
