/// Where a service's sockets and flight recorder are, as the supervision hands them to the service and uses
/// them itself. A service that runs as defib's own user keeps them in the run directory (`run/NAME`, 0700); one
/// that runs as another user gets them in `run/NAME/instance`, a directory defib makes anew at every start with
/// the service's group (it must create its control socket and flight recorder there, and defib must never rely
/// on a directory the service could have prepared). The NOTIFY_SOCKET is elsewhere either way
/// (`SupervisorConfig.notifySocketPath`): open to every local user, senders told apart by pid.
public struct ServicePaths: Sendable, Equatable {
    /// The socket the service listens on for `ping` (`DEFIB_CONTROL_SOCKET`).
    public var controlSocket: String
    /// The NOTIFY_SOCKET served to the service.
    public var notifySocket: String
    /// `DEFIB_FLIGHT_RECORDER`: where a ParkingLock service writes its lock telemetry.
    public var flightRecorder: String
    /// Made anew before each start (another user's service); nil when the run directory itself is used.
    public var instanceDirectory: String?

    public init(controlSocket: String, notifySocket: String, flightRecorder: String, instanceDirectory: String? = nil) {
        self.controlSocket = controlSocket; self.notifySocket = notifySocket
        self.flightRecorder = flightRecorder; self.instanceDirectory = instanceDirectory
    }

    /// The paths for `config`; `anotherUser` when the service runs as a user other than defib's. A control
    /// socket the configuration puts elsewhere stays where it says.
    public init(_ config: SupervisorConfig, anotherUser: Bool = false) {
        if anotherUser {
            let instance = config.instanceDirectory
            self.init(controlSocket: config.heartbeat.controlSocket ?? instance + "/control.sock", notifySocket: config.notifySocketPath,
                      flightRecorder: instance + "/flight-recorder", instanceDirectory: instance)
        } else {
            self.init(controlSocket: config.controlSocketPath, notifySocket: config.notifySocketPath,
                      flightRecorder: config.runDirectory + "/flight-recorder")
        }
    }
}
