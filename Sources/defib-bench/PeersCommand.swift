import ArgumentParser
import DefibChaos
import DefibPOSIX
import Foundation
import Glibc

/// `defib-bench peers`: the same proxy and the same injected hang under defib, monit, systemd's watchdog and supervisord.
struct PeersCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "peers",
        abstract: "defib vs monit, systemd's watchdog and supervisord: hang → serving, cores, records, refusals, own cost.",
        discussion: """
        Every row supervises the release defib-proxy, injects `fault timeout-race` under an open-loop HTTP load and \
        measures the time to the first success after the hung instance ended. monit and supervisord run as our \
        children with their files in the work directory; systemd is booted in an isolated container (needs root). \
        Config templates: bench/peers/.
        """)

    @OptionGroup var options: PartOptions

    @Option(help: "The release defib (default: next to defib-bench).")
    var defib: String?

    @Option(help: "Rows to run, comma-separated: \(PeerID.allCases.map(\.rawValue).joined(separator: ", ")), or all.")
    var peers: String = "all"

    @Option(help: "Fault injections per row.")
    var reps: Int = 5

    @Option(help: "Fault injections for supervisord (each waits out the whole bound).")
    var supervisordReps: Int = 3

    @Option(help: "Requests per second of the open-loop load.")
    var rate: Double = 100

    @Option(help: "Request timeout in ms.")
    var requestTimeoutMs: Int = 5000

    @Option(help: "Seconds a repetition waits for service to come back.")
    var bound: Int = 30

    @Option(help: "Seconds of the supervisor-cost window (proxy healthy and idle).")
    var usageSeconds: Int = 20

    @Option(help: "ms of load before each fault.")
    var warmupMs: Int = 1000

    @Option(help: "Directory of the config templates.")
    var templates: String = "bench/peers"

    @OptionGroup var heartbeat: HeartbeatOptions

    @Flag(help: "Keep the work directory (logs, configs, state) for inspection.")
    var keepWork = false

    func validate() throws {
        _ = try PeerID.parseList(peers)
        try requireRange(reps, 1...50, "--reps")
        try requireRange(supervisordReps, 0...50, "--supervisord-reps")
        guard rate > 0 && rate <= 2000 else { throw ValidationError("--rate must be in (0, 2000] requests/s, got \(rate)") }
        guard requestTimeoutMs > 0 else { throw ValidationError("--request-timeout-ms must be positive, got \(requestTimeoutMs)") }
        try requireRange(bound, 5...600, "--bound", unit: "s")
        try requireRange(usageSeconds, 1...600, "--usage-seconds")
        try requireRange(warmupMs, 100...30_000, "--warmup-ms")
    }

    func run() throws {
        let startedAt = isoNow()
        let machineBefore = MachineState.now()
        let work = options.workDirectory(part: "peers")
        let rows = try PeerID.parseList(peers)
        let proxy: String, defibPath: String
        let backend: ChaosBackend
        do {
            proxy = try options.proxyPath()
            defibPath = try requireExecutable(defib ?? ownDirectory() + "/defib", option: "--defib")
            guard resolveExecutable("gdb") != nil, resolveExecutable("gcore") != nil else {
                throw BenchError(kind: .badArgument, message: "gdb and gcore are not in PATH (scripts/setup.sh installs gdb)")
            }
            guard access("\(templates)/monitrc", R_OK) == 0 else {
                throw BenchError(kind: .badArgument, message: "--templates \(templates): no monitrc there (run from the repository root, or pass --templates)")
            }
            // The proxies monit's scripts start are orphaned by design: as subreaper they come back to us, to reap and kill.
            try becomeChildSubreaper()
            // Before the backend's threads start, so that they inherit the blocked SIGINT/SIGTERM.
            try PeersInterrupt.install(work: work)
            removeTree(work)
            try makeDirectories(work)
            backend = try ChaosBackend.start()
        } catch {
            try failPart("peers", reason: "\(error)", startedAt: startedAt, outDirectory: options.out)
        }
        defer {
            backend.stop()
            if keepWork { progress("peers: work directory kept: \(work)") } else { removeTree(work) }
        }
        let templatesDir = templates.hasPrefix("/") ? templates : FileManager.default.currentDirectoryPath + "/" + templates
        let peerTemplates = PeerTemplates(directory: templatesDir)
        let gdbVersion = toolVersion(["gdb", "--version"], work: work)
        let corePattern = (readTextFile("/proc/sys/kernel/core_pattern") ?? "?").trimmingCharacters(in: .whitespacesAndNewlines)
        let settings = PeersSettings(reps: reps, supervisordReps: supervisordReps, ratePerSecond: rate, requestTimeoutMs: Double(requestTimeoutMs),
                                     boundSeconds: bound, usageSeconds: usageSeconds, defibIntervalMs: heartbeat.interval, defibDeadlineMs: heartbeat.deadline,
                                     proxyArguments: "--route \(PeerRunner.appHost)=127.0.0.1:BACKEND --control-socket DIR/control.sock",
                                     gdbVersion: gdbVersion, corePattern: corePattern)
        let runner = PeerRunner(settings: settings, workDirectory: work, warmupMs: warmupMs, log: progress)
        progress("peers: \(rows.map(\.rawValue).joined(separator: ", ")); \(reps) reps (supervisord \(supervisordReps)), \(Int(rate)) req/s, bound \(bound) s; backend on 127.0.0.1:\(backend.port)")

        let defibVersion = "defib (this tree)"
        let monitPath = resolveExecutable("monit")
        let supervisordPath = resolveExecutable("supervisord")
        let nspawn = resolveExecutable("systemd-nspawn")
        var results: [PeerResult] = []
        var container: SystemdContainer?
        var containerFailure: String?
        var measuredUsage: Set<String> = []
        for id in rows {
            // Each supervisor's cost is measured once, in its first row.
            let usage = !measuredUsage.contains(id.supervisor)
            switch id {
            case .defibNative, .defibGcore, .defibNone, .defibListen:
                let config = "`defib run --interval \(heartbeat.interval) --deadline \(heartbeat.deadline) --capture \(DefibPeerSession.captureMethod(id))`"
                    + (id.socketPassed ? " with `--socket http=127.0.0.1:PORT` (defib binds the port once and passes it to every instance)"
                        : ", the proxy binding `--listen 127.0.0.1:PORT` itself")
                    + "; defaults otherwise (gdb stacks after the restart; restart backoff 100 ms doubling, reset after 60 s healthy). "
                    + "A fresh defib for every repetition, so each hang meets the first restart, which is immediate."
                results.append(runner.run(id, reps: reps, measureUsage: usage, freshSessionPerRep: true, version: defibVersion,
                                          configuration: config) { rep in
                    try DefibPeerSession(id: id, defib: defibPath, proxy: proxy, directory: "\(work)/\(id.rawValue)/rep-\(rep)",
                                         backendPort: backend.port, intervalMs: heartbeat.interval, deadlineMs: heartbeat.deadline)
                })
            case .monit:
                let config = "`monit -I -c monitrc`: `set daemon 1`; `check process` by pid file; `if failed unixsocket control.sock send \"ping monit\\n\" "
                    + "expect \"pong monit\" timeout 1 seconds then exec restart-with-gcore.sh` (gcore, SIGKILL, start); the proxy binds its port."
                results.append(runner.run(id, reps: reps, measureUsage: usage, version: monitPath.map { toolVersion([$0, "-V"], work: work) } ?? "monit: not installed",
                                          configuration: config) { _ in
                    guard let monitPath else { throw BenchError(kind: .startup, message: "monit is not installed (scripts/setup.sh bench)") }
                    return try MonitPeerSession(monitPath: monitPath, proxy: proxy, directory: "\(work)/monit", templates: peerTemplates,
                                                backendPort: backend.port)
                })
            case .systemdSocket, .systemdListen:
                if container == nil && containerFailure == nil {
                    if let why = SystemdContainer.unavailableReason(nspawn: nspawn, work: work) {
                        containerFailure = why
                    } else {
                        do { container = try SystemdContainer(nspawn: nspawn!, work: "\(work)/systemd", log: progress) } catch {
                            containerFailure = "\(error)"
                        }
                    }
                }
                let units = SystemdPeerSession.units(id)
                let config = "`\(units.service)`\(units.socket.map { " + `\($0)`" } ?? ""): Type=notify, `WatchdogSec=1s`, `WatchdogSignal=SIGABRT`, "
                    + "`Restart=on-watchdog`, `RestartSec=0`, `LimitCORE=infinity`; the proxy runs with `--sd-notify`."
                let version = container.map { $0.ct(["systemctl", "--version"]).output.split(separator: "\n").first.map(String.init) ?? "systemd" }
                    ?? "systemd"
                results.append(runner.run(id, reps: reps, measureUsage: usage, version: version, configuration: config) { _ in
                    guard let container else { throw BenchError(kind: .startup, message: "systemd container: \(containerFailure ?? "not booted")") }
                    return try SystemdPeerSession(id: id, container: container, proxy: proxy, templates: peerTemplates, backendPort: backend.port)
                })
            case .supervisord:
                let config = "`supervisord -n -c supervisord.conf`: `autorestart=true`, `startsecs=1`; the proxy binds its port. "
                    + "It has no hang detection; after the bound the hung proxy is killed by pid so that supervisord starts the next one."
                results.append(runner.run(id, reps: supervisordReps, measureUsage: usage,
                                          version: supervisordPath.map { "supervisord " + toolVersion([$0, "--version"], work: work) } ?? "supervisord: not installed",
                                          configuration: config) { _ in
                    guard let supervisordPath else { throw BenchError(kind: .startup, message: "supervisord is not installed (scripts/setup.sh bench)") }
                    return try SupervisordPeerSession(supervisordPath: supervisordPath, proxy: proxy, directory: "\(work)/supervisord",
                                                      templates: peerTemplates, backendPort: backend.port)
                })
            }
            if results.last?.usage != nil { measuredUsage.insert(id.supervisor) }
            // The container goes as soon as no systemd row is left.
            if let c = container, !rows.drop(while: { $0 != id }).dropFirst().contains(where: { $0.supervisor == "systemd" }) {
                for p in c.shutdown() { progress("peers: systemd container: \(p)") }
                container = nil
            }
        }
        if let c = container { _ = c.shutdown() }
        killOrphanedProxies()

        let templateFiles = ["monitrc", "monit-start-proxy.sh", "monit-restart-with-gcore.sh", "monit-stop-proxy.sh", "peer-proxy.socket",
                             "peer-proxy.service", "peer-proxy-listen.service", "supervisord.conf"]
            .map { (name: $0, text: readTextFile("\(templatesDir)/\($0)") ?? "(missing)") }
        let defibCommand = DefibPeerSession.argv(.defibNative, defib: "defib", proxy: "defib-proxy", stateDirectory: "STATE",
                                                 controlSocket: "DIR/control.sock", port: 0, backendPort: 0, intervalMs: heartbeat.interval,
                                                 deadlineMs: heartbeat.deadline).joined(separator: " ")
            .replacingOccurrences(of: "http=127.0.0.1:0", with: "http=127.0.0.1:PORT")
            .replacingOccurrences(of: "=127.0.0.1:0", with: "=127.0.0.1:BACKEND")
        var report = PeersReport(part: "peers", startedAt: startedAt, finishedAt: isoNow(), machineBefore: machineBefore, machineAfter: MachineState.now(),
                                 figures: PeersFigures(settings: settings, peers: results))
        report.targets = PeersChecks.evaluate(results, boundSeconds: bound)
        if results.allSatisfy({ $0.status != "ok" }) {
            report.status = "FAIL"
            report.reason = "no peer could run: " + results.map { "\($0.id.rawValue): \($0.reason ?? "?")" }.joined(separator: "; ")
        }
        report.markdown = PeersMarkdown.render(report, defibCommand: defibCommand, templates: templateFiles)
        try writePartJSON(report, part: "peers", outDirectory: options.out)
        for t in report.targets { progress("  \(t.pass ? "PASS" : "FAIL")  \(t.target): \(t.measured)") }
        if report.status != "ok" { progress("peers: FAIL: \(report.reason ?? "")"); throw ExitCode(1) }
    }
}
