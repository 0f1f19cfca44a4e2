import DefibCore
import DefibStore
import Foundation
import Testing

/// The runtime evidence through the store and the JSON: wait-for edges, the runtime, its stacks; the `runtime`
/// column the migration adds (virtual: computed from the body, so rows written before it have it too).
@Suite struct RuntimeEvidenceStoreTests {
    static func incident(runtime: ServiceRuntime, pid: Int32) -> Incident {
        var i = Incident(service: "svc", pid: pid, detectedAt: at(1_795_000_000_000 + Int64(pid)), cause: .missedHeartbeat(misses: 3, lastPongAt: nil, lastError: nil))
        i.waitFor = [WaitForEdge(waiterTid: 12, waiterName: "worker-a", mutex: "0x5000", ownerTid: 13, ownerName: "worker-b", kind: "normal")]
        let threads = [RuntimeThread(id: "20", state: "waiting", frames: [RuntimeFrame(function: "sync.(*RWMutex).RLock", file: "/usr/lib/go/src/sync/rwmutex.go", line: 71),
                                                                          RuntimeFrame(function: "main.resolve", file: "/src/main.go", line: 43)])]
        i.runtimeEvidence = RuntimeEvidence(runtime: runtime, tool: "dlv core", error: nil, groups: RuntimeStacks.group(threads, runtime: .go), total: 1)
        return i
    }

    @Test func runtimeEvidenceRoundTripsAndShowsInTheJSON() throws {
        let dir = TempDirectory()
        let store = try IncidentStore.open(stateDirectory: dir.path)
        let id = try store.insert(Self.incident(runtime: .go, pid: 1))
        let back = try #require(try store.incident(id: id))
        #expect(back.waitFor == Self.incident(runtime: .go, pid: 1).waitFor)
        #expect(back.runtimeEvidence == Self.incident(runtime: .go, pid: 1).runtimeEvidence)
        let o = try #require(try JSONSerialization.jsonObject(with: Data(IncidentJSON.string(back).utf8)) as? [String: Any])
        #expect(o["runtime"] as? String == "go" && o["runtime_tool"] as? String == "dlv core" && o["runtime_error"] is NSNull)
        let edge = try #require((o["wait_for"] as? [[String: Any]])?.first)
        #expect(edge["waiter_tid"] as? Int == 12 && edge["waiter_name"] as? String == "worker-a" && edge["mutex"] as? String == "0x5000")
        #expect(edge["owner_tid"] as? Int == 13 && edge["owner_name"] as? String == "worker-b" && edge["mutex_kind"] as? String == "normal")
        let group = try #require((o["runtime_stacks"] as? [[String: Any]])?.first)
        #expect(group["count"] as? Int == 1 && group["frames"] as? [String] == ["main.resolve (main.go:43)"])
        #expect(group["runtime_frames"] as? [String] == ["sync.(*RWMutex).RLock (rwmutex.go:71)"])
        // An incident without runtime evidence: empty lists and nulls, never missing keys.
        let bare = try #require(try JSONSerialization.jsonObject(with: Data(IncidentJSON.string(Incident(service: "s", pid: 1, detectedAt: at(0), cause: .exited(code: 1))).utf8)) as? [String: Any])
        #expect((bare["wait_for"] as? [Any])?.isEmpty == true && bare["runtime"] is NSNull && (bare["runtime_stacks"] as? [Any])?.isEmpty == true)
    }

    @Test func incidentsAreFoundByRuntime() throws {
        let dir = TempDirectory()
        let store = try IncidentStore.open(stateDirectory: dir.path)
        try store.insert(Self.incident(runtime: .go, pid: 1))
        try store.insert(Self.incident(runtime: .java, pid: 2))
        try store.insert(Self.incident(runtime: .go, pid: 3))
        try store.insert(Incident(service: "svc", pid: 4, detectedAt: at(0), cause: .exited(code: 1)))
        #expect(try store.list(runtime: .go).map(\.pid) == [3, 1])
        #expect(try store.list(runtime: .java).map(\.pid) == [2])
        #expect(try store.list(runtime: .python).isEmpty)
        #expect(try store.list(runtime: .go, limit: 1).map(\.pid) == [3])
    }
}
