/// The configuration of probe heartbeats (`[heartbeat] source = "http"|"tcp"|"exec"`, `probe`, `probe_*`) and of
/// the service's identity (`[service] user`, `group`, `supplementary_groups`): defaults and range checks.
/// Names and host names are resolved once at start-up by `DefibPOSIX`, not here.
extension SupervisorConfig.Heartbeat {
    /// One probe attempt's limit: `probe_timeout_ms`, or half the deadline so that two attempts fit in one.
    public var effectiveProbeTimeoutMs: Int { probeTimeoutMs ?? max(1, deadlineMs / 2) }

    /// The probe this configuration runs, nil when the source is not a probe. Throws the first problem (the
    /// same ones `probeIssues()` lists).
    public func probeSpec() throws -> ProbeSpec? {
        guard let kind = mode.probeKind else { return nil }
        if let first = probeIssues().first { throw ConfigError([first]) }
        guard let text = probe else { return nil }
        let target = try ProbeSpec.target(kind: kind, text).get()
        return ProbeSpec(target: target, timeoutMs: effectiveProbeTimeoutMs, expectStatus: probeExpectStatus,
                         expectBody: probeExpectBody, send: probeSend, expectPrefix: probeExpect)
    }

    /// Every probe setting that cannot work, each naming its key.
    public func probeIssues() -> [ConfigIssue] {
        var issues: [ConfigIssue] = []
        func bad(_ key: String, _ message: String) { issues.append(ConfigIssue(.invalid, key: "heartbeat." + key, message)) }
        let kind = mode.probeKind
        if let kind {
            if let text = probe {
                if case let .failure(e) = ProbeSpec.target(kind: kind, text) { bad("probe", e.message) }
            } else {
                let example = switch kind {
                case .http: "a URL such as http://127.0.0.1:8080/health"
                case .tcp: "HOST:PORT such as 127.0.0.1:6379"
                case .exec: "a command such as redis-cli -p 6379 ping"
                }
                bad("probe", "required with source = \"\(kind.rawValue)\": \(example)")
            }
        } else if probe != nil {
            bad("probe", "only used with source = \"http\", \"tcp\" or \"exec\" (source is \"\(mode.rawValue)\")")
        }
        // Keys of one kind of probe given to another (or to no probe) are mistakes, not silently ignored.
        let only: [(key: String, set: Bool, kinds: [ProbeKind])] = [
            ("probe_timeout_ms", probeTimeoutMs != nil, [.http, .tcp, .exec]),
            ("probe_expect_status", probeExpectStatus != nil, [.http]),
            ("probe_expect_body", probeExpectBody != nil, [.http]),
            ("probe_send", probeSend != nil, [.tcp]),
            ("probe_expect", probeExpect != nil, [.tcp]),
        ]
        for entry in only where entry.set && !(kind.map(entry.kinds.contains) ?? false) {
            bad(entry.key, "only used with source = " + entry.kinds.map { "\"\($0.rawValue)\"" }.joined(separator: ", ")
                + " (source is \"\(mode.rawValue)\")")
        }
        if let t = probeTimeoutMs {
            if t < 1 || t > SupervisorConfig.maximumDurationMs {
                bad("probe_timeout_ms", "must be between 1 and \(SupervisorConfig.maximumDurationMs) ms, got \(t)")
            } else if t > deadlineMs {
                bad("probe_timeout_ms", "must not exceed heartbeat.deadline_ms (\(deadlineMs)): a probe slower than the deadline could never answer in time, got \(t)")
            }
        }
        if let s = probeExpectStatus, !(100...599).contains(s) { bad("probe_expect_status", "must be an HTTP status from 100 to 599, got \(s)") }
        if let b = probeExpectBody, b.isEmpty { bad("probe_expect_body", "must not be empty") }
        if let s = probeSend {
            if s.isEmpty { bad("probe_send", "must not be empty (leave it out to only connect)") }
            if s.contains(where: { $0 == "\r" || $0 == "\n" }) { bad("probe_send", "one line: CR/LF is appended by defib") }
        }
        if let e = probeExpect, e.isEmpty { bad("probe_expect", "must not be empty") }
        return issues
    }
}

extension SupervisorConfig.Service {
    /// Whether the child's credentials differ from defib's (a user or a group is set).
    public var changesIdentity: Bool { user != nil || group != nil || supplementaryGroups != nil }

    /// The identity settings that cannot be names or ids (whether they exist is checked at start-up).
    public func identityIssues() -> [ConfigIssue] {
        var issues: [ConfigIssue] = []
        func check(_ key: String, _ value: String) {
            if value.isEmpty { issues.append(ConfigIssue(.invalid, key: "service." + key, "must not be empty")); return }
            if value.contains(where: { $0 == ":" || $0 == "/" || $0 == "," || $0.isWhitespace || $0.isNewline }) {
                issues.append(ConfigIssue(.invalid, key: "service." + key, "\"\(value)\" is not a user or group name or id"))
            }
        }
        if let user { check("user", user) }
        if let group { check("group", group) }
        for (n, g) in (supplementaryGroups ?? []).enumerated() { check("supplementary_groups[\(n)]", g) }
        if supplementaryGroups != nil, user == nil, group == nil {
            issues.append(ConfigIssue(.invalid, key: "service.supplementary_groups",
                                      "only used with service.user or service.group (defib's own groups are kept otherwise)"))
        }
        return issues
    }
}
