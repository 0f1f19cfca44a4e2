import Foundation
import Glibc

/// The repository and its install machinery, driven the way an operator does: `make install`, `make deb`.
/// The binaries are the ones built for the tests (a release build would take minutes): `SKIP_BUILD=1
/// BUILD_DIR=<the test build>`.
enum Install {
    static let repository = ((#filePath as NSString).deletingLastPathComponent as NSString)
        .appendingPathComponent("../..").standardizingPath
    /// The VERSION file: what `--version`, the .deb and the man pages must all say.
    static var version: String {
        ((try? String(contentsOfFile: repository + "/VERSION", encoding: .utf8)) ?? "")
            .trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// `make -C REPO ARGS…`.
    static func make(_ arguments: [String], env: [String: String] = [:], timeoutMs: Int = 240_000) throws -> CommandResult {
        try runCommand(["make", "--no-print-directory", "-C", repository] + arguments, env: env, timeoutMs: timeoutMs)
    }

    /// `make install SKIP_BUILD=1 BUILD_DIR=<test build> DESTDIR=D PREFIX=P`, failing the test on a non-zero exit.
    static func install(into destdir: String, prefix: String = "/usr") throws {
        let r = try make(["install", "SKIP_BUILD=1", "BUILD_DIR=\(Binaries.directory)", "DESTDIR=\(destdir)", "PREFIX=\(prefix)"])
        guard r.code == 0 else { throw TestFailure("make install failed (\(r.code)):\n\(r.stdout)\n\(r.stderr)") }
    }

    /// Every regular file and link under `root`, as paths relative to it ("usr/bin/defib").
    static func files(under root: String) -> [String] {
        guard let walker = FileManager.default.enumerator(atPath: root) else { return [] }
        var out: [String] = []
        while let path = walker.nextObject() as? String {
            var st = stat()
            if lstat(root + "/" + path, &st) == 0, st.st_mode & S_IFMT != S_IFDIR { out.append(path) }
        }
        return out.sorted()
    }

    /// Nil when a throwaway root (an overlay of / in a private mount namespace) can be made here, else why not.
    static let throwawayRootUnavailable: String? = {
        if getuid() != 0 { return "needs root for a mount namespace" }
        if (try? runCommand(["unshare", "-m", "--propagation", "private", "true"], timeoutMs: 10_000).code) != 0 {
            return "cannot create a mount namespace here"
        }
        return nil
    }()

    /// Runs `command` chrooted into a throwaway copy of this machine's root (scripts/throwaway-root.sh).
    static func inThrowawayRoot(copy: [String] = [], put: [String] = [], hide: [String] = [], _ command: String,
                                timeoutMs: Int = 120_000) throws -> CommandResult {
        var argv = ["bash", repository + "/scripts/throwaway-root.sh"]
        for d in copy { argv += ["--copy", d] }
        for f in put { argv += ["--put", f] }
        for h in hide { argv += ["--hide", h] }
        return try runCommand(argv + ["--", "bash", "-c", command], timeoutMs: timeoutMs)
    }

    /// `man --warnings=w -l PAGE` (every groff warning on), as a reader's terminal would render it.
    static func renderManPage(_ path: String) throws -> CommandResult {
        try runCommand(["man", "--warnings=w", "-l", path], env: ["LC_ALL": "C.UTF-8", "MANWIDTH": "80", "MANPAGER": "cat", "PAGER": "cat"])
    }
}
