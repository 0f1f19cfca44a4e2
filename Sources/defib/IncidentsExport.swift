import ArgumentParser
import DefibCore
import DefibPOSIX
import DefibStore
import Foundation
import Glibc

/// `defib incidents export ID|last --output PATH`: everything needed to study an incident elsewhere.
struct IncidentsExportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export",
        abstract: "Write an incident's JSON, stacks and core to a directory, or to a .tar.gz (the newest matching one).",
        discussion: "PATH ending in .tar.gz or .tgz makes a tarball (with a top directory incident-ID/); anything else a new directory.")

    @Argument(help: "MATCHES (the newest incident they select): an incident id or pid, `last` (the default), a path, a process name, or FIELD=VALUE.", completion: .custom(StateCompletion.incidentIDs))
    var matches: [String] = []

    @OptionGroup var location: StoreLocationOptions

    @Option(name: [.short, .long], help: "Where to write: a new directory, or FILE.tar.gz.")
    var output: String

    func validate() throws {
        if output == "-" {
            throw ValidationError("export writes a directory or a .tar.gz, not stdout: give a path (for the core alone on stdout: defib incidents dump --output -)")
        }
        if output.isEmpty { throw ValidationError("--output must not be empty") }
    }

    var isTarball: Bool { output.hasSuffix(".tar.gz") || output.hasSuffix(".tgz") }

    func run() throws {
        let store = try location.openStore()
        let incident = try selectOne(matches, in: store)
        let number = incident.id.map(String.init) ?? "x"
        var st = stat()
        if lstat(output, &st) == 0 { throw CLIError("\(output) already exists; give a new path") }

        if !isTarball {
            try makePrivateDirectory(output)
            let written = try Self.writeBundle(incident, into: output)
            print("wrote \(output)/: \(written.joined(separator: ", "))")
            return
        }

        let parent = (output as NSString).deletingLastPathComponent
        var template = Array("\(parent.isEmpty ? "." : parent)/.defib-export-XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else {
            throw CLIError("mkdtemp in \(parent.isEmpty ? "." : parent): \(String(cString: strerror(errno)))")
        }
        let staging = String(cString: made)
        defer { try? FileManager.default.removeItem(atPath: staging) }
        let top = "incident-\(number)"
        try makePrivateDirectory("\(staging)/\(top)")
        let written = try Self.writeBundle(incident, into: "\(staging)/\(top)")
        try Self.tar(output: output, directory: staging, member: top, log: "\(staging)/tar.log")
        var size = stat()
        _ = stat(output, &size)
        print("wrote \(output) (\(Format.bytes(Int64(size.st_size)))): \(top)/ with \(written.joined(separator: ", "))")
    }

    /// Writes incident.json, stacks.txt (when stored) and the core (hard link, or a copy across file
    /// systems) into `dir`; returns a description of each file for the summary line.
    static func writeBundle(_ incident: Incident, into dir: String) throws -> [String] {
        var written: [String] = []
        try writePrivate("\(dir)/incident.json", IncidentJSON.string(incident, includeStacks: true) + "\n")
        written.append("incident.json")
        if let stacks = incident.stacks, !stacks.isEmpty {
            try writePrivate("\(dir)/stacks.txt", stacks.hasSuffix("\n") ? stacks : stacks + "\n")
            written.append("stacks.txt")
        }
        if let core = incident.capture?.path {
            let name = (core as NSString).lastPathComponent
            let dest = "\(dir)/\(name)"
            if !FileManager.default.fileExists(atPath: core) {
                printError("defib: the core \(core) is gone; exported without it")
            } else if link(core, dest) == 0 {
                written.append("\(name) (\(Format.bytes(incident.capture?.bytes ?? 0)), hard link)")
            } else {
                do {
                    try FileManager.default.copyItem(atPath: core, toPath: dest)
                    chmod(dest, 0o600)
                } catch {
                    throw CLIError("cannot copy the core \(core) to \(dest): \(error.localizedDescription)")
                }
                written.append("\(name) (\(Format.bytes(incident.capture?.bytes ?? 0)), copy)")
            }
        }
        return written
    }

    /// `tar -czf OUTPUT -C DIRECTORY MEMBER`, with tar's complaints in the error when it fails.
    static func tar(output: String, directory: String, member: String, log: String) throws {
        let logFD = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard logFD >= 0 else { throw CLIError("open \(log): \(String(cString: strerror(errno)))") }
        var request = SpawnRequest(argv: ["tar", "-czf", output, "-C", directory, member], environment: currentEnvironment())
        request.newSession = false   // ^C reaches tar too
        request.stdinFromDevNull = true
        request.stderrFD = logFD
        let child: ChildProcess
        do { child = try spawnProcess(request) } catch {
            close(logFD)
            throw CLIError("cannot run tar: \(error)")
        }
        close(logFD)
        defer { child.closePidfd() }
        var status: ChildStatus?
        while status == nil { status = waitForChild(child, timeoutMs: 60_000) }
        guard status == .exited(code: 0) else {
            try? FileManager.default.removeItem(atPath: output)
            let complaint = (try? String(contentsOfFile: log, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? ""
            throw CLIError("tar failed (\(status.map { "\($0)" } ?? "?")) writing \(output)\(complaint.isEmpty ? "" : ": \(complaint)")")
        }
    }

    static func writePrivate(_ path: String, _ text: String) throws {
        guard FileManager.default.createFile(atPath: path, contents: Data(text.utf8), attributes: [.posixPermissions: 0o600]) else {
            throw CLIError("cannot write \(path): \(String(cString: strerror(errno)))")
        }
    }
}

/// mkdir 0700: an export holds a core, which is as private as the process's memory.
func makePrivateDirectory(_ path: String) throws {
    if mkdir(path, 0o700) != 0 { throw CLIError("mkdir \(path): \(String(cString: strerror(errno)))") }
}
