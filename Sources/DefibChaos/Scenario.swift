import Foundation
import DefibCore

/// One kind of failure the harness inflicts on the supervised proxy (or none, for a control run).
public enum ChaosScenario: String, CaseIterable, Sendable, Codable {
    /// The staged parking_lot `try_write_for` race: the catalog lock word corrupts to 0x…fffe.
    case timeoutRace = "timeout-race"
    /// The same race left to happen by itself under churn (seconds to about a minute).
    case timeoutRaceNatural = "timeout-race-natural"
    /// A leaked read guard; the next catalog write (a SIGHUP reload) queues every reader behind it.
    case leakedRead = "leaked-read"
    /// A read guard held across an else branch that takes the write lock: self-deadlock.
    case guardAcrossElse = "guard-across-else"
    /// A catalog update reads the catalog from inside its write section: self-deadlock by re-entry.
    case writeThenRead = "write-then-read"
    /// A catalog update holds the write lock while blocked in a call that does not return: a slow holder.
    case slowHolder = "slow-holder"
    /// Every event loop spins forever (CPU-bound, no locks).
    case deadLoop = "dead-loop"
    /// SIGSTOP to the proxy: the process exists but runs nothing.
    case sigstop
    /// The proxy aborts (SIGABRT).
    case crash
    /// No fault at all: any incident is a false kill.
    case control

    /// What the harness does to inject it, as the report names it.
    public var fault: String {
        switch self {
        case .sigstop: "SIGSTOP"
        case .control: "none"
        default: rawValue
        }
    }

    /// The diagnosis kind the incident must carry; nil for a control run (no incident expected).
    public var expectedDiagnosis: DiagnosisKind? {
        switch self {
        case .timeoutRace, .timeoutRaceNatural: .corruptedLockWord
        case .leakedRead: .leakedReadLock
        case .guardAcrossElse, .writeThenRead: .selfDeadlock
        case .slowHolder: .slowHolder
        case .deadLoop: .deadLoop
        case .sigstop: .stopped
        case .crash: .signaled
        case .control: nil
        }
    }

    /// Whether the supervisor should have captured a core: only a live, hung process can be captured
    /// (a crashed one is gone before the supervisor hears of it).
    public var expectsCore: Bool {
        switch self {
        case .crash, .control: false
        default: true
        }
    }

    /// What the catalog lock word must look like: corrupted for the races, a valid (merely held) word for
    /// the other lock bugs, nil where the lock is not involved.
    public var expectsCorruptedWord: Bool? {
        switch self {
        case .timeoutRace, .timeoutRaceNatural: true
        case .leakedRead, .guardAcrossElse, .writeThenRead, .slowHolder: false
        default: nil
        }
    }

    /// A lock deadlock that begins the moment the fault is injected (the natural race begins whenever the
    /// race happens to strike): what the overload-deadlock verdict times.
    public var isImmediateDeadlock: Bool {
        switch self {
        case .timeoutRace, .leakedRead, .guardAcrossElse, .writeThenRead, .slowHolder: true
        default: false
        }
    }

    /// Whether the run must produce exactly one incident (every scenario but `control`, which must produce none).
    public var expectsIncident: Bool { self != .control }

    /// Whether the fault is a hang (detected by silence) rather than a death.
    public var isHang: Bool { expectsCore }

    /// The scenarios as operators type them.
    public static var names: String { allCases.map(\.rawValue).joined(separator: ", ") }

    /// Parses "a,b,c" (or "all"); the error names the unknown entry and lists the known ones.
    public static func parseList(_ text: String) throws(ChaosError) -> [ChaosScenario] {
        let parts = text.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        if parts.isEmpty { throw ChaosError(.badOption, "--scenarios '\(text)': empty list (known: \(names))") }
        if parts == ["all"] { return allCases }
        var out: [ChaosScenario] = []
        for p in parts {
            guard let s = ChaosScenario(rawValue: p) else {
                throw ChaosError(.badOption, "--scenarios: unknown scenario '\(p)' (known: \(names), or all)")
            }
            if !out.contains(s) { out.append(s) }
        }
        return out
    }
}

/// The HTTP load around a run.
public enum ChaosLoad: String, CaseIterable, Sendable, Codable {
    /// No requests: restore time is the new instance's first pong.
    case idle
    /// An open-loop HTTP load through the proxy at a fixed rate.
    case steady
    /// The steady load plus `stress-ng --cpu 2×cores`: a starved machine.
    case overload

    /// Whether requests are sent.
    public var sendsRequests: Bool { self != .idle }

    /// The loads as operators type them.
    public static var names: String { allCases.map(\.rawValue).joined(separator: ", ") }

    /// Parses "idle", "steady,overload" or "all".
    public static func parseList(_ text: String) throws(ChaosError) -> [ChaosLoad] {
        let parts = text.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        if parts == ["all"] { return allCases }
        if parts.isEmpty { throw ChaosError(.badOption, "--load '\(text)': empty (known: \(names))") }
        var out: [ChaosLoad] = []
        for p in parts {
            guard let l = ChaosLoad(rawValue: p) else { throw ChaosError(.badOption, "--load: unknown load '\(p)' (known: \(names), or all)") }
            if !out.contains(l) { out.append(l) }
        }
        return out
    }
}

/// A problem with the harness itself (bad options, a part that could not start); never a failed run,
/// which is data in the report.
public struct ChaosError: Error, CustomStringConvertible, Sendable, Equatable {
    /// The class of problem.
    public enum Kind: String, Sendable {
        /// An option or its value is wrong.
        case badOption = "bad-option"
        /// A needed program or file is missing.
        case missing
        /// A part of the harness (backend, report directory, child process) could not start.
        case setup
        /// SIGINT or SIGTERM arrived.
        case interrupted
    }
    /// The class of problem.
    public var kind: Kind
    /// What went wrong, naming the option, file or call.
    public var message: String
    /// Makes an error.
    public init(_ kind: Kind, _ message: String) { self.kind = kind; self.message = message }
    /// The message.
    public var description: String { message }
}
