import DefibCore
import DefibPOSIX
import DefibTestKit
import Foundation
import Glibc
import Testing

/// The kernel's dump onto a full file system: the kernel reports "core dumped" and leaves an empty or cut
/// file. defib checks the file, not the flag: no core is recorded, the junk is deleted, the capture error
/// says why, and the service is restarted all the same.
@Suite(.serialized, .timeLimit(.minutes(2)))
struct DiskFullCaptureTests {
    @Test(.enabled(if: (try? String(contentsOfFile: "/proc/sys/kernel/core_pattern", encoding: .utf8))?.hasPrefix("core") == true,
                   "core_pattern is not a plain relative file here"))
    func aKernelCoreCutByAFullDiskIsNotRecorded() throws {
        try #require(geteuid() == 0, "mounting a tmpfs needs root")
        let dir = Scratch("kernel-full"); defer { dir.remove() }
        try withTmpfs(size: "512k", name: "kernel-core") { work in
            try work.fill()
            let state = dir.path + "/state"
            let config = try writePingableConfig(at: dir.path + "/defib.toml", stateDir: state, name: "full", mode: "hang-after:5",
                                                 serviceExtra: "working_directory = \"\(work.path)\"",
                                                 extra: "[capture]\nmethod = \"kernel\"\nstacks = false\n")
            let defib = try Background([Binaries.defib, "run", "--config", config], log: dir.path + "/defib.log")
            defer { defib.stop() }
            var incident: [String: Any]?
            let recovered = waitUntil(timeoutMs: 60_000) {
                incident = ((try? incidentsJSON(stateDir: state)) ?? []).first { $0["outcome"] as? String == "recovered" }
                return incident != nil
            }
            try #require(recovered, "restarted although the core could not be written: \(defib.log)")
            let found = try #require(incident)
            #expect(found["capture_method"] as? String == "kernel")
            #expect(found["core_path"] is NSNull, "\(found)")
            let error = found["capture_error"] as? String ?? ""
            #expect(error.hasPrefix("the kernel dumped a core, but core \(work.path)/core") && error.contains("is not usable") && error.contains("deleted"),
                    "\(error)")
            #expect(work.entries().isEmpty, "the kernel's junk is gone: \(work.entries())")
        }
    }
}
