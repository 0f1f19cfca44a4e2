import DefibPOSIX
import DefibTestKit
import Foundation
import Glibc
import Testing

/// A program that cannot be executed is named before the first start, the way execvp would fail.
@Suite struct ProgramCheckTests {
    func problem(_ program: String, path: String? = nil) -> String? {
        if case let .failure(p) = ProgramCheck.resolve(program, searchPath: path) { return p.description }
        return nil
    }

    @Test func eachWayOfNotBeingRunnableIsNamed() throws {
        let scratch = ScratchDirectory("progcheck")
        try "#!/bin/sh\n".write(toFile: scratch.path + "/plain", atomically: false, encoding: .utf8)
        chmod(scratch.path + "/plain", 0o644)
        try "#!/bin/sh\n".write(toFile: scratch.path + "/tool", atomically: false, encoding: .utf8)
        chmod(scratch.path + "/tool", 0o755)
        #expect(problem("/nonexistent/defib-prog") == "cannot run /nonexistent/defib-prog: no such file")
        #expect(problem(scratch.path + "/plain") == "cannot run \(scratch.path)/plain: is not executable (mode 644)")
        #expect(problem(scratch.path) == "cannot run \(scratch.path): is a directory")
        #expect(problem("/dev/null") == "cannot run /dev/null: is not a regular file")
        #expect(problem("/etc/passwd/x") == "cannot run /etc/passwd/x: a component of the path is not a directory")
        #expect(problem("") == "cannot run : the program name is empty")
        #expect(problem("defib-no-such-tool", path: "/usr/bin:\(scratch.path)") == "cannot run defib-no-such-tool: not found in PATH (/usr/bin:\(scratch.path))")
        // Found in PATH but not executable: execvp's EACCES, with the candidate named.
        #expect(problem("plain", path: "/usr/bin:\(scratch.path)") == "cannot run plain: found in PATH but not runnable: \(scratch.path)/plain is not executable (mode 644)")
        #expect(try ProgramCheck.resolve("tool", searchPath: "/nonexistent:\(scratch.path)").get() == scratch.path + "/tool")
        #expect(try ProgramCheck.resolve("sh", searchPath: "/usr/bin:/bin").get().hasSuffix("/sh"))
        #expect(try ProgramCheck.resolve(scratch.path + "/tool").get() == scratch.path + "/tool")
    }
}
