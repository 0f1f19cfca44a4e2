import DefibCore
import DefibPOSIX
import DefibStore
import FlightRecorder
import Foundation
import Glibc

/// Work that runs after the restart, off the critical path, as child processes the loop reaps.
enum BackgroundJob {
    /// `gdb -batch … thread apply all bt` on a core.
    case stacks(StacksJob)
    /// delve reading a Go service's goroutines from the core.
    case goroutines(GoroutinesJob)
    /// gzip/zstd of a core, replacing it.
    case compress(incidentID: Int64, child: ChildProcess, input: String, output: String, tool: CoreCompression)
}

/// The evidence path: what is read from the hung process before the kill, the core, and what happens
/// to the core afterwards (stacks, signature, compression, retention).
extension Supervisor {
    // MARK: before the kill

    /// Lock state (flight recorder + words straight from memory), a diagnosis, then the core — in that
    /// order, each saved as soon as it is known, so a failure later never loses what came before.
    func captureEvidence(pid: Int32) {
        guard var current = incident else { return }
        current.binaryPath = ProcessMemory.executable(pid: pid) ?? current.binaryPath
        let sample = lastSample?.pid == pid ? lastSample! : ProcSampler.sample(pid: pid)
        current.threadStates = sample.stateSummary
        let evidence = readLockEvidence(pid: pid, notes: &current.notes, blocked: Set(sample.threads.filter(\.inFutexWait).map(\.tid)))
        if !evidence.locks.isEmpty { current.lockState = evidence.locks }
        current.flightRecorder = evidence.recorderSummary
        let runtime = collectRuntimeEvidence(pid: pid, into: &current)
        var input = DiagnosisInput(cause: current.cause, locks: current.lockState, progress: current.progress,
                                   sample: sample, nowUnixMs: Int64(current.detectedAt.timeIntervalSince1970 * 1000))
        if lastSample?.pid == pid, lastSampleBaseline?.pid == pid { input.baseline = lastSampleBaseline }
        input.waitFor = runtime.waitFor
        let diagnosis = RuntimeDiagnoser.combine(native: Diagnoser.diagnose(input), runtime: runtime.runtimeDiagnosis, evidence: runtime.evidence)
        current.diagnosis = diagnosis.line
        current.diagnosisEvidence = diagnosis.evidence
        current.threads = sample.threads.count
        current.signature = signature(of: current)
        incident = current
        saveIncident()
        logger.warning("diagnosis: \(diagnosis.line)")

        // The runtime's tools spent part of the capture budget: the core gets what is left.
        let capture = takeCore(pid: pid, firstThread: evidence.interestingThread ?? runtime.waitFor.first?.waiterTid ?? sample.threads.first(where: \.inFutexWait)?.tid,
                               budgetMs: max(1, config.capture.budgetMs - Int(runtime.elapsedMs)))
        incident?.capture = capture.record
        if let threads = capture.threads { incident?.threads = threads }
        incident?.notes += capture.notes
        metrics.captureDuration.recordNanoseconds(Int64(capture.record.durationMs * 1e6))
        metrics.captureBytes.record(capture.record.bytes)
        if let error = capture.record.error {
            logger.error("core capture (\(capture.record.method)) failed: \(error)")
        } else if let path = capture.record.path, let current = incident {
            logger.info("core written: \(path) (\(capture.record.bytes) bytes, \(Int(capture.record.durationMs)) ms)",
                        metadata: journalFields(current, messageID: DefibMessageID.coreCaptured))
        }
        saveIncident()
    }

    struct LockEvidence {
        var locks: [LockState] = []
        var recorderSummary: String?
        /// The thread the core should show first: the newest one the flight recorder saw parked on a lock that
        /// is still asleep in a futex wait (else the newest one it saw that still exists).
        var interestingThread: Int32?
    }

    /// Lock names, addresses, holders, waiters and recent events from the flight recorder; each word read
    /// again from the process's memory (the authoritative value); the `locks` telemetry as a fallback
    /// when there is no recorder.
    func readLockEvidence(pid: Int32, notes: inout [String], blocked: Set<Int32> = []) -> LockEvidence {
        var out = LockEvidence()
        var record: FlightRecord?
        do {
            let r = try FlightRecorderFile.read(path: flightRecorderPath)
            if r.pid == pid { record = r } else { notes.append("flight recorder belongs to pid \(r.pid), not \(pid): ignored") }
        } catch {
            if access(flightRecorderPath, F_OK) == 0 { notes.append("\(error)") }
        }
        if let record {
            out.recorderSummary = "\(flightRecorderPath): \(record.locks.count) lock(s), generation \(record.generation)"
                + (record.tornSlots.isEmpty ? "" : ", torn slots left out: \(record.tornSlots)")
            var seen: [(ns: UInt64, tid: Int32, parked: Bool)] = []
            for lock in record.locks {
                var state = LockState(name: lock.name, address: hex64(lock.address), word: hex64(lock.word), source: "flight-recorder",
                                      holder: lock.holder.map { "\($0.label) tid=\($0.tid)" },
                                      lastHolder: lock.lastHolder.map { "\($0.label) tid=\($0.tid)" },
                                      readersWaiting: Int(lock.readersWaiting), writersWaiting: Int(lock.writersWaiting))
                state.holderTid = lock.holder?.tid
                state.holderSinceUnixMs = lock.holder?.sinceUnixMs
                state.holderSinceMonotonicNs = lock.holder?.sinceMonotonicNs
                state.revert = lock.revert
                // The ring plus the events pinned outside it (the write timeout that corrupted the word, the
                // last write-while-holding-read), which later parked readers would otherwise have pushed out.
                let events = lock.allEvents
                state.events = events.map {
                    LockEventRecord(kind: $0.kind.description, tid: $0.tid, unixMs: $0.unixMs, wordAfter: hex64($0.wordAfter), label: $0.label,
                                    monotonicNs: $0.monotonicNs)
                }
                // Version 1 recorders tracked neither a pending writer nor read holders: leave them unknown.
                if record.version >= 2 { state.holderWaitingForReaders = lock.holderWaitingForReaders }
                state.readHolders = lock.readHolders?.map {
                    LockReadHolderRecord(tid: $0.tid, depth: Int($0.depth), sinceUnixMs: $0.sinceUnixMs, threadExited: $0.threadExited)
                }
                state.moreReadHolders = lock.readHolders == nil ? nil : Int(lock.moreReadHolders)
                for e in events {
                    let parked = e.kind == .parkedRead || e.kind == .parkedWrite || e.kind == .parkedWriteForReaders || e.kind == .writeWhileHoldingRead
                    seen.append((e.monotonicNs, e.tid, parked))
                }
                do {
                    state.word = hex64(try ProcessMemory.readUInt64(pid: pid, address: lock.address))
                    state.source = "memory"
                } catch {
                    notes.append("could not read lock '\(lock.name)' from memory, kept the recorder's copy: \(error)")
                }
                out.locks.append(state)
                // The word right after a timed-out writer's revert: the moment of a corruption, before parked
                // readers added their PARKED bit.
                if let corrupting = events.first(where: { $0.kind == .writeTimedOut && Diagnosis.isCorrupted($0.wordAfter) }),
                   hex64(corrupting.wordAfter) != state.word {
                    out.locks.append(LockState(name: lock.name, address: hex64(lock.address), word: hex64(corrupting.wordAfter),
                                               source: "flight-recorder: right after '\(corrupting.label)' (tid \(corrupting.tid)) timed out and reverted"))
                }
            }
            let alive = Set(threadIDs(pid: pid))
            let newestFirst = seen.sorted { $0.ns > $1.ns }
            out.interestingThread = newestFirst.first(where: { $0.parked && blocked.contains($0.tid) })?.tid
                ?? newestFirst.first(where: { alive.contains($0.tid) })?.tid
            return out
        }
        // No recorder: the addresses learnt from `locks` while the service was healthy.
        for l in knownLocks {
            do {
                out.locks.append(lockState(l, word: hex64(try ProcessMemory.readUInt64(pid: pid, address: l.address)), source: "memory"))
            } catch {
                out.locks.append(lockState(l, word: l.word ?? "unknown", source: "control"))
                notes.append("could not read lock '\(l.name)' from memory: \(error)")
            }
        }
        return out
    }

    /// The core, by the configured method, within the budget. The kernel method kills the process and
    /// reaps it here (the machine hears of the exit at once).
    func takeCore(pid: Int32, firstThread: Int32?, budgetMs: Int? = nil) -> (record: CaptureRecord, threads: Int?, notes: [String]) {
        let budget = budgetMs ?? config.capture.budgetMs
        // core.NAME.INCIDENT.PID, whatever the method (gcore appends the pid to the prefix itself).
        let prefix = "\(config.coreDirectory)/core.\(config.service.name).\(incident?.id.map(String.init) ?? "x")"
        let path = "\(prefix).\(pid)"
        switch config.capture.method {
        case .none:
            return (CaptureRecord(method: "none", path: nil, bytes: 0, durationMs: 0, error: nil), nil, [])
        case .native:
            logger.info("capturing a core of pid \(pid) (native, budget \(budget) ms)")
            let result = NativeCoreWriter.capture(pid: pid, path: path, options: NativeCoreOptions(budgetMs: budget, firstThread: firstThread))
            var notes = result.notes
            if result.truncated { notes.append("core truncated at the \(budget) ms budget") }
            if result.record.path != nil {
                notes.append(String(format: "native core: %d threads stopped in %.1f ms, %lld bytes allocated of %lld", result.threads,
                                    result.stopMs, result.allocatedBytes, result.record.bytes))
            }
            return (result.record, result.threads, notes)
        case .gcore:
            logger.info("capturing a core of pid \(pid) with gcore (budget \(budget) ms)")
            return (GcoreCapture.capture(pid: pid, prefix: prefix, budgetMs: budget), nil, [])
        case .kernel:
            logger.info("capturing a core of pid \(pid) with the kernel's dump (budget \(budget) ms)")
            switch KernelCoreCapture.begin(pid: pid, pidfd: child?.pidfd) {
            case let .failure(error):
                return (CaptureRecord(method: "kernel", path: nil, bytes: 0, durationMs: 0, error: "\(error)"), nil, [])
            case let .success(request):
                // The core-dumping signal is the kill: the timeline says so.
                incident?.killedAt = Date()
                var status: ChildStatus?
                if let c = child, c.pid == pid {
                    status = waitForChild(c, timeoutMs: budget)
                    if let status { childReaped(c, status: status) }
                }
                let result = KernelCoreCapture.finish(request, status: status)
                return (result.record, nil, result.notes + ["core destination: \(result.destination)"])
            }
        }
    }

    // MARK: after the restart

    /// Starts what follows a closed incident: stacks from the core (then signature, compression and
    /// retention when gdb is done), or straight to retention when there is no core.
    func afterIncidentClosed(_ closed: Incident, goroutinesRead: Bool = false) {
        guard let id = closed.id else { return }
        if !goroutinesRead, startGoroutinesFromCore(closed) { return }
        if config.capture.stacks, let core = closed.capture?.path, let binary = closed.binaryPath {
            do {
                let job = try StacksJob.start(binary: binary, core: core, outputPath: core + ".stacks.txt", incidentID: id)
                backgroundJobs[job.child.pid] = .stacks(job)
                return
            } catch {
                logger.error("could not run gdb for stacks: \(error)")
            }
        }
        compressOrTrim(incidentID: id)
    }

    func finishBackgroundJob(_ job: BackgroundJob, status: ChildStatus) {
        switch job {
        case let .stacks(job):
            job.child.closePidfd()
            let text = job.output()
            unlink(job.outputPath)
            // The incident may be closed and gone from memory: update the stored record.
            if var stored = try? recorder.incident(id: job.incidentID) {
                stored.stacks = text
                if status != .exited(code: 0) { stored.notes.append("gdb ended \(describe(status)) while reading stacks") }
                // The stacks refine the diagnosis's evidence (where the blocked threads wait) and fix the signature.
                if !text.isEmpty, let diagnosis = HangDiagnosis(line: stored.diagnosis, evidence: stored.diagnosisEvidence ?? []) {
                    let refined = Diagnoser.refine(diagnosis, stacks: text)
                    stored.diagnosis = refined.line
                    stored.diagnosisEvidence = refined.evidence
                }
                stored.signature = signature(of: stored)
                do { try recorder.update(stored) } catch { logger.error("could not store stacks: \(error)") }
                logger.info("stacks for incident \(job.incidentID) stored (\(text.split(separator: "\n").count) lines), signature \(stored.signature ?? "-")",
                            metadata: journalFields(stored, messageID: DefibMessageID.evidenceComplete))
            }
            compressOrTrim(incidentID: job.incidentID)
        case let .goroutines(job):
            finishGoroutinesJob(job, status: status)
        case let .compress(id, child, input, output, tool):
            child.closePidfd()
            updateStoredIncident(id) { stored in
                if status == .exited(code: 0), let bytes = fileSize(output) {
                    stored.notes.append("core compressed with \(tool.rawValue): \(stored.capture?.bytes ?? 0) → \(bytes) bytes")
                    stored.capture?.path = output
                    stored.capture?.bytes = bytes
                    if access(input, F_OK) == 0 { unlink(input) }
                } else {
                    unlink(output)
                    stored.notes.append("\(tool.rawValue) of the core failed (\(describe(status))); the core stays uncompressed")
                }
            }
            applyRetention(justWritten: id)
        }
    }

    private func compressOrTrim(incidentID: Int64) {
        let tool = config.capture.compress
        guard tool != .none, let stored = try? recorder.incident(id: incidentID), let core = stored.capture?.path,
              !core.hasSuffix(".gz"), !core.hasSuffix(".zst") else {
            applyRetention(justWritten: incidentID)
            return
        }
        let output = core + (tool == .gzip ? ".gz" : ".zst")
        let argv: [String] = tool == .gzip ? ["gzip", "-1", "-f", "-n", core] : ["zstd", "-q", "-1", "-f", core, "-o", output]
        do {
            var request = SpawnRequest(argv: argv, environment: helperEnvironment())
            request.stdinFromDevNull = true
            let child = try spawnProcess(request)
            backgroundJobs[child.pid] = .compress(incidentID: incidentID, child: child, input: core, output: output, tool: tool)
        } catch {
            logger.error("could not start \(tool.rawValue) on \(core): \(error)")
            updateStoredIncident(incidentID) { $0.notes.append("could not start \(tool.rawValue) (\(error)); the core stays uncompressed") }
            applyRetention(justWritten: incidentID)
        }
    }

    /// Deletes cores past `[retention]`'s limits; the incidents say which and why. The core just written
    /// (`justWritten`'s) and the open incident's are never deleted (systemd-coredump spares the new core
    /// too). Only cores in the core directory are managed: a `kernel` capture's core lies where
    /// core_pattern put it, on whatever file system that is, and stays the administrator's.
    func applyRetention(justWritten: Int64? = nil) {
        guard let rows = try? recorder.incidentsWithCores(), !rows.isEmpty else { return }
        var fs = statvfs()
        guard statvfs(config.coreDirectory, &fs) == 0 else { return }
        // f_bfree, as systemd-coredump: KeepFree counts the blocks reserved for root as free.
        let space = FileSystemSpace(totalBytes: Int64(fs.f_blocks) * Int64(fs.f_frsize), freeBytes: Int64(fs.f_bfree) * Int64(fs.f_frsize))
        let directory = config.coreDirectory.hasSuffix("/") ? config.coreDirectory : config.coreDirectory + "/"
        let cores = rows.filter { $0.corePath.hasPrefix(directory) }.map { row in
            StoredCore(incidentID: row.id, path: row.corePath, bytes: allocatedSize(row.corePath) ?? 0, service: row.service,
                       signature: row.signature, detectedUnixMs: row.detectedUnixMs)
        }
        let protected: Set<Int64> = Set([incident?.id, justWritten].compactMap { $0 })
        for deletion in CoreRetention.plan(cores: cores, space: space, policy: config.retention, protected: protected) {
            unlink(deletion.core.path)
            updateStoredIncident(deletion.core.incidentID) { stored in
                stored.notes.append("core \(deletion.core.path) removed by retention (\(deletion.reason))")
                stored.capture?.path = nil
            }
            logger.info("retention (\(deletion.reason)): removed \(deletion.core.path) of incident \(deletion.core.incidentID)")
        }
    }

    /// Changes an incident that may be closed and gone from memory, in the store (best effort: the change is
    /// a note or a path, never worth failing the supervision over).
    func updateStoredIncident(_ id: Int64, _ change: (inout Incident) -> Void) {
        guard var stored = try? recorder.incident(id: id) else { return }
        change(&stored)
        try? recorder.update(stored)
    }

    func signature(of incident: Incident) -> String {
        let kind = HangDiagnosis(line: incident.diagnosis)?.kind.rawValue ?? ""
        let involved = incident.lockState.filter { lock in LockWord.parse(lock.word).map { $0 != 0 } ?? false }.map(\.name)
        return IncidentSignature.compute(causeKind: incident.cause.kind, diagnosisKind: kind, lockNames: Array(Set(involved)),
                                         stacks: incident.stacks)
    }

    /// How long shutdown waits for gdb and compression before giving up on them: well inside the unit's
    /// TimeoutStopSec= (15 s) once the service itself has stopped (stop_timeout_ms, 5 s by default).
    static let backgroundJobsShutdownWaitMs: Int64 = 8_000

    /// Waits (bounded) for background work so the last incident gets its stacks; what is still running at
    /// the bound is killed, and its incident says so (the core stays: `defib incidents gdb ID` reads it).
    func finishBackgroundJobs() {
        let deadline = monotonicNanoseconds() + Self.backgroundJobsShutdownWaitMs * 1_000_000
        if !backgroundJobs.isEmpty { logger.info("waiting up to \(Self.backgroundJobsShutdownWaitMs) ms for \(backgroundJobs.count) background job(s) (gdb, compression)") }
        while !backgroundJobs.isEmpty && monotonicNanoseconds() < deadline {
            var pfd = pollfd(fd: signals.fd, events: Int16(POLLIN), revents: 0)
            _ = poll(&pfd, 1, 200)
            _ = signals.drain()
            handleReaped(reapAll())
        }
        for (pid, job) in backgroundJobs {
            let id: Int64
            let note: String
            switch job {
            case let .stacks(j):
                try? j.child.signal(SIGKILL)
                _ = waitForChild(j.child, timeoutMs: 2000)
                j.child.closePidfd()
                unlink(j.outputPath)
                id = j.incidentID
                note = "stacks not taken: defib stopped before gdb finished (the core stays; `defib incidents gdb \(id)` reads it)"
            case let .goroutines(j):
                j.cancel()
                id = j.incidentID
                note = "goroutines not read: defib stopped before delve finished (the core stays; `dlv core` reads it)"
            case let .compress(incidentID, c, _, output, tool):
                try? c.signal(SIGKILL)
                _ = waitForChild(c, timeoutMs: 2000)
                c.closePidfd()
                unlink(output)
                id = incidentID
                note = "\(tool.rawValue) of the core stopped: defib stopped before it finished; the core stays uncompressed"
            }
            logger.warning("background job pid \(pid) killed at shutdown: \(note)")
            updateStoredIncident(id) { $0.notes.append(note) }
        }
        backgroundJobs.removeAll()
    }
}

/// Blocks actually allocated to a file (cores have holes), in bytes.
func allocatedSize(_ path: String) -> Int64? {
    var st = stat()
    return stat(path, &st) == 0 ? Int64(st.st_blocks) * 512 : nil
}
