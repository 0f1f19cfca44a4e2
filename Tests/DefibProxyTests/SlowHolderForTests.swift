import DefibFaults
@testable import DefibProxy
import Testing

/// `fault slow-holder MS`: the slow holder with a bound, a stall that ends by itself (the chaos `stall` scenario).
@Suite struct SlowHolderForTests {
    @Test func aBoundedSlowHolderParsesAndBadBoundsAreNamed() throws {
        #expect(try ControlCommand.parse("fault slow-holder 750") == .slowHolderFor(ms: 750))
        #expect(try ControlCommand.parse("fault  slow-holder   600 ") == .slowHolderFor(ms: 600))
        #expect(try ControlCommand.parse("fault slow-holder") == .fault(.slowHolder), "unbounded as before")
        for bad in ["fault slow-holder 0", "fault slow-holder -5", "fault slow-holder soon", "fault slow-holder 3600001"] {
            #expect(throws: ControlCommandError.self) { try ControlCommand.parse(bad) }
        }
        #expect(throws: ControlCommandError.self) { try ControlCommand.parse("fault leaked-read 750") }
        #expect(ControlCommand.helpText.contains("fault slow-holder MS"))
    }
}
