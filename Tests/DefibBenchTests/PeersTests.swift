import DefibChaos
import DefibPOSIX
import Foundation
import Testing
@testable import defib_bench

/// Samples every 10 ms from `from` to `to` (Unix ms), each ending as `outcome` after `latency` ms.
private func samples(from: Double, to: Double, _ outcome: RequestOutcome, latency: Double = 2) -> [RequestSample] {
    stride(from: from, to: to, by: 10).map { RequestSample(scheduledUnixMs: $0, latencyMs: latency, outcome: outcome, status: outcome == .ok ? 200 : 0) }
}

@Suite("Peers: the window of one repetition")
struct PeersWindowTests {
    @Test func recoveryIsTheFirstSuccessAfterTheHungInstanceEnded() throws {
        // Fault at 1000; the old instance answers until 1050, hangs, is gone at 2200; refusals until 2300; serving from 2300.
        let all = samples(from: 0, to: 1050, .ok) + samples(from: 1050, to: 2200, .timedOut, latency: 5000)
            + samples(from: 2200, to: 2300, .refused, latency: 0) + samples(from: 2300, to: 4000, .ok)
        let w = RepWindow.evaluate(samples: all, faultAtUnixMs: 1000, oldGoneAtUnixMs: 2200, boundMs: 30_000)
        #expect(w.recoveryMs == 1302)          // due at 2300, done 2 ms later
        #expect(w.refused == 10)
        #expect(w.timedOut == 115)
        #expect(w.ok == 6)                     // 1000…1040 by the old instance, and the recovering one
        #expect(w.hangShown)
        #expect(w.okWhileHung == 0 && w.dueWhileHung == 105)   // due 1150…2190
    }

    @Test func theOldInstancesLastAnswersNeverCountAsRecovery() {
        // Successes until 1100 (in flight when the lock broke), the instance never ends: no recovery at all.
        let all = samples(from: 0, to: 1100, .ok) + samples(from: 1100, to: 5000, .timedOut, latency: 5000)
        let w = RepWindow.evaluate(samples: all, faultAtUnixMs: 1000, oldGoneAtUnixMs: nil, boundMs: 3000)
        #expect(w.recoveryMs == nil)
        #expect(w.lengthMs == 3000)
        #expect(w.refused == 0)
        #expect(w.hangShown)
    }

    @Test func aProxyThatKeptServingDoesNotShowAHang() {
        let all = samples(from: 0, to: 5000, .ok)
        let w = RepWindow.evaluate(samples: all, faultAtUnixMs: 1000, oldGoneAtUnixMs: nil, boundMs: 3000)
        #expect(!w.hangShown)
        #expect(w.okWhileHung > 0)
        // And one that died before anything was due in the hang window shows nothing either.
        let quick = RepWindow.evaluate(samples: samples(from: 0, to: 1100, .ok), faultAtUnixMs: 1000, oldGoneAtUnixMs: 1100, boundMs: 3000)
        #expect(quick.dueWhileHung == 0 && !quick.hangShown)
    }

    @Test func successesAfterTheBoundAreNotARecovery() {
        let all = samples(from: 9000, to: 9100, .ok)
        let w = RepWindow.evaluate(samples: all, faultAtUnixMs: 1000, oldGoneAtUnixMs: 8000, boundMs: 5000)
        #expect(w.recoveryMs == nil)
    }

    @Test func percentileIsNearestRank() {
        #expect(percentile([], 95) == nil)
        #expect(percentile([3, 1, 2, 5, 4], 95) == 5)
        #expect(percentile([3, 1, 2, 5, 4], 50) == 3)
        #expect(percentile(Array(stride(from: 1.0, through: 20, by: 1)), 95) == 19)
    }
}

@Suite("Peers: configuration")
struct PeersConfigTests {
    @Test func peerListsParseAndUnknownNamesAreListed() throws {
        #expect(try PeerID.parseList("all") == PeerID.allCases)
        #expect(try PeerID.parseList("monit, defib-native,monit") == [.monit, .defibNative])
        #expect(throws: BenchError.self) { try PeerID.parseList("monit,runit") }
        do { _ = try PeerID.parseList("runit"); Issue.record("runit accepted") } catch let e as BenchError {
            #expect(e.message.contains("unknown peer 'runit'") && e.message.contains("supervisord"))
        }
        #expect(throws: BenchError.self) { try PeerID.parseList(" , ") }
    }

    @Test func templatesFillEveryPlaceholderAndNameAMissingOne() throws {
        let out = try PeerTemplate.render("a @DIR@/b @PROXY_ARGS@ @DIR@", name: "t", values: ["DIR": "/w", "PROXY_ARGS": "--x 1"])
        #expect(out == "a /w/b --x 1 /w")
        do { _ = try PeerTemplate.render("x @PORT@", name: "unit", values: ["DIR": "/w"]); Issue.record("no error") } catch let e as BenchError {
            #expect(e.message == "template unit: no value for @PORT@ (known: DIR)")
        }
        do { _ = try PeerTemplate.render("mail root@localhost", name: "m", values: [:]); Issue.record("no error") } catch let e as BenchError {
            #expect(e.message.contains("unterminated placeholder"))
        }
        do { _ = try PeerTemplate.render("a @lower@ b", name: "m", values: [:]); Issue.record("no error") } catch let e as BenchError {
            #expect(e.message.contains("'@lower@' is not a placeholder"))
        }
    }

    static var repositoryRoot: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
    }

    @Test func everyShippedTemplateRendersWithTheValuesTheSessionsGive() throws {
        let dir = Self.repositoryRoot + "/bench/peers"
        let values = ["DIR": "/w", "PROXY": "/p", "PROXY_ARGS": "--route a=1", "PORT": "80", "CORES": "/c"]
        for name in ["monitrc", "monit-start-proxy.sh", "monit-stop-proxy.sh", "monit-restart-with-gcore.sh", "supervisord.conf",
                     "peer-proxy.socket", "peer-proxy.service", "peer-proxy-listen.service"] {
            let text = try #require(readTextFile("\(dir)/\(name)"), "bench/peers/\(name) is missing")
            let out = try PeerTemplate.render(text, name: name, values: values)
            #expect(!out.contains("@"), "\(name) still has an @ after rendering")
        }
    }

    @Test(.enabled(if: resolveExecutable("monit") != nil, "monit is not installed (scripts/setup.sh bench)"))
    func theRenderedMonitrcPassesMonitsOwnCheck() throws {
        let dir = "/tmp/defib-bench-monitrc-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let templates = PeerTemplates(directory: Self.repositoryRoot + "/bench/peers")
        let values = ["DIR": dir, "PROXY": "/bin/true", "PROXY_ARGS": "--route a=1"]
        try templates.render("monitrc", to: dir + "/monitrc", values: values, mode: 0o600)
        for script in ["start-proxy.sh", "stop-proxy.sh", "restart-with-gcore.sh"] {
            try templates.render("monit-" + script, to: "\(dir)/\(script)", values: values, mode: 0o755)
        }
        let (status, output) = runToolCapturing(["monit", "-t", "-c", dir + "/monitrc"], workDirectory: dir)
        #expect(status == .exited(code: 0), "monit -t: \(output)")
        #expect(output.contains("Control file syntax OK"), "\(output)")
    }

    @Test func monitsPendingFailureClearsOnlyWhenATestSucceedsAgain() {
        let failed = "[2026-11-25T18:31:41+0000] error    : 'proxy' failed protocol test [generic] at /w/control.sock -- GENERIC: error receiving data"
        let exec = "[2026-11-25T18:31:41+0000] info     : 'proxy' exec: '/w/restart-with-gcore.sh'"
        let ok = "[2026-11-25T18:31:44+0000] info     : 'proxy' connection succeeded to /w/control.sock"
        #expect(MonitPeerSession.pendingFailure(monitLog: "") == nil)
        #expect(MonitPeerSession.pendingFailure(monitLog: [failed, exec].joined(separator: "\n"))?.contains("failed protocol test") == true)
        #expect(MonitPeerSession.pendingFailure(monitLog: [failed, exec, ok].joined(separator: "\n")) == nil)
        #expect(MonitPeerSession.pendingFailure(monitLog: [failed, exec, ok, failed].joined(separator: "\n")) != nil)
        #expect(MonitPeerSession.stripTimestamp(exec) == "info: 'proxy' exec: '/w/restart-with-gcore.sh'")
    }

    @Test func defibRowsDifferInCaptureAndSocketOnly() {
        func argv(_ id: PeerID) -> [String] {
            DefibPeerSession.argv(id, defib: "defib", proxy: "proxy", stateDirectory: "S", controlSocket: "C", port: 8080, backendPort: 9090,
                                  intervalMs: 100, deadlineMs: 1000)
        }
        #expect(argv(.defibNative) == ["defib", "run", "--state-dir", "S", "--interval", "100", "--deadline", "1000", "--capture", "native",
                                       "--control-socket", "C", "--socket", "http=127.0.0.1:8080", "--", "proxy",
                                       "--route", "app.test=127.0.0.1:9090"])
        #expect(argv(.defibGcore).contains("gcore") && argv(.defibNone).contains("none"))
        let listen = argv(.defibListen)
        #expect(!listen.contains("--socket") && listen.suffix(4) == ["--listen", "127.0.0.1:8080", "--route", "app.test=127.0.0.1:9090"])
    }
}

@Suite("Peers: checks and report")
struct PeersReportTests {
    static func rep(_ n: Int, recovery: Double?, refused: Int = 0, core: Int? = 5, recorded: Bool = true) -> RepResult {
        let w = RepWindow(recoveryMs: recovery, requests: 100, ok: 10, refused: refused, failed: 0, timedOut: 0, okWhileHung: 0,
                          dueWhileHung: 50, lengthMs: recovery ?? 30_000)
        return RepResult(rep: n, oldPid: 100 + Int32(n), newPid: recovery == nil ? nil : 200 + Int32(n), faultReply: "ok fault timeout-race armed",
                         faultAtUnixMs: 0, oldGoneMs: recovery.map { $0 - 200 }, window: w,
                         core: core.map { CoreEvidence(path: "/c", bytes: 1 << 20, gdbThreads: $0, gdbDetail: "gdb exited with code 0") },
                         coreNote: core == nil ? "none" : nil, recorded: recorded, record: recorded ? "incident #1" : "nothing")
    }

    static func peer(_ id: PeerID, _ reps: [RepResult], status: String = "ok", reason: String? = nil) -> PeerResult {
        PeerResult(id: id, status: status, reason: reason, version: "v", configuration: "c", reps: reps, usage: nil)
    }

    static let sample: [PeerResult] = [
        peer(.defibNative, [rep(0, recovery: 1200), rep(1, recovery: 1300), rep(2, recovery: 1250)]),
        peer(.monit, [rep(0, recovery: 2400, refused: 3), rep(1, recovery: 2600, refused: 1), rep(2, recovery: 2500, refused: 0)]),
        peer(.supervisord, [rep(0, recovery: nil, core: nil, recorded: false)]),
        peer(.systemdSocket, [], status: "FAIL", reason: "systemd container: needs root to create namespaces"),
    ]

    @Test func checksPassOnlyWhenTheFiguresSaySo() throws {
        var byID = Dictionary(uniqueKeysWithValues: PeersChecks.evaluate(Self.sample, boundSeconds: 30).map { ($0.id, $0) })
        #expect(byID["peers.rows-ran"]?.pass == false)
        #expect(byID["peers.rows-ran"]?.measured.contains("needs root") == true)
        #expect(byID["peers.hang-shown"]?.pass == true)
        #expect(byID["peers.defib-recovered"]?.pass == true)
        #expect(byID["peers.defib-socket-no-refusal"]?.pass == true)
        #expect(byID["peers.defib-evidence"]?.pass == true)
        #expect(byID["peers.supervisord-never"]?.pass == true)

        var worse = Self.sample
        worse[0] = Self.peer(.defibNative, [Self.rep(0, recovery: 1200, refused: 1), Self.rep(1, recovery: nil), Self.rep(2, recovery: 1250, core: 0)])
        worse[2] = Self.peer(.supervisord, [Self.rep(0, recovery: 9000)])
        byID = Dictionary(uniqueKeysWithValues: PeersChecks.evaluate(worse, boundSeconds: 30).map { ($0.id, $0) })
        #expect(byID["peers.defib-recovered"]?.pass == false)
        #expect(byID["peers.defib-socket-no-refusal"]?.pass == false)
        #expect(byID["peers.defib-evidence"]?.pass == false)
        #expect(byID["peers.defib-evidence"]?.measured.contains("defib-native rep 2") == true)
        #expect(byID["peers.supervisord-never"]?.pass == false)
    }

    @Test func summaryCountsCoresRecordsAndRefusals() throws {
        let s = PeerSummary(Self.sample[1])
        #expect(s.recovered == 3 && s.recovery?.median == 2500 && s.recoveryP95 == 2600)
        #expect(s.refused == [3, 1, 0])
        #expect(s.coresUsable == 3 && s.recorded == 3)
        let none = PeerSummary(Self.sample[2])
        #expect(none.recovered == 0 && none.recovery == nil && none.coresCaptured == 0)
    }

    @Test func theReportShowsEveryRowTheRatiosAndTheFailures() throws {
        let machine = MachineState(nproc: 2, memTotalBytes: 0, memAvailableBytes: 0, memFreeBytes: 0, cachedBytes: 0, dirtyBytes: 0,
                                   load: [], kernel: "", cpuModel: "")
        let settings = PeersSettings(reps: 3, supervisordReps: 1, ratePerSecond: 100, requestTimeoutMs: 5000, boundSeconds: 30,
                                     usageSeconds: 20, defibIntervalMs: 100, defibDeadlineMs: 1000, proxyArguments: "--route app.test=127.0.0.1:BACKEND", gdbVersion: "gdb 13",
                                     corePattern: "core")
        var report = PeersReport(part: "peers", startedAt: "s", finishedAt: "f", machineBefore: machine, machineAfter: machine,
                                 figures: PeersFigures(settings: settings, peers: Self.sample))
        report.peers[0].usage = SupervisorUsage(processes: ["defib pid 1"], seconds: 20, cpuNs: 40_000_000, rssMaxBytes: 30 << 20,
                                                rssEndBytes: 29 << 20, heartbeat: "every 100 ms")
        report.targets = PeersChecks.evaluate(report.peers, boundSeconds: 30)
        let md = PeersMarkdown.render(report, defibCommand: "defib run …", templates: [("monitrc", "set daemon 1\n")])
        #expect(md.contains("| defib, `--capture native` (default) | yes | 3/3 | **1250 ms** | 1300 ms | 1300 ms |"))
        #expect(md.contains("never within 30 s"))
        #expect(md.contains("**FAIL**: systemd container: needs root to create namespaces"))
        #expect(md.contains("median 2500 ms, **2.0×** defib's default (1250 ms)"))
        #expect(md.contains("**0.20 %**"))
        #expect(md.contains("<code>bench/peers/monitrc</code>") && md.contains("set daemon 1"))
        #expect(md.contains("| monit 1 s cycle, unixsocket ping, exec gcore + restart | no | 3/3 |"))
        #expect(md.contains("1; 4 |"))   // refusals: median 1, total 4
        #expect(md.contains("1.0–1.1 s after the hang began"))   // defib's 1000 ms deadline after its 100 ms pings
    }
}
