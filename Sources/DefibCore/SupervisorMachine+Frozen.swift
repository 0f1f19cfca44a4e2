/// Restart while the core is written: the hung instance is frozen (every thread ptrace-stopped, so it can serve
/// nothing), its replacement starts at once, and the frozen one is killed when its core is done — never later
/// than the capture budget plus a second.
extension SupervisorMachine {
    /// The frozen instance: its pid, and when it is killed whatever the writer says.
    public struct FrozenInstance: Sendable, Equatable {
        public var pid: Int32
        public var killBy: MonoTime
    }

    /// The hung instance being captured is frozen and its core is being written in the background: the restart
    /// goes ahead as if it were gone (immediate after a hang, else after the backoff), and it is killed when the
    /// core is done (`frozenCoreWritten`) or at `killBy`.
    public mutating func captureFrozen(killBy: MonoTime, at now: MonoTime) -> [SupervisorAction] {
        guard case let .capturing(capture) = state, case let .alive(pid) = capture.target, frozen == nil else { return [] }
        frozen = FrozenInstance(pid: pid, killBy: killBy)
        let actions = afterInstanceGone(readyAt: capture.readyAt, afterHang: true, at: now)
        switch state {
        case .stopped, .gaveUp:
            // No restart after all (shutdown asked for, intensity exceeded): nothing waits for the core.
            frozen = nil
            return [.killFrozen(pid: pid, overdue: false)] + actions
        default:
            return actions
        }
    }

    /// The frozen instance's core is written (or its writer gave up): kill it.
    public mutating func frozenCoreWritten(at now: MonoTime) -> [SupervisorAction] {
        guard let f = frozen else { return [] }
        frozen = nil
        return [.killFrozen(pid: f.pid, overdue: false)]
    }

    /// A frozen instance past `killBy` is killed, core done or not.
    mutating func frozenOverdue(at now: MonoTime) -> [SupervisorAction] {
        guard let f = frozen, now >= f.killBy else { return [] }
        frozen = nil
        return [.killFrozen(pid: f.pid, overdue: true)]
    }

    /// Shutdown: a frozen instance goes at once (its core is cut short).
    mutating func killFrozenAtShutdown() -> [SupervisorAction] {
        guard let f = frozen else { return [] }
        frozen = nil
        return [.killFrozen(pid: f.pid, overdue: false)]
    }
}
