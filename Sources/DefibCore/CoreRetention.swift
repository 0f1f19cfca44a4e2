/// Which cores to delete so the core directory stays within its limits, with systemd-coredump's
/// semantics: `MaxUse` (bytes the cores may take), `KeepFree` (bytes the file system must keep free),
/// and a maximum number of cores per service. Oldest first, except that the first core of each
/// signature is kept longest: it is the one that explains a recurring hang. Pure.
public struct CoreRetentionPolicy: Sendable, Equatable {
    /// nil = 10 % of the file system (systemd-coredump's default).
    public var maxUseBytes: Int64?
    /// nil = 15 % of the file system.
    public var keepFreeBytes: Int64?
    /// Cores kept per service.
    public var maxPerService: Int

    public init(maxUseBytes: Int64? = nil, keepFreeBytes: Int64? = nil, maxPerService: Int = 20) {
        self.maxUseBytes = maxUseBytes; self.keepFreeBytes = keepFreeBytes; self.maxPerService = maxPerService
    }
}

/// One core on disk.
public struct StoredCore: Sendable, Equatable {
    public var incidentID: Int64
    public var path: String
    /// Allocated bytes (cores have holes; what they really take).
    public var bytes: Int64
    public var service: String
    public var signature: String?
    /// Detection time, ms since the epoch: the age.
    public var detectedUnixMs: Int64
    public init(incidentID: Int64, path: String, bytes: Int64, service: String, signature: String?, detectedUnixMs: Int64) {
        self.incidentID = incidentID; self.path = path; self.bytes = bytes; self.service = service
        self.signature = signature; self.detectedUnixMs = detectedUnixMs
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
    /// The cores to delete, in order. `protected` incidents (the one being handled) are never chosen.
    public static func plan(cores: [StoredCore], space: FileSystemSpace, policy: CoreRetentionPolicy,
                            protected: Set<Int64> = []) -> [CoreDeletion] {
        // The first (oldest) core of each signature is kept longest.
        var firstOfSignature: Set<Int64> = []
        for (_, group) in Dictionary(grouping: cores.filter { $0.signature != nil }, by: { $0.signature! }) {
            if let first = group.min(by: { ($0.detectedUnixMs, $0.incidentID) < ($1.detectedUnixMs, $1.incidentID) }) {
                firstOfSignature.insert(first.incidentID)
            }
        }
        // Deletion order: ordinary cores oldest first, then first-of-signature cores oldest first.
        func order(_ a: StoredCore, _ b: StoredCore) -> Bool {
            let pa = firstOfSignature.contains(a.incidentID), pb = firstOfSignature.contains(b.incidentID)
            if pa != pb { return !pa }
            return (a.detectedUnixMs, a.incidentID) < (b.detectedUnixMs, b.incidentID)
        }
        var remaining = cores.filter { !protected.contains($0.incidentID) }.sorted(by: order)
        var deletions: [CoreDeletion] = []
        var use = cores.reduce(Int64(0)) { $0 + $1.bytes }
        var free = space.freeBytes

        func delete(at index: Int, reason: String) {
            let core = remaining.remove(at: index)
            deletions.append(CoreDeletion(core: core, reason: reason))
            use -= core.bytes
            free += core.bytes
        }

        // Per service.
        for service in Set(cores.map(\.service)).sorted() {
            var count = cores.filter { $0.service == service }.count
            while count > policy.maxPerService, let i = remaining.firstIndex(where: { $0.service == service }) {
                delete(at: i, reason: "max-per-service")
                count -= 1
            }
        }
        // MaxUse, then KeepFree.
        let maxUse = policy.maxUseBytes ?? space.totalBytes / 10
        while use > maxUse, !remaining.isEmpty { delete(at: 0, reason: "max-use") }
        let keepFree = policy.keepFreeBytes ?? space.totalBytes * 15 / 100
        while free < keepFree, !remaining.isEmpty { delete(at: 0, reason: "keep-free") }
        return deletions
    }
}
