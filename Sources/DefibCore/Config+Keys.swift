import Foundation

/// One scalar setting of a config file's section: its key and where it lives in `SupervisorConfig`. The
/// reader and the writer (`tomlText`) walk the same list, so a key can never be read one way and written
/// another.
struct ConfigField {
    enum Slot {
        case int(WritableKeyPath<SupervisorConfig, Int>)
        case optionalInt(WritableKeyPath<SupervisorConfig, Int?>)
        case number(WritableKeyPath<SupervisorConfig, Double>)
        case bool(WritableKeyPath<SupervisorConfig, Bool>)
        /// Unset means a default decided at run time (e.g. "only under journald").
        case optionalBool(WritableKeyPath<SupervisorConfig, Bool?>)
        case optionalString(WritableKeyPath<SupervisorConfig, String?>)
        /// Bytes in the config, whole MiB in the file.
        case mebibytes(WritableKeyPath<SupervisorConfig, Int64?>)
        case mode(WritableKeyPath<SupervisorConfig, HeartbeatMode>)
        case method(WritableKeyPath<SupervisorConfig, CaptureMethod>)
        case compression(WritableKeyPath<SupervisorConfig, CoreCompression>)
        case notifyAccess(WritableKeyPath<SupervisorConfig, NotifyAccess>)
        case runtime(WritableKeyPath<SupervisorConfig, RuntimeSetting>)
        case stallEvidence(WritableKeyPath<SupervisorConfig, StallEvidenceMode>)
    }

    let key: String
    let slot: Slot
    init(_ key: String, _ slot: Slot) { self.key = key; self.slot = slot }

    /// The sections made of scalar settings, in file order, each key in the order it is read.
    static var sections: [(name: String, fields: [ConfigField])] {
        [
            ("heartbeat", [.init("source", .mode(\.heartbeat.mode)), .init("interval_ms", .int(\.heartbeat.intervalMs)),
                           .init("deadline_ms", .int(\.heartbeat.deadlineMs)), .init("misses", .int(\.heartbeat.misses)),
                           .init("start_timeout_ms", .int(\.heartbeat.startTimeoutMs)),
                           .init("control_socket", .optionalString(\.heartbeat.controlSocket)),
                           .init("probe", .optionalString(\.heartbeat.probe)),
                           .init("probe_timeout_ms", .optionalInt(\.heartbeat.probeTimeoutMs)),
                           .init("probe_expect_status", .optionalInt(\.heartbeat.probeExpectStatus)),
                           .init("probe_expect_body", .optionalString(\.heartbeat.probeExpectBody)),
                           .init("probe_send", .optionalString(\.heartbeat.probeSend)),
                           .init("probe_expect", .optionalString(\.heartbeat.probeExpect)),
                           .init("notify_access", .notifyAccess(\.heartbeat.notifyAccess))]),
            ("capture", [.init("method", .method(\.capture.method)), .init("budget_ms", .int(\.capture.budgetMs)),
                         .init("directory", .optionalString(\.capture.directory)), .init("stacks", .bool(\.capture.stacks)),
                         .init("compress", .compression(\.capture.compress)),
                         .init("announce_to_coredumpctl", .optionalBool(\.capture.announceToCoredumpctl)),
                         .init("runtime", .runtime(\.capture.runtime)), .init("runtime_budget_ms", .int(\.capture.runtimeBudgetMs))]),
            ("restart", [.init("backoff_initial_ms", .int(\.restart.backoffInitialMs)), .init("backoff_max_ms", .int(\.restart.backoffMaxMs)),
                         .init("backoff_multiplier", .number(\.restart.backoffMultiplier)),
                         .init("backoff_reset_ms", .int(\.restart.backoffResetMs)), .init("intensity_max", .int(\.restart.intensityMax)),
                         .init("intensity_window_ms", .int(\.restart.intensityWindowMs)),
                         .init("stop_timeout_ms", .int(\.restart.stopTimeoutMs)),
                         .init("immediate_after_hang", .bool(\.restart.immediateAfterHang))]),
            ("escalation", [.init("miss_ms", .optionalInt(\.escalation.missMs)), .init("suspect_ms", .optionalInt(\.escalation.suspectMs)),
                            .init("extension_step_ms", .optionalInt(\.escalation.extensionStepMs)),
                            .init("max_extension_ms", .optionalInt(\.escalation.maxExtensionMs)),
                            .init("kill_jitter_ms", .int(\.escalation.killJitterMs)),
                            .init("act_on_proof", .bool(\.escalation.actOnProof)),
                            .init("stall_evidence", .stallEvidence(\.escalation.stallEvidence)),
                            .init("stall_evidence_budget_ms", .int(\.escalation.stallEvidenceBudgetMs)),
                            .init("stall_incidents_per_hour", .int(\.escalation.stallIncidentsPerHour))]),
            ("retention", [.init("max_use_mb", .mebibytes(\.retention.maxUseBytes)), .init("keep_free_mb", .mebibytes(\.retention.keepFreeBytes)),
                           .init("max_per_service", .int(\.retention.maxPerService))]),
        ]
    }

    /// The value as a TOML literal; nil when unset.
    func literal(in config: SupervisorConfig) -> String? {
        switch slot {
        case let .int(path): String(config[keyPath: path])
        case let .optionalInt(path): config[keyPath: path].map(String.init)
        case let .number(path): String(config[keyPath: path])
        case let .bool(path): String(config[keyPath: path])
        case let .optionalBool(path): config[keyPath: path].map { String($0) }
        case let .optionalString(path): config[keyPath: path].map(tomlString)
        case let .mebibytes(path): config[keyPath: path].map { String($0 >> 20) }
        case let .mode(path): tomlString(config[keyPath: path].rawValue)
        case let .method(path): tomlString(config[keyPath: path].rawValue)
        case let .compression(path): tomlString(config[keyPath: path].rawValue)
        case let .notifyAccess(path): tomlString(config[keyPath: path].rawValue)
        case let .runtime(path): tomlString(config[keyPath: path].rawValue)
        case let .stallEvidence(path): tomlString(config[keyPath: path].rawValue)
        }
    }
}

/// A TOML basic string.
func tomlString(_ s: String) -> String {
    var out = ""
    JSONValue.writeString(s, into: &out)
    return out
}

extension SupervisorConfig {
    /// The config as a file `load` reads back to the same value: what a program that builds a config (the
    /// chaos harness) hands to `defib run --config`. Empty settings (no state directory, no service yet)
    /// are left out, so flags can supply them.
    public var tomlText: String {
        var out = ""
        if !stateDirectory.isEmpty { out += "state_dir = \(tomlString(stateDirectory))\n" }
        var service: [String] = []
        if !self.service.name.isEmpty { service.append("name = \(tomlString(self.service.name))") }
        if !self.service.argv.isEmpty { service.append("argv = [" + self.service.argv.map(tomlString).joined(separator: ", ") + "]") }
        if let dir = self.service.workingDirectory { service.append("working_directory = \(tomlString(dir))") }
        if let user = self.service.user { service.append("user = \(tomlString(user))") }
        if let group = self.service.group { service.append("group = \(tomlString(group))") }
        if let groups = self.service.supplementaryGroups {
            service.append("supplementary_groups = [" + groups.map(tomlString).joined(separator: ", ") + "]")
        }
        if !self.service.environment.isEmpty {
            service.append("env = { " + self.service.environment.sorted { $0.key < $1.key }
                .map { "\(tomlString($0.key)) = \(tomlString($0.value))" }.joined(separator: ", ") + " }")
        }
        if !service.isEmpty { out += "\n[service]\n" + service.joined(separator: "\n") + "\n" }
        for section in ConfigField.sections {
            let lines = section.fields.compactMap { field in field.literal(in: self).map { "\(field.key) = \($0)" } }
            if !lines.isEmpty { out += "\n[\(section.name)]\n" + lines.joined(separator: "\n") + "\n" }
        }
        if !sockets.isEmpty {
            out += "\n[sockets]\n" + sockets.map { spec in
                let host = spec.host.contains(":") ? "[\(spec.host)]" : spec.host
                return "\(spec.name) = \(tomlString("\(host):\(spec.port)"))"
            }.joined(separator: "\n") + "\n"
        }
        if let listen = metricsListen { out += "\n[metrics]\nlisten = \(tomlString(listen))\n" }
        if let fleet {
            var lines = ["url = \(tomlString(fleet.url))"]
            if let host = fleet.host { lines.append("host = \(tomlString(host))") }
            if let file = fleet.passwordFile { lines.append("password_file = \(tomlString(file))") }
            lines += ["fleet_alert_hosts = \(fleet.alertHosts)", "fleet_alert_window = \(fleet.alertWindowSeconds)"]
            out += "\n[fleet]\n" + lines.joined(separator: "\n") + "\n"
        }
        return out
    }
}
