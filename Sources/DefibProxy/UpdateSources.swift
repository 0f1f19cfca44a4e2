import DefibSystem
import Glibc
import Logging
import Synchronization

/// Where catalog updates come from (`--updates`).
public enum UpdateSource: Sendable, Equatable, CustomStringConvertible {
    /// A file read from the start and then followed like `tail -F` (truncation and replacement handled).
    case file(String)
    /// A Unix stream socket; every connection writes update lines.
    case unixSocket(String)

    /// Parses `--updates`: `unix:PATH` or a file path.
    public static func parse(_ text: String) throws(ProxyConfigError) -> UpdateSource {
        if text.hasPrefix("unix:") {
            let path = String(text.dropFirst(5))
            guard !path.isEmpty else { throw ProxyConfigError(option: "--updates", value: text, problem: "empty socket path after 'unix:'") }
            guard path.utf8.count <= maxUnixSocketPath else {
                throw ProxyConfigError(option: "--updates", value: text, problem: "socket path longer than \(maxUnixSocketPath) bytes")
            }
            return .unixSocket(path)
        }
        guard !text.isEmpty else { throw ProxyConfigError(option: "--updates", value: text, problem: "empty path") }
        return .file(text)
    }

    /// As given on the command line.
    public var description: String {
        switch self { case let .file(p): p; case let .unixSocket(p): "unix:\(p)" }
    }
}

/// Splits a byte stream into lines, numbering them, and parses each as a route update. Bad lines are
/// reported with their source and line number and skipped: one typo must not stop the stream.
struct UpdateLineReader {
    let source: String
    private var partial: [UInt8] = []
    private(set) var lineNumber = 0
    static let maxLine = 4096

    init(source: String) { self.source = source }

    /// Feeds bytes; returns parsed updates and errors in order.
    mutating func feed<C: Collection>(_ bytes: C) -> [Result<RouteUpdate, RouteError>] where C.Element == UInt8 {
        var out: [Result<RouteUpdate, RouteError>] = []
        for b in bytes {
            if b != 10 {
                if partial.count <= Self.maxLine { partial.append(b) }
                continue
            }
            lineNumber += 1
            defer { partial.removeAll(keepingCapacity: true) }
            if partial.count > Self.maxLine {
                out.append(.failure(RouteError(kind: .wrongArity, problem: "line longer than \(Self.maxLine) bytes", file: source, line: lineNumber)))
                continue
            }
            do {
                if let u = try RouteGrammar.parseLine(Substring(decoding: partial, as: UTF8.self)) { out.append(.success(u)) }
            } catch {
                var e = error
                e.file = source; e.line = lineNumber
                out.append(.failure(e))
            }
        }
        return out
    }

    /// Restarts numbering (the followed file was truncated or replaced).
    mutating func reset() { partial.removeAll(); lineNumber = 0 }
}

/// A source of catalog updates on a plain thread of its own (named, so it shows in a core), running
/// `run()` until `stop()`.
class UpdateSourceThread: @unchecked Sendable {
    let threadName: String
    let updater: CatalogUpdater
    private let stopped = Atomic<Bool>(false)

    init(threadName: String, updater: CatalogUpdater) { self.threadName = threadName; self.updater = updater }

    final func start() { startThread(name: threadName) { [self] in run() } }
    final func stop() { stopped.store(true, ordering: .relaxed) }
    final var isStopped: Bool { stopped.load(ordering: .relaxed) }

    /// The thread's work; returns once `isStopped`.
    func run() {}
}

/// Follows an update file like `tail -F` on its own thread.
final class UpdateFileFollower: UpdateSourceThread, @unchecked Sendable {
    let path: String
    private let logger: Logger

    init(path: String, updater: CatalogUpdater, logger: Logger) {
        self.path = path; self.logger = logger
        super.init(threadName: "updates-file", updater: updater)
    }

    override func run() {
        var reader = UpdateLineReader(source: path)
        var fd: Int32 = -1
        var inode: ino_t = 0
        var offset: off_t = 0
        var warnedMissing = false
        var buffer = [UInt8](repeating: 0, count: 65536)
        defer { if fd >= 0 { close(fd) } }
        while !isStopped {
            if fd < 0 {
                fd = open(path, O_RDONLY | O_CLOEXEC)
                if fd < 0 {
                    if !warnedMissing { logger.warning("updates file \(path): \(SystemError("open(\(path))")); waiting for it to appear"); warnedMissing = true }
                    sleepNanoseconds(200_000_000)
                    continue
                }
                var st = stat()
                fstat(fd, &st)
                inode = st.st_ino; offset = 0; reader.reset(); warnedMissing = false
                logger.info("following updates file \(path)")
            }
            let n = buffer.withUnsafeMutableBytes { b in retryingEINTR { read(fd, b.baseAddress, b.count) } }
            if n > 0 {
                offset += off_t(n)
                for r in reader.feed(buffer[0..<n]) {
                    switch r {
                    case let .success(u): updater.submit(u, source: "\(path):\(reader.lineNumber)")
                    case let .failure(e): logger.warning("bad update line: \(e)")
                    }
                }
                continue
            }
            if n < 0 { logger.error("\(SystemError("read(\(path))")); reopening"); close(fd); fd = -1; continue }
            // At the end: notice truncation (start over) and replacement (reopen), else poll again.
            var st = stat()
            if fstat(fd, &st) == 0 && st.st_size < offset {
                logger.info("updates file \(path) was truncated; reading from the start")
                lseek(fd, 0, SEEK_SET); offset = 0; reader.reset()
                continue
            }
            var now = stat()
            if stat(path, &now) != 0 || now.st_ino != inode {
                logger.info("updates file \(path) was replaced; reopening")
                close(fd); fd = -1
                continue
            }
            sleepNanoseconds(100_000_000)
        }
    }
}

/// The built-in churn generator: RATE updates per second flipping machines of existing apps.
final class ChurnGenerator: UpdateSourceThread, @unchecked Sendable {
    private let catalog: Catalog
    private let rate: Double

    init(catalog: Catalog, updater: CatalogUpdater, rate: Double) {
        self.catalog = catalog; self.rate = rate
        super.init(threadName: "catalog-churn", updater: updater)
    }

    override func run() {
        var rng = SystemRandomNumberGenerator()
        let period = Int64(1_000_000_000 / max(rate, 0.001))
        var next = monotonicNanoseconds()
        while !isStopped {
            next += period
            // Plan from the current table (a read, like any request), and only when the updater keeps
            // up: a stuck lock must not grow the queue without bound.
            if updater.pending < 16, let update = ChurnPlanner.next(in: catalog.snapshot(), using: &rng) {
                updater.submit(update, source: "churn")
            }
            let now = monotonicNanoseconds()
            if next > now { sleepNanoseconds(UInt64(next - now)) } else { next = now }
        }
    }
}

/// The periodic full reload: rebuilds the table from the routes (file + flags) plus the stream's changes
/// and installs it with an untimed `catalog.write(label: "catalog.reload")`. Also runs on demand (SIGHUP).
final class CatalogReloader: @unchecked Sendable {
    private let catalog: Catalog
    private let updater: CatalogUpdater
    private let routesFile: String?
    private let routeFlags: [RouteUpdate]
    private let intervalNs: Int64?
    private let stats: ProxyStats
    private let logger: Logger
    private let condition = ThreadCondition()
    private var requested = false
    private var stopped = false

    init(catalog: Catalog, updater: CatalogUpdater, routesFile: String?, routeFlags: [RouteUpdate],
         intervalMs: Int, stats: ProxyStats, logger: Logger) {
        self.catalog = catalog; self.updater = updater; self.routesFile = routesFile; self.routeFlags = routeFlags
        self.intervalNs = intervalMs > 0 ? Int64(intervalMs) * 1_000_000 : nil
        self.stats = stats; self.logger = logger
    }

    func start() { startThread(name: "catalog-reload") { [self] in run() } }

    /// Asks for a reload now (SIGHUP).
    func requestReload() { condition.locked { requested = true; condition.broadcast() } }

    func stop() { condition.locked { stopped = true; condition.broadcast() } }

    /// Builds the table a reload would install: routes file + `--route` flags + the stream's changes.
    func buildTable() throws(RouteError) -> CatalogTable {
        var updates = routeFlags
        if let routesFile { updates += try RouteGrammar.parseRoutesFile(atPath: routesFile) }
        var table = CatalogTable()
        for u in updates + updater.overlayUpdates { _ = try? table.apply(u) }
        return table
    }

    private func run() {
        while true {
            let proceed: Bool = condition.locked {
                let deadline = intervalNs.map { monotonicNanoseconds() + $0 }
                while !requested && !stopped {
                    if !condition.wait(untilMonotonicNs: deadline) { break }
                }
                requested = false
                return !stopped
            }
            guard proceed else { return }
            let table: CatalogTable
            do { table = try buildTable() } catch {
                logger.error("reload skipped, keeping the current catalog: \(error)")
                continue
            }
            catalog.reload(table)
            stats.reloads.wrappingAdd(1, ordering: .relaxed)
            logger.debug("catalog reloaded: \(table.appCount) apps, \(table.machineCount) machines")
        }
    }
}
