import ArgumentParser
import DefibCore
import DefibFleet
import DefibRuntime
import DefibStore
import Logging

/// `defib run`'s fleet flags: they override the `[fleet]` table.
struct FleetRunOptions: ParsableArguments {
    @Option(name: .customLong("fleet-url"), help: ArgumentHelp("Ship incidents to this PostgreSQL (no password in it: PGPASSWORD or --fleet-password-file).", valueName: "postgresql://USER@HOST:PORT/DB"))
    var url: String?

    @Option(name: .customLong("fleet-host"), help: "This host's name in the fleet (default: the hostname).")
    var host: String?

    @Option(name: .customLong("fleet-password-file"), help: "A file (0600) whose first line is the fleet database password.")
    var passwordFile: String?

    /// Merges the flags into `cfg.fleet`.
    func apply(to cfg: inout SupervisorConfig) throws {
        if let url {
            if cfg.fleet == nil { cfg.fleet = FleetSettings(url: url) } else { cfg.fleet!.url = url }
        }
        guard cfg.fleet != nil else {
            if host != nil || passwordFile != nil { throw ValidationError("--fleet-host and --fleet-password-file need --fleet-url (or [fleet] url)") }
            return
        }
        if let host { cfg.fleet!.host = host }
        if let passwordFile { cfg.fleet!.passwordFile = passwordFile }
    }
}

/// Starts shipping the store's outbox when `[fleet]` is configured, off the supervision loop (which asks it
/// for its backlog, for STATUS=). A password file that cannot be used is a configuration error
/// (exit 64); a database that cannot be reached is not: the shipper retries while the service is supervised.
func startFleetShipper(_ cfg: SupervisorConfig, store: IncidentStore, logger: Logger) throws -> FleetShipper? {
    guard let fleet = cfg.fleet else { return nil }
    let shipper: FleetShipper
    do {
        shipper = try FleetShipper(store: store, settings: .init(fleet), logger: logger)
    } catch {
        throw ValidationError("fleet: \(error)")
    }
    shipper.start()
    return shipper
}

/// Stops the shipper at exit: a last attempt of a few seconds to ship what is pending (the rest stays in the
/// outbox for the next start).
func stopFleetShipper(_ shipper: FleetShipper?) {
    guard let shipper else { return }
    shipper.stop(flushWithin: .seconds(3))
}
