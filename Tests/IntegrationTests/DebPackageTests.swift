import Foundation
import Glibc
import Testing

/// `make deb`: one defib_VERSION_ARCH.deb, its path printed last, with the layout Debian expects, Depends: on
/// the packages of the libraries the binaries really link, and installable with dpkg into a throwaway root
/// where `defib --help` runs.
///
/// The test binaries link the Swift runtime of the toolchain in /opt/swift (a debug build); `make deb` proper
/// builds with --static-swift-stdlib. So the package here is built with ALLOW_UNPACKAGED_LIBS=1, and a
/// second check shows that without it `make deb` refuses such binaries, naming the libraries.
@Suite(.timeLimit(.minutes(6)))
struct DebPackageTests {
    static var architecture: String {
        ((try? runCommand(["dpkg", "--print-architecture"]).stdout) ?? "").trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// The shared libraries `binary` links directly (its DT_NEEDED entries, as dpkg-shlibdeps reads them),
    /// split into the packages that provide them and the paths no package provides.
    static func linkedPackages(_ binary: String) throws -> (packages: Set<String>, unpackaged: [String]) {
        let dynamic = try runCommand(["readelf", "-d", binary])
        let needed = dynamic.stdout.split(separator: "\n").compactMap { line -> String? in
            guard line.contains("(NEEDED)"), let open = line.firstIndex(of: "["), let close = line.lastIndex(of: "]") else { return nil }
            return String(line[line.index(after: open)..<close])
        }
        // Where the loader finds each: ldd's "NAME => PATH (ADDRESS)".
        let ldd = try runCommand(["ldd", binary])
        var paths: [String: String] = [:]
        for line in ldd.stdout.split(separator: "\n") {
            let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
            if fields.count >= 3, fields[1] == "=>", fields[2].hasPrefix("/") { paths[fields[0]] = fields[2] }
            // The dynamic loader is printed by its path alone.
            if let first = fields.first, first.hasPrefix("/") { paths[(first as NSString).lastPathComponent] = first }
        }
        // dpkg knows a library by the path its package ships (/lib or /usr/lib on a merged /usr, the link or its
        // target): ask for every spelling in one call (each call reads the whole database).
        func spellings(_ path: String) -> [String] {
            [path, (path as NSString).resolvingSymlinksInPath].flatMap { p in [p, p.hasPrefix("/usr/") ? String(p.dropFirst(4)) : "/usr" + p] }
        }
        let owners = try runCommand(["dpkg", "-S"] + needed.compactMap { paths[$0] }.flatMap(spellings))
        var ownerOfPath: [String: String] = [:]
        for line in owners.stdout.split(separator: "\n") where !line.hasPrefix("diversion") {
            guard let sep = line.range(of: ": ") else { continue }
            let package = line[..<sep.lowerBound].split(separator: ":")[0]
            for path in line[sep.upperBound...].split(separator: ",") { ownerOfPath[path.trimmingCharacters(in: .whitespaces)] = String(package) }
        }
        var packages = Set<String>(), unpackaged: [String] = []
        for name in needed {
            guard let path = paths[name] else { unpackaged.append(name); continue }
            if let owner = spellings(path).lazy.compactMap({ ownerOfPath[$0] }).first { packages.insert(owner) } else { unpackaged.append(path) }
        }
        return (packages, unpackaged)
    }

    @Test func debHasTheLayoutAndDependenciesAndInstallsIntoAThrowawayRoot() throws {
        let dir = Scratch("deb"); defer { dir.remove() }
        let r = try Install.make(["deb", "SKIP_BUILD=1", "BUILD_DIR=\(Binaries.directory)", "DEB_DIR=\(dir.path)",
                                  "ALLOW_UNPACKAGED_LIBS=1", "DEB_COMPRESS=none"], timeoutMs: 300_000)
        try #require(r.code == 0, "make deb: \(r.code)\n\(r.stdout)\n\(r.stderr)")
        let deb = try #require(r.stdout.split(separator: "\n").last.map(String.init))
        #expect(deb == "\(dir.path)/defib_\(Install.version)_\(Self.architecture).deb", "last line: \(deb)")
        #expect(FileManager.default.fileExists(atPath: deb))

        // Contents.
        let contents = try runCommand(["dpkg-deb", "-c", deb])
        #expect(contents.code == 0)
        let listed = Set(contents.stdout.split(separator: "\n").compactMap { $0.split(separator: " ").last.map(String.init) })
        for path in ["./usr/bin/defib", "./usr/bin/defib-proxy", "./lib/systemd/system/defib.service", "./lib/systemd/system/defib@.service",
                     "./usr/lib/tmpfiles.d/defib.conf", "./usr/share/man/man1/defib.1.gz", "./usr/share/man/man1/defib-proxy.1.gz",
                     "./usr/share/man/man5/defib.toml.5.gz", "./usr/share/bash-completion/completions/defib",
                     "./usr/share/zsh/vendor-completions/_defib", "./usr/share/fish/vendor_completions.d/defib.fish",
                     "./usr/share/doc/defib/copyright", "./usr/share/doc/defib/changelog.gz", "./usr/share/doc/defib/example.toml"] {
            #expect(listed.contains(path), "\(path) missing from the .deb:\n\(contents.stdout)")
        }
        #expect(!listed.contains { $0.hasPrefix("./etc/") || $0.hasPrefix("./var/") || $0.contains(".wants/") },
                "the package must not ship configuration, state or enablement links")
        #expect(contents.stdout.split(separator: "\n").allSatisfy { $0.contains(" root/root ") }, "every file owned by root")

        // Control fields.
        let info = try runCommand(["dpkg-deb", "-I", deb])
        #expect(info.code == 0)
        func field(_ name: String) -> String? {
            info.stdout.split(separator: "\n").first { $0.trimmingCharacters(in: .whitespaces).hasPrefix(name + ":") }
                .map { String($0.split(separator: ":", maxSplits: 1)[1]).trimmingCharacters(in: .whitespaces) }
        }
        #expect(field("Package") == "defib")
        #expect(field("Version") == Install.version)
        #expect(field("Architecture") == Self.architecture)
        #expect(field("Recommends") == "gdb")
        let depends = Set((field("Depends") ?? "").split(separator: ",").map {
            String($0.trimmingCharacters(in: .whitespaces).split(separator: " ")[0])
        })
        // Depends: names exactly the packages of the libraries the binaries link (that a package provides).
        let linked = try Self.linkedPackages(Binaries.defib).packages.union(try Self.linkedPackages(Binaries.proxy).packages)
        #expect(depends == linked, "Depends \(depends.sorted()) vs packages of the linked libraries \(linked.sorted())")
        #expect(depends.isSuperset(of: ["libsystemd0", "libsqlite3-0", "libc6"]), "Depends: \(depends.sorted())")

        guard Install.throwawayRootUnavailable == nil else {
            Issue.record("cannot install the .deb into a throwaway root: \(Install.throwawayRootUnavailable!)")
            return
        }
        // Installed with dpkg into a copy of this machine's root (its libraries satisfy Depends for real) and used
        // there: --help, the man pages, the units, a real hang handled by the packaged binaries, dpkg -r (gdb's
        // stacks are left to `make deb-check`: reading a debug build's symbols is CPU the tests beside this need).
        let hostHadDefib = FileManager.default.fileExists(atPath: "/usr/bin/defib")
        let smoke = try runCommand(["bash", Install.repository + "/scripts/deb-smoke.sh", deb, "--no-stacks"], timeoutMs: 180_000)
        #expect(smoke.code == 0, "deb-smoke.sh: \(smoke.code)\n\(smoke.stdout)\n\(smoke.stderr)")
        for check in ["dpkg -i", "dpkg sees defib \(Install.version) installed", "--version print \(Install.version)", "defib --help",
                      "man finds defib(1), defib-proxy(1), defib.toml(5)", "systemd-analyze verify prints nothing: ''",
                      "nothing enabled: disabled", "the packaged defib supervises the packaged proxy",
                      "a hang: incident recovered, diagnosis corrupted-lock-word", "a native core",
                      "SIGTERM: defib exits 0", "stopped with it", "dpkg -r removes it"] {
            #expect(smoke.stdout.contains("PASS: ") && smoke.stdout.split(separator: "\n").contains { $0.hasPrefix("PASS: ") && $0.contains(check) },
                    "missing PASS: \(check)\n\(smoke.stdout)")
        }
        #expect(FileManager.default.fileExists(atPath: "/usr/bin/defib") == hostHadDefib, "the throwaway root leaked onto this machine")
    }

    @Test func debRefusesLibrariesNoPackageProvides() throws {
        let dir = Scratch("deb-strict"); defer { dir.remove() }
        let unpackaged = try Self.linkedPackages(Binaries.defib).unpackaged + Self.linkedPackages(Binaries.proxy).unpackaged
        let r = try Install.make(["deb", "SKIP_BUILD=1", "BUILD_DIR=\(Binaries.directory)", "DEB_DIR=\(dir.path)", "DEB_COMPRESS=none"],
                                 timeoutMs: 300_000)
        if unpackaged.isEmpty {
            // Binaries linking only packaged libraries (a static Swift runtime) make a package without any switch.
            #expect(r.code == 0, "\(r.stderr)")
        } else {
            #expect(r.code != 0, "make deb accepted binaries linking \(unpackaged)")
            for lib in Set(unpackaged) { #expect(r.stderr.contains(lib), "not named: \(lib)\n\(r.stderr)") }
            #expect(r.stderr.contains("--static-swift-stdlib"), "\(r.stderr)")
            #expect(Install.files(under: dir.path).filter { $0.hasSuffix(".deb") } == [], "a .deb was written anyway")
        }
    }
}
