/// The bits of parking_lot's 64-bit RwLock word (raw_rwlock.rs): one definition for the lock that sets
/// them (ParkingLock), the recorder that keeps them, and the supervisor that reads them in a hung process.
public enum LockWord {
    /// Some thread is parked in the main queue (key = word address).
    public static let parked: UInt64 = 0b0001
    /// A writer holding WRITER is parked waiting for readers (key = address + 1).
    public static let writerParked: UInt64 = 0b0010
    /// An upgradable reader holds the lock (not used by this project).
    public static let upgradable: UInt64 = 0b0100
    /// With no readers: a writer holds the lock. With readers: a writer waits for them to leave.
    public static let writer: UInt64 = 0b1000
    /// The reader count's unit; the count lives in the upper 60 bits.
    public static let oneReader: UInt64 = 0b1_0000
    /// Mask of the reader-count bits.
    public static let readersMask: UInt64 = ~0b1111

    /// Readers counted in `word`.
    public static func readerCount(_ word: UInt64) -> UInt64 { word >> 4 }

    /// A word no valid sequence of operations produces: WRITER and WRITER_PARKED set together with a
    /// reader count near 2^60 (≥ 2^59) — the parking_lot `try_write_for` revert underflow.
    public static func isCorrupt(_ word: UInt64) -> Bool {
        word & (writer | writerParked) == (writer | writerParked) && readerCount(word) >= (1 << 59)
    }

    /// "0x" and 16 lower-case hex digits, the way incidents, telemetry and the proxy show a word.
    public static func hex(_ word: UInt64) -> String {
        let digits = String(word, radix: 16)
        return "0x" + String(repeating: "0", count: 16 - digits.count) + digits
    }

    /// "0x…" → the word; nil for "unknown" or garbage.
    public static func parse(_ text: String) -> UInt64? {
        let digits = text.hasPrefix("0x") || text.hasPrefix("0X") ? String(text.dropFirst(2)) : text
        return UInt64(digits, radix: 16)
    }

    /// "WRITER|WRITER_PARKED, 1 reader".
    public static func describe(_ w: UInt64) -> String {
        var flags: [String] = []
        if w & writer != 0 { flags.append("WRITER") }
        if w & upgradable != 0 { flags.append("UPGRADABLE") }
        if w & writerParked != 0 { flags.append("WRITER_PARKED") }
        if w & parked != 0 { flags.append("PARKED") }
        let r = readerCount(w)
        let readerText = r >= (1 << 59) ? "reader count \(r) (saturated)" : "\(r) reader\(r == 1 ? "" : "s")"
        return (flags.isEmpty ? "no flags" : flags.joined(separator: "|")) + ", " + readerText
    }
}
