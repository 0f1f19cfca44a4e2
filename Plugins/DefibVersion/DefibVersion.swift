import Foundation
import PackagePlugin

/// Generates `DefibVersion.swift` from the repository's VERSION file, so the version `--version` prints, the
/// one the Debian package carries and the one the man pages show come from one file (edit VERSION only).
@main
struct DefibVersionPlugin: BuildToolPlugin {
    func createBuildCommands(context: PluginContext, target: Target) throws -> [Command] {
        let versionFile = context.package.directoryURL.appending(path: "VERSION")
        let output = context.pluginWorkDirectoryURL.appending(path: "DefibVersion.swift")
        // A Debian version (what the .deb carries) starts with a digit and holds [0-9A-Za-z.+~-] only; anything
        // else fails the build here rather than producing a package dpkg refuses.
        let script = #"""
            v=$(tr -d ' \t\r\n' < "$1") || exit 1
            case $v in
                [0-9]*) ;;
                *) echo "$1: '$v' is not a version (it must start with a digit)" >&2; exit 1 ;;
            esac
            case $v in
                *[!0-9A-Za-z.+~-]*) echo "$1: '$v' is not a version (only 0-9 A-Z a-z . + ~ - allowed)" >&2; exit 1 ;;
            esac
            printf '%s\n' \
                '// Generated from VERSION by the DefibVersion build plugin: edit VERSION, not this.' \
                '' \
                '/// The package version (the VERSION file at the root of the repository).' \
                'enum DefibVersion {' \
                "    static let string = \"$v\"" \
                '}' > "$2.tmp" && mv "$2.tmp" "$2"
            """#
        return [.buildCommand(
            displayName: "Generating DefibVersion.swift from VERSION",
            executable: URL(fileURLWithPath: "/bin/sh"),
            arguments: ["-c", script, "defib-version", versionFile.path, output.path],
            inputFiles: [versionFile],
            outputFiles: [output])]
    }
}
