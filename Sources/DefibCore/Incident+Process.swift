import Foundation

/// Who the supervised process was, read from /proc while it still existed: what `coredumpctl list` shows of a
/// core (UID, GID, COMM) and what `info` adds (command line, unit). A hang's is read with its evidence, just
/// before the core; a death is reaped before its incident opens, so its is the one read once the instance was
/// ready (or, if it never was, right after its exec: possibly a wrapper that had not exec'd the service yet).
public struct IncidentProcess: Sendable, Equatable, Codable {
    /// Real user id (`Uid:` in /proc/PID/status; core(5)'s `%u`).
    public var uid: UInt32
    /// Real group id (`Gid:`; core(5)'s `%g`).
    public var gid: UInt32
    /// The kernel's short name (/proc/PID/comm, at most 15 bytes): coredumpctl's COMM, the bare-word match.
    public var comm: String
    /// The command line (/proc/PID/cmdline).
    public var argv: [String]
    /// The process's cgroup as systemd sees it (`/system.slice/system-defib.slice/defib@proxy.service`), when known.
    public var cgroup: String?

    /// Makes a record.
    public init(uid: UInt32, gid: UInt32, comm: String, argv: [String], cgroup: String? = nil) {
        self.uid = uid; self.gid = gid; self.comm = comm; self.argv = argv; self.cgroup = cgroup
    }

    /// The systemd unit the process ran in (`defib@proxy.service`), from its cgroup; nil outside systemd.
    public var unit: String? { cgroup.flatMap { SystemdCgroup.split($0).unit } }
    /// The slice of that unit (`system-defib.slice`).
    public var slice: String? { cgroup.flatMap { SystemdCgroup.split($0).slice } }

    /// The command line as systemd-coredump writes COREDUMP_CMDLINE: words separated by spaces, each quoted
    /// for a POSIX shell when it needs it, so it can be pasted back.
    public var commandLine: String { argv.map(Self.shellQuoted).joined(separator: " ") }

    /// `word` unchanged when a shell reads it as itself, else in single quotes (`'` written as `'\''`).
    static func shellQuoted(_ word: String) -> String {
        let plain = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789@%_-+=:,./")
        if !word.isEmpty, word.allSatisfy({ plain.contains($0) }) { return word }
        return "'" + word.replacingOccurrences(of: "'", with: "'\\''") + "'"
    }
}

/// systemd's reading of a cgroup path: the slices it is nested in, then the unit (the first component that
/// is not a slice), as `cg_path_get_unit` and `cg_path_get_slice` do.
public enum SystemdCgroup {
    /// `/system.slice/system-defib.slice/defib@proxy.service/…` → slice `system-defib.slice`, unit
    /// `defib@proxy.service`. No unit when the first non-slice component is not a unit name (no `.service`,
    /// `.scope` … suffix) or there is none.
    public static func split(_ path: String) -> (slice: String?, unit: String?) {
        var slice: String?
        for component in path.split(separator: "/").map(String.init) {
            if component.hasSuffix(".slice") { slice = component; continue }
            let unitSuffixes = [".service", ".scope", ".socket", ".mount", ".swap", ".device", ".target", ".timer", ".path", ".automount"]
            return (slice, unitSuffixes.contains(where: { component.hasSuffix($0) && component.count > $0.count }) ? component : nil)
        }
        return (slice, nil)
    }

    /// The path systemd manages from the text of /proc/PID/cgroup: the unified hierarchy's (`0::`) when
    /// systemd runs on cgroup2 (`unified`), else the `name=systemd` one (a legacy or hybrid host), with the
    /// other as a fallback; nil when neither is there.
    public static func path(fromProcCgroup text: String, unified: Bool) -> String? {
        var unifiedPath: String?, named: String?
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
            guard parts.count == 3 else { continue }
            if parts[1] == "name=systemd" { named = String(parts[2]) }
            if parts[0] == "0" && parts[1].isEmpty { unifiedPath = String(parts[2]) }
        }
        return unified ? unifiedPath ?? named : named ?? unifiedPath
    }

    /// `path` as systemd names it: below its own root, which is where PID 1 sits without `/init.scope`
    /// (`cg_get_root_path`). Without a cgroup namespace a container's processes show the host's full path
    /// (`/machine.slice/…/payload/system.slice/x.service`); this makes it `/system.slice/x.service`.
    public static func relative(_ path: String, pid1Path: String?) -> String {
        guard var root = pid1Path else { return path }
        if root.hasSuffix("/init.scope") { root.removeLast("/init.scope".count) }
        if root.isEmpty || root == "/" { return path }
        if path == root { return "/" }
        return path.hasPrefix(root + "/") ? String(path.dropFirst(root.count)) : path
    }
}

extension Incident {
    /// The signal that ended the process, when one did: the one defib sent to end a hang (SIGKILL, or the
    /// kernel method's core-dumping signal recorded in `signal`), or the one it died of on its own. nil for an
    /// exit, a failed start, or an incident still open before its kill. coredumpctl's SIG.
    public var endingSignal: Int32? {
        if let signal { return signal }
        if case let .signaled(sig, _) = cause { return sig }
        return killedAt != nil ? 9 : nil   // SIGKILL on Linux: what `kill` in the runtime sends
    }

    /// The diagnosis's kind (`corrupted-lock-word`, `dead-loop` …): the word before the line's first ": ";
    /// nil when there is no diagnosis yet.
    public var diagnosisKind: String? {
        guard let colon = diagnosis.range(of: ": ") else { return diagnosis.isEmpty ? nil : diagnosis }
        return String(diagnosis[..<colon.lowerBound])
    }
}
