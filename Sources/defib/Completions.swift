import ArgumentParser
import DefibCore
import DefibStore
import Foundation

/// Shell completion of the values that live in a state directory: incident ids and service names. The shell
/// calls defib back (`defib ---completion …`) as the user presses Tab, so these read only what is cheap — the
/// run/ directory and the newest incidents through a read-only store — and answer nothing rather than fail.
enum StateCompletion {
    /// Where the units keep their state; what completion looks in when the command line names no directory.
    static let defaultStateDirectory = "/var/lib/defib"
    /// How many incidents are offered (the newest).
    static let incidentLimit = 200

    /// Incident ids for `info`, `gdb`, `export`: `last`, then the ids, newest first.
    @Sendable static func incidentIDs(_ words: [String], _ index: Int, _ prefix: String) -> [String] {
        let incidents = (try? store(words: words)?.list(limit: incidentLimit)) ?? []
        return matching(["last"] + incidents.compactMap { $0.id.map(String.init) }, prefix)
    }

    /// Service names for `ctl --name`: the services with a run directory.
    @Sendable static func runningServices(_ words: [String], _ index: Int, _ prefix: String) -> [String] {
        matching(runDirectoryNames(stateDirectory(words: words)), prefix)
    }

    /// Service names for `incidents --service`: those with incidents, and those with a run directory.
    @Sendable static func incidentServices(_ words: [String], _ index: Int, _ prefix: String) -> [String] {
        let dir = stateDirectory(words: words)
        let recorded = ((try? store(words: words)?.list(limit: incidentLimit)) ?? []).map(\.service)
        return matching(Array(Set(recorded + runDirectoryNames(dir))).sorted(), prefix)
    }

    /// The state directory the command line being completed names: `--state-dir DIR`, `--state-dir=DIR`, or the
    /// `state_dir` of `--config FILE`; else the units' /var/lib/defib.
    static func stateDirectory(words: [String]) -> String {
        func value(_ option: String) -> String? {
            for (i, word) in words.enumerated() {
                if word == option, i + 1 < words.count { return unquoted(words[i + 1]) }
                if word.hasPrefix(option + "=") { return unquoted(String(word.dropFirst(option.count + 1))) }
            }
            return nil
        }
        if let dir = value("--state-dir"), !dir.isEmpty { return expandingTilde(dir) }
        if let file = value("--config"), let config = try? SupervisorConfig.load(path: expandingTilde(file)),
           !config.stateDirectory.isEmpty {
            return config.stateDirectory
        }
        return defaultStateDirectory
    }

    /// The store, read-only; nil when there is none (completion then offers nothing).
    static func store(words: [String]) throws -> IncidentStore? {
        let dir = stateDirectory(words: words)
        guard FileManager.default.fileExists(atPath: IncidentStore.databasePath(stateDirectory: dir)) else { return nil }
        return try IncidentStore.openReadOnly(stateDirectory: dir)
    }

    /// The directories under STATE_DIR/run (one per supervised service).
    static func runDirectoryNames(_ stateDirectory: String) -> [String] {
        let run = stateDirectory + "/run"
        return ((try? FileManager.default.contentsOfDirectory(atPath: run)) ?? []).filter { name in
            var isDirectory: ObjCBool = false
            return FileManager.default.fileExists(atPath: run + "/" + name, isDirectory: &isDirectory) && isDirectory.boolValue
        }.sorted()
    }

    static func matching(_ candidates: [String], _ prefix: String) -> [String] {
        let bare = unquoted(prefix)
        return candidates.filter { $0.hasPrefix(bare) }
    }

    /// Shell words arrive verbatim: drop one level of surrounding quotes.
    static func unquoted(_ word: String) -> String {
        for quote in ["'", "\""] where word.hasPrefix(quote) {
            let body = word.dropFirst()
            return String(body.hasSuffix(quote) ? body.dropLast() : body)
        }
        return word
    }

    static func expandingTilde(_ path: String) -> String {
        path.hasPrefix("~/") ? (ProcessInfo.processInfo.environment["HOME"] ?? "~") + path.dropFirst() : path
    }
}
