import ArgumentParser
import DefibCore
import DefibFleet
import DefibPOSIX
import DefibStore
import Foundation
import Glibc
import Logging
import Synchronization

/// `defib-bench fleet`: N simulated hosts, each with its own local store (real SQLite, real outbox), ship
/// every incident through the real shipper (`FleetShipper.drain`: outbox → upsert → fleet-event check →
/// acknowledgement) into one PostgreSQL, then the fleet views are timed at that size.
struct FleetBenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fleet",
        abstract: "The fleet database at scale: ingest rate through the real shipper, latency of the fleet views.")

    @OptionGroup var options: PartOptions

    @Option(help: "Simulated hosts, each with its own local store.")
    var hosts = 1000

    @Option(help: "Incidents in all (spread evenly over the hosts).")
    var incidents = 1_000_000

    @Option(help: "Hosts shipping at once (one connection each).")
    var workers = 16

    @Option(help: "Timed repetitions of each query.")
    var reps = 15

    @Option(help: "Outbox changes per shipping transaction (the shipper's default).")
    var batch = 1000

    @Option(help: "An existing, empty fleet database to use (default: a throwaway cluster of our own on loopback).")
    var url: String?

    @Option(help: "The defib binary, to time the CLI end to end too (default: next to defib-bench).")
    var defib: String?

    func validate() throws {
        guard (1...100_000).contains(hosts) else { throw ValidationError("--hosts must be 1…100000") }
        guard incidents >= hosts, incidents <= 50_000_000 else { throw ValidationError("--incidents must be at least --hosts and at most 50 M") }
        guard (1...64).contains(workers) else { throw ValidationError("--workers must be 1…64") }
        guard (3...1000).contains(reps) else { throw ValidationError("--reps must be 3…1000") }
        guard (1...10_000).contains(batch) else { throw ValidationError("--batch must be 1…10000") }
    }

    func run() throws {
        let startedAt = ISO8601DateFormatter().string(from: Date())
        let work = options.workDirectory(part: "fleet")
        try? FileManager.default.removeItem(atPath: work)
        try makeDirectories(work)
        defer { try? FileManager.default.removeItem(atPath: work) }
        var report = FleetBenchReport(hosts: hosts, incidents: incidents, workers: workers, batch: batch, machineBefore: MachineState.now())
        do {
            // Under /tmp: the server runs as `postgres`, which must reach its directory (the work directory may sit
            // under a private home).
            let pgDirectory = "/tmp/defib-bench-pg-\(getpid())"
            let cluster = url == nil ? try BenchPostgres.start(directory: pgDirectory) : nil
            defer {
                cluster?.stop()
                try? FileManager.default.removeItem(atPath: pgDirectory)
            }
            report.server = cluster?.settings ?? "given by --url"
            let adminURL = url ?? cluster!.url(database: "postgres")
            let fleetURL: String
            if url == nil {
                try BenchPostgres.sql(adminURL, "CREATE DATABASE fleetbench")
                fleetURL = cluster!.url(database: "fleetbench")
            } else {
                fleetURL = url!
            }
            try FleetBench(hosts: hosts, incidents: incidents, workers: workers, reps: reps, batch: batch, work: work, url: fleetURL,
                           defib: defib ?? ownDirectory() + "/defib", postmaster: cluster?.child.pid).run(into: &report)
        } catch let e as BenchError {
            try failPart("fleet", reason: e.message, startedAt: startedAt, outDirectory: options.out)
        } catch {
            try failPart("fleet", reason: "\(error)", startedAt: startedAt, outDirectory: options.out)
        }
        report.machineAfter = MachineState.now()
        let envelope = PartEnvelope(part: "fleet", status: "ok", reason: nil, startedAt: startedAt, targets: report.targets,
                                    markdown: report.markdown)
        try writePartJSON(FleetBenchFile(envelope: envelope, figures: report), part: "fleet", outDirectory: options.out)
        progress("fleet: wrote \(options.out)/fleet.json")
    }
}

/// fleet.json: the envelope every part writes, plus the figures.
struct FleetBenchFile: Encodable {
    var envelope: PartEnvelope
    var figures: FleetBenchReport
    enum CodingKeys: String, CodingKey { case part, status, reason, startedAt, targets, markdown, figures }
    func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(envelope.part, forKey: .part)
        try c.encode(envelope.status, forKey: .status)
        try c.encodeIfPresent(envelope.reason, forKey: .reason)
        try c.encodeIfPresent(envelope.startedAt, forKey: .startedAt)
        try c.encodeIfPresent(envelope.targets, forKey: .targets)
        try c.encodeIfPresent(envelope.markdown, forKey: .markdown)
        try c.encode(figures, forKey: .figures)
    }
}

/// Every figure of one run.
struct FleetBenchReport: Encodable {
    var hosts: Int
    var incidents: Int
    var workers: Int
    var batch: Int
    var server = ""
    var machineBefore: MachineState
    var machineAfter: MachineState?
    /// Building the hosts' local stores (not part of the ingest figure).
    var generateSeconds = 0.0
    var localStoreBytes: Int64 = 0
    var meanBodyBytes = 0
    var ingestSeconds = 0.0
    var ingestPerSecond = 0.0
    /// CPU time per incident shipped during the ingest, µs: this process (the shippers: reading the outbox,
    /// decoding, rendering, the protocol) and the server (nil with --url).
    var shipperCPUUsPerIncident = 0.0
    var serverCPUUsPerIncident: Double?
    /// Per host: its whole drain (its incidents in batches of `batch`), ms.
    var hostDrainMs: Spread?
    var hostDrainP99Ms = 0.0
    var rowsInDatabase = 0
    var fleetEvents = 0
    var vacuumSeconds = 0.0
    var tableBytes: Int64 = 0
    var indexBytes: Int64 = 0
    /// Rows of the hour the views are asked about.
    var rowsLastHour = 0
    var signaturesLastHour = 0
    var signaturesSince1hMs: Spread?
    var signaturesSince1hP95Ms = 0.0
    var signaturesAllMs: Spread?
    var incidentsBySignatureMs: Spread?
    var incidentsBySignatureP95Ms = 0.0
    var incidentsBySignatureRows = 0
    var cliSignaturesMs: Spread?
    var hotSuspect: String?
    var hotSuspectHosts = 0
    var hotHosts = 0
    /// The supervisor's incident insert (with its outbox row), 400 of them 10 ms apart.
    var supervisorWriteAloneUs: LatencySummary?
    /// The same while the host's own shipper drains a 30 000-change backlog in the same store.
    var supervisorWriteShippingUs: LatencySummary?
    var supervisorBacklogLeft = 0

    var targets: [TargetCheck] {
        [
            TargetCheck(id: "fleet.ingest", target: "≥ 5 000 incidents/s ingested through the real shipper",
                        measured: String(format: "%.0f incidents/s (%d in %.1f s, %d hosts, %d at once)", ingestPerSecond, incidents,
                                         ingestSeconds, hosts, workers),
                        pass: ingestPerSecond >= 5000),
            TargetCheck(id: "fleet.signatures-1h", target: "`fleet signatures --since 1h` ≤ 200 ms at \(incidents) incidents",
                        measured: signaturesSince1hMs.map { String(format: "median %.1f ms, p95 %.1f ms (%d rows in the hour, %d signatures)",
                                                                   $0.median, signaturesSince1hP95Ms, rowsLastHour, signaturesLastHour) } ?? "not measured",
                        pass: (signaturesSince1hMs?.median ?? .infinity) <= 200),
        ]
    }

    var markdown: String {
        func ms(_ s: Spread?) -> String { s.map { String(format: "%.1f ms (min %.1f, max %.1f)", $0.median, $0.min, $0.max) } ?? "–" }
        var md = "## fleet\n\n"
        md += "\(hosts) simulated hosts, each with its own local store (SQLite, the real outbox), \(incidents) incidents in all "
        md += "(mean local JSON \(meanBodyBytes) bytes; 30 days of background hangs over 200 signatures, plus one poisoned update "
        md += "that hung every host three times in the last hour). Each host ships through the real shipper "
        md += "(`FleetShipper.drain`: outbox batches of \(batch) → one transaction: upsert + fleet-event check → acknowledgement), "
        md += "\(workers) hosts at once. Server: \(server).\n\n"
        md += "| figure | value |\n|---|---|\n"
        md += String(format: "| building the hosts' local stores (not timed as ingest) | %.1f s, %@ |\n", generateSeconds, formatBytes(localStoreBytes))
        md += String(format: "| **ingest** | **%.0f incidents/s** (%d in %.1f s) |\n", ingestPerSecond, incidents, ingestSeconds)
        md += String(format: "| CPU per incident shipped: the shippers (outbox, decoding, JSON, protocol) | %.0f µs |\n", shipperCPUUsPerIncident)
        if let server = serverCPUUsPerIncident {
            md += String(format: "| CPU per incident shipped: PostgreSQL (all its processes) | %.0f µs (together %.0f µs: with %d CPUs and nothing else running, at most ~%.0f incidents/s) |\n",
                         server, shipperCPUUsPerIncident + server, machineBefore.nproc,
                         Double(machineBefore.nproc) * 1e6 / max(shipperCPUUsPerIncident + server, 1))
        }
        md += "| one host's drain (\(incidents / max(hosts, 1)) incidents) | median \(ms(hostDrainMs)), p99 \(String(format: "%.0f", hostDrainP99Ms)) ms |\n"
        md += "| rows in the fleet table afterwards | \(rowsInDatabase) (fleet events raised: \(fleetEvents)) |\n"
        md += "| table / indexes on disk | \(formatBytes(tableBytes)) / \(formatBytes(indexBytes)) |\n"
        md += String(format: "| VACUUM ANALYZE after the load | %.1f s |\n", vacuumSeconds)
        md += "| **`fleet signatures --since 1h`** (\(rowsLastHour) rows in the hour, \(signaturesLastHour) signatures) | **median \(ms(signaturesSince1hMs))**, p95 \(String(format: "%.1f", signaturesSince1hP95Ms)) ms |\n"
        md += "| the same through the `defib` binary (process, connection, query, printing) | \(ms(cliSignaturesMs)) |\n"
        md += "| `fleet signatures` over all \(incidents) (no --since: the worst case) | \(ms(signaturesAllMs)) |\n"
        md += "| **`fleet incidents --signature S`** (the poisoned update's, newest \(incidentsBySignatureRows) of them) | **median \(ms(incidentsBySignatureMs))**, p95 \(String(format: "%.1f", incidentsBySignatureP95Ms)) ms |\n"
        md += "| the poisoned update's signature | \(hotHosts) hosts; suspect `\(hotSuspect ?? "none")` on \(hotSuspectHosts) |\n"
        md += "| the supervisor's incident write (insert + outbox row), alone | \(supervisorWriteAloneUs?.text ?? "–") |\n"
        md += "| the same while its shipper drains a 30 000-change backlog | \(supervisorWriteShippingUs?.text ?? "–") (backlog left when done: \(supervisorBacklogLeft)) |\n"
        md += "\nMachine before: \(machineBefore.summary). After: \(machineAfter?.summary ?? "–").\n"
        return md
    }
}

/// The run itself.
struct FleetBench {
    let hosts: Int
    let incidents: Int
    let workers: Int
    let reps: Int
    let batch: Int
    let work: String
    let url: String
    let defib: String
    /// The server's postmaster, for its CPU time (nil with --url).
    let postmaster: Int32?

    static let poisonSignature = "f1ee7b0150c0ffee"
    static let poisonLabel = "catalog.update app=shop machine=m2"

    func run(into report: inout FleetBenchReport) throws {
        let now = Date()
        let total = incidents
        let (hosts, work, workers, batch) = (self.hosts, self.work, self.workers, self.batch)
        // 1. The hosts' local stores.
        progress("fleet: building \(hosts) local stores with \(incidents) incidents")
        let t0 = monotonicNanoseconds()
        let bodyBytes = Atomic<Int>(0)
        let failures = Mutex<[String]>([])
        DispatchQueue.concurrentPerform(iterations: hosts) { h in
            do {
                let dir = "\(work)/hosts/\(h)"
                try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
                let store = try IncidentStore.open(stateDirectory: dir)
                let made = FleetBenchData.incidents(host: h, hosts: hosts, count: perHost(h), now: now)
                if h == 0 { bodyBytes.store(made.reduce(0) { $0 + IncidentJSON.object($1).rendered(pretty: false).utf8.count } / max(made.count, 1), ordering: .relaxed) }
                try store.insertBatch(made)
            } catch {
                failures.withLock { $0.append("host \(h): \(error)") }
            }
        }
        if let first = failures.withLock({ $0.first }) { throw BenchError(kind: .io, message: "building the local stores: \(first)") }
        report.generateSeconds = Double(monotonicNanoseconds() - t0) / 1e9
        report.meanBodyBytes = bodyBytes.load(ordering: .relaxed)
        report.localStoreBytes = directoryBytes("\(work)/hosts")
        progress(String(format: "fleet: stores built in %.1f s (%@)", report.generateSeconds, formatBytes(report.localStoreBytes)))

        // 2. Ingest through the real shipper.
        let endpoint = try FleetEndpoint(url: url, passwordFile: nil, applicationName: "defib-bench fleet")
        // Silent: the shippers of a thousand simulated hosts would otherwise log every fleet event they record.
        let logger = Logger(label: "defib-bench.fleet", factory: { _ in SwiftLogNoOpLogHandler() })
        try runAsync {
            let c = try await FleetConnection.open(endpoint, logger: logger)
            try await FleetSchema.migrate(c, logger: logger)
            await c.close()
        }
        progress("fleet: shipping with \(workers) hosts at once")
        let shared = IngestProgress()
        let cpuBefore = CPUTimes.now(postmaster: postmaster)
        let t1 = monotonicNanoseconds()
        // One thread per worker, as each host ships from its own shipper thread (FleetThread).
        let errors = Mutex<[String]>([])
        let all = DispatchGroup()
        for w in 0..<workers {
            all.enter()
            let thread = Thread {
                defer { all.leave() }
                do {
                    try FleetThread.run(name: "bench-ship-\(w)") {
                        let c = try await FleetConnection.open(endpoint, logger: logger)
                        do {
                            while true {
                                let h = shared.next.wrappingAdd(1, ordering: .relaxed).oldValue
                                if h >= hosts { break }
                                let store = try IncidentStore.open(stateDirectory: "\(work)/hosts/\(h)")
                                var settings = FleetShipper.Settings(endpoint: endpoint, host: "bench-host-\(h)", machineID: nil,
                                                                     alert: FleetAlertRule(hosts: 3, windowSeconds: 600))
                                settings.batchSize = batch
                                let shipper = try FleetShipper(store: store, settings: settings, logger: logger)
                                let s = monotonicNanoseconds()
                                let shipped = try await shipper.drain(on: c)
                                shared.drains.withLock { $0.append(Double(monotonicNanoseconds() - s) / 1e6) }
                                if shipped != FleetBenchData.count(host: h, hosts: hosts, total: total) {
                                    throw BenchError(kind: .verification, message: "host \(h) shipped \(shipped) incidents")
                                }
                                if h % 100 == 99 { progress("fleet:   \(h + 1) hosts shipped") }
                            }
                        } catch {
                            await c.close()
                            throw error
                        }
                        await c.close()
                    }
                } catch {
                    errors.withLock { $0.append("\(error)") }
                }
            }
            thread.start()
        }
        all.wait()
        if let first = errors.withLock({ $0.first }) { throw BenchError(kind: .verification, message: "shipping: \(first)") }
        report.ingestSeconds = Double(monotonicNanoseconds() - t1) / 1e9
        report.ingestPerSecond = Double(incidents) / report.ingestSeconds
        sleepMs(500)   // the backends of the closed connections end and are reaped: their time counts then
        let cpuAfter = CPUTimes.now(postmaster: postmaster)
        report.shipperCPUUsPerIncident = (cpuAfter.shipper - cpuBefore.shipper) * 1e6 / Double(incidents)
        if let after = cpuAfter.server, let before = cpuBefore.server {
            report.serverCPUUsPerIncident = (after - before) * 1e6 / Double(incidents)
        }
        let allDrains = shared.drains.withLock { $0 }
        report.hostDrainMs = Spread(allDrains)
        report.hostDrainP99Ms = percentile(allDrains, 99) ?? 0
        progress(String(format: "fleet: ingest %.0f incidents/s (%.1f s); CPU per incident: shippers %.0f µs, server %.0f µs",
                        report.ingestPerSecond, report.ingestSeconds, report.shipperCPUUsPerIncident, report.serverCPUUsPerIncident ?? -1))

        // 3. The database at that size, and the views.
        let (reps, defib, url) = (self.reps, self.defib, self.url)
        var r = report
        try runAsync { [r] in
            var out = r
            let c = try await FleetConnection.open(endpoint, logger: logger)
            out.rowsInDatabase = Int(try await c.scalar("SELECT count(*)::text FROM fleet_incident") ?? "0") ?? 0
            guard out.rowsInDatabase == total else {
                throw BenchError(kind: .verification, message: "\(out.rowsInDatabase) rows in fleet_incident, expected \(total)")
            }
            out.fleetEvents = Int(try await c.scalar("SELECT count(*)::text FROM fleet_event") ?? "0") ?? 0
            let v = monotonicNanoseconds()
            try await c.scalar("VACUUM ANALYZE fleet_incident", seconds: 3600)
            out.vacuumSeconds = Double(monotonicNanoseconds() - v) / 1e9
            out.tableBytes = Int64(try await c.scalar("SELECT pg_table_size('fleet_incident')::text") ?? "0") ?? 0
            out.indexBytes = Int64(try await c.scalar("SELECT pg_indexes_size('fleet_incident')::text") ?? "0") ?? 0
            out.rowsLastHour = Int(try await c.scalar("SELECT count(*)::text FROM fleet_incident WHERE detected_at >= now() - interval '1 hour'") ?? "0") ?? 0

            var times: [Double] = []
            var last: [FleetSignatureSummary] = []
            for i in 0..<(reps + 2) {
                let s = monotonicNanoseconds()
                last = try await FleetQueries.signatures(on: c, since: Date().addingTimeInterval(-3600))
                if i >= 2 { times.append(Double(monotonicNanoseconds() - s) / 1e6) }   // two warm-ups
            }
            out.signaturesSince1hMs = Spread(times)
            out.signaturesSince1hP95Ms = percentile(times, 95) ?? 0
            out.signaturesLastHour = last.count
            if let hot = last.first(where: { $0.signature == FleetBench.poisonSignature }) {
                out.hotHosts = hot.hosts; out.hotSuspect = hot.suspect; out.hotSuspectHosts = hot.suspectHosts
            }
            guard out.hotHosts == hosts, out.hotSuspect == FleetBench.poisonLabel else {
                throw BenchError(kind: .verification, message: "the poisoned update's signature shows \(out.hotHosts) hosts, suspect \(out.hotSuspect ?? "none")")
            }
            times = []
            for _ in 0..<3 {
                let s = monotonicNanoseconds()
                _ = try await FleetQueries.signatures(on: c, since: nil)
                times.append(Double(monotonicNanoseconds() - s) / 1e6)
            }
            out.signaturesAllMs = Spread(times)
            times = []
            for i in 0..<(reps + 2) {
                let s = monotonicNanoseconds()
                let rows = try await FleetQueries.incidents(on: c, signature: FleetBench.poisonSignature)
                if i >= 2 { times.append(Double(monotonicNanoseconds() - s) / 1e6) }
                out.incidentsBySignatureRows = rows.count
            }
            out.incidentsBySignatureMs = Spread(times)
            out.incidentsBySignatureP95Ms = percentile(times, 95) ?? 0
            await c.close()
            // The CLI end to end.
            if access(defib, X_OK) == 0 {
                var cli: [Double] = []
                for _ in 0..<5 {
                    let s = monotonicNanoseconds()
                    let code = try runQuiet([defib, "fleet", "signatures", "--url", url, "--since", "1h", "--json"])
                    guard code == 0 else { throw BenchError(kind: .verification, message: "defib fleet signatures exited \(code)") }
                    cli.append(Double(monotonicNanoseconds() - s) / 1e6)
                }
                out.cliSignaturesMs = Spread(cli)
            }
            return out
        } result: { r = $0 }
        report = r

        // 4. The supervisor's side: its incident writes alone, then while its own shipper drains a backlog.
        progress("fleet: the supervisor's incident writes, alone and while shipping a backlog")
        let supervisorStore = try IncidentStore.open(stateDirectory: try makeHostDirectory("supervisor"))
        report.supervisorWriteAloneUs = try timedWrites(supervisorStore, count: 400, now: now)
        try supervisorStore.insertBatch(FleetBenchData.incidents(host: 0, hosts: 1, count: 30_000, now: now))
        var settings = FleetShipper.Settings(endpoint: endpoint, host: "bench-supervisor", machineID: nil, alert: FleetAlertRule(hosts: 3, windowSeconds: 600))
        settings.batchSize = batch
        let shipper = try FleetShipper(store: supervisorStore, settings: settings, logger: logger)
        shipper.start()
        report.supervisorWriteShippingUs = try timedWrites(supervisorStore, count: 400, now: now)
        report.supervisorBacklogLeft = shipper.status.backlog
        shipper.stop(flushWithin: .seconds(1))
    }

    func makeHostDirectory(_ name: String) throws -> String {
        let dir = "\(work)/\(name)"
        try makeDirectories(dir)
        return dir
    }

    /// `count` incident inserts 10 ms apart (a busy supervisor), each timed in µs.
    func timedWrites(_ store: IncidentStore, count: Int, now: Date) throws -> LatencySummary {
        var rng = SplitMix(seed: 42)
        var times: [Double] = []
        for n in 0..<count {
            let incident = FleetBenchData.make(host: 0, n: n, signature: 1, detected: now, rng: &rng)
            let s = monotonicNanoseconds()
            try store.insert(incident)
            times.append(Double(monotonicNanoseconds() - s) / 1000)
            sleepMs(10)
        }
        return LatencySummary(times)
    }

    func perHost(_ h: Int) -> Int { FleetBenchData.count(host: h, hosts: hosts, total: incidents) }
}

/// The synthetic incidents: realistic hangs (lock state with flight-recorder events, notes, diagnosis, capture)
/// whose signatures follow a skewed popularity, spread over 30 days, plus the poisoned update on every host in
/// the last hour. Deterministic per host.
enum FleetBenchData {
    static func count(host h: Int, hosts: Int, total: Int) -> Int { total / hosts + (h < total % hosts ? 1 : 0) }

    static func incidents(host h: Int, hosts: Int, count: Int, now: Date) -> [Incident] {
        var rng = SplitMix(seed: UInt64(h) &* 0x9E37_79B9_7F4A_7C15 &+ 1)
        var out: [Incident] = []
        out.reserveCapacity(count)
        let poisoned = min(3, count)
        for n in 0..<count {
            let isPoison = n >= count - poisoned
            let age: Double = isPoison ? Double(rng.next() % 3_000_000) / 1000 + 60 : Double(rng.next() % (30 * 86_400_000)) / 1000
            let sig: Int = isPoison ? -1 : zipf(&rng, n: 200)
            out.append(make(host: h, n: n, signature: sig, detected: now.addingTimeInterval(-age), rng: &rng))
        }
        return out
    }

    static func make(host: Int, n: Int, signature: Int, detected: Date, rng: inout SplitMix) -> Incident {
        let label = signature < 0 ? FleetBench.poisonLabel : "catalog.update app=app\(signature % 40) machine=m\(signature % 7)"
        var i = Incident(service: "defib-proxy", pid: Int32(1000 + n % 30000), binaryPath: "/usr/local/bin/defib-proxy",
                         startedAt: detected.addingTimeInterval(-3600), detectedAt: detected,
                         cause: .missedHeartbeat(misses: 3, lastPongAt: detected.addingTimeInterval(-0.75), lastError: "no reply within 752 ms"))
        i.killedAt = detected.addingTimeInterval(0.05)
        i.restartedAt = detected.addingTimeInterval(0.15)
        i.readyAt = detected.addingTimeInterval(0.18)
        i.newPid = Int32(2000 + n % 30000)
        i.outcome = .recovered
        i.diagnosis = "corrupted-lock-word: no thread in the critical section of 'catalog'; 3 readers and 0 writers waiting; word 0xFFFFFFFFFFFFFFFF"
        i.diagnosisEvidence = ["word 0xffffffffffffffff: WRITER|WRITER_PARKED|PARKED, 1152921504606846975 readers",
                               "flight recorder: '\(label)' (tid \(4000 + n % 100)) timed out and reverted"]
        i.signature = signature < 0 ? FleetBench.poisonSignature : String(format: "%016llx", UInt64(signature) &* 0x9E37_79B9_7F4A_7C15)
        i.capture = CaptureRecord(method: "native", path: "/var/lib/defib/cores/core.defib-proxy.\(n).\(1000 + n)", bytes: 72_704_000,
                                  durationMs: 39.2, error: nil)
        i.silenceMs = 1001
        i.extendedMs = 0
        i.threads = 6
        i.threadStates = "6 S (5 in futex)"
        i.progress = .stuck("no CPU progress (CPU +0 ms in 250.4 ms) and every thread asleep: 6 S (5 in futex)")
        var lock = LockState(name: "catalog", address: "0x7f3a10001000", word: "0xffffffffffffffff", source: "memory", lastHolder: "catalog.reload tid=41")
        lock.readersWaiting = 3
        lock.writersWaiting = 0
        let ms = Int64(detected.timeIntervalSince1970 * 1000)
        lock.events = [
            LockEventRecord(kind: "write-timed-out", tid: Int32(4000 + n % 100), unixMs: ms - 900, wordAfter: "0xfffffffffffffffe", label: label),
            LockEventRecord(kind: "parked-read", tid: 4101, unixMs: ms - 880, wordAfter: "0xffffffffffffffff", label: ""),
            LockEventRecord(kind: "parked-read", tid: 4102, unixMs: ms - 870, wordAfter: "0xffffffffffffffff", label: ""),
        ]
        i.lockState = [lock]
        i.notes = ["miss 1 after 250 ms of silence: no reply within 251 ms", "miss 2 after 501 ms of silence: no reply within 501 ms",
                   "suspect after 501 ms of silence: threads 6 S (5 in futex)", "miss 3 after 752 ms of silence: no reply within 752 ms",
                   "native core: 6 threads stopped in 0.3 ms, 4018176 bytes allocated of 72704000"]
        _ = rng.next()
        return i
    }

    /// A Zipf-like draw in 0..<n (popular signatures hit many hosts, most are rare).
    static func zipf(_ rng: inout SplitMix, n: Int) -> Int {
        let u = Double(rng.next() >> 11) / Double(1 << 53)
        return min(n - 1, Int(pow(Double(n), u)) - 1)
    }
}

/// Median, p99 and maximum of some latencies.
struct LatencySummary: Codable, Equatable {
    var median: Double
    var p99: Double
    var max: Double
    init(_ values: [Double]) {
        median = Spread(values)?.median ?? 0
        p99 = percentile(values, 99) ?? 0
        max = values.max() ?? 0
    }
    var text: String { String(format: "median %.0f µs, p99 %.0f µs, max %.0f µs", median, p99, max) }
}

/// What the ingest workers share: the next host to ship, and each host's drain time.
final class IngestProgress: Sendable {
    let next = Atomic<Int>(0)
    let drains = Mutex<[Double]>([])
}

/// A tiny deterministic generator (SplitMix64).
struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Bytes of the files under `path`.
func directoryBytes(_ path: String) -> Int64 {
    var total: Int64 = 0
    if let e = FileManager.default.enumerator(atPath: path) {
        for case let name as String in e {
            var st = stat()
            if stat("\(path)/\(name)", &st) == 0, st.st_mode & S_IFMT == S_IFREG { total += Int64(st.st_blocks) * 512 }
        }
    }
    return total
}

/// Runs async work from the synchronous command and waits for it (on a thread of its own, see FleetThread).
func runAsync(_ body: @escaping @Sendable () async throws -> Void) throws {
    try FleetThread.run(body)
}

/// The same, handing a value back.
func runAsync<T: Sendable>(_ body: @escaping @Sendable () async throws -> T, result: (T) -> Void) throws {
    let box = Mutex<T?>(nil)
    try runAsync { let v = try await body(); box.withLock { $0 = v } }
    result(box.withLock { $0 }!)
}

/// Runs a command with its output discarded; its exit code.
func runQuiet(_ argv: [String]) throws -> Int32 {
    var request = SpawnRequest(argv: argv, environment: currentEnvironment())
    let null = open("/dev/null", O_WRONLY | O_CLOEXEC)
    defer { close(null) }
    request.stdoutFD = null; request.stderrFD = null; request.stdinFromDevNull = true
    let child = try spawnProcess(request)
    defer { child.closePidfd() }
    guard let status = waitForChild(child, timeoutMs: 120_000) else {
        try? child.signal(SIGKILL); _ = waitForChild(child, timeoutMs: 5000)
        throw BenchError(kind: .verification, message: "\(argv.joined(separator: " ")) did not finish within 120 s")
    }
    if case let .exited(code) = status { return code }
    return 128
}
