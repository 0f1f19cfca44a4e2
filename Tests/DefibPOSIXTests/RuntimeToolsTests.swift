import DefibCore
import CDefibShims
@testable import DefibPOSIX
import Foundation
import Glibc
import Synchronization
import Testing

/// Finding and running the runtime tools the way a root supervisor must, and detecting a runtime.
struct RuntimeToolsTests {
    static func scratch(_ name: String) -> String {
        let path = "/tmp/defib-rtt-\(name)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        mkdir(path, 0o755)
        return path
    }

    @Test func aMissingToolNamesThePackageToInstall() {
        let empty = Self.scratch("empty"); defer { rmdir(empty) }
        for tool in RuntimeTool.allCases {
            guard case let .failure(error) = tool.locate(in: [empty]) else { Issue.record("\(tool) found in an empty directory"); continue }
            #expect(error.description.hasPrefix("\(tool.rawValue): not found; install "), "\(error)")
        }
        if case let .failure(e) = RuntimeTool.jcmd.locate(in: [empty]) { #expect(e.description.contains("openjdk-17-jdk-headless")) }
        if case let .failure(e) = RuntimeTool.dlv.locate(in: [empty]) { #expect(e.description.contains("apt-get install delve")) }
        if case let .failure(e) = RuntimeTool.pySpy.locate(in: [empty]) { #expect(e.description.contains("pip install py-spy")) }
    }

    @Test func aToolOthersCouldReplaceIsNotRun() throws {
        let dir = Self.scratch("untrusted"); defer { unlink("\(dir)/py-spy"); rmdir(dir) }
        try "#!/bin/sh\necho hi\n".write(toFile: "\(dir)/py-spy", atomically: false, encoding: .utf8)
        chmod("\(dir)/py-spy", 0o757)
        guard case let .failure(e) = RuntimeTool.pySpy.locate(in: [dir]) else { Issue.record("a world-writable tool was accepted"); return }
        #expect(e.description.contains("not trusted") && e.description.contains("writable by group or others"), "\(e)")
        chmod("\(dir)/py-spy", 0o755)
        chmod(dir, 0o777)
        #expect(RuntimeTool.trustProblem("\(dir)/py-spy") == "its directory is writable by group or others")
        chmod(dir, 0o755)
        #expect(RuntimeTool.trustProblem("\(dir)/py-spy") == nil)
        #expect(try RuntimeTool.pySpy.locate(in: [dir]).get() == "\(dir)/py-spy")
    }

    @Test func aHelperPastItsBudgetIsKilledAndReaped() throws {
        let run = try HelperRunner.run(["/bin/sh", "-c", "echo started; exec sleep 30"], environment: RuntimeTool.cleanEnvironment(home: nil), budgetMs: 300)
        #expect(run.timedOut && run.output == "started\n")
        #expect(run.status == .signaled(signal: SIGKILL, coreDumped: false))
        #expect(run.elapsedMs < 10_000)
        let ok = try HelperRunner.run(["/bin/sh", "-c", "echo $PATH; echo ${NOTIFY_SOCKET:-none}"], environment: RuntimeTool.cleanEnvironment(home: "/nonexistent"), budgetMs: 10_000)
        #expect(!ok.timedOut && ok.status == .exited(code: 0))
        #expect(ok.output == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\nnone\n")
        let big = try HelperRunner.run(["/bin/sh", "-c", "head -c 100000 /dev/zero"], environment: [:], budgetMs: 10_000, maxBytes: 1000)
        #expect(big.truncated && big.output.utf8.count == 1000)
    }

    @Test func runtimesAreDetectedFromTheExecutableAndItsMappings() {
        // This test process is a Swift program: native.
        #expect(RuntimeDetector.detect(pid: getpid()).0 == .native)
        #expect(ELFSections.names(path: "/proc/self/exe").contains(".text"))
        #expect(ELFSections.names(path: "/etc/hostname").isEmpty)
        for name in ["python", "python3", "python3.11", "python3.13"] { #expect(RuntimeDetector.isPythonName(name), "\(name)") }
        for name in ["python3-config", "pythonista", "python.", "ipython3"] { #expect(!RuntimeDetector.isPythonName(name), "\(name)") }
    }

}

/// The wait-for reader against real glibc mutexes in this very process: a holder thread keeps the mutex while
/// it waits on a pipe, a waiter thread blocks in pthread_mutex_lock, and the reader must find that one edge
/// with the right owner and kind — for every mutex kind glibc has.
@Suite(.serialized)
struct WaitForReaderTests {
    final class Box: @unchecked Sendable {
        var mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
        var holderTid: Int32 = 0
        var waiterTid: Int32 = 0
        var fds: [Int32] = [-1, -1]
        let locked = DispatchSemaphore(value: 0)
        let done = DispatchGroup()
    }

    static func edge(type: Int32, robust: Bool = false, pi: Bool = false) throws -> (WaitForEdge?, Box) {
        let box = Box()
        var attr = pthread_mutexattr_t()
        pthread_mutexattr_init(&attr)
        pthread_mutexattr_settype(&attr, type)
        if robust { pthread_mutexattr_setrobust(&attr, Int32(PTHREAD_MUTEX_ROBUST)) }
        if pi { pthread_mutexattr_setprotocol(&attr, Int32(PTHREAD_PRIO_INHERIT)) }
        pthread_mutex_init(box.mutex, &attr)
        pthread_mutexattr_destroy(&attr)
        guard pipe(&box.fds) == 0 else { throw SystemError("pipe") }
        box.done.enter()
        Thread {
            box.holderTid = defib_gettid()
            pthread_mutex_lock(box.mutex)
            box.locked.signal()
            var b: UInt8 = 0
            _ = read(box.fds[0], &b, 1)   // hold the mutex until the test has looked
            pthread_mutex_unlock(box.mutex)
            box.done.leave()
        }.start()
        box.locked.wait()
        box.done.enter()
        Thread {
            box.waiterTid = defib_gettid()
            pthread_mutex_lock(box.mutex)
            pthread_mutex_unlock(box.mutex)
            box.done.leave()
        }.start()
        // Until the waiter sleeps in the kernel on the mutex (generous: the machine is shared).
        var found: WaitForEdge?
        let deadline = monotonicNanoseconds() + 10_000_000_000
        while found == nil && monotonicNanoseconds() < deadline {
            usleep(10_000)
            found = WaitForReader.read(pid: getpid()).edges.first { $0.waiterTid == box.waiterTid && box.waiterTid != 0 }
        }
        var b: UInt8 = 1
        _ = write(box.fds[1], &b, 1)
        box.done.wait()
        close(box.fds[0]); close(box.fds[1])
        pthread_mutex_destroy(box.mutex)
        box.mutex.deallocate()
        return (found, box)
    }

    @Test(arguments: [(Int32(PTHREAD_MUTEX_NORMAL), "normal"), (Int32(PTHREAD_MUTEX_RECURSIVE), "recursive"),
                      (Int32(PTHREAD_MUTEX_ERRORCHECK), "error-checking")])
    func aThreadBlockedOnAMutexWaitsForItsOwner(type: Int32, kind: String) throws {
        let (edge, box) = try Self.edge(type: type)
        let e = try #require(edge, "no edge for a \(kind) mutex")
        #expect(e.ownerTid == box.holderTid && e.mutex == "0x" + String(UInt(bitPattern: box.mutex), radix: 16))
        #expect(e.kind == kind)
    }

    @Test func robustAndPriorityInheritingMutexesAreReadToo() throws {
        let (robust, rbox) = try Self.edge(type: Int32(PTHREAD_MUTEX_NORMAL), robust: true)
        #expect(robust?.ownerTid == rbox.holderTid && robust?.kind == "normal+robust", "\(String(describing: robust))")
        let (pi, pbox) = try Self.edge(type: Int32(PTHREAD_MUTEX_NORMAL), pi: true)
        #expect(pi?.ownerTid == pbox.holderTid && pi?.kind == "normal+pi", "\(String(describing: pi))")
    }

    /// Swift's `Synchronization.Mutex` locks with FUTEX_LOCK_PI on Linux: the word holds the owner's tid.
    @Test func aSwiftMutexIsReadThroughThePIProtocol() throws {
        final class State: @unchecked Sendable {
            let mutex = Mutex<Int>(0)
            var holder: Int32 = 0, waiter: Int32 = 0
            var fds: [Int32] = [-1, -1]
            let locked = DispatchSemaphore(value: 0)
            let done = DispatchGroup()
        }
        let s = State()
        guard pipe(&s.fds) == 0 else { throw SystemError("pipe") }
        s.done.enter()
        Thread {
            s.holder = defib_gettid()
            s.mutex.withLock { _ in
                s.locked.signal()
                var b: UInt8 = 0
                _ = read(s.fds[0], &b, 1)
            }
            s.done.leave()
        }.start()
        s.locked.wait()
        s.done.enter()
        Thread {
            s.waiter = defib_gettid()
            s.mutex.withLock { $0 += 1 }
            s.done.leave()
        }.start()
        var found: WaitForEdge?
        let deadline = monotonicNanoseconds() + 10_000_000_000
        while found == nil && monotonicNanoseconds() < deadline {
            usleep(10_000)
            found = WaitForReader.read(pid: getpid()).edges.first { $0.waiterTid == s.waiter && s.waiter != 0 }
        }
        var b: UInt8 = 1
        _ = write(s.fds[1], &b, 1)
        s.done.wait()
        close(s.fds[0]); close(s.fds[1])
        let e = try #require(found, "no edge for a Swift Mutex")
        #expect(e.ownerTid == s.holder && e.kind == "pi-futex")
    }

    @Test func noEdgeForAProcessThatIsGone() {
        #expect(WaitForReader.read(pid: 999_999_999).edges.isEmpty)
    }
}
