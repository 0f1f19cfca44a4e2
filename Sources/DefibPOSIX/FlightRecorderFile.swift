import Glibc
import FlightRecorder

/// Reads a service's flight recorder file — without the service's help, while it hangs.
public enum FlightRecorderFile {
    /// The decoded record. A slot caught mid-write is read again (a few times); if it stays torn it is
    /// left out and listed in `tornSlots`, never trusted.
    public static func read(path: String) throws -> FlightRecord {
        // The service makes this file, in a directory it may write: never follow a link, never block on a FIFO.
        let first: [UInt8]
        switch readRegularFile(path, maxBytes: 64 << 20) {
        case let .success(bytes): first = bytes
        case let .failure(problem): throw FlightRecordFileError(path: path, problem: problem.description)
        }
        var bytes = first
        for attempt in 0..<4 {
            do {
                return try FlightRecord.decode(bytes, torn: attempt < 3 ? .reject : .skip)
            } catch where error.kind == .torn && attempt < 3 {
                bytes = (try? readRegularFile(path, maxBytes: 64 << 20).get()) ?? bytes
            } catch {
                throw FlightRecordFileError(path: path, problem: "\(error)")
            }
        }
        throw FlightRecordFileError(path: path, problem: "torn on every read")
    }
}

/// A flight recorder that could not be read, naming the file.
public struct FlightRecordFileError: Error, CustomStringConvertible, Sendable {
    public var path: String
    public var problem: String
    public var description: String { "flight recorder \(path): \(problem)" }
}

/// The bytes of a regular file someone else may have made: opened without following a link and without
/// blocking (a FIFO put in its place), and refused unless it is a regular file. The failure names why.
func readRegularFile(_ path: String, maxBytes: Int) -> Result<[UInt8], FileReadProblem> {
    let fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY)
    guard fd >= 0 else {
        return .failure(FileReadProblem(errno == ELOOP ? "is a symbolic link: not followed" : "cannot open: \(SystemError("open").message)"))
    }
    defer { close(fd) }
    var st = stat()
    guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else { return .failure(FileReadProblem("is not a regular file")) }
    return .success(readAll(fd: fd, maxBytes: maxBytes))
}

/// Why a file could not be read, in words.
struct FileReadProblem: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
