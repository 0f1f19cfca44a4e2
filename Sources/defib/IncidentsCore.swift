import DefibCore
import DefibPOSIX
import Foundation
import Glibc

/// An incident's core file as `dump` and `debug` read it: opened without following a symlink, checked to be
/// a regular file, decompressed on the way out when it is a .gz or .zst (as coredumpctl decompresses its own),
/// and checked to really be an ELF core before a byte of it is handed on.
struct CoreFile {
    enum Compression: String { case gzip, zstd }

    let incidentID: String
    let path: String
    let compression: Compression?
    private let fd: Int32

    /// Opens the core of `incident`; the error says why there is none (no capture, a failed capture, deleted).
    static func open(_ incident: Incident) throws -> CoreFile {
        let id = incident.id.map(String.init) ?? "?"
        guard let capture = incident.capture, let path = capture.path else {
            var why = "capture method \(incident.capture?.method ?? "none")"
            if let error = incident.capture?.error { why = "the capture failed: \(error)" }
            throw CLIError("incident \(id) has no core (\(why))")
        }
        let fd = Glibc.open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
        if fd < 0 {
            let e = errno
            if e == ENOENT { throw CLIError("the core of incident \(id) is gone: \(path) no longer exists") }
            if e == ELOOP { throw CLIError("the core of incident \(id) is not a file defib wrote: \(path) is a symlink") }
            throw CLIError("open(\(path)): \(String(cString: strerror(e)))")
        }
        var st = stat()
        guard fstat(fd, &st) == 0, st.st_mode & S_IFMT == S_IFREG else {
            Glibc.close(fd)
            throw CLIError("the core of incident \(id) is not a regular file: \(path)")
        }
        let compression: Compression? = path.hasSuffix(".gz") ? .gzip : path.hasSuffix(".zst") ? .zstd : nil
        return CoreFile(incidentID: id, path: path, compression: compression, fd: fd)
    }

    func close() { _ = Glibc.close(fd) }

    /// For a plain core: checks it is an ELF core before a debugger is pointed at it.
    func checkPlainHeader() throws {
        var header = [UInt8](repeating: 0, count: 18)
        let n = header.withUnsafeMutableBytes { pread(fd, $0.baseAddress, 18, 0) }
        try Self.checkELFCore(Array(header.prefix(max(0, n))), what: path)
    }

    /// Writes the plain core to `output` (decompressing when needed); returns the bytes written. Fails, having
    /// written nothing, when the data does not start as an ELF core file.
    func copyPlain(to output: Int32) throws -> Int64 {
        guard let compression else { return try stream(from: fd, to: output, what: path) }
        // The decompressor reads the descriptor we opened and checked, on its stdin, not the path again.
        let argv = compression == .gzip ? ["gzip", "-dc"] : ["zstd", "-dcq"]
        var fds: [Int32] = [0, 0]
        guard cloexecPipe(&fds) else { throw CLIError("pipe: \(String(cString: strerror(errno)))") }
        guard lseek(fd, 0, SEEK_SET) == 0, let pid = spawnFilter(argv, stdin: fd, stdout: fds[1]) else {
            let message = String(cString: strerror(errno))
            Glibc.close(fds[0]); Glibc.close(fds[1])
            throw CLIError("cannot run \(argv[0]) to decompress \(path): \(message)")
        }
        Glibc.close(fds[1])
        let written: Int64
        do {
            written = try stream(from: fds[0], to: output, what: "\(argv[0]) -d \(path)")
        } catch {
            Glibc.close(fds[0])
            kill(pid, SIGKILL)
            var ignored: Int32 = 0
            waitpid(pid, &ignored, 0)
            throw error
        }
        Glibc.close(fds[0])
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        guard status & 0x7f == 0, (status >> 8) & 0xff == 0 else {
            throw CLIError("\(argv[0]) could not decompress \(path) (wait status \(status))")
        }
        return written
    }

    /// Copies `input` to `output`, refusing data that is not an ELF core (checked on the first bytes, before
    /// anything is written).
    private func stream(from input: Int32, to output: Int32, what: String) throws -> Int64 {
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        var total: Int64 = 0
        var pending: [UInt8] = []   // held back until the header has been checked
        var checked = false
        while true {
            let n = buffer.withUnsafeMutableBytes { read(input, $0.baseAddress, $0.count) }
            if n < 0 { if errno == EINTR { continue }; throw CLIError("read \(what): \(String(cString: strerror(errno)))") }
            if n == 0 { break }
            if checked {
                try writeAll(output, Array(buffer[0..<n]))
                total += Int64(n)
                continue
            }
            pending += buffer[0..<n]
            if pending.count < 18 { continue }
            try Self.checkELFCore(pending, what: what)
            checked = true
            try writeAll(output, pending)
            total += Int64(pending.count)
            pending = []
        }
        if !checked { throw CLIError("\(what) is not an ELF core (only \(pending.count) bytes)") }
        return total
    }

    /// The ELF magic and e_type ET_CORE (4), little-endian as on this machine.
    static func checkELFCore(_ header: [UInt8], what: String) throws {
        guard header.count >= 18, Array(header[0..<4]) == [0x7f, 0x45, 0x4c, 0x46] else {
            throw CLIError("\(what) is not an ELF file (it starts with \(header.prefix(4).map { String(format: "%02x", $0) }.joined(separator: " ")))")
        }
        let type = UInt16(header[16]) | UInt16(header[17]) << 8
        guard type == 4 else { throw CLIError("\(what) is an ELF file but not a core (e_type \(type))") }
    }
}

/// write(2) until every byte is out.
func writeAll(_ fd: Int32, _ bytes: [UInt8]) throws {
    var offset = 0
    while offset < bytes.count {
        let n = bytes[offset...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        if n < 0 {
            if errno == EINTR { continue }
            throw CLIError("write: \(String(cString: strerror(errno)))")
        }
        offset += n
    }
}

/// pipe(2) with both ends close-on-exec (pipe2 is not in Glibc's Swift module).
func cloexecPipe(_ fds: inout [Int32]) -> Bool {
    guard pipe(&fds) == 0 else { return false }
    for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
    return true
}

/// Starts `argv` (found in PATH) reading `stdin` and writing `stdout`, our other descriptors closed to it
/// (they are close-on-exec); nil when it cannot start (errno says why).
func spawnFilter(_ argv: [String], stdin: Int32, stdout: Int32) -> pid_t? {
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_adddup2(&actions, stdin, STDIN_FILENO)
    posix_spawn_file_actions_adddup2(&actions, stdout, STDOUT_FILENO)
    let cArgs: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) } + [nil]
    defer { cArgs.forEach { free($0) } }
    var pid: pid_t = 0
    let rc = posix_spawnp(&pid, argv[0], &actions, nil, cArgs, environ)
    if rc != 0 { errno = rc; return nil }
    return pid
}
