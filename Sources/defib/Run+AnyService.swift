import ArgumentParser
import DefibCore
import DefibPOSIX

extension RunCommand {
    /// Resolves what the probe and identity settings name (users, groups, the probe's host or program) — so a
    /// mistake is a clear error at start-up, never a failure at the first restart — and refuses, naming them, the
    /// settings this build's supervisor loop does not run yet: probes, `auto`, `none` and a service user or
    /// group are checked here but wired into the loop separately.
    static func checkAnyServiceSettings(_ cfg: SupervisorConfig) throws {
        let credentials: ProcessCredentials?
        do { credentials = try ProcessCredentials.resolve(cfg.service) } catch { throw ValidationError("\(error)") }
        do {
            if let spec = try cfg.heartbeat.probeSpec() { _ = try ResolvedProbe.resolve(spec, credentials: credentials) }
        } catch {
            throw ValidationError("heartbeat.probe: \(error)")
        }
        var pending: [String] = []
        if cfg.heartbeat.mode.protocolSource == nil {
            pending.append("heartbeat source \"\(cfg.heartbeat.mode.rawValue)\"")
        }
        if credentials != nil { pending.append("service user/group") }
        if !pending.isEmpty {
            throw ValidationError(pending.joined(separator: " and ")
                + " checked, but not yet run by this build's supervisor (for now: --heartbeat ping, notify or both, without a service user or group)")
        }
    }
}
