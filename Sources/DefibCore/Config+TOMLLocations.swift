import Foundation

/// The closest of `candidates` to `word` when it is a plausible typo (edit distance ≤ 2, or ≤ a third of
/// the word's length for long words).
func suggestion(_ word: String, among candidates: [String]) -> String? {
    let scored = candidates.map { ($0, editDistance(word.lowercased(), $0)) }.min { $0.1 < $1.1 }
    guard let (best, distance) = scored, distance <= max(2, word.count / 3) else { return nil }
    return best
}

/// Levenshtein distance.
func editDistance(_ a: String, _ b: String) -> Int {
    let a = Array(a), b = Array(b)
    if a.isEmpty { return b.count }
    if b.isEmpty { return a.count }
    var previous = Array(0...b.count)
    for i in 1...a.count {
        var current = [i] + Array(repeating: 0, count: b.count)
        for j in 1...b.count {
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
        }
        previous = current
    }
    return previous[b.count]
}

/// Where each key is set in the TOML text. TOMLKit does not expose source positions for values, so this is
/// a small scan of the source: table headers, `key =` lines and dotted keys, skipping strings, comments
/// and the insides of multi-line arrays. Keys inside inline tables resolve to the line of their table.
struct KeyLocations {
    private var lines: [String: Int] = [:]

    init(_ text: String) {
        var table: [String] = []
        var state = ValueScan()
        var number = 0
        for raw in text.split(separator: "\n", omittingEmptySubsequences: false) {
            number += 1
            if state.inValue {
                state.scan(raw[...])
                continue
            }
            let line = raw.drop { $0 == " " || $0 == "\t" }
            if line.hasPrefix("[") {
                let isArray = line.hasPrefix("[[")
                let inner = line.dropFirst(isArray ? 2 : 1)
                let header = KeyLocations.dottedKey(inner)
                if header.rest.first == "]" {
                    table = header.path
                    record(table, number)
                }
                continue
            }
            let parsed = KeyLocations.dottedKey(line)
            guard !parsed.path.isEmpty, parsed.rest.first == "=" else { continue }
            record(table + parsed.path, number)
            state.scan(parsed.rest.dropFirst())
        }
    }

    private mutating func record(_ path: [String], _ line: Int) {
        let key = path.joined(separator: ".")
        if lines[key] == nil { lines[key] = line }
    }

    /// The key set on `line`, or the last key set before it (the value of a multi-line array or string
    /// started there); nil before the first key.
    func key(atLine line: Int) -> String? {
        lines.filter { $0.value <= line }.max { ($0.value, $1.key) < ($1.value, $0.key) }?.key
    }

    /// The line setting `key`, or the line of the nearest enclosing key or table that is in the text.
    func line(of key: String) -> Int? {
        // Array element keys like `service.argv[1]` live on their array's line.
        var path = key.split(separator: "[").first.map(String.init) ?? key
        while true {
            if let line = lines[path] { return line }
            guard let dot = path.lastIndex(of: ".") else { return nil }
            path = String(path[..<dot])
        }
    }

    /// A (possibly dotted, possibly quoted) key at the start of `s`, and what follows it (whitespace skipped).
    static func dottedKey(_ s: Substring) -> (path: [String], rest: Substring) {
        var rest = s
        var path: [String] = []
        func skipSpace() { rest = rest.drop { $0 == " " || $0 == "\t" } }
        while true {
            skipSpace()
            guard let first = rest.first else { return (path, rest) }
            if first == "\"" || first == "'" {
                let body = rest.dropFirst()
                guard let end = body.firstIndex(of: first) else { return ([], rest) }
                path.append(String(body[..<end]))
                rest = body[body.index(after: end)...]
            } else {
                let bare = rest.prefix { $0.isLetter || $0.isNumber || $0 == "_" || $0 == "-" }
                guard !bare.isEmpty else { return (path, rest) }
                path.append(String(bare))
                rest = rest.dropFirst(bare.count)
            }
            skipSpace()
            guard rest.first == "." else { return (path, rest) }
            rest = rest.dropFirst()
        }
    }
}

/// Tracks, across lines, whether a value is still open: a multi-line string, or an array/inline table whose
/// closing bracket is on a later line.
private struct ValueScan {
    var depth = 0
    var multiline: String?

    var inValue: Bool { depth > 0 || multiline != nil }

    mutating func scan(_ s: Substring) {
        var i = s.startIndex
        while i < s.endIndex {
            if let delimiter = multiline {
                guard let r = s[i...].range(of: delimiter) else { return }
                multiline = nil
                i = r.upperBound
                continue
            }
            let c = s[i]
            switch c {
            case "#": return
            case "\"", "'":
                let triple = String(repeating: String(c), count: 3)
                if s[i...].hasPrefix(triple) {
                    multiline = triple
                    i = s.index(i, offsetBy: 3)
                    continue
                }
                // A one-line string: skip to its closing quote (basic strings have escapes).
                var j = s.index(after: i)
                while j < s.endIndex, s[j] != c {
                    if c == "\"", s[j] == "\\" { j = s.index(after: j); if j == s.endIndex { break } }
                    j = s.index(after: j)
                }
                i = j < s.endIndex ? s.index(after: j) : j
                continue
            case "[", "{": depth += 1
            case "]", "}": depth = max(0, depth - 1)
            default: break
            }
            i = s.index(after: i)
        }
    }
}
