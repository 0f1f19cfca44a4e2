import DefibPOSIX
import Testing

@Suite("core_pattern expansion")
struct CorePatternTests {
    let context = CorePatternContext(pid: 4123, uid: 1000, gid: 100, signal: 31, time: 1_700_000_000,
                                     hostname: "box", comm: "defib/proxy", executable: "/usr/bin/defib-proxy",
                                     cwd: "/srv/app", coreLimit: nil)

    @Test("a relative pattern lands in the process's cwd; core_uses_pid appends the pid")
    func relative() {
        #expect(CorePattern.resolve("core\n", usesPid: false, context: context) == .file(candidates: ["/srv/app/core"]))
        #expect(CorePattern.resolve("core", usesPid: true, context: context) == .file(candidates: ["/srv/app/core.4123"]))
        #expect(CorePattern.resolve("core.%p", usesPid: true, context: context) == .file(candidates: ["/srv/app/core.4123"]))
    }

    @Test("specifiers expand like the kernel's, with '/' in values turned into '!'")
    func specifiers() {
        let d = CorePattern.resolve("/var/cores/%e-%p-%u-%g-%s-%t-%h-%E-%f-%c-%%-%Z.core", usesPid: false, context: context)
        #expect(d == .file(candidates: [
            "/var/cores/defib!proxy-4123-1000-100-31-1700000000-box-!usr!bin!defib-proxy-defib-proxy-18446744073709551615-%-.core",
        ]))
    }

    @Test("a pipe pattern names its handler; an empty pattern means no core")
    func pipeAndEmpty() {
        let d = CorePattern.resolve("|/usr/lib/systemd/systemd-coredump %P %u %g %s %t %c %h\n", usesPid: false, context: context)
        #expect(d == .pipe(handler: "/usr/lib/systemd/systemd-coredump"))
        #expect(d.description == "handed to /usr/lib/systemd/systemd-coredump")
        #expect(CorePattern.resolve("\n", usesPid: false, context: context) == CoreDestination.none)
    }
}
