import Glibc

/// `STATE_DIR/run/NAME/supervisor.pid`: which defib supervises the service NAME, so `defib ctl` and
/// `defib incidents` can tell a live supervisor from a run directory a gone one left behind.
///
/// A pid alone is not enough: defib may be PID 1 of a container (its own PID namespace) while the operator
/// runs `defib ctl` on the host, where that pid names another process or none. So the file also records the
/// PID namespace the pid is counted in (`pid:[INODE]`, as /proc/self/ns/pid reads), and a reader in another
/// namespace looks the supervisor up by that namespace and pid (/proc/PID/status NSpid) instead of by pid.
///
/// Format: the pid on the first line (what files written before the namespace was recorded hold), then
/// `pidns=pid:[INODE]`.
public struct SupervisorPidFile: Sendable, Equatable {
    /// The file's name in the run directory.
    public static let fileName = "supervisor.pid"

    /// The supervisor's pid, counted in `pidNamespace`.
    public var pid: Int32
    /// The PID namespace `pid` is counted in (`pid:[4026531836]`); nil in files from defibs that did not record it.
    public var pidNamespace: String?

    /// A record of the given pid in the given namespace.
    public init(pid: Int32, pidNamespace: String?) { self.pid = pid; self.pidNamespace = pidNamespace }

    /// This process, in its own PID namespace.
    public static func current() -> SupervisorPidFile {
        SupervisorPidFile(pid: getpid(), pidNamespace: pidNamespace(of: "self"))
    }

    /// The file's text.
    public var text: String {
        "\(pid)\n" + (pidNamespace.map { "pidns=\($0)\n" } ?? "")
    }

    /// Parses the file's text; nil when the first line is not a positive pid.
    public init?(text: String) {
        let fields = text.split(whereSeparator: \.isWhitespace)
        guard let first = fields.first, let pid = Int32(first), pid > 0 else { return nil }
        self.pid = pid
        self.pidNamespace = fields.dropFirst().first { $0.hasPrefix("pidns=") }.map { String($0.dropFirst("pidns=".count)) }
    }

    /// Writes this process's record into `runDirectory` (which defib made, 0700): a new file beside it, renamed
    /// over the old one, never following a link planted at either name.
    public static func write(runDirectory: String) throws {
        let path = runDirectory + "/" + fileName
        let temporary = path + ".new"
        unlink(temporary)
        let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw SystemError("open(\(temporary))") }
        let bytes = Array(current().text.utf8)
        let written = bytes.withUnsafeBytes { buffer in retryingEINTR { Glibc.write(fd, buffer.baseAddress, buffer.count) } }
        let writeErrno = errno
        if close(fd) != 0 || written != bytes.count {
            unlink(temporary)
            throw SystemError("write(\(temporary))", errno: written < 0 ? writeErrno : EIO)
        }
        guard rename(temporary, path) == 0 else {
            let e = errno
            unlink(temporary)
            throw SystemError("rename(\(temporary), \(path))", errno: e)
        }
    }

    /// The record in `runDirectory`, or nil when there is none (or it is not one).
    public static func read(runDirectory: String) -> SupervisorPidFile? {
        readTextFile(runDirectory + "/" + fileName, maxBytes: 4096).flatMap(SupervisorPidFile.init(text:))
    }

    /// The PID namespace of a process, `pid:[INODE]` (`who` is a pid or "self"); nil when it cannot be read.
    public static func pidNamespace(of who: String) -> String? {
        var buf = [CChar](repeating: 0, count: 64)
        let n = readlink("/proc/\(who)/ns/pid", &buf, buf.count - 1)
        guard n > 0 else { return nil }
        return String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// Where the recorded supervisor is, seen from this process.
    public enum Location: Sendable, Equatable {
        /// A running defib: `pid` as this process counts pids (the host pid when the supervisor is in a child
        /// namespace); `sameNamespace` false when it lives in another PID namespace.
        case running(pid: Int32, sameNamespace: Bool)
        /// No defib runs under the recorded pid in the recorded namespace (it ended; the file is stale).
        case gone
        /// No process of the recorded namespace is visible from here: it ended with its init, or it is not below
        /// this process's namespace (the supervisor runs on the host while this runs in a container). /proc does
        /// not tell the two apart; the caller can still try the control socket.
        case notVisible
    }

    /// Where the recorded supervisor is. Same namespace (or none recorded): the pid, if it names a `defib`.
    /// Another namespace: the visible process whose PID namespace is the recorded one and whose innermost pid
    /// (the last NSpid field) is the recorded pid, if it is a `defib`.
    public func locate() -> Location {
        let ours = Self.pidNamespace(of: "self")
        guard let recorded = pidNamespace, let ours, recorded != ours else {
            return processName(pid) == "defib" ? .running(pid: pid, sameNamespace: true) : .gone
        }
        var namespaceSeen = false
        for candidate in Self.visiblePids() {
            guard Self.pidNamespace(of: String(candidate)) == recorded else { continue }
            namespaceSeen = true
            guard Self.innermostPid(of: candidate) == pid else { continue }
            return processName(candidate) == "defib" ? .running(pid: candidate, sameNamespace: false) : .gone
        }
        // Every process of a descendant namespace is visible here, so a namespace with none visible either ended
        // (its init exited) or is not below ours; /proc does not tell the two apart.
        return namespaceSeen ? .gone : .notVisible
    }

    /// The pid a process has in its own (innermost) PID namespace: the last field of NSpid in /proc/PID/status.
    static func innermostPid(of pid: Int32) -> Int32? {
        guard let status = readTextFile("/proc/\(pid)/status", maxBytes: 16384),
              let line = status.split(separator: "\n").first(where: { $0.hasPrefix("NSpid:") }) else { return nil }
        return line.split(whereSeparator: { $0 == " " || $0 == "\t" }).last.flatMap { Int32($0) }
    }

    /// Every pid in /proc (the processes this process's PID namespace can see).
    static func visiblePids() -> [Int32] {
        guard let dir = opendir("/proc") else { return [] }
        defer { closedir(dir) }
        var pids: [Int32] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            if let pid = Int32(name) { pids.append(pid) }
        }
        return pids
    }
}
