// ParkingLock's uncontended costs, release build: ns per operation, median and minimum of 15 rounds.
// Built and run by run.sh (which can build an older revision next to the working tree for a before/after).
import CDefibShims
import Glibc
import ParkingLock

@inline(never) func measure(_ name: String, iterations: Int = 2_000_000, _ body: () -> Void) {
    var samples: [Double] = []
    for _ in 0..<15 {
        let start = defib_monotonic_ns()
        for _ in 0..<iterations { body() }
        samples.append(Double(defib_monotonic_ns() - start) / Double(iterations))
    }
    samples.sort()
    report(name, median: samples[7], min: samples[0])
}

func report(_ name: String, median: Double, min: Double? = nil) {
    func f(_ x: Double) -> String { String(Double(Int(x * 10)) / 10) }
    print(name + String(repeating: " ", count: max(1, 46 - name.count)) + "median " + f(median) + " ns"
        + (min.map { "  min " + f($0) + " ns" } ?? ""))
}

final class LockBox: @unchecked Sendable {
    let lock: RwLock
    init(_ lock: RwLock) { self.lock = lock }
}

// Two threads taking the same read lock at once: the word's cache line bounces between them; the
// read-hold bookkeeping must not add a shared line of its own. Wall time per read, both threads together.
func twoReaders(_ lock: RwLock, iterations: Int) -> Double {
    var threads: [pthread_t] = []
    let start = defib_monotonic_ns()
    for _ in 0..<2 {
        var thread = pthread_t()
        pthread_create(&thread, nil, { arg in
            let box = Unmanaged<LockBox>.fromOpaque(arg!).takeRetainedValue()
            for _ in 0..<2_000_000 { box.lock.read {} }
            return nil
        }, Unmanaged.passRetained(LockBox(lock)).toOpaque())
        threads.append(thread)
    }
    for thread in threads { pthread_join(thread, nil) }
    return Double(defib_monotonic_ns() - start) / Double(2 * iterations)
}

@main enum LockBench {
    static func main() throws {
        let sink = UnsafeMutablePointer<Int>.allocate(capacity: 1)
        sink.initialize(to: 0)
        let plain = RwLock(name: "bench-plain", register: false)
        measure("read {} (no recorder)") { plain.read { sink.pointee &+= 1 } }
        measure("lockShared/unlockShared (no recorder)") { plain.lockShared(); sink.pointee &+= 1; plain.unlockShared() }
        measure("nested read, depth 2 (no recorder)") { plain.read { plain.read { sink.pointee &+= 1 } } }
        measure("write {} (no recorder)", iterations: 300_000) { plain.write(label: "bench") { sink.pointee &+= 1 } }
        let writer = try FlightRecorderWriter.open(path: "/tmp/defib-lock-bench-\(getpid()).rec")
        let recorded = RwLock(name: "bench-recorded")
        measure("read {} (recorder attached)") { recorded.read { sink.pointee &+= 1 } }
        measure("write {} (recorder attached)", iterations: 300_000) { recorded.write(label: "bench") { sink.pointee &+= 1 } }
        writer.close()
        unlink(writer.path)
        var two = (0..<7).map { _ in twoReaders(plain, iterations: 2_000_000) }
        two.sort()
        report("two threads, read {} on one lock (wall)", median: two[3])
    }
}
