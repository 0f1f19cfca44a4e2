import DefibCore
import DefibFaults
import Foundation

/// One kind of failure the harness inflicts on the supervised proxy (or none, for a control run): one of
/// the proxy's own faults (the names are `FaultKind`'s), a SIGSTOP, or nothing.
public enum ChaosScenario: Hashable, Sendable {
    /// A fault the proxy injects on itself (`fault NAME` on its control channel).
    case proxyFault(FaultKind)
    /// SIGSTOP to the proxy: the process exists but runs nothing.
    case sigstop
    /// No fault at all: any incident is a false kill.
    case control
    /// Two stalls shorter than the deadline, each of which must end by itself: SIGSTOP for three quarters of the
    /// deadline, then the catalog's write lock held as long (`fault slow-holder MS`). Each must be a `stall`
    /// incident with stacks and the pause its evidence cost; nothing may be killed. Opt-in (`--scenarios stall`):
    /// not part of `all`.
    case stall

    // Each proxy fault as a scenario, by its name.
    public static let timeoutRace = ChaosScenario.proxyFault(.timeoutRace)
    public static let timeoutRaceNatural = ChaosScenario.proxyFault(.timeoutRaceNatural)
    public static let leakedRead = ChaosScenario.proxyFault(.leakedRead)
    public static let guardAcrossElse = ChaosScenario.proxyFault(.guardAcrossElse)
    public static let writeThenRead = ChaosScenario.proxyFault(.writeThenRead)
    public static let slowHolder = ChaosScenario.proxyFault(.slowHolder)
    public static let deadLoop = ChaosScenario.proxyFault(.deadLoop)
    public static let crash = ChaosScenario.proxyFault(.crash)

    /// What the harness does to inject it, as the report names it.
    public var fault: String {
        switch self {
        case let .proxyFault(kind): kind.rawValue
        case .sigstop: "SIGSTOP"
        case .control: "none"
        case .stall: "SIGSTOP for 3/4 of the deadline, then the write lock held as long"
        }
    }

    /// The diagnosis kind the incident must carry; nil for a control run (no incident expected).
    public var expectedDiagnosis: DiagnosisKind? {
        switch self {
        case .proxyFault(.timeoutRace), .proxyFault(.timeoutRaceNatural): .corruptedLockWord
        case .proxyFault(.leakedRead): .leakedReadLock
        case .proxyFault(.guardAcrossElse), .proxyFault(.writeThenRead): .selfDeadlock
        case .proxyFault(.slowHolder): .slowHolder
        case .proxyFault(.deadLoop): .deadLoop
        case .sigstop: .stopped
        case .stall: nil
        case .proxyFault(.crash): .signaled
        case .proxyFault(.exit): .exited
        case .control, .proxyFault(.none): nil
        }
    }

    /// Whether the supervisor should have captured a core: only a live, hung process can be captured
    /// (a crashed one is gone before the supervisor hears of it).
    public var expectsCore: Bool {
        switch self {
        case .proxyFault(.crash), .proxyFault(.exit), .proxyFault(.none), .control, .stall: false
        default: true
        }
    }

    /// What the catalog lock word must look like: corrupted for the races, a valid (merely held) word for
    /// the other lock bugs, nil where the lock is not involved.
    public var expectsCorruptedWord: Bool? {
        switch self {
        case .proxyFault(.timeoutRace), .proxyFault(.timeoutRaceNatural): true
        case .proxyFault(.leakedRead), .proxyFault(.guardAcrossElse), .proxyFault(.writeThenRead), .proxyFault(.slowHolder): false
        default: nil
        }
    }

    /// A lock deadlock that begins the moment the fault is injected (the natural race begins whenever the
    /// race happens to strike): what the overload-deadlock verdict times.
    public var isImmediateDeadlock: Bool {
        switch self {
        case .proxyFault(.timeoutRace), .proxyFault(.leakedRead), .proxyFault(.guardAcrossElse), .proxyFault(.writeThenRead), .proxyFault(.slowHolder): true
        default: false
        }
    }

    /// Whether the run must produce exactly one incident (every scenario but `control`, which must produce none).
    public var expectsIncident: Bool { self != .control }

    /// Whether the fault is a hang (detected by silence) rather than a death.
    public var isHang: Bool { expectsCore }

    /// The scenarios as operators type them (`all` and the opt-in ones).
    public static var names: String { (allCases + optIn).map(\.rawValue).joined(separator: ", ") }

    /// Scenarios run only when named (`--scenarios stall`), not by `all`.
    public static let optIn: [ChaosScenario] = [.stall]

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

extension ChaosScenario: CaseIterable, RawRepresentable, Codable {
    /// The scenarios, in the order a plan runs them: every proxy fault worth a run, SIGSTOP, and the control.
    public static let allCases: [ChaosScenario] = [.timeoutRace, .timeoutRaceNatural, .leakedRead, .guardAcrossElse, .writeThenRead,
                                                   .slowHolder, .deadLoop, .sigstop, .crash, .control]

    /// The name operators type (a fault's own name, `sigstop`, `control`).
    public var rawValue: String {
        switch self {
        case let .proxyFault(kind): kind.rawValue
        case .sigstop: "sigstop"
        case .control: "control"
        case .stall: "stall"
        }
    }

    public init?(rawValue: String) {
        guard let known = (Self.allCases + Self.optIn).first(where: { $0.rawValue == rawValue }) else { return nil }
        self = known
    }

    public init(from decoder: any Decoder) throws {
        let name = try decoder.singleValueContainer().decode(String.self)
        guard let known = ChaosScenario(rawValue: name) else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "unknown scenario '\(name)'"))
        }
        self = known
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(rawValue)
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
