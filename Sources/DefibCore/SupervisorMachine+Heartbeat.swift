/// Heartbeats: pings and their answers, sd_notify keep-alives, and the stages a silence goes through.
extension SupervisorMachine {
    public mutating func pongReceived(token: UInt64, at now: MonoTime) -> [SupervisorAction] {
        switch state {
        case .starting(var instance, let deadline):
            guard instance.ping?.token == token else { return [] }
            answered(&instance, at: now)
            // With sd_notify only, READY=1 (not a pong) makes the instance ready.
            guard settings.triesPing else {
                state = .starting(instance, deadline: deadline)
                return []
            }
            return adoptPing(pid: instance.pid) + becomeReady(instance, at: now)
        case var .watching(watch):
            guard watch.instance.ping?.token == token else { return [] }
            let adopted = adoptPing(pid: watch.instance.pid)
            answered(&watch.instance, at: now)
            let before = watch.silence.since
            watch.silence.pingSilentSince = nil
            let actions = sourceAnswered(&watch, silenceBefore: before, at: now)
            state = .watching(watch)
            return adopted + actions
        default:
            return []
        }
    }

    /// `auto`: the first pong of the service; from now on pings are its heartbeat.
    private mutating func adoptPing(pid: Int32) -> [SupervisorAction] {
        guard settings.mode == .auto, !heardPing else { return [] }
        heardPing = true
        return [.heartbeatAdopted(pid: pid, source: .ping)]
    }

    /// The ping got no valid answer: refused, closed, a wrong reply. `reason` names the problem.
    public mutating func pingFailed(token: UInt64, reason: String, at now: MonoTime) -> [SupervisorAction] {
        switch state {
        case .starting(var instance, let deadline):
            guard instance.ping?.token == token else { return [] }
            instance.ping = nil
            instance.lastPingError = reason
            instance.nextPingAt = now + settings.startRetryMs
            state = .starting(instance, deadline: deadline)
            return []
        case var .watching(watch):
            guard watch.instance.ping?.token == token, !watch.silence.awaitingVerdict else { return [] }
            guard expectsPing else {
                // `auto` before the first pong: nothing listens yet, which is no miss; try again an interval later.
                watch.instance.ping = nil
                watch.instance.nextPingAt = now + settings.intervalMs
                state = .watching(watch)
                return []
            }
            // A miss, and a new ping after the retry pause.
            watch.instance.ping = nil
            watch.instance.nextPingAt = now + settings.startRetryMs
            var actions = countMiss(&watch, reason: reason, at: now)
            actions += escalate(&watch, at: now)
            if !watch.silence.awaitingVerdict { actions += pingIfDue(&watch, at: now) }
            state = .watching(watch)
            return actions
        default:
            return []
        }
    }

    /// The answer to `.judgeProgress`.
    public mutating func progressJudged(_ verdict: ProgressVerdict, at now: MonoTime) -> [SupervisorAction] {
        guard case var .watching(watch) = state, watch.silence.awaitingVerdict, let since = watch.silence.since else { return [] }
        watch.silence.awaitingVerdict = false
        let silence = now.milliseconds(since: since)
        let step = settings.extensionStepMs
        if case let .starved(reason) = verdict, watch.silence.extendedMs + step <= settings.maxExtensionMs, step > 0 {
            watch.silence.extendedMs += step
            let actions = [.deadlineExtended(byMs: step, totalMs: watch.silence.extendedMs, reason: reason)] + pingIfDue(&watch, at: now)
            state = .watching(watch)
            return actions
        }
        // Named after the source that went silent: with both, a keep-alive missing while pings are answered is
        // no silence of the control channel, and its "last heard" is the last WATCHDOG=1, not the last pong.
        lastSilence = watch.silence.silentSources
        let lastHeard = lastSilence == .notify ? watch.instance.lastKeepAliveAt ?? watch.instance.lastPongAt : watch.instance.lastPongAt
        let sinceLast = lastHeard.map { now.milliseconds(since: $0) }
        let cause = FailureCause.missedHeartbeat(misses: watch.silence.misses, msSinceLastPong: sinceLast, lastError: watch.instance.lastPingError,
                                                 silenceMs: silence, extendedMs: watch.silence.extendedMs, verdict: verdict)
        return failInstance(cause, instance: watch.instance, stopAnnounced: watch.stopAnnounced, at: now)
    }

    /// A datagram from the child's sd_notify, already checked to come from the child itself.
    public mutating func notifyReceived(_ fields: [NotifyField], at now: MonoTime) -> [SupervisorAction] {
        switch state {
        case .starting, .watching, .shuttingDown: break
        default: return []
        }
        var actions: [SupervisorAction] = []
        for field in fields {
            switch field {
            case .ready:
                if case let .starting(instance, _) = state, settings.readyOnNotify { actions += becomeReady(instance, at: now) }
            case .watchdog:
                guard settings.hearsKeepAlive else { continue }
                if settings.mode == .auto, !heardKeepAlive, let pid {
                    // `auto`: the first keep-alive; from now on they are due (once the instance is ready).
                    heardKeepAlive = true
                    actions.append(.heartbeatAdopted(pid: pid, source: .notify))
                }
                guard case var .watching(watch) = state, !watch.silence.awaitingVerdict else { continue }
                let before = watch.silence.since
                watch.instance.lastPongAt = now
                watch.instance.lastKeepAliveAt = now
                watch.instance.keepAliveDue = now + watch.instance.keepAliveIntervalMs
                watch.silence.notifySilentSince = nil
                watch.silence.nextNotifyMissAt = nil
                actions += sourceAnswered(&watch, silenceBefore: before, at: now)
                state = .watching(watch)
            case .watchdogTrigger:
                switch state {
                case let .starting(instance, _):
                    return actions + failInstance(.triggered(reason: "the service sent WATCHDOG=trigger"), instance: instance, stopAnnounced: nil, at: now)
                case let .watching(watch):
                    return actions + failInstance(.triggered(reason: "the service sent WATCHDOG=trigger"), instance: watch.instance,
                                                  stopAnnounced: watch.stopAnnounced, at: now)
                default:
                    continue
                }
            case let .watchdogUsec(usec):
                // The child changes its watchdog period; it sends keep-alives at half of it.
                let intervalMs = max(1, Int(usec / 2000))
                switch state {
                case .starting(var instance, let deadline):
                    instance.keepAliveIntervalMs = intervalMs
                    state = .starting(instance, deadline: deadline)
                case var .watching(watch):
                    watch.instance.keepAliveIntervalMs = intervalMs
                    if expectsKeepAlive, watch.silence.notifySilentSince == nil { watch.instance.keepAliveDue = now + intervalMs }
                    state = .watching(watch)
                default:
                    break
                }
                actions.append(.serviceNotified("WATCHDOG_USEC=\(usec): keep-alives now expected every \(intervalMs) ms"))
            case let .extendTimeoutUsec(usec):
                let until = now + Int(usec / 1000)
                switch state {
                case let .starting(instance, deadline) where until > deadline:
                    state = .starting(instance, deadline: until)
                case let .shuttingDown(pid, deadline) where until > deadline:
                    state = .shuttingDown(pid: pid, deadline: until)
                case var .watching(watch):
                    if let stop = watch.stopAnnounced, until > stop.until { watch.stopAnnounced?.until = until }
                    state = .watching(watch)
                default:
                    break
                }
                actions.append(.serviceNotified("EXTEND_TIMEOUT_USEC=\(usec)"))
            case let .status(text):
                actions.append(.serviceNotified("STATUS=\(text)"))
            case .stopping:
                guard case var .watching(watch) = state, !watch.silence.awaitingVerdict, watch.stopAnnounced == nil else {
                    actions.append(.serviceNotified("STOPPING=1"))
                    continue
                }
                // Like systemd, which stops the watchdog of a service that is stopping: no hang is declared
                // while it winds down; if it is still running after stop_timeout_ms, heartbeats count again.
                if watch.silence.since != nil || watch.silence.misses > 0 || watch.suspect {
                    actions.append(.silenceCancelled(reason: "the service announced STOPPING=1"))
                }
                watch.silence = Silence()
                watch.suspect = false
                watch.instance.ping = nil
                watch.instance.nextPingAt = nil
                watch.instance.keepAliveDue = nil
                watch.stopAnnounced = StopAnnouncement(since: now, until: now + settings.stopTimeoutMs)
                state = .watching(watch)
                actions.append(.serviceNotified("STOPPING=1: the service is stopping by itself; no heartbeat expected for up to \(settings.stopTimeoutMs) ms"))
            case .reloading:
                actions.append(.serviceNotified("RELOADING=1"))
            case .mainPid, .errno, .other:
                continue
            }
        }
        return actions
    }

    /// A tick while the instance is watched: the end of an announced stop, misses, and escalation.
    mutating func tickWatched(_ watch: inout Watch, at now: MonoTime) -> [SupervisorAction] {
        if watch.silence.awaitingVerdict { return [] }
        var actions: [SupervisorAction] = []
        if let due = watch.instance.unheardCheckAt, now >= due {
            // `auto`, ready by READY=1: the start window is over; has the service spoken either protocol?
            watch.instance.unheardCheckAt = nil
            if !heardPing && !heardKeepAlive {
                actions.append(.heartbeatUnheard(pid: watch.instance.pid, afterMs: Int(now.milliseconds(since: watch.instance.startedAt))))
            }
        }
        if let stop = watch.stopAnnounced {
            guard now >= stop.until else { return [] }
            // Announced STOPPING=1 and still here: heartbeats are expected again, from now.
            watch.stopAnnounced = nil
            watch.silence = Silence()
            watch.instance.ping = nil
            if settings.triesPing { watch.instance.nextPingAt = now }
            if expectsKeepAlive { watch.instance.keepAliveDue = now + watch.instance.keepAliveIntervalMs }
            actions.append(.serviceNotified("still running \(Int(now.milliseconds(since: stop.since))) ms after STOPPING=1: heartbeats are expected again"))
        }
        if let ping = watch.instance.ping, now >= ping.deadline, !expectsPing {
            // `auto` before the first pong: a ping nobody answers is dropped, no miss; another goes an interval later.
            watch.instance.ping = nil
            watch.instance.nextPingAt = now + settings.intervalMs
        }
        if let ping = watch.instance.ping, now >= ping.deadline {
            // Keep waiting on the same ping: a late pong still proves progress, and a struggling
            // service is not handed one more connection per miss.
            let waited = Int(now.milliseconds(since: ping.sentAt).rounded())
            watch.instance.ping?.deadline = now + settings.missMs
            actions += countMiss(&watch, reason: "no reply within \(waited) ms", at: now)
        }
        if let due = watch.instance.keepAliveDue, now >= watch.silence.nextNotifyMissAt ?? due + settings.missMs {
            if watch.silence.notifySilentSince == nil { watch.silence.notifySilentSince = due }
            watch.silence.nextNotifyMissAt = now + settings.missMs
            let silentMs = Int(now.milliseconds(since: due)) + watch.instance.keepAliveIntervalMs
            actions += countMiss(&watch, reason: "no WATCHDOG=1 for \(silentMs) ms", at: now)
        }
        actions += escalate(&watch, at: now)
        if !watch.silence.awaitingVerdict { actions += pingIfDue(&watch, at: now) }
        return actions
    }

    /// A pong or keep-alive arrived: the instance answers.
    private func answered(_ instance: inout Instance, at now: MonoTime) {
        instance.ping = nil
        instance.lastPongAt = now
        instance.lastPingError = nil
        instance.nextPingAt = now + settings.intervalMs
    }

    mutating func becomeReady(_ starting: Instance, at now: MonoTime) -> [SupervisorAction] {
        var instance = starting
        instance.readyAt = now
        instance.ping = nil
        if expectsKeepAlive { instance.keepAliveDue = now + instance.keepAliveIntervalMs }
        // Ready by READY=1 or at the end of the start window (`auto`, `none`): pings `auto` tries go on.
        if settings.triesPing && instance.nextPingAt == nil { instance.nextPingAt = now }
        state = .watching(Watch(instance: instance))
        var actions: [SupervisorAction] = [.instanceReady(pid: instance.pid)]
        if incidentOpen {
            incidentOpen = false
            actions.append(.closeIncident(.recovered))
        }
        return actions
    }

    /// One source answered; the silence is over only when every source is answering.
    private func sourceAnswered(_ watch: inout Watch, silenceBefore before: MonoTime?, at now: MonoTime) -> [SupervisorAction] {
        guard watch.silence.since == nil else { return [] }
        var actions: [SupervisorAction] = []
        if let before, watch.silence.misses > 0 || watch.suspect {
            actions.append(.heartbeatRecovered(silenceMs: now.milliseconds(since: before), misses: watch.silence.misses, wasSuspect: watch.suspect))
        }
        watch.suspect = false
        watch.silence = Silence()
        return actions
    }

    private func countMiss(_ watch: inout Watch, reason: String, at now: MonoTime) -> [SupervisorAction] {
        watch.silence.misses += 1
        watch.instance.lastPingError = reason
        let silenceMs = watch.silence.since.map { now.milliseconds(since: $0) } ?? 0
        var actions: [SupervisorAction] = [.heartbeatMissed(misses: watch.silence.misses, silenceMs: silenceMs, reason: reason)]
        if watch.silence.misses == 1 { actions.append(.sampleProgress(pid: watch.instance.pid)) }
        return actions
    }

    /// Stages "suspect" and "hang", driven by how long the heartbeat has been silent.
    private func escalate(_ watch: inout Watch, at now: MonoTime) -> [SupervisorAction] {
        guard let since = watch.silence.since else { return [] }
        let pid = watch.instance.pid
        var actions: [SupervisorAction] = []
        let silence = now.milliseconds(since: since)
        if !watch.suspect && silence >= Double(settings.suspectMs) {
            watch.suspect = true
            if watch.silence.misses == 0 {
                // The ping in flight is not missed yet, but the silence is long: take the baseline now.
                actions.append(.sampleProgress(pid: pid))
            }
            actions.append(.collectSoftEvidence(pid: pid, silenceMs: silence))
        }
        if silence >= Double(settings.deadlineMs + watch.silence.extendedMs) && watch.silence.misses >= settings.missesBeforeHang {
            watch.silence.awaitingVerdict = true
            actions.append(.judgeProgress(pid: pid))
        }
        return actions
    }
}
