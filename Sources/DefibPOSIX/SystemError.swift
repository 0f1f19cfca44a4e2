@_exported import DefibSystem
import Glibc

// SystemError, retryingEINTR and the clocks come from DefibSystem, shared with the proxy and the lock.

/// Creates `path` and its missing parents, the last one with `mode`, or checks the existing one — through
/// `SafeDirectory`: never following a link to it, never changing the mode or owner of a directory defib did
/// not create, and refusing one that is not defib's own or that others may write (`UnsafeDirectoryError`).
public func makeDirectory(_ path: String, mode: mode_t) throws {
    _ = try SafeDirectory.open(path, mode: mode, create: true, role: "directory")
}
