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
    /// `startShipping` is given the store, once it is open and the metrics backend is up, to start work beside
    /// the loop on that same store (the fleet shipper, which must share the store the loop writes); what it
    /// throws ends the setup before any child starts, and the reporter it returns is asked for its backlog for
    /// STATUS=.
    public static func make(config: SupervisorConfig, signals: SignalQueue, logger: Logger,
                            startShipping: (IncidentStore) throws -> (any ShippingReporter)? = { _ in nil }) throws -> (Supervisor, MetricsEndpoint?) {
        // The service's identity is resolved once (a restart never waits for the user database), and the probe's
        // host (its program found, to run as that identity) once, here: an attempt never blocks on a resolver.
        // Both before anything is made or taken, so a mistake leaves nothing behind.
        let credentials: ProcessCredentials?
        do { credentials = try ProcessCredentials.resolve(config.service) } catch { throw SupervisorSetupError("\(error)") }
        var probe: ResolvedProbe?
        do {
            probe = try config.heartbeat.probeSpec().map { try ResolvedProbe.resolve($0, credentials: credentials) }
        } catch {
            throw SupervisorSetupError("heartbeat.probe: \(error)")
        }
        if let probe {
            logger.info("heartbeat: \(probe.spec.name)\(probe.address.map { " (\($0))" } ?? "") every \(config.heartbeat.intervalMs) ms, each within \(probe.spec.timeoutMs) ms")
        }
        // One supervisor, safe directories, a runnable program, what a dead supervisor left settled, a usable store.
        let startup = try SupervisorStartup.prepare(config, credentials: credentials, logger: logger)
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
            // After the metrics endpoint: the shipper's own metrics must find its backend in place.
            let shipping = try startShipping(store)
            let effects = try SystemEffects(config: config, store: store, signals: signals, passedSockets: passed, probe: probe,
                                            shipping: shipping, directories: startup.directories, cgroup: try? startup.cgroup.get())
            effects.onWarning = { [logger] in logger.warning("\($0)") }
            for warning in effects.warnings where !startup.directories.warnings.contains(warning) { logger.warning("\(warning)") }
            let setup = Supervision.Setup(config: config, managerWatchdogUsec: effects.managerWatchdogUsec,
                                          managerListening: effects.managerListening, childrenBeforeUs: effects.childrenBeforeUs,
                                          underJournald: effects.underJournald, hostname: effects.hostname,
                                          shipping: shipping != nil, paths: startup.directories.paths)
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
