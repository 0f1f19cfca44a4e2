import Foundation
import Glibc

/// The second user the ownership cases need: a real account that is not root. `nobody` exists on every
/// Debian machine; its uid and gid are read from the password database, not assumed.
public enum OtherUser {
    /// (uid, gid) of `nobody`.
    public static var nobody: (uid: uid_t, gid: gid_t) {
        guard let pw = getpwnam("nobody") else { return (65534, 65534) }
        return (pw.pointee.pw_uid, pw.pointee.pw_gid)
    }

    /// `argv` as `nobody`, through setpriv (real and effective ids, no supplementary groups): the argv to
    /// hand to a process runner.
    public static func asNobody(_ argv: [String]) -> [String] {
        let user = nobody
        return ["setpriv", "--reuid=\(user.uid)", "--regid=\(user.gid)", "--clear-groups", "--"] + argv
    }
}

/// A directory under /tmp for one test, removed at the end.
public final class ScratchDirectory: @unchecked Sendable {
    /// Its path.
    public let path: String
    public init(_ name: String) {
        path = "/tmp/defib-test-\(name)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        mkdir(path, 0o755)
    }
    /// Removes it and everything inside.
    public func remove() { try? FileManager.default.removeItem(atPath: path) }
    deinit { remove() }
}
