import DefibCore
import Glibc

/// The directories one service's supervision works in, opened and checked once at start (`SafeDirectory`:
/// reached without following links others own, defib's own, writable by nobody else):
///
/// | path | mode | holds |
/// |---|---|---|
/// | `STATE` | 0711 when defib makes it | `incidents.sqlite` (0600), `cores/`, `run/`, `notify/` |
/// | `STATE/run` | 0711 when defib makes it | one directory per service |
/// | `STATE/run/NAME` | 0700; 0710 with the service's group when it runs as another user | the supervisor lock, its pid, the cgroup record; the control socket and flight recorder of a service running as defib's user |
/// | `STATE/run/NAME/instance` | 0770, group = the service's (no set-group-id bit: what is made there is the service's own, and units forbid the bit with RestrictSUIDSGID=); made anew at every start | the control socket and flight recorder of a service running as another user |
/// | `STATE/notify` | 0711 | `NAME.sock`, the NOTIFY_SOCKET, 0666 (senders told apart by pid) |
///
/// Defib never changes the mode or owner of a directory it did not create, with one exception the
/// configuration asks for: a run directory of its own (`run/NAME`, already checked) is opened to the group of
/// a service that runs as another user, traverse only (0710), so that the service reaches its instance
/// directory. A directory on the way that the service's user cannot pass through is refused, naming it.
public final class ServiceDirectories: @unchecked Sendable {
    public let state: SafeDirectory
    /// `STATE/run/NAME`.
    public let run: SafeDirectory
    public let cores: SafeDirectory
    /// `STATE/notify`; nil when the NOTIFY_SOCKET goes beside a control socket the configuration puts elsewhere.
    public let notify: SafeDirectory?
    /// The service's identity when the configuration sets one.
    public let credentials: ProcessCredentials?
    /// Where the service's sockets and flight recorder are.
    public let paths: ServicePaths
    /// What works but may surprise (for the start-up log).
    public private(set) var warnings: [String] = []

    private init(state: SafeDirectory, run: SafeDirectory, cores: SafeDirectory, notify: SafeDirectory?, credentials: ProcessCredentials?,
                 paths: ServicePaths) {
        self.state = state; self.run = run; self.cores = cores; self.notify = notify; self.credentials = credentials; self.paths = paths
    }

    /// Whether the service runs as a user other than defib's (its files then go in the instance directory).
    public static func runsAsAnotherUser(_ credentials: ProcessCredentials?) -> Bool {
        credentials.map { $0.uid != geteuid() } ?? false
    }

    /// Opens (creating what is missing) and checks the directories of `config`'s service, for a service with
    /// `credentials` (nil: defib's own).
    public static func open(_ config: SupervisorConfig, credentials: ProcessCredentials?) throws(UnsafeDirectoryError) -> ServiceDirectories {
        let name = config.service.name
        let state = try SafeDirectory.open(config.stateDirectory, mode: 0o711, role: "state directory")
        let runs = try state.subdirectory("run", mode: 0o711, role: "run directory")
        let run = try runs.subdirectory(name, mode: 0o700, role: "run directory")
        let cores = try SafeDirectory.open(config.coreDirectory, mode: 0o700, role: "core directory")
        let notify = config.heartbeat.controlSocket == nil ? try state.subdirectory("notify", mode: 0o711, role: "notify directory") : nil
        let anotherUser = runsAsAnotherUser(credentials)
        let directories = ServiceDirectories(state: state, run: run, cores: cores, notify: notify, credentials: credentials,
                                             paths: ServicePaths(config, anotherUser: anotherUser))
        if config.heartbeat.source.usesNotify || anotherUser, let notify {
            // The NOTIFY_SOCKET is for any local user (a daemon that drops its privileges by itself keeps
            // talking to it): say so when the way to it is closed.
            if let blocked = firstUnsearchable(above: notify.path + "/x", by: nil) {
                directories.warnings.append("the NOTIFY_SOCKET \(directories.paths.notifySocket) is reachable only by defib's user: \(blocked.path) is mode \(String(blocked.mode & 0o7777, radix: 8)); a service that drops its privileges by itself cannot send sd_notify (allow other users through it, e.g. chmod o+x)")
            }
        }
        return directories
    }

    /// Lets a service that runs as another user reach its instance directory: every directory above the run
    /// directory must let it through (refused otherwise, naming the first that does not), and the run
    /// directory, defib's own, is opened to the service's group, traverse only (0710). Call it with the
    /// supervisor lock held. Nothing to do for a service that runs as defib's user.
    public func openToService() throws(UnsafeDirectoryError) {
        guard paths.instanceDirectory != nil, let credentials else { return }
        // The service must reach run/NAME/instance: every directory above run/NAME lets it through …
        if let blocked = Self.firstUnsearchable(above: run.path, by: credentials) {
            throw UnsafeDirectoryError(path: blocked.path, role: "directory on the way to the run directory", reason: .unsafeAncestor(
                "mode \(String(blocked.mode & 0o7777, radix: 8)) does not let the service's user \(credentials.userName ?? String(credentials.uid)) (uid \(credentials.uid)) pass through to \(run.path)/instance; allow it (e.g. chmod o+x, 0711) — defib does not change a directory it did not create"))
        }
        // … and run/NAME, defib's own, is opened to the service's group, traverse only.
        var st = stat()
        fstat(run.fd, &st)
        if st.st_gid != credentials.gid && fchown(run.fd, uid_t.max, credentials.gid) != 0 {
            throw UnsafeDirectoryError(path: run.path, role: "run directory", reason: .system(SystemError("chown(\(run.path), group \(credentials.gid))")))
        }
        if st.st_mode & 0o7777 != 0o710 && fchmod(run.fd, 0o710) != 0 {
            throw UnsafeDirectoryError(path: run.path, role: "run directory", reason: .system(SystemError("chmod(\(run.path), 0710)")))
        }
    }

    /// Makes the instance directory anew for the next start of a service running as another user (nothing
    /// of the last instance stays, nothing the service prepared is used). Nothing to do for defib's own user.
    public func prepareInstance() throws(UnsafeDirectoryError) {
        guard paths.instanceDirectory != nil, let credentials else { return }
        _ = try run.freshSubdirectory("instance", mode: 0o770, group: credentials.gid, role: "instance directory")
    }

    /// The first directory from `/` down to `path`'s parent that `credentials` (nil: any other user) may not
    /// search, with its mode.
    static func firstUnsearchable(above path: String, by credentials: ProcessCredentials?) -> (path: String, mode: mode_t)? {
        var components = path.split(separator: "/").map(String.init)
        components.removeLast()
        var prefix = ""
        for component in [""] + components {
            prefix = component.isEmpty ? "/" : (prefix == "/" ? "/" : prefix + "/") + component
            var st = stat()
            guard stat(prefix, &st) == 0 else { return (prefix, 0) }
            if !searchable(st, by: credentials) { return (prefix, st.st_mode) }
        }
        return nil
    }

    /// Whether the execute (search) bit applies to `credentials` (nil: a user who is neither owner nor in the group).
    static func searchable(_ st: stat, by credentials: ProcessCredentials?) -> Bool {
        guard let c = credentials else { return st.st_mode & 0o001 != 0 }
        if c.uid == 0 { return true }
        if st.st_uid == c.uid { return st.st_mode & 0o100 != 0 }
        if st.st_gid == c.gid || c.groups.contains(st.st_gid) { return st.st_mode & 0o010 != 0 }
        return st.st_mode & 0o001 != 0
    }
}
