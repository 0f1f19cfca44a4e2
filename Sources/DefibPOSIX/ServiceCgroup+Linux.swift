import Glibc
import CDefibShims

/// Why a service cannot have a cgroup here: one line for the log at start, after which defib keeps to its
/// process-group and subreaper teardown.
public struct CgroupUnavailable: Error, Equatable, CustomStringConvertible, Sendable {
    /// What is missing or refused.
    public var reason: String
    /// Makes one.
    public init(_ reason: String) { self.reason = reason }
    /// The warning: why, and what that costs.
    public var description: String {
        "no cgroup for the service: \(reason); using process groups and the subreaper instead (a process that leaves its group and outlives a killed defib is not found by the next one)"
    }
}

/// Where cgroup v2 is mounted and which cgroup this process is in. Pure parsing of /proc text.
public struct CgroupV2Location: Sendable, Equatable {
    /// The mount point of the cgroup2 hierarchy (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on a hybrid setup).
    public var mountPoint: String
    /// The path of the mount's root inside the hierarchy (`/` unless a subtree was bind-mounted).
    public var mountRoot: String
    /// This process's cgroup, as /proc/self/cgroup's `0::` line says.
    public var ownCgroup: String

    /// A location from known values (tests, or a caller that read them elsewhere).
    public init(mountPoint: String, mountRoot: String, ownCgroup: String) {
        self.mountPoint = mountPoint; self.mountRoot = mountRoot; self.ownCgroup = ownCgroup
    }

    /// The directory of `cgroup` (a hierarchy path like `/a/b`) under the mount point; nil when it lies
    /// outside the mounted subtree.
    public func directory(of cgroup: String) -> String? {
        let root = mountRoot == "/" ? "" : mountRoot
        guard cgroup == mountRoot || cgroup.hasPrefix(root + "/") || root.isEmpty else { return nil }
        let inside = root.isEmpty ? cgroup : String(cgroup.dropFirst(root.count))
        return inside == "/" || inside.isEmpty ? mountPoint : mountPoint + inside
    }

    /// Reads the location from /proc/self/mountinfo and /proc/self/cgroup's texts; nil without a cgroup2
    /// mount or a `0::` line (cgroup v1 only).
    public static func parse(mountinfo: String, cgroup: String) -> CgroupV2Location? {
        var mount: (point: String, root: String)?
        for line in mountinfo.split(separator: "\n") {
            // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL…] - FSTYPE SOURCE SUPEROPTIONS
            let fields = line.split(separator: " ")
            guard fields.count >= 7, let dash = fields.firstIndex(of: "-"), dash >= 5, dash + 1 < fields.count,
                  fields[dash + 1] == "cgroup2" else { continue }
            mount = (unescapeMountinfo(String(fields[4])), unescapeMountinfo(String(fields[3])))
            break
        }
        guard let mount else { return nil }
        guard let own = cgroup.split(separator: "\n").first(where: { $0.hasPrefix("0::") }).map({ String($0.dropFirst(3)) }) else { return nil }
        return CgroupV2Location(mountPoint: mount.point, mountRoot: mount.root, ownCgroup: own.isEmpty ? "/" : own)
    }

    /// mountinfo escapes space, tab, newline and backslash as \\ooo.
    static func unescapeMountinfo(_ s: String) -> String {
        guard s.contains("\\") else { return s }
        var out: [UInt8] = []
        let b = Array(s.utf8)
        var i = 0
        while i < b.count {
            if b[i] == UInt8(ascii: "\\"), i + 3 < b.count, let v = UInt8(String(decoding: b[(i + 1)...(i + 3)], as: UTF8.self), radix: 8) {
                out.append(v); i += 4
            } else { out.append(b[i]); i += 1 }
        }
        return String(decoding: out, as: UTF8.self)
    }
}

/// One service's cgroup (v2): every instance of the service runs in a leaf of it (`instance-N`), so
/// everything the service starts — setsid'd, double-forked, ignoring SIGTERM — stays findable and dies
/// with one write to `cgroup.kill`, and a new defib finds and kills what a SIGKILLed one left, whoever
/// reparented those processes.
///
/// Where it goes. Standalone: under defib's own cgroup (`/proc/self/cgroup`), named
/// `defib-NAME-HASH` (the hash of the state directory and the service name, so two state directories
/// never share one). The cgroup v2 "no internal processes" rule only forbids enabling controllers in a
/// cgroup that holds processes; defib enables none, but when its own cgroup is not the root it first moves
/// itself into a `supervisor` leaf beside the services, so that the delegated subtree stays valid if
/// controllers (memory, pids) are enabled for it later. Under systemd: only in a delegated cgroup
/// (`Delegate=yes` in the unit; systemd marks it with the `trusted.delegate` attribute) — a cgroup systemd
/// manages is never written in. The path is recorded in `run/NAME/cgroup` so a later defib started from
/// another cgroup still finds it.
public final class ServiceCgroup: @unchecked Sendable {
    /// The record's file name in the run directory.
    public static let recordFileName = "cgroup"
    /// The leaf defib moves itself into when its own cgroup is not the root.
    public static let supervisorLeaf = "supervisor"

    /// The service cgroup's directory (under the cgroup2 mount).
    public let path: String
    /// Its path in the hierarchy, as /proc/PID/cgroup shows it.
    public let cgroupPath: String
    /// Processes of a dead supervisor's instances found and killed when it was prepared.
    public private(set) var leftoversKilled: [Int32] = []
    /// What was done to get here ("moved defib into …/supervisor"), for the start-up log.
    public private(set) var notes: [String] = []
    private var nextInstance = 1

    private init(path: String, cgroupPath: String) { self.path = path; self.cgroupPath = cgroupPath }

    /// The service cgroup for `service` of `stateDirectory`, created if missing, after killing whatever a
    /// previous supervisor left in it (or in the cgroup its record in `runDirectory` names) — call it at
    /// start with the supervisor lock held. `location` defaults to this process's; tests pass their own.
    public static func prepare(stateDirectory: String, service: String, runDirectory: SafeDirectory?,
                               location: CgroupV2Location? = nil, leftoverWaitMs: Int = 5000) -> Result<ServiceCgroup, CgroupUnavailable> {
        guard let where_ = location ?? currentLocation() else {
            return .failure(CgroupUnavailable("no cgroup v2 hierarchy is mounted (cgroup v1 only)"))
        }
        var own = where_.ownCgroup
        // Already in our own leaf (a restarted defib in the same cgroup): the services are beside it.
        if own.hasSuffix("/" + supervisorLeaf) { own = String(own.dropLast(supervisorLeaf.count + 1)); if own.isEmpty { own = "/" } }
        guard let ownDir = where_.directory(of: own) else {
            return .failure(CgroupUnavailable("this process's cgroup \(own) is outside the mounted cgroup2 tree at \(where_.mountPoint)"))
        }
        if let refusal = systemdRefusal(cgroup: own, directory: ownDir) { return .failure(CgroupUnavailable(refusal)) }
        let name = cgroupName(stateDirectory: stateDirectory, service: service)
        let servicePath = ownDir + "/" + name
        let cgroupPath = (own == "/" ? "" : own) + "/" + name
        let cgroup = ServiceCgroup(path: servicePath, cgroupPath: cgroupPath)

        // What a dead supervisor left: in our cgroup's service cgroup, and in the one its record names.
        var leftovers: [String] = [servicePath]
        if let recorded = readRecord(runDirectory), recorded != cgroupPath, let dir = where_.directory(of: recorded),
           (recorded.split(separator: "/").last ?? "").hasPrefix("defib-") {
            leftovers.append(dir)
        }
        // Leaves are numbered on from those a previous supervisor made: a new instance never takes the name
        // of one that was there (a log or an operator may still refer to it).
        cgroup.nextInstance = (childCgroups(servicePath).compactMap { name in
            name.hasPrefix("instance-") ? Int(name.dropFirst("instance-".count)) : nil
        }.max() ?? 0) + 1
        for dir in leftovers where isDirectory(dir) {
            cgroup.leftoversKilled += killSubtree(dir, waitMs: leftoverWaitMs)
            removeEmptyChildren(dir)
            if dir != servicePath { rmdir(dir) }
        }
        if mkdir(servicePath, 0o755) != 0 && errno != EEXIST {
            let e = SystemError("mkdir(\(servicePath))")
            return .failure(CgroupUnavailable("cannot create a cgroup: \(e)"))
        }
        guard access(servicePath + "/cgroup.procs", W_OK) == 0 else {
            return .failure(CgroupUnavailable("cannot write in \(servicePath) (\(SystemError("access").message))"))
        }
        // Off the services' parent before they get one: an inner cgroup with processes could not have
        // controllers enabled for its children.
        if own != "/" && own == where_.ownCgroup {
            let leaf = ownDir + "/" + supervisorLeaf
            if mkdir(leaf, 0o755) != 0 && errno != EEXIST {
                return .failure(CgroupUnavailable("cannot create \(leaf): \(SystemError("mkdir").message)"))
            }
            if let e = writeFile(leaf + "/cgroup.procs", "0") {
                return .failure(CgroupUnavailable("cannot move defib into \(leaf): \(e)"))
            }
            cgroup.notes.append("moved defib into \(leaf) (no processes beside the service cgroups)")
        }
        if let runDirectory { writeRecord(runDirectory, cgroupPath) }
        return .success(cgroup)
    }

    /// The cgroup name for a service of a state directory: `defib-NAME-HASH`.
    public static func cgroupName(stateDirectory: String, service: String) -> String {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in (stateDirectory + "\u{0}" + service).utf8 { hash = (hash ^ UInt64(byte)) &* 0x0000_0100_0000_01b3 }
        let digits = String(hash, radix: 16)
        let safe = String(service.map { $0.isASCII && ($0.isLetter || $0.isNumber || "_.-".contains($0)) ? $0 : "_" }.prefix(64))
        return "defib-\(safe)-\(String(repeating: "0", count: 16 - digits.count) + digits)"
    }

    /// A new leaf for the next instance: give its `procsFD` to `SpawnRequest.cgroupProcsFD`.
    public func newInstance() throws(SystemError) -> InstanceCgroup {
        while true {
            let leaf = "\(path)/instance-\(nextInstance)"
            nextInstance += 1
            if mkdir(leaf, 0o755) == 0 { break }
            if errno != EEXIST { throw SystemError("mkdir(\(leaf))") }
            // A leaf of a previous run still there: reuse its number only once it is empty and removed.
            if Self.members(of: leaf).isEmpty, rmdir(leaf) == 0, mkdir(leaf, 0o755) == 0 { break }
        }
        let name = "instance-\(nextInstance - 1)"
        let leaf = "\(path)/\(name)"
        let fd = Glibc.open(leaf + "/cgroup.procs", O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { let e = SystemError("open(\(leaf)/cgroup.procs)"); rmdir(leaf); throw e }
        let dir = Glibc.open(leaf, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW)
        guard dir >= 0 else { let e = SystemError("open(\(leaf))"); Glibc.close(fd); rmdir(leaf); throw e }
        return InstanceCgroup(path: leaf, cgroupPath: cgroupPath + "/" + name, procsFD: fd, directoryFD: dir)
    }

    /// Every process in the service cgroup and its leaves.
    public func members() -> [Int32] { Self.subtreeMembers(path) }

    /// Kills everything in the service cgroup (all instances) and waits, at most `waitMs`, until it is empty.
    /// Returns the pids it held.
    @discardableResult
    public func killAll(waitMs: Int = 5000) -> [Int32] { Self.killSubtree(path, waitMs: waitMs) }

    /// Kills what is left and removes the service cgroup (at shutdown). True when it is gone.
    @discardableResult
    public func remove(waitMs: Int = 5000) -> Bool {
        Self.killSubtree(path, waitMs: waitMs)
        Self.removeEmptyChildren(path)
        return rmdir(path) == 0 || errno == ENOENT
    }

    // MARK: plumbing

    /// How much of a /proc or cgroup file is read (cgroup.procs of a very large service, a host's mountinfo).
    static let readLimit = 16 << 20

    /// This process's cgroup v2 location, or nil (cgroup v1 only).
    public static func currentLocation() -> CgroupV2Location? {
        guard let mountinfo = readTextFile("/proc/self/mountinfo", maxBytes: Self.readLimit),
              let cgroup = readTextFile("/proc/self/cgroup", maxBytes: Self.readLimit) else { return nil }
        return CgroupV2Location.parse(mountinfo: mountinfo, cgroup: cgroup)
    }

    /// Under systemd, a cgroup of a unit that did not delegate it is systemd's: say so (nil when fine).
    /// `underSystemd`: whether systemd manages this machine (/run/systemd/system, as sd_booted() checks).
    public static func systemdRefusal(cgroup: String, directory: String,
                                      underSystemd: Bool = access("/run/systemd/system", F_OK) == 0) -> String? {
        guard underSystemd, cgroup != "/" else { return nil }
        for attribute in ["trusted.delegate", "user.delegate"] {
            var value = [CChar](repeating: 0, count: 8)
            let n = defib_getxattr(directory, attribute, &value, value.count)
            if n > 0, value[0] == CChar(UInt8(ascii: "1")) { return nil }
        }
        return "defib's cgroup \(cgroup) belongs to systemd and was not delegated (add Delegate=yes to the unit)"
    }

    /// Pids in `dir` and every cgroup below it.
    static func subtreeMembers(_ dir: String) -> [Int32] {
        var pids = members(of: dir)
        for child in childCgroups(dir) { pids += subtreeMembers(dir + "/" + child) }
        return pids
    }

    static func members(of dir: String) -> [Int32] {
        ServiceProcesses.cgroupMembers(dir, maxBytes: readLimit)
    }

    static func childCgroups(_ dir: String) -> [String] {
        guard let stream = opendir(dir) else { return [] }
        defer { closedir(stream) }
        var names: [String] = []
        while let entry = readdir(stream) {
            guard entry.pointee.d_type == UInt8(DT_DIR) else { continue }
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name != "." && name != ".." { names.append(name) }
        }
        return names.sorted()
    }

    /// `cgroup.kill` (Linux 5.14+) on the subtree, else SIGKILL to each member until none is left; then waits
    /// (at most `waitMs`) until `cgroup.events` says unpopulated. Returns the pids seen in it.
    @discardableResult
    static func killSubtree(_ dir: String, waitMs: Int) -> [Int32] {
        let seen = subtreeMembers(dir)
        guard !seen.isEmpty || populated(dir) else { return [] }
        let hasKill = access(dir + "/cgroup.kill", W_OK) == 0
        if hasKill { _ = writeFile(dir + "/cgroup.kill", "1") }
        let deadline = monotonicNanoseconds() + Int64(waitMs) * 1_000_000
        var all = Set(seen)
        while populated(dir) && monotonicNanoseconds() < deadline {
            if !hasKill {
                for pid in subtreeMembers(dir) { all.insert(pid); _ = Glibc.kill(pid, SIGKILL) }
            }
            usleep(2_000)
        }
        return all.sorted()
    }

    /// `populated 1` in cgroup.events (any live process in the subtree).
    static func populated(_ dir: String) -> Bool {
        guard let events = readTextFile(dir + "/cgroup.events", maxBytes: readLimit) else { return !subtreeMembers(dir).isEmpty }
        return events.split(separator: "\n").contains("populated 1")
    }

    static func removeEmptyChildren(_ dir: String) {
        for child in childCgroups(dir) {
            removeEmptyChildren(dir + "/" + child)
            rmdir(dir + "/" + child)
        }
    }

    static func isDirectory(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
    }

    static func readRecord(_ runDirectory: SafeDirectory?) -> String? {
        guard let runDirectory else { return nil }
        let fd = openat(runDirectory.fd, recordFileName, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { Glibc.close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG, st.st_uid == geteuid() else { return nil }
        var buffer = [UInt8](repeating: 0, count: 4096)
        let n = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
        guard n > 0 else { return nil }
        let text = String(decoding: buffer[0..<n], as: UTF8.self).trimmingCharacters(in: "\n ")
        return text.hasPrefix("/") && !text.contains("/../") && !text.hasSuffix("/..") ? text : nil
    }

    static func writeRecord(_ runDirectory: SafeDirectory, _ cgroupPath: String) {
        let temporary = ".\(recordFileName).\(getpid())"
        let fd = openat(runDirectory.fd, temporary, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard fd >= 0 else { return }
        let bytes = Array((cgroupPath + "\n").utf8)
        let ok = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) } == bytes.count
        Glibc.close(fd)
        if ok { renameat(runDirectory.fd, temporary, runDirectory.fd, recordFileName) } else { unlinkat(runDirectory.fd, temporary, 0) }
    }
}

/// One instance's leaf cgroup.
public final class InstanceCgroup: @unchecked Sendable {
    /// Its directory.
    public let path: String
    /// Its path in the hierarchy, as /proc/PID/cgroup shows it for the processes in it.
    public let cgroupPath: String
    /// `cgroup.procs`, opened for writing (close-on-exec): the spawn shim's child writes "0" to it before
    /// exec, so the instance — and all it ever starts — is in the leaf before it runs a line of its own.
    public private(set) var procsFD: Int32
    /// The leaf's directory (close-on-exec): the spawn shim's child is born in it (clone3 CLONE_INTO_CGROUP),
    /// `procsFD` being the fallback.
    public private(set) var directoryFD: Int32

    init(path: String, cgroupPath: String, procsFD: Int32, directoryFD: Int32) {
        self.path = path; self.cgroupPath = cgroupPath; self.procsFD = procsFD; self.directoryFD = directoryFD
    }
    deinit { closeProcsFD() }

    /// The processes in it.
    public func members() -> [Int32] { ServiceCgroup.subtreeMembers(path) }

    /// SIGKILL to everything in it, without waiting (`cgroup.kill`, or each member where the kernel has none):
    /// the hang's kill reaches what the instance started, wherever it went in the process tree.
    public func killNow() {
        if access(path + "/cgroup.kill", W_OK) == 0, writeFile(path + "/cgroup.kill", "1") == nil { return }
        signalMembers(SIGKILL)
    }

    /// `signal` to every process in it (a stop request reaches workers in their own sessions too).
    public func signalMembers(_ signal: Int32) {
        for pid in members() { _ = Glibc.kill(pid, signal) }
    }

    /// SIGKILL to everything in it (`cgroup.kill`), then waits at most `waitMs` until it is empty. True
    /// when it is. The caller still reaps its own child; orphans go to their subreaper.
    @discardableResult
    public func kill(waitMs: Int = 5000) -> Bool {
        ServiceCgroup.killSubtree(path, waitMs: waitMs)
        return !ServiceCgroup.populated(path)
    }

    /// Closes the descriptor and removes the (empty) leaf. True when it is gone.
    @discardableResult
    public func remove() -> Bool {
        closeProcsFD()
        ServiceCgroup.removeEmptyChildren(path)
        return rmdir(path) == 0 || errno == ENOENT
    }

    /// The child has joined (or failed to): the descriptor is no longer needed.
    public func closeProcsFD() {
        if procsFD >= 0 { Glibc.close(procsFD); procsFD = -1 }
        if directoryFD >= 0 { Glibc.close(directoryFD); directoryFD = -1 }
    }
}


/// Writes `text` to a cgroup control file; the error text, or nil.
func writeFile(_ path: String, _ text: String) -> String? {
    let fd = Glibc.open(path, O_WRONLY | O_CLOEXEC)
    guard fd >= 0 else { return SystemError("open(\(path))").description }
    defer { Glibc.close(fd) }
    let bytes = Array(text.utf8)
    let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
    return n == bytes.count ? nil : SystemError("write(\(path))").description
}
