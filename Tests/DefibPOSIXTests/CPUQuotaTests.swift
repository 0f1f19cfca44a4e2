import DefibCore
import DefibPOSIX
import Foundation
import Glibc
import Testing

/// The CPU quota that limits a process is often set above its own cgroup (the service's cgroup or the unit's, with
/// the instance in a leaf below): the sampler reports the tightest one on the way up. A real cgroup v1 cpu hierarchy.
@Suite struct CPUQuotaTests {
    static let root = "/sys/fs/cgroup/cpu"
    static var canUseV1: Bool {
        geteuid() == 0 && FileManager.default.isWritableFile(atPath: root) && FileManager.default.fileExists(atPath: root + "/cpu.cfs_quota_us")
    }

    @Test(.enabled(if: canUseV1, "needs root and the cgroup v1 cpu controller at /sys/fs/cgroup/cpu"))
    func aQuotaOnAnAncestorLimitsTheLeafAndIsReported() throws {
        let name = "defib-test-quota-\(getpid())"
        let parent = "\(Self.root)/\(name)", leaf = parent + "/instance-1", deeper = leaf + "/worker"
        for dir in [parent, leaf, deeper] { try #require(mkdir(dir, 0o755) == 0, "mkdir \(dir)") }
        defer { rmdir(deeper); rmdir(leaf); rmdir(parent) }
        try "700000\n".write(toFile: parent + "/cpu.cfs_period_us", atomically: false, encoding: .utf8)
        try "20000\n".write(toFile: parent + "/cpu.cfs_quota_us", atomically: false, encoding: .utf8)
        // The leaf and the worker below it have none of their own ("-1"): the parent's limits them, and is named.
        let quota = ProcSampler.tightestQuota(mount: Self.root, path: "/\(name)/instance-1/worker", version: 1)
        #expect(quota == CPUQuota(quotaUs: 20_000, periodUs: 700_000), "\(String(describing: quota))")
        #expect(quota?.text == "20 ms of CPU per 700 ms")
        // A tighter one lower down is the one that binds.
        try "700000\n".write(toFile: leaf + "/cpu.cfs_period_us", atomically: false, encoding: .utf8)
        try "10000\n".write(toFile: leaf + "/cpu.cfs_quota_us", atomically: false, encoding: .utf8)
        #expect(ProcSampler.tightestQuota(mount: Self.root, path: "/\(name)/instance-1/worker", version: 1)
                == CPUQuota(quotaUs: 10_000, periodUs: 700_000))
        // No quota anywhere on the way: none.
        try "-1\n".write(toFile: leaf + "/cpu.cfs_quota_us", atomically: false, encoding: .utf8)
        try "-1\n".write(toFile: parent + "/cpu.cfs_quota_us", atomically: false, encoding: .utf8)
        #expect(ProcSampler.tightestQuota(mount: Self.root, path: "/\(name)/instance-1/worker", version: 1) == nil)
    }
}
