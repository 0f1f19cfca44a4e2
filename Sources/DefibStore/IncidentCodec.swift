import DefibCore
import Foundation

/// The `body` column: the whole `Incident` as JSON, dates as RFC 3339 strings with milliseconds so the row
/// reads well in `sqlite3` (`json_extract(body, '$.readyAt')`).
///
/// Reading is deliberately forgiving: a row written by an older defib lacks fields added since. Optional
/// fields decode as nil by themselves; the non-optional ones are filled here from the indexed columns or
/// with their neutral value, so an upgrade never makes old incidents unreadable.
enum IncidentCodec {
    static func encode(_ incident: Incident) throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        encoder.dateEncodingStrategy = .custom { date, encoder in
            var c = encoder.singleValueContainer()
            try c.encode(RFC3339.string(date))
        }
        var stored = incident
        stored.id = nil   // the row id is the one truth; a copy in the body could only disagree
        return String(decoding: try encoder.encode(stored), as: UTF8.self)
    }

    /// The columns a row carries besides its body, used to complete bodies from older versions.
    struct Columns {
        var id: Int64
        var service: String
        var pid: Int64
        var detectedAtMs: Int64
        var outcome: String
    }

    static func decode(_ body: String, columns: Columns) throws -> Incident {
        // Rows written by this version decode directly; only older ones need completing.
        if var incident = try? decoder.decode(Incident.self, from: Data(body.utf8)) {
            incident.id = columns.id
            return incident
        }
        guard var object = try JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any] else {
            throw DecodeFailure(message: "body is not a JSON object")
        }
        func fill(_ key: String, _ value: Any) { if object[key] == nil || object[key] is NSNull { object[key] = value } }
        fill("service", columns.service)
        fill("pid", columns.pid)
        fill("detectedAt", RFC3339.string(Date(millisecondsSince1970: columns.detectedAtMs)))
        fill("outcome", columns.outcome)
        fill("diagnosis", "")
        fill("notes", [String]())
        fill("lockState", [Any]())
        if var capture = object["capture"] as? [String: Any] {
            if capture["method"] == nil { capture["method"] = "unknown" }
            if capture["bytes"] == nil { capture["bytes"] = 0 }
            if capture["durationMs"] == nil { capture["durationMs"] = 0.0 }
            object["capture"] = capture
        }
        if let locks = object["lockState"] as? [[String: Any]] {
            object["lockState"] = locks.map { lock in
                var l = lock
                for key in ["name", "address", "word", "source"] where l[key] == nil { l[key] = "unknown" }
                return l
            }
        }
        guard object["cause"] != nil else { throw DecodeFailure(message: "body has no cause") }
        var incident = try decoder.decode(Incident.self, from: JSONSerialization.data(withJSONObject: object))
        incident.id = columns.id
        return incident
    }

    struct DecodeFailure: Error, CustomStringConvertible {
        var message: String
        var description: String { message }
    }

    private static var decoder: JSONDecoder {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .custom { decoder in
            let c = try decoder.singleValueContainer()
            if let seconds = try? c.decode(Double.self) { return Date(timeIntervalSince1970: seconds) }
            let text = try c.decode(String.self)
            guard let date = parseRFC3339(text) else {
                throw DecodingError.dataCorruptedError(in: c, debugDescription: "not an RFC 3339 timestamp: \(text)")
            }
            return date
        }
        return decoder
    }

    static func parseRFC3339(_ text: String) -> Date? { RFC3339.date(from: text) }
}

extension Date {
    /// The `detected_at` column's unit: whole milliseconds since 1970, the precision of the JSON timestamps.
    var millisecondsSince1970: Int64 { Int64((timeIntervalSince1970 * 1000).rounded()) }
    /// The millisecond the body's timestamp says (the formatter cuts sub-millisecond digits rather than
    /// rounding them), so the indexed column and the body never disagree.
    var storedMilliseconds: Int64 {
        (IncidentCodec.parseRFC3339(RFC3339.string(self)) ?? self).millisecondsSince1970
    }
    init(millisecondsSince1970 ms: Int64) { self.init(timeIntervalSince1970: Double(ms) / 1000) }
}
