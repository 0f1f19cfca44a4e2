@_exported import DefibSystem
import Glibc

// SystemError, retryingEINTR and the clocks come from DefibSystem, shared with the proxy and the lock.

/// Creates `path` and its parents with `mode` (only the last component gets `mode` enforced).
public func makeDirectory(_ path: String, mode: mode_t) throws {
    var built = path.hasPrefix("/") ? "" : "."
    for part in path.split(separator: "/") {
        built += "/" + part
        if mkdir(built, 0o755) != 0 && errno != EEXIST { throw SystemError("mkdir(\(built))") }
    }
    if chmod(path, mode) != 0 { throw SystemError("chmod(\(path))") }
}
