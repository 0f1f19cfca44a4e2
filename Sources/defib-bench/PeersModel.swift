import DefibChaos
import Foundation

// The peer comparison's figures and the pure arithmetic on them: what bench/peers.json holds.

/// The supervisors compared, each a row of the report (some supervisors give two rows: with and without a passed socket).
enum PeerID: String, Codable, CaseIterable, Equatable {
    case defibNative = "defib-native"
    /// The same hang in a proxy grown to 530 MiB RSS (`--ballast 512 --extra-threads 8`): a core that takes time.
    case defibNative530 = "defib-530"
    /// A hang defib has no proof of (`fault leaked-read`, then SIGHUP: the reload waits for the leaked reader):
    /// declared at the deadline.
    case defibLeakedRead = "defib-leaked-read"
    case defibGcore = "defib-gcore"
    case defibNone = "defib-none"
    case defibListen = "defib-listen"
    case monit
    case systemdSocket = "systemd-socket"
    /// systemd's watchdog over the 530 MiB proxy.
    case systemdSocket530 = "systemd-530"
    case systemdListen = "systemd-listen"
    case supervisord

    /// The supervisor program behind the row.
    var supervisor: String {
        switch self {
        case .defibNative, .defibNative530, .defibLeakedRead, .defibGcore, .defibNone, .defibListen: "defib"
        case .monit: "monit"
        case .systemdSocket, .systemdSocket530, .systemdListen: "systemd"
        case .supervisord: "supervisord"
        }
    }

    /// Whether the listening socket outlives the proxy (bound by the supervisor and passed on, LISTEN_FDS).
    var socketPassed: Bool {
        [.defibNative, .defibNative530, .defibLeakedRead, .defibGcore, .defibNone, .systemdSocket, .systemdSocket530].contains(self)
    }

    /// Flags the row adds to the proxy's command line.
    var proxyExtraArguments: [String] {
        self == .defibNative530 || self == .systemdSocket530 ? ["--ballast", "512", "--extra-threads", "8"] : []
    }

    /// The fault the row injects: `timeout-race` (a corrupted lock word: proof), or `leaked-read` (no proof).
    var fault: String { self == .defibLeakedRead ? "leaked-read" : "timeout-race" }

    /// The row's name in the table.
    var title: String {
        switch self {
        case .defibNative: "defib, `--capture native` (default)"
        case .defibNative530: "defib, native, proxy grown to 530 MiB RSS"
        case .defibLeakedRead: "defib, native, `leaked-read` (no proof: the deadline)"
        case .defibGcore: "defib, `--capture gcore`"
        case .defibNone: "defib, `--capture none`"
        case .defibListen: "defib, native, proxy binds `--listen` itself"
        case .monit: "monit 1 s cycle, unixsocket ping, exec gcore + restart"
        case .systemdSocket: "systemd `WatchdogSec=1s`, socket unit"
        case .systemdSocket530: "systemd `WatchdogSec=1s`, socket unit, proxy grown to 530 MiB RSS"
        case .systemdListen: "systemd `WatchdogSec=1s`, proxy binds `--listen`"
        case .supervisord: "supervisord (no hang detection)"
        }
    }

    /// Parses a comma-separated list ("defib-native,monit"); "all" is every row. The error names the unknown one.
    static func parseList(_ text: String) throws -> [PeerID] {
        if text == "all" { return allCases }
        var out: [PeerID] = []
        for part in text.split(separator: ",").map({ $0.trimmingCharacters(in: .whitespaces) }) where !part.isEmpty {
            guard let id = PeerID(rawValue: part) else {
                throw BenchError(kind: .badArgument, message: "--peers: unknown peer '\(part)' (known: \(allCases.map(\.rawValue).joined(separator: ", ")), or all)")
            }
            if !out.contains(id) { out.append(id) }
        }
        if out.isEmpty { throw BenchError(kind: .badArgument, message: "--peers '\(text)': name at least one peer") }
        return out
    }
}

/// What the load generator saw in one repetition's window, and when service came back. Pure.
struct RepWindow: Codable, Equatable {
    /// Fault injection → first successful HTTP response served after the hung instance was gone; nil when that did not
    /// happen within the bound.
    var recoveryMs: Double?
    /// Requests due in the window (fault injection → recovery, or → the bound).
    var requests: Int
    /// Of those: complete 200 responses (the old instance's last ones before the lock broke, and the new instance's).
    var ok: Int
    /// ECONNREFUSED: nobody listened on the port.
    var refused: Int
    /// Resets, short responses, errors other than refusals.
    var failed: Int
    /// No complete response within the request timeout.
    var timedOut: Int
    /// Successes completed between `hangGraceMs` after the fault and the old instance's end (or the window's end):
    /// 0 when the proxy really stopped serving.
    var okWhileHung: Int
    /// Requests due in that same stretch: at least 1, or there was nothing to show the hang with.
    var dueWhileHung: Int

    /// Length of the window, in ms.
    var lengthMs: Double

    /// Time after the fault during which the old instance may still finish requests it had already routed: the staged
    /// race breaks the lock about 50 ms after the fault (an attempt; rarely a second or third). Not longer: defib acting
    /// on proof has its replacement serving about 300 ms after the fault, so a longer grace would leave no stretch to
    /// see the hang in.
    static let hangGraceMs = 150.0

    /// Counts the samples due in [fault, end], where end is the recovery or `faultAt + boundMs`. `oldGoneAt` is when the
    /// hung instance ended (nil: it never did); a success counts as recovery only if it completed after that, so the old
    /// instance's last responses never count as "serving again".
    /// `replacementSeenAt`: when a new instance was first seen beside a hung one kept frozen (defib's restart while the
    /// core is written): a frozen instance runs nothing, so every success from then on is the new instance's.
    static func evaluate(samples: [RequestSample], faultAtUnixMs faultAt: Double, oldGoneAtUnixMs oldGoneAt: Double?,
                         replacementSeenAtUnixMs replacementSeen: Double? = nil, boundMs: Double) -> RepWindow {
        let bound = faultAt + boundMs
        var recoveryAt: Double?
        if let gone = [oldGoneAt, replacementSeen].compactMap({ $0 }).min() {
            recoveryAt = samples.lazy.filter { $0.outcome == .ok && $0.completedUnixMs >= gone && $0.completedUnixMs <= bound }
                .map(\.completedUnixMs).min()
        }
        let end = recoveryAt ?? bound
        var w = RepWindow(recoveryMs: recoveryAt.map { $0 - faultAt }, requests: 0, ok: 0, refused: 0, failed: 0, timedOut: 0,
                          okWhileHung: 0, dueWhileHung: 0, lengthMs: end - faultAt)
        let hungFrom = faultAt + hangGraceMs
        let hungUntil = min([oldGoneAt, replacementSeen].compactMap { $0 }.min() ?? end, end)
        for s in samples {
            if s.scheduledUnixMs >= hungFrom && s.scheduledUnixMs < hungUntil { w.dueWhileHung += 1 }
            if s.outcome == .ok && s.completedUnixMs >= hungFrom && s.completedUnixMs < hungUntil { w.okWhileHung += 1 }
            guard s.scheduledUnixMs >= faultAt && s.scheduledUnixMs <= end else { continue }
            w.requests += 1
            switch s.outcome {
            case .ok: w.ok += 1
            case .refused: w.refused += 1
            case .failed: w.failed += 1
            case .timedOut: w.timedOut += 1
            }
        }
        return w
    }

    /// Whether the proxy demonstrably stopped serving: requests were due while it hung and none succeeded.
    var hangShown: Bool { dueWhileHung > 0 && okWhileHung == 0 }
}

/// A core file and what gdb made of it.
struct CoreEvidence: Codable, Equatable {
    /// Where it was (deleted after the check).
    var path: String
    /// st_size.
    var bytes: Int64
    /// Threads `gdb -batch -ex 'info threads' BINARY CORE` listed.
    var gdbThreads: Int
    /// gdb's exit and first complaint, for the report.
    var gdbDetail: String
    /// gdb listed at least one thread.
    var usable: Bool { gdbThreads > 0 }
}

/// One fault injection and what followed.
struct RepResult: Codable, Equatable {
    /// 0-based.
    var rep: Int
    /// The instance that was hung.
    var oldPid: Int32
    /// The instance serving afterwards, when one was.
    var newPid: Int32?
    /// The proxy's answer to `fault timeout-race`.
    var faultReply: String
    /// When the fault command was sent (Unix ms).
    var faultAtUnixMs: Double
    /// Fault → the hung instance's end (killed), in ms; nil when it never ended within the bound.
    var oldGoneMs: Double?
    /// The requests.
    var window: RepWindow
    /// The core the supervisor left, if any.
    var core: CoreEvidence?
    /// Why there is no core, or what was wrong with it.
    var coreNote: String?
    /// Whether the supervisor recorded the event itself (an incident row, a log line, a journal entry).
    var recorded: Bool
    /// What it recorded, quoted.
    var record: String
    /// What went wrong in this repetition (the fault not acknowledged, the old instance not hung, …).
    var problems: [String] = []
    /// Fault → a new instance seen beside the hung one (defib's restart while the core is written), in ms.
    var replacementSeenMs: Double?
    /// defib's incident: detection → the replacement ready (`restore_ms`), what it was declared on, the capture order.
    var detectedToReadyMs: Double?
    var declaredOn: String?
    var captureOrder: String?
}

/// A supervisor's own cost while the proxy is healthy and idle.
struct SupervisorUsage: Codable, Equatable {
    /// The processes measured ("monit pid 123").
    var processes: [String]
    /// Window length (monotonic), in seconds.
    var seconds: Double
    /// CPU time of those processes in the window (clock_getcpuclockid: every thread, ns resolution), in ns.
    var cpuNs: Int64
    /// VmRSS summed over the processes, sampled once a second: largest and last.
    var rssMaxBytes, rssEndBytes: Int64
    /// What the heartbeat was during the window.
    var heartbeat: String

    /// CPU as a percentage of one core.
    var cpuPercent: Double { seconds > 0 ? Double(cpuNs) / 1e9 / seconds * 100 : 0 }
}

/// One row: a supervisor in one configuration, its repetitions and its cost.
struct PeerResult: Codable, Equatable {
    var id: PeerID
    /// "ok", or "FAIL" when it could not start or run (then `reason` says why and `reps` holds what ran).
    var status: String
    var reason: String?
    /// `monit -V` and the like.
    var version: String
    /// The exact supervisor configuration, in words, with the files under bench/peers/ it was made from.
    var configuration: String
    var reps: [RepResult]
    var usage: SupervisorUsage?
    /// Facts about this row worth a footnote (where the core went, what the log says).
    var notes: [String] = []
}

/// Nearest-rank percentile of values (p in 0…100); nil for none. With 5 values p95 is the largest.
func percentile(_ values: [Double], _ p: Double) -> Double? {
    guard !values.isEmpty else { return nil }
    let sorted = values.sorted()
    let rank = Int((p / 100 * Double(sorted.count)).rounded(.up))
    return sorted[min(max(rank, 1), sorted.count) - 1]
}

/// A row's figures boiled down for the table, read off its repetitions. Pure.
struct PeerSummary: Equatable {
    let row: PeerResult
    init(_ row: PeerResult) { self.row = row }

    var reps: Int { row.reps.count }
    /// The recovery times of the repetitions that recovered.
    var recoveryTimes: [Double] { row.reps.compactMap(\.window.recoveryMs) }
    var recovered: Int { recoveryTimes.count }
    /// Over the recovered repetitions.
    var recovery: Spread? { Spread(recoveryTimes) }
    var recoveryP95: Double? { percentile(recoveryTimes, 95) }
    var oldGone: Spread? { Spread(row.reps.compactMap(\.oldGoneMs)) }
    var coresCaptured: Int { row.reps.filter { $0.core != nil }.count }
    var coresUsable: Int { row.reps.filter { $0.core?.usable == true }.count }
    var recorded: Int { row.reps.filter(\.recorded).count }
    var refused: [Int] { row.reps.map(\.window.refused) }
    var failed: [Int] { row.reps.map(\.window.failed) }
    var timedOut: [Int] { row.reps.map(\.window.timedOut) }
    var hangShown: Int { row.reps.filter(\.window.hangShown).count }
    var problems: Int { row.reps.reduce(0) { $0 + $1.problems.count } }
    /// defib's incidents: detection → the replacement ready.
    var detectedToReady: Spread? { Spread(row.reps.compactMap(\.detectedToReadyMs)) }
    /// How the hangs were declared (`proof` 5, …) and the capture orders, counted.
    var declaredOn: [String: Int] { row.reps.reduce(into: [:]) { $0[$1.declaredOn ?? "-", default: 0] += 1 } }
    var captureOrders: [String: Int] { row.reps.reduce(into: [:]) { $0[$1.captureOrder ?? "-", default: 0] += 1 } }
}

/// bench/peers.json: the envelope every part writes plus every row's figures.
typealias PeersReport = BenchReport<PeersFigures>

/// The peers part's figures.
struct PeersFigures: Codable {
    /// The settings of the run.
    var settings: PeersSettings
    var peers: [PeerResult]
}

/// How the run was made (quoted in the report).
struct PeersSettings: Codable, Equatable {
    /// Fault injections per row, and for supervisord (each waits out the whole bound).
    var reps, supervisordReps: Int
    /// Open-loop load, requests per second, each on a new connection.
    var ratePerSecond: Double
    /// A request with no complete response after this long is a timeout.
    var requestTimeoutMs: Double
    /// How long each repetition waits for service to come back.
    var boundSeconds: Int
    /// The supervisor-cost window.
    var usageSeconds: Int
    /// `defib run --interval` and `--deadline`.
    var defibIntervalMs, defibDeadlineMs: Int
    /// The proxy's arguments common to every row.
    var proxyArguments: String
    /// gdb's version line.
    var gdbVersion: String
    /// /proc/sys/kernel/core_pattern at the start (where systemd's kernel core goes).
    var corePattern: String
    /// The 530 MiB proxy started alone (spawn → first pong), ms, when a 530 MiB row ran: what defib's detected → ready
    /// is held to.
    var proxyStart530Ms: [Double]?
}

/// Fills `@NAME@` placeholders of a config template. Pure; the error names the template and the placeholder.
enum PeerTemplate {
    static func render(_ text: String, name: String, values: [String: String]) throws -> String {
        var out = ""
        var rest = Substring(text)
        while let open = rest.firstIndex(of: "@") {
            out += rest[..<open]
            let afterOpen = rest.index(after: open)
            guard let close = rest[afterOpen...].firstIndex(of: "@") else {
                throw BenchError(kind: .badArgument, message: "template \(name): unterminated placeholder at '\(rest[open...].prefix(20))'")
            }
            let key = String(rest[afterOpen..<close])
            guard !key.isEmpty, key.allSatisfy({ $0.isUppercase || $0 == "_" || $0.isNumber }) else {
                throw BenchError(kind: .badArgument, message: "template \(name): '@\(key)@' is not a placeholder (write @NAME@ in capitals)")
            }
            guard let value = values[key] else {
                throw BenchError(kind: .badArgument, message: "template \(name): no value for @\(key)@ (known: \(values.keys.sorted().joined(separator: ", ")))")
            }
            out += value
            rest = rest[rest.index(after: close)...]
        }
        return out + rest
    }
}
