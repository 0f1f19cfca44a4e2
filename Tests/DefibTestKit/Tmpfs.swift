import Foundation
import Glibc

/// A real tmpfs of a given size, mounted on a fresh directory for one test and unmounted (lazily, so a
/// descriptor a test still holds cannot keep it) when the test ends — also when it fails: use `withTmpfs`.
/// The disk-full cases run against it: a file system that is really full, not a stub.
public final class TmpfsMount: @unchecked Sendable {
    /// The mount point.
    public let path: String
    private var mounted = true
    private static let fillerName = ".defib-test-filler"

    /// Mounts `size` (e.g. "1m", "256k") on a new directory under /tmp.
    public init(size: String, name: String) throws {
        path = "/tmp/defib-tmpfs-\(name)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        guard mkdir(path, 0o755) == 0 else { throw TestKitError("mkdir(\(path)): \(String(cString: strerror(errno)))") }
        guard Glibc.mount("tmpfs", path, "tmpfs", 0, "size=\(size),mode=0755") == 0 else {
            let message = String(cString: strerror(errno))
            rmdir(path)
            throw TestKitError("mount -t tmpfs -o size=\(size) \(path): \(message)")
        }
    }

    deinit { unmount() }

    /// Fills the file system to the last byte (a file written until ENOSPC). Returns the bytes written.
    @discardableResult
    public func fill() throws -> Int64 {
        let fd = open("\(path)/\(Self.fillerName)", O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw TestKitError("open filler: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        let block = [UInt8](repeating: 0x5a, count: 4096)
        var total: Int64 = 0
        while true {
            let n = block.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            if n > 0 { total += Int64(n); continue }
            if n < 0 && errno == EINTR { continue }
            if n < 0 && errno != ENOSPC { throw TestKitError("filling: \(String(cString: strerror(errno)))") }
            break
        }
        // Smaller writes for the last partial block.
        var one: UInt8 = 0x5a
        while write(fd, &one, 1) == 1 { total += 1 }
        return total
    }

    /// Bytes still free.
    public var freeBytes: Int64 {
        var fs = statvfs()
        return statvfs(path, &fs) == 0 ? Int64(fs.f_bavail) * Int64(fs.f_frsize) : -1
    }

    /// Removes the filler: the space is free again.
    public func unfill() { unlink("\(path)/\(Self.fillerName)") }

    /// The names in the mount point (the filler left out).
    public func entries(_ sub: String = "") -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: sub.isEmpty ? path : "\(path)/\(sub)")) ?? [])
            .filter { $0 != Self.fillerName }.sorted()
    }

    /// Unmounts (MNT_DETACH) and removes the directory; safe to call twice.
    public func unmount() {
        guard mounted else { return }
        mounted = false
        umount2(path, Int32(MNT_DETACH))
        rmdir(path)
    }
}

/// Runs `body` with a fresh tmpfs of `size`, unmounted however `body` ends.
public func withTmpfs<T>(size: String, name: String, _ body: (TmpfsMount) throws -> T) throws -> T {
    let mount = try TmpfsMount(size: size, name: name)
    defer { mount.unmount() }
    return try body(mount)
}

/// A test-kit failure (setting up a fixture), with what went wrong.
public struct TestKitError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}
