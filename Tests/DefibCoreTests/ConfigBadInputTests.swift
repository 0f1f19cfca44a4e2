import DefibCore
import Foundation
import Testing

/// Bad configuration input gets a message naming the problem, never a silent change of meaning.
@Suite struct ConfigBadInputTests {
    static func issues(_ text: String) -> [ConfigIssue] {
        do { _ = try SupervisorConfig.parse(text, path: "t.toml"); return [] } catch let e as ConfigError { return e.issues } catch { return [] }
    }

    @Test func aNulInAStringIsRejectedNotCut() {
        let found = Self.issues("""
            state_dir = "/var/lib/defib"
            [service]
            argv = ["/bin/prog", "--flag=a\\u0000b"]
            env = { PATH = "/bin", X = "\\U00000000" }
            """)
        #expect(found.map(\.line) == [3, 4], "\(found)")
        #expect(found.allSatisfy { $0.message.contains("NUL character") })
        #expect(found.first?.key == "service.argv")
        #expect(found.last?.key == "service.env")
    }

    @Test func aNulLookalikeIsNotRejected() {
        // An escaped backslash followed by "u0000", a literal string, a comment: no NUL in any value.
        #expect(Self.issues(#"""
            state_dir = "/var/lib/defib\\u0000"   # \u0000 in a comment
            [service]
            argv = ['/bin/prog', '\u0000']
            """#).isEmpty)
        #expect(Self.issues("[service]\nargv = [\"\"\"\nline\\u0001\"\"\"]").isEmpty)
    }

    @Test func aHugeRetentionSizeIsTooLargeNotNegative() {
        let found = Self.issues("[retention]\nmax_use_mb = 9223372036854775807\nkeep_free_mb = 8796093022208\n")
        #expect(found.count == 2, "\(found)")
        #expect(found.allSatisfy { $0.message.hasPrefix("too large: at most 8796093022207 MB") }, "\(found)")
        #expect(found.map(\.key) == ["retention.max_use_mb", "retention.keep_free_mb"])
        // The largest that fits still works, and negative ones are still named as negative.
        #expect(Self.issues("[retention]\nmax_use_mb = 8796093022207\n").isEmpty)
        #expect(Self.issues("[retention]\nmax_use_mb = -1\n").first?.message == "must not be negative (0 = no limit)")
    }

    @Test func devNullIsAnEmptyConfigurationAndMissingFilesSayWhy() throws {
        let empty = try SupervisorConfig.load(path: "/dev/null")
        #expect(empty.service.argv.isEmpty && empty.stateDirectory.isEmpty)
        func message(_ path: String) -> String {
            do { _ = try SupervisorConfig.load(path: path); return "" } catch { return "\(error)" }
        }
        #expect(message("/nonexistent/defib.toml") == "/nonexistent/defib.toml: cannot read: no such file")
        #expect(message("/tmp") == "/tmp: cannot read: is a directory")
        #expect(message("/dev/zero") == "/dev/zero: cannot read: larger than 1 MiB: not a configuration file")
    }
}
