import Foundation

/// A vertical mark on a timeline.
public struct TimelineMark: Sendable, Equatable {
    /// What happened.
    public enum Kind: String, Sendable, CaseIterable {
        /// The harness injected the fault.
        case fault
        /// The incident's detected_at.
        case detection
        /// The incident's killed_at.
        case kill
        /// The replacement's first pong.
        case ready
        /// The first successful response after the detection.
        case restored
    }
    /// What happened.
    public var kind: Kind
    /// When (Unix ms).
    public var atUnixMs: Double
    /// Makes a mark.
    public init(_ kind: Kind, at: Double) { self.kind = kind; self.atUnixMs = at }
}

/// One run on a timeline: its requests and marks, times relative to `originUnixMs`.
public struct TimelinePanel: Sendable, Equatable {
    /// The panel's heading.
    public var title: String
    /// t = 0: the fault onset (a control run: the start of its load).
    public var originUnixMs: Double
    /// The requests.
    public var samples: [RequestSample]
    /// The marks.
    public var marks: [TimelineMark]
    /// What t = 0 is, for the x axis title ("the fault", "the start of the load").
    public var origin: String
    /// Makes a panel.
    public init(title: String, originUnixMs: Double, samples: [RequestSample], marks: [TimelineMark], origin: String = "the fault") {
        self.title = title; self.originUnixMs = originUnixMs; self.samples = samples; self.marks = marks; self.origin = origin
    }

    /// The panel of one run.
    public static func of(_ r: RunResult, samples: [RequestSample], windowStartUnixMs: Double) -> TimelinePanel {
        var marks: [TimelineMark] = []
        if let t = r.onsetUnixMs { marks.append(.init(.fault, at: t)) }
        if let t = r.detectedUnixMs { marks.append(.init(.detection, at: t)) }
        if let t = r.killedUnixMs { marks.append(.init(.kill, at: t)) }
        if let t = r.readyUnixMs { marks.append(.init(.ready, at: t)) }
        if let t = r.firstSuccessUnixMs, r.load.sendsRequests { marks.append(.init(.restored, at: t)) }
        var title = "\(r.load.rawValue) load, run \(r.run): "
        if r.scenario == .control {
            title += r.falseKill ? "FALSE KILL (\(r.incidentCount) incident(s))" : "no kill"
        } else {
            var parts: [String] = []
            if let d = r.detectMs { parts.append("detected \(Int(d.rounded())) ms") }
            if let d = r.killMs { parts.append("killed \(Int(d.rounded())) ms") }
            if let d = r.readyMs { parts.append("ready \(Int(d.rounded())) ms") }
            if let d = r.restoreMs { parts.append("restored \(Int(d.rounded())) ms") }
            title += parts.isEmpty ? "no incident" : parts.joined(separator: " · ")
        }
        if !r.recovered { title += " — NOT RECOVERED" + (r.reason.map { ": \($0)" } ?? "") }
        return TimelinePanel(title: title, originUnixMs: r.onsetUnixMs ?? windowStartUnixMs, samples: samples, marks: marks,
                             origin: r.onsetUnixMs == nil ? "the start of the load" : "the fault")
    }
}

/// Renders request outcomes and latency over time, with the fault, detection, kill and ready marks, as a
/// self-contained SVG a person can read: axes labelled in ms, a legend, one panel per run. Pure.
public enum TimelineSVG {
    /// Colours: outcome → fill.
    public static let outcomeColors: [RequestOutcome: String] = [.ok: "#2e7d32", .failed: "#c62828", .refused: "#ef6c00", .timedOut: "#6a1b9a"]
    /// Colours and dash patterns of the marks.
    public static let markStyles: [TimelineMark.Kind: (color: String, dash: String, label: String)] = [
        .fault: ("#000000", "", "fault"), .detection: ("#1565c0", "6,3", "detected"), .kill: ("#b71c1c", "6,3", "killed"),
        .ready: ("#1b5e20", "6,3", "ready"), .restored: ("#00838f", "2,3", "first success"),
    ]
    /// Most dots drawn per panel; past it, every k-th successful request is drawn (every failure always is).
    public static let maxDots = 3000
    /// Most panels per file.
    public static let maxPanels = 12

    static let width = 960.0, left = 80.0, right = 30.0, panelHeight = 250.0, plotTop = 34.0, plotBottom = 44.0, legendHeight = 70.0

    /// The SVG document for `heading` with `panels` (the first `maxPanels`).
    public static func render(heading: String, panels all: [TimelinePanel]) -> String {
        let panels = Array(all.prefix(maxPanels))
        let height = legendHeight + Double(max(1, panels.count)) * panelHeight + (all.count > panels.count ? 24 : 0)
        var svg = """
        <?xml version="1.0" encoding="UTF-8"?>
        <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(width))" height="\(Int(height))" viewBox="0 0 \(Int(width)) \(Int(height))" font-family="sans-serif" font-size="12">
        <rect x="0" y="0" width="\(Int(width))" height="\(Int(height))" fill="#ffffff"/>
        <text x="\(Int(left))" y="20" font-size="16" font-weight="bold">\(escape(heading))</text>

        """
        svg += legend(y: 42)
        if panels.isEmpty {
            svg += "<text x=\"\(Int(left))\" y=\"\(Int(legendHeight + 40))\">no runs</text>\n"
        }
        for (n, panel) in panels.enumerated() {
            svg += render(panel, top: legendHeight + Double(n) * panelHeight)
        }
        if all.count > panels.count {
            svg += "<text x=\"\(Int(left))\" y=\"\(Int(height - 8))\">\(all.count - panels.count) more run(s) not drawn (see report.json)</text>\n"
        }
        svg += "</svg>\n"
        return svg
    }

    private static func legend(y: Double) -> String {
        var out = "<g class=\"legend\">\n"
        var x = left
        for outcome in RequestOutcome.allCases {
            out += "<circle cx=\"\(f(x))\" cy=\"\(f(y))\" r=\"4\" fill=\"\(outcomeColors[outcome]!)\"/>"
            out += "<text x=\"\(f(x + 8))\" y=\"\(f(y + 4))\">\(outcome == .timedOut ? "timeout" : outcome.rawValue) request</text>\n"
            x += 120
        }
        x = left
        for kind in TimelineMark.Kind.allCases {
            let s = markStyles[kind]!
            out += "<line x1=\"\(f(x - 4))\" y1=\"\(f(y + 18))\" x2=\"\(f(x + 14))\" y2=\"\(f(y + 18))\" stroke=\"\(s.color)\" stroke-width=\"2\"\(s.dash.isEmpty ? "" : " stroke-dasharray=\"\(s.dash)\"")/>"
            out += "<text x=\"\(f(x + 18))\" y=\"\(f(y + 22))\">\(s.label)</text>\n"
            x += 120
        }
        out += "<text x=\"\(f(x + 10))\" y=\"\(f(y + 22))\" fill=\"#555555\">axes: time (ms) · latency (ms)</text>\n"
        return out + "</g>\n"
    }

    private static func render(_ p: TimelinePanel, top: Double) -> String {
        let plotLeft = left, plotRight = width - right
        let y0 = top + plotTop, y1 = top + panelHeight - plotBottom
        let rel = p.samples.map { (t: $0.scheduledUnixMs - p.originUnixMs, lat: $0.latencyMs, o: $0.outcome) }
        let markT = p.marks.map { $0.atUnixMs - p.originUnixMs }
        var lo = min(rel.map(\.t).min() ?? 0, markT.min() ?? 0, 0)
        var hi = max(rel.map { $0.t + $0.lat }.max() ?? 0, markT.max() ?? 0, 0)
        if hi - lo < 1000 { hi = lo + 1000 }
        let pad = (hi - lo) * 0.02
        lo -= pad; hi += pad
        let xStep = niceStep((hi - lo) / 8)
        let maxLat = max(rel.map(\.lat).max() ?? 0, 1)
        let yStep = niceStep(maxLat / 5)
        let yMax = max(yStep, (maxLat / yStep).rounded(.up) * yStep)
        func x(_ t: Double) -> Double { plotLeft + (t - lo) / (hi - lo) * (plotRight - plotLeft) }
        func y(_ l: Double) -> Double { y1 - min(l, yMax) / yMax * (y1 - y0) }

        var out = "<g class=\"panel\">\n"
        out += "<text x=\"\(f(plotLeft))\" y=\"\(f(top + 20))\" font-weight=\"bold\">\(escape(p.title))</text>\n"
        out += "<rect x=\"\(f(plotLeft))\" y=\"\(f(y0))\" width=\"\(f(plotRight - plotLeft))\" height=\"\(f(y1 - y0))\" fill=\"none\" stroke=\"#999999\"/>\n"
        // Axes: ticks every nice step, labelled in ms.
        var t = (lo / xStep).rounded(.up) * xStep
        while t <= hi {
            out += "<line x1=\"\(f(x(t)))\" y1=\"\(f(y1))\" x2=\"\(f(x(t)))\" y2=\"\(f(y1 + 5))\" stroke=\"#333333\"/>"
            out += "<text x=\"\(f(x(t)))\" y=\"\(f(y1 + 18))\" text-anchor=\"middle\">\(label(t))</text>\n"
            t += xStep
        }
        out += "<text x=\"\(f((plotLeft + plotRight) / 2))\" y=\"\(f(y1 + 36))\" text-anchor=\"middle\" fill=\"#555555\">time from \(escape(p.origin)) (ms)</text>\n"
        var l = 0.0
        while l <= yMax + yStep / 2 {
            out += "<line x1=\"\(f(plotLeft - 5))\" y1=\"\(f(y(l)))\" x2=\"\(f(plotRight))\" y2=\"\(f(y(l)))\" stroke=\"#eeeeee\"/>"
            out += "<text x=\"\(f(plotLeft - 8))\" y=\"\(f(y(l) + 4))\" text-anchor=\"end\">\(label(l))</text>\n"
            l += yStep
        }
        out += "<text x=\"\(f(16))\" y=\"\(f((y0 + y1) / 2))\" transform=\"rotate(-90 16 \(f((y0 + y1) / 2)))\" text-anchor=\"middle\" fill=\"#555555\">latency (ms)</text>\n"
        // Marks under the dots so the dots stay visible.
        for (mark, mt) in zip(p.marks, markT) {
            let s = markStyles[mark.kind]!
            out += "<line class=\"mark-\(mark.kind.rawValue)\" x1=\"\(f(x(mt)))\" y1=\"\(f(y0))\" x2=\"\(f(x(mt)))\" y2=\"\(f(y1))\" stroke=\"\(s.color)\" stroke-width=\"1.5\"\(s.dash.isEmpty ? "" : " stroke-dasharray=\"\(s.dash)\"")><title>\(s.label) at \(Int(mt.rounded())) ms</title></line>\n"
        }
        // Labels staggered so close marks do not print over each other.
        for (n, (mark, mt)) in zip(p.marks, markT).sorted(by: { $0.1 < $1.1 }).enumerated() {
            let s = markStyles[mark.kind]!
            out += "<text x=\"\(f(x(mt) + 3))\" y=\"\(f(y0 + 12 + Double(n % 4) * 13))\" fill=\"\(s.color)\" font-size=\"11\">\(s.label) \(Int(mt.rounded())) ms</text>\n"
        }
        if rel.isEmpty {
            out += "<text x=\"\(f(plotLeft + 10))\" y=\"\(f(y1 - 10))\" fill=\"#555555\">no requests (idle load)</text>\n"
        }
        let okCount = rel.filter { $0.o == .ok }.count
        let stride = max(1, Int((Double(okCount) / Double(max(1, maxDots - (rel.count - okCount)))).rounded(.up)))
        var seenOK = 0
        for r in rel {
            if r.o == .ok { seenOK += 1; if (seenOK - 1) % stride != 0 { continue } }
            out += "<circle cx=\"\(f(x(r.t)))\" cy=\"\(f(y(r.lat)))\" r=\"2.5\" fill=\"\(outcomeColors[r.o]!)\" fill-opacity=\"0.8\"/>\n"
        }
        if stride > 1 {
            out += "<text x=\"\(f(plotRight))\" y=\"\(f(top + 20))\" text-anchor=\"end\" fill=\"#555555\">every \(stride)th successful request drawn; every failure drawn</text>\n"
        }
        return out + "</g>\n"
    }

    /// 1, 2 or 5 × a power of ten, at least `raw`.
    static func niceStep(_ raw: Double) -> Double {
        guard raw > 0, raw.isFinite else { return 1 }
        let p = pow(10, floor(log10(raw)))
        for m in [1.0, 2, 5, 10] where m * p >= raw { return m * p }
        return 10 * p
    }

    static func label(_ v: Double) -> String {
        abs(v - v.rounded()) < 1e-6 ? String(Int(v.rounded())) : String(format: "%.1f", v)
    }

    static func f(_ v: Double) -> String { String(format: "%.1f", v) }

    /// XML text escaping.
    static func escape(_ s: String) -> String {
        var out = ""
        for c in s {
            switch c {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            default: out.append(c)
            }
        }
        return out
    }
}
