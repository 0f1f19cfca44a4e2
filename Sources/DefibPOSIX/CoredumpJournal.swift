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

/// Sends a core's announcement (`CoredumpEntry`'s fields, in systemd-coredump's form) to the journal, so
/// `coredumpctl list/info/gdb` work on defib's cores.
public enum CoredumpJournal {
    /// nil when the journal took the entry, else why it did not.
    public static func send(_ fields: [JournalField]) -> String? {
        // sd_journal_sendv reports success when there is no journal at all: look first.
        guard access(journalSocket, F_OK) == 0 else { return "no journal here (\(journalSocket) is missing)" }
        guard Journald.send(fields.map { ($0.name, $0.value) }) else {
            return "the journal did not take the entry (is systemd-journald running?)"
        }
        return nil
    }

    /// Where journald takes native entries (sd_journal_sendv's socket).
    static let journalSocket = "/run/systemd/journal/socket"

    /// This host's name (COREDUMP_HOSTNAME), nil when it cannot be read.
    public static func hostname() -> String? {
        var buffer = [CChar](repeating: 0, count: 256)
        guard gethostname(&buffer, buffer.count - 1) == 0 else { return nil }
        return String(decoding: buffer.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
