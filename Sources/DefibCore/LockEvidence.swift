import FlightRecorder
import Foundation

/// One lock the service told us about over its control channel (`locks`) while it was healthy: its name
/// and the address of its word in the service's memory, so the word can be read once it hangs even
/// without a flight recorder.
public struct KnownLock: Sendable, Equatable {
    public var name: String
    public var address: UInt64
    public var word: String?
    public var holder: String?
    public var lastHolder: String?
    public var readersWaiting: Int?
    public var writersWaiting: Int?
    public init(name: String, address: UInt64, word: String? = nil, holder: String? = nil, lastHolder: String? = nil,
                readersWaiting: Int? = nil, writersWaiting: Int? = nil) {
        self.name = name; self.address = address; self.word = word; self.holder = holder; self.lastHolder = lastHolder
        self.readersWaiting = readersWaiting; self.writersWaiting = writersWaiting
    }

    /// Parses `{"locks":[{"name":..,"address":"0x…","word":"0x…",...}]}`; nil when it is not that shape.
    public static func parse(_ line: String) -> [KnownLock]? {
        guard let obj = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
              let locks = obj["locks"] as? [[String: Any]] else { return nil }
        return locks.compactMap { l in
            guard let name = l["name"] as? String, let addr = l["address"] as? String, let address = LockWord.parse(addr) else { return nil }
            func label(_ key: String) -> String? {
                guard let h = l[key] as? [String: Any], let label = h["label"] as? String else { return nil }
                return "\(label) tid=\(h["tid"].map { "\($0)" } ?? "?")"
            }
            return KnownLock(name: name, address: address, word: l["word"] as? String,
                             holder: label("holder"), lastHolder: label("last_holder"),
                             readersWaiting: l["readers_waiting"] as? Int, writersWaiting: l["writers_waiting"] as? Int)
        }
    }

    /// The incident's record of it, with `word` read from `source`.
    public func state(word: String, source: String) -> LockState {
        LockState(name: name, address: LockWord.hex(address), word: word, source: source, holder: holder,
                  lastHolder: lastHolder, readersWaiting: readersWaiting, writersWaiting: writersWaiting)
    }
}

/// The locks of a hung process as the evidence shows them: the flight recorder's slots with each word read
/// again from memory (the authoritative value), or, without a recorder, the words at the addresses the
/// `locks` telemetry gave. Pure: built from an `Observation`.
public struct LockEvidence: Sendable, Equatable {
    public var locks: [LockState] = []
    /// Where the recorder was read from and what it held.
    public var recorderSummary: String?
    /// The thread the core should show first: the newest one the flight recorder saw parked on a lock that
    /// is still asleep in a futex wait (else the newest one it saw that still exists).
    public var interestingThread: Int32?
    /// What could not be read, for the incident.
    public var notes: [String] = []

    public init(observation obs: Observation, recorderPath: String, knownLocks: [KnownLock], blocked: Set<Int32>) {
        var record: FlightRecord?
        switch obs.flightRecorder {
        case let .record(r)? where r.pid == obs.pid: record = r
        case let .record(r)?: notes.append("flight recorder belongs to pid \(r.pid), not \(obs.pid): ignored")
        case let .unreadable(problem)?: notes.append(problem)
        case .missing?, nil: break
        }
        guard let record else {
            // No recorder: the addresses learnt from `locks` while the service was healthy.
            for lock in knownLocks {
                switch obs.lockWords[lock.address] {
                case let .success(word)?:
                    locks.append(lock.state(word: LockWord.hex(word), source: "memory"))
                case let .failure(error)?:
                    locks.append(lock.state(word: lock.word ?? "unknown", source: "control"))
                    notes.append("could not read lock '\(lock.name)' from memory: \(error)")
                case nil:
                    locks.append(lock.state(word: lock.word ?? "unknown", source: "control"))
                }
            }
            return
        }
        recorderSummary = "\(recorderPath): \(record.locks.count) lock(s), generation \(record.generation)"
            + (record.tornSlots.isEmpty ? "" : ", torn slots left out: \(record.tornSlots)")
        var seen: [(ns: UInt64, tid: Int32, parked: Bool)] = []
        for lock in record.locks {
            var state = Self.state(of: lock, version: record.version)
            // The ring plus the events pinned outside it (the write timeout that corrupted the word, the
            // last write-while-holding-read), which later parked readers would otherwise have pushed out.
            let events = lock.allEvents
            for e in events {
                let parked = e.kind == .parkedRead || e.kind == .parkedWrite || e.kind == .parkedWriteForReaders || e.kind == .writeWhileHoldingRead
                seen.append((e.monotonicNs, e.tid, parked))
            }
            switch obs.lockWords[lock.address] {
            case let .success(word)?:
                state.word = LockWord.hex(word)
                state.source = "memory"
            case let .failure(error)?:
                notes.append("could not read lock '\(lock.name)' from memory, kept the recorder's copy: \(error)")
            case nil:
                notes.append("could not read lock '\(lock.name)' from memory, kept the recorder's copy: not read")
            }
            locks.append(state)
            // The word right after a timed-out writer's revert: the moment of a corruption, before parked
            // readers added their PARKED bit.
            if let corrupting = events.first(where: { $0.kind == .writeTimedOut && LockWord.isCorrupt($0.wordAfter) }),
               LockWord.hex(corrupting.wordAfter) != state.word {
                locks.append(LockState(name: lock.name, address: LockWord.hex(lock.address), word: LockWord.hex(corrupting.wordAfter),
                                       source: "flight-recorder: right after '\(corrupting.label)' (tid \(corrupting.tid)) timed out and reverted"))
            }
        }
        let alive = Set(obs.threadIDs)
        let newestFirst = seen.sorted { $0.ns > $1.ns }
        interestingThread = newestFirst.first(where: { $0.parked && blocked.contains($0.tid) })?.tid
            ?? newestFirst.first(where: { alive.contains($0.tid) })?.tid
    }

    /// A recorder slot as the incident keeps it (the word as recorded; the caller reads it again from memory).
    static func state(of lock: FlightRecord.Lock, version: UInt32) -> LockState {
        var state = LockState(name: lock.name, address: LockWord.hex(lock.address), word: LockWord.hex(lock.word), source: "flight-recorder",
                              holder: lock.holder.map { "\($0.label) tid=\($0.tid)" },
                              lastHolder: lock.lastHolder.map { "\($0.label) tid=\($0.tid)" },
                              readersWaiting: Int(lock.readersWaiting), writersWaiting: Int(lock.writersWaiting))
        state.holderTid = lock.holder?.tid
        state.holderSinceUnixMs = lock.holder?.sinceUnixMs
        state.holderSinceMonotonicNs = lock.holder?.sinceMonotonicNs
        state.revert = lock.revert
        state.events = lock.allEvents.map {
            LockEventRecord(kind: $0.kind.description, tid: $0.tid, unixMs: $0.unixMs, wordAfter: LockWord.hex($0.wordAfter), label: $0.label,
                            monotonicNs: $0.monotonicNs)
        }
        // Version 1 recorders tracked neither a pending writer nor read holders: leave them unknown.
        if version >= 2 { state.holderWaitingForReaders = lock.holderWaitingForReaders }
        state.readHolders = lock.readHolders?.map {
            LockReadHolderRecord(tid: $0.tid, depth: Int($0.depth), sinceUnixMs: $0.sinceUnixMs, threadExited: $0.threadExited)
        }
        state.moreReadHolders = lock.readHolders == nil ? nil : Int(lock.moreReadHolders)
        return state
    }

    /// The flight recorder's view of the locks at the suspect stage, one line: each lock's word, its holder
    /// and waiters. nil without a recorder for this pid.
    public static func suspectSummary(_ recorder: Observation.Recorder?, pid: Int32) -> String? {
        guard case let .record(record)? = recorder, record.pid == pid, !record.locks.isEmpty else { return nil }
        return record.locks.prefix(4).map { lock in
            var text = "'\(lock.name)' \(LockWord.hex(lock.word))"
            if let h = lock.holder { text += " held by \(h.label) tid=\(h.tid)" + (lock.holderWaitingForReaders ? " (waiting for readers)" : "") }
            text += ", \(lock.readersWaiting) reader(s) and \(lock.writersWaiting) writer(s) waiting"
            return text
        }.joined(separator: "; ")
    }
}
