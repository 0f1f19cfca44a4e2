@testable import DefibChaos
import Foundation
#if canImport(FoundationXML)
import FoundationXML
#endif
import Testing

@Suite struct TimelineTests {
    /// Parses the SVG as XML and collects element names and text.
    final class Collector: NSObject, XMLParserDelegate {
        var elements: [String: Int] = [:]
        var classes: [String] = []
        /// Each element's text on a line of its own (entities arrive as separate chunks).
        var text = ""
        func parser(_ parser: XMLParser, didStartElement name: String, namespaceURI: String?, qualifiedName: String?, attributes: [String: String] = [:]) {
            elements[name, default: 0] += 1
            if let c = attributes["class"] { classes.append(c) }
        }
        func parser(_ parser: XMLParser, foundCharacters string: String) { text += string }
        func parser(_ parser: XMLParser, didEndElement name: String, namespaceURI: String?, qualifiedName: String?) { text += "\n" }
    }

    func parse(_ svg: String) throws -> Collector {
        let parser = XMLParser(data: Data(svg.utf8))
        let collector = Collector()
        parser.delegate = collector
        #expect(parser.parse(), "not well-formed: \(parser.parserError.map { "\($0)" } ?? "")")
        return collector
    }

    @Test func aRunBecomesAWellFormedSVGWithMarksAxesAndLegend() throws {
        let samples = Canned.samples()
        let result = RunEvaluator.evaluate(Canned.raceObservation())
        let panel = TimelinePanel.of(result, samples: samples, windowStartUnixMs: 9000)
        let svg = TimelineSVG.render(heading: "defib chaos: timeout-race <staged> & more", panels: [panel])
        let doc = try parse(svg)
        #expect(doc.elements["svg"] == 1)
        for mark in ["mark-fault", "mark-detection", "mark-kill", "mark-ready", "mark-restored"] {
            #expect(doc.classes.contains(mark), "missing \(mark)")
        }
        #expect(doc.elements["circle", default: 0] >= samples.count, "one dot per request (and the legend's)")
        for label in ["ok request", "failed request", "refused request", "timeout request", "fault", "detected", "killed", "ready", "first success",
                      "time from the fault (ms)", "latency (ms)", "defib chaos: timeout-race <staged> & more"] {
            #expect(doc.text.contains(label), "missing text '\(label)'")
        }
        #expect(doc.text.contains("detected 1000 ms"))
        #expect(doc.text.contains("steady load, run 1: detected 1000 ms · killed 1030 ms · ready 1180 ms · restored 1201 ms"))
        // Axis ticks in ms from the fault (the range runs to the 6 s timeout's answer): every 2000 ms from 0.
        for tick in ["\n0\n", "\n2000\n", "\n4000\n", "\n6000\n"] { #expect(doc.text.contains(tick), "missing tick \(tick)") }
        #expect(svg.contains("fill=\"#c62828\""), "failed requests drawn red")
        #expect(svg.contains("fill=\"#ef6c00\""), "refused requests drawn orange")
    }

    @Test func idleAndControlPanelsSayWhatTheyShow() throws {
        let idle = RunEvaluator.evaluate(Canned.raceObservation(load: .idle))
        let control = RunEvaluator.evaluate(RunObservation(scenario: .control, load: .steady, run: 1, onsetUnixMs: nil, windowStartUnixMs: 9000,
                                                           windowEndUnixMs: 13_000, samples: Canned.samples()))
        let svg = TimelineSVG.render(heading: "two", panels: [TimelinePanel.of(idle, samples: [], windowStartUnixMs: 9000),
                                                              TimelinePanel.of(control, samples: Canned.samples(), windowStartUnixMs: 9000)])
        let doc = try parse(svg)
        #expect(doc.text.contains("no requests (idle load)"))
        #expect(doc.text.contains("steady load, run 1: no kill"))
        #expect(doc.text.contains("time from the start of the load (ms)"))
        #expect(!doc.classes.contains("mark-restored") || doc.classes.filter { $0 == "mark-restored" }.count == 0)
    }

    @Test func manyRequestsAreThinnedButFailuresAreAllDrawn() throws {
        var samples: [RequestSample] = []
        for i in 0..<20_000 { samples.append(RequestSample(scheduledUnixMs: Double(i), latencyMs: 1, outcome: .ok, status: 200)) }
        for i in 0..<50 { samples.append(RequestSample(scheduledUnixMs: Double(i * 100), latencyMs: 5, outcome: .failed)) }
        let panel = TimelinePanel(title: "long", originUnixMs: 0, samples: samples, marks: [])
        let svg = TimelineSVG.render(heading: "thinned", panels: [panel])
        let doc = try parse(svg)
        let dots = doc.elements["circle", default: 0] - RequestOutcome.allCases.count
        #expect(dots <= TimelineSVG.maxDots + 1)
        #expect(svg.components(separatedBy: "fill=\"#c62828\" fill-opacity").count - 1 == 50)
        #expect(doc.text.contains("successful request drawn; every failure drawn"))
    }

    @Test func tooManyRunsAreCappedWithANote() throws {
        let r = RunEvaluator.evaluate(Canned.raceObservation(load: .idle))
        let panels = Array(repeating: TimelinePanel.of(r, samples: [], windowStartUnixMs: 0), count: TimelineSVG.maxPanels + 3)
        let doc = try parse(TimelineSVG.render(heading: "many", panels: panels))
        #expect(doc.classes.filter { $0 == "panel" }.count == TimelineSVG.maxPanels)
        #expect(doc.text.contains("3 more run(s) not drawn"))
    }

    @Test func niceSteps() {
        #expect(TimelineSVG.niceStep(130) == 200)
        #expect(TimelineSVG.niceStep(0.3) == 0.5)
        #expect(TimelineSVG.niceStep(1000) == 1000)
        #expect(TimelineSVG.niceStep(0) == 1)
    }
}
