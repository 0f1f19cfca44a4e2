import Glibc

/// Why the supervisor lock could not be taken.
public struct SupervisorLockError: Error, Equatable, CustomStringConvertible, Sendable {
    /// What went wrong.
    public enum Code: Equatable, Sendable {
        /// Another live process holds the lock; its pid when it has written it yet.
        case held(byPid: Int32?)
        /// The lock file is not one defib can trust (a link, another owner, hard-linked elsewhere).
        case untrustedFile(String)
        /// A system call failed.
        case system(SystemError)
    }

    /// What went wrong.
    public var code: Code
    /// The lock file.
    public var path: String
    /// The service concerned.
    public var service: String

    /// Makes an error.
    public init(code: Code, path: String, service: String) { self.code = code; self.path = path; self.service = service }

    /// "another defib (pid 1234) already supervises 'web' …", naming the lock file.
    public var description: String {
        switch code {
        case let .held(pid):
            let who = pid.map { "another defib (pid \($0))" } ?? "another defib (its pid not written yet)"
            return "\(who) already supervises '\(service)' with this state directory (it holds \(path)); stop it first, or give another --state-dir or --name"
        case let .untrustedFile(why):
            return "supervisor lock \(path): \(why)"
        case let .system(e):
            return "supervisor lock \(path): \(e)"
        }
    }
}

/// One supervisor per (state directory, service): an exclusive `flock(2)` on `run/NAME/supervisor.lock`,
/// held for the supervisor's whole life. A second `defib run` for the same service gets an error naming
/// the live pid (its control socket would replace the first one's, and the first would ping the wrong
/// child and then kill its own healthy one). The kernel drops the lock when its holder dies however it
/// dies, so a dead supervisor's lock is simply taken over; the pid it left in the file says whose it was.
///
/// The descriptor is close-on-exec: a service (or a helper) never inherits the lock and so can never keep
/// a dead supervisor's lock alive.
public final class SupervisorLock: @unchecked Sendable {
    /// The lock file's name inside the run directory.
    public static let fileName = "supervisor.lock"

    /// The lock file.
    public let path: String
    /// The pid a previous, dead holder left in the file, when there was one (a stale lock taken over).
    public let previousHolder: Int32?
    private var fd: Int32

    private init(path: String, fd: Int32, previousHolder: Int32?) {
        self.path = path; self.fd = fd; self.previousHolder = previousHolder
    }
    deinit { release() }

    /// Takes the lock in `runDirectory` (a checked `SafeDirectory`, `run/NAME`), writes our pid into it, or
    /// fails at once — never waits — naming the holder.
    public static func acquire(in runDirectory: SafeDirectory, service: String) throws(SupervisorLockError) -> SupervisorLock {
        let path = runDirectory.path + "/" + fileName
        func fail(_ code: SupervisorLockError.Code) -> SupervisorLockError { SupervisorLockError(code: code, path: path, service: service) }
        let fd = openat(runDirectory.fd, fileName, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY, 0o600)
        guard fd >= 0 else {
            if errno == ELOOP { throw fail(.untrustedFile("is a symbolic link")) }
            throw fail(.system(SystemError("open(\(path))")))
        }
        var st = stat()
        fstat(fd, &st)
        // Only a file of our own: a file someone else made (or linked here) is not our lock to write in.
        guard (st.st_mode & S_IFMT) == S_IFREG else { Glibc.close(fd); throw fail(.untrustedFile("is not a regular file")) }
        guard st.st_uid == geteuid() else { Glibc.close(fd); throw fail(.untrustedFile("is owned by uid \(st.st_uid), not by defib")) }
        guard st.st_nlink == 1 else { Glibc.close(fd); throw fail(.untrustedFile("has \(st.st_nlink) hard links")) }
        if flock(fd, LOCK_EX | LOCK_NB) != 0 {
            let e = errno
            guard e == EWOULDBLOCK else { Glibc.close(fd); throw fail(.system(SystemError("flock(\(path))", errno: e))) }
            // The holder writes its pid right after locking: give it a moment to have done so.
            var holder = readPid(fd)
            for _ in 0..<20 where holder == nil { usleep(5_000); holder = readPid(fd) }
            Glibc.close(fd)
            throw fail(.held(byPid: holder))
        }
        let previous = readPid(fd).flatMap { $0 == getpid() ? nil : $0 }
        let text = Array("\(getpid())\n".utf8)
        guard ftruncate(fd, 0) == 0, text.withUnsafeBytes({ pwrite(fd, $0.baseAddress, $0.count, 0) }) == text.count else {
            let e = SystemError("write(\(path))")
            Glibc.close(fd)
            throw fail(.system(e))
        }
        return SupervisorLock(path: path, fd: fd, previousHolder: previous)
    }

    /// Whether this process still holds it.
    public var isHeld: Bool { fd >= 0 }

    /// Lets the lock go (the file stays: removing it would let a third supervisor lock a new file while a
    /// second still waits on the old one). Also done when the object goes, and by the kernel at exit.
    public func release() {
        if fd >= 0 { Glibc.close(fd); fd = -1 }
    }

    /// The pid in the lock file, or nil when it holds none (yet).
    public static func holder(runDirectory: String) -> Int32? {
        let fd = Glibc.open(runDirectory + "/" + fileName, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { Glibc.close(fd) }
        return readPid(fd)
    }

    private static func readPid(_ fd: Int32) -> Int32? {
        var buffer = [UInt8](repeating: 0, count: 32)
        let n = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, 0) }
        guard n > 0 else { return nil }
        let text = String(decoding: buffer[0..<n], as: UTF8.self).trimmingCharacters(in: "\n ")
        return Int32(text).flatMap { $0 > 0 ? $0 : nil }
    }
}
