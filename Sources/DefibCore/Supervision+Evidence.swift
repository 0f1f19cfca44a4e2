import Foundation

/// The evidence path: what is read from the process at the suspect stage and before the kill, the core,
/// and what happens to the core after the restart (stacks, signature, compression, retention) — each
/// piece arriving as an answer and landing in the ledger.
extension Supervision {
    // MARK: before the kill

    mutating func softEvidence(pid: Int32, silenceMs: Double, observation: Observation) {
        let sample = observation.samples.last ?? ProcessSample(pid: pid, atNs: now.mono.nanoseconds, threads: [])
        var line = "suspect after \(Int(silenceMs)) ms of silence: threads \(sample.stateSummary)"
        if let before = ledger.baseline { line += "; progress since the first miss: \(ProgressJudge.judge(before: before, after: sample).reason)" }
        if let locks = LockEvidence.suspectSummary(observation.flightRecorder, pid: pid) { line += "; locks: \(locks)" }
        if let round = observation.instanceSamples.last, let processes = ledger.instanceSummary(mainPID: pid, round: round) {
            line += "; \(processes)"
        }
        log(.warning, line)
        ledger.notePending(line)
        emit(.metric(.suspect))
    }

    /// The locks, threads, wait-for graph and runtime of the hung process: a runtime with a tool is asked for
    /// its stacks first (`runtimeStacksRead` goes on); otherwise the diagnosis is made and stored, then the core
    /// is written.
    mutating func lockEvidenceRead(pid: Int32, observation: Observation) {
        let runtime = DetectedRuntime.chosen(config.capture.runtime, detected: observation.runtime)
        guard runtime.runtime == .native else {
            var request = RuntimeStacksRequest(pid: pid, runtime: runtime.runtime, budgetMs: config.capture.effectiveRuntimeBudgetMs,
                                               home: config.runDirectory)
            if let usec = setup.managerWatchdogUsec {
                // As for the core: the loop waits for the tool (bounded by its budget); a helper feeds the manager's
                // watchdog until the budget plus a second, never longer.
                request.managerKeepAlive = (Self.keepAlivePeriodNs(watchdogUsec: usec), now.mono.nanoseconds + Int64(request.budgetMs + 1000) * 1_000_000)
            }
            ask(.readRuntimeStacks(request), awaiting: .runtimeStacks(pid: pid, observation: observation, runtime: runtime, askedAt: now.mono))
            return
        }
        diagnoseAndCapture(pid: pid, observation: observation, runtime: RuntimeFindings(observation: observation, runtime: runtime, stacks: nil),
                           spentMs: 0)
    }

    /// The diagnosis from every piece of evidence read before the kill (stored), then the core within what is
    /// left of the capture budget once the runtime's tool took `spentMs` of it.
    mutating func diagnoseAndCapture(pid: Int32, observation: Observation, runtime: RuntimeFindings, spentMs: Int) {
        let sample = ledger.lastJudged.flatMap { $0.after.pid == pid ? $0.after : nil }
            ?? observation.samples.last ?? ProcessSample(pid: pid, atNs: now.mono.nanoseconds, threads: [])
        let evidence = LockEvidence(observation: observation, recorderPath: flightRecorderPath, knownLocks: ledger.knownLocks,
                                    blocked: Set(sample.threads.filter(\.inFutexWait).map(\.tid)))
        if !runtime.waitFor.isEmpty { log(.info, "wait-for graph: \(runtime.waitFor.count) thread(s) blocked on pthread mutexes") }
        if let diagnosis = ledger.applyEvidence(pid: pid, observation: observation, sample: sample, evidence: evidence, runtime: runtime) {
            flushChanges()
            log(.warning, "diagnosis: \(diagnosis.line)")
        }
        let budget = max(1, config.capture.budgetMs - spentMs)
        // core.NAME.INCIDENT.PID, whatever the method (gcore appends the pid to the prefix itself).
        let prefix = "\(config.coreDirectory)/core.\(config.service.name).\(ledger.open?.id.map(String.init) ?? "x")"
        var request = CoreRequest(pid: pid, method: config.capture.method, prefix: prefix, budgetMs: budget,
                                  firstThread: evidence.interestingThread ?? runtime.waitFor.first?.waiterTid
                                      ?? sample.threads.first(where: \.inFutexWait)?.tid)
        switch config.capture.method {
        case .none: break
        case .native: log(.info, "capturing a core of pid \(pid) (native, budget \(budget) ms)")
        case .gcore: log(.info, "capturing a core of pid \(pid) with gcore (budget \(budget) ms)")
        case .kernel: log(.info, "capturing a core of pid \(pid) with the kernel's dump (budget \(budget) ms)")
        }
        captureStartedAt = now.mono
        captureBudgetMs = budget
        request.managerKeepAlive = managerKeepAliveDuringCapture
        // The other processes of the instance that make no progress, most stuck first, after the main one.
        let judged = ledger.open?.processes == nil ? [] : ledger.processJudgements ?? []
        let others = ServiceProgressJudge.captureOrder(judged).filter { !$0.isMain && $0.pid != pid && $0.condition.isStuck }
        processCaptureQueue = others.map(\.pid)
        if !others.isEmpty {
            log(.info, "\(others.count) other process(es) of the instance to capture after it: "
                + others.map { "\($0.pid) (\($0.comm), \($0.condition.rawValue))" }.joined(separator: ", "))
        }
        // One frozen instance at a time: a replacement that hangs while its predecessor's core is still being written
        // gets today's order.
        if frozenCapture == nil, ConcurrentCapture.precondition(method: config.capture.method, socketsPassed: config.sockets.count,
                                                                otherProcessesToCapture: processCaptureQueue.count) == nil {
            // Freeze first: once it can do nothing, the replacement may start while the core is written.
            ask(.freezeForCore(request), awaiting: .freeze(pid: pid))
            return
        }
        ask(.writeCore(request), awaiting: .core)
    }

    /// While the loop is busy writing cores (bounded by the budget), a helper keeps the service manager's
    /// watchdog fed until the budget plus a second from the capture's start, never longer.
    private var managerKeepAliveDuringCapture: (periodNs: Int64, untilNs: Int64)? {
        guard let usec = setup.managerWatchdogUsec, let start = captureStartedAt else { return nil }
        return (Self.keepAlivePeriodNs(watchdogUsec: usec), start.nanoseconds + Int64(captureBudgetMs + 1000) * 1_000_000)
    }

    /// A core of the next stuck process of the instance, within what is left of the capture budget; the
    /// incident says which were left out and why.
    mutating func captureNextProcess() {
        guard !processCaptureQueue.isEmpty else { return }
        let method = config.capture.method
        let spentMs = captureStartedAt.map { Int(now.mono.milliseconds(since: $0).rounded(.up)) } ?? 0
        let leftMs = captureBudgetMs - spentMs
        guard method == .native || method == .gcore, leftMs > 0 else {
            let why = method == .kernel ? "the kernel method dumps only the main process (its dump kills what it writes)"
                : method == .none ? "capture method none" : "the capture budget (\(captureBudgetMs) ms) is spent"
            for pid in processCaptureQueue { ledger.note("no core of pid \(pid): \(why)") }
            processCaptureQueue = []
            return
        }
        let pid = processCaptureQueue.removeFirst()
        let prefix = "\(config.coreDirectory)/core.\(config.service.name).\(ledger.open?.id.map(String.init) ?? "x")"
        var request = CoreRequest(pid: pid, method: method, prefix: prefix, budgetMs: leftMs)
        request.managerKeepAlive = managerKeepAliveDuringCapture
        log(.info, "capturing a core of pid \(pid), another process of the instance (\(method.rawValue), \(leftMs) ms of the budget left)")
        ask(.writeCore(request), awaiting: .processCore(pid: pid))
    }

    mutating func recordCore(_ outcome: CoreOutcome) {
        ledger.applyCore(outcome)
        if config.capture.method != .none { ledger.captureDone(at: now.wall) }
        emit(.metric(.captureDuration(nanoseconds: Int64(outcome.record.durationMs * 1e6))))
        emit(.metric(.captureBytes(outcome.record.bytes)))
        let record = outcome.record
        if let error = record.error {
            log(.error, "core capture (\(record.method)) failed: \(error)")
        } else if let path = record.path, let open = ledger.open {
            log(.info, "core written: \(path) (\(record.bytes) bytes, \(Int(record.durationMs)) ms)",
                fields: open.journalFields(messageID: DefibMessageID.coreCaptured))
        }
    }

    // MARK: after the restart

    /// A Go service's goroutines from the core first (delve), then gdb's stacks.
    mutating func evidenceAfterClose(incidentID id: Int64) {
        if startGoroutines(incidentID: id) { return }
        stacksAfterClose(incidentID: id)
    }

    /// Stacks from the core (then signature, compression and retention when gdb is done), or straight to
    /// compression and retention when there is no core.
    mutating func stacksAfterClose(incidentID id: Int64) {
        if config.capture.stacks, let closed = ledger.incident(id: id), let core = closed.capture?.path, let binary = closed.binaryPath {
            let output = core + ".stacks.txt"
            ask(.startStacks(binary: binary, core: core, output: output), awaiting: .helperStart(.stacks(incidentID: id, output: output)))
            return
        }
        scheduleFirst([.compressOrTrim(incidentID: id)])
    }

    mutating func compressOrTrim(incidentID id: Int64) {
        let tool = config.capture.compress
        guard tool != .none, let core = ledger.incident(id: id)?.capture?.path, !core.hasSuffix(".gz"), !core.hasSuffix(".zst") else {
            scheduleFirst([.retention(justWritten: id)])
            return
        }
        let output = core + (tool == .gzip ? ".gz" : ".zst")
        let argv: [String] = tool == .gzip ? ["gzip", "-1", "-f", "-n", core] : ["zstd", "-q", "-1", "-f", core, "-o", output]
        ask(.startCompression(argv: argv), awaiting: .helperStart(.compression(incidentID: id, input: core, output: output, tool: tool)))
    }

    mutating func helperFailed(_ helper: Helper, problem: String) {
        switch helper {
        case let .stacks(id, _):
            log(.error, "could not run gdb for stacks: \(problem)")
            scheduleFirst([.compressOrTrim(incidentID: id)])
        case let .compression(id, input, _, tool):
            log(.error, "could not start \(tool.rawValue) on \(input): \(problem)")
            ledger.note(incidentID: id, "could not start \(tool.rawValue) (\(problem)); the core stays uncompressed")
            scheduleFirst([.retention(justWritten: id)])
        case let .goroutines(request, _):
            goroutinesFailed(request, problem: problem)
        case let .stallStacks(sequence, core, _, keepCore):
            stallStacksFailed(sequence: sequence, core: core, keepCore: keepCore, problem: problem)
        }
    }

    mutating func helperEnded(pid: Int32, status: ChildStatus) {
        guard let helper = helpers.removeValue(forKey: pid) else { return }
        switch helper {
        case let .stacks(id, output):
            ask(.readStacks(path: output), awaiting: .stacks(incidentID: id, output: output, status: status))
        case .compression where status == .exited(code: 0):
            guard case let .compression(_, _, output, _) = helper else { return }
            ask(.measureFile(path: output), awaiting: .compressedSize(helper, status: status))
        case .compression:
            compressionEnded(helper, status: status, bytes: nil)
        case let .goroutines(request, startedAt):
            ask(.readGoroutines(path: request.outputPath), awaiting: .goroutines(request, status: status, startedAt: startedAt))
        case let .stallStacks(sequence, core, output, keepCore):
            ask(.readStacks(path: output), awaiting: .stallStacks(sequence: sequence, core: core, output: output, keepCore: keepCore, status: status))
        }
    }

    mutating func stacksRead(incidentID id: Int64, output: String, status: ChildStatus, text: String) {
        emit(.removeFile(path: output))
        let gdbEnded = status == .exited(code: 0) ? nil : machine.describe(status)
        if let stored = ledger.applyStacks(incidentID: id, text: text, gdbEnded: gdbEnded) {
            flushChanges()
            log(.info, "stacks for incident \(id) stored (\(text.split(separator: "\n").count) lines), signature \(stored.signature ?? "-")",
                fields: stored.journalFields(messageID: DefibMessageID.evidenceComplete))
        }
        scheduleFirst([.compressOrTrim(incidentID: id)])
    }

    mutating func compressionEnded(_ helper: Helper, status: ChildStatus, bytes: Int64?) {
        guard case let .compression(id, input, output, tool) = helper else { return }
        if let bytes {
            ledger.coreCompressed(incidentID: id, tool: tool, path: output, bytes: bytes)
            emit(.removeFile(path: input))
        } else {
            emit(.removeFile(path: output))
            ledger.note(incidentID: id, "\(tool.rawValue) of the core failed (\(machine.describe(status))); the core stays uncompressed")
        }
        scheduleFirst([.retention(justWritten: id)])
    }

    /// Deletes cores past `[retention]`'s limits; the incidents say which and why. The core just written
    /// (`justWritten`'s) and the open incident's are never deleted (systemd-coredump spares the new core
    /// too). Only cores in the core directory are managed: a `kernel` capture's core lies where
    /// core_pattern put it, on whatever file system that is, and stays the administrator's.
    mutating func applyRetention(_ inventory: CoreInventory, justWritten: Int64?) {
        if !inventory.cores.isEmpty, let space = inventory.space {
            let directory = config.coreDirectory.hasSuffix("/") ? config.coreDirectory : config.coreDirectory + "/"
            let cores = inventory.cores.filter { $0.path.hasPrefix(directory) }
            let protected = Set([ledger.open?.id, justWritten].compactMap { $0 })
            for deletion in CoreRetention.plan(cores: cores, space: space, policy: config.retention, protected: protected) {
                let core = deletion.core
                emit(.removeFile(path: core.path))
                for other in core.otherPaths { emit(.removeFile(path: other)) }
                if !ledger.coreRemoved(incidentID: core.incidentID, path: core.path, reason: deletion.reason) {
                    emit(.recordCoreRemoved(incidentID: core.incidentID, note: IncidentLedger.removedNote(path: core.path, reason: deletion.reason)))
                }
                log(.info, "retention (\(deletion.reason)): removed \(core.path) of incident \(core.incidentID)")
            }
        }
        flushChanges()
        if let justWritten { scheduleFirst([.announceCore(incidentID: justWritten)]) }
    }

    // MARK: at shutdown

    /// What is still running at the bound is killed, and its incident says so (the core stays:
    /// `defib incidents gdb ID` reads it).
    mutating func stopHelpersAtShutdown() {
        for (pid, helper) in helpers.sorted(by: { $0.key < $1.key }) {
            emit(.stopHelper(pid: pid))
            let id: Int64
            let note: String
            switch helper {
            case let .stacks(incidentID, output):
                emit(.removeFile(path: output))
                id = incidentID
                note = "stacks not taken: defib stopped before gdb finished (the core stays; `defib incidents gdb \(id)` reads it)"
            case let .compression(incidentID, _, output, tool):
                emit(.removeFile(path: output))
                id = incidentID
                note = "\(tool.rawValue) of the core stopped: defib stopped before it finished; the core stays uncompressed"
            case let .goroutines(request, _):
                for file in request.files { emit(.removeFile(path: file)) }
                id = request.incidentID
                note = "goroutines not read: defib stopped before delve finished (the core stays; `dlv core` reads it)"
            case let .stallStacks(sequence, core, output, keepCore):
                stallStacksStopped(sequence: sequence, core: core, output: output, keepCore: keepCore)
                continue
            }
            log(.warning, "background job pid \(pid) killed at shutdown: \(note)")
            ledger.note(incidentID: id, note)
        }
        helpers.removeAll()
    }
}
