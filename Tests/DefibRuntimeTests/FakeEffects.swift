import DefibCore
import FlightRecorder
import Foundation
import Testing

/// A deterministic world for the supervisor's loop, in the spirit of SwiftNIO's EmbeddedEventLoop: a
/// manual clock that moves only when the loop waits (or an effect takes time), services that behave as
/// scripted, and every effect recorded in order. No process, socket or file is touched.
final class FakeEffects: SupervisorEffects {
    /// How one instance behaves, from its start.
    enum Behaviour {
        /// Answers every ping.
        case healthy
        /// Answers pings until `afterMs`, then never again (threads asleep in futex waits: stuck).
        case hangs(afterMs: Int64)
        /// Like `hangs`, but its threads are runnable and wait for a CPU: starved.
        case starves(afterMs: Int64)
        /// Ends by itself at `afterMs`.
        case exits(afterMs: Int64, ChildStatus)
        /// Never opens its control socket: every ping is refused.
        case neverListens
        /// Stops answering at `fromMs` for `forMs`, then answers again (late: the pings it owes come back).
        case pauses(fromMs: Int64, forMs: Int64)
        /// Answers pings until `afterMs`, then spins: three threads always runnable, their CPU time accounted
        /// in 4 ms scheduler ticks (over a millisecond a thread can show no CPU although it never stops).
        case spins(afterMs: Int64)
    }

    /// How another process of an instance (a worker) looks in /proc.
    enum WorkerBehaviour {
        /// Asleep waiting for events (epoll): an idle worker.
        case idle
        /// SIGSTOPped.
        case stopped
        /// Asleep in futex waits, no CPU: deadlocked.
        case stuck
        /// Runnable, waiting for a CPU.
        case starved
    }

    struct Instance {
        let pid: Int32
        let startedMs: Int64
        let behaviour: Behaviour
        var alive = true
        var exitScheduled = false
        var ignoresTERM = false
    }

    // The clock.
    private(set) var nowMs: Int64 = 0
    let wallBase = Date(timeIntervalSince1970: 1_800_000_000)
    /// Effects are a sign of life: a loop that waits this often without time moving is spinning.
    private var waitsWithoutProgress = 0

    // The services: one behaviour per spawn (the last one repeats), and spawns that fail.
    var behaviours: [Behaviour] = [.healthy]
    var spawnFailures: [String?] = []
    var ignoresTERM = false
    private var spawns = 0
    private(set) var instances: [Int32: Instance] = [:]
    private var current: Int32?
    private var nextPid: Int32 = 100
    private var nextHelperPid: Int32 = 9000

    /// The other processes of every instance (pids `instance × 10 + 1`, `+ 2` …), as they look in /proc.
    var workers: [WorkerBehaviour] = []
    /// The main process's threads wait for events (an idle master) rather than in futex waits.
    var mainWaitsForEvents = false

    // Probes: an answering instance beats after `probeLatencyMs`; a hung one says nothing (the supervision times
    // the attempt out) or, with `hungProbeAnswer`, answers that at once (an HTTP 503).
    var probeLatencyMs: Int64 = 1
    var hungProbeAnswer: ProbeFailure?
    private var probeRunning: UInt64?

    // Evidence.
    var recorder: FlightRecord?
    var lockWords: [UInt64: UInt64] = [:]
    // Restart while the core is written: what freezing reads, a freeze that fails, how long the writer thread takes.
    var rssBytes: Int64? = 64 << 20
    var memAvailableBytes: Int64? = 8 << 30
    var freezeFailure: String?
    var frozenCoreDurationMs: Int64 = 200
    var frozenCoreNeverEnds = false
    private var frozenRequest: CoreRequest?
    /// A proof reading's first read of these words, where it differs from `lockWords` (a word read mid-update).
    var lockWordsAtFirstRead: [UInt64: UInt64] = [:]
    var locksReply: String?
    var leftovers: [KilledProcess] = []
    var coreFailure: String?
    var coreDurationMs: Int64 = 40
    var stacksText = "Thread 2 (LWP 102):\n#0  syscall () at futex.S:38\n#1  0x1 in $s11ParkingLock6RwLockC5write() at RwLock.swift:10\n#2  0x2 in app.update() at App.swift:5\n"
    var helperExit: ChildStatus = .exited(code: 0)
    var helperDurationMs: Int64 = 50
    var helperNeverEnds = false
    private(set) var helpers: Set<Int32> = []
    var files: [String: Int64] = [:]
    /// Who an instance runs as when it starts (a wrapper, not exec'd into the service yet), and when it is read
    /// again (once ready, before a core); nil: unreadable. By pid where a test needs instances to differ.
    var identityAtStart: IncidentProcess? = IncidentProcess(uid: 0, gid: 0, comm: "setpriv", argv: ["setpriv", "--reuid=998", "/usr/bin/fake-service"],
                                                           cgroup: "/system.slice/svc.service")
    var identityAtStartByPid: [Int32: IncidentProcess] = [:]
    var identityLaterByPid: [Int32: IncidentProcess] = [:]
    /// What the reading with a hang's evidence finds when it differs from the one at ready.
    var identityBeforeCore: IncidentProcess?
    var identityLater: IncidentProcess? = IncidentProcess(uid: 998, gid: 998, comm: "fake-service", argv: ["/usr/bin/fake-service", "--serve"],
                                                         cgroup: "/system.slice/svc.service")
    /// The journal: nil takes every entry, else the reason it refuses them; what it took.
    var journalRefuses: String?
    private(set) var journal: [[JournalField]] = []

    // Runtime evidence: the wait-for graph and runtime the observation finds, what the runtime's tool answers
    // (and how long it takes), and what delve prints over a core.
    var waitFor: [WaitForEdge] = []
    var waitForNotes: [String] = []
    var runtime = DetectedRuntime(runtime: .native, reason: "no Go build info, libpython or libjvm")
    var runtimeStacks: RuntimeStacksOutcome?
    var runtimeToolMs: Int64 = 0
    var goroutinesText = ""
    var goroutinesFailure: String?
    private(set) var observeRequests: [ObservationRequest] = []
    private(set) var coreRequests: [CoreRequest] = []
    private(set) var runtimeRequests: [RuntimeStacksRequest] = []
    private(set) var goroutinesRequests: [GoroutinesRequest] = []

    // The store.
    private(set) var stored: [Int64: Incident] = [:]
    var nextIncidentID: Int64 = 1
    var storeFails = false
    /// The store refuses every write as a full disk would (retryable) during this time.
    var storeFull: Range<Int64>?
    /// The loop is held up once (as a flood or a slow call would hold it): at `atMs`, time jumps by `forMs`.
    var stall: (atMs: Int64, forMs: Int64)?
    /// Cores of incidents from earlier runs (not in this supervisor's memory).
    var olderCores: [StoredCore] = []
    var space: FileSystemSpace? = FileSystemSpace(totalBytes: 100 << 30, freeBytes: 50 << 30)

    // The fleet shipper beside the loop: its report from each moment on (none: no shipper).
    var shippingReports: [(fromMs: Int64, report: ShippingReport)] = []

    // What happened.
    private(set) var calls: [String] = []
    private(set) var managerMessages: [String] = []
    private var events: [(at: Int64, seq: Int, event: SupervisorEvent)] = []
    private var seq = 0

    /// Schedules an event from the outside world (a signal, a datagram).
    func schedule(at ms: Int64, _ event: SupervisorEvent) {
        seq += 1
        events.append((ms, seq, event))
    }


    /// The calls without the heartbeat's routine (pings, their cancellation).
    var actions: [String] { calls.filter { !$0.hasPrefix("ping ") && $0 != "cancelPing" } }

    // MARK: SupervisorEffects

    func now() -> Instant { Instant(mono: .milliseconds(nowMs), wall: wallBase.addingTimeInterval(Double(nowMs) / 1000)) }

    func wait(until deadline: MonoTime?) -> [SupervisorEvent] {
        let limit = min(deadline.map { $0.nanoseconds / 1_000_000 + ($0.nanoseconds % 1_000_000 == 0 ? 0 : 1) } ?? nowMs + 1000, nowMs + 1000)
        let before = nowMs
        if let stall, nowMs >= stall.atMs {
            nowMs += stall.forMs
            self.stall = nil
        }
        if let first = events.min(by: { ($0.at, $0.seq) < ($1.at, $1.seq) }), first.at <= max(limit, nowMs) {
            nowMs = max(nowMs, first.at)
        } else {
            nowMs = max(nowMs, limit)
        }
        if nowMs == before {
            waitsWithoutProgress += 1
            if waitsWithoutProgress > 10_000 {
                Issue.record("the loop waits without time moving: a wakeup in the past that nothing clears")
                nowMs += 1
            }
        } else {
            waitsWithoutProgress = 0
        }
        let due = events.filter { $0.at <= nowMs }.sorted { ($0.at, $0.seq) < ($1.at, $1.seq) }
        events.removeAll { $0.at <= nowMs }
        for entry in due {
            if case let .childExited(pid, _) = entry.event {
                instances[pid]?.alive = false
                helpers.remove(pid)
            }
        }
        return due.map(\.event)
    }

    func spawn(_ plan: SpawnPlan) -> SupervisorEvent {
        let attempt = spawns
        spawns += 1
        if attempt < spawnFailures.count, let failure = spawnFailures[attempt] {
            calls.append("spawn failed")
            return .spawnFailed(failure)
        }
        let pid = nextPid
        nextPid += 1
        let behaviour = behaviours[min(instances.count, behaviours.count - 1)]
        var instance = Instance(pid: pid, startedMs: nowMs, behaviour: behaviour)
        instance.ignoresTERM = ignoresTERM
        instances[pid] = instance
        current = pid
        if case let .exits(afterMs, status) = behaviour { exit(pid, at: nowMs + afterMs, status) }
        calls.append("spawn \(pid)")
        return .spawned(pid: pid, executable: "/usr/bin/fake-service", process: identityAtStartByPid[pid] ?? identityAtStart)
    }

    func signal(pid: Int32, signal: Int32) {
        calls.append("signal \(pid) \(signalName(signal))")
        guard let instance = instances[pid], instance.alive else { return }
        if signal == SIGKILL { exit(pid, at: nowMs + 1, .signaled(signal: SIGKILL, coreDumped: false)) }
        if signal == SIGTERM && !instance.ignoresTERM { exit(pid, at: nowMs + 1, .exited(code: 0)) }
    }

    func killLeftovers(of pid: Int32, sparing: Set<Int32>) -> [KilledProcess] {
        calls.append("killLeftovers \(pid)")
        defer { leftovers = [] }
        return leftovers.filter { !sparing.contains($0.pid) }
    }

    func sendPing(token: UInt64) -> String? {
        calls.append("ping \(token)")
        guard let pid = current, let instance = instances[pid], instance.alive else { return "no control socket (nothing listening yet)" }
        if case .neverListens = instance.behaviour { return "no control socket (nothing listening yet)" }
        if answers(instance) {
            schedule(at: nowMs + 1, .pingReply(token: token, line: "pong \(token)"))
        } else if case let .pauses(fromMs, forMs) = instance.behaviour, nowMs < instance.startedMs + fromMs + forMs {
            schedule(at: instance.startedMs + fromMs + forMs, .pingReply(token: token, line: "pong \(token)"))
        }
        return nil
    }

    func cancelPing() { calls.append("cancelPing") }

    func queryLocks() -> String? {
        calls.append("locks")
        guard let reply = locksReply else { return "control channel: no locks" }
        schedule(at: nowMs + 1, .locksReply(reply))
        return nil
    }

    func cancelLocksQuery() { calls.append("cancelLocksQuery") }

    func startProbe(token: UInt64) -> ProbeFailure? {
        calls.append("probe \(token)")
        guard let pid = current, let instance = instances[pid], instance.alive else { return .refused }
        if case .neverListens = instance.behaviour { return .refused }
        probeRunning = token
        if answers(instance) {
            schedule(at: nowMs + probeLatencyMs, .probeResult(token: token, .beat))
        } else if let hungProbeAnswer {
            schedule(at: nowMs + probeLatencyMs, .probeResult(token: token, .miss(hungProbeAnswer)))
        } else if case let .pauses(fromMs, forMs) = instance.behaviour, nowMs < instance.startedMs + fromMs + forMs {
            schedule(at: instance.startedMs + fromMs + forMs, .probeResult(token: token, .beat))
        }
        return nil
    }

    func timeOutProbe(token: UInt64) -> ProbeFailure? {
        calls.append("probeTimedOut \(token)")
        guard probeRunning == token else { return nil }
        probeRunning = nil
        events.removeAll { if case .probeResult(token, _) = $0.event { true } else { false } }
        return .timedOut(afterMs: 250, stage: "waiting for the status line")
    }

    func cancelProbe() {
        calls.append("cancelProbe")
        if let running = probeRunning { events.removeAll { if case .probeResult(running, _) = $0.event { true } else { false } } }
        probeRunning = nil
    }

    func observe(_ request: ObservationRequest) -> Observation {
        var what: String
        switch request.samples {
        case .none: what = "none"
        case .one: what = "one"
        case .pair: what = "pair"
        }
        if request.proofReads { what += " proof" } else if request.executable { what += " capture" } else if request.flightRecorder != nil { what += " recorder" }
        else if request.processIdentity { what += " identity" }
        calls.append("observe \(request.pid) \(what)")
        observeRequests.append(request)
        var observation = Observation(pid: request.pid)
        switch request.samples {
        case .none: break
        case .one: observation.samples = [sample(request.pid)]
        case let .pair(apartMs):
            let before = sample(request.pid)
            nowMs += Int64(apartMs)
            observation.samples = [before, sample(request.pid)]
        }
        if request.executable { observation.executable = "/usr/bin/fake-service" }
        var addresses = request.lockWordAddresses
        if request.flightRecorder != nil {
            if let recorder {
                observation.flightRecorder = .record(recorder)
                if request.recorderLockWords { addresses = recorder.locks.map(\.address) + addresses }
            } else {
                observation.flightRecorder = .missing
            }
        }
        for address in addresses {
            observation.lockWords[address] = lockWords[address].map { .success($0) }
                ?? .failure(EffectFailure("process_vm_readv(\(request.pid), \(LockWord.hex(address))): Bad address"))
        }
        if request.proofReads {
            // The proof's first read: the same words, unless a test catches one mid-update.
            observation.firstLockWords = observation.lockWords
            for (address, word) in lockWordsAtFirstRead where observation.lockWords[address] != nil { observation.firstLockWords[address] = .success(word) }
        }
        if request.threadIDs { observation.threadIDs = [request.pid, request.pid + 1, request.pid + 2] }
        if request.processIdentity, instances[request.pid]?.alive == true {
            observation.process = (request.executable ? identityBeforeCore : nil) ?? identityLaterByPid[request.pid] ?? identityLater
        }
        if request.waitForGraph { observation.waitFor = WaitForReading(edges: waitFor, notes: waitForNotes) }
        if request.detectRuntime { observation.runtime = runtime }
        if request.instanceProcesses {
            // The main process's samples are the instance's first entries; the workers are sampled beside them.
            let pids = [request.pid] + workers.indices.map { request.pid * 10 + Int32($0) + 1 }
            observation.instanceSamples = observation.samples.map { main in
                [main] + pids.dropFirst().map { worker($0, main: request.pid, atNs: main.atNs) }
            }
            if observation.instanceSamples.isEmpty {
                let main = sample(request.pid)
                observation.instanceSamples = [[main] + pids.dropFirst().map { worker($0, main: request.pid, atNs: main.atNs) }]
            }
        }
        return observation
    }

    func writeCore(_ request: CoreRequest) -> CoreOutcome {
        calls.append("writeCore \(request.pid) \(request.method.rawValue)" + (request.firstThread.map { " first=\($0)" } ?? "")
                     + (request.managerKeepAlive == nil ? "" : " keeping the manager's watchdog fed"))
        coreRequests.append(request)
        return coreOutcome(request)
    }

    func freezeForCore(_ request: CoreRequest) -> CoreFreeze {
        calls.append("freeze \(request.pid)" + (request.firstThread.map { " first=\($0)" } ?? ""))
        coreRequests.append(request)
        if let freezeFailure {
            return CoreFreeze(pid: request.pid, threads: 0, stopMs: 0, rssBytes: nil, memAvailableBytes: nil,
                              failure: CoreOutcome(record: CaptureRecord(method: "native", path: nil, bytes: 0, durationMs: 0, error: freezeFailure)))
        }
        frozenRequest = request
        return CoreFreeze(pid: request.pid, threads: 3, stopMs: 0.3, rssBytes: rssBytes, memAvailableBytes: memAvailableBytes)
    }

    func writeFrozenCore(background: Bool) -> CoreOutcome? {
        calls.append("writeFrozenCore \(background ? "background" : "now")")
        guard let request = frozenRequest else {
            return CoreOutcome(record: CaptureRecord(method: "native", path: nil, bytes: 0, durationMs: 0, error: "nothing frozen"))
        }
        frozenRequest = nil
        guard background else { return coreOutcome(request) }
        // The writer thread takes its time while the clock (and the loop) goes on.
        let outcome = coreOutcome(request, durationMs: frozenCoreDurationMs, advancingTheClock: false)
        schedule(at: nowMs + (frozenCoreNeverEnds ? 1_000_000 : frozenCoreDurationMs), .frozenCoreWritten(outcome))
        return nil
    }

    func hurryFrozenCore() { calls.append("hurryFrozenCore") }

    private func coreOutcome(_ request: CoreRequest, durationMs: Int64? = nil, advancingTheClock: Bool = true) -> CoreOutcome {
        let coreDurationMs = durationMs ?? self.coreDurationMs
        if request.method == .none { return CoreOutcome(record: CaptureRecord(method: "none", path: nil, bytes: 0, durationMs: 0, error: nil)) }
        if advancingTheClock { nowMs += coreDurationMs }
        if let coreFailure {
            return CoreOutcome(record: CaptureRecord(method: request.method.rawValue, path: nil, bytes: 0, durationMs: Double(coreDurationMs), error: coreFailure))
        }
        if request.method == .kernel {
            // The kernel's dump kills by design; the capture reaps the instance.
            instances[request.pid]?.alive = false
            events.removeAll { if case let .childExited(pid, _) = $0.event { pid == request.pid } else { false } }
            var outcome = CoreOutcome(record: CaptureRecord(method: "kernel", path: "/var/crash/core.\(request.pid)", bytes: 4096,
                                                            durationMs: Double(coreDurationMs), error: nil))
            outcome.notes = ["killed with SIGSYS so the kernel dumps its core (the kernel method kills by design)"]
            outcome.killedAt = wallBase.addingTimeInterval(Double(nowMs - coreDurationMs) / 1000)
            outcome.signal = SIGSYS
            outcome.exited = .signaled(signal: SIGSYS, coreDumped: true)
            return outcome
        }
        files[request.path] = 3_000_000
        var outcome = CoreOutcome(record: CaptureRecord(method: request.method.rawValue, path: request.path, bytes: 3_000_000,
                                                        durationMs: Double(coreDurationMs), error: nil), threads: 3)
        outcome.notes = ["native core: 3 threads stopped in 1.5 ms, 2000000 bytes allocated of 3000000"]
        return outcome
    }

    /// A stall capture: `stallPauseMs` of freeze (the clock moves), a file of `stallCaptureBytes`, or `stallCaptureFailure`.
    var stallPauseMs: Int64 = 2
    var stallCaptureBytes: Int64 = 300_000
    var stallCaptureFailure: String?
    private(set) var stallRequests: [StallEvidenceRequest] = []

    func takeStallEvidence(_ request: StallEvidenceRequest) -> StallCapture {
        calls.append("takeStallEvidence \(request.pid) \(request.mode.rawValue) budget=\(request.budgetMs)")
        stallRequests.append(request)
        nowMs += stallPauseMs
        if let stallCaptureFailure {
            return StallCapture(mode: request.mode, record: CaptureRecord(method: "native", path: nil, bytes: 0, durationMs: Double(stallPauseMs),
                                                                          error: stallCaptureFailure), pauseMs: Double(stallPauseMs), threads: 0)
        }
        files[request.path] = stallCaptureBytes
        return StallCapture(mode: request.mode, record: CaptureRecord(method: "native", path: request.path, bytes: stallCaptureBytes,
                                                                      durationMs: Double(stallPauseMs), error: nil),
                            pauseMs: Double(stallPauseMs), threads: 3)
    }

    func startStacks(binary: String, core: String, output: String) -> Result<Int32, EffectFailure> {
        calls.append("startStacks \(core)")
        return startHelper(output: output, bytes: 100)
    }

    func startCompression(argv: [String]) -> Result<Int32, EffectFailure> {
        calls.append("startCompression \(argv[0])")
        let output = argv.contains("-o") ? argv[argv.firstIndex(of: "-o")! + 1] : argv.last! + ".gz"
        return startHelper(output: output, bytes: 1_000_000)
    }

    private func startHelper(output: String, bytes: Int64) -> Result<Int32, EffectFailure> {
        let pid = nextHelperPid
        nextHelperPid += 1
        helpers.insert(pid)
        if !helperNeverEnds {
            if helperExit == .exited(code: 0) { files[output] = bytes }
            schedule(at: nowMs + helperDurationMs, .childExited(pid: pid, status: helperExit))
        }
        return .success(pid)
    }

    func readStacks(path: String) -> String {
        calls.append("readStacks")
        return stacksText
    }

    func readRuntimeStacks(_ request: RuntimeStacksRequest) -> RuntimeStacksOutcome {
        calls.append("runtimeStacks \(request.pid) \(request.runtime.rawValue)" + (request.managerKeepAlive == nil ? "" : " keeping the manager's watchdog fed"))
        runtimeRequests.append(request)
        nowMs += runtimeToolMs
        return runtimeStacks ?? RuntimeStacksOutcome(evidence: RuntimeEvidence(runtime: request.runtime))
    }

    func startGoroutines(_ request: GoroutinesRequest) -> Result<Int32, EffectFailure> {
        calls.append("startGoroutines \(request.core)")
        goroutinesRequests.append(request)
        if let goroutinesFailure { return .failure(EffectFailure(goroutinesFailure)) }
        files[request.scriptPath] = 1
        files[request.initPath] = 1
        return startHelper(output: request.outputPath, bytes: Int64(goroutinesText.utf8.count))
    }

    func readGoroutines(path: String) -> String {
        calls.append("readGoroutines")
        return files[path] == nil ? "" : goroutinesText
    }

    func stopHelper(pid: Int32) {
        calls.append("stopHelper \(pid)")
        helpers.remove(pid)
    }

    func fileSize(path: String) -> Int64? { files[path] }

    func removeFile(path: String) {
        calls.append("remove \(path)")
        files.removeValue(forKey: path)
    }

    func scanCores(directory: String) -> CoreInventory {
        calls.append("scanCores")
        let ours = stored.values.compactMap { incident -> StoredCore? in
            guard let id = incident.id, let path = incident.capture?.path else { return nil }
            let others = (incident.processes ?? []).filter { !$0.main }.compactMap(\.corePath)
            return StoredCore(incidentID: id, path: path, bytes: ([path] + others).reduce(Int64(0)) { $0 + (files[$1] ?? 0) },
                              service: incident.service, signature: incident.signature,
                              detectedUnixMs: Int64(incident.detectedAt.timeIntervalSince1970 * 1000), otherPaths: others)
        }
        return CoreInventory(cores: (olderCores + ours).sorted { $0.incidentID < $1.incidentID }, space: space)
    }

    func insert(_ incident: Incident) -> Result<Int64, EffectFailure> {
        if let full = storeFull, full.contains(nowMs) {
            calls.append("insert refused")
            return .failure(EffectFailure("store: database or disk is full", retryLater: true))
        }
        if storeFails {
            calls.append("insert failed")
            return .failure(EffectFailure("store \(incident.service): disk I/O error"))
        }
        let id = nextIncidentID
        nextIncidentID += 1
        var copy = incident
        copy.id = id
        stored[id] = copy
        calls.append("insert \(id)")
        return .success(id)
    }

    func update(_ incident: Incident) -> EffectFailure? {
        if let full = storeFull, full.contains(nowMs) {
            calls.append("update refused")
            return EffectFailure("store: database or disk is full", retryLater: true)
        }
        guard let id = incident.id, stored[id] != nil else { return EffectFailure("no incident \(incident.id ?? -1)") }
        calls.append("update \(id)")
        stored[id] = incident
        return nil
    }

    func recordCoreRemoved(incidentID: Int64, note: String) -> EffectFailure? {
        calls.append("coreRemoved \(incidentID)")
        return nil
    }

    func notifyManager(_ state: String) {
        managerMessages.append(state)
        if state.contains("STATUS=") { calls.append("notify " + state.replacingOccurrences(of: "\n", with: " ")) }
    }

    func shippingReport() -> ShippingReport? {
        guard let report = shippingReports.last(where: { $0.fromMs <= nowMs })?.report else { return nil }
        calls.append("readShipping \(report.statusClause)")
        return report
    }

    func announceCore(_ fields: [JournalField]) -> EffectFailure? {
        let id = fields.first { $0.name == "INCIDENT_ID" }?.value ?? "?"
        if let journalRefuses {
            calls.append("announceCore \(id) refused")
            return EffectFailure(journalRefuses)
        }
        calls.append("announceCore \(id)")
        journal.append(fields)
        return nil
    }

    // MARK: the services' insides

    private func exit(_ pid: Int32, at ms: Int64, _ status: ChildStatus) {
        guard let instance = instances[pid], instance.alive, !instance.exitScheduled else { return }
        instances[pid]?.exitScheduled = true
        schedule(at: ms, .childExited(pid: pid, status: status))
    }

    private func answers(_ instance: Instance) -> Bool {
        switch instance.behaviour {
        case .healthy, .exits: true
        case let .hangs(afterMs), let .starves(afterMs), let .spins(afterMs): nowMs < instance.startedMs + afterMs
        case let .pauses(fromMs, forMs): nowMs < instance.startedMs + fromMs || nowMs >= instance.startedMs + fromMs + forMs
        case .neverListens: false
        }
    }

    /// A worker of the instance `main` in /proc at `atNs`.
    private func worker(_ pid: Int32, main: Int32, atNs: Int64) -> ProcessSample {
        guard instances[main]?.alive == true else { return ProcessSample(pid: pid, atNs: atNs, threads: []) }
        let age = UInt64(max(0, atNs / 1_000_000 - (instances[main]?.startedMs ?? 0))) * 1_000_000
        let thread: ThreadSample
        switch workers[Int(pid - main * 10 - 1)] {
        case .idle:
            thread = ThreadSample(tid: pid, name: "worker", state: "S", cpuTicks: 0, onCpuNs: 2_000_000, runDelayNs: 0,
                                  syscall: Self.eventWait, syscallArg0: "0x5")
        case .stopped:
            thread = ThreadSample(tid: pid, name: "worker", state: "T", cpuTicks: 0, onCpuNs: 2_000_000, runDelayNs: 0)
        case .stuck:
            thread = ThreadSample(tid: pid, name: "worker", state: "S", cpuTicks: 0, onCpuNs: 2_000_000, runDelayNs: 0,
                                  syscall: Syscalls.futex, syscallArg0: "0x7f0000002000")
        case .starved:
            thread = ThreadSample(tid: pid, name: "worker", state: "R", cpuTicks: 0, onCpuNs: age / 10, runDelayNs: age * 6 / 10)
        }
        return ProcessSample(pid: pid, atNs: atNs, threads: [thread], cpuCount: 2)
    }

    /// A call an idle server's threads sleep in (epoll_wait on x86-64).
    static let eventWait = Syscalls.eventWaits.first { $0.value.hasPrefix("epoll") }!.key

    /// /proc as it would look: asleep in futex waits with no CPU (stuck), runnable and waiting for a CPU
    /// (starved), or idle and answering.
    private func sample(_ pid: Int32) -> ProcessSample {
        let at = nowMs * 1_000_000
        guard let instance = instances[pid], instance.alive else { return ProcessSample(pid: pid, atNs: at, threads: []) }
        let age = UInt64(max(0, nowMs - instance.startedMs)) * 1_000_000
        let threads: [ThreadSample]
        switch instance.behaviour {
        case .starves:
            threads = (0..<3).map { i in
                ThreadSample(tid: pid + Int32(i), name: "worker-\(i)", state: "R", cpuTicks: 0, onCpuNs: age / 10, runDelayNs: age * 6 / 10)
            }
        case let .spins(afterMs):
            let spinningNs = UInt64(max(0, nowMs - instance.startedMs - afterMs)) * 1_000_000
            let tick: UInt64 = 4_000_000
            threads = (0..<3).map { i in
                ThreadSample(tid: pid + Int32(i), name: "spinner-\(i)", state: "R", cpuTicks: 0, onCpuNs: spinningNs / tick * tick, runDelayNs: 0)
            }
        case .healthy, .exits, .hangs, .neverListens, .pauses:
            threads = (0..<3).map { i in
                ThreadSample(tid: pid + Int32(i), name: "worker-\(i)", state: "S", cpuTicks: 0, onCpuNs: 5_000_000, runDelayNs: 0,
                             syscall: mainWaitsForEvents ? Self.eventWait : Syscalls.futex, syscallArg0: "0x7f0000001000")
            }
        }
        return ProcessSample(pid: pid, atNs: at, threads: threads, cpuCount: 2)
    }
}
