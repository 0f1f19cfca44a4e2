import DefibCore
import DefibPOSIX
import DefibTestKit
import Foundation
import Glibc
import Testing

/// A service whose flight recorder cannot be allocated (its file system is full) runs without one: the
/// real proxy, its recorder on a really full tmpfs, keeps serving and answering pings under lock churn
/// (a sparse recorder used to SIGBUS it on the first lock event).
@Suite(.timeLimit(.minutes(2)))
struct DiskFullProxyTests {
    @Test func aProxyWhoseRecorderCannotBeAllocatedKeepsServing() throws {
        try #require(geteuid() == 0, "mounting a tmpfs needs root")
        try withTmpfs(size: "1m", name: "proxy-recorder") { disk in
            try disk.fill()
            let dir = Scratch("fullproxy"); defer { dir.remove() }
            let port = freePort()
            let control = dir.path + "/control.sock"
            let proxy = try Background([Binaries.proxy, "--listen", "127.0.0.1:\(port)", "--route", "app.test=127.0.0.1:9",
                                        "--churn", "200", "--reload-interval", "100"],
                                       env: ["DEFIB_FLIGHT_RECORDER": disk.path + "/flight-recorder", "DEFIB_CONTROL_SOCKET": control],
                                       log: dir.path + "/proxy.log")
            defer { proxy.stop() }
            let ready = waitUntil(timeoutMs: 20_000) {
                if case .success("pong 1") = ControlRequest.roundTrip(path: control, line: "ping 1", timeoutMs: 500) { return true }
                return false
            }
            try #require(ready, "the proxy never answered: \(proxy.log)")
            #expect(proxy.log.contains("flight recorder not opened: posix_fallocate(\(disk.path)/flight-recorder.tmp."), "\(proxy.log)")
            #expect(proxy.log.contains("No space left on device"))
            // A few seconds of lock churn and reloads, pings and requests: it stays up and answers.
            var answered = 0
            for k in 0..<20 {
                usleep(100_000)
                if case .success("pong \(k)") = ControlRequest.roundTrip(path: control, line: "ping \(k)", timeoutMs: 2000) { answered += 1 }
                _ = httpGet(port: port, path: "/", host: "app.test")
            }
            #expect(answered == 20)
            #expect(proxy.wait(timeoutMs: 0) == nil, "the proxy died: \(proxy.log)")
            #expect(httpGet(port: port, path: "/", host: "app.test") != nil, "still serving HTTP")
            #expect(disk.entries().isEmpty, "no recorder, no temporary file left: \(disk.entries())")
        }
    }
}
