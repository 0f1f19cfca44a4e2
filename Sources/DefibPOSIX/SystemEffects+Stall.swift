import DefibCore
import Glibc

/// A stalled service's evidence at the suspect stage: the native writer freezes every thread, copies what the
/// scope needs, and lets them go; gdb reads the file in the background later (the supervision starts it).
extension SystemEffects {
    public func takeStallEvidence(_ request: StallEvidenceRequest) -> StallCapture {
        StallEvidenceCapture.capture(request)
    }
}

/// The capture itself, apart from `SystemEffects` so the benchmark measures exactly what the supervisor runs.
public enum StallEvidenceCapture {
    /// Resident bytes a full core may copy per millisecond of the budget: the slowest page-cache write rate
    /// measured on these machines (0.5 GB/s; see shared/reference/core-capture.md). A `core` request whose
    /// process holds more than budget × this in the mappings a core copies is written as stacks only.
    public static let fullCoreBytesPerMs: UInt64 = 512 << 10
    /// Per thread, the stack copied from its stack pointer up (deeper frames than this are cut).
    public static let stackBytesPerThread = 512 << 10

    public static func capture(_ request: StallEvidenceRequest) -> StallCapture {
        var mode = request.mode
        var notes: [String] = []
        if mode == .none {
            return StallCapture(mode: .none, record: CaptureRecord(method: "none", path: nil, bytes: 0, durationMs: 0, error: nil), pauseMs: 0, threads: 0)
        }
        if mode == .core {
            // Weighed before anything is stopped: reading smaps costs the service nothing.
            if let resident = fullCoreResidentBytes(pid: request.pid) {
                let allowed = UInt64(request.budgetMs) * fullCoreBytesPerMs
                if resident > allowed {
                    mode = .stacks
                    notes.append("a full core would copy \(resident >> 10) KiB resident, more than the \(request.budgetMs) ms budget allows "
                                 + "(\(allowed >> 10) KiB): stacks only")
                }
            } else {
                mode = .stacks
                notes.append("the process's mappings could not be read to weigh a full core: stacks only")
            }
        }
        // What gdb reads the file with: the executable as it is on disk now (an upgraded-in-place binary reads
        // "… (deleted)": then none, and the supervision falls back to the instance's own).
        let executable = ProcessMemory.executable(pid: request.pid).flatMap { path in
            !path.hasSuffix(" (deleted)") && access(path, R_OK) == 0 ? path : nil
        }
        var options = NativeCoreOptions(budgetMs: max(1, request.budgetMs), firstThread: request.firstThread)
        // The stop is bounded on its own (a thread in D state never stops); keep it close to the budget.
        options.stopTimeoutMs = max(5, min(request.budgetMs * 2, 100))
        if mode == .stacks { options.stacksOnly = stackBytesPerThread }
        let chosen = options
        let result = onTracerThread { NativeCoreWriter.capture(pid: request.pid, path: request.path, options: chosen) }
        notes += result.notes
        if result.truncated { notes.append("the copy was cut at the \(request.budgetMs) ms budget; the deepest frames may be missing") }
        var record = result.record
        record.method = "native"
        return StallCapture(mode: mode, record: record, pauseMs: result.frozenMs > 0 ? result.frozenMs : result.stopMs,
                            threads: result.threads, notes: notes, executable: executable)
    }

    /// Runs `body` (every ptrace call of a capture) on a thread of its own that ends with it. The process keeps
    /// running after a stall's capture, so no thread may stay traced: one that did not stop in time (throttled,
    /// in uninterruptible sleep) cannot be detached, but the kernel unlinks every tracee of a tracer thread that
    /// exits, and drops the interrupt still pending — the thread runs on, never stopped later by a tracer
    /// that has moved on.
    static func onTracerThread(_ body: @escaping @Sendable () -> NativeCoreResult) -> NativeCoreResult {
        final class Box: @unchecked Sendable {
            let body: @Sendable () -> NativeCoreResult
            var result: NativeCoreResult?
            init(_ body: @escaping @Sendable () -> NativeCoreResult) { self.body = body }
        }
        let box = Box(body)
        var thread = pthread_t()
        let context = Unmanaged.passRetained(box).toOpaque()
        let rc = pthread_create(&thread, nil, { raw in
            let box = Unmanaged<Box>.fromOpaque(raw!).takeRetainedValue()
            box.result = box.body()
            return nil
        }, context)
        guard rc == 0 else {
            Unmanaged<Box>.fromOpaque(context).release()
            return NativeCoreResult(record: CaptureRecord(method: "native", path: nil, bytes: 0, durationMs: 0,
                                                          error: "\(SystemError("pthread_create(stall capture)", errno: rc))"),
                                    threads: 0, allocatedBytes: 0, truncated: false, stopMs: 0, notes: [], processExited: false)
        }
        pthread_join(thread, nil)
        return box.result!
    }

    /// What a full core would copy: the resident bytes of every mapping the kernel's rule keeps whole.
    static func fullCoreResidentBytes(pid: Int32) -> UInt64? {
        guard let text = try? readProcText("/proc/\(pid)/smaps"), let mappings = try? SmapsParser.parse(text) else { return nil }
        var total: UInt64 = 0
        for m in mappings where CoreDumpFilter.extent(for: m, filter: CoreDumpFilter.defaultBits) == .whole {
            total += m.rssKB << 10
        }
        return total
    }
}
