import CDefibShims
import FlightRecorder
import Glibc
import Synchronization

/// Why the flight recorder could not be opened.
public struct FlightRecorderWriterError: Error, Equatable, CustomStringConvertible {
    /// The class of failure.
    public enum Kind: String, Sendable {
        /// A system call failed (`call` and `errno` say which and why).
        case system
        /// An argument was unusable (`detail` says which).
        case invalidArgument
    }

    /// The class of failure.
    public var kind: Kind
    /// The failing call ("open", "fchmod", "posix_fallocate", "mmap", "rename") or the argument's name.
    public var call: String
    /// The file involved.
    public var path: String
    /// errno for `.system`, 0 otherwise.
    public var errno: Int32
    /// Extra words for `.invalidArgument`.
    public var detail: String

    /// Makes an error.
    public init(kind: Kind, call: String, path: String, errno: Int32 = 0, detail: String = "") {
        self.kind = kind
        self.call = call
        self.path = path
        self.errno = errno
        self.detail = detail
    }

    /// e.g. "open(/run/x.fr): Permission denied" or "flight recorder slotCount 0: must be 1...4096".
    public var description: String {
        switch kind {
        case .system: "\(call)(\(path)): \(String(cString: strerror(errno)))"
        case .invalidArgument: "flight recorder \(call) for \(path.isEmpty ? "\"\"" : path): \(detail)"
        }
    }
}

/// The service side of the flight recorder: a file mapped MAP_SHARED into which every registered
/// lock mirrors its telemetry (see FlightRecorder's FlightRecordLayout for the format). Opening one
/// routes `LockRegistry.shared` to it; locks registered later get slots too.
public final class FlightRecorderWriter: @unchecked Sendable {
    /// The file's path.
    public let path: String
    /// Slots in the file.
    public let slotCount: Int
    private let base: UnsafeMutableRawPointer
    private let size: Int

    private struct State {
        var free: [Bool]
        var generation: UInt64 = 0
        var closed = false
    }

    private let state: Mutex<State>

    private init(path: String, slotCount: Int, base: UnsafeMutableRawPointer, size: Int) {
        self.path = path
        self.slotCount = slotCount
        self.base = base
        self.size = size
        state = Mutex(State(free: Array(repeating: true, count: slotCount)))
    }

    /// The recorder `LockRegistry.shared` currently routes to.
    public static var current: FlightRecorderWriter? { LockRegistry.shared.flightRecorder }

    /// Creates `path` afresh with mode 0600 (replacing any file there), sizes and maps it, writes the
    /// header, and routes `LockRegistry.shared` to it, replacing (and closing) any recorder opened before.
    /// The file appears complete, under its name, in one rename: readers should open it by path each time.
    @discardableResult
    public static func open(path: String, slotCount: Int = FlightRecordLayout.defaultSlotCount)
        throws(FlightRecorderWriterError) -> FlightRecorderWriter {
        guard !path.isEmpty else {
            throw FlightRecorderWriterError(kind: .invalidArgument, call: "path", path: path, detail: "empty path")
        }
        guard (1...FlightRecordLayout.maxSlotCount).contains(slotCount) else {
            throw FlightRecorderWriterError(kind: .invalidArgument, call: "slotCount", path: path,
                                            detail: "\(slotCount) is not in 1...\(FlightRecordLayout.maxSlotCount)")
        }
        let size = FlightRecordLayout.fileSize(slotCount: slotCount)
        // Built under a temporary name and renamed into place: a reader never sees a half-made file, and
        // a mapping of the file it replaces (ours or a previous instance's) never faults on a truncation.
        let temporary = "\(path).tmp.\(getpid())"
        func fail(_ call: String, _ file: String) -> FlightRecorderWriterError {
            FlightRecorderWriterError(kind: .system, call: call, path: file, errno: Glibc.errno)
        }
        let fd = Glibc.open(temporary, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw fail("open", temporary) }
        defer { Glibc.close(fd) }
        var renamed = false
        defer { if !renamed { unlink(temporary) } }
        // O_CREAT's mode goes through the umask and does not apply to a file that already existed.
        guard fchmod(fd, 0o600) == 0 else { throw fail("fchmod", temporary) }
        // Blocks allocated for real, not a sparse file: a page of a sparse mapping that the file system has no
        // room for faults with SIGBUS when first written — in the service, under a lock. A full disk is an
        // error here instead, and the service runs without a recorder.
        let allocated = posix_fallocate(fd, 0, off_t(size))
        guard allocated == 0 else {
            throw FlightRecorderWriterError(kind: .system, call: "posix_fallocate", path: temporary, errno: allocated)
        }
        guard let mapped = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), mapped != MAP_FAILED else {
            throw fail("mmap", temporary)
        }
        FlightRecordEncoder.writeHeaderStatics(into: mapped, pid: getpid(), pageSize: UInt32(sysconf(Int32(_SC_PAGESIZE))),
                                               slotCount: slotCount, createdUnixMs: defib_realtime_ms())
        FlightRecordEncoder.writeHeaderDynamic(into: mapped, generation: 0, lastUpdateMonotonicNs: defib_monotonic_ns(),
                                               lastUpdateUnixMs: defib_realtime_ms())
        // Magic last: a reader that sees it sees a complete header.
        defib_fence_release()
        FlightRecordEncoder.writeMagic(into: mapped)
        guard rename(temporary, path) == 0 else {
            let error = fail("rename", "\(temporary) -> \(path)")
            munmap(mapped, size)
            throw error
        }
        renamed = true
        let writer = FlightRecorderWriter(path: path, slotCount: slotCount, base: mapped, size: size)
        LockRegistry.shared.install(writer)?.unmap()
        return writer
    }

    /// Opens the recorder named by `DEFIB_FLIGHT_RECORDER`; does nothing (returns nil) when it is unset or empty.
    @discardableResult
    public static func openFromEnvironment() throws(FlightRecorderWriterError) -> FlightRecorderWriter? {
        guard let value = getenv(FlightRecordLayout.environmentVariable) else { return nil }
        let path = String(cString: value)
        guard !path.isEmpty else { return nil }
        return try open(path: path)
    }

    /// Detaches every lock from this recorder and unmaps it. The file stays.
    public func close() {
        if LockRegistry.shared.flightRecorder === self { _ = LockRegistry.shared.install(nil) }
        unmap()
    }

    private func unmap() {
        let wasOpen = state.withLock { s in
            defer { s.closed = true }
            return !s.closed
        }
        if wasOpen { munmap(base, size) }
    }

    /// A free slot index, or nil when all are taken (or the recorder is closed).
    func assignSlot() -> Int? {
        state.withLock { s in
            guard !s.closed, let index = s.free.firstIndex(of: true) else { return nil }
            s.free[index] = false
            return index
        }
    }

    /// Marks a slot empty in the file and free for another lock.
    func releaseSlot(_ index: Int) {
        let slot = base + FlightRecordLayout.slotOffset(index)
        state.withLock { s in
            guard !s.closed else { return }
            seqlocked(slot, seqBegin: FlightRecordLayout.Slot.seqBegin, seqEnd: FlightRecordLayout.Slot.seqEnd) {
                FlightRecordEncoder.writeSlotEmpty(into: slot)
            }
            s.free[index] = true
            bumpHeader(&s)
        }
    }

    /// Writes one lock's slot under its seqlock: the fixed part, the read holders, the pinned events
    /// when `pinned` (they rarely change), and `event` into the ring. The caller holds that lock's
    /// telemetry mutex, which makes it the slot's only writer.
    func writeSlot(_ index: Int, image: FlightRecord.Lock, event: (FlightRecord.Event, UInt64)?, pinned: Bool) {
        let slot = base + FlightRecordLayout.slotOffset(index)
        seqlocked(slot, seqBegin: FlightRecordLayout.Slot.seqBegin, seqEnd: FlightRecordLayout.Slot.seqEnd) {
            FlightRecordEncoder.writeSlotFixed(image, into: slot)
            FlightRecordEncoder.writeReadHolders(image.readHolders ?? [], more: image.moreReadHolders, into: slot)
            if pinned {
                FlightRecordEncoder.writePinnedWriteTimeout(image.pinnedWriteTimeout, into: slot)
                FlightRecordEncoder.writePinnedWriteWhileHoldingRead(image.pinnedWriteWhileHoldingRead, into: slot)
            }
            if let (event, ordinal) = event { FlightRecordEncoder.writeEvent(event, ordinal: ordinal, into: slot) }
        }
        state.withLock { s in
            if !s.closed { bumpHeader(&s) }
        }
    }

    private func bumpHeader(_ s: inout State) {
        s.generation += 1
        let generation = s.generation
        seqlocked(base, seqBegin: FlightRecordLayout.Header.seqBegin, seqEnd: FlightRecordLayout.Header.seqEnd) {
            FlightRecordEncoder.writeHeaderDynamic(into: base, generation: generation,
                                                   lastUpdateMonotonicNs: defib_monotonic_ns(),
                                                   lastUpdateUnixMs: defib_realtime_ms())
        }
    }

    /// The writer half of the format's seqlock: both sequences odd, body, trailing then leading even.
    private func seqlocked(_ region: UnsafeMutableRawPointer, seqBegin: Int, seqEnd: Int, _ body: () -> Void) {
        let begin = (region + seqBegin).assumingMemoryBound(to: UInt64.self)
        let end = (region + seqEnd).assumingMemoryBound(to: UInt64.self)
        let current = UInt64(littleEndian: defib_atomic_load_u64_acquire(begin)) & ~1
        defib_atomic_store_u64_relaxed(end, (current + 1).littleEndian)
        defib_atomic_store_u64_relaxed(begin, (current + 1).littleEndian)
        defib_fence_release()
        body()
        defib_fence_release()
        defib_atomic_store_u64_release(end, (current + 2).littleEndian)
        defib_atomic_store_u64_release(begin, (current + 2).littleEndian)
    }
}
