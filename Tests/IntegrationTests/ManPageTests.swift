import Foundation
import Testing

/// The man pages: each renders with `man -l` without a single groff warning; defib(1) and defib-proxy(1) are
/// generated from the very argument parser the binaries are built with (and fail here once they are not);
/// defib.toml(5) describes every key of the example configuration.
@Suite(.timeLimit(.minutes(3)))
struct ManPageTests {
    static let pages = ["defib.1", "defib-proxy.1", "defib.toml.5"]

    @Test func installedPagesRenderWithoutWarnings() throws {
        let dir = Scratch("man"); defer { dir.remove() }
        try Install.install(into: dir.path)
        for page in Self.pages {
            let section = page.split(separator: ".").last!
            let path = "\(dir.path)/usr/share/man/man\(section)/\(page).gz"
            let r = try Install.renderManPage(path)
            #expect(r.code == 0, "man -l \(page): exit \(r.code)")
            #expect(r.stderr.isEmpty, "man -l \(page) warned:\n\(r.stderr)")
            #expect(r.stdout.count > 2000, "\(page) rendered to almost nothing: \(r.stdout)")
            #expect(r.stdout.contains("defib \(Install.version)"), "\(page) does not show the version in its footer")
            for section in ["NAME", "SYNOPSIS", "DESCRIPTION", "SEE ALSO"] {
                #expect(r.stdout.contains("\n\(section)\n"), "\(page) has no \(section) section")
            }
        }
    }

    /// A command's `--experimental-dump-help` without defaults: generate-manual does not print them, and one
    /// (defib-proxy --threads) depends on the machine's CPU count.
    static func dumpWithoutDefaults(_ json: Any) -> Any {
        if let d = json as? [String: Any] {
            return d.filter { $0.key != "defaultValue" }.mapValues(dumpWithoutDefaults)
        }
        if let a = json as? [Any] { return a.map(dumpWithoutDefaults) }
        return json
    }

    /// Every (sub)command path and the long option names of each, from a dump.
    static func commandsAndOptions(_ command: [String: Any], path: [String] = []) -> [(path: [String], options: [String])] {
        let name = command["commandName"] as? String ?? "?"
        let here = path + [name]
        // Hidden options (help: .hidden) are left out of the page by generate-manual, as from --help.
        let shown = (command["arguments"] as? [[String: Any]] ?? []).filter { $0["shouldDisplay"] as? Bool ?? true }
        let options = shown.flatMap { argument -> [String] in
            (argument["names"] as? [[String: Any]] ?? []).compactMap { n in
                n["kind"] as? String == "long" ? n["name"] as? String : nil
            }
        }
        return [(here, options)] + (command["subcommands"] as? [[String: Any]] ?? []).flatMap { commandsAndOptions($0, path: here) }
    }

    @Test(arguments: ["defib", "defib-proxy"])
    func generatedPageIsUpToDateWithTheArgumentParser(program: String) throws {
        let binary = program == "defib" ? Binaries.defib : Binaries.proxy
        let current = try runCommand([binary, "--experimental-dump-help"])
        try #require(current.code == 0)
        let committed = try Data(contentsOf: URL(fileURLWithPath: "\(Install.repository)/man/\(program).dump.json"))
        let now = Self.dumpWithoutDefaults(try JSONSerialization.jsonObject(with: Data(current.stdout.utf8)))
        let then = Self.dumpWithoutDefaults(try JSONSerialization.jsonObject(with: committed))
        #expect((now as? NSDictionary)?.isEqual(then as? NSDictionary) == true,
                "man/\(program).1 was generated from another command line than \(program)'s: run `make man` and commit man/")

        // The page is what generate-manual made of that dump: every subcommand and every option is in it.
        let page = try String(contentsOfFile: "\(Install.repository)/man/\(program).1", encoding: .utf8)
        let command = try #require((try JSONSerialization.jsonObject(with: committed) as? [String: Any])?["command"] as? [String: Any])
        for (path, options) in Self.commandsAndOptions(command) {
            if path.count > 1 { #expect(page.contains(".It Em \(path.last!)\n"), "\(program).1 lacks subcommand \(path.joined(separator: " "))") }
            for option in options { #expect(page.contains("Fl -\(option)") || page.contains(", -\(option)"), "\(program).1 lacks --\(option) of \(path.joined(separator: " "))") }
        }
        // … followed by the hand-written sections.
        let tail = try String(contentsOfFile: "\(Install.repository)/man/\(program).1.tail", encoding: .utf8)
        #expect(page.hasSuffix(tail), "man/\(program).1 does not end with man/\(program).1.tail: run `make man`")
        #expect(page.contains(".Os \"defib @VERSION@\""))
    }

    @Test func configPageDescribesEveryKeyOfTheExample() throws {
        let example = try String(contentsOfFile: "\(Install.repository)/units/example.toml", encoding: .utf8)
        let page = try String(contentsOfFile: "\(Install.repository)/man/defib.toml.5", encoding: .utf8)
        var table = ""
        var keys: [(table: String, key: String)] = []
        for raw in example.split(separator: "\n") {
            var line = raw.trimmingCharacters(in: .whitespaces)
            if line.hasPrefix("[") && line.hasSuffix("]") { table = String(line.dropFirst().dropLast()); continue }
            // Keys shown commented out (`# miss_ms = 250   # …`) are keys too: their default is derived.
            if line.hasPrefix("# ") { line = String(line.dropFirst(2)) }
            guard let eq = line.range(of: " = ") else { continue }
            let key = String(line[..<eq.lowerBound])
            guard key.allSatisfy({ $0.isLetter || $0 == "_" }), !key.isEmpty else { continue }
            keys.append((table, key))
        }
        #expect(keys.count >= 30, "found only \(keys.count) keys in example.toml")
        for (table, key) in keys {
            if table == "sockets" { continue }   // free-form names: documented as NAME = "HOST:PORT"
            #expect(page.contains(".SH [\(table)]") || table.isEmpty, "defib.toml.5 has no [\(table)] section")
            #expect(page.contains(".BR \(key) \"") || page.contains(".BR \(key) ("), "defib.toml.5 does not describe \(table.isEmpty ? "" : table + ".")\(key)")
        }
        #expect(page.contains(".SH [sockets]") && page.contains("NAME"))
    }
}
