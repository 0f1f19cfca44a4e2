import DefibTestKit
import FlightRecorder
import Glibc
import ParkingLock
import Testing

extension ParkingLockSuite {
    /// On a full file system the recorder is refused at open (posix_fallocate), never a sparse file whose
    /// first write would SIGBUS the service; nothing is left behind.
    @Suite(.serialized) struct FlightRecorderDiskFull {
        @Test func aFullFileSystemRefusesTheRecorderCleanly() throws {
            try #require(geteuid() == 0, "mounting a tmpfs needs root")
            try withTmpfs(size: "1m", name: "recorder") { disk in
                try disk.fill()
                let path = disk.path + "/flight-recorder"
                do {
                    _ = try FlightRecorderWriter.open(path: path)
                    Issue.record("a recorder was mapped on a full file system")
                } catch let error as FlightRecorderWriterError {
                    #expect(error.call == "posix_fallocate" && error.errno == ENOSPC, "\(error)")
                    #expect(error.description.hasSuffix("No space left on device"), "\(error)")
                }
                #expect(disk.entries().isEmpty, "no recorder and no temporary file: \(disk.entries())")
                // With room again it opens, and every byte of it is backed by blocks.
                disk.unfill()
                let writer = try FlightRecorderWriter.open(path: path)
                defer { writer.close() }
                var st = stat()
                #expect(stat(path, &st) == 0 && Int(st.st_blocks) * 512 >= FlightRecordLayout.fileSize(slotCount: writer.slotCount),
                        "allocated for real, not sparse")
            }
        }
    }
}
