/// What the people who wrote a Go, Python or Java service need from a hang: their goroutines, Python
/// functions or Java threads — not the scheduler and interpreter frames gdb shows. This file holds the
/// runtime-neutral model (threads, frames, groups of identical stacks) and how it is ordered and printed.
/// Pure: the runtime tools (delve, py-spy, jcmd) produce the text, the parsers beside this file read it.

/// The language runtime of a supervised program.
public enum ServiceRuntime: String, Sendable, Codable, CaseIterable {
    /// C, C++, Rust, Swift: gdb's stacks and the pthread wait-for graph are the whole story.
    case native
    case go
    case python
    case java
}

/// `[capture] runtime`: which runtime's evidence to collect; `auto` detects it from the executable.
public enum RuntimeSetting: String, Sendable, Codable, CaseIterable {
    case auto, native, go, python, java

    /// The forced runtime, nil for `auto`.
    public var forced: ServiceRuntime? { ServiceRuntime(rawValue: rawValue) }
}

/// One frame of a runtime stack.
public struct RuntimeFrame: Sendable, Equatable, Codable, Hashable {
    /// "main.(*table).resolve", "transfer_stock", "LockOrder.pay".
    public var function: String
    /// Source file (may be empty) and line (0 when unknown).
    public var file: String
    public var line: Int

    public init(function: String, file: String = "", line: Int = 0) {
        self.function = function; self.file = file; self.line = line
    }

    /// "main.(*table).resolve (main.go:43)": the file's last component, so groups do not depend on build paths.
    public var text: String {
        let base = file.split(separator: "/").last.map(String.init) ?? ""
        return base.isEmpty ? function : "\(function) (\(base)\(line > 0 ? ":\(line)" : ""))"
    }
}

/// One goroutine or thread: its id, name (threads have one, goroutines do not), state and frames (innermost first).
public struct RuntimeThread: Sendable, Equatable, Codable {
    /// Goroutine id, OS thread id (Python, Java `nid`), as text.
    public var id: String
    public var name: String
    /// "semacquire", "idle", "BLOCKED (on object monitor)", … as the tool says.
    public var state: String
    public var frames: [RuntimeFrame]

    public init(id: String, name: String = "", state: String = "", frames: [RuntimeFrame]) {
        self.id = id; self.name = name; self.state = state; self.frames = frames
    }
}

/// Goroutines or threads with the same stack and state, counted once.
public struct RuntimeStackGroup: Sendable, Equatable, Codable {
    public var count: Int
    public var state: String
    /// Up to 8 members, "id" or "id name".
    public var members: [String]
    /// The frames a person wrote, innermost first, then (in `runtimeFrames`) the runtime's and standard
    /// library's frames they were called from or into, innermost first.
    public var frames: [RuntimeFrame]
    public var runtimeFrames: [RuntimeFrame]

    public init(count: Int, state: String, members: [String], frames: [RuntimeFrame], runtimeFrames: [RuntimeFrame]) {
        self.count = count; self.state = state; self.members = members; self.frames = frames; self.runtimeFrames = runtimeFrames
    }

    /// Where a person would start reading: the innermost frame they wrote, else the innermost at all.
    public var headline: String { (frames.first ?? runtimeFrames.first)?.text ?? "(no frames)" }
}

/// Runtime evidence as the incident stores it.
public struct RuntimeEvidence: Sendable, Equatable, Codable {
    public var runtime: ServiceRuntime
    /// How it was read: "py-spy dump --nonblocking", "jcmd Thread.print", "dlv core" — or nil when no tool ran.
    public var tool: String?
    /// Why there are no stacks (tool missing: which package to install; it failed or ran out of time).
    public var error: String?
    public var groups: [RuntimeStackGroup]
    /// How many goroutines/threads in all.
    public var total: Int

    public init(runtime: ServiceRuntime, tool: String? = nil, error: String? = nil, groups: [RuntimeStackGroup] = [], total: Int = 0) {
        self.runtime = runtime; self.tool = tool; self.error = error; self.groups = groups; self.total = total
    }
}

public enum RuntimeStacks {
    /// Whether a frame belongs to the runtime or the standard library rather than to the service's own code.
    /// For Go, `goroot` is GOROOT/src as the stacks show it (see `goSourceRoot`): a frame whose file lies under it
    /// is the standard library's, whatever its import path looks like.
    public static func isRuntimeFrame(_ f: RuntimeFrame, runtime: ServiceRuntime, goroot: String? = nil) -> Bool {
        let fn = f.function
        switch runtime {
        case .go:
            // The standard library's import paths have no dot in their first element and its files lie under
            // GOROOT/src/PATH; "main." and module code are the service's.
            if fn.hasPrefix("main.") { return false }
            if let goroot, !f.file.isEmpty { return f.file.hasPrefix(goroot) }
            let pkg = fn.split(separator: "(").first.map(String.init) ?? fn
            let path = pkg.split(separator: "/").dropLast().joined(separator: "/")
            let last = pkg.split(separator: "/").last.map { String($0.split(separator: ".").first ?? "") } ?? ""
            let importPath = path.isEmpty ? last : path + "/" + last
            let first = importPath.split(separator: "/").first.map(String.init) ?? importPath
            if first.contains(".") { return false }
            return f.file.isEmpty || f.file.contains("/src/\(importPath)/")
        case .python:
            // The interpreter's own library lives under lib/pythonX.Y (threading.py, socketserver.py …).
            return f.file.contains("/lib/python") && !f.file.contains("/site-packages/") || f.file.hasPrefix("<")
        case .java:
            return ["java.", "javax.", "jdk.", "sun.", "com.sun."].contains { fn.hasPrefix($0) }
        case .native:
            return false
        }
    }

    /// A line about the frame before it rather than a frame ("- waiting to lock <0x…>" in a Java dump).
    public static func isAnnotation(_ f: RuntimeFrame) -> Bool { f.function.hasPrefix("- ") && f.file.isEmpty }

    /// GOROOT/src ("/usr/lib/go-1.19/src/") from where the runtime package's own frames lie, or nil.
    public static func goSourceRoot(_ threads: [RuntimeThread]) -> String? {
        for t in threads {
            for f in t.frames where f.function.hasPrefix("runtime.") {
                if let r = f.file.range(of: "/src/runtime/") { return String(f.file[..<r.lowerBound]) + "/src/" }
            }
        }
        return nil
    }

    /// Groups identical stacks (same state and frames), the largest first, except that groups with frames a
    /// person wrote come before groups made only of runtime frames (GC workers, the finalizer, JIT threads).
    /// Within a group the person's frames come first; the runtime's follow.
    public static func group(_ threads: [RuntimeThread], runtime: ServiceRuntime) -> [RuntimeStackGroup] {
        let goroot = runtime == .go ? goSourceRoot(threads) : nil
        var order: [String] = []
        var byKey: [String: RuntimeStackGroup] = [:]
        for t in threads {
            let key = t.state + "\u{1}" + t.frames.map(\.text).joined(separator: "\u{1}")
            let member = t.name.isEmpty ? t.id : "\(t.id) \(t.name)"
            if var g = byKey[key] {
                g.count += 1
                if g.members.count < 8 { g.members.append(member) }
                byKey[key] = g
            } else {
                order.append(key)
                // An annotation ("- locked <0x…>", Java's) belongs with the frame before it: shown under the
                // service's frame, dropped from the runtime's one-line summary.
                var mine: [RuntimeFrame] = [], theirs: [RuntimeFrame] = []
                var previousIsRuntime = false
                for f in t.frames {
                    if isAnnotation(f) { if !previousIsRuntime { mine.append(f) }; continue }
                    previousIsRuntime = isRuntimeFrame(f, runtime: runtime, goroot: goroot)
                    if previousIsRuntime { theirs.append(f) } else { mine.append(f) }
                }
                byKey[key] = RuntimeStackGroup(count: 1, state: t.state, members: [member], frames: mine, runtimeFrames: theirs)
            }
        }
        let groups = order.compactMap { byKey[$0] }
        return groups.enumerated().sorted { a, b in
            let (ua, ub) = (!a.element.frames.isEmpty, !b.element.frames.isEmpty)
            if ua != ub { return ua }
            if a.element.count != b.element.count { return a.element.count > b.element.count }
            return a.offset < b.offset
        }.map(\.element)
    }

    /// The "Runtime stacks" text `defib incidents info` prints: one block per group, counts first, the
    /// frames a person wrote first, the runtime's frames after them on one line.
    public static func render(_ evidence: RuntimeEvidence) -> String {
        var out: [String] = []
        let noun = evidence.runtime == .go ? "goroutine" : "thread"
        var head = "\(evidence.runtime.rawValue): \(evidence.total) \(noun)\(evidence.total == 1 ? "" : "s") in \(evidence.groups.count) group\(evidence.groups.count == 1 ? "" : "s")"
        if let tool = evidence.tool { head += " (\(tool))" }
        out.append(head)
        if let error = evidence.error { out.append("  ! \(error)") }
        for g in evidence.groups {
            var title = "  \(g.count) × \(noun)\(g.count == 1 ? "" : "s")"
            if !g.state.isEmpty { title += " [\(g.state)]" }
            title += ": " + g.members.joined(separator: ", ") + (g.count > g.members.count ? ", …" : "")
            out.append(title)
            for f in g.frames { out.append((isAnnotation(f) ? "        " : "      ") + f.text) }
            if !g.runtimeFrames.isEmpty {
                out.append("      — runtime: " + g.runtimeFrames.prefix(6).map(\.function).joined(separator: " ← ")
                           + (g.runtimeFrames.count > 6 ? " ← …" : ""))
            }
        }
        return out.joined(separator: "\n")
    }
}
