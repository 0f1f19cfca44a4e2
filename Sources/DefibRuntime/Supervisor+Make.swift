import DefibCore
import DefibPOSIX
import DefibStore
import Logging

/// A configuration that cannot work, named on one line (`defib run` exits 64 with it).
public struct SupervisorSetupError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}

extension Supervisor {
    /// Blocks the signals the supervisor handles and returns their queue. Call it first thing, before any
    /// library starts a thread: a thread that does not block SIGTERM would take its default action.
    public static func takeOverSignals() throws -> SignalQueue { try SystemEffects.takeOverSignals() }

    /// The supervisor `defib run` runs for `config`, on this system: what `SupervisorStartup` settles (safe
    /// directories, the supervisor lock, the service's identity and cgroup, what a dead supervisor left, the
    /// incident store), the sockets passed to every instance (a port already taken is a configuration error,
    /// before any child starts), the metrics endpoint and the NOTIFY_SOCKET. `run()` then supervises until the end.
    public static func make(config: SupervisorConfig, signals: SignalQueue, logger: Logger) throws -> (Supervisor, MetricsEndpoint?) {
        // One supervisor, safe directories, a runnable program, what a dead supervisor left settled, a usable store.
        let startup = try SupervisorStartup.prepare(config, logger: logger)
        let store = startup.store
        var passed: [(name: String, fd: Int32)] = []
        for spec in config.sockets {
            do {
                let socket = try ListeningSocket.bind(name: spec.name, host: spec.host, port: spec.port)
                passed.append((socket.name, socket.fd))
                logger.info("socket '\(spec.name)' listening on \(socket.address), passed to every instance")
            } catch {
                startup.finish()
                throw SupervisorSetupError("\(error)")
            }
        }
        var endpoint: MetricsEndpoint?
        if let listen = config.metricsListen, let address = SocketSpec.parseAddress(listen) {
            do { endpoint = try MetricsEndpoint(host: address.host, port: address.port) } catch {
                startup.finish()
                throw SupervisorSetupError("metrics on \(listen): \(error)")
            }
            logger.info("Prometheus metrics on http://\(listen)/metrics")
        }
        do {
            let effects = try SystemEffects(config: config, store: store, signals: signals, passedSockets: passed,
                                            directories: startup.directories, cgroup: try? startup.cgroup.get())
            effects.onWarning = { [logger] in logger.warning("\($0)") }
            for warning in effects.warnings where !startup.directories.warnings.contains(warning) { logger.warning("\(warning)") }
            let setup = Supervision.Setup(config: config, managerWatchdogUsec: effects.managerWatchdogUsec,
                                          managerListening: effects.managerListening, childrenBeforeUs: effects.childrenBeforeUs,
                                          paths: startup.directories.paths)
            let supervisor = Supervisor(setup, effects: effects, logger: logger)
            supervisor.startup = startup
            return (supervisor, endpoint)
        } catch {
            endpoint?.close()
            startup.finish()
            throw error
        }
    }
}
