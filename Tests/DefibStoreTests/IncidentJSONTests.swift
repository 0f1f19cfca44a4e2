import DefibCore
import DefibStore
import Foundation
import Testing

/// The `--json` contract (DefibCore.IncidentJSON), checked on incidents as the store gives them back.
@Suite struct IncidentJSONTests {
    static let contractKeys = ["id", "service", "pid", "binary", "cause", "cause_detail", "outcome", "diagnosis", "signature",
                               "started_at", "detected_at", "killed_at", "restarted_at", "ready_at", "restore_ms", "new_pid",
                               "capture_method", "core_path", "core_bytes", "capture_ms", "capture_error", "lock_words",
                               "lock_state", "threads", "diagnosis_evidence", "silence_ms", "extended_ms", "progress",
                               "thread_states", "flight_recorder", "notes"]
                               // who the process was and how it ended (coredumpctl's columns)
                               + ["uid", "gid", "comm", "argv", "unit", "signal", "signal_name", "diagnosis_kind"]
                               // the runtime evidence
                               + ["wait_for", "runtime", "runtime_tool", "runtime_error", "runtime_stacks"]
                               // a multi-process instance's processes
                               + ["processes"]
                               // what the hang was declared on, and the timeline of its handling
                               + ["declared_on", "timeline", "capture_order"]
                               // a stall's suspect-stage evidence
                               + ["stall_evidence"]

    func keys(_ v: JSONValue) -> [String] {
        guard case let .object(members) = v else { return [] }
        return members.map(\.key)
    }

    func parse(_ text: String) throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
    }

    @Test func aFullIncidentHasEveryContractKeyInOrder() throws {
        let dir = TempDirectory()
        let store = try IncidentStore.open(stateDirectory: dir.path)
        let id = try store.insert(fullyPopulated())
        let incident = try #require(try store.incident(id: id))

        #expect(keys(IncidentJSON.object(incident)) == Self.contractKeys)
        #expect(keys(IncidentJSON.object(incident, includeStacks: true)) == Self.contractKeys + ["stacks"])

        for pretty in [true, false] {
            let o = try parse(IncidentJSON.string(incident, includeStacks: true, pretty: pretty))
            #expect(o["id"] as? Int == Int(id))
            #expect(o["service"] as? String == "proxy")
            #expect(o["pid"] as? Int == 4123)
            #expect(o["binary"] as? String == "/usr/local/bin/defib-proxy")
            #expect(o["cause"] as? String == "missed-heartbeat")
            #expect(o["cause_detail"] as? String == incident.cause.summary)
            #expect(o["outcome"] as? String == "recovered")
            #expect((o["diagnosis"] as? String)?.hasPrefix("corrupted-lock-word") == true)
            #expect(o["signature"] is NSNull)
            #expect(o["started_at"] as? String == "2026-11-18T11:05:40.000Z")
            #expect(o["detected_at"] as? String == "2026-11-18T11:06:40.000Z")
            #expect(o["killed_at"] as? String == "2026-11-18T11:06:40.812Z")
            #expect(o["restarted_at"] as? String == "2026-11-18T11:06:40.915Z")
            #expect(o["ready_at"] as? String == "2026-11-18T11:06:41.377Z")
            #expect(o["restore_ms"] as? Int == 1377)
            #expect(o["new_pid"] as? Int == 4190)
            #expect(o["capture_method"] as? String == "gcore")
            #expect(o["core_path"] as? String == "/var/lib/defib/cores/core.proxy.1.1795000000")
            #expect(o["core_bytes"] as? Int == 48_123_904)
            #expect(o["capture_ms"] as? Double == 801.25)
            #expect(o["capture_error"] is NSNull)
            #expect(o["lock_words"] as? [String] == ["0xfffffffffffffffe"], "'unknown' is not a word")
            let locks = try #require(o["lock_state"] as? [[String: Any]])
            #expect(locks.count == 2)
            #expect(locks[0]["name"] as? String == "catalog")
            #expect(locks[0]["address"] as? String == "0x00007f1234560000")
            #expect(locks[0]["source"] as? String == "memory")
            #expect(locks[0]["holder"] is NSNull)
            #expect(locks[0]["last_holder"] as? String == "reload#7")
            #expect(locks[0]["readers_waiting"] as? Int == 31)
            #expect(locks[0]["writers_waiting"] as? Int == 1)
            #expect(locks[1]["word"] as? String == "unknown")
            #expect(locks[1]["readers_waiting"] is NSNull)
            #expect(o["threads"] is NSNull)
            #expect(o["notes"] as? [String] == incident.notes, "unicode survives")
            #expect(o["stacks"] as? String == incident.stacks, "newlines and quotes survive")
        }
    }

    @Test func anOpenIncidentWithoutCaptureUsesNullsAndZero() throws {
        let incident = Incident(service: "svc", pid: 9, detectedAt: at(base), cause: .exited(code: 7))
        let o = try parse(IncidentJSON.string(incident, includeStacks: true))
        #expect(o["id"] is NSNull)
        #expect(o["cause"] as? String == "exited")
        #expect((o["cause_detail"] as? String)?.contains("code 7") == true)
        #expect(o["outcome"] as? String == "open")
        #expect(o["diagnosis"] as? String == "")
        for key in ["binary", "started_at", "killed_at", "restarted_at", "ready_at", "restore_ms", "new_pid",
                    "core_path", "capture_error", "stacks"] {
            #expect(o[key] is NSNull, "\(key) should be null")
        }
        // No capture: the method is "none" and the numbers are numbers (0), for scripts that sum or compare them.
        #expect(o["capture_method"] as? String == "none")
        #expect(o["capture_ms"] as? Double == 0)
        #expect(o["core_bytes"] as? Int == 0)
        #expect(o["lock_words"] as? [String] == [])
        #expect(o["lock_state"] as? [Any] != nil)
        #expect(o["notes"] as? [String] == [])
    }

    @Test func aCaptureWithoutACoreHasNoCorePathButItsDuration() throws {
        var incident = Incident(service: "svc", pid: 9, detectedAt: at(base), cause: .exited(code: 7))
        incident.capture = CaptureRecord(method: "gcore", path: nil, bytes: 123, durationMs: 10_000,
                                         error: "gcore overran its 10000 ms budget")
        let o = try parse(IncidentJSON.string(incident))
        #expect(o["core_path"] is NSNull)
        #expect(o["core_bytes"] as? Int == 0, "no file, no bytes")
        #expect(o["capture_ms"] as? Double == 10_000)
        #expect(o["capture_error"] as? String == "gcore overran its 10000 ms budget")
    }

    @Test func lockWordsAreNormalisedTo16LowerCaseHexDigits() {
        #expect(IncidentJSON.normalizedWord("0xFFFFFFFFFFFFFFFE") == "0xfffffffffffffffe")
        #expect(IncidentJSON.normalizedWord("0x8") == "0x0000000000000008")
        #expect(IncidentJSON.normalizedWord("1f") == "0x000000000000001f")
        #expect(IncidentJSON.normalizedWord("unknown") == nil)
        #expect(IncidentJSON.normalizedWord("0x") == nil)
        #expect(IncidentJSON.normalizedWord("0x1ffffffffffffffff") == nil, "more than 64 bits")
    }

    @Test func renderingEscapesAndKeepsOrder() throws {
        let value = JSONValue.object([
            .init("z", .string("tab\tquote\"backslash\\bell\u{07}")),
            .init("a", .array([.int(-3), .double(0.5), .double(.nan), .bool(true), .null])),
            .init("m", .object([])),
        ])
        let compact = value.rendered(pretty: false)
        #expect(compact == #"{"z":"tab\tquote\"backslash\\bell\u0007","a":[-3,0.5,null,true,null],"m":{}}"#)
        let back = try parse(value.rendered(pretty: true))
        #expect(back["z"] as? String == "tab\tquote\"backslash\\bell\u{07}")
        #expect(IncidentJSON.array([]) == "[]")
        #expect(value["m"] == .object([]))
        #expect(value["missing"] == nil)
    }

    /// Strings are copied between escapes as UTF-8 runs: whatever surrounds an escape (a combining mark after
    /// a quote makes one character of both, CR LF is one character, emoji, DEL, every control) reads back
    /// exactly, and no control character is left raw.
    @Test func everyStringReadsBackExactly() throws {
        var samples = ["", "plain", "\"\u{301}x", "\\\u{301}", "a\r\nb", "\u{1F600}\"\u{1F600}", "\u{7F}\u{0}\u{1F}é", "tab\tend\\"]
        var rng = SystemRandomNumberGenerator()
        let alphabet: [Unicode.Scalar] = ["a", "\"", "\\", "\n", "\r", "\t", "\u{0}", "\u{8}", "\u{1B}", "\u{7F}", "\u{301}", "é", "ß",
                                          "\u{1F600}", "\u{200D}", " ", "/", "\u{FEFF}"]
        for _ in 0..<500 {
            var s = String.UnicodeScalarView()
            for _ in 0..<Int.random(in: 0...40, using: &rng) { s.append(alphabet.randomElement(using: &rng)!) }
            samples.append(String(s))
        }
        for s in samples {
            let text = JSONValue.string(s).rendered(pretty: false)
            #expect(!text.unicodeScalars.contains { $0.value < 0x20 || $0.value == 0x7F }, "\(text.debugDescription)")
            #expect(try JSONDecoder().decode(String.self, from: Data(text.utf8)) == s, "\(s.debugDescription) → \(text)")
        }
        #expect(JSONValue.string("\u{1}\u{1F}\u{7F}").rendered() == #""\u0001\u001f\u007f""#)
    }
}

extension IncidentJSONTests {
    @Test func lockObjectsCarryThePendingWriterAndTheReadHoldersThroughTheStore() throws {
        var incident = Incident(service: "proxy", pid: 4123, detectedAt: at(base), cause: .missedHeartbeat(misses: 4, lastPongAt: nil, lastError: nil))
        var leaked = LockState(name: "catalog", address: "0x00007f1234560000", word: "0x1b", source: "memory",
                               holder: "catalog.reload tid=4130", readersWaiting: 2, writersWaiting: 1)
        leaked.holderTid = 4130
        leaked.holderWaitingForReaders = true
        leaked.readHolders = [LockReadHolderRecord(tid: 4125, sinceUnixMs: base - 5000),
                              LockReadHolderRecord(tid: 4126, depth: 2, sinceUnixMs: base - 1000, threadExited: true)]
        leaked.moreReadHolders = 1
        // A lock from a source that says nothing about either (control channel, version 1 recorder).
        let unknown = LockState(name: "sessions", address: "0x10", word: "0x0", source: "control")
        incident.lockState = [leaked, unknown]
        let dir = TempDirectory()
        let store = try IncidentStore.open(stateDirectory: dir.path)
        let stored = try #require(try store.incident(id: try store.insert(incident)))
        #expect(stored.lockState == incident.lockState)

        let o = try parse(IncidentJSON.string(stored))
        let locks = try #require(o["lock_state"] as? [[String: Any]])
        #expect(locks[0]["holder_waiting_for_readers"] as? Bool == true)
        let holders = try #require(locks[0]["read_holders"] as? [[String: Any]])
        #expect(holders.count == 2)
        #expect(holders[0]["tid"] as? Int == 4125)
        #expect(holders[0]["depth"] as? Int == 1)
        #expect(holders[0]["since"] as? String == "2026-11-18T11:06:35.000Z")
        #expect(holders[0]["exited"] as? Bool == false)
        #expect(holders[1]["depth"] as? Int == 2 && holders[1]["exited"] as? Bool == true)
        #expect(locks[0]["more_read_holders"] as? Int == 1)
        for key in ["holder_waiting_for_readers", "read_holders", "more_read_holders"] {
            #expect(locks[1][key] is NSNull, "\(key): unknown, not false or empty")
        }
    }
}
