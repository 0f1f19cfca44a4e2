@testable import DefibProxy
import Testing

@Suite struct RouteGrammarTests {
    @Test func parsesUpAndDownWithCommentsAndBlankLines() throws {
        let text = """
        # the shop
        up Shop.Example m1 127.0.0.1:8080   # primary

        up shop.example m2 [::1]:9090
        down shop.example m1
        \tup api backend-7 localhost:65535\r
        """
        let updates = try RouteGrammar.parse(text, file: "stream")
        #expect(updates == [
            .up(app: "shop.example", machine: "m1", address: BackendAddress(host: "127.0.0.1", port: 8080)),
            .up(app: "shop.example", machine: "m2", address: BackendAddress(host: "::1", port: 9090)),
            .down(app: "shop.example", machine: "m1"),
            .up(app: "api", machine: "backend-7", address: BackendAddress(host: "localhost", port: 65535)),
        ])
        // Statements print back in the grammar.
        #expect(updates.map(\.description) == ["up shop.example m1 127.0.0.1:8080", "up shop.example m2 [::1]:9090",
                                               "down shop.example m1", "up api backend-7 localhost:65535"])
    }

    @Test(arguments: [
        ("upp a m 1.2.3.4:5", RouteError.Kind.unknownVerb, "unknown verb 'upp'"),
        ("up a m", .wrongArity, "'up' takes APP MACHINE HOST:PORT, got 2"),
        ("down a", .wrongArity, "'down' takes APP MACHINE, got 1"),
        ("up a m 1.2.3.4", .badAddress, "address '1.2.3.4': expected HOST:PORT"),
        ("up a m 1.2.3.4:0", .badAddress, "port '0' is not a number in 1…65535"),
        ("up a m 1.2.3.4:70000", .badAddress, "port '70000'"),
        ("up a m ::1:80", .badAddress, "IPv6 literal must be written in brackets"),
        ("up a m [::1:80", .badAddress, "missing ']'"),
        ("up a m :80", .badAddress, "empty host"),
        ("up a=b m 1.2.3.4:5", .badName, "app name 'a=b'"),
    ])
    func badLinesNameTheProblemAndTheLine(line: String, kind: RouteError.Kind, fragment: String) {
        let text = "# header\nup ok m1 127.0.0.1:1\n" + line + "\n"
        do {
            _ = try RouteGrammar.parse(text, file: "routes.conf")
            Issue.record("'\(line)' must be rejected")
        } catch {
            #expect(error.kind == kind)
            #expect(error.line == 3)
            #expect(error.description.hasPrefix("routes.conf:3: "), "\(error)")
            #expect(error.description.contains(fragment), "\(error)")
        }
    }

    @Test func routesFileAcceptsOnlyUpLines() throws {
        #expect(try RouteGrammar.parseRoutesFile("up a m1 127.0.0.1:1\n\n# x\nup b m1 127.0.0.1:2\n", file: "r").count == 2)
        do {
            _ = try RouteGrammar.parseRoutesFile("up a m1 127.0.0.1:1\ndown a m1\n", file: "/etc/routes")
            Issue.record("a down line in a routes file must be rejected")
        } catch {
            #expect(error.kind == .notAnUp)
            #expect(error.description.hasPrefix("/etc/routes:2: "), "\(error)")
        }
    }

    @Test func missingRoutesFileIsNamed() {
        do {
            _ = try RouteGrammar.parseRoutesFile(atPath: "/nonexistent/defib/routes")
            Issue.record("expected an error")
        } catch {
            #expect(error.kind == .unreadable)
            #expect(error.description.contains("/nonexistent/defib/routes"))
            #expect(error.description.contains("No such file"), "\(error)")
        }
    }

    @Test func routeFlagsNumberMachinesPerApp() throws {
        let updates = try RouteGrammar.parseRouteFlags(["a=127.0.0.1:1", "b=127.0.0.1:2", "A=127.0.0.1:3"])
        #expect(updates == [
            .up(app: "a", machine: "m1", address: BackendAddress(host: "127.0.0.1", port: 1)),
            .up(app: "b", machine: "m1", address: BackendAddress(host: "127.0.0.1", port: 2)),
            .up(app: "a", machine: "m2", address: BackendAddress(host: "127.0.0.1", port: 3)),
        ])
        #expect(throws: RouteError.self) { try RouteGrammar.parseRouteFlags(["no-equals"]) }
        do {
            _ = try RouteGrammar.parseRouteFlags(["a=host"])
            Issue.record("expected an error")
        } catch {
            #expect(error.description.contains("--route 'a=host'"), "\(error)")
        }
    }

    @Test func updateLineReaderNumbersLinesAcrossChunksAndSkipsBadOnes() {
        var reader = UpdateLineReader(source: "updates.log")
        var results = reader.feed(Array("up a m1 127.0.0.1:1\nbogus li".utf8))
        #expect(results.count == 1)
        results = reader.feed(Array("ne\ndown a m1\n".utf8))
        #expect(results.count == 2)
        guard case let .failure(e) = results[0] else { Issue.record("expected a failure"); return }
        #expect(e.description.hasPrefix("updates.log:2: unknown verb 'bogus'"), "\(e)")
        #expect(results[1] == .success(.down(app: "a", machine: "m1")))
        #expect(reader.lineNumber == 3)
    }

    @Test func updateSourceParsing() throws {
        #expect(try UpdateSource.parse("unix:/run/x.sock") == .unixSocket("/run/x.sock"))
        #expect(try UpdateSource.parse("/var/log/updates") == .file("/var/log/updates"))
        #expect(throws: ProxyConfigError.self) { try UpdateSource.parse("unix:") }
        #expect(throws: ProxyConfigError.self) { try UpdateSource.parse("unix:/" + String(repeating: "x", count: 200)) }
    }
}
