import CDefibShims
import Glibc
import ParkingLock
import Synchronization
import FlightRecorder

/// How long a churn reader holds its read lock, relative to the writers' timeout T.
enum ReaderHold: Sendable, CustomStringConvertible {
    /// Exactly T (so a release tends to land on a writer's deadline).
    case exactlyTimeout
    /// Uniformly random in 0–2T.
    case randomUpToTwiceTimeout

    var description: String {
        switch self {
        case .exactlyTimeout: "hold = T"
        case .randomUpToTwiceTimeout: "hold = random 0-2T"
        }
    }
}

/// One natural-churn configuration: readers holding the lock for times that track the writers'
/// timeout T, writers looping on tryWrite(for: T). No gate.
struct ChurnConfig: Sendable, CustomStringConvertible {
    var readers = 4
    var writers = 2
    var timeout: Duration = .microseconds(200)
    var hold: ReaderHold = .exactlyTimeout

    var description: String { "\(readers) readers / \(writers) writers, T = \(timeout), \(hold)" }
}

/// What a churn run saw.
struct ChurnOutcome: Sendable, CustomStringConvertible {
    var corrupted: Bool
    /// Nobody made progress for the stall window although the word did not look corrupt.
    var stalled: Bool
    var seconds: Double
    var word: UInt64
    /// The word after every worker that could leave has left.
    var finalWord: UInt64
    var writerTimeouts: Int
    var writes: Int
    var reads: Int

    var description: String {
        "corrupted=\(corrupted) stalled=\(stalled) after \((seconds * 100).rounded() / 100) s, word \(LockWord.hex(word)), "
            + "\(writerTimeouts) writer timeouts, \(writes) writes, \(reads) reads"
    }
}

/// Runs churn on a fresh, leaked lock until the word is corrupt, progress stalls, or `duration` passes.
/// Corruption is detected from the word (WRITER|WRITER_PARKED with a reader count ≥ 2^59). Readers
/// parked on a corrupted lock are left there (the lock is leaked); writers are stopped and joined.
func runChurn(_ config: ChurnConfig, revert: RevertStrategy, duration: Duration,
              stallWindow: Duration = .seconds(3)) -> ChurnOutcome {
    let lock = leakedLock("churn-\(revert)", revert: revert)
    let stop = Flag()
    let reads = Counter(), writes = Counter(), timeouts = Counter()
    let holdNs = Int(config.timeout.components.attoseconds / 1_000_000_000)
        + Int(config.timeout.components.seconds) * 1_000_000_000
    var readerThreads: [TestThread] = []
    var writerThreads: [TestThread] = []
    for r in 0..<config.readers {
        let hold = config.hold
        readerThreads.append(TestThread {
            var seed = UInt64(r + 1) &* 0x9E37_79B9_7F4A_7C15
            while !stop.isSet {
                lock.lockShared()
                let ns: Int
                switch hold {
                case .exactlyTimeout: ns = holdNs
                case .randomUpToTwiceTimeout:
                    seed ^= seed << 13; seed ^= seed >> 7; seed ^= seed << 17
                    ns = Int(seed % UInt64(2 * holdNs + 1))
                }
                if ns > 0 { sleepFor(.nanoseconds(ns)) }
                lock.unlockShared()
                reads.increment()
            }
        })
    }
    for w in 0..<config.writers {
        let timeout = config.timeout
        writerThreads.append(TestThread {
            let label = "churn.update writer=\(w)"
            while !stop.isSet {
                if lock.tryLockExclusive(for: timeout, label: label) {
                    lock.unlockExclusive()
                    writes.increment()
                } else {
                    timeouts.increment()
                }
            }
        })
    }
    let start = defib_monotonic_ns()
    let end = start + duration.nanosecondsForTests
    var lastProgress = 0
    var lastProgressAt = start
    var corrupted = false
    var stalled = false
    while defib_monotonic_ns() < end {
        if LockWord.isCorrupt(lock.rawWord) {
            corrupted = true
            break
        }
        let progress = reads.count + writes.count
        let now = defib_monotonic_ns()
        if progress != lastProgress {
            lastProgress = progress
            lastProgressAt = now
        } else if now - lastProgressAt > stallWindow.nanosecondsForTests {
            stalled = true
            break
        }
        sleepFor(.microseconds(500))
    }
    let elapsed = Double(defib_monotonic_ns() - start) / 1e9
    let word = lock.rawWord
    stop.set()
    for thread in writerThreads { _ = thread.join(timeout: .seconds(10)) }
    for thread in readerThreads {
        // On a healthy lock readers finish; on a corrupted one they are parked for good.
        if !thread.join(timeout: corrupted ? .milliseconds(50) : .seconds(10)) { thread.detach() }
    }
    return ChurnOutcome(corrupted: corrupted || LockWord.isCorrupt(lock.rawWord), stalled: stalled, seconds: elapsed,
                        word: word, finalWord: lock.rawWord, writerTimeouts: timeouts.count, writes: writes.count, reads: reads.count)
}

extension Duration {
    var nanosecondsForTests: UInt64 {
        UInt64(components.seconds) * 1_000_000_000 + UInt64(components.attoseconds / 1_000_000_000)
    }
}
