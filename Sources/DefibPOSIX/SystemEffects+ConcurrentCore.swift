import CDefibShims
import DefibCore
import DefibSystem
import Foundation
import Glibc
import Synchronization

/// Restart while the core is written: the loop thread freezes the hung instance (it stays the tracer, and never
/// detaches it), a writer thread copies its memory into the core while the loop serves the replacement, and the
/// frozen instance is killed once the writer is done. The loop hears of that through a pipe it polls.
extension SystemEffects {
    public func freezeForCore(_ request: CoreRequest) -> CoreFreeze {
        // Read before stopping (a stopped process's RSS is the same; MemAvailable is the machine's now).
        let rss = Self.rssBytes(pid: request.pid)
        let available = Self.memAvailableBytes()
        switch NativeCoreWriter.freeze(pid: request.pid, path: request.path,
                                       options: NativeCoreOptions.supervisor(budgetMs: request.budgetMs, firstThread: request.firstThread)) {
        case let .failed(result):
            var outcome = CoreOutcome(record: result.record, threads: result.threads)
            outcome.notes = result.notes
            return CoreFreeze(pid: request.pid, threads: 0, stopMs: result.stopMs, rssBytes: rss, memAvailableBytes: available, failure: outcome)
        case let .frozen(process):
            frozenCore = FrozenCoreJob(process: process, request: request)
            if let instance = child, instance.pid == request.pid { frozenInstance = instance }
            return CoreFreeze(pid: request.pid, threads: process.threadCount, stopMs: process.stopMs, rssBytes: rss, memAvailableBytes: available)
        }
    }

    public func writeFrozenCore(background: Bool) -> CoreOutcome? {
        guard let job = frozenCore else {
            return CoreOutcome(record: CaptureRecord(method: "native", path: nil, bytes: 0, durationMs: 0, error: "no process is frozen for a core"))
        }
        guard background else {
            // Today's order from a frozen process: written and detached by this (the tracing) thread.
            frozenCore = nil
            frozenInstance = nil
            return job.outcome(NativeCoreWriter.write(job.process, detach: true))
        }
        job.start()
        return nil
    }

    public func hurryFrozenCore() { frozenCore?.hurry() }

    /// The background writer's outcome, once it is done (the pipe said so).
    func frozenCoreEvents() -> [SupervisorEvent] {
        guard let job = frozenCore, let outcome = job.takeOutcome() else { return [] }
        frozenCore = nil
        return [.frozenCoreWritten(outcome)]
    }

    /// VmRSS of `pid`, bytes.
    static func rssBytes(pid: Int32) -> Int64? { kibField("VmRSS:", in: readTextFile("/proc/\(pid)/status")) }
    /// MemAvailable, bytes.
    static func memAvailableBytes() -> Int64? { kibField("MemAvailable:", in: readTextFile("/proc/meminfo")) }

    static func kibField(_ name: String, in text: String?) -> Int64? {
        guard let text, let line = text.split(separator: "\n").first(where: { $0.hasPrefix(name) }) else { return nil }
        let parts = line.split(separator: " ")
        guard parts.count >= 2, let kib = Int64(parts[1]) else { return nil }
        return kib * 1024
    }
}

/// One frozen process's core written by a thread of its own; the loop polls `readFD` and takes the outcome.
final class FrozenCoreJob: @unchecked Sendable {
    let process: FrozenProcess
    let request: CoreRequest
    /// Readable once the outcome is there.
    let readFD: Int32
    private let writeFD: Int32
    private let result = Mutex<CoreOutcome?>(nil)

    init(process: FrozenProcess, request: CoreRequest) {
        self.process = process
        self.request = request
        var fds: [Int32] = [-1, -1]
        if pipe(&fds) == 0 {
            for fd in fds {
                _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
                _ = fcntl(fd, F_SETFL, O_NONBLOCK)
            }
        } else {
            fds = [-1, -1]
        }
        readFD = fds[0]
        writeFD = fds[1]
    }

    deinit {
        if readFD >= 0 { close(readFD) }
        if writeFD >= 0 { close(writeFD) }
    }

    /// The writer thread: one copier (a core of the machine is left to the replacement's start), no detach (the
    /// process is killed once this is done), the outcome, a byte in the pipe.
    func start() {
        let context = Unmanaged.passRetained(self).toOpaque()
        var thread = pthread_t()
        if pthread_create(&thread, nil, frozenCoreWriterMain, context) != 0 {
            Unmanaged<FrozenCoreJob>.fromOpaque(context).release()
            finish(CoreOutcome(record: CaptureRecord(method: "native", path: nil, bytes: 0, durationMs: 0,
                                                     error: "\(SystemError("pthread_create(core writer)"))")))
            return
        }
        pthread_detach(thread)
    }

    /// The writer's kernel thread id, once it runs (0 before).
    private let writerTid = Atomic<Int32>(0)
    private let hurried = Atomic<Bool>(false)

    /// Set when the replacement is ready (`hurry`).
    private let replacementReady = ThreadEvent()
    /// How long the writer waited for the replacement before it began, ms.
    private let waitedMs = Atomic<Int>(0)

    fileprivate func run() {
        // Leave the machine to the replacement while it starts: wait until it is ready (`hurry`), at most half the
        // capture budget (the frozen process can do nothing meanwhile, and is killed at the budget and a second
        // whatever happens), and run at nice 19 (this thread alone) until then.
        let tid = Int32(defib_gettid())
        _ = setpriority(__priority_which_t(PRIO_PROCESS.rawValue), id_t(tid), 19)
        writerTid.store(tid, ordering: .releasing)
        if hurried.load(ordering: .acquiring) { hurry() }
        let waitStarted = monotonicNanoseconds()
        _ = replacementReady.wait(timeoutNs: Int64(max(1, request.budgetMs / 2)) * 1_000_000)
        waitedMs.store(Int((monotonicNanoseconds() - waitStarted) / 1_000_000), ordering: .relaxed)
        let result = NativeCoreWriter.write(process, detach: false, writerThreads: 1)
        finish(outcome(result))
    }

    /// Back to the supervisor's own nice value (root may always lower it again; without CAP_SYS_NICE the writer
    /// stays at 19, within the capture budget all the same).
    func hurry() {
        hurried.store(true, ordering: .releasing)
        replacementReady.set()
        let tid = writerTid.load(ordering: .acquiring)
        guard tid != 0 else { return }
        errno = 0
        let own = getpriority(__priority_which_t(PRIO_PROCESS.rawValue), 0)
        _ = setpriority(__priority_which_t(PRIO_PROCESS.rawValue), id_t(tid), errno == 0 ? own : 0)
    }

    func outcome(_ result: NativeCoreResult) -> CoreOutcome {
        var outcome = CoreOutcome(record: result.record, threads: result.threads)
        outcome.notes = result.notes
        if result.truncated { outcome.notes.append("core truncated at the \(request.budgetMs) ms budget") }
        if result.record.path != nil {
            outcome.notes.append(String(format: "native core: %d threads stopped in %.1f ms, %lld bytes allocated of %lld", result.threads,
                                        result.stopMs, result.allocatedBytes, result.record.bytes))
        }
        if let waited = backgroundWaitMs {
            outcome.notes.append("the core was written once the replacement was ready (the writer waited \(waited) ms after the freeze)")
        }
        outcome.jitterDraw = Double.random(in: 0..<1)
        return outcome
    }

    /// How long the background writer waited for the replacement (nil for a core written at once).
    private var backgroundWaitMs: Int? { writerTid.load(ordering: .acquiring) == 0 ? nil : waitedMs.load(ordering: .relaxed) }

    private func finish(_ outcome: CoreOutcome) {
        result.withLock { $0 = outcome }
        var byte: UInt8 = 1
        _ = write(writeFD, &byte, 1)
    }

    func takeOutcome() -> CoreOutcome? {
        var byte: UInt8 = 0
        _ = read(readFD, &byte, 1)
        return result.withLock { r -> CoreOutcome? in defer { r = nil }; return r }
    }
}

private func frozenCoreWriterMain(_ context: UnsafeMutableRawPointer?) -> UnsafeMutableRawPointer? {
    let job = Unmanaged<FrozenCoreJob>.fromOpaque(context!).takeRetainedValue()
    job.run()
    return nil
}

extension SystemEffects {
    /// The frozen instance was reaped: whatever is left in its cgroup leaf goes with it (bounded), and the leaf.
    func frozenEnded() {
        guard let leaf = frozenCgroup else { return }
        frozenCgroup = nil
        if !leaf.members().isEmpty || ServiceCgroup.populated(leaf.path) { leaf.kill(waitMs: 1000) }
        leaf.remove()
    }
}
