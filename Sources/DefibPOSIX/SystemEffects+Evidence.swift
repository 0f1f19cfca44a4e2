import DefibCore
import Foundation
import Glibc

/// Reading a hung process without touching it, writing its core, and the helpers and files that follow.
extension SystemEffects {
    public func observe(_ request: ObservationRequest) -> Observation {
        if request.proofReads { return observeForProof(request) }
        let pid = request.pid
        var observation = Observation(pid: pid)
        if request.executable { observation.executable = ProcessMemory.executable(pid: pid) }
        // The instance's processes are listed once: one that appears between two rounds is not judged on one sample.
        let processes = request.instanceProcesses ? ServiceProcesses.list(mainPID: pid) : []
        switch request.samples {
        case .none:
            if request.instanceProcesses { observation.instanceSamples = [ServiceProcesses.sample(processes)] }
        case .one:
            observation.samples = [ProcSampler.sample(pid: pid)]
            if request.instanceProcesses { observation.instanceSamples = [ServiceProcesses.sample(processes)] }
        case let .pair(apartMs):
            let before = ProcSampler.sample(pid: pid)
            let roundBefore = request.instanceProcesses ? ServiceProcesses.sample(processes) : []
            usleep(UInt32(apartMs) * 1000)
            observation.samples = [before, ProcSampler.sample(pid: pid)]
            if request.instanceProcesses { observation.instanceSamples = [roundBefore, ServiceProcesses.sample(processes)] }
        }
        observation.lockWords = Self.readLockWords(pid: pid, addresses: Self.readRecorder(request, into: &observation))
        if request.threadIDs { observation.threadIDs = threadIDs(pid: pid) }
        if request.processIdentity { observation.process = ProcessIdentity.read(pid: pid) }
        if request.waitForGraph {
            let graph = WaitForReader.readStable(pid: pid)
            observation.waitFor = WaitForReading(edges: graph.edges, notes: graph.notes)
        }
        if request.detectRuntime {
            let (runtime, reason) = RuntimeDetector.detect(pid: pid)
            observation.runtime = DetectedRuntime(runtime: runtime, reason: reason)
        }
        return observation
    }

    /// The flight recorder the request names, into `observation`; the lock word addresses to read: the request's,
    /// after the recorder's locks when it asks for them, each once.
    static func readRecorder(_ request: ObservationRequest, into observation: inout Observation) -> [UInt64] {
        var addresses = request.lockWordAddresses
        if let path = request.flightRecorder {
            do {
                let record = try FlightRecorderFile.read(path: path)
                observation.flightRecorder = .record(record)
                if request.recorderLockWords { addresses = record.locks.map(\.address) + addresses }
            } catch {
                observation.flightRecorder = access(path, F_OK) == 0 ? .unreadable("\(error)") : .missing
            }
        }
        var seen = Set<UInt64>()
        return addresses.filter { seen.insert($0).inserted }
    }

    /// Each word from the process's memory, or why it could not be read.
    static func readLockWords(pid: Int32, addresses: [UInt64]) -> [UInt64: Result<UInt64, EffectFailure>] {
        var words: [UInt64: Result<UInt64, EffectFailure>] = [:]
        for address in addresses {
            do { words[address] = .success(try ProcessMemory.readUInt64(pid: pid, address: address)) } catch {
                words[address] = .failure(EffectFailure("\(error)"))
            }
        }
        return words
    }

    /// The core, by the requested method, within the budget. The kernel method kills the process and reaps
    /// it here (the outcome carries its end).
    public func writeCore(_ request: CoreRequest) -> CoreOutcome {
        let keepAlive = request.managerKeepAlive.map { BoundedKeepAlive(periodNs: $0.periodNs, untilNs: $0.untilNs) }
        defer { keepAlive?.finish() }
        var outcome: CoreOutcome
        switch request.method {
        case .none:
            outcome = CoreOutcome(record: CaptureRecord(method: "none", path: nil, bytes: 0, durationMs: 0, error: nil))
        case .native:
            let result = NativeCoreWriter.capture(pid: request.pid, path: request.path,
                                                  options: NativeCoreOptions.supervisor(budgetMs: request.budgetMs, firstThread: request.firstThread))
            outcome = CoreOutcome(record: result.record, threads: result.threads)
            outcome.notes = result.notes
            if result.truncated { outcome.notes.append("core truncated at the \(request.budgetMs) ms budget") }
            if result.record.path != nil {
                outcome.notes.append(String(format: "native core: %d threads stopped in %.1f ms, %lld bytes allocated of %lld", result.threads,
                                            result.stopMs, result.allocatedBytes, result.record.bytes))
            }
        case .gcore:
            outcome = CoreOutcome(record: GcoreCapture.capture(pid: request.pid, prefix: request.prefix, budgetMs: request.budgetMs))
        case .kernel:
            outcome = kernelCore(request)
        }
        outcome.jitterDraw = Double.random(in: 0..<1)
        return outcome
    }

    private func kernelCore(_ request: CoreRequest) -> CoreOutcome {
        switch KernelCoreCapture.begin(pid: request.pid, pidfd: child?.pidfd) {
        case let .failure(error):
            return CoreOutcome(record: CaptureRecord(method: "kernel", path: nil, bytes: 0, durationMs: 0, error: "\(error)"))
        case let .success(started):
            // The core-dumping signal is the kill: the timeline says so.
            let killedAt = Date()
            var status: ChildStatus?
            if let instance = child, instance.pid == request.pid {
                status = waitForChild(instance, timeoutMs: request.budgetMs)
                if status != nil {
                    instance.closePidfd()
                    instanceEnded(instance.pid)
                }
            }
            let result = KernelCoreCapture.finish(started, status: status)
            var outcome = CoreOutcome(record: result.record)
            outcome.notes = result.notes + ["core destination: \(result.destination)"]
            outcome.killedAt = killedAt
            outcome.signal = started.signal
            outcome.exited = status
            return outcome
        }
    }

    // MARK: helpers and files

    public func startStacks(binary: String, core: String, output: String) -> Result<Int32, EffectFailure> {
        do {
            let gdb = try GdbStacks.start(binary: binary, core: core, outputPath: output)
            helpers[gdb.pid] = gdb
            return .success(gdb.pid)
        } catch {
            return .failure(EffectFailure("\(error)"))
        }
    }

    public func startCompression(argv: [String]) -> Result<Int32, EffectFailure> {
        var request = SpawnRequest(argv: argv, environment: helperEnvironment())
        request.stdinFromDevNull = true
        do {
            let tool = try spawnProcess(request)
            helpers[tool.pid] = tool
            return .success(tool.pid)
        } catch {
            return .failure(EffectFailure("\(error)"))
        }
    }

    public func readStacks(path: String) -> String { GdbStacks.read(outputPath: path) }

    public func stopHelper(pid: Int32) {
        guard let helper = helpers.removeValue(forKey: pid) else { return }
        try? helper.signal(SIGKILL)
        // A helper that runs another (`timeout` over delve) leaves it in its process group.
        helper.signalGroup(SIGKILL)
        _ = waitForChild(helper, timeoutMs: 2000)
        helper.closePidfd()
    }

    public func fileSize(path: String) -> Int64? { DefibPOSIX.fileSize(path) }

    public func removeFile(path: String) { unlink(path) }

    /// The stored cores with what each takes on disk, and the space of the core directory's file system
    /// (f_bfree, as systemd-coredump: KeepFree counts the blocks reserved for root as free).
    public func scanCores(directory: String) -> CoreInventory {
        let stored = (try? store.storedCores()) ?? []
        guard !stored.isEmpty else { return CoreInventory(cores: [], space: nil) }
        var fs = statvfs()
        guard statvfs(directory, &fs) == 0 else { return CoreInventory(cores: stored, space: nil) }
        let space = FileSystemSpace(totalBytes: Int64(fs.f_blocks) * Int64(fs.f_frsize), freeBytes: Int64(fs.f_bfree) * Int64(fs.f_frsize))
        let cores = stored.map { core in
            var measured = core
            measured.bytes = ([core.path] + core.otherPaths).reduce(Int64(0)) { $0 + (allocatedSize($1) ?? 0) }
            return measured
        }
        return CoreInventory(cores: cores, space: space)
    }
}

/// Blocks actually allocated to a file (cores have holes), in bytes.
func allocatedSize(_ path: String) -> Int64? {
    var st = stat()
    return stat(path, &st) == 0 ? Int64(st.st_blocks) * 512 : nil
}
