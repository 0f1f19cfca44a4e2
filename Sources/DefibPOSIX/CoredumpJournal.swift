import DefibCore
import Glibc

/// Who a live process is, from /proc: what an incident keeps so `defib incidents` and coredumpctl can list
/// it by uid, gid and name after the process is gone.
public enum ProcessIdentity {
    /// uid and gid (real, from `status`), `comm`, `cmdline` and the systemd cgroup of `pid`; nil when the
    /// process is gone or its status cannot be read. Read when an instance has exec'd, again once it is ready
    /// (a death is reaped before its incident opens: these are all it has), and with a hang's evidence.
    public static func read(pid: Int32) -> IncidentProcess? {
        guard pid > 0, let status = readTextFile("/proc/\(pid)/status"),
              let comm = readTextFile("/proc/\(pid)/comm") else { return nil }
        let parsed = ProcStatus.parse(status)
        guard status.contains("\nUid:") else { return nil }
        let argv = (readFileBytes("/proc/\(pid)/cmdline") ?? [])
            .split(separator: 0, omittingEmptySubsequences: false).map { String(decoding: $0, as: UTF8.self) }
        var words = argv
        if words.last == "" { words.removeLast() }
        let cgroup = systemdCgroup(pid: pid)
        return IncidentProcess(uid: parsed.uid, gid: parsed.gid,
                               comm: comm.hasSuffix("\n") ? String(comm.dropLast()) : comm,
                               argv: words, cgroup: cgroup == "/" ? nil : cgroup)
    }
}

/// The cgroup of `pid` as systemd names it (below systemd's own root; see `SystemdCgroup`).
func systemdCgroup(pid: Int32) -> String? {
    // systemd runs on the unified hierarchy when /sys/fs/cgroup itself is cgroup2 (it has cgroup.controllers);
    // on a hybrid host (a tmpfs with v1 controllers and unified/ beside them) it names cgroups by name=systemd.
    let unified = access("/sys/fs/cgroup/cgroup.controllers", F_OK) == 0
    guard let path = readTextFile("/proc/\(pid)/cgroup").flatMap({ SystemdCgroup.path(fromProcCgroup: $0, unified: unified) }) else { return nil }
    let root = readTextFile("/proc/1/cgroup").flatMap { SystemdCgroup.path(fromProcCgroup: $0, unified: unified) }
    return SystemdCgroup.relative(path, pid1Path: root)
}

/// Announces a core defib wrote to the journal the way systemd-coredump announces its own (see
/// `CoredumpEntry` for the fields and why), so `coredumpctl list/info/gdb` work on it.
public enum CoredumpJournal {
    /// Whether to announce: `setting` (`[capture] announce_to_coredumpctl`) when given, else only when defib
    /// runs under journald (its stderr is the journal's stream), where someone would run coredumpctl.
    public static func wanted(setting: Bool?) -> Bool { setting ?? Journald.stderrIsJournal }

    /// Sends the entry for `incident`. Returns a line for the incident's notes: what was announced, or why
    /// nothing was (no core, an unknown process, the journal refused it).
    public static func announce(_ incident: Incident, stateDirectory: String) -> String {
        switch CoredumpEntry.fields(for: incident, hostname: hostname(), stateDirectory: stateDirectory) {
        case let .failure(skip):
            return "not announced to coredumpctl: \(skip)"
        case let .success(fields):
            // sd_journal_sendv reports success when there is no journal at all: look first.
            guard access(journalSocket, F_OK) == 0 else {
                return "not announced to coredumpctl: no journal here (\(journalSocket) is missing)"
            }
            guard Journald.send(fields) else {
                return "not announced to coredumpctl: the journal did not take the entry (is systemd-journald running?)"
            }
            let file = fields.first { $0.0 == "COREDUMP_FILENAME" } != nil
            return "announced to coredumpctl (MESSAGE_ID=\(CoredumpEntry.messageID))"
                + (file ? "" : "; without COREDUMP_FILENAME: coredumpctl cannot read a gzip core")
        }
    }

    /// Where journald takes native entries (sd_journal_sendv's socket).
    static let journalSocket = "/run/systemd/journal/socket"

    static func hostname() -> String? {
        var buffer = [CChar](repeating: 0, count: 256)
        guard gethostname(&buffer, buffer.count - 1) == 0 else { return nil }
        return String(decoding: buffer.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
