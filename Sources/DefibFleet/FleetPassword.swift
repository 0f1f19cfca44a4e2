import DefibCore
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Where the fleet database password comes from: `fleet.password_file` (or `--fleet-password-file`), else
/// the `PGPASSWORD` environment variable, else none (trust, peer or certificate authentication). Never the
/// URL, never the config file, never the log.
public enum FleetPassword {
    /// The password, or nil when there is none to give.
    public static func resolve(file: String?, environment: [String: String] = ProcessInfo.processInfo.environment) throws -> String? {
        if let file { return try readFile(file) }
        if let env = environment["PGPASSWORD"], !env.isEmpty { return env }
        return nil
    }

    /// Reads the first line of a password file. defib runs as root and reads a file it did not create, so it
    /// checks what it opened, not the path: a symlink is refused (O_NOFOLLOW), so is anything but a regular
    /// file, a file owned by another user than us or root, and a file group or others may read (as libpq does
    /// for ~/.pgpass: such a password is not a secret any more).
    static func readFile(_ path: String) throws -> String {
        let fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY)
        guard fd >= 0 else {
            let e = errno
            let why = e == ELOOP ? "is a symbolic link (refused: give the file itself)" : "open(\(path)): \(String(cString: strerror(e))) (errno \(e))"
            throw FleetError(.password, "password file \(path)", why)
        }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else {
            throw FleetError(.password, "password file \(path)", "fstat: \(String(cString: strerror(errno))) (errno \(errno))")
        }
        guard st.st_mode & S_IFMT == S_IFREG else { throw FleetError(.password, "password file \(path)", "not a regular file") }
        guard st.st_uid == geteuid() || st.st_uid == 0 else {
            throw FleetError(.password, "password file \(path)", "owned by uid \(st.st_uid), neither us (\(geteuid())) nor root")
        }
        guard st.st_mode & 0o077 == 0 else {
            throw FleetError(.password, "password file \(path)",
                             "readable or writable by group or others (mode \(String(st.st_mode & 0o777, radix: 8))): chmod 600 it")
        }
        var bytes = [UInt8](repeating: 0, count: 4097)
        let n = bytes.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
        guard n >= 0 else { throw FleetError(.password, "password file \(path)", "read: \(String(cString: strerror(errno))) (errno \(errno))") }
        guard n <= 4096 else { throw FleetError(.password, "password file \(path)", "longer than 4 KiB: not a password file") }
        let text = String(decoding: bytes[0..<n], as: UTF8.self)
        let line = text.split(separator: "\n", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? ""
        let password = line.hasSuffix("\r") ? String(line.dropLast()) : line
        guard !password.isEmpty else { throw FleetError(.password, "password file \(path)", "empty first line") }
        return password
    }
}

/// This host's identity in the fleet.
public enum FleetHostIdentity {
    /// `fleet.host` when set, else the hostname.
    public static func name(configured: String?) -> String {
        if let configured, !configured.isEmpty { return configured }
        var buffer = [CChar](repeating: 0, count: 256)
        guard gethostname(&buffer, buffer.count) == 0 else { return "localhost" }
        let name = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return name.isEmpty ? "localhost" : name
    }

    /// `/etc/machine-id` when present and well-formed (32 hex digits): tells apart two hosts that share a name.
    public static func machineID(path: String = "/etc/machine-id") -> String? {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return nil }
        let id = text.trimmingCharacters(in: .whitespacesAndNewlines)
        return id.count == 32 && id.allSatisfy(\.isHexDigit) ? id.lowercased() : nil
    }
}
