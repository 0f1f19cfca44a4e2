/// Which cores to delete so the core directory stays within its limits, with systemd-coredump's
/// semantics (coredump.conf(5), coredump-vacuum.c): `MaxUse` (bytes the cores may take; default 10 % of
/// the file system, at least 1 MiB and at most 4 GiB; 0 = no limit), `KeepFree` (bytes the file system
/// must keep free, counting the blocks only root may use, as systemd does; default 15 %, at most 4 GiB;
/// 0 = no limit), and — defib's own — a maximum number of cores per service. Like systemd, the next core
/// to go is the oldest of the service with the most cores, and the core just written is never deleted;
/// unlike it, the first core of each signature is kept longest: it is the one that explains a recurring
/// hang. Pure.
public struct CoreRetentionPolicy: Sendable, Equatable {
    /// nil = 10 % of the file system, clamped to 1 MiB … 4 GiB (systemd-coredump's default); 0 = no limit.
    public var maxUseBytes: Int64?
    /// nil = 15 % of the file system, at most 4 GiB; 0 = no limit.
    public var keepFreeBytes: Int64?
    /// Cores kept per service.
    public var maxPerService: Int

    public init(maxUseBytes: Int64? = nil, keepFreeBytes: Int64? = nil, maxPerService: Int = 20) {
        self.maxUseBytes = maxUseBytes; self.keepFreeBytes = keepFreeBytes; self.maxPerService = maxPerService
    }

    static let maxUseLower: Int64 = 1 << 20
    static let maxUseUpper: Int64 = 4 << 30
    static let keepFreeUpper: Int64 = 4 << 30

    /// The MaxUse in force on a file system of `totalBytes` (0 = no limit).
    public func effectiveMaxUse(totalBytes: Int64) -> Int64 {
        if let v = maxUseBytes { return v }
        guard totalBytes > 0 else { return Self.maxUseLower }
        return min(max(totalBytes / 10, Self.maxUseLower), Self.maxUseUpper)
    }

    /// The KeepFree in force on a file system of `totalBytes` (0 = no limit).
    public func effectiveKeepFree(totalBytes: Int64) -> Int64 {
        if let v = keepFreeBytes { return v }
        guard totalBytes > 0 else { return 1 << 20 }
        return min(totalBytes * 15 / 100, Self.keepFreeUpper)
    }
}

/// One incident's core on disk, with the cores of its instance's other processes (a multi-process service's
/// stuck workers): they are kept and deleted together, and weigh together.
public struct StoredCore: Sendable, Equatable {
    public var incidentID: Int64
    public var path: String
    /// The cores of the instance's other processes (`processes[].core_path`), deleted with `path`.
    public var otherPaths: [String] = []
    /// Allocated bytes of all of them (cores have holes; what they really take).
    public var bytes: Int64
    public var service: String
    public var signature: String?
    /// Detection time, ms since the epoch: the age.
    public var detectedUnixMs: Int64
    /// A stall's core (the service recovered by itself): the first to go, before any hang's.
    public var stall: Bool
    public init(incidentID: Int64, path: String, bytes: Int64, service: String, signature: String?, detectedUnixMs: Int64,
                otherPaths: [String] = [], stall: Bool = false) {
        self.incidentID = incidentID; self.path = path; self.bytes = bytes; self.service = service
        self.signature = signature; self.detectedUnixMs = detectedUnixMs; self.otherPaths = otherPaths; self.stall = stall
    }
}

/// The file system holding the cores.
public struct FileSystemSpace: Sendable, Equatable {
    public var totalBytes: Int64
    public var freeBytes: Int64
    public init(totalBytes: Int64, freeBytes: Int64) { self.totalBytes = totalBytes; self.freeBytes = freeBytes }
}

/// A core to delete and the limit that asked for it.
public struct CoreDeletion: Sendable, Equatable {
    public var core: StoredCore
    /// "max-per-service", "max-use", "keep-free".
    public var reason: String
}

public enum CoreRetention {
    /// The cores to delete, in order. `protected` incidents (the core just written, the incident being
    /// handled) are never chosen.
    public static func plan(cores: [StoredCore], space: FileSystemSpace, policy: CoreRetentionPolicy,
                            protected: Set<Int64> = []) -> [CoreDeletion] {
        // The first (oldest) core of each signature is kept longest.
        var firstOfSignature: Set<Int64> = []
        for (_, group) in Dictionary(grouping: cores.filter { $0.signature != nil && !$0.stall }, by: { $0.signature! }) {
            if let first = group.min(by: { ($0.detectedUnixMs, $0.incidentID) < ($1.detectedUnixMs, $1.incidentID) }) {
                firstOfSignature.insert(first.incidentID)
            }
        }
        // Within a service: stalls' cores oldest first (the service recovered: they explain the least), then
        // ordinary cores oldest first, then first-of-signature cores oldest first.
        func order(_ a: StoredCore, _ b: StoredCore) -> Bool {
            if a.stall != b.stall { return a.stall }
            let pa = firstOfSignature.contains(a.incidentID), pb = firstOfSignature.contains(b.incidentID)
            if pa != pb { return !pa }
            return (a.detectedUnixMs, a.incidentID) < (b.detectedUnixMs, b.incidentID)
        }
        var candidates: [String: [StoredCore]] = Dictionary(grouping: cores.filter { !protected.contains($0.incidentID) }, by: \.service)
            .mapValues { $0.sorted(by: order) }
        var count: [String: Int] = Dictionary(grouping: cores, by: \.service).mapValues(\.count)
        var deletions: [CoreDeletion] = []
        var use = cores.reduce(Int64(0)) { $0 + $1.bytes }
        var free = space.freeBytes

        func delete(from service: String, reason: String) {
            let core = candidates[service]!.removeFirst()
            deletions.append(CoreDeletion(core: core, reason: reason))
            count[service, default: 1] -= 1
            use -= core.bytes
            free += core.bytes
        }
        /// systemd's choice: the service with the most cores; on a tie, the one whose next core is older.
        func worstService() -> String? {
            let live = candidates.filter { !$0.value.isEmpty }
            // Stalls' cores go first, whichever service took them: the oldest one.
            if let stall = live.filter({ $0.value[0].stall })
                .min(by: { ($0.value[0].detectedUnixMs, $0.key) < ($1.value[0].detectedUnixMs, $1.key) }) { return stall.key }
            return live.max { a, b in
                let ca = count[a.key, default: 0], cb = count[b.key, default: 0]
                if ca != cb { return ca < cb }
                let a0 = a.value[0], b0 = b.value[0]
                if order(a0, b0) != order(b0, a0) { return order(b0, a0) }
                return a.key > b.key
            }?.key
        }

        // Per service.
        for service in candidates.keys.sorted() {
            while count[service, default: 0] > policy.maxPerService, !(candidates[service]?.isEmpty ?? true) {
                delete(from: service, reason: "max-per-service")
            }
        }
        // MaxUse, then KeepFree.
        let maxUse = policy.effectiveMaxUse(totalBytes: space.totalBytes)
        while maxUse > 0, use > maxUse, let service = worstService() { delete(from: service, reason: "max-use") }
        let keepFree = policy.effectiveKeepFree(totalBytes: space.totalBytes)
        while keepFree > 0, free < keepFree, let service = worstService() { delete(from: service, reason: "keep-free") }
        return deletions
    }
}
