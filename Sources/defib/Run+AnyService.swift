import ArgumentParser
import DefibCore
import DefibPOSIX

extension RunCommand {
    /// Resolves what the identity settings name (users, groups) — so a mistake is a clear error at start-up,
    /// never a failure at the first restart — and refuses, naming it, a service user or group: this build does
    /// not yet run the service as another user (its run directory and NOTIFY_SOCKET must be made usable by that
    /// user first), and running it as root instead would be a lie.
    static func checkAnyServiceSettings(_ cfg: SupervisorConfig) throws {
        let credentials: ProcessCredentials?
        do { credentials = try ProcessCredentials.resolve(cfg.service) } catch { throw ValidationError("\(error)") }
        if credentials != nil {
            throw ValidationError("service user/group checked, but not yet run by this build's supervisor (run defib as the service's user for now)")
        }
    }
}
