/// How far the fleet shipper, working beside the supervision loop on the store's outbox, is behind: what
/// defib's STATUS= line shows (`systemctl status` is where an operator first looks when incidents do not
/// reach the fleet database).
public struct ShippingReport: Sendable, Equatable {
    /// Changes recorded locally and not yet committed by the fleet database.
    public var pending: Int
    /// The last failure while it lasts (nil once a shipment succeeds).
    public var failing: String?

    /// Makes a report.
    public init(pending: Int, failing: String? = nil) { self.pending = pending; self.failing = failing }

    /// One clause of STATUS=: `fleet: 0 pending` or `fleet: 12 pending, failing: …` (the failure cut to 100
    /// characters, so a long driver message cannot crowd out the supervisor's own state).
    public var statusClause: String {
        var s = "fleet: \(pending) pending"
        if let failing { s += ", failing: \(failing.prefix(100))" }
        return s
    }
}

/// Work beside the supervision loop on the store's outbox (the fleet shipper). The loop never waits for it;
/// it only asks, through `SupervisorEffects.shippingReport`, how it is doing.
public protocol ShippingReporter: AnyObject, Sendable {
    /// Now; cheap and never blocking, because the supervision loop asks.
    var shippingReport: ShippingReport { get }
}
