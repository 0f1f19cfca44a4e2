import DefibCore
import DefibPOSIX

extension CheckConfigCommand {
    /// What only the machine can say: whether the service's user and groups exist, and whether the probe's host
    /// resolves or its program exists — looked up once, as `defib run` does at start-up.
    static func resolutionIssues(_ c: SupervisorConfig) -> [ConfigIssue] {
        var issues: [ConfigIssue] = []
        var credentials: ProcessCredentials?
        do { credentials = try ProcessCredentials.resolve(c.service) } catch {
            issues.append(ConfigIssue(.invalid, key: error.key, error.message))
        }
        if let spec = try? c.heartbeat.probeSpec() {
            do { _ = try ResolvedProbe.resolve(spec, credentials: credentials) } catch {
                issues.append(ConfigIssue(.invalid, key: "heartbeat.probe", error.message))
            }
        }
        return issues
    }

    /// The heartbeat in words: "ping every 200 ms", "http probe GET http://127.0.0.1:8080/health (to 127.0.0.1:8080)
    /// every 200 ms, each within 500 ms".
    static func heartbeatSummary(_ h: SupervisorConfig.Heartbeat) -> String {
        switch h.mode {
        case .ping: return "ping every \(h.intervalMs) ms"
        case .notify: return "sd_notify WATCHDOG=1 every \(h.intervalMs) ms"
        case .both: return "ping and sd_notify WATCHDOG=1, every \(h.intervalMs) ms"
        case .auto: return "auto: ping once the service listens on its control socket, sd_notify once it sends WATCHDOG=1, otherwise its exit only"
        case .none: return "none: the service's exit only"
        case .http, .tcp, .exec:
            guard let spec = try? h.probeSpec() else { return h.mode.rawValue + " probe (not usable, see above)" }
            var text = spec.name
            if let address = try? ResolvedProbe.resolve(spec).address, !spec.name.contains(address.description) {
                text += ", resolved to \(address)"
            }
            if let body = spec.expectBody { text += ", body containing \"\(body)\"" }
            return text + " every \(h.intervalMs) ms, each within \(spec.timeoutMs) ms"
        }
    }

    /// "uid 65534 (nobody), gid 65534, groups [65534]", nil when the service keeps defib's identity.
    static func identitySummary(_ c: SupervisorConfig) -> String? {
        (try? ProcessCredentials.resolve(c.service))??.summary
    }
}
