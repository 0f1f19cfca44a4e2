import FlightRecorder

/// Reads a service's flight recorder file — without the service's help, while it hangs.
public enum FlightRecorderFile {
    /// The decoded record. A slot caught mid-write is read again (a few times); if it stays torn it is
    /// left out and listed in `tornSlots`, never trusted.
    public static func read(path: String) throws -> FlightRecord {
        guard let first = readFileBytes(path, maxBytes: 64 << 20) else {
            throw FlightRecordFileError(path: path, problem: "cannot open: \(SystemError("open").message)")
        }
        var bytes = first
        for attempt in 0..<4 {
            do {
                return try FlightRecord.decode(bytes, torn: attempt < 3 ? .reject : .skip)
            } catch where error.kind == .torn && attempt < 3 {
                bytes = readFileBytes(path, maxBytes: 64 << 20) ?? bytes
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
