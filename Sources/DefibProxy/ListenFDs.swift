import Glibc

/// A listening socket inherited from the parent (systemd's socket-passing protocol).
public struct PassedSocket: Sendable, Equatable {
    /// The descriptor: 3, 4, …
    public var fd: Int32
    /// Its name from LISTEN_FDNAMES, or "unknown" as systemd says when none was given.
    public var name: String
}

/// A malformed LISTEN_* environment.
public struct ListenFDsError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The offending variable.
    public var variable: String
    /// Its value.
    public var value: String
    /// What is wrong with it.
    public var problem: String
    /// "LISTEN_FDS='x': not a positive number".
    public var description: String { "\(variable)='\(value)': \(problem)" }
}

/// systemd's `sd_listen_fds_with_names`, as a pure function of the environment and our pid.
public enum ListenFDs {
    /// The first passed descriptor (SD_LISTEN_FDS_START).
    public static let firstFD: Int32 = 3
    /// The variables of the protocol, unset after reading so children do not inherit them.
    public static let variables = ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"]

    /// The passed sockets, or nil when none were passed to *this* process (no LISTEN_FDS, or a
    /// LISTEN_PID naming another process: the variables leaked from an ancestor).
    public static func parse(environment: [String: String], pid: Int32) throws(ListenFDsError) -> [PassedSocket]? {
        guard let countText = environment["LISTEN_FDS"] else { return nil }
        if let pidText = environment["LISTEN_PID"] {
            guard let listenPid = Int32(pidText), listenPid > 0 else {
                throw ListenFDsError(variable: "LISTEN_PID", value: pidText, problem: "not a process id")
            }
            if listenPid != pid { return nil }
        } else {
            // systemd requires LISTEN_PID; without it the descriptors may belong to an ancestor.
            return nil
        }
        guard let count = Int32(countText), count > 0, count <= 4096 else {
            throw ListenFDsError(variable: "LISTEN_FDS", value: countText, problem: "not a number of descriptors in 1…4096")
        }
        var names = Array(repeating: "unknown", count: Int(count))
        if let namesText = environment["LISTEN_FDNAMES"] {
            let given = namesText.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
            guard given.count == Int(count) else {
                throw ListenFDsError(variable: "LISTEN_FDNAMES", value: namesText,
                                     problem: "\(given.count) name(s) for LISTEN_FDS=\(count) descriptor(s)")
            }
            names = given
        }
        return (0..<count).map { PassedSocket(fd: firstFD + $0, name: names[Int($0)]) }
    }

    /// Reads the protocol from the real environment, then unsets its variables. Call before any
    /// thread starts (setenv/unsetenv are not thread-safe).
    public static func takeFromEnvironment() throws(ListenFDsError) -> [PassedSocket]? {
        var env: [String: String] = [:]
        for v in variables { if let value = environmentValue(v) { env[v] = value } }
        for v in variables { unsetenv(v) }
        let sockets = try parse(environment: env, pid: getpid())
        // We never exec, but a passed descriptor must not leak into anything we might start.
        sockets?.forEach { setCloseOnExec($0.fd) }
        return sockets
    }
}
