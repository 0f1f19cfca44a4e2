import DefibChaos
import Testing

@Suite struct StatsTests {
    @Test func nearestRankPercentileReturnsObservedValues() {
        let values = (1...10).map(Double.init).shuffled()
        #expect(Stats.percentile(values, 50) == 5)
        #expect(Stats.percentile(values, 90) == 9)
        #expect(Stats.percentile(values, 95) == 10)
        #expect(Stats.percentile(values, 100) == 10)
        #expect(Stats.percentile(values, 0) == 1)
        #expect(Stats.percentile(values, 10) == 1)
        #expect(Stats.percentile(values, 11) == 2)
    }

    @Test func p95OfTwentyValuesIsTheNineteenth() {
        let values = (1...20).map { Double($0 * 10) }
        #expect(Stats.percentile(values, 95) == 190)
        #expect(Stats.percentile(values, 96) == 200)
    }

    @Test func edgeCases() {
        #expect(Stats.percentile([], 50) == nil)
        #expect(Stats.median([]) == nil)
        #expect(Stats.summary([]) == nil)
        #expect(Stats.percentile([42], 95) == 42)
        #expect(Stats.percentile([3, 1, 2], 250) == 3, "p above 100 is clamped")
        #expect(Stats.percentile([3, 1, 2], -5) == 1, "p below 0 is clamped")
    }

    @Test func medianAveragesTheMiddlePairOfAnEvenCount() {
        #expect(Stats.median([4, 1, 3]) == 3)
        #expect(Stats.median([4, 1, 3, 2]) == 2.5)
    }

    @Test func summaryHasMedianP95MaxAndCount() {
        let s = Stats.summary([1200, 1000, 1100, 5000])
        #expect(s == Stats.Summary(count: 4, median: 1150, p95: 5000, max: 5000))
    }
}
