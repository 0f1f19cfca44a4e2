import Foundation

/// What each of the machine's actions means for the ledger and the world, and the incident's life.
extension Supervision {
    mutating func run(_ step: Step) {
        switch step {
        case let .action(action):
            perform(action)
        case let .instanceEnded(pid, status):
            log(.warning, "service pid \(pid) ended: \(machine.describe(status))")
            child = nil
            if pingOpen != nil { emit(.cancelPing); pingOpen = nil }
            if probeOpen != nil { emit(.cancelProbe); probeOpen = nil }
            if locksQueryDeadline != nil { emit(.cancelLocksQuery); locksQueryDeadline = nil }
            // Processes the instance started and left behind were re-parented to us (the subreaper): they go,
            // so the next instance never runs beside a remnant of the last one. Not ours to kill: our own
            // helpers, and children we had before we started supervising.
            ask(.killLeftovers(of: pid, sparing: Set(helpers.keys).union(setup.childrenBeforeUs)), awaiting: .leftovers(oldPid: pid, status: status))
        case let .recordCore(outcome):
            recordCore(outcome)
        case .captureNextProcess:
            captureNextProcess()
        case let .finishCapture(jitterDraw):
            schedule(machine.captureFinished(at: now.mono, jitterDraw: jitterDraw))
        case .queryLocks:
            // Ask the healthy service which locks it has and where their words live.
            locksQueryDeadline = now.mono + 1000
            emit(.queryLocks)
        case let .evidenceAfterClose(id):
            evidenceAfterClose(incidentID: id)
        case let .stacksAfterClose(id):
            stacksAfterClose(incidentID: id)
        case let .compressOrTrim(id):
            compressOrTrim(incidentID: id)
        case let .retention(justWritten):
            ask(.scanCores(directory: config.coreDirectory), awaiting: .inventory(justWritten: justWritten))
        case let .helperEnded(pid, status):
            helperEnded(pid: pid, status: status)
        case .retryWrites:
            for incident in ledger.takeRefusedUpdates() { emit(.updateIncident(incident)) }
            scheduleFirst(ledger.pendingInserts.map { .retryInsert($0) })
        case let .retryInsert(incident):
            ask(.insertIncident(incident), awaiting: .storedLater(incident))
        case let .announceCore(id):
            announceCore(incidentID: id)
        }
    }

    /// An awaited answer: the step that asked for it goes on. False when `event` is not that answer.
    mutating func resume(_ waiting: Awaiting, with event: SupervisorEvent) -> Bool {
        switch (waiting, event) {
        case let (.spawn, .spawned(pid, executable, process)):
            awaiting = nil
            child = (pid, executable)
            lastChildPid = pid
            childStartedAt = now.wall
            childProcess = process
            ledger.instanceStarted()
            log(.info, "started \(config.service.name): pid \(pid) (\(executable))")
            schedule(machine.spawned(pid: pid, at: now.mono))
        case let (.spawn, .spawnFailed(message)):
            awaiting = nil
            log(.error, "could not start \(config.service.name): \(message)")
            schedule(machine.spawnFailed(message: message, at: now.mono))
        case let (.baseline, .observed(observation)):
            awaiting = nil
            ledger.setBaseline(observation.samples.last, instance: observation.instanceSamples.last ?? [])
        case let (.softEvidence(pid, silenceMs), .observed(observation)):
            awaiting = nil
            softEvidence(pid: pid, silenceMs: silenceMs, observation: observation)
            takeStallEvidence(pid: pid, silenceMs: silenceMs, observation: observation)
        case let (.verdict(pid), .observed(observation)):
            awaiting = nil
            let verdict = judge(pid: pid, observation: observation)
            log(.notice, "progress of pid \(pid): \(verdict.kind): \(verdict.reason)")
            emit(.metric(.verdict(verdict.kind)))
            schedule(machine.progressJudged(verdict, at: now.mono))
        case let (.verdictAtOpen(cause, pid, detected), .observed(observation)):
            awaiting = nil
            let verdict = judge(pid: pid, observation: observation)
            emit(.metric(.verdict(verdict.kind)))
            openIncident(cause, detected: detected, verdict: verdict)
        case let (.stored, .incidentStored(result)):
            awaiting = nil
            incidentStored(result)
        case let (.lockEvidence(pid), .observed(observation)):
            awaiting = nil
            lockEvidenceRead(pid: pid, observation: observation)
        case let (.runtimeStacks(pid, observation, runtime, askedAt), .runtimeStacksRead(outcome)):
            awaiting = nil
            runtimeStacksRead(pid: pid, observation: observation, runtime: runtime, askedAt: askedAt, outcome: outcome)
        case let (.core, .coreWritten(outcome)):
            awaiting = nil
            var steps: [Step] = []
            if let killedAt = outcome.killedAt { ledger.killed(at: killedAt, signal: outcome.signal) }
            // The kernel's dump kills by design and reaps the instance within the capture.
            if let status = outcome.exited, let pid = child?.pid { steps.append(.instanceEnded(pid: pid, status: status)) }
            scheduleFirst(steps + [.recordCore(outcome), .captureNextProcess, .finishCapture(jitterDraw: outcome.jitterDraw)])
        case let (.processCore(pid), .coreWritten(outcome)):
            awaiting = nil
            ledger.applyProcessCore(pid: pid, outcome: outcome)
            if let error = outcome.record.error { log(.error, "core of pid \(pid) failed: \(error)") }
            else if let path = outcome.record.path { log(.info, "core of pid \(pid) written: \(path) (\(outcome.record.bytes) bytes)") }
            scheduleFirst([.captureNextProcess])
        case let (.leftovers(oldPid, status), .leftoversKilled(killed)):
            awaiting = nil
            // Named one by one up to a few, then counted: an instance that leaves thousands behind costs a
            // bounded incident and log.
            for process in killed.prefix(Self.leftoversNamed) {
                let line = "killed pid \(process.pid) (\(process.name)), left behind by the instance pid \(oldPid)"
                logFromChild(.warning, line, source: "leftover")
                ledger.noteOrKeep(line)
            }
            if killed.count > Self.leftoversNamed {
                let line = "killed \(killed.count - Self.leftoversNamed) more process(es) left behind by the instance pid \(oldPid) (\(killed.count) in all)"
                log(.warning, line)
                ledger.noteOrKeep(line)
            }
            schedule(machine.childExited(status, at: now.mono))
        case let (.helperStart(helper), .helperStarted(pid)):
            awaiting = nil
            helpers[pid] = helper
        case let (.helperStart(helper), .helperFailed(problem)):
            awaiting = nil
            helperFailed(helper, problem: problem)
        case let (.stacks(id, output, status), .stacksRead(text)):
            awaiting = nil
            stacksRead(incidentID: id, output: output, status: status, text: text)
        case let (.goroutines(request, status, startedAt), .goroutinesRead(text)):
            awaiting = nil
            goroutinesRead(request, status: status, startedAt: startedAt, text: text)
        case let (.compressedSize(helper, status), .fileMeasured(bytes)):
            awaiting = nil
            compressionEnded(helper, status: status, bytes: bytes)
        case let (.inventory(justWritten), .coresScanned(inventory)):
            awaiting = nil
            applyRetention(inventory, justWritten: justWritten)
        case let (.proof(pid), .observed(observation)):
            awaiting = nil
            proofRead(pid: pid, observation: observation)
        case let (.freeze(pid), .coreFrozen(freeze)):
            awaiting = nil
            coreFrozen(pid: pid, freeze)
        case let (.storedLater(incident), .incidentStored(result)):
            awaiting = nil
            storedLater(incident, result)
        case let (.identity(pid), .observed(observation)):
            awaiting = nil
            if pid == lastChildPid, let process = observation.process { childProcess = process }
        case let (.announcement(id, note), .coreAnnounced(failure)):
            awaiting = nil
            coreAnnounced(incidentID: id, note: note, failure: failure)
        default:
            return resumeStall(waiting, with: event)
        }
        return true
    }

    private mutating func perform(_ action: SupervisorAction) {
        switch action {
        case .spawn:
            ask(.spawn(spawnPlan), awaiting: .spawn)
        case let .sendPing(token):
            if let probe {
                if var open = probeOpen {
                    // A retry while starting: the attempt still running answers the new ping (cutting it short
                    // would never let an attempt slower than the retry pause through).
                    open.token = token
                    probeOpen = open
                } else {
                    probeOpen = ProbeInFlight(attempt: token, token: token, sentAt: now.mono, deadline: now.mono + probe.timeoutMs)
                    emit(.startProbe(token: token))
                }
            } else {
                pingOpen = (token, now.mono)
                emit(.sendPing(token: token))
            }
        case let .heartbeatAdopted(pid, source):
            switch source {
            case .ping: log(.info, "pid \(pid) answers pings on \(config.controlSocketPath): pings are its heartbeat from now on (heartbeat auto)")
            case .notify, .both: log(.info, "pid \(pid) sends WATCHDOG=1: its keep-alives are its heartbeat from now on (heartbeat auto)")
            }
        case let .heartbeatUnheard(pid, afterMs):
            let line = "pid \(pid) has neither listened on DEFIB_CONTROL_SOCKET nor sent WATCHDOG=1 within \(afterMs) ms of its start: "
                + "it is supervised for its exit only, and a hang goes unnoticed. To watch it: --heartbeat http|tcp|exec with --probe TARGET "
                + "(a request, a connection, a command), or --heartbeat ping|notify if it speaks them; --heartbeat none says exit-only on purpose"
            if warnedUnheard { log(.info, "pid \(pid): no heartbeat heard within \(afterMs) ms; supervised for its exit only") } else { log(.warning, line) }
            warnedUnheard = true
        case let .instanceReady(pid):
            log(.info, "service \(config.service.name) pid \(pid) is ready")
            if let frozen = frozenCapture, frozen.pid != pid, !frozen.hurried {
                // The replacement is up: its hung predecessor's core need not yield the CPU any longer.
                frozenCapture?.hurried = true
                emit(.hurryFrozenCore)
            }
            updateManagerStatus(ready: true)
            // Who it runs as, now that it answers: a wrapper it started through (env, a pyenv shim, setpriv) has
            // exec'd the service by now, which it may not have at the spawn. A death later has only this.
            var request = ObservationRequest(pid: pid, samples: .none)
            request.processIdentity = true
            ask(.observe(request), awaiting: .identity(pid: pid))
        case let .heartbeatMissed(misses, silenceMs, reason):
            // The reason may quote the child's reply: its log line is the child's to flood.
            logFromChild(.notice, "heartbeat missed (\(misses) in a row, silent \(Int(silenceMs)) ms): \(reason)", source: "heartbeat")
            emit(.metric(.heartbeatMissed))
            ledger.noteMiss(misses: misses, silenceMs: silenceMs, reason: reason)
        case let .sampleProgress(pid):
            var request = ObservationRequest(pid: pid, samples: .one)
            request.instanceProcesses = true
            ask(.observe(request), awaiting: .baseline)
        case let .collectSoftEvidence(pid, silenceMs):
            // Soft evidence, nothing done to the process: its threads, its progress, and its locks as the
            // flight recorder shows them (the recorder is read from a file; the process is not touched).
            var request = ObservationRequest(pid: pid, samples: .one)
            request.flightRecorder = flightRecorderPath
            request.instanceProcesses = true
            ask(.observe(request), awaiting: .softEvidence(pid: pid, silenceMs: silenceMs))
        case let .seekProof(pid):
            ask(.observe(proofRequest(pid: pid)), awaiting: .proof(pid: pid))
        case let .hangDeclaredOnProof(proof, silenceMs):
            hangDeclaredOnProof(proof, silenceMs: silenceMs)
        case let .judgeProgress(pid):
            ask(.observe(judgementRequest(pid: pid)), awaiting: .verdict(pid: pid))
        case let .deadlineExtended(byMs, totalMs, reason):
            let line = "deadline extended by \(byMs) ms (\(totalMs) ms in all): starved, not stuck: \(reason)"
            log(.warning, line)
            ledger.notePending(line)
            emit(.metric(.deadlineExtended))
            silenceExtended = true
        case let .silenceCancelled(reason):
            log(.info, "the current silence no longer counts: \(reason)")
            dropSuspectEvidence()
            ledger.forgetSilence()
            silenceExtended = false
        case let .serviceNotified(text):
            logFromChild(.info, "service says: \(text)", source: "sd_notify")
            if text.hasPrefix("STATUS=") { serviceStatus = String(text.dropFirst(7)) }
        case let .heartbeatRecovered(silenceMs, misses, wasSuspect):
            let line = "heartbeat back after \(Int(silenceMs)) ms of silence (\(misses) missed)"
            if wasSuspect { log(.warning, "\(line); no kill") } else { log(.info, line) }
            emit(.metric(.recovery))
            if wasSuspect { stallEnded(silenceMs: silenceMs, misses: misses) } else { ledger.forgetSilence() }
            silenceExtended = false
        case let .openIncident(cause):
            if case .startTimeout = cause, let pid = machine.pid {
                // Never ready is a hang too: judge whether it is stuck, stopped or busy before recording it.
                ask(.observe(judgementRequest(pid: pid)), awaiting: .verdictAtOpen(cause, pid: pid, detected: now.wall))
            } else {
                openIncident(cause, detected: now.wall, verdict: nil)
            }
        case let .captureEvidence(pid):
            // Lock state (flight recorder + words straight from memory), the pthread wait-for graph and the
            // runtime (its own stacks next, when it has a tool), a diagnosis, then the core — in that order, each
            // stored as soon as it is known, so a failure later never loses what came before.
            var request = ObservationRequest(pid: pid, samples: ledger.lastJudged?.after.pid == pid ? .none : .one)
            request.executable = true
            request.flightRecorder = flightRecorderPath
            request.recorderLockWords = true
            request.lockWordAddresses = ledger.knownLocks.map(\.address)
            request.threadIDs = true
            request.processIdentity = true
            request.waitForGraph = true
            request.detectRuntime = config.capture.runtime.forced == nil
            ask(.observe(request), awaiting: .lockEvidence(pid: pid))
        case let .killFrozen(pid, overdue):
            killFrozen(pid: pid, overdue: overdue)
        case let .kill(pid):
            log(.warning, "killing pid \(pid) and its process group (SIGKILL)")
            emit(.signal(pid: pid, signal: SIGKILL))
            ledger.killed(at: now.wall)
        case let .terminate(pid):
            log(.info, "stopping pid \(pid) (SIGTERM to its process group)")
            emit(.signal(pid: pid, signal: SIGTERM))
        case let .killDelayed(ms, maxMs):
            emit(.metric(.killJitter(ms: ms)))
            perform(.noteIncident("kill delayed \(ms) ms (kill jitter up to \(maxMs) ms)"))
        case let .noteIncident(note):
            log(.notice, note)
            ledger.note(note)
        case let .incidentRestarted(newPid):
            ledger.restarted(newPid: newPid, at: now.wall)
        case let .closeIncident(outcome):
            closeIncident(outcome)
        case let .scheduleRestart(delayMs):
            emit(.metric(.restart))
            log(.info, "restarting \(config.service.name) in \(delayMs) ms (restart \(machine.restarts))")
        case let .exit(code):
            if code != 0 { log(.error, "giving up on \(config.service.name): restart intensity exceeded") }
            exiting = (code, now.mono + Self.helpersShutdownWaitMs)
            if !helpers.isEmpty {
                log(.info, "waiting up to \(Self.helpersShutdownWaitMs) ms for \(helpers.count) background job(s) (gdb, compression)")
            }
        }
    }

    /// How long shutdown waits for gdb and compression before giving up on them: well inside the unit's
    /// TimeoutStopSec= (15 s) once the service itself has stopped (stop_timeout_ms, 5 s by default).
    public static let helpersShutdownWaitMs = 8_000

    /// The instance's flight recorder (in the run directory, or the instance directory of another user's service).
    var flightRecorderPath: String { setup.paths.flightRecorder }

    /// Progress since the first miss; with no baseline of this pid, two samples 100 ms apart. Never over a
    /// window shorter than `ProgressJudge.minimumWindowMs`: a baseline taken just before (a loop that fell
    /// behind handles a miss and the deadline in one turn) is topped up with a second sample, since over a
    /// millisecond a runnable thread that has not run yet looks starved.
    private func judgementRequest(pid: Int32) -> ObservationRequest {
        let minimum = ProgressJudge.minimumWindowMs
        var request: ObservationRequest
        if let baseline = ledger.baseline, baseline.pid == pid {
            let ageMs = Int((now.mono.nanoseconds - baseline.atNs) / 1_000_000)
            request = ObservationRequest(pid: pid, samples: ageMs >= minimum ? .one : .pair(apartMs: minimum - max(0, ageMs)))
        } else {
            request = ObservationRequest(pid: pid, samples: .pair(apartMs: minimum))
        }
        request.instanceProcesses = true
        return request
    }

    /// The main process's progress and every other process's: the verdict on the instance as a whole.
    private mutating func judge(pid: Int32, observation: Observation) -> ProgressVerdict {
        let main = ledger.judge(pid: pid, samples: observation.samples)
        let processes = ledger.judgeInstance(mainPID: pid, rounds: observation.instanceSamples)
        guard processes.count > 1 else { return main }
        log(.notice, "processes of the instance: \(ServiceProgressJudge.summary(processes))")
        return ServiceProgressJudge.instanceVerdict(main: main, processes)
    }

    /// How many processes an instance left behind are named one by one.
    static let leftoversNamed = 20

    /// What the incident calls the heartbeat that went silent, when it is neither the control channel nor a
    /// probe (which names itself).
    private func heartbeatName(for cause: FailureCause) -> String? {
        switch cause {
        case .missedHeartbeat:
            switch machine.lastSilence {
            case .notify?: "sd_notify keep-alive (WATCHDOG=1)"
            case .both?: "control channel and sd_notify keep-alive (WATCHDOG=1)"
            case .ping?, nil: nil
            }
        case .startTimeout:
            config.heartbeat.mode == .notify ? "sd_notify (READY=1)" : nil
        case .died, .spawnFailed, .triggered:
            nil
        }
    }

    /// The instance's program and environment: the config's variables, then the supervisor's own (its control
    /// socket, our NOTIFY_SOCKET, WATCHDOG_USEC when keep-alives are expected), which win.
    var spawnPlan: SpawnPlan {
        var env = config.service.environment
        env["DEFIB_CONTROL_SOCKET"] = setup.paths.controlSocket
        env["DEFIB_SERVICE"] = config.service.name
        env["DEFIB_FLIGHT_RECORDER"] = flightRecorderPath
        env["NOTIFY_SOCKET"] = setup.paths.notifySocket
        if config.heartbeat.mode == .notify || config.heartbeat.mode == .both || config.heartbeat.mode == .auto {
            // The child sends WATCHDOG=1 at half this period, i.e. every heartbeat interval.
            env["WATCHDOG_USEC"] = String(UInt64(config.heartbeat.intervalMs) * 2000)
        }
        // The Swift runtime swallows the first SIGABRT/SIGQUIT to print a backtrace; a supervised Swift
        // service should die (and dump) on them like any other program.
        return SpawnPlan(argv: config.service.argv, workingDirectory: config.service.workingDirectory, environment: env,
                         environmentDefaults: ["SWIFT_BACKTRACE": "enable=no"], removeFirst: setup.paths.controlSocket)
    }

    // MARK: the incident's life

    private mutating func openIncident(_ cause: FailureCause, detected: Date, verdict: ProgressVerdict?) {
        let pid = machine.pid ?? child?.pid ?? lastChildPid ?? 0
        // Who the instance ran as, read at its spawn and once ready: all a death has (it is reaped by now); a
        // hang's is read again with its evidence. A start that failed had no process.
        var process = pid == lastChildPid ? childProcess : nil
        if case .spawnFailed = cause { process = nil }
        let incident = ledger.open(cause, at: detected, pid: pid, binaryPath: child?.executable,
                                   startedAt: childStartedAt, verdictAtOpen: verdict, process: process,
                                   heartbeat: probe?.name ?? heartbeatName(for: cause),
                                   lastFailure: probe == nil ? nil : lastProbeFailure)
        ask(.insertIncident(incident), awaiting: .stored)
    }

    private mutating func incidentStored(_ result: Result<Int64, EffectFailure>) {
        switch result {
        case let .success(id): ledger.stored(id: id)
        case let .failure(failure):
            if failure.retryLater { ledger.insertRefused() }
            log(.error, "could not record incident: \(failure)" + (failure.retryLater ? "; kept in memory and written when the store takes it" : ""))
            // Meanwhile the incident exists in the log, in full.
            if let incident = ledger.open { log(.error, "incident not stored: \(IncidentJSON.string(incident, includeStacks: true, pretty: false))") }
        }
        guard let incident = ledger.open else { return }
        emit(.metric(.incident(cause: incident.cause.kind)))
        lastIncidentLine = "\(incident.id.map { "#\($0)" } ?? "") \(incident.cause.kind) at \(RFC3339.string(incident.detectedAt))"
        log(.warning, "incident \(incident.id.map(String.init) ?? "?") opened: \(incident.cause.summary)",
            fields: incident.journalFields(messageID: DefibMessageID.incidentOpened))
    }

    private mutating func closeIncident(_ outcome: IncidentOutcome) {
        guard let closed = ledger.close(outcome, at: now.wall) else { return }
        flushChanges()
        if let storedID = closed.id, let frozen = frozenCapture, frozen.incidentID == storedID {
            // Its core is still being written from the frozen instance: the closing entry (which names the core) and
            // the stacks and the rest follow it.
            frozenCapture?.closedBeforeCore = true
            return
        }
        logClosed(closed)
        if let storedID = closed.id {
            scheduleFirst([.evidenceAfterClose(incidentID: storedID)])
        } else {
            // Its final version, in full, while the store does not have it (its evidence follows once it does).
            log(.error, "incident not stored (closed): \(IncidentJSON.string(closed, includeStacks: true, pretty: false))")
        }
    }

    /// "incident N closed: …", with the incident's journal fields (its core among them).
    mutating func logClosed(_ closed: Incident) {
        let id = closed.id.map(String.init) ?? "?"
        let took = closed.readyAt.map { String(format: " in %.0f ms", $0.timeIntervalSince(closed.detectedAt) * 1000) } ?? ""
        log(.warning, "incident \(id) closed: \(closed.outcome.rawValue)\(took)", fields: closed.journalFields(messageID: DefibMessageID.incidentClosed))
    }

    // MARK: what the store refused

    /// Every `storeRetryMs` while the store has refused something, it is offered again.
    static let storeRetryMs = 1000

    mutating func offerUnwrittenIfDue() {
        guard ledger.hasUnwritten else { refusalsLogged.removeAll(); return }
        guard let due = nextStoreRetry else { nextStoreRetry = now.mono + Self.storeRetryMs; return }
        guard now.mono >= due else { return }
        nextStoreRetry = now.mono + Self.storeRetryMs
        agenda.append(.retryWrites)
    }

    mutating func updateRefused(_ incident: Incident, _ failure: EffectFailure) {
        let id = incident.id.map(String.init) ?? "?"
        if failure.retryLater {
            ledger.updateRefused(incident)
            if refusalsLogged.insert(incident.id ?? -1).inserted {
                log(.error, "could not update incident \(id): \(failure); kept in memory and written when the store takes it")
                log(.error, "incident \(id) as known now: \(IncidentJSON.string(incident, includeStacks: true, pretty: false))")
            } else {
                log(.debug, "incident \(id) still not updated: \(failure)")
            }
        } else {
            log(.error, "could not update incident: \(failure)")
        }
    }

    private mutating func storedLater(_ incident: Incident, _ result: Result<Int64, EffectFailure>) {
        switch result {
        case let .success(id):
            guard let (stored, closed) = ledger.storedLater(incident, id: id) else { return }
            log(.notice, "incident \(id) stored now (the store had refused it): \(stored.cause.summary)",
                fields: stored.journalFields(messageID: DefibMessageID.incidentOpened))
            if closed { scheduleFirst([.evidenceAfterClose(incidentID: id)]) }
        case let .failure(failure) where failure.retryLater:
            log(.debug, "incident of pid \(incident.pid) still not stored: \(failure)")
        case let .failure(failure):
            ledger.giveUpInsert(incident)
            log(.error, "incident of pid \(incident.pid) cannot be stored (\(failure)); as last known: \(IncidentJSON.string(incident, includeStacks: true, pretty: false))")
        }
    }
}
