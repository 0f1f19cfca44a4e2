import DefibCore
import Foundation
import Testing

/// The fleet shipper beside the loop: the supervision asks it for its backlog (`readShipping`, answered at
/// once) and shows it in STATUS=; it never waits for it, and nothing it reports changes what is supervised
/// or stored.
@Suite struct SupervisorShippingTests {
    static let refused = "connect(127.0.0.1:5432): Connection refused"

    static func hangingWorld() -> FakeEffects {
        let fake = FakeEffects()
        fake.behaviours = [.hangs(afterMs: 300), .healthy]
        return fake
    }

    /// A backlog that appears with the incident while the fleet database is down, then drains: STATUS= shows
    /// each report (asked at start, so READY=1 carries one, then every turn), and the incident, the effects
    /// on the service and on the store are exactly those of the same run without a shipper.
    @Test func theBacklogGoesIntoStatusAsItChangesAndChangesNothingElse() throws {
        let plain = Run(Self.hangingWorld(), stopAtMs: 2000, managerListening: true)
        let fake = Self.hangingWorld()
        fake.shippingReports = [(0, ShippingReport(pending: 0)), (900, ShippingReport(pending: 1, failing: Self.refused)),
                                (1500, ShippingReport(pending: 0))]
        let run = Run(fake, stopAtMs: 2000, managerListening: true, shipping: true)
        #expect(run.code == 0 && plain.code == 0)

        // Asked first, before the instance is spawned; READY=1 comes with the backlog.
        #expect(Array(fake.calls.prefix(2)) == ["readShipping fleet: 0 pending", "spawn 100"])
        let statuses = fake.calls.filter { $0.hasPrefix("notify ") }
        #expect(statuses.first == "notify READY=1 STATUS=svc: running pid 100; 0 restart(s); fleet: 0 pending")
        // Each status shows the report read last before it (never a stale one for longer than a turn).
        var lastRead: String?
        var shown: [String] = []
        for call in fake.calls {
            if call.hasPrefix("readShipping ") { lastRead = String(call.dropFirst("readShipping ".count)) }
            guard call.hasPrefix("notify "), call.contains("STATUS=svc:") else { continue }
            let clause = try #require(call.range(of: "; fleet: ").map { String(call[call.index(after: $0.lowerBound)...]).trimmingCharacters(in: .whitespaces) })
            #expect(clause == lastRead, "\(call)")
            if shown.last != clause { shown.append(clause) }
        }
        #expect(shown == ["fleet: 0 pending", "fleet: 1 pending, failing: \(Self.refused)", "fleet: 0 pending"])
        #expect(fake.managerMessages.contains(
            "STATUS=svc: running pid 101; 1 restart(s); last incident #1 missed-heartbeat at 2027-01-15T08:00:00.803Z; fleet: 1 pending, failing: \(Self.refused)"))
        #expect(fake.managerMessages.contains("STOPPING=1\nSTATUS=stopping (SIGTERM)"))

        // The supervision itself is untouched: the same effects in the same order, the same stored incident.
        func supervision(_ calls: [String]) -> [String] {
            calls.filter { !$0.hasPrefix("readShipping") && !$0.hasPrefix("notify ") && !$0.hasPrefix("ping ") && $0 != "cancelPing" }
        }
        #expect(supervision(fake.calls) == supervision(plain.fake.calls))
        expectInOrder(fake.actions, ["spawn 100", "insert 1", "writeCore 100 native first=100", "signal 100 SIGKILL", "spawn 101",
                                     "startStacks /state/cores/core.svc.1.100", "signal 101 SIGTERM"])
        #expect(run.incidents == plain.incidents)
        let incident = try #require(run.incidents.first)
        #expect(run.incidents.count == 1 && incident.outcome == .recovered && incident.cause.kind == "missed-heartbeat")
        #expect(incident.capture?.path == "/state/cores/core.svc.1.100" && incident.stacks == fake.stacksText)
    }

    /// The backlog is only for STATUS=: with no service manager listening the shipper is never asked, and a
    /// supervisor without a shipper never asks (its statuses carry no fleet clause).
    @Test func theShipperIsAskedOnlyWhenAManagerListensAndOneRuns() throws {
        let unheard = Self.hangingWorld()
        unheard.shippingReports = [(0, ShippingReport(pending: 3))]
        let quiet = Run(unheard, stopAtMs: 2000, managerListening: false, shipping: true)
        #expect(quiet.code == 0)
        #expect(!unheard.calls.contains { $0.hasPrefix("readShipping") } && unheard.managerMessages.isEmpty)
        #expect(quiet.incidents.count == 1)

        let alone = Self.hangingWorld()
        alone.shippingReports = [(0, ShippingReport(pending: 3))]
        let plain = Run(alone, stopAtMs: 2000, managerListening: true, shipping: false)
        #expect(plain.code == 0)
        #expect(!alone.calls.contains { $0.hasPrefix("readShipping") })
        #expect(!alone.managerMessages.isEmpty && !alone.managerMessages.contains { $0.contains("fleet:") })
    }
}
