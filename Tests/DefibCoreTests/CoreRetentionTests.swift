import DefibCore
import Testing

@Suite struct CoreRetentionTests {
    static let big = FileSystemSpace(totalBytes: 1 << 40, freeBytes: 1 << 39)
    static func core(_ id: Int64, _ mb: Int64, service: String = "proxy", sig: String? = nil, at t: Int64? = nil) -> StoredCore {
        StoredCore(incidentID: id, path: "/cores/core.\(id)", bytes: mb << 20, service: service, signature: sig, detectedUnixMs: t ?? id * 1000)
    }

    @Test func withinEveryLimitNothingIsDeleted() {
        #expect(CoreRetention.plan(cores: (1...5).map { Self.core($0, 10) }, space: Self.big, policy: .init(maxPerService: 5)) == [])
    }

    @Test func perServiceLimitDeletesTheOldestOfThatServiceOnly() {
        let cores = (1...4).map { Self.core($0, 10) } + [Self.core(5, 10, service: "dns")]
        let plan = CoreRetention.plan(cores: cores, space: Self.big, policy: .init(maxPerService: 2))
        #expect(plan.map(\.core.incidentID) == [1, 2])
        #expect(plan.allSatisfy { $0.reason == "max-per-service" })
    }

    @Test func theFirstCoreOfASignatureIsKeptLongest() {
        let cores = [Self.core(1, 10, sig: "aaaa"), Self.core(2, 10, sig: "aaaa"), Self.core(3, 10, sig: "bbbb"), Self.core(4, 10, sig: "aaaa")]
        let plan = CoreRetention.plan(cores: cores, space: Self.big, policy: .init(maxPerService: 2))
        #expect(plan.map(\.core.incidentID) == [2, 4], "1 and 3 are the first of their signatures")
        let squeezed = CoreRetention.plan(cores: cores, space: Self.big, policy: .init(maxPerService: 1))
        #expect(squeezed.map(\.core.incidentID) == [2, 4, 1], "firsts go last, oldest first")
    }

    @Test func maxUseAndKeepFreeDeleteOldestUntilSatisfied() {
        let cores = (1...5).map { Self.core($0, 100) }
        let byUse = CoreRetention.plan(cores: cores, space: Self.big, policy: .init(maxUseBytes: 250 << 20, maxPerService: 100))
        #expect(byUse.map(\.core.incidentID) == [1, 2, 3] && byUse.allSatisfy { $0.reason == "max-use" })
        let tight = FileSystemSpace(totalBytes: 10_000 << 20, freeBytes: 50 << 20)
        let byFree = CoreRetention.plan(cores: cores, space: tight, policy: .init(maxUseBytes: 1 << 40, keepFreeBytes: 250 << 20, maxPerService: 100))
        #expect(byFree.map(\.core.incidentID) == [1, 2] && byFree.allSatisfy { $0.reason == "keep-free" })
    }

    @Test func defaultsAreTenAndFifteenPercentOfTheFileSystem() {
        let fs = FileSystemSpace(totalBytes: 1000 << 20, freeBytes: 900 << 20)
        let plan = CoreRetention.plan(cores: (1...3).map { Self.core($0, 60) }, space: fs, policy: .init(maxPerService: 100))
        #expect(plan.map(\.core.incidentID) == [1, 2], "180 MiB > 100 MiB (10 %): two go")
    }

    @Test func theProtectedIncidentIsNeverChosen() {
        let plan = CoreRetention.plan(cores: [Self.core(1, 100), Self.core(2, 100)], space: Self.big,
                                      policy: .init(maxUseBytes: 1, maxPerService: 100), protected: [2])
        #expect(plan.map(\.core.incidentID) == [1])
    }
}
