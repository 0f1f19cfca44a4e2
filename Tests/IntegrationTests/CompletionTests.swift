import DefibCore
import DefibStore
import Foundation
import Testing

/// The installed completion scripts, loaded by the shells themselves: subcommands and options complete, and
/// incident ids and service names come from the state directory on the command line (the shell calls the
/// installed defib back for them).
@Suite(.timeLimit(.minutes(3)))
struct CompletionTests {
    /// A state directory with three incidents (services cache and proxy) and run directories for proxy and web.
    static func seededStateDirectory(_ dir: Scratch) throws -> String {
        let state = dir.path + "/state"
        try FileManager.default.createDirectory(atPath: state, withIntermediateDirectories: true)
        let store = try IncidentStore.open(stateDirectory: state)
        let t0 = Date(timeIntervalSince1970: 1_795_000_000)
        _ = try store.insert(Incident(service: "cache", pid: 100, detectedAt: t0, cause: .exited(code: 7)))
        _ = try store.insert(Incident(service: "proxy", pid: 200, detectedAt: t0.addingTimeInterval(60), cause: .exited(code: 1)))
        _ = try store.insert(Incident(service: "proxy", pid: 201, detectedAt: t0.addingTimeInterval(120), cause: .signaled(signal: 11, coreDumped: false)))
        for service in ["proxy", "web"] {
            try FileManager.default.createDirectory(atPath: "\(state)/run/\(service)", withIntermediateDirectories: true)
        }
        return state
    }

    @Test func bashCompletesSubcommandsIncidentIdsAndServiceNames() throws {
        let dir = Scratch("complete-bash"); defer { dir.remove() }
        try Install.install(into: dir.path + "/dest")
        let state = try Self.seededStateDirectory(dir)
        let script = """
            source "$1"
            complete -p defib
            line() {
                COMP_LINE=$1; COMP_POINT=${#COMP_LINE}
                read -ra COMP_WORDS <<< "$COMP_LINE"
                [[ $COMP_LINE == *' ' ]] && COMP_WORDS+=('')
                COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))
                COMPREPLY=()
                _defib defib "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
                printf '%s\\n' "${COMPREPLY[@]}" | sort | paste -sd' '
            }
            echo "top: $(line 'defib ')"
            echo "incidents: $(line 'defib incidents ')"
            echo "ids: $(line "defib incidents info --state-dir $2 ")"
            echo "ids-l: $(line "defib incidents gdb --state-dir $2 l")"
            echo "export-ids: $(line "defib incidents export --state-dir $2 ")"
            echo "name: $(line "defib ctl --state-dir $2 --name ")"
            echo "service: $(line "defib incidents list --state-dir $2 --service ")"
            echo "capture: $(line 'defib run --capture ')"
            """
        let r = try runCommand(["bash", "--norc", "--noprofile", "-c", script, "bash",
                                dir.path + "/dest/usr/share/bash-completion/completions/defib", state],
                               env: ["PATH": dir.path + "/dest/usr/bin:/usr/bin:/bin"])
        #expect(r.code == 0, "\(r.stdout)\n\(r.stderr)")
        let lines = r.stdout.split(separator: "\n").map(String.init)
        func result(_ label: String) -> String? { lines.first { $0.hasPrefix(label + ": ") }.map { String($0.dropFirst(label.count + 2)) } }
        #expect(lines.first == "complete -o filenames -F _defib defib", "\(r.stdout)")
        for sub in ["run", "ctl", "incidents", "check-config", "chaos"] {
            #expect(result("top")?.split(separator: " ").contains(Substring(sub)) == true, "top level lacks \(sub): \(r.stdout)")
        }
        #expect(result("incidents")?.split(separator: " ").contains("info") == true, "\(r.stdout)")
        #expect(result("ids") == "1 2 3 last", "\(r.stdout)\n\(r.stderr)")
        #expect(result("ids-l") == "last", "\(r.stdout)")
        #expect(result("export-ids") == "1 2 3 last", "\(r.stdout)")
        #expect(result("name") == "proxy web", "\(r.stdout)")
        #expect(result("service") == "cache proxy web", "\(r.stdout)")
        #expect(result("capture") == "gcore kernel native none", "\(r.stdout)")
    }

    @Test func fishCompletesIncidentIdsAndZshLoadsItsScript() throws {
        let dir = Scratch("complete-fish"); defer { dir.remove() }
        try Install.install(into: dir.path + "/dest")
        let state = try Self.seededStateDirectory(dir)
        let env = ["PATH": dir.path + "/dest/usr/bin:/usr/bin:/bin", "HOME": dir.path, "XDG_CONFIG_HOME": dir.path + "/config",
                   "XDG_DATA_HOME": dir.path + "/data"]
        let fish = try runCommand(["fish", "--no-config", "-c",
                                   "source $argv[1]; complete -C \"defib incidents info --state-dir $argv[2] \"; echo SEP; complete -C \"defib ctl --state-dir $argv[2] --name \"",
                                   dir.path + "/dest/usr/share/fish/vendor_completions.d/defib.fish", state], env: env)
        #expect(fish.code == 0 && fish.stderr.isEmpty, "\(fish.stdout)\n\(fish.stderr)")
        let parts = fish.stdout.components(separatedBy: "SEP\n")
        let ids = Set((parts.first ?? "").split(separator: "\n").map { String($0.split(separator: "\t")[0]) })
        #expect(ids.isSuperset(of: ["1", "2", "3", "last"]), "fish offered \(ids.sorted()):\n\(fish.stdout)\n\(fish.stderr)")
        let names = Set((parts.dropFirst().first ?? "").split(separator: "\n").map { String($0.split(separator: "\t")[0]) })
        #expect(names == ["proxy", "web"], "fish offered \(names.sorted())")

        // zsh: the script parses, and loading it through compinit defines the completion function.
        let zsh = try runCommand(["zsh", "-f", "-c", """
            zsh -n "$1/_defib" || exit 3
            fpath=("$1" $fpath); autoload -Uz compinit; compinit -u -d "$2/zcompdump"
            print -r -- "defib: ${_comps[defib]}"
            """, "zsh", dir.path + "/dest/usr/share/zsh/site-functions", dir.path], env: env)
        #expect(zsh.code == 0 && zsh.stdout.contains("defib: _defib"), "\(zsh.stdout)\n\(zsh.stderr)")
    }
}
