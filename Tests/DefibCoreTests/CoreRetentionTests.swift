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

    /// coredump.conf(5): the defaults are capped at 4 GiB (MaxUse also floored at 1 MiB), and 0 turns a limit off.
    @Test func systemdCoredumpDefaultsAreCappedAndZeroMeansNoLimit() {
        let huge = FileSystemSpace(totalBytes: 2 << 40, freeBytes: 1 << 40)   // 2 TiB, half free
        let policy = CoreRetentionPolicy(maxPerService: 1000)
        #expect(policy.effectiveMaxUse(totalBytes: huge.totalBytes) == 4 << 30)
        #expect(policy.effectiveKeepFree(totalBytes: huge.totalBytes) == 4 << 30)
        #expect(policy.effectiveMaxUse(totalBytes: 5 << 20) == 1 << 20, "at least 1 MiB")
        // 5 GiB of cores on a 2 TiB disk: over the 4 GiB cap (not 10 % = 204 GiB): the oldest goes.
        let cores = (1...5).map { Self.core($0, 1024) }
        #expect(CoreRetention.plan(cores: cores, space: huge, policy: policy).map(\.core.incidentID) == [1])
        // A full big disk: KeepFree is 4 GiB, not 15 % (300 GiB), so 5 GiB free is enough.
        let full = FileSystemSpace(totalBytes: 2 << 40, freeBytes: 5 << 30)
        #expect(CoreRetention.plan(cores: cores, space: full, policy: .init(maxUseBytes: 0, maxPerService: 1000)) == [])
        // Both limits off: nothing is deleted however much the cores take.
        let off = CoreRetentionPolicy(maxUseBytes: 0, keepFreeBytes: 0, maxPerService: 1000)
        #expect(CoreRetention.plan(cores: cores, space: FileSystemSpace(totalBytes: 1 << 30, freeBytes: 0), policy: off) == [])
    }

    /// Like systemd's vacuum, the service with the most cores loses its oldest first.
    @Test func theServiceWithTheMostCoresGivesFirst() {
        let cores = [Self.core(1, 100, service: "dns", at: 1), Self.core(2, 100, at: 2), Self.core(3, 100, at: 3), Self.core(4, 100, at: 4)]
        let plan = CoreRetention.plan(cores: cores, space: Self.big, policy: .init(maxUseBytes: 250 << 20, maxPerService: 100))
        #expect(plan.map(\.core.incidentID) == [2, 3], "proxy has 3 cores, dns 1: proxy's oldest go although dns's is older")
    }

    @Test func theProtectedIncidentIsNeverChosen() {
        let plan = CoreRetention.plan(cores: [Self.core(1, 100), Self.core(2, 100)], space: Self.big,
                                      policy: .init(maxUseBytes: 1, maxPerService: 100), protected: [2])
        #expect(plan.map(\.core.incidentID) == [1])
    }
}
