import Glibc
import CDefibShims

/// A directory defib refused (or could not make), naming the path and the reason — the message defib
/// exits 64 with, e.g. "core directory /var/crash: writable by others (mode 1777): …".
public struct UnsafeDirectoryError: Error, Equatable, CustomStringConvertible, Sendable {
    /// Why the directory cannot be used.
    public enum Reason: Equatable, Sendable {
        /// The directory itself is a symbolic link: defib never follows one into a directory it writes.
        case symlink(target: String?)
        /// Something other than a directory is there.
        case notDirectory
        /// Owned by another user, who could change what defib relies on.
        case wrongOwner(uid: UInt32, expected: UInt32)
        /// Writable by its group or by everyone: another user could swap what is inside.
        case writableByOthers(mode: UInt32)
        /// A directory on the way to it lets someone else replace it (named in the text).
        case unsafeAncestor(String)
        /// A system call failed.
        case system(SystemError)
    }

    /// The path as configured (what the operator will recognise).
    public var path: String
    /// What it is for: "state directory", "run directory", "core directory", …
    public var role: String
    /// Why it was refused.
    public var reason: Reason

    /// Makes an error.
    public init(path: String, role: String, reason: Reason) { self.path = path; self.role = role; self.reason = reason }

    /// "ROLE PATH: REASON".
    public var description: String {
        let why: String
        switch reason {
        case let .symlink(target):
            why = "is a symbolic link\(target.map { " (to \($0))" } ?? ""); defib does not follow links to the directories it writes in — give the real path"
        case .notDirectory:
            why = "exists and is not a directory"
        case let .wrongOwner(uid, expected):
            why = "is owned by uid \(uid), not by defib's uid \(expected); another user must not control what defib reads and writes there — give a directory of defib's own (defib never chowns one it did not create)"
        case let .writableByOthers(mode):
            why = "is writable by \(mode & 0o002 != 0 ? "everyone" : "its group") (mode \(String(mode & 0o7777, radix: 8))); another user could replace what defib writes there — make a private directory inside it (defib never chmods one it did not create)"
        case let .unsafeAncestor(text):
            why = text
        case let .system(e):
            why = e.description
        }
        return "\(role) \(path): \(why)"
    }
}

/// A directory defib may read and write: like sshd's StrictModes and systemd-tmpfiles, reached from `/`
/// one component at a time with `openat(…, O_NOFOLLOW)`; the directory itself is not a symbolic link, is
/// owned by defib's uid and is writable by nobody else; every directory above it is owned by root or by
/// defib and is either writable by nobody else or sticky with the next step owned by root or defib (so
/// `/tmp/x` is fine when `x` is ours). Symbolic links above it (`/var/run` → `/run`) are followed only when
/// root or defib owns them. What is missing is created, 0755 for parents and `mode` for the directory
/// itself — and only what defib created gets its mode set: an existing directory is never chmod'ed or
/// chown'ed. Holds an open descriptor, so files are then made with `*at` calls in the very directory that
/// was checked, whatever happens to the path afterwards.
///
/// No "shared" exception exists: a shared directory (sticky, like /tmp or /var/crash) is fine *above* a
/// directory of defib's own, which is what the configuration should name.
public final class SafeDirectory: @unchecked Sendable {
    /// The path it was opened by.
    public let path: String
    /// An O_RDONLY|O_DIRECTORY descriptor of it (close-on-exec), for `*at` calls.
    public let fd: Int32
    /// True when this call created the directory itself.
    public let created: Bool

    private init(path: String, fd: Int32, created: Bool) { self.path = path; self.fd = fd; self.created = created }
    deinit { Glibc.close(fd) }

    /// The uid whose directories are trusted: defib's effective uid (and root's, for ancestors).
    static var me: UInt32 { UInt32(geteuid()) }

    /// Opens `path` (absolute or relative to the working directory), creating it and its missing parents
    /// when `create` is true, and checks it as described above. `role` names it in errors.
    public static func open(_ path: String, mode: mode_t = 0o700, create: Bool = true,
                            role: String = "directory") throws(UnsafeDirectoryError) -> SafeDirectory {
        func fail(_ reason: UnsafeDirectoryError.Reason) -> UnsafeDirectoryError {
            UnsafeDirectoryError(path: path, role: role, reason: reason)
        }
        guard !path.isEmpty else { throw fail(.system(SystemError("open(\"\")", errno: ENOENT))) }
        var remaining = path.split(separator: "/", omittingEmptySubsequences: true).map(String.init)
        let startPath = path.hasPrefix("/") ? "/" : "."
        let startFD = Glibc.open(startPath, defib_o_path() | O_DIRECTORY | O_CLOEXEC)
        guard startFD >= 0 else { throw fail(.system(SystemError("open(\(startPath))"))) }
        // The resolved directories so far (".." pops one, as realpath would after links are spliced in).
        var stack: [(fd: Int32, path: String, st: stat)] = []
        defer { for entry in stack { Glibc.close(entry.fd) } }
        var rootStat = stat()
        fstat(startFD, &rootStat)
        stack.append((startFD, startPath == "/" ? "" : startPath, rootStat))
        if startPath == "." { try checkAncestor(rootStat, path: ".", fail: fail) }
        var links = 0
        var createdLast = false

        while let component = remaining.first {
            remaining.removeFirst()
            if component == "." { continue }
            if component == ".." {
                if stack.count > 1 { Glibc.close(stack.removeLast().fd) }
                continue
            }
            let isLast = remaining.isEmpty
            let parent = stack[stack.count - 1]
            let here = parent.path + "/" + component
            var st = stat()
            var createdNow = false
            if fstatat(parent.fd, component, &st, AT_SYMLINK_NOFOLLOW) != 0 {
                guard errno == ENOENT, create else { throw fail(.system(SystemError("stat(\(here))"))) }
                // Created by us (EEXIST: someone else was quicker, and it is checked like any existing one).
                if mkdirat(parent.fd, component, isLast ? mode : 0o755) == 0 {
                    createdNow = true
                } else if errno != EEXIST {
                    throw fail(.system(SystemError("mkdir(\(here))")))
                }
                guard fstatat(parent.fd, component, &st, AT_SYMLINK_NOFOLLOW) == 0 else {
                    throw fail(.system(SystemError("stat(\(here))")))
                }
            }
            // Whoever can write in the parent could swap this entry: only a sticky parent protects an
            // entry, and only one owned by root or by us.
            try checkEntry(st, in: parent.st, parentPath: parent.path.isEmpty ? "/" : parent.path, name: here, fail: fail)
            if (st.st_mode & S_IFMT) == S_IFLNK {
                if isLast { throw fail(.symlink(target: readLink(at: parent.fd, component))) }
                // A link of another user could point defib anywhere (another service's state directory).
                guard st.st_uid == 0 || st.st_uid == me else {
                    throw fail(.unsafeAncestor("the link \(here) above it belongs to uid \(st.st_uid), not to root or defib; give the real path"))
                }
                links += 1
                guard links <= 40, let target = readLink(at: parent.fd, component) else {
                    throw fail(.system(SystemError("readlink(\(here))", errno: links > 40 ? ELOOP : errno)))
                }
                if target.hasPrefix("/") {
                    while stack.count > 1 { Glibc.close(stack.removeLast().fd) }
                    if stack[0].path != "" {
                        // Started relative: an absolute link restarts from the real root.
                        let rootFD = Glibc.open("/", defib_o_path() | O_DIRECTORY | O_CLOEXEC)
                        guard rootFD >= 0 else { throw fail(.system(SystemError("open(/)"))) }
                        var rs = stat(); fstat(rootFD, &rs)
                        Glibc.close(stack.removeLast().fd)
                        stack.append((rootFD, "", rs))
                    }
                }
                remaining = target.split(separator: "/", omittingEmptySubsequences: true).map(String.init) + remaining
                continue
            }
            guard (st.st_mode & S_IFMT) == S_IFDIR else { throw fail(.notDirectory) }
            let flags = (isLast ? O_RDONLY : defib_o_path()) | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC
            let fd = openat(parent.fd, component, flags)
            guard fd >= 0 else {
                if errno == ELOOP { throw fail(.symlink(target: readLink(at: parent.fd, component))) }
                throw fail(.system(SystemError("open(\(here))")))
            }
            var opened = stat()
            fstat(fd, &opened)
            guard opened.st_dev == st.st_dev, opened.st_ino == st.st_ino else {
                Glibc.close(fd)
                throw fail(.unsafeAncestor("\(here) changed while it was being checked"))
            }
            stack.append((fd, here, opened))
            if isLast {
                createdLast = createdNow
                if createdNow {
                    // Ours: the mode asked for exactly (mkdir's went through the umask).
                    if fchmod(fd, mode) != 0 { throw fail(.system(SystemError("chmod(\(here))"))) }
                    fstat(fd, &opened)
                    stack[stack.count - 1].st = opened
                }
                guard opened.st_uid == me else { throw fail(.wrongOwner(uid: opened.st_uid, expected: me)) }
                guard opened.st_mode & 0o022 == 0 else { throw fail(.writableByOthers(mode: opened.st_mode)) }
            } else {
                try checkAncestor(opened, path: here, fail: fail)
            }
        }
        guard stack.count > 1 || startPath == "." else {
            throw fail(.unsafeAncestor("the root directory cannot be a state, run or core directory"))
        }
        let last = stack.removeLast()
        // An defib_o_path() descriptor cannot be read; ".." or a path ending in an ancestor leaves one: reopen.
        let fd = openat(last.fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        Glibc.close(last.fd)
        guard fd >= 0 else { throw fail(.system(SystemError("open(\(path))"))) }
        var final = stat()
        fstat(fd, &final)
        guard final.st_uid == me else { Glibc.close(fd); throw fail(.wrongOwner(uid: final.st_uid, expected: me)) }
        guard final.st_mode & 0o022 == 0 else { Glibc.close(fd); throw fail(.writableByOthers(mode: final.st_mode)) }
        return SafeDirectory(path: path, fd: fd, created: createdLast)
    }

    /// A directory inside this one, checked (and created) like `open`.
    public func subdirectory(_ name: String, mode: mode_t = 0o700, create: Bool = true,
                             role: String = "directory") throws(UnsafeDirectoryError) -> SafeDirectory {
        let full = path.hasSuffix("/") ? path + name : path + "/" + name
        func fail(_ reason: UnsafeDirectoryError.Reason) -> UnsafeDirectoryError {
            UnsafeDirectoryError(path: full, role: role, reason: reason)
        }
        guard !name.isEmpty, !name.contains("/"), name != ".", name != ".." else {
            throw fail(.system(SystemError("open(\(full))", errno: EINVAL)))
        }
        var created = false
        if create {
            if mkdirat(fd, name, mode) == 0 { created = true } else if errno != EEXIST {
                throw fail(.system(SystemError("mkdir(\(full))")))
            }
        }
        let sub = openat(fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard sub >= 0 else {
            if errno == ELOOP { throw fail(.symlink(target: readLink(at: fd, name))) }
            if errno == ENOTDIR { throw fail(.notDirectory) }
            throw fail(.system(SystemError("open(\(full))")))
        }
        var st = stat()
        fstat(sub, &st)
        if created {
            if fchmod(sub, mode) != 0 { let e = SystemError("chmod(\(full))"); Glibc.close(sub); throw fail(.system(e)) }
            fstat(sub, &st)
        }
        guard st.st_uid == Self.me else { Glibc.close(sub); throw fail(.wrongOwner(uid: st.st_uid, expected: Self.me)) }
        guard st.st_mode & 0o022 == 0 else { Glibc.close(sub); throw fail(.writableByOthers(mode: st.st_mode)) }
        return SafeDirectory(path: full, fd: sub, created: created)
    }

    /// Makes `name` anew for one start of a service: whatever is there — a previous start's directory,
    /// which the service (possibly another user) could write — is renamed aside and removed without
    /// following any link, then a new directory is made with `mode`, owned by defib with group `group`
    /// (when given). Defib created it, so it may have a group that the service shares: this is how a
    /// service running as another user gets a place for its control socket without defib trusting a
    /// directory someone else made. Returns the new directory's descriptor holder.
    public func freshSubdirectory(_ name: String, mode: mode_t, group: gid_t? = nil,
                                  role: String = "directory") throws(UnsafeDirectoryError) -> SafeDirectory {
        let full = path.hasSuffix("/") ? path + name : path + "/" + name
        func fail(_ e: SystemError) -> UnsafeDirectoryError { UnsafeDirectoryError(path: full, role: role, reason: .system(e)) }
        guard !name.isEmpty, !name.contains("/"), name != ".", name != ".." else { throw fail(SystemError("mkdir(\(full))", errno: EINVAL)) }
        var st = stat()
        if fstatat(fd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 {
            let aside = ".\(name).old.\(getpid()).\(UInt32.random(in: 0...UInt32.max))"
            guard renameat(fd, name, fd, aside) == 0 else { throw fail(SystemError("rename(\(full))")) }
            do { try removeTree(aside) } catch { throw fail(error) }
        }
        guard mkdirat(fd, name, 0o700) == 0 else { throw fail(SystemError("mkdir(\(full))")) }
        let sub = openat(fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard sub >= 0 else { throw fail(SystemError("open(\(full))")) }
        // Group first, then the mode: the directory is never open to the group before it has the right one.
        if let group, fchown(sub, uid_t.max, group) != 0 { let e = SystemError("chown(\(full), group \(group))"); Glibc.close(sub); throw fail(e) }
        if fchmod(sub, mode) != 0 { let e = SystemError("chmod(\(full))"); Glibc.close(sub); throw fail(e) }
        return SafeDirectory(path: full, fd: sub, created: true)
    }

    /// Removes `name` (a file, or a directory and everything below it) from this directory without
    /// following a symbolic link anywhere: each entry is removed with `unlinkat`, directories are entered
    /// with `openat(O_NOFOLLOW)`. A missing `name` is not an error.
    public func removeTree(_ name: String) throws(SystemError) {
        try Self.removeEntry(parent: fd, name: name, display: path + "/" + name, depth: 0)
    }

    private static func removeEntry(parent: Int32, name: String, display: String, depth: Int) throws(SystemError) {
        var st = stat()
        if fstatat(parent, name, &st, AT_SYMLINK_NOFOLLOW) != 0 {
            if errno == ENOENT { return }
            throw SystemError("stat(\(display))")
        }
        if (st.st_mode & S_IFMT) == S_IFDIR {
            guard depth < 64 else { throw SystemError("remove(\(display))", errno: ELOOP) }
            let dirFD = openat(parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            guard dirFD >= 0 else { throw SystemError("open(\(display))") }
            guard let dir = fdopendir(dirFD) else { let e = SystemError("fdopendir(\(display))"); Glibc.close(dirFD); throw e }
            var names: [String] = []
            while let entry = readdir(dir) {
                let entryName = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                    String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
                }
                if entryName != "." && entryName != ".." { names.append(entryName) }
            }
            var failure: SystemError?
            for child in names {
                do { try removeEntry(parent: dirfd(dir), name: child, display: display + "/" + child, depth: depth + 1) } catch {
                    failure = failure ?? error
                }
            }
            closedir(dir)
            if let failure { throw failure }
            if unlinkat(parent, name, AT_REMOVEDIR) != 0 && errno != ENOENT { throw SystemError("rmdir(\(display))") }
        } else if unlinkat(parent, name, 0) != 0 && errno != ENOENT {
            throw SystemError("unlink(\(display))")
        }
    }

    /// An ancestor must be owned by root or by us: its owner can rename anything inside it.
    private static func checkAncestor(_ st: stat, path: String, fail: (UnsafeDirectoryError.Reason) -> UnsafeDirectoryError) throws(UnsafeDirectoryError) {
        guard st.st_uid == 0 || st.st_uid == me else {
            throw fail(.unsafeAncestor("\(path) above it is owned by uid \(st.st_uid), who could replace what is inside; use a path whose every directory belongs to root or to defib's uid"))
        }
    }

    /// Whoever may write in a directory may swap its entries, unless the directory is sticky and the entry
    /// belongs to root or to us.
    private static func checkEntry(_ entry: stat, in parent: stat, parentPath: String, name: String,
                                   fail: (UnsafeDirectoryError.Reason) -> UnsafeDirectoryError) throws(UnsafeDirectoryError) {
        guard parent.st_mode & 0o022 != 0 else { return }
        let sticky = parent.st_mode & S_ISVTX != 0
        if !sticky {
            throw fail(.unsafeAncestor("\(parentPath) above it is writable by \(parent.st_mode & 0o002 != 0 ? "everyone" : "its group") (mode \(String(parent.st_mode & 0o7777, radix: 8))) without the sticky bit, so another user could replace \(name)"))
        }
        guard entry.st_uid == 0 || entry.st_uid == me else {
            throw fail(.unsafeAncestor("\(name) in the shared directory \(parentPath) belongs to uid \(entry.st_uid), not to defib"))
        }
    }
}

/// The target of the symbolic link `name` in directory `dirFD`, or nil.
func readLink(at dirFD: Int32, _ name: String) -> String? {
    var buffer = [CChar](repeating: 0, count: 4097)
    let n = readlinkat(dirFD, name, &buffer, 4096)
    guard n >= 0 else { return nil }
    return String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
}
