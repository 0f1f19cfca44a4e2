import Foundation
import Testing
@testable import defib_bench

/// The first capture of a fresh process, the one a real incident meets: with O_DIRECT (the supervisor's) it must stay
/// within twice the steady state.
@Suite struct FirstCaptureTests {
    typealias T = BenchTargetTests

    @Test func theFirstDirectCaptureIsHeldToTwiceItsMedian() throws {
        var big = T.scenario("ballast", [T.sample("native-direct", ms: 400, file: 700, allocated: 700), T.sample("native", ms: 150, file: 700, allocated: 700)])
        big.warmupSamples = [T.sample("native-direct", ms: 790, file: 700, allocated: 700), T.sample("native", ms: 1250, file: 700, allocated: 700)]
        let pass = try #require(CoreTargets.evaluate(idle: nil, ballast: big).first { $0.id == "ballast.first-capture" })
        #expect(pass.pass && pass.measured.hasPrefix("first 790 ms, median 400 ms") && pass.measured.contains("through the page cache: first 1250 ms"),
                "\(pass.measured)")
        big.warmupSamples[0] = T.sample("native-direct", ms: 801, file: 700, allocated: 700)
        #expect(CoreTargets.evaluate(idle: nil, ballast: big).first { $0.id == "ballast.first-capture" }?.pass == false)
        big.warmupSamples = []
        #expect(CoreTargets.evaluate(idle: nil, ballast: big).first { $0.id == "ballast.first-capture" }?.pass == false, "not measured: no pass")
    }
}
