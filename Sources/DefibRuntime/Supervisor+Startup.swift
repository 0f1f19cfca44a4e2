import DefibCore
import DefibPOSIX
import DefibStore
import Foundation
import Logging

/// What `defib run` settles before the supervisor starts, in this order: the state, run and core
/// directories are safe (`SafeDirectory`); no other supervisor has the service (`SupervisorLock`, held
/// until exit); the program can be executed; what a dead supervisor left is cleaned up (its processes, by
/// cgroup; its open incidents, closed `supervisor-died`; its partial cores and temporary files); and the
/// incident store opens — a damaged one moved aside, never a reason not to supervise. Anything that
/// cannot work is refused here, exit 64, naming the path, pid or program.
final class SupervisorStartup {
    /// The state, run, core and notify directories, checked, and where the service's files go.
    let directories: ServiceDirectories
    let lock: SupervisorLock
    let store: IncidentStore
    /// The service's cgroup, or why there is none (one line for the log).
    let cgroup: Result<ServiceCgroup, CgroupUnavailable>
    /// The program path the first start will execute.
    let program: String

    private init(directories: ServiceDirectories, lock: SupervisorLock, store: IncidentStore, cgroup: Result<ServiceCgroup, CgroupUnavailable>,
                 program: String) {
        self.directories = directories; self.lock = lock; self.store = store; self.cgroup = cgroup; self.program = program
    }

    /// Runs every check and clean-up; throws `SupervisorSetupError` (`defib run` exits 64 with it) for what cannot work.
    /// `credentials`: the service's identity, resolved by the caller (nil: defib's own).
    static func prepare(_ cfg: SupervisorConfig, credentials: ProcessCredentials?, logger: Logger) throws -> SupervisorStartup {
        let name = cfg.service.name
        do {
            let directories = try ServiceDirectories.open(cfg, credentials: credentials)
            let run = directories.run
            let lock: SupervisorLock
            do { lock = try SupervisorLock.acquire(in: run, service: name) } catch { throw SupervisorSetupError("\(error)") }
            if let previous = lock.previousHolder {
                logger.info("took over the supervisor lock of \(name) from pid \(previous), which is no longer running")
            }
            try directories.openToService()
            if let credentials { logger.info("the service runs as \(credentials.summary)") }
            for warning in directories.warnings { logger.warning("\(warning)") }
            let cores = directories.cores
            let searchPath = cfg.service.environment["PATH"] ?? ProcessInfo.processInfo.environment["PATH"]
            let program: String
            switch ProgramCheck.resolve(cfg.service.argv[0], searchPath: searchPath) {
            case let .success(path): program = path
            case let .failure(problem): throw SupervisorSetupError("\(problem)")
            }

            // A dead supervisor's processes first, so nothing of it still writes while its files are settled.
            let cgroup = ServiceCgroup.prepare(stateDirectory: cfg.stateDirectory, service: name, runDirectory: run)
            switch cgroup {
            case let .success(group):
                for note in group.notes { logger.info("\(note)") }
                if !group.leftoversKilled.isEmpty {
                    logger.warning("killed \(group.leftoversKilled.count) process(es) a dead supervisor of \(name) left in its cgroup: \(group.leftoversKilled.prefix(20).map(String.init).joined(separator: ", "))\(group.leftoversKilled.count > 20 ? ", …" : "")")
                }
                logger.debug("service cgroup \(group.path)")
            case let .failure(unavailable):
                logger.warning("\(unavailable)")
            }

            let store: IncidentStore
            do {
                let opened = try IncidentStore.openRecovering(stateDirectory: cfg.stateDirectory)
                store = opened.store
                if let damaged = opened.damaged {
                    // Loud: on stderr whatever the log goes to, and as the log's most severe line.
                    FileHandle.standardError.write(Data("defib run: \(damaged)\n".utf8))
                    logger.critical("\(damaged)")
                }
            } catch {
                throw SupervisorSetupError("cannot open the incident store in \(cfg.stateDirectory): \(error)")
            }

            let note = "the supervisor\(lock.previousHolder.map { " (pid \($0))" } ?? "") died while this incident was open; closed by the next one (pid \(ProcessInfo.processInfo.processIdentifier)) at its start"
            do {
                let closed = try store.closeIncidentsLeftOpen(service: name, note: note) { incident in
                    guard let id = incident.id else { return (nil, []) }
                    let settled = LeftoverFiles.settleCores(coreDirectory: cores, service: name, incidentID: id, recordedCore: incident.capture?.path)
                    return LeftoverFiles.captureRecord(for: incident, settled: settled)
                }
                for incident in closed {
                    logger.warning("incident \(incident.id.map(String.init) ?? "?") (\(incident.cause.kind), detected \(RFC3339.string(incident.detectedAt))) was left open by a dead supervisor: closed as supervisor-died\(incident.notes.count > 1 ? "; " + incident.notes.suffix(from: incident.notes.count - 1).joined() : "")")
                }
            } catch {
                logger.error("could not close incidents a dead supervisor left open: \(error)")
            }
            for path in LeftoverFiles.removeTemporaries(coreDirectory: cores, runDirectory: run) {
                logger.info("removed \(path), left unfinished by a supervisor or service that was killed")
            }
            return SupervisorStartup(directories: directories, lock: lock, store: store, cgroup: cgroup, program: program)
        } catch let error as UnsafeDirectoryError {
            throw SupervisorSetupError("\(error)")
        }
    }

    /// At exit: the (empty) service cgroup goes; the lock is released when this object goes.
    func finish() {
        if case let .success(group) = cgroup { group.remove(waitMs: 2000) }
        lock.release()
    }
}
