@testable import DefibProxy
import ParkingLock
import Testing

@Suite struct ControlCommandTests {
    @Test func parsesEveryCommand() throws {
        #expect(try ControlCommand.parse("ping") == .ping(token: nil))
        #expect(try ControlCommand.parse("ping 42") == .ping(token: "42"))
        #expect(try ControlCommand.parse("ping a  b ") == .ping(token: "a  b "), "the token is echoed exactly")
        #expect(try ControlCommand.parse("ping 7\r") == .ping(token: "7"))
        #expect(try ControlCommand.parse("locks") == .locks)
        #expect(try ControlCommand.parse("stats") == .stats)
        #expect(try ControlCommand.parse("help") == .help)
        #expect(try ControlCommand.parse("fault timeout-race") == .fault(.timeoutRace))
        #expect(try ControlCommand.parse("fault  guard-across-else ") == .fault(.guardAcrossElse))
        for kind in FaultKind.allCases { #expect(try ControlCommand.parse("fault \(kind.rawValue)") == .fault(kind)) }
    }

    @Test func errorsAreReplyLines() {
        func reply(_ line: String) -> ControlCommandError? {
            do { _ = try ControlCommand.parse(line); return nil } catch { return error }
        }
        #expect(reply("x")?.reply == "error unknown command 'x' (known: ping, locks, stats, fault, help)")
        #expect(reply("")?.kind == .unknownCommand)
        #expect(reply("PING")?.kind == .unknownCommand)
        #expect(reply("fault")?.reply.hasPrefix("error usage: fault KIND (known: none, timeout-race,") == true)
        #expect(reply("fault melt")?.reply.hasPrefix("error unknown fault 'melt' (known: none, timeout-race") == true)
        #expect(reply("locks now")?.kind == .unexpectedArgument)
        #expect(ControlCommand.helpText.contains("fault KIND"))
    }

    @Test func locksJSONHasTheFieldsTheSupervisorParses() throws {
        let holder = LockHolder(label: "catalog.update app=\"q\" machine=m1", tid: 77, sinceMonotonicNs: 1, sinceUnixMs: 1_700_000_000_000)
        let snap = LockSnapshot(name: "catalog", address: 0x7f00_dead_beef, word: 0xFFFF_FFFF_FFFF_FFFE, revert: .buggy,
                                holder: nil, lastHolder: holder, readersWaiting: 3, writersWaiting: 1)
        let json = ControlHandler.locksJSON(pid: 123, flightRecorder: nil, snapshots: [snap])
        #expect(json == #"{"pid":123,"flight_recorder":null,"locks":[{"name":"catalog","address":"0x7f00deadbeef","word":"0xfffffffffffffffe","revert":"buggy","holder":null,"last_holder":{"label":"catalog.update app=\"q\" machine=m1","tid":77,"since_ms":1700000000000},"readers_waiting":3,"writers_waiting":1,"holder_waiting_for_readers":false,"read_holders":[],"more_read_holders":0}]}"#)
        #expect(ControlHandler.locksJSON(pid: 1, flightRecorder: "/run/fr", snapshots: []) == #"{"pid":1,"flight_recorder":"/run/fr","locks":[]}"#)
        // A reload waiting for a leaked reader: the pending writer and who holds the read lock.
        let waiting = LockSnapshot(name: "catalog", address: 0x10, word: 0x1B, revert: .fixed,
                                   holder: LockHolder(label: "catalog.reload", tid: 80, sinceMonotonicNs: 2, sinceUnixMs: 1_700_000_000_500),
                                   holderWaitingForReaders: true, lastHolder: nil, readersWaiting: 1, writersWaiting: 1,
                                   readHolders: [LockReadHolder(tid: 81, depth: 1, threadExited: true, sinceMonotonicNs: 1, sinceUnixMs: 1_700_000_000_100)],
                                   moreReadHolders: 2)
        #expect(ControlHandler.locksJSON(pid: 1, flightRecorder: nil, snapshots: [waiting]).hasSuffix(#""holder":{"label":"catalog.reload","tid":80,"since_ms":1700000000500},"last_holder":null,"readers_waiting":1,"writers_waiting":1,"holder_waiting_for_readers":true,"read_holders":[{"tid":81,"depth":1,"since_ms":1700000000100,"exited":true}],"more_read_holders":2}]}"#))
    }
}

@Suite struct ListenFDsTests {
    @Test func parsesTheSystemdProtocol() throws {
        let env = ["LISTEN_PID": "321", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "http:admin"]
        #expect(try ListenFDs.parse(environment: env, pid: 321) == [PassedSocket(fd: 3, name: "http"), PassedSocket(fd: 4, name: "admin")])
        #expect(try ListenFDs.parse(environment: ["LISTEN_PID": "321", "LISTEN_FDS": "1"], pid: 321) == [PassedSocket(fd: 3, name: "unknown")])
    }

    @Test func descriptorsMeantForAnotherProcessAreIgnored() throws {
        #expect(try ListenFDs.parse(environment: ["LISTEN_PID": "999", "LISTEN_FDS": "1"], pid: 321) == nil)
        #expect(try ListenFDs.parse(environment: ["LISTEN_FDS": "1"], pid: 321) == nil)
        #expect(try ListenFDs.parse(environment: [:], pid: 321) == nil)
    }

    @Test func malformedValuesAreNamed() {
        func error(_ env: [String: String]) -> ListenFDsError? {
            do { _ = try ListenFDs.parse(environment: env, pid: 5); return nil } catch { return error }
        }
        #expect(error(["LISTEN_PID": "5", "LISTEN_FDS": "zero"])?.description == "LISTEN_FDS='zero': not a number of descriptors in 1…4096")
        #expect(error(["LISTEN_PID": "5", "LISTEN_FDS": "0"])?.variable == "LISTEN_FDS")
        #expect(error(["LISTEN_PID": "x", "LISTEN_FDS": "1"])?.variable == "LISTEN_PID")
        #expect(error(["LISTEN_PID": "5", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "one"])?.description == "LISTEN_FDNAMES='one': 1 name(s) for LISTEN_FDS=2 descriptor(s)")
    }

    @Test func configurationNeedsSomethingToListenOn() {
        var config = ProxyConfiguration()
        #expect(throws: ProxyConfigError.self) { try config.validate() }
        config.listen = BackendAddress(host: "127.0.0.1", port: 0)
        #expect(throws: Never.self) { try config.validate() }
        config.churnRate = -1
        #expect(throws: ProxyConfigError.self) { try config.validate() }
        config.churnRate = 0
        config.controlSocket = "/" + String(repeating: "s", count: 120)
        do { try config.validate() } catch { #expect(error.option == "--control-socket") }
    }

    @Test func hostHeaderNormalization() {
        #expect(HTTPProxyHandler.normalizedHost("Shop.Example:8080") == "shop.example")
        #expect(HTTPProxyHandler.normalizedHost("shop.example.") == "shop.example")
        #expect(HTTPProxyHandler.normalizedHost("[::1]:80") == "::1")
        #expect(HTTPProxyHandler.normalizedHost("") == nil)
        #expect(HTTPProxyHandler.normalizedHost(":80") == nil)
    }
}
