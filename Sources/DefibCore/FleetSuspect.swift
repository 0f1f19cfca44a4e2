import FlightRecorder
import Foundation

/// The write an incident points at: the one most likely to have caused the hang, named by its lock label
/// (`catalog.update app=shop machine=m2`). Across the hosts of one signature the fleet views take the most
/// common one — a routing update pushed to every proxy is then named by every host that hung on it.
///
/// For one incident it is the first of, over every lock the incident recorded:
/// 1. the **holder** of the write lock at the hang (a slow holder, an update that re-entered its own lock,
///    a writer waiting for leaked readers): it is inside, or at the door, and everyone waits for it;
/// 2. the writer whose **timed-out revert corrupted the word** (the parking_lot bug): it never held the lock,
///    but its `write-timed-out` event is the moment the lock broke;
/// 3. the **last holder**, the last write that completed before the hang;
/// 4. the **newest labelled flight-recorder event** at or before detection (readers' events carry no label).
///
/// Thread ids (` tid=123`) are dropped: they differ on every host while the update is the same.
/// Pure: no clock, no I/O.
public enum FleetSuspect {
    /// The suspect write of `incident`, or nil when its locks name none (a crash, a dead loop, no recorder).
    public static func of(_ incident: Incident) -> String? {
        of(locks: incident.lockState, detectedUnixMs: Int64((incident.detectedAt.timeIntervalSince1970 * 1000).rounded()))
    }

    /// The same, from the lock states alone; events after `detectedUnixMs` are not "before the hang".
    public static func of(locks: [LockState], detectedUnixMs: Int64) -> String? {
        if let holder = locks.lazy.compactMap({ $0.holder.flatMap(label) }).first { return holder }
        let events = locks.flatMap { $0.events ?? [] }
        if let corrupting = events.last(where: { e in
            e.kind == "write-timed-out" && !e.label.isEmpty && (LockWord.parse(e.wordAfter).map(LockWord.isCorrupt) ?? false)
        }) {
            return label(corrupting.label)
        }
        if let last = locks.lazy.compactMap({ $0.lastHolder.flatMap(label) }).first { return last }
        let before = events.filter { !$0.label.isEmpty && $0.unixMs <= detectedUnixMs }
        let newest = before.max { a, b in
            if let x = a.monotonicNs, let y = b.monotonicNs { return x < y }
            return a.unixMs < b.unixMs
        }
        return newest.flatMap { label($0.label) }
    }

    /// A holder or event label without its thread id; nil when nothing is left.
    public static func label(_ text: String) -> String? {
        var t = Substring(text)
        while t.last == " " { t = t.dropLast() }
        // A trailing " tid=<digits>" (no regular expression: this runs for every shipped incident).
        let digits = t.reversed().prefix { $0.isASCII && $0.isNumber }.count
        if digits > 0, t.dropLast(digits).hasSuffix(" tid=") { t = t.dropLast(digits + 5) }
        while t.last == " " || t.first == " " { t = t.last == " " ? t.dropLast() : t.dropFirst() }
        return t.isEmpty ? nil : String(t)
    }
}

/// One host's vote for a signature's suspect: the suspect of its newest incident with that signature.
public struct FleetSuspectVote: Sendable, Equatable {
    /// The host.
    public var host: String
    /// Its suspect (nil when its incident named none).
    public var suspect: String?
    /// Makes a vote.
    public init(host: String, suspect: String?) { self.host = host; self.suspect = suspect }
}

/// The fleet's suspect for one signature: the label most hosts name (one vote per host, so a host that hung
/// fifty times counts once), ties broken by the label's order so every reader gets the same answer.
public struct FleetSuspectTally: Sendable, Equatable {
    /// The winning label, nil when no host named one.
    public var suspect: String?
    /// Hosts that named it.
    public var hosts: Int
    /// Hosts that voted (named a suspect or not).
    public var of: Int

    /// Tallies `votes`, one per host (a host voting twice counts once, its first vote).
    public init(votes: [FleetSuspectVote]) {
        var seen: Set<String> = []
        var counts: [String: Int] = [:]
        for v in votes where seen.insert(v.host).inserted {
            if let s = v.suspect { counts[s, default: 0] += 1 }
        }
        of = seen.count
        let best = counts.max { a, b in a.value != b.value ? a.value < b.value : a.key > b.key }
        suspect = best?.key
        hosts = best?.value ?? 0
    }
}
