// A stand-in for the part of a supervisor the cgroup tests need, so a test can SIGKILL a real
// supervisor process: `defib-test-helper supervise-in-cgroup STATE_DIR NAME -- PROGRAM ARGS…` prepares
// the service cgroup exactly as `defib run` does (ServiceCgroup.prepare, which first kills what a dead
// supervisor left), starts PROGRAM in a new instance leaf (the spawn shim's child joins it before exec),
// prints "ready PID LEAF" and then only reaps, until it is killed.
import DefibCore
import DefibPOSIX
import Glibc

func fail(_ text: String) -> Never {
    let line = Array("defib-test-helper: \(text)\n".utf8)
    _ = line.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
    exit(2)
}

let args = Array(CommandLine.arguments.dropFirst())
guard args.count >= 5, args[0] == "supervise-in-cgroup", args[3] == "--" else {
    fail("usage: defib-test-helper supervise-in-cgroup STATE_DIR NAME -- PROGRAM [ARGS…]")
}
let (stateDirectory, name, program) = (args[1], args[2], Array(args[4...]))
let run: SafeDirectory
do {
    run = try SafeDirectory.open(stateDirectory, role: "state directory").subdirectory("run").subdirectory(name)
} catch { fail("\(error)") }
let cgroup: ServiceCgroup
switch ServiceCgroup.prepare(stateDirectory: stateDirectory, service: name, runDirectory: run) {
case let .success(c): cgroup = c
case let .failure(e): fail("\(e)")
}
if !cgroup.leftoversKilled.isEmpty { print("killed \(cgroup.leftoversKilled.count) leftover(s)") }
let instance: InstanceCgroup
do { instance = try cgroup.newInstance() } catch { fail("\(error)") }
var request = SpawnRequest(argv: program, environment: currentEnvironment())
request.cgroupProcsFD = instance.procsFD
request.stdinFromDevNull = true
let child: ChildProcess
do { child = try spawnProcess(request) } catch { fail("\(error)") }
print("ready \(child.pid) \(instance.path)")
fflush(nil)
while true {
    _ = reapAll()
    usleep(100_000)
}
