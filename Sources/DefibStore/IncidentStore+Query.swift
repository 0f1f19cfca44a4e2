import DefibCore
import Foundation
import GRDB

/// Which incidents `defib incidents` selects: coredumpctl's matches over incident fields. Values of the same
/// field are alternatives (any of them), different fields must all hold — the journal's match rules.
public struct IncidentQuery: Sendable, Equatable {
    /// `FIELD=VALUE` matches, by field, each with its alternatives.
    public var matches: [IncidentMatchField: [String]] = [:]
    /// Detected at or after / at or before (both inclusive).
    public var since: Date?
    public var until: Date?
    /// At most this many: the newest ones, whatever the order they are listed in.
    public var limit: Int?
    /// List the oldest first (coredumpctl's order) instead of the newest first.
    public var oldestFirst = false

    /// Matches everything, newest first.
    public init() {}

    /// Adds an alternative for `field`.
    public mutating func add(_ field: IncidentMatchField, _ value: String) {
        matches[field, default: []].append(value)
    }
}

/// One signature's history: how often the same hang came back, since when, where.
public struct SignatureSummary: Sendable, Equatable {
    /// The signature (16 hex digits).
    public var signature: String
    /// How many incidents carry it.
    public var count: Int
    /// The first and the last detection.
    public var firstSeen: Date
    public var lastSeen: Date
    /// The diagnosis kind of the newest of them (nil while undiagnosed).
    public var diagnosisKind: String?
    /// The services it happened in, sorted.
    public var services: [String]
    /// The newest incident's id.
    public var lastIncident: Int64
    /// How many of `count` were stalls (the service came back by itself; nothing was done).
    public var stalls = 0
}

extension IncidentStore {
    /// The incidents `query` selects, newest first unless `oldestFirst`.
    public func incidents(matching query: IncidentQuery) throws -> [Incident] {
        let (filter, arguments) = try whereClause(query)
        var sql = "SELECT \(Self.columns) FROM incident\(filter) ORDER BY detected_at DESC, id DESC"
        var args = arguments
        if let limit = query.limit {
            sql += " LIMIT ?"
            args.append(max(0, limit))
        }
        if query.oldestFirst { sql = "SELECT * FROM (\(sql)) ORDER BY detected_at ASC, id ASC" }
        return try fetch("list incidents", sql: sql, arguments: StatementArguments(args))
    }

    /// Whether an incident with this id exists (a bare number on the command line is its id if so, else a pid).
    public func exists(id: Int64) throws -> Bool {
        do {
            return try reader.read { try Int.fetchOne($0, sql: "SELECT COUNT(*) FROM incident WHERE id = ?", arguments: [id]) ?? 0 } > 0
        } catch {
            throw StoreError(.read, path: path, "look up incident \(id): \(sqliteMessage(error))")
        }
    }

    /// One summary per signature among the incidents `query` selects (its limit and order are ignored; incidents
    /// not yet signed are left out), the most recently seen first.
    public func signatures(matching query: IncidentQuery) throws -> [SignatureSummary] {
        var unlimited = query
        unlimited.limit = nil
        let (filter, arguments) = try whereClause(unlimited)
        let kind = try column("diagnosis_kind")
        let rows: [Row]
        do {
            rows = try reader.read { db in
                try Row.fetchAll(db, sql: """
                    SELECT id, service, signature, detected_at, cause_kind, \(kind) AS kind FROM incident\(filter)
                    \(filter.isEmpty ? " WHERE" : " AND") signature IS NOT NULL ORDER BY detected_at ASC, id ASC
                    """, arguments: StatementArguments(arguments))
            }
        } catch {
            throw StoreError(.read, path: path, "list signatures: \(sqliteMessage(error))")
        }
        var summaries: [String: SignatureSummary] = [:]
        var services: [String: Set<String>] = [:]
        for row in rows {
            let signature: String = row["signature"]
            let detected = Date(millisecondsSince1970: row["detected_at"])
            let id: Int64 = row["id"]
            services[signature, default: []].insert(row["service"])
            let stall = (row["cause_kind"] as String?) == "stall" ? 1 : 0
            if var s = summaries[signature] {
                s.stalls += stall
                s.count += 1
                s.lastSeen = detected
                s.lastIncident = id
                s.diagnosisKind = row["kind"]
                summaries[signature] = s
            } else {
                summaries[signature] = SignatureSummary(signature: signature, count: 1, firstSeen: detected, lastSeen: detected,
                                                        diagnosisKind: row["kind"], services: [], lastIncident: id, stalls: stall)
            }
        }
        return summaries.values.map { s in
            var s = s
            s.services = services[s.signature, default: []].sorted()
            return s
        }.sorted { ($0.lastSeen, $0.lastIncident) > ($1.lastSeen, $1.lastIncident) }
    }

    // MARK: SQL

    /// The WHERE clause of `query`, with its arguments.
    func whereClause(_ query: IncidentQuery) throws -> (String, [any DatabaseValueConvertible]) {
        var clauses: [String] = []
        var args: [any DatabaseValueConvertible] = []
        for field in IncidentMatchField.allCases {
            guard let values = query.matches[field], !values.isEmpty else { continue }
            let target = try column(Self.columnName(field))
            if field == .kind {
                // A kind is a set of causes.
                let causes = try values.flatMap { value -> [String] in
                    guard let kind = IncidentKind(rawValue: value) else {
                        throw StoreError(.read, path: path, "KIND=\(value): expected one of \(IncidentKind.allCases.map(\.rawValue).joined(separator: ", "))")
                    }
                    return kind.causeKinds
                }
                clauses.append("\(target) IN (\(causes.map { _ in "?" }.joined(separator: ", ")))")
                args += causes
                continue
            }
            clauses.append("\(target) IN (\(values.map { _ in "?" }.joined(separator: ", ")))")
            for value in values {
                switch field {
                case .id, .pid, .uid, .gid:
                    guard let number = Int64(value) else {
                        throw StoreError(.read, path: path, "\(field.rawValue)=\(value): not a number")
                    }
                    args.append(number)
                default:
                    args.append(value)
                }
            }
        }
        if let since = query.since { clauses.append("detected_at >= ?"); args.append(since.storedMilliseconds) }
        if let until = query.until { clauses.append("detected_at <= ?"); args.append(until.storedMilliseconds) }
        return (clauses.isEmpty ? "" : " WHERE " + clauses.joined(separator: " AND "), args)
    }

    static func columnName(_ field: IncidentMatchField) -> String {
        switch field {
        case .id: "id"
        case .pid: "pid"
        case .comm: "comm"
        case .exe: "exe"
        case .uid: "uid"
        case .gid: "gid"
        case .service: "service"
        case .cause: "cause_kind"
        case .signature: "signature"
        case .diagnosis: "diagnosis_kind"
        case .outcome: "outcome"
        case .kind: "cause_kind"
        }
    }

    /// `name` itself, or for a derived column a store written before it existed lacks, its expression.
    func column(_ name: String) throws -> String {
        guard let derived = IncidentSchema.derivedColumns.first(where: { $0.name == name }) else { return name }
        let present: Bool
        do {
            // table_xinfo, not table_info: generated columns are hidden from the latter.
            present = try reader.read { db in
                try Row.fetchAll(db, sql: "PRAGMA table_xinfo(incident)").contains { ($0["name"] as String?) == name }
            }
        } catch {
            throw StoreError(.read, path: path, "read the schema: \(sqliteMessage(error))")
        }
        return present ? name : "(\(derived.expression))"
    }
}
