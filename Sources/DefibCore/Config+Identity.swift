import Foundation

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
