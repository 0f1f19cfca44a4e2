@testable import DefibProxy
import Foundation
import Glibc
import Testing

/// The whole proxy in-process (real NIO sockets, real threads, a real backend socket), driven over
/// HTTP and the control channel.
@Suite(.serialized, .timeLimit(.minutes(2)))
struct ServerTests {
    private func start(_ adjust: (inout ProxyConfiguration) -> Void) throws -> (ProxyServer, port: Int) {
        var config = ProxyConfiguration()
        config.listen = BackendAddress(host: "127.0.0.1", port: 0)
        config.reloadIntervalMs = 0
        config.registerLock = false
        adjust(&config)
        let server = try ProxyServer.start(config, logger: quietLogger)
        return (server, try #require(server.httpAddresses.first?.port))
    }

    @Test func forwardsByHostAndAnswersErrorsItself() throws {
        let backend = RawBackend(body: "from the backend\n")
        defer { backend.stop() }
        let (server, port) = try start {
            $0.routeFlags = ["Shop.Test=127.0.0.1:\(backend.port)", "dead.test=127.0.0.1:1"]
        }
        defer { server.shutdown() }

        let ok = try #require(httpGet(port: port, path: "/a?b=c", host: "shop.test:8080"))
        #expect(ok.status == 200)
        #expect(ok.text.hasSuffix("\r\n\r\nfrom the backend\n"))
        #expect(ok.text.lowercased().contains("x-backend: raw"))
        let seen = try #require(backend.requests.withLock { $0.first })
        #expect(seen.hasPrefix("GET /a?b=c HTTP/1.1\r\n"), "\(seen)")
        #expect(seen.lowercased().contains("connection: close"))
        #expect(seen.lowercased().contains("x-forwarded-for: 127.0.0.1"))
        #expect(seen.lowercased().contains("host: shop.test:8080"))

        let unknown = try #require(httpGet(port: port, path: "/", host: "nobody.test"))
        #expect(unknown.status == 404)
        #expect(unknown.text.hasSuffix("no route for host 'nobody.test'\n"))

        let refused = try #require(httpGet(port: port, path: "/", host: "dead.test"))
        #expect(refused.status == 502)
        #expect(refused.text.contains("backend 127.0.0.1:1 (app dead.test, machine m1) unreachable: Connection refused"), "\(refused.text)")

        let health = try #require(httpGet(port: port, path: "/healthz", host: "anything"))
        #expect(health.status == 200)
        #expect(health.text.hasSuffix("ok apps=2 machines=2 version=2\n"))

        #expect(server.stats.requestsServed.load(ordering: .relaxed) == 2)
        #expect(server.stats.requestsFailed.load(ordering: .relaxed) == 2)
    }

    @Test func backendThatNeverAnswersGets502NamingIt() throws {
        let silent = SilentBackend()
        defer { silent.stop() }
        let (server, port) = try start {
            $0.routeFlags = ["slow.test=127.0.0.1:\(silent.port)"]
            $0.responseTimeoutMs = 300
        }
        defer { server.shutdown() }
        let reply = try #require(httpGet(port: port, path: "/", host: "slow.test"))
        #expect(reply.status == 502)
        #expect(reply.text.hasSuffix("backend 127.0.0.1:\(silent.port) (app slow.test, machine m1) sent no response within 300 ms\n"), "\(reply.text)")
    }

    @Test func keepAliveServesSeveralRequestsOnOneConnectionWithABody() throws {
        let backend = RawBackend(body: "ok")
        defer { backend.stop() }
        let (server, port) = try start { $0.routeFlags = ["a.test=127.0.0.1:\(backend.port)"] }
        defer { server.shutdown() }
        let raw = "POST /one HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\n\r\nhello"
            + "GET /two HTTP/1.1\r\nHost: a.test\r\n\r\n"
            + "GET /three HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n"
        let text = try #require(tcpExchange(port: port, raw))
        #expect(text.components(separatedBy: "HTTP/1.1 200 OK").count - 1 == 3, "\(text)")
        let requests = backend.requests.withLock { $0 }
        #expect(requests.count == 3)
        #expect(requests.first?.hasSuffix("\r\n\r\nhello") == true, "\(requests.first ?? "")")
        #expect(requests.first?.lowercased().contains("content-length: 5") == true)
    }

    @Test func http10ClientGetsAnHTTP10ResponseAndAClose() throws {
        let backend = RawBackend(body: "old school")
        defer { backend.stop() }
        let (server, port) = try start { $0.routeFlags = ["a.test=127.0.0.1:\(backend.port)"] }
        defer { server.shutdown() }
        // No Connection header: HTTP/1.0 means close, and tcpExchange reads until the proxy closes.
        let text = try #require(tcpExchange(port: port, "GET / HTTP/1.0\r\nHost: a.test\r\n\r\n"))
        #expect(text.hasPrefix("HTTP/1.0 200 OK\r\n"), "\(text)")
        #expect(text.hasSuffix("\r\n\r\nold school"))
        #expect(!text.lowercased().contains("transfer-encoding"))
    }

    @Test func controlChannelAnswersEveryCommand() throws {
        let dir = scratchPath("ctl")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let socketPath = "\(dir)/run/control.sock"
        let (server, _) = try start {
            $0.routeFlags = ["a.test=127.0.0.1:1"]
            $0.controlSocket = socketPath
            $0.registerLock = true
        }
        var st = stat()
        #expect(stat(socketPath, &st) == 0 && st.st_mode & 0o777 == 0o600, "socket is private")
        #expect(stat("\(dir)/run", &st) == 0 && st.st_mode & 0o777 == 0o700, "directory is private")

        let replies = try #require(controlExchange(path: socketPath, ["ping tok en", "ping", "help", "nope", "fault", "stats", "locks"]))
        #expect(replies[0] == "pong tok en")
        #expect(replies[1] == "pong")
        #expect(replies[2].hasPrefix("commands: ping"))
        #expect(replies[3] == "error unknown command 'nope' (known: ping, locks, stats, fault, help)")
        #expect(replies[4].hasPrefix("error usage: fault KIND"))
        let stats = try #require(JSONSerialization.jsonObject(with: Data(replies[5].utf8)) as? [String: Any])
        #expect(stats["apps"] as? Int == 1)
        #expect(stats["fault"] as? String == "none")
        #expect(stats["pid"] as? Int == Int(getpid()))
        let locks = try #require(JSONSerialization.jsonObject(with: Data(replies[6].utf8)) as? [String: Any])
        let catalogLock = try #require((locks["locks"] as? [[String: Any]])?.first { ($0["name"] as? String) == "catalog" && ($0["address"] as? String) == "0x" + String(server.catalog.lock.wordAddress, radix: 16) })
        let word = try #require(catalogLock["word"] as? String)
        #expect(word.range(of: "^0x[0-9a-f]{16}$", options: .regularExpression) != nil, "\(word)")
        #expect(catalogLock["readers_waiting"] as? Int == 0)

        // An over-long line gets an error and the connection is closed.
        let long = try #require(controlExchange(path: socketPath, [String(repeating: "x", count: 5000)], replies: 1))
        #expect(long == ["error line longer than 4096 bytes; closing"])

        #expect(server.shutdown())
        #expect(access(socketPath, F_OK) != 0, "the socket file is removed at shutdown")
    }

    @Test func updatesSocketAppliesLinesThroughTheTimedWrite() throws {
        let dir = scratchPath("upd")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let backend = RawBackend(body: "ok")
        defer { backend.stop() }
        let (server, port) = try start {
            $0.routeFlags = ["a.test=127.0.0.1:\(backend.port)"]
            $0.updates = .unixSocket("\(dir)/updates.sock")
        }
        defer { server.shutdown() }
        #expect(sendLines(path: "\(dir)/updates.sock", ["down a.test m1", "bogus line", "up b.test x1 127.0.0.1:\(backend.port)"]))
        #expect(eventually(timeoutMs: 5000) { server.stats.updatesApplied.load(ordering: .relaxed) == 2 })
        #expect(httpGet(port: port, path: "/", host: "a.test")?.status == 502)
        #expect(httpGet(port: port, path: "/", host: "a.test")?.text.hasSuffix("no machine up for app 'a.test'\n") == true)
        #expect(httpGet(port: port, path: "/", host: "b.test")?.status == 200)
        #expect(server.catalog.lock.snapshot().lastHolder?.label == "catalog.update app=b.test machine=x1")
        // A reload keeps the stream's changes on top of the routes.
        server.reloadNow()
        #expect(eventually(timeoutMs: 5000) { server.stats.reloads.load(ordering: .relaxed) == 1 })
        #expect(httpGet(port: port, path: "/", host: "a.test")?.status == 502)
        #expect(httpGet(port: port, path: "/", host: "b.test")?.status == 200)
    }

    @Test func updatesFileIsFollowed() throws {
        let dir = scratchPath("follow")
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let file = "\(dir)/updates"
        try "up a.test m2 127.0.0.1:2\n".write(toFile: file, atomically: false, encoding: .utf8)
        let (server, _) = try start {
            $0.routeFlags = ["a.test=127.0.0.1:1"]
            $0.updates = .file(file)
        }
        defer { server.shutdown() }
        #expect(eventually(timeoutMs: 5000) { server.catalog.published.version == 2 })
        let handle = try #require(FileHandle(forWritingAtPath: file))
        handle.seekToEndOfFile()
        handle.write(Data("down a.test m1\n".utf8))
        try handle.close()
        #expect(eventually(timeoutMs: 5000) { server.catalog.published.machinesUp == 1 })
        #expect(server.catalog.snapshot().apps["a.test"]?.machines.map(\.isUp) == [false, true])
    }

    @Test func startupRejectsBadRoutesWithFileAndLine() throws {
        let dir = scratchPath("routes")
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try "up a m1 127.0.0.1:1\nup b m1 nowhere\n".write(toFile: "\(dir)/routes", atomically: true, encoding: .utf8)
        var config = ProxyConfiguration()
        config.listen = BackendAddress(host: "127.0.0.1", port: 0)
        config.routesFile = "\(dir)/routes"
        do {
            _ = try ProxyServer.start(config, logger: quietLogger)
            Issue.record("expected a startup error")
        } catch {
            #expect(error.kind == .configuration)
            #expect(error.exitCode == 2)
            #expect(error.message.hasPrefix("\(dir)/routes:2: address 'nowhere'"), "\(error)")
        }
    }
}
