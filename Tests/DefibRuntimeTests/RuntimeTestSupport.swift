import DefibCore
import DefibRuntime
import Foundation
import Logging
import Synchronization
import Testing

/// Log lines as the runtime writes them, for assertions.
final class LogRecorder: Sendable {
    private let storage = Mutex<[String]>([])
    var lines: [String] { storage.withLock { $0 } }
    func append(_ line: String) { storage.withLock { $0.append(line) } }
    func contains(_ text: String) -> Bool { lines.contains { $0.contains(text) } }
}

struct RecordingLogHandler: LogHandler {
    let recorder: LogRecorder
    var logLevel: Logger.Level = .trace
    var metadata: Logger.Metadata = [:]
    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }
    func log(event: LogEvent) {
        let fields = (event.metadata ?? [:]).sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
        recorder.append("\(event.level) \(event.message)" + (fields.isEmpty ? "" : " [\(fields)]"))
    }
}

/// The settings every runtime test starts from: interval 100, deadline 500 with at least 2 misses (so a miss
/// after 125 ms, suspect at 250 ms of silence, starvation extensions of 250 ms up to 1000 ms), start timeout
/// 2000, capture budget 1000, a 100 ms backoff doubling, 3 restarts in 10 s, stop timeout 1000. No stall evidence
/// (`stall_evidence = none`): the hang paths' effects are checked as they are; SupervisorStallTests turn it on.
func testConfig(_ change: (inout SupervisorConfig) -> Void = { _ in }) -> SupervisorConfig {
    var config = SupervisorConfig(service: .init(name: "svc", argv: ["/usr/bin/fake-service", "--serve"]), stateDirectory: "/state")
    config.heartbeat.intervalMs = 100
    config.heartbeat.deadlineMs = 500
    config.heartbeat.misses = 2
    config.heartbeat.startTimeoutMs = 2000
    config.capture.budgetMs = 1000
    config.restart.backoffInitialMs = 100
    config.restart.intensityMax = 3
    config.restart.intensityWindowMs = 10_000
    config.restart.stopTimeoutMs = 1000
    // The deadline path, restarts after the backoff: the proof path and the immediate restart after a hang have
    // their own tests (SupervisorProofTests), which turn these on.
    config.escalation.actOnProof = false
    config.restart.immediateAfterHang = false
    config.escalation.stallEvidence = .none
    change(&config)
    return config
}

/// A supervisor over `fake`, run until it exits (SIGTERM at `stopAtMs` unless the test scheduled its own end).
struct Run {
    let code: Int32
    let logs: LogRecorder
    let fake: FakeEffects

    var incidents: [Incident] { fake.stored.keys.sorted().map { fake.stored[$0]! } }

    init(_ fake: FakeEffects, config: SupervisorConfig = testConfig(), stopAtMs: Int64? = 3000, managerWatchdogUsec: UInt64? = nil,
         managerListening: Bool = false, underJournald: Bool = false, shipping: Bool = false) {
        let logs = LogRecorder()
        let logger = Logger(label: "test") { _ in RecordingLogHandler(recorder: logs) }
        if let stopAtMs { fake.schedule(at: stopAtMs, .signal(SIGTERM)) }
        let setup = Supervision.Setup(config: config, managerWatchdogUsec: managerWatchdogUsec, managerListening: managerListening,
                                      childrenBeforeUs: [1], underJournald: underJournald, hostname: "testhost",
                                      shipping: shipping)
        let supervisor = Supervisor(setup, effects: fake, logger: logger)
        self.code = supervisor.run()
        self.logs = logs
        self.fake = fake
    }
}

/// `expected` appears in `calls` in this order (other calls may come between).
func expectInOrder(_ calls: [String], _ expected: [String], sourceLocation: SourceLocation = #_sourceLocation) {
    var index = calls.startIndex
    for step in expected {
        guard let found = calls[index...].firstIndex(where: { $0 == step }) else {
            Issue.record("'\(step)' missing (in order) from:\n\(calls.joined(separator: "\n"))", sourceLocation: sourceLocation)
            return
        }
        index = calls.index(after: found)
    }
}
