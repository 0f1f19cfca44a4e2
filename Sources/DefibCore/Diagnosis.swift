/// First diagnosis rules (the evidence issue extends them with /proc and stacks).
public enum Diagnosis {
    /// A lock word that no valid sequence of operations produces: WRITER and WRITER_PARKED set together
    /// with a reader count near 2^60 — the parking_lot `try_write_for` revert underflow.
    public static func isCorrupted(_ word: UInt64) -> Bool {
        let readers = word >> 4
        return word & 0b1010 == 0b1010 && readers >= (UInt64(1) << 59)
    }

    /// "corrupted-lock-word: …" when any lock word is corrupted; nil when the words explain nothing.
    public static func fromLocks(_ locks: [(name: String, word: String)]) -> String? {
        for (name, word) in locks {
            let digits = word.hasPrefix("0x") ? String(word.dropFirst(2)) : word
            guard let w = UInt64(digits, radix: 16), isCorrupted(w) else { continue }
            return "corrupted-lock-word: lock '\(name)' word \(word): WRITER and WRITER_PARKED set with a saturated reader count; no thread can be in the critical section, every reader and writer waits forever"
        }
        return nil
    }
}
