import ParkingLock
import Testing
import FlightRecorder

extension ParkingLockSuite {
    /// The race without the gate: readers whose holds track the writers' timeout T, writers looping on
    /// tryWrite(for: T). The buggy revert must corrupt the word within the bound; the fixed one must
    /// survive the same configuration, with thousands of writer timeouts to show the window was exercised.
    @Suite(.serialized) struct NaturalRace {
        static let config = ChurnConfig(readers: 4, writers: 2, timeout: .microseconds(200))
        /// Allowance for the buggy variant (the spec measured medians of 1–5 s, a max of 33 s).
        /// 90 s: the whole test suite runs in parallel on two cores, which slows the race down.
        static let bound: Duration = .seconds(90)

        @Test(arguments: [ReaderHold.exactlyTimeout, .randomUpToTwiceTimeout])
        func buggyCorruptsAndFixedSurvives(hold: ReaderHold) async throws {
            let config = ChurnConfig(readers: Self.config.readers, writers: Self.config.writers,
                                     timeout: Self.config.timeout, hold: hold)
            let buggy = try await onDedicatedThread { runChurn(config, revert: .buggy, duration: Self.bound) }
            print("natural race, \(config), buggy: \(buggy)")
            #expect(buggy.corrupted, "buggy revert did not corrupt within \(Self.bound): \(buggy)")
            #expect(!buggy.stalled || buggy.corrupted)
            #expect(buggy.writerTimeouts > 0)

            // The fixed run lasts 3× what the buggy one needed, at least 8 s and at most 20 s — and is
            // repeated (up to 3 more times) until it has seen 5000 writer timeouts, so a loaded machine
            // cannot make it pass without exercising the window.
            let seconds = min(20, max(8, Int((buggy.seconds * 3).rounded(.up))))
            var timeouts = 0
            for round in 0..<4 where timeouts < 5000 {
                let fixed = try await onDedicatedThread { runChurn(config, revert: .fixed, duration: .seconds(seconds)) }
                print("natural race, \(config), fixed (round \(round + 1)): \(fixed)")
                #expect(!fixed.corrupted, "fixed revert corrupted the word: \(fixed)")
                #expect(!fixed.stalled, "fixed run stopped making progress: \(fixed)")
                #expect(fixed.reads > 1000 && fixed.writes > 1000, "\(fixed)")
                #expect(fixed.finalWord == 0, "word not clean once every worker left: \(LockWord.hex(fixed.finalWord))")
                timeouts += fixed.writerTimeouts
            }
            #expect(timeouts >= 5000, "too few writer timeouts to mean anything: \(timeouts)")
        }
    }
}
