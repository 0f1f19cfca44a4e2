import Foundation

/// What is known about the service's failures: the open incident, the notes gathered before one exists,
/// the /proc samples a judgement is made from, the lock telemetry learnt while the service was healthy,
/// and the closed incidents whose evidence is still landing (stacks, compression, retention). Pure: the
/// supervision changes it with the same events and actions the machine uses, and persists what it says
/// (`takeChanges()`, once per change); nobody edits an incident anywhere else, and nothing is read back
/// from the store to learn what was written.
public struct IncidentLedger: Sendable {
    public let service: String
    /// The incident being handled: opened at a failure, closed once a replacement is ready (or the
    /// supervisor gives up or stops). Its `id` is nil until the store has it.
    public private(set) var open: Incident?
    /// Closed incidents whose evidence is still landing, by id.
    public private(set) var closing: [Int64: Incident] = [:]
    /// Decisions taken before an incident existed (misses, suspect evidence, extensions), copied into the next one.
    public private(set) var pendingNotes: [String] = []
    /// /proc at the first miss of the current silence: what progress is judged against.
    public private(set) var baseline: ProcessSample?
    /// The two samples the last progress verdict was judged from.
    public private(set) var lastJudged: JudgedSamples?
    /// Every process of the instance at the first miss (with the baseline): what each one's progress is judged
    /// against.
    public private(set) var instanceBaseline: [ProcessSample] = []
    /// Every process of the instance as the last judgement saw it (main first); nil before one, or for an
    /// instance not judged process by process.
    public private(set) var processJudgements: [ProcessJudgement]?
    /// The locks the healthy service reported (`locks` on the control channel).
    public private(set) var knownLocks: [KnownLock] = []
    /// The hang of the current silence was proven (`ProofRule`): the next incident is declared on proof.
    public private(set) var proofDeclared: HangProof?
    /// The current stall's evidence from the suspect stage: it becomes a stall incident if the heartbeat comes
    /// back, or joins the incident opened for the same silence (see IncidentLedger+Stall.swift).
    public internal(set) var suspectEvidence: StallEvidence?
    /// Closed incidents whose own evidence is complete and that wait only for their stall capture's stacks.
    var stallStacksPending: Set<Int64> = []
    /// How many stall incidents are stored in full per hour (`stall_incidents_per_hour`).
    public internal(set) var stallLimit = StallRateLimit(perHour: 60)
    /// Ids of stored incidents changed since the last `takeChanges()`, in order.
    private var changed: [Int64] = []
    /// The open incident was refused by the store (a full disk) and has no id yet: it is offered again.
    public private(set) var openUnsaved = false
    /// Closed incidents the store has refused so far (no id yet), oldest first, each in its final version.
    public private(set) var unsavedClosed: [Incident] = []
    /// Stored incidents whose last update the store refused, by id: the version to write again (a later
    /// change of the same incident replaces it).
    public private(set) var refusedUpdates: [Int64: Incident] = [:]

    /// How many miss lines an incident keeps (the count is in its cause either way).
    public static let missNotesKept = 8

    /// The samples behind a progress verdict: the start and the end of its window.
    public struct JudgedSamples: Sendable, Equatable {
        public var before: ProcessSample
        public var after: ProcessSample
    }

    public init(service: String) { self.service = service }

    // MARK: before an incident

    /// A miss, kept for the incident this silence may become (the first few, then a count).
    mutating func noteMiss(misses: Int, silenceMs: Double, reason: String) {
        if misses <= Self.missNotesKept { pendingNotes.append("miss \(misses) after \(Int(silenceMs)) ms of silence: \(reason)") }
        else if misses == Self.missNotesKept + 1 { pendingNotes.append("further misses are counted, not listed (see misses in the cause)") }
    }

    mutating func notePending(_ line: String) { pendingNotes.append(line) }

    /// The silence ended (a late heartbeat) or no longer counts (STOPPING=1): what was gathered for it goes.
    mutating func forgetSilence() {
        proofDeclared = nil
        pendingNotes.removeAll()
        suspectEvidence = nil
        baseline = nil
        instanceBaseline = []
        processJudgements = nil
    }

    mutating func setBaseline(_ sample: ProcessSample?, instance: [ProcessSample] = []) {
        baseline = sample
        instanceBaseline = instance
    }

    /// Every process of the instance `mainPID`, judged over the window: from the instance baseline (when it is
    /// this instance's) or the first round, to the last round. Kept for the incident and the captures.
    mutating func judgeInstance(mainPID: Int32, rounds: [[ProcessSample]]) -> [ProcessJudgement] {
        guard let after = rounds.last, !after.isEmpty else {
            processJudgements = nil
            return []
        }
        let before = instanceBaseline.contains { $0.pid == mainPID } ? instanceBaseline : rounds.first ?? after
        let judged = ServiceProgressJudge.judge(before: before, after: after, mainPID: mainPID)
        processJudgements = judged
        return judged
    }

    /// What one suspect-stage round says about every process against the instance baseline, when the instance
    /// is more than one process.
    func instanceSummary(mainPID: Int32, round: [ProcessSample]) -> String? {
        guard round.count > 1 else { return nil }
        return ServiceProgressJudge.summary(judgeRound(mainPID: mainPID, round: round))
    }

    /// Every process of one round judged against the instance baseline (or itself, when there is none).
    func judgeRound(mainPID: Int32, round: [ProcessSample]) -> [ProcessJudgement] {
        ServiceProgressJudge.judge(before: instanceBaseline.isEmpty ? round : instanceBaseline, after: round, mainPID: mainPID)
    }

    /// The round judged against this instance's baseline when the two are at least `minimumWindowMs` apart; nil
    /// otherwise (no baseline of this main process, or one taken just before: too short a window to tell stuck
    /// from asleep).
    func judgeStallRound(mainPID: Int32, round: [ProcessSample], minimumWindowMs: Int) -> [ProcessJudgement]? {
        guard let then = instanceBaseline.first(where: { $0.pid == mainPID }), let now = round.first(where: { $0.pid == mainPID }),
              now.atNs - then.atNs >= Int64(minimumWindowMs) * 1_000_000 else { return nil }
        return ServiceProgressJudge.judge(before: instanceBaseline, after: round, mainPID: mainPID)
    }

    /// Progress of `pid` over the window: from the baseline (if it is this pid's), else over `fallback`'s two samples.
    mutating func judge(pid: Int32, samples: [ProcessSample]) -> ProgressVerdict {
        let after = samples.last ?? ProcessSample(pid: pid, atNs: 0, threads: [])
        let before = baseline.flatMap { $0.pid == pid ? $0 : nil } ?? samples.first ?? after
        lastJudged = JudgedSamples(before: before, after: after)
        return ProgressJudge.judge(before: before, after: after)
    }

    /// The hang is declared on `proof` after `silenceMs`: the note the incident opens with, and the proof's
    /// two samples as the judged window (its threads, its progress).
    mutating func declaredOnProof(_ proof: HangProof, silenceMs: Double, before: ProcessSample, after: ProcessSample) {
        proofDeclared = proof
        pendingNotes.append("declared on proof after \(Int(silenceMs.rounded())) ms: \(proof.line)")
        if before.pid == after.pid { lastJudged = JudgedSamples(before: before, after: after) }
    }

    /// The capture step ended (a core, or why there is none): the timeline's `capture_done`.
    mutating func captureDone(at date: Date) { changeOpen { $0.captureDoneAt = date } }

    mutating func instanceStarted() {
        knownLocks = []
        processJudgements = nil
        instanceBaseline = []
    }
    mutating func learnLocks(_ locks: [KnownLock]) { knownLocks = locks }

    // MARK: the incident's life

    /// A new incident for `cause`, with what is known now (not stored yet: `stored(id:)` follows).
    /// `heartbeat` names the heartbeat that went silent when it is not the control channel (a probe, the
    /// sd_notify keep-alives), and
    /// `lastFailure` is what its last attempt said, more precise than the machine's "no reply within".
    mutating func open(_ cause: FailureCause, at detected: Date, pid: Int32, binaryPath: String?, startedAt: Date?,
                       verdictAtOpen: ProgressVerdict? = nil, process: IncidentProcess? = nil,
                       heartbeat: String? = nil, lastFailure: String? = nil) -> Incident {
        let incidentCause = Self.incidentCause(cause, detected: detected, heartbeat: heartbeat, lastFailure: lastFailure)
        var new = Incident(service: service, pid: pid, binaryPath: binaryPath, startedAt: startedAt, detectedAt: detected, cause: incidentCause)
        new.process = process
        switch cause {
        case let .startTimeout(_, lastError):
            if let error = lastFailure ?? lastError {
                new.notes.append(heartbeat.map { "last error of the \($0): \(error)" } ?? "last control-channel error: \(error)")
            }
            // Never ready is a hang too: say whether it is stuck, stopped or busy.
            if let verdictAtOpen {
                new.progress = verdictAtOpen
                new.threadStates = lastJudged?.after.stateSummary
            }
        case let .missedHeartbeat(_, _, _, silence, extended, verdict):
            new.silenceMs = silence
            new.extendedMs = extended
            new.progress = verdict
            new.declaredOn = proofDeclared == nil ? .deadline : .proof
            new.threadStates = lastJudged?.after.stateSummary
        case .died, .spawnFailed, .triggered:
            break
        }
        new.notes += pendingNotes
        pendingNotes.removeAll()
        proofDeclared = nil
        joinSuspectEvidence(&new)
        var judgedNow = false
        if case .missedHeartbeat = cause { judgedNow = true }
        if case .startTimeout = cause { judgedNow = verdictAtOpen != nil }
        if judgedNow, let judged = processJudgements, judged.count > 1, judged.first(where: \.isMain)?.pid == pid {
            // A master and workers: each process as judged, the cores filled in as they are written.
            new.processes = ServiceProgressJudge.records(judged)
            new.notes.append(ServiceProgressJudge.summary(judged))
        }
        switch cause {
        case .died, .spawnFailed:
            // A death or a failed start needs no evidence to be explained (no capture follows it): name it now.
            // Hangs are diagnosed once their evidence has been read.
            let diagnosis = Diagnoser.diagnose(DiagnosisInput(cause: incidentCause, locks: [], nowUnixMs: Int64(detected.timeIntervalSince1970 * 1000)))
            new.diagnosis = diagnosis.line
            new.diagnosisEvidence = diagnosis.evidence
            new.signature = new.computedSignature()
        case .missedHeartbeat, .startTimeout, .triggered:
            break
        }
        baseline = nil
        instanceBaseline = []
        new.lockState = knownLocks.map { $0.state(word: $0.word ?? "unknown", source: "control") }
        open = new
        openUnsaved = false
        return new
    }

    /// The store has the open incident under `id`.
    mutating func stored(id: Int64) { open?.id = id }

    /// A line in the open incident (dropped when there is none).
    mutating func note(_ line: String) { changeOpen { $0.notes.append(line) } }

    /// A line in the open incident, or kept for the next one.
    mutating func noteOrKeep(_ line: String) {
        if open != nil { note(line) } else { pendingNotes.append(line) }
    }

    /// The process was ended at `date`; `signal` when it was not SIGKILL (the kernel method's dump).
    mutating func killed(at date: Date, signal: Int32? = nil) {
        guard open?.killedAt == nil else { return }
        changeOpen { $0.killedAt = date; $0.signal = signal }
    }

    mutating func restarted(newPid: Int32, at date: Date) { changeOpen { $0.restartedAt = date; $0.newPid = newPid } }

    /// The evidence read from the hung process before the core: its program, threads, locks, the wait-for graph
    /// and runtime stacks, and what they diagnose (a proof from the native evidence stands; a hang it leaves
    /// `unknown` takes the runtime's diagnosis). Returns the diagnosis.
    mutating func applyEvidence(pid: Int32, observation: Observation, sample: ProcessSample, evidence: LockEvidence,
                                runtime: RuntimeFindings? = nil) -> HangDiagnosis? {
        guard var current = open else { return nil }
        current.binaryPath = observation.executable ?? current.binaryPath
        current.process = observation.process ?? current.process   // read again now: it may have changed user or name
        current.threadStates = sample.stateSummary
        current.notes += evidence.notes
        if !evidence.locks.isEmpty { current.lockState = evidence.locks }
        current.flightRecorder = evidence.recorderSummary
        if let runtime {
            current.notes += runtime.notes
            current.waitFor = runtime.waitFor
            current.runtimeEvidence = runtime.evidence
        }
        var input = DiagnosisInput(cause: current.cause, locks: current.lockState, progress: current.progress,
                                   sample: sample, nowUnixMs: Int64(current.detectedAt.timeIntervalSince1970 * 1000))
        if let judged = lastJudged, judged.after.pid == pid, judged.before.pid == pid { input.baseline = judged.before }
        input.waitFor = runtime?.waitFor ?? []
        let diagnosis = RuntimeDiagnoser.combine(native: Diagnoser.diagnose(input), runtime: runtime?.diagnosis, evidence: runtime?.evidence)
        current.diagnosis = diagnosis.line
        current.diagnosisEvidence = diagnosis.evidence
        current.threads = sample.threads.count
        current.signature = current.computedSignature()
        replaceOpen(current)
        return diagnosis
    }

    /// The core (or why there is none), and the notes of its writer.
    mutating func applyCore(_ outcome: CoreOutcome) {
        changeOpen { incident in
            incident.capture = outcome.record
            if let threads = outcome.threads { incident.threads = threads }
            incident.notes += outcome.notes
            Self.mainCoreListed(&incident)
        }
    }

    /// The core written from a frozen instance while its replacement ran, landing in its own incident (by id:
    /// it may have closed, or another opened, since), with the end of its capture.
    mutating func applyFrozenCore(_ outcome: CoreOutcome, incidentID id: Int64?, at date: Date) {
        let body: (inout Incident) -> Void = { incident in
            incident.capture = outcome.record
            if let threads = outcome.threads { incident.threads = threads }
            incident.notes += outcome.notes
            incident.captureDoneAt = date
            Self.mainCoreListed(&incident)
        }
        if let id { change(id, body) } else { changeOpen(body) }
    }

    /// Which order the capture took (and the note saying why), in the open incident.
    mutating func setCaptureOrder(_ order: CaptureOrder, note line: String) {
        changeOpen { $0.captureOrder = order; $0.notes.append(line) }
    }

    /// The frozen instance was killed at `date`; `line` says why then.
    mutating func frozenKilled(incidentID id: Int64?, at date: Date, line: String?) {
        let body: (inout Incident) -> Void = { incident in
            if incident.killedAt == nil { incident.killedAt = date }
            if let line { incident.notes.append(line) }
        }
        if let id { change(id, body) } else { changeOpen(body) }
    }

    /// A core of another process of the instance (a stuck worker), or why there is none: its `processes` entry
    /// and a note.
    mutating func applyProcessCore(pid: Int32, outcome: CoreOutcome) {
        changeOpen { incident in
            if let path = outcome.record.path, let index = incident.processes?.firstIndex(where: { $0.pid == pid }) {
                incident.processes?[index].corePath = path
            }
            let comm = incident.processes?.first { $0.pid == pid }?.comm ?? "?"
            if let path = outcome.record.path {
                incident.notes.append(String(format: "core of pid %d (%@): %@ (%lld bytes, %.0f ms)", pid, comm, path, outcome.record.bytes,
                                             outcome.record.durationMs))
            } else {
                incident.notes.append("no core of pid \(pid) (\(comm)): \(outcome.record.error ?? "not written")")
            }
        }
    }

    /// Closes the open incident; it stays here (by id) while its evidence lands. Returns it.
    mutating func close(_ outcome: IncidentOutcome, at date: Date) -> Incident? {
        guard var current = open else { return nil }
        current.outcome = outcome
        if outcome == .recovered { current.readyAt = date }
        replaceOpen(current)
        open = nil
        if let id = current.id {
            closing[id] = current
        } else if openUnsaved {
            // Never stored yet: kept in its final version until the store takes it.
            unsavedClosed.append(current)
            openUnsaved = false
        }
        return current
    }

    // MARK: what the store refused

    /// The store refused the open incident for now (`retryLater`): it is offered again (`pendingInserts`).
    mutating func insertRefused() { if open?.id == nil { openUnsaved = true } }

    /// The store refused this version of a stored incident for now: it is written again unless a later
    /// version goes out first.
    mutating func updateRefused(_ incident: Incident) {
        guard let id = incident.id else { return }
        refusedUpdates[id] = self.incident(id: id) ?? incident
    }

    /// Incidents the store has refused and that are waiting for an id, oldest first: the closed ones, then
    /// the open one.
    public var pendingInserts: [Incident] { unsavedClosed + (openUnsaved ? open.map { [$0] } ?? [] : []) }

    /// Whether anything the store refused still waits.
    public var hasUnwritten: Bool { openUnsaved || !unsavedClosed.isEmpty || !refusedUpdates.isEmpty }

    /// Everything still unwritten, in its latest version (for the log at exit).
    public var unwritten: [Incident] { pendingInserts + refusedUpdates.keys.sorted().compactMap { refusedUpdates[$0] } }

    /// The refused updates to write again now, each in its latest version; forgotten here until refused again.
    mutating func takeRefusedUpdates() -> [Incident] {
        defer { refusedUpdates.removeAll() }
        return refusedUpdates.keys.sorted().compactMap { incident(id: $0) ?? refusedUpdates[$0] }
    }

    /// The store took `incident` (a pending insert) under `id`. Returns the incident as now held, and whether
    /// it was already closed (its evidence after the close can now go ahead).
    mutating func storedLater(_ incident: Incident, id: Int64) -> (incident: Incident, closed: Bool)? {
        if openUnsaved, var current = open, Self.same(current, incident) {
            openUnsaved = false
            current.id = id
            open = current
            // Changed since the copy that was written (the store got an older version): write the latest.
            if current != withID(incident, id), !changed.contains(id) { changed.append(id) }
            return (current, false)
        }
        guard let index = unsavedClosed.firstIndex(where: { Self.same($0, incident) }) else { return nil }
        var closed = unsavedClosed.remove(at: index)
        closed.id = id
        closing[id] = closed
        if closed != withID(incident, id), !changed.contains(id) { changed.append(id) }
        return (closed, true)
    }

    /// The store will never take `incident` (not worth retrying): it is given up, and returned for the log.
    mutating func giveUpInsert(_ incident: Incident) {
        if openUnsaved, let current = open, Self.same(current, incident) { openUnsaved = false }
        unsavedClosed.removeAll { Self.same($0, incident) }
    }

    /// One incident whatever its version: the same instance, detected at the same moment.
    private static func same(_ a: Incident, _ b: Incident) -> Bool {
        a.service == b.service && a.pid == b.pid && a.detectedAt == b.detectedAt
    }

    private func withID(_ incident: Incident, _ id: Int64) -> Incident {
        var copy = incident
        copy.id = id
        return copy
    }

    // MARK: after the close

    /// gdb's stacks: they refine the diagnosis's evidence (where the blocked threads wait) and fix the signature.
    mutating func applyStacks(incidentID id: Int64, text: String, gdbEnded: String?) -> Incident? {
        change(id) { stored in
            stored.stacks = text
            if let gdbEnded { stored.notes.append("gdb ended \(gdbEnded) while reading stacks") }
            if !text.isEmpty, let diagnosis = HangDiagnosis(line: stored.diagnosis, evidence: stored.diagnosisEvidence ?? []) {
                let refined = Diagnoser.refine(diagnosis, stacks: text)
                stored.diagnosis = refined.line
                stored.diagnosisEvidence = refined.evidence
            }
            stored.signature = stored.computedSignature()
        }
    }

    /// A Go service's goroutines read from the core: they replace the pending evidence, their diagnosis replaces
    /// an `unknown` one (a native proof stands), and the signature follows.
    mutating func applyGoroutines(incidentID id: Int64, _ outcome: RuntimeStacksOutcome) -> Incident? {
        change(id) { stored in
            stored.runtimeEvidence = outcome.evidence
            if let error = outcome.evidence.error { stored.notes.append("runtime stacks: \(error)") }
            let current = HangDiagnosis(line: stored.diagnosis, evidence: stored.diagnosisEvidence ?? [])
                ?? HangDiagnosis(kind: .unknown, sentence: stored.diagnosis)
            let combined = RuntimeDiagnoser.combine(native: current, runtime: outcome.diagnosis, evidence: outcome.evidence)
            stored.diagnosis = combined.line
            stored.diagnosisEvidence = combined.evidence
            stored.signature = stored.computedSignature()
        }
    }

    /// The runtime's stacks could not be read after the close (no core, delve missing or failing to start): why.
    mutating func runtimeStacksMissing(incidentID id: Int64, _ why: String) {
        _ = change(id) { stored in
            stored.runtimeEvidence?.error = why
            stored.notes.append("runtime stacks: \(why)")
        }
    }

    /// A line in a stored incident this ledger holds (open or closing).
    mutating func note(incidentID id: Int64, _ line: String) { _ = change(id) { $0.notes.append(line) } }

    /// The core was compressed to `path` (`bytes`).
    mutating func coreCompressed(incidentID id: Int64, tool: CoreCompression, path: String, bytes: Int64) {
        _ = change(id) { stored in
            stored.notes.append("core compressed with \(tool.rawValue): \(stored.capture?.bytes ?? 0) → \(bytes) bytes")
            stored.capture?.path = path
            stored.capture?.bytes = bytes
            Self.mainCoreListed(&stored)
        }
    }

    /// Retention removed the core of incident `id`; false when this ledger does not hold it (the store is
    /// told directly).
    mutating func coreRemoved(incidentID id: Int64, path: String, reason: String) -> Bool {
        change(id) { stored in
            stored.notes.append(Self.removedNote(path: path, reason: reason))
            stored.capture?.path = nil
            for i in stored.processes?.indices ?? [Int]().indices { stored.processes?[i].corePath = nil }
        } != nil
    }

    /// The main process's entry in `processes` shows the incident's core, wherever it is now.
    static func mainCoreListed(_ incident: inout Incident) {
        guard let index = incident.processes?.firstIndex(where: \.main) else { return }
        incident.processes?[index].corePath = incident.capture?.path
    }

    static func removedNote(path: String, reason: String) -> String { "core \(path) removed by retention (\(reason))" }

    /// An incident stored apart from the machine's open one (a stall's), kept while its evidence lands.
    mutating func keepClosed(_ incident: Incident) {
        if let id = incident.id { closing[id] = incident }
    }

    /// Everything about the closed incident `id` has landed — unless gdb still reads the stall capture that
    /// joined it (then it stays until those stacks land: `stallStacksLanded`).
    mutating func evidenceComplete(incidentID id: Int64) {
        if let held = closing[id], held.awaitsStallStacks {
            stallStacksPending.insert(id)
            return
        }
        closing.removeValue(forKey: id)
    }

    /// The incident with this id, open or closing.
    public func incident(id: Int64) -> Incident? { open?.id == id ? open : closing[id] }

    /// The stored incidents changed since the last call, each once, to be written (a refused version of the
    /// same incident is superseded by it).
    mutating func takeChanges() -> [Incident] {
        defer { changed.removeAll() }
        for id in changed { refusedUpdates.removeValue(forKey: id) }
        return changed.compactMap { incident(id: $0) }
    }

    // MARK: helpers

    private mutating func changeOpen(_ body: (inout Incident) -> Void) {
        guard var current = open else { return }
        body(&current)
        replaceOpen(current)
    }

    mutating func replaceOpen(_ incident: Incident) {
        if incident != open, let id = incident.id, !changed.contains(id) { changed.append(id) }
        open = incident
    }

    @discardableResult
    mutating func change(_ id: Int64, _ body: (inout Incident) -> Void) -> Incident? {
        if open?.id == id { changeOpen(body); return open }
        guard var stored = closing[id] else { return nil }
        body(&stored)
        if stored != closing[id], !changed.contains(id) { changed.append(id) }
        closing[id] = stored
        return stored
    }

    /// The machine's cause as the incident records it (the wall clock turns "ms since the last pong" into a time).
    static func incidentCause(_ cause: FailureCause, detected: Date, heartbeat: String? = nil, lastFailure: String? = nil) -> IncidentCause {
        switch cause {
        case let .missedHeartbeat(misses, since, error, _, _, _):
            .missedHeartbeat(misses: misses, lastPongAt: since.map { detected.addingTimeInterval(-$0 / 1000) }, lastError: lastFailure ?? error,
                             heartbeat: heartbeat)
        case let .startTimeout(ms, error): .startTimeout(seconds: Double(ms) / 1000, heartbeat: heartbeat, lastError: lastFailure ?? error)
        case let .died(.exited(code)): .exited(code: code)
        case let .died(.signaled(sig, core)): .signaled(signal: sig, coreDumped: core)
        case let .spawnFailed(message): .spawnFailed(message: message)
        case let .triggered(reason): .triggered(reason: reason)
        }
    }
}
