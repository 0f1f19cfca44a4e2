import FlightRecorder
import Testing

extension ParkingLockSuite {
    /// The supervisor reads recorder files written by a process it does not trust (a hung one, an older
    /// build, a corrupted file): decoding must throw or return, never crash. Mutations of a valid record,
    /// truncations, and random bytes behind a valid header.
    @Suite struct FlightRecordFuzz {
        @Test func mutatedTruncatedAndRandomFilesNeverCrashTheDecoder() {
            let valid = FlightRecordFormat.sample().encode()
            var generator = SystemRandomNumberGenerator()
            var decoded = 0, rejected = 0
            func attempt(_ bytes: [UInt8]) {
                do { _ = try FlightRecord.decode(bytes, torn: .skip); decoded += 1 } catch { rejected += 1 }
            }
            // Byte flips anywhere but the magic, keeping sequences even so slots are not simply torn.
            for _ in 0..<4_000 {
                var bytes = valid
                for _ in 0..<Int.random(in: 1...16, using: &generator) {
                    let i = Int.random(in: 8..<bytes.count, using: &generator)
                    bytes[i] = UInt8.random(in: 0...255, using: &generator)
                }
                attempt(bytes)
            }
            // Every 64-bit field set to an extreme value, one at a time.
            for offset in stride(from: 8, to: valid.count - 8, by: 8) {
                for extreme: UInt64 in [0, 1, UInt64.max, UInt64.max - 1, 1 << 63, 0xFFFF_FFFF] {
                    var bytes = valid
                    withUnsafeBytes(of: extreme.littleEndian) { for (k, b) in $0.enumerated() { bytes[offset + k] = b } }
                    attempt(bytes)
                }
            }
            // Truncations.
            for length in stride(from: 0, to: valid.count, by: 97) { attempt(Array(valid.prefix(length))) }
            // A valid header followed by noise.
            let header = Array(valid.prefix(FlightRecordLayout.headerSize))
            for _ in 0..<400 {
                attempt(header + (0..<(valid.count - header.count)).map { _ in UInt8.random(in: 0...255, using: &generator) })
            }
            #expect(decoded + rejected > 4_400)
            #expect(rejected > 0 && decoded > 0, "both outcomes happen: \(decoded) decoded, \(rejected) rejected")
        }
    }
}
