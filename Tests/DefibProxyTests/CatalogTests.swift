@testable import DefibProxy
import Testing

private func addr(_ port: Int) -> BackendAddress { BackendAddress(host: "127.0.0.1", port: port) }

@Suite struct CatalogTableTests {
    @Test func upDownAndVersion() throws {
        var t = CatalogTable()
        #expect(try t.apply(.up(app: "shop", machine: "m1", address: addr(1))))
        #expect(try t.apply(.up(app: "shop", machine: "m2", address: addr(2))))
        #expect(t.version == 2)
        // Re-announcing a machine exactly as it is changes nothing.
        #expect(try !t.apply(.up(app: "shop", machine: "m1", address: addr(1))))
        #expect(t.version == 2)
        #expect(try t.apply(.down(app: "shop", machine: "m1")))
        #expect(try !t.apply(.down(app: "shop", machine: "m1")))
        #expect(t.version == 3)
        #expect(t.appCount == 1 && t.machineCount == 2 && t.machinesUp == 1)
        // An up with a new address moves the machine and brings it back.
        #expect(try t.apply(.up(app: "shop", machine: "m1", address: addr(11))))
        #expect(t.apps["shop"]?.machines.map(\.address) == [addr(11), addr(2)])
        #expect(t.machinesUp == 2)
    }

    @Test func roundRobinOverMachinesThatAreUp() throws {
        var t = try CatalogTable([.up(app: "shop", machine: "m1", address: addr(1)),
                                  .up(app: "shop", machine: "m2", address: addr(2)),
                                  .up(app: "shop", machine: "m3", address: addr(3))])
        let six = (0..<6).map { _ in t.route(host: "shop") }
        let machines = six.compactMap { if case let .backend(_, m, _) = $0 { m } else { nil } }
        #expect(machines == ["m1", "m2", "m3", "m1", "m2", "m3"])
        try t.apply(.down(app: "shop", machine: "m2"))
        let four = (0..<4).compactMap { _ -> String? in if case let .backend(_, m, _) = t.route(host: "shop") { m } else { nil } }
        #expect(Set(four) == ["m1", "m3"])
        #expect(four.filter { $0 == "m1" }.count == 2)
    }

    @Test func unknownHostAndNoMachineUp() throws {
        var t = try CatalogTable([.up(app: "shop", machine: "m1", address: addr(1))])
        #expect(t.route(host: "other") == .unknownHost)
        try t.apply(.down(app: "shop", machine: "m1"))
        #expect(t.route(host: "shop") == .noMachineUp(app: "shop"))
    }

    @Test func downOfUnknownAppOrMachineIsNamed() throws {
        var t = try CatalogTable([.up(app: "shop", machine: "m1", address: addr(1))])
        do {
            try t.apply(.down(app: "nope", machine: "m1"))
            Issue.record("expected an error")
        } catch {
            #expect(error.kind == .unknownApp)
            #expect(error.description == "down nope m1: no app 'nope' (known: shop)")
        }
        do {
            try t.apply(.down(app: "shop", machine: "m9"))
            Issue.record("expected an error")
        } catch {
            #expect(error.kind == .unknownMachine)
            #expect(error.description == "down shop m9: app 'shop' has no machine 'm9' (known: m1)")
        }
        #expect(t.version == 1, "a rejected update changes nothing")
    }

    @Test func replaceKeepsTheVersionMonotonic() throws {
        var t = try CatalogTable([.up(app: "a", machine: "m1", address: addr(1)), .up(app: "a", machine: "m2", address: addr(2))])
        t.replace(with: try CatalogTable([.up(app: "b", machine: "m1", address: addr(3))]))
        #expect(t.version == 3)
        #expect(t.apps.keys.sorted() == ["b"])
    }

    @Test func churnNeverLeavesAnAppWithoutAMachineUp() throws {
        var t = try CatalogTable([.up(app: "a", machine: "m1", address: addr(1)), .up(app: "a", machine: "m2", address: addr(2)),
                                  .up(app: "b", machine: "m1", address: addr(3)), .up(app: "b", machine: "m2", address: addr(4)),
                                  .up(app: "b", machine: "m3", address: addr(5)), .up(app: "solo", machine: "m1", address: addr(6))])
        var rng = SystemRandomNumberGenerator()
        var downs = 0
        for _ in 0..<2000 {
            let u = try #require(ChurnPlanner.next(in: t, using: &rng))
            #expect(u.app != "solo", "an app with one machine is never flipped")
            if case .down = u { downs += 1 }
            try t.apply(u)
            for (app, routes) in t.apps { #expect(routes.upCount >= 1, "\(app) has no machine up after \(u)") }
        }
        #expect(downs > 100, "churn must actually take machines down")
        #expect(ChurnPlanner.next(in: try CatalogTable([.up(app: "solo", machine: "m1", address: addr(1))]), using: &rng) == nil)
    }
}

@Suite struct CatalogLockTests {
    @Test func updatesAndReloadsGoThroughTheLabelledLock() throws {
        let catalog = Catalog(try CatalogTable([.up(app: "a", machine: "m1", address: addr(1))]), register: false)
        #expect(catalog.apply(.up(app: "a", machine: "m2", address: addr(2)), timeout: .seconds(1)) == .applied(changed: true))
        #expect(catalog.lock.snapshot().lastHolder?.label == "catalog.update app=a machine=m2")
        #expect(catalog.apply(.down(app: "zz", machine: "m1"), timeout: .seconds(1)) == .rejected(
            CatalogError(kind: .unknownApp, update: .down(app: "zz", machine: "m1"), description: "down zz m1: no app 'zz' (known: a)")))
        catalog.reload(try CatalogTable([.up(app: "b", machine: "m1", address: addr(3))]))
        #expect(catalog.lock.snapshot().lastHolder?.label == "catalog.reload")
        #expect(catalog.summary() == CatalogSummary(apps: 1, machines: 1, machinesUp: 1, version: 3))
        #expect(catalog.published.version == 3 && catalog.published.apps == 1 && catalog.published.machinesUp == 1)
        #expect(catalog.lock.rawWord == 0)
    }

    @Test func timedUpdateGivesUpWhileAReaderHoldsTheLock() throws {
        let catalog = Catalog(try CatalogTable([.up(app: "a", machine: "m1", address: addr(1))]), register: false)
        catalog.lock.lockShared()
        #expect(catalog.apply(.down(app: "a", machine: "m1"), timeout: .milliseconds(30)) == .timedOut)
        catalog.lock.unlockShared()
        #expect(catalog.lock.rawWord == 0, "the fixed revert leaves a clean word")
        #expect(catalog.apply(.down(app: "a", machine: "m1"), timeout: .seconds(1)) == .applied(changed: true))
    }
}
