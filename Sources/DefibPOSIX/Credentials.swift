import DefibCore
import Glibc

/// The identity a child gets before exec — uid, gid, supplementary groups — resolved once at start-up from
/// `[service] user`, `group`, `supplementary_groups`. Resolving once means a restart never depends on the
/// password database (NSS, LDAP) answering at the moment a hung service must be replaced.
public struct ProcessCredentials: Sendable, Equatable {
    /// The uid set as real, effective and saved uid (setresuid).
    public var uid: uid_t
    /// The gid set as real, effective and saved gid (setresgid).
    public var gid: gid_t
    /// Exactly the supplementary groups the child gets (setgroups).
    public var groups: [gid_t]
    /// The user's name, home and shell when the user has a password-database entry.
    public var userName: String?
    public var home: String?
    public var shell: String?

    public init(uid: uid_t, gid: gid_t, groups: [gid_t], userName: String? = nil, home: String? = nil, shell: String? = nil) {
        self.uid = uid; self.gid = gid; self.groups = groups; self.userName = userName; self.home = home; self.shell = shell
    }

    /// USER, LOGNAME, HOME and SHELL as systemd sets them for `User=`: a program that drops to its user expects
    /// them to be its own, not root's.
    public var environment: [String: String] {
        var env: [String: String] = [:]
        if let userName { env["USER"] = userName; env["LOGNAME"] = userName }
        if let home { env["HOME"] = home }
        if let shell { env["SHELL"] = shell }
        return env
    }

    /// "uid 65534 (nobody), gid 65534, groups [65534]".
    public var summary: String {
        "uid \(uid)" + (userName.map { " (\($0))" } ?? "") + ", gid \(gid), groups [" + groups.map(String.init).joined(separator: ", ") + "]"
    }

    /// Resolves the service's identity settings; nil when none is set (the child keeps defib's credentials).
    /// A user without a group gets the user's primary group; without `supplementary_groups`, the user's groups
    /// from the group database (what `initgroups` gives a login), or only the group when no user is set.
    public static func resolve(_ service: SupervisorConfig.Service) throws(IdentityError) -> ProcessCredentials? {
        guard service.changesIdentity else { return nil }
        var uid = getuid()
        var gid = getgid()
        var entry: PasswordEntry?
        if let user = service.user {
            if let found = try PasswordEntry.lookup(user) {
                entry = found; uid = found.uid; gid = found.gid
            } else if let numeric = uid_t(user), service.group != nil {
                uid = numeric   // a uid without an entry is fine once the group is given (nothing else to take from it)
            } else {
                throw IdentityError(key: "service.user", uid_t(user) != nil
                    ? "uid \(user) has no entry in the password database: set service.group too"
                    : "no user \"\(user)\" in the password database")
            }
        }
        return try finish(service, uid: uid, gid: gid, entry: entry)
    }

    private static func finish(_ service: SupervisorConfig.Service, uid: uid_t, gid: gid_t, entry: PasswordEntry?) throws(IdentityError) -> ProcessCredentials {
        var gid = gid
        if let group = service.group { gid = try groupID(group, key: "service.group") }
        var groups: [gid_t]
        if let names = service.supplementaryGroups {
            groups = []
            for (n, name) in names.enumerated() { groups.append(try groupID(name, key: "service.supplementary_groups[\(n)]")) }
        } else if let entry {
            groups = try groupList(user: entry.name, gid: gid)
        } else {
            groups = [gid]
        }
        var seen: Set<gid_t> = []
        groups = groups.filter { seen.insert($0).inserted }
        return ProcessCredentials(uid: uid, gid: gid, groups: groups, userName: entry?.name, home: entry?.home, shell: entry?.shell)
    }

    /// A group name or numeric gid → gid. A numeric gid needs no entry in the group database.
    static func groupID(_ text: String, key: String) throws(IdentityError) -> gid_t {
        if let numeric = gid_t(text) { return numeric }
        var group = group()
        var result: UnsafeMutablePointer<group>?
        var size = max(1024, Int(sysconf(Int32(_SC_GETGR_R_SIZE_MAX))))
        while true {
            var buffer = [CChar](repeating: 0, count: size)
            let rc = getgrnam_r(text, &group, &buffer, size, &result)
            if rc == ERANGE && size < 1 << 20 { size *= 4; continue }
            if rc != 0 { throw IdentityError(key: key, SystemError("getgrnam_r(\(text))", errno: rc).description) }
            guard result != nil else { throw IdentityError(key: key, "no group \"\(text)\" in the group database") }
            return group.gr_gid
        }
    }

    /// The user's groups (getgrouplist), `gid` first.
    static func groupList(user: String, gid: gid_t) throws(IdentityError) -> [gid_t] {
        var count: Int32 = 32
        while true {
            var groups = [gid_t](repeating: 0, count: Int(count))
            var n = count
            if getgrouplist(user, gid, &groups, &n) >= 0 { return Array(groups.prefix(Int(n))) }
            if n <= count || n > 65536 { throw IdentityError(key: "service.user", "getgrouplist(\(user)) failed") }
            count = n
        }
    }
}

/// A user's password-database entry.
struct PasswordEntry {
    var name: String
    var uid: uid_t
    var gid: gid_t
    var home: String
    var shell: String

    /// By name, or by uid when `text` is numeric and no user has that name. nil when there is no such entry.
    static func lookup(_ text: String) throws(IdentityError) -> PasswordEntry? {
        if let entry = try find(text, byName: true) { return entry }
        if let numeric = uid_t(text) { return try find(String(numeric), byName: false) }
        return nil
    }

    private static func find(_ text: String, byName: Bool) throws(IdentityError) -> PasswordEntry? {
        var pwd = passwd()
        var result: UnsafeMutablePointer<passwd>?
        var size = max(1024, Int(sysconf(Int32(_SC_GETPW_R_SIZE_MAX))))
        while true {
            var buffer = [CChar](repeating: 0, count: size)
            let rc = byName ? getpwnam_r(text, &pwd, &buffer, size, &result)
                            : getpwuid_r(uid_t(text) ?? 0, &pwd, &buffer, size, &result)
            if rc == ERANGE && size < 1 << 20 { size *= 4; continue }
            if rc != 0 { throw IdentityError(key: "service.user", SystemError("\(byName ? "getpwnam_r" : "getpwuid_r")(\(text))", errno: rc).description) }
            guard result != nil else { return nil }
            return PasswordEntry(name: String(cString: pwd.pw_name), uid: pwd.pw_uid, gid: pwd.pw_gid,
                                 home: String(cString: pwd.pw_dir), shell: String(cString: pwd.pw_shell))
        }
    }
}

/// A user or group that cannot be resolved, naming the setting.
public struct IdentityError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The config key concerned (`service.user`, `service.group`, `service.supplementary_groups[1]`).
    public var key: String
    /// What is wrong with it.
    public var message: String
    public init(key: String, _ message: String) { self.key = key; self.message = message }
    public var description: String { "\(key): \(message)" }
}
