/// The names of the faults the reference proxy can inject on itself: one list for the proxy (which arms
/// them), the chaos harness (which runs a scenario per fault) and the CLI (`defib ctl fault NAME`).
/// The lock bugs (and plain failures) the proxy reproduces on demand.
public enum FaultKind: String, CaseIterable, Sendable {
    /// Clears a pending fault. A corrupted lock word cannot be repaired.
    case none
    /// The parking_lot `try_write_for` race, staged deterministically with the TimeoutGate.
    case timeoutRace = "timeout-race"
    /// The same race left to happen by itself under churn (buggy revert, short timeouts, no gate).
    case timeoutRaceNatural = "timeout-race-natural"
    /// A request path leaks a read guard; the next waiting write queues every reader behind it.
    case leakedRead = "leaked-read"
    /// A read guard held across an else branch that takes the write lock: self-deadlock.
    case guardAcrossElse = "guard-across-else"
    /// A catalog update reads the catalog (through the read lock) from inside its write section: the
    /// writer waits for itself, like a read guard held across an else, the other way round.
    case writeThenRead = "write-then-read"
    /// A catalog update holds the write lock while blocked in a call that does not return (an hour):
    /// a live, named holder every reader queues behind.
    case slowHolder = "slow-holder"
    /// Every event loop thread spins forever (CPU-bound, no locks).
    case deadLoop = "dead-loop"
    /// The process aborts (SIGABRT, core dumped if allowed).
    case crash
    /// The process exits with code 3.
    case exit

    /// The kinds as operators type them, for help and error messages.
    public static var names: String { allCases.map(\.rawValue).joined(separator: ", ") }
}
