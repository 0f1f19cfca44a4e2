import DefibCore
import DefibPOSIX
import Foundation
import Glibc
import Testing

/// The HTTP, TCP and exec probes against real servers (python's http.server, nginx, redis), healthy and hung
/// (SIGSTOP, redis `DEBUG SLEEP`), and against answers real servers do not give. A healthy probe gets a
/// generous timeout (a beat returns at once, so it costs nothing under load); a hung one a short timeout it
/// is certain to reach.
@Suite(.timeLimit(.minutes(3)))
struct ProbeTests {
    static let generous = 20_000
    static let short = 1_500

    func probe(_ target: ProbeSpec.Target, timeoutMs: Int = generous, status: Int? = nil, body: String? = nil,
               send: String? = nil, expect: String? = nil, as credentials: ProcessCredentials? = nil) throws -> ResolvedProbe {
        try ResolvedProbe.resolve(ProbeSpec(target: target, timeoutMs: timeoutMs, expectStatus: status, expectBody: body,
                                            send: send, expectPrefix: expect), credentials: credentials)
    }

    func http(_ port: Int, _ path: String = "/", timeoutMs: Int = generous, status: Int? = nil, body: String? = nil) throws -> ResolvedProbe {
        try probe(.http(HTTPProbeTarget(host: "127.0.0.1", port: port, path: path)), timeoutMs: timeoutMs, status: status, body: body)
    }

    func tcp(_ port: Int, timeoutMs: Int = generous, send: String? = nil, expect: String? = nil) throws -> ResolvedProbe {
        try probe(.tcp(host: "127.0.0.1", port: port), timeoutMs: timeoutMs, send: send, expect: expect)
    }

    func exec(_ argv: [String], timeoutMs: Int = generous, as credentials: ProcessCredentials? = nil) throws -> ResolvedProbe {
        try probe(.exec(argv: argv), timeoutMs: timeoutMs, as: credentials)
    }

    @Test func httpAgainstPythonsHTTPServerHealthyStoppedAndBack() throws {
        let server = try HTTPServerProgram()
        defer { server.stop() }
        let process = try server.start()
        #expect(try http(server.port).runOnce() == .beat)
        #expect(try http(server.port, "/health", body: "status: ok").runOnce() == .beat)
        #expect(try http(server.port, "/health", body: "degraded").runOnce() == .miss(.bodyMismatch(expected: "degraded", searchedBytes: 11)))
        #expect(try http(server.port, "/missing").runOnce() == .miss(.status(code: 404, reason: "File not found", expected: nil)))
        #expect(try http(server.port, "/health", status: 201).runOnce() == .miss(.status(code: 200, reason: "OK", expected: 201)))

        try process.child.signal(SIGSTOP)
        // Stopped: the kernel still completes the handshake and takes the request; nobody answers.
        #expect(try http(server.port, timeoutMs: Self.short).runOnce()
                == .miss(.timedOut(afterMs: Self.short, stage: "waiting for the status line (connected, request sent)")))
        try process.child.signal(SIGCONT)
        #expect(try http(server.port, "/health", body: "status: ok").runOnce() == .beat)
    }

    @Test func nothingListeningIsRefusedAtOnce() throws {
        let port = freePort()
        #expect(try http(port).runOnce() == .miss(.refused))
        #expect(try tcp(port, send: "PING", expect: "+PONG").runOnce() == .miss(.refused))
        #expect(try probe(.tcp(host: "localhost", port: port)).address?.description == "127.0.0.1:\(port)")
    }

    @Test func httpAgainstNginxWithEveryWorkerStopped() throws {
        let nginx = try NginxProgram()
        defer { nginx.stop() }
        try nginx.start()
        #expect(try http(nginx.port, "/health", body: "healthy").runOnce() == .beat)
        let workers = nginx.workers()
        for w in workers { #expect(killProcess(w, signal: SIGSTOP)) }
        #expect(try http(nginx.port, "/health", timeoutMs: Self.short).runOnce()
                == .miss(.timedOut(afterMs: Self.short, stage: "waiting for the status line (connected, request sent)")))
        for w in workers { killProcess(w, signal: SIGCONT) }
        #expect(try http(nginx.port, "/health", body: "healthy").runOnce() == .beat)
    }

    @Test func tcpPingPongAgainstRedisAndARealHangInside() throws {
        let redis = try RedisProgram()
        defer { redis.stop() }
        let process = try redis.start()
        #expect(try tcp(redis.port, send: "PING", expect: "+PONG").runOnce() == .beat)
        #expect(try tcp(redis.port, send: "PING", expect: "+PANG").runOnce() == .miss(.replyMismatch(expected: "+PANG", got: "+PONG")))
        #expect(try tcp(redis.port, send: "PING").runOnce() == .beat)

        // DEBUG SLEEP: the server's one thread sleeps inside a command — a real hang of a real server.
        let sleeper = try Background([RealPrograms.redisCLI, "-p", String(redis.port), "DEBUG", "SLEEP", "6"], log: redis.directory.path + "/cli.log")
        defer { sleeper.stop() }
        #expect(waitUntil(timeoutMs: 10_000) { Self.sleeping(process.pid) }, "redis never started sleeping")
        #expect(try tcp(redis.port, timeoutMs: Self.short, send: "PING", expect: "+PONG").runOnce()
                == .miss(.timedOut(afterMs: Self.short, stage: "waiting for a reply line (connected, PING sent)")))
        #expect(sleeper.wait(timeoutMs: 30_000) == .exited(code: 0))
        #expect(try tcp(redis.port, send: "PING", expect: "+PONG").runOnce() == .beat)
    }

    /// Why a bare connect is not enough: a stopped redis still completes TCP handshakes from its listen
    /// backlog, so a connect-only probe beats while PING goes unanswered.
    @Test func aBareConnectSucceedsAgainstAStoppedRedisWherePingFails() throws {
        let redis = try RedisProgram()
        defer { redis.stop() }
        let process = try redis.start()
        try process.child.signal(SIGSTOP)
        #expect(try tcp(redis.port).runOnce() == .beat)
        #expect(try tcp(redis.port, timeoutMs: Self.short, send: "PING", expect: "+PONG").runOnce()
                == .miss(.timedOut(afterMs: Self.short, stage: "waiting for a reply line (connected, PING sent)")))
        try process.child.signal(SIGCONT)
        #expect(try tcp(redis.port, send: "PING", expect: "+PONG").runOnce() == .beat)
    }

    @Test func execRedisCliPingHealthyAndStopped() throws {
        let redis = try RedisProgram()
        defer { redis.stop() }
        let process = try redis.start()
        let ping = try exec(["redis-cli", "-p", String(redis.port), "ping"])
        #expect(ping.runOnce() == .beat)
        try process.child.signal(SIGSTOP)
        guard case let .miss(.timedOut(ms, stage)) = try exec(["redis-cli", "-p", String(redis.port), "ping"], timeoutMs: Self.short).runOnce() else {
            Issue.record("a stopped redis answered redis-cli"); return
        }
        #expect(ms == Self.short && stage.hasPrefix("with the command still running (pid ") && stage.hasSuffix("killed with its process group)"))
        try process.child.signal(SIGCONT)
        #expect(ping.runOnce() == .beat)
        // Nothing listening: redis-cli's own words are the detail.
        redis.stop()
        #expect(ping.runOnce() == .miss(.exited(code: 1, output: "Could not connect to Redis at 127.0.0.1:\(redis.port): Connection refused")))
    }

    @Test func execExitCodesSignalsAndOutput() throws {
        #expect(try exec(["/bin/sh", "-c", "echo starting; echo 'redis down' >&2; exit 3"]).runOnce() == .miss(.exited(code: 3, output: "redis down")))
        #expect(try exec(["/bin/sh", "-c", "kill -SEGV $$"]).runOnce() == .miss(.signaled(signal: SIGSEGV, output: nil)))
        #expect(try exec(["true"]).runOnce() == .beat)
        // Much more output than a pipe holds: read and dropped as it comes, so the command never blocks.
        #expect(try exec(["/bin/sh", "-c", "head -c 3000000 /dev/zero | tr '\\0' x; echo; echo last words; exit 2"]).runOnce()
                == .miss(.exited(code: 2, output: "last words")))
        #expect(throws: ProbeSetupError("exec probe: defib-no-such-program not found in \(ExecProbe.searchPath) or not executable")) {
            try exec(["defib-no-such-program"])
        }
    }

    @Test func execRunsCleanInItsOwnSessionAndGroup() throws {
        setenv("DEFIB_PROBE_TEST_LEAK", "1", 1)
        let check = """
            test -z "$DEFIB_PROBE_TEST_LEAK" && test "$PATH" = "\(ExecProbe.searchPath)" && test "$(pwd)" = / || exit 10
            read -r pid comm state ppid pgrp sid rest < /proc/$$/stat
            test "$pgrp" = "$$" && test "$sid" = "$$" || exit 11
            """
        #expect(try exec(["/bin/sh", "-c", check]).runOnce() == .beat)
        let nobody = try ProcessCredentials.resolve({ var s = SupervisorConfig.Service(name: "t", argv: ["x"]); s.user = "nobody"; return s }())
        #expect(try exec(["/bin/sh", "-c", "test \"$(id -u)\" = 65534 && test \"$HOME\" = /nonexistent && test \"$USER\" = nobody"], as: nobody).runOnce() == .beat)
    }

    @Test func execLeavesNoProcessBehindOnTimeoutOrSuccess() throws {
        let scratch = Scratch("execgroup")
        defer { scratch.remove() }
        // Timed out: the command and what it started in its group are killed, the command is reaped.
        let attempt = try #require(try exec(["/bin/sh", "-c", "sleep 300 & echo $! > \(scratch.path)/bg; exec sleep 300"], timeoutMs: Self.short)
            .start().get() as? ExecProbe)
        #expect(waitUntil(timeoutMs: 10_000) { FileManager.default.fileExists(atPath: scratch.path + "/bg") && attempt.readAvailable() == .pending })
        let leader = attempt.pid
        #expect(attempt.sparedPID == leader)
        guard case .timedOut = attempt.timedOut() else { Issue.record("not a timeout"); return }
        #expect(attempt.sparedPID == nil)
        #expect(attempt.awaitReaped(timeoutMs: 10_000))
        #expect(access("/proc/\(leader)", F_OK) != 0, "the probe's command is still there (a zombie?)")
        let background = try #require(Int32(String(contentsOfFile: scratch.path + "/bg", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)))
        #expect(waitUntil(timeoutMs: 10_000) { Self.goneOrZombie(background) }, "the command's background sleep survived the timeout")

        // Exit 0 with a process left running in its group: a beat, and the leftover is killed.
        #expect(try exec(["/bin/sh", "-c", "sleep 300 & echo $! > \(scratch.path)/bg2; exit 0"]).runOnce() == .beat)
        let leftover = try #require(Int32(String(contentsOfFile: scratch.path + "/bg2", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)))
        #expect(waitUntil(timeoutMs: 10_000) { Self.goneOrZombie(leftover) }, "a process the probe left behind survived")
    }

    @Test func answersNoRealServerGivesAreMissesNotHangs() throws {
        func against(_ mode: String, _ body: (Int) throws -> Void) throws {
            let server = try MisbehavingServer(mode)
            defer { server.stop() }
            try body(server.port)
        }
        try against("garbage") { port throws in
            guard case let .miss(.malformed(what)) = try http(port).runOnce() else { Issue.record("garbage was not malformed"); return }
            #expect(what.hasPrefix("not an HTTP answer: \"SSH-2"), "\(what)")
        }
        try against("endless-headers") { port throws in
            #expect(try http(port).runOnce() == .miss(.tooLarge("status line and headers longer than \(ProbeLimits.headerBytes) bytes")))
        }
        try against("endless-body") { port throws in
            #expect(try http(port).runOnce() == .beat)   // no body expected: decided at the head
            #expect(try http(port, body: "needle").runOnce() == .miss(.bodyMismatch(expected: "needle", searchedBytes: ProbeLimits.bodyBytes)))
        }
        try against("drip") { port throws in
            // 19 bytes at one per 0.5 s cannot finish in 3 s; how many arrived depends on the machine's load.
            guard case let .miss(.timedOut(ms, stage)) = try http(port, timeoutMs: 3000).runOnce() else { Issue.record("a drip was not a timeout"); return }
            #expect(ms == 3000)
            #expect(stage.hasPrefix("reading the status line and headers (") || stage.hasPrefix("waiting for the status line"), "\(stage)")
        }
        try against("status-503") { port throws in #expect(try http(port).runOnce() == .miss(.status(code: 503, reason: "Service Unavailable", expected: nil))) }
        try against("reset") { port throws in
            #expect(try http(port).runOnce() == .miss(.reset(stage: "while waiting for the status line (connected, request sent)")))
            #expect(try tcp(port, send: "PING", expect: "+PONG").runOnce() == .miss(.reset(stage: "before a reply line")))
        }
        try against("close") { port throws in
            #expect(try http(port).runOnce() == .miss(.closed(stage: "before the status line")))
            #expect(try tcp(port, send: "PING", expect: "+PONG").runOnce() == .miss(.closed(stage: "before a reply line")))
        }
        try against("silent") { port throws in
            #expect(try tcp(port, timeoutMs: Self.short, expect: "220").runOnce()
                    == .miss(.timedOut(afterMs: Self.short, stage: "waiting for the server's first line (connected)")))
        }
        try against("long-line") { port throws in
            #expect(try tcp(port, send: "PING", expect: "+PONG").runOnce()
                    == .miss(.tooLarge("reply longer than \(ProbeLimits.lineBytes) bytes without a line end")))
        }
        try against("chunked-ok") { port throws in #expect(try http(port, body: "status: ok").runOnce() == .beat) }
    }

    /// The loop's contract: an attempt never blocks; `pollEvents` says what to wait for; a verdict repeats.
    @Test func anAttemptNeverBlocksItsCaller() throws {
        let redis = try RedisProgram()
        defer { redis.stop() }
        let process = try redis.start()
        try process.child.signal(SIGSTOP)
        defer { try? process.child.signal(SIGCONT) }
        let attempt = try tcp(redis.port, send: "PING", expect: "+PONG").start().get()
        for _ in 0..<50 { #expect(attempt.readAvailable() == .pending) }   // would hang the test if it blocked
        #expect(attempt.pollEvents == Int16(POLLIN))
        #expect(attempt.sparedPID == nil)
        let failure = attempt.timedOut()
        #expect(attempt.readAvailable() == .miss(failure))
    }

    static func sleeping(_ pid: Int32) -> Bool {
        guard let call = readTextFile("/proc/\(pid)/task/\(pid)/syscall").flatMap(ProcParse.syscall) else { return false }
        return call.number == 35 || call.number == 230   // nanosleep, clock_nanosleep
    }

    static func goneOrZombie(_ pid: Int32) -> Bool {
        guard let stat = readTextFile("/proc/\(pid)/stat").flatMap(ProcParse.stat) else { return true }
        return stat.state == "Z"
    }
}
