import DefibCore
import Glibc

/// What became of a core file a dead supervisor left behind for one incident.
public struct SettledCore: Sendable, Equatable {
    /// The core kept, under its final name, with what the check found; or nil when it was deleted.
    public var keptAt: String?
    /// The file found (possibly `….partial`).
    public var found: String
    /// Its size.
    public var bytes: Int64
    /// The capture method its name shows: a `.partial` is the native writer's; gcore writes the final name.
    public var method: String
    /// One line for the incident: kept and why, or deleted and why.
    public var note: String
    /// The problem when it was not usable.
    public var problem: String?
}

/// Files defib's own writers leave when defib is killed in the middle of them, found and dealt with at the
/// next start (the supervisor lock held, no service running): partial cores, gdb's stacks output, a
/// compression's half-written output, gcore's log, a flight recorder the service was still creating.
/// Only regular files of defib's uid with those names, in defib's own directories, are touched; nothing is
/// followed.
public enum LeftoverFiles {
    /// The cores of incident `incidentID` of `service` in `coreDirectory` (`core.SERVICE.ID.PID`, or
    /// `….partial` from the native writer) that no incident records: each is checked with `CoreFileCheck`;
    /// a good one is kept (a partial renamed to its final name) — only the writer's last steps can have
    /// been missed, since it writes the headers after the memory — and anything else is deleted, since gdb
    /// cannot use a core without headers and notes, and retention would count junk. gcore's log of it goes too.
    /// `recordedCore`, the core the incident already records (a capture that finished), is left alone.
    public static func settleCores(coreDirectory: SafeDirectory, service: String, incidentID: Int64, recordedCore: String? = nil) -> [SettledCore] {
        let prefix = "core.\(service).\(incidentID)."
        var settled: [SettledCore] = []
        for name in entries(coreDirectory) where name.hasPrefix(prefix) && coreDirectory.path + "/" + name != recordedCore {
            let rest = String(name.dropFirst(prefix.count))
            if rest == "gcore.log" || rest.hasSuffix(".stacks.txt") { _ = removeOwnFile(coreDirectory, name); continue }
            let isPartial = rest.hasSuffix(NativeCoreWriter.partialSuffix)
            let pidText = isPartial ? String(rest.dropLast(NativeCoreWriter.partialSuffix.count)) : rest
            guard !pidText.isEmpty, pidText.allSatisfy(\.isNumber), let st = ownRegularFile(coreDirectory, name) else { continue }
            let found = coreDirectory.path + "/" + name
            let finalName = prefix + pidText
            let method = isPartial ? "native" : "gcore"
            switch CoreFileCheck.check(path: found) {
            case let .success(summary):
                if isPartial, renameat(coreDirectory.fd, name, coreDirectory.fd, finalName) != 0 {
                    let e = SystemError("rename(\(found))")
                    _ = removeOwnFile(coreDirectory, name)
                    settled.append(SettledCore(keptAt: nil, found: found, bytes: Int64(st.st_size), method: method,
                                               note: "partial core \(found) could not be kept (\(e)); deleted", problem: "\(e)"))
                    continue
                }
                let kept = coreDirectory.path + "/" + finalName
                settled.append(SettledCore(keptAt: kept, found: found, bytes: summary.bytes, method: method,
                                           note: "core \(kept) (\(summary.bytes) bytes, \(summary.threads) thread(s)) was being written when the supervisor died; its headers, notes and sizes check out, so it is kept, marked partial", problem: nil))
            case let .failure(problem):
                _ = removeOwnFile(coreDirectory, name)
                settled.append(SettledCore(keptAt: nil, found: found, bytes: Int64(st.st_size), method: method,
                                           note: "partial core \(found) (\(st.st_size) bytes) left by the dead supervisor deleted: \(problem.problem)",
                                           problem: problem.problem))
            }
        }
        return settled
    }

    /// The capture record and notes for an incident left open, from what `settleCores` found — the shape
    /// `IncidentStore.closeIncidentsLeftOpen`'s `settle` returns. nil capture: nothing was found (keep the
    /// incident's own record).
    public static func captureRecord(for incident: Incident, settled: [SettledCore]) -> (capture: CaptureRecord?, notes: [String]) {
        let notes = settled.map(\.note)
        if let path = incident.capture?.path, access(path, F_OK) == 0 { return (nil, notes) }   // the capture had finished
        if let kept = settled.first(where: { $0.keptAt != nil }) {
            return (CaptureRecord(method: kept.method, path: kept.keptAt, bytes: kept.bytes, durationMs: 0,
                                  error: "partial: the supervisor died while writing this core (it passed the core check)"), notes)
        }
        if let junk = settled.first {
            return (CaptureRecord(method: junk.method, path: nil, bytes: 0, durationMs: 0,
                                  error: "the supervisor died while writing the core; the partial file was not usable and was deleted (\(junk.problem ?? "unusable"))"), notes)
        }
        return (nil, notes)
    }

    /// Removes what a killed defib leaves besides cores of open incidents: `*.partial` cores (of an incident
    /// never stored), gdb's `*.stacks.txt`, gcore's `*.gcore.log`, a `.gz`/`.zst` beside the core it was being
    /// made from (the compressor did not finish; the core itself stays), and in the run directory a flight
    /// recorder the service was still creating (`flight-recorder.tmp.PID`). Returns the paths removed.
    @discardableResult
    public static func removeTemporaries(coreDirectory: SafeDirectory?, runDirectory: SafeDirectory?) -> [String] {
        var removed: [String] = []
        if let dir = coreDirectory {
            let names = Set(entries(dir))
            for name in names.sorted() {
                var junk = name.hasPrefix("core.") && (name.hasSuffix(NativeCoreWriter.partialSuffix) || name.hasSuffix(".stacks.txt") || name.hasSuffix(".gcore.log"))
                // A stall's stacks-only capture (`stall.…`) only lives until gdb has read it; a full one (`stall-core.…`)
                // is kept once complete, its partial file and gdb's output are not.
                if name.hasPrefix("stall.") { junk = true }
                if name.hasPrefix("stall-core.") && (name.hasSuffix(NativeCoreWriter.partialSuffix) || name.hasSuffix(".stacks.txt")) { junk = true }
                for ext in [".gz", ".zst"] where name.hasPrefix("core.") && name.hasSuffix(ext) && names.contains(String(name.dropLast(ext.count))) {
                    junk = true
                }
                if junk, removeOwnFile(dir, name) { removed.append(dir.path + "/" + name) }
            }
        }
        if let dir = runDirectory {
            for name in entries(dir) where name.hasPrefix("flight-recorder.tmp.") {
                if removeOwnFile(dir, name) { removed.append(dir.path + "/" + name) }
            }
        }
        return removed
    }

    /// The names in a directory (not "." and "..").
    static func entries(_ dir: SafeDirectory) -> [String] {
        let fd = openat(dir.fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0, let stream = fdopendir(fd) else { if fd >= 0 { Glibc.close(fd) }; return [] }
        defer { closedir(stream) }
        var names: [String] = []
        while let entry = readdir(stream) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }

    /// The file's stat when it is a regular file owned by defib's uid (never a link), else nil.
    static func ownRegularFile(_ dir: SafeDirectory, _ name: String) -> stat? {
        var st = stat()
        guard fstatat(dir.fd, name, &st, AT_SYMLINK_NOFOLLOW) == 0, (st.st_mode & S_IFMT) == S_IFREG, st.st_uid == geteuid() else { return nil }
        return st
    }

    /// Unlinks `name` when it is defib's own regular file.
    static func removeOwnFile(_ dir: SafeDirectory, _ name: String) -> Bool {
        guard ownRegularFile(dir, name) != nil else { return false }
        return unlinkat(dir.fd, name, 0) == 0
    }
}
