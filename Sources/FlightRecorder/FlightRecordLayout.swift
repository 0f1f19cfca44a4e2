/// The flight recorder: a small memory-mapped file that a service (through ParkingLock) keeps up to
/// date with the state of its locks, so that a supervisor can read it with plain file I/O while the
/// service is hung, without the service's help.
///
/// Format version 2 (version 1 files are still read: see FORMAT.md). All integers little-endian; strings UTF-8, NUL-padded in fixed fields
/// (truncated at a character boundary). Offsets in bytes. Sources/FlightRecorder/FORMAT.md has the
/// same tables with more prose.
///
/// File = header (headerSize bytes, 4096) + slotCount slots of slotSize bytes (4096) each.
///
/// Header
/// | off | size | field |
/// |  0  |  8 | magic "DEFIBFLR" |
/// |  8  |  4 | version (2; 1 is still read) |
/// | 12  |  4 | headerSize (offset of slot 0) |
/// | 16  |  4 | pageSize of the writer |
/// | 20  |  4 | slotCount |
/// | 24  |  4 | slotSize |
/// | 28  |  4 | eventCapacity (ring entries per slot) |
/// | 32  |  4 | pid of the writer (Int32) |
/// | 36  |  4 | reserved (0) |
/// | 40  |  8 | createdUnixMs (Int64) |
/// | 48  |  8 | headerSeqBegin  -- seqlock over 48..<88 |
/// | 56  |  8 | generation (count of completed slot updates) |
/// | 64  |  8 | lastUpdateMonotonicNs (CLOCK_MONOTONIC of the writer) |
/// | 72  |  8 | lastUpdateUnixMs (Int64) |
/// | 80  |  8 | headerSeqEnd |
/// The static fields (0..<48) are written once before the magic, and the magic last, so a file
/// that is still being created reads as "bad magic", never as garbage.
///
/// Slot (one per registered lock)
/// | off | size | field |
/// |   0 |   8 | seqBegin (seqlock: odd while the writer is inside) |
/// |   8 |   4 | state: 0 empty, 1 live |
/// |  12 |   1 | revert strategy: 0 fixed, 1 buggy |
/// |  13 |   1 | 1 if a current write holder follows |
/// |  14 |   1 | 1 if a last write holder follows |
/// |  15 |   1 | 1 if the holder owns WRITER but still waits for readers (v2; reserved 0 in v1) |
/// |  16 |   8 | address of the lock's 64-bit word in the writer's address space |
/// |  24 |   8 | word: copy of the lock word as of this update (the live word is at `address`) |
/// |  32 |   4 | readers waiting (parked) |
/// |  36 |   4 | writers waiting (parked) |
/// |  40 |   8 | updatedMonotonicNs |
/// |  48 |   8 | updatedUnixMs (Int64) |
/// |  56 |   8 | eventCount: slow-lock events ever recorded (the ring keeps the last eventCapacity) |
/// |  64 |  64 | name |
/// | 128 | 152 | holder: tid Int32 @0, reserved @4, sinceMonotonicNs @8, sinceUnixMs Int64 @16, label[128] @24 |
/// | 280 | 152 | last holder, same layout |
/// | 432 | eventCapacity × 160 | event ring; event g (0-based, in order of recording) sits at g % eventCapacity |
/// | 2992 | 160 | pinned write-timed-out event (v2; kind 0 = none): the first whose revert corrupted the word, else the latest |
/// | 3152 | 160 | pinned write-while-holding-read event (v2; kind 0 = none): the latest |
/// | 3312 |   4 | readHolderCount: rows used below, 0...8 (v2) |
/// | 3316 |   4 | moreReadHolders: read holds not in the rows (threads past 8, reads no row accounts for) (v2) |
/// | 3320 | 8 × 24 | read-holder rows, oldest hold first (v2) |
/// | slotSize−8 | 8 | seqEnd |
///
/// Event (160 bytes): kind UInt16 @0, reserved @2, tid Int32 @4, monotonicNs @8, unixMs Int64 @16,
/// wordAfter @24, label[128] @32.
///
/// Read-holder row (24 bytes): tid Int32 @0, depth UInt16 @4, flags UInt16 @6 (bit 0: the thread
/// exited still holding it), sinceMonotonicNs @8 (coarse clock), sinceUnixMs Int64 @16.
///
/// Seqlock protocol. Writer: store seqEnd = s+1 and seqBegin = s+1 (odd), release fence, write the
/// body, release fence, store seqEnd = s+2, then seqBegin = s+2. A reader copies the slot front to
/// back (read(2) and process_vm_readv do) and accepts it only if seqBegin is even and equals
/// seqEnd; otherwise the copy overlapped a write and is reported as torn, to be read again.
///
/// Offsets, sizes and constants of flight-record format version 2 (see the table at the top of this file).
public enum FlightRecordLayout {
    /// The first eight bytes of every flight-record file.
    public static let magic: [UInt8] = Array("DEFIBFLR".utf8)
    /// The format version this module writes (and the newest it reads).
    public static let version: UInt32 = 2
    /// The versions the decoder reads: 1 (no pending writer flag, pinned events or read holders) and 2.
    public static let readableVersions: ClosedRange<UInt32> = 1...2
    /// Bytes before slot 0.
    public static let headerSize = 4096
    /// Bytes per slot.
    public static let slotSize = 4096
    /// Slow-lock events kept per slot.
    public static let eventCapacity = 16
    /// Slots in a file made by default: one per lock the service registers.
    public static let defaultSlotCount = 16
    /// Largest slot count a decoder accepts (a sanity bound against a corrupt header).
    public static let maxSlotCount = 4096
    /// Bytes reserved for a lock name.
    public static let nameCapacity = 64
    /// Bytes reserved for a holder or event label.
    public static let labelCapacity = 128
    /// Bytes of one encoded event.
    public static let eventSize = 160
    /// Bytes of one encoded holder.
    public static let holderSize = 152
    /// Events kept outside the ring per slot (v2): the write timeout, the write while holding a read.
    public static let pinnedEventCount = 2
    /// Read-holder rows per slot (v2).
    public static let readHolderCapacity = 8
    /// Bytes of one read-holder row.
    public static let readHolderSize = 24
    /// Environment variable through which a supervisor tells its service where to put the file.
    public static let environmentVariable = "DEFIB_FLIGHT_RECORDER"

    /// Header field offsets.
    public enum Header {
        /// Offset of the magic.
        public static let magic = 0
        /// Offset of the version.
        public static let version = 8
        /// Offset of headerSize.
        public static let headerSize = 12
        /// Offset of pageSize.
        public static let pageSize = 16
        /// Offset of slotCount.
        public static let slotCount = 20
        /// Offset of slotSize.
        public static let slotSize = 24
        /// Offset of eventCapacity.
        public static let eventCapacity = 28
        /// Offset of the writer's pid.
        public static let pid = 32
        /// Offset of createdUnixMs.
        public static let createdUnixMs = 40
        /// Offset of the header seqlock's leading sequence.
        public static let seqBegin = 48
        /// Offset of the generation counter.
        public static let generation = 56
        /// Offset of lastUpdateMonotonicNs.
        public static let lastUpdateMonotonicNs = 64
        /// Offset of lastUpdateUnixMs.
        public static let lastUpdateUnixMs = 72
        /// Offset of the header seqlock's trailing sequence.
        public static let seqEnd = 80
        /// Bytes of the header that carry fields (the rest up to headerSize is zero).
        public static let usedSize = 88
    }

    /// Slot field offsets, relative to the slot's start.
    public enum Slot {
        /// Offset of the leading sequence.
        public static let seqBegin = 0
        /// Offset of the state (0 empty, 1 live).
        public static let state = 8
        /// Offset of the revert-strategy code.
        public static let revert = 12
        /// Offset of the has-holder flag.
        public static let hasHolder = 13
        /// Offset of the has-last-holder flag.
        public static let hasLastHolder = 14
        /// Offset of the holder-waits-for-readers flag (v2).
        public static let holderWaitingForReaders = 15
        /// Offset of the lock word's address.
        public static let address = 16
        /// Offset of the mirrored lock word.
        public static let word = 24
        /// Offset of the parked-reader count.
        public static let readersWaiting = 32
        /// Offset of the parked-writer count.
        public static let writersWaiting = 36
        /// Offset of updatedMonotonicNs.
        public static let updatedMonotonicNs = 40
        /// Offset of updatedUnixMs.
        public static let updatedUnixMs = 48
        /// Offset of the total event count.
        public static let eventCount = 56
        /// Offset of the name.
        public static let name = 64
        /// Offset of the current holder.
        public static let holder = 128
        /// Offset of the last holder.
        public static let lastHolder = 280
        /// Offset of event 0 of the ring.
        public static let events = 432
        /// Offset of the pinned write-timed-out event (v2).
        public static let pinnedWriteTimeout = 2992
        /// Offset of the pinned write-while-holding-read event (v2).
        public static let pinnedWriteWhileHoldingRead = 3152
        /// Offset of the count of read-holder rows in use (v2).
        public static let readHolderCount = 3312
        /// Offset of the count of read holds not in the rows (v2).
        public static let moreReadHolders = 3316
        /// Offset of read-holder row 0 (v2).
        public static let readHolders = 3320
        /// Offset of the trailing sequence (slotSize − 8).
        public static var seqEnd: Int { FlightRecordLayout.slotSize - 8 }
        /// Bytes from `state` up to the event ring: what a writer rewrites on every update.
        public static let fixedRange = 8..<432
        /// The version 2 additions after the ring: pinned events and read holders.
        public static let extrasRange = 2992..<3512
    }

    /// Offsets inside an encoded holder.
    public enum HolderField {
        /// Offset of the tid.
        public static let tid = 0
        /// Offset of sinceMonotonicNs.
        public static let sinceMonotonicNs = 8
        /// Offset of sinceUnixMs.
        public static let sinceUnixMs = 16
        /// Offset of the label.
        public static let label = 24
    }

    /// Offsets inside a read-holder row.
    public enum ReadHolderField {
        /// Offset of the tid.
        public static let tid = 0
        /// Offset of the depth (UInt16).
        public static let depth = 4
        /// Offset of the flags (UInt16; bit 0: the thread exited).
        public static let flags = 6
        /// Offset of sinceMonotonicNs.
        public static let sinceMonotonicNs = 8
        /// Offset of sinceUnixMs.
        public static let sinceUnixMs = 16
    }

    /// Offsets inside an encoded event.
    public enum EventField {
        /// Offset of the kind.
        public static let kind = 0
        /// Offset of the tid.
        public static let tid = 4
        /// Offset of monotonicNs.
        public static let monotonicNs = 8
        /// Offset of unixMs.
        public static let unixMs = 16
        /// Offset of wordAfter.
        public static let wordAfter = 24
        /// Offset of the label.
        public static let label = 32
    }

    /// Size of a file with `slotCount` slots.
    public static func fileSize(slotCount: Int) -> Int { headerSize + slotCount * slotSize }

    /// Offset of slot `index` from the start of the file.
    public static func slotOffset(_ index: Int) -> Int { headerSize + index * slotSize }

    /// Where read-holder row `index` lives inside a slot.
    public static func readHolderOffset(_ index: Int) -> Int { Slot.readHolders + index * readHolderSize }

    /// Where event number `ordinal` (0-based, in recording order) lives inside a slot.
    public static func eventOffset(ordinal: UInt64) -> Int {
        Slot.events + Int(ordinal % UInt64(eventCapacity)) * eventSize
    }
}
