// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "defib",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "defib", targets: ["defib"]),
        .executable(name: "defib-proxy", targets: ["defib-proxy"]),
        .library(name: "ParkingLock", targets: ["ParkingLock"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.10.0"),
        .package(url: "https://github.com/LebJe/TOMLKit", from: "0.6.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/vapor/postgres-nio", from: "1.33.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.6"),
    ],
    targets: [
        // What every part making system calls shares: the error naming the call and errno, the EINTR loop,
        // the clocks, a monotonic condition for plain threads.
        .target(name: "DefibSystem"),
        // The little C: fork/exec, pidfd, ptrace, process_vm_readv, prctl, wait-status helpers.
        .target(name: "CDefibShims"),
        // The flight recorder's on-disk format: written by ParkingLock in the service, read by the
        // supervisor. Pure Swift, no dependencies, so both sides share one definition.
        .target(name: "FlightRecorder", exclude: ["FORMAT.md"]),
        // A parking_lot-faithful RwLock with its parking lot, telemetry and flight-recorder writer.
        .target(name: "ParkingLock", dependencies: ["CDefibShims", "DefibSystem", "FlightRecorder"]),
        // Pure logic: config model, supervision state machine, restart policy, incident model, diagnosis.
        .target(name: "DefibCore", dependencies: [
            "FlightRecorder",
            .product(name: "TOMLKit", package: "TOMLKit"),
        ]),
        // libsystemd: sd_notify, sd_watchdog_enabled, sd_journal_sendv.
        .systemLibrary(name: "CSystemd", pkgConfig: "libsystemd", providers: [.apt(["libsystemd-dev"])]),
        // Every syscall the supervisor makes.
        .target(name: "DefibPOSIX", dependencies: ["CDefibShims", "CSystemd", "DefibCore", "DefibSystem", "FlightRecorder"]),
        // The SQLite incident store.
        .target(name: "DefibStore", dependencies: [
            "DefibCore",
            .product(name: "GRDB", package: "GRDB.swift"),
        ]),
        // Shipping the store's outbox to PostgreSQL and the fleet's views over it. Kept apart so only
        // `defib` (and its bench) pay for PostgresNIO, and never on the supervision loop.
        .target(name: "DefibFleet", dependencies: [
            "DefibCore", "DefibStore",
            .product(name: "PostgresNIO", package: "postgres-nio"),
            .product(name: "NIOSSL", package: "swift-nio-ssl"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "Metrics", package: "swift-metrics"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
        ]),
        // The names of the faults the reference proxy injects, shared with the chaos harness.
        .target(name: "DefibFaults"),
        // The reference proxy.
        .target(name: "DefibProxy", dependencies: [
            "ParkingLock", "CDefibShims", "DefibFaults", "DefibSystem", "FlightRecorder",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        // The supervisor runtime: connects DefibCore's decisions to DefibPOSIX and DefibStore.
        .target(name: "DefibRuntime", dependencies: [
            "DefibCore", "DefibPOSIX", "DefibStore",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "Metrics", package: "swift-metrics"),
            .product(name: "Prometheus", package: "swift-prometheus"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
        ]),
        // The chaos harness: scenarios, load generator, measurements, report (`defib chaos`).
        .target(name: "DefibChaos", dependencies: [
            "DefibCore", "DefibFaults", "DefibPOSIX", "DefibStore", "FlightRecorder",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
        ]),
        .executableTarget(name: "defib", dependencies: [
            "DefibRuntime", "DefibCore", "DefibPOSIX", "DefibStore", "DefibChaos", "DefibFleet", "FlightRecorder",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
        ], plugins: ["DefibVersion"]),
        .executableTarget(name: "defib-proxy", dependencies: [
            "DefibProxy",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
        ], plugins: ["DefibVersion"]),
        // `--version` of defib and defib-proxy: DefibVersion.swift generated from the VERSION file (the one place
        // the version lives; the Makefile's .deb and man pages read the same file).
        .plugin(name: "DefibVersion", capability: .buildTool()),
        // `make bench`: core capture (native, gcore, the kernel's dump) and the supervisor's own cost.
        .executableTarget(name: "defib-bench", dependencies: [
            "DefibCore", "DefibPOSIX", "DefibChaos", "DefibFleet", "DefibStore",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        // Hardening fixtures shared by the tests: real tmpfs mounts (disk full), a second user, scratch directories.
        .target(name: "DefibTestKit", path: "Tests/DefibTestKit"),
        // A stand-in supervisor for the tests that SIGKILL one: it puts a program in a service cgroup and waits.
        .executableTarget(name: "defib-test-helper", dependencies: ["DefibPOSIX", "DefibCore"], path: "Tests/DefibTestHelper"),
        .testTarget(name: "ParkingLockTests", dependencies: ["ParkingLock", "FlightRecorder", "CDefibShims", "DefibTestKit"]),
        .testTarget(name: "DefibPOSIXTests", dependencies: ["DefibPOSIX", "DefibCore", "DefibTestKit"]),
        .testTarget(name: "DefibProxyTests", dependencies: ["DefibProxy", "DefibSystem", "ParkingLock", "FlightRecorder"]),
        .testTarget(name: "DefibCoreTests", dependencies: ["DefibCore", "FlightRecorder"]),
        .testTarget(name: "DefibStoreTests", dependencies: ["DefibStore", "DefibCore", "DefibTestKit"]),
        // The supervisor's loop driven through fake effects and a manual clock.
        .testTarget(name: "DefibRuntimeTests", dependencies: [
            "DefibRuntime", "DefibCore", "FlightRecorder",
            .product(name: "Logging", package: "swift-log"),
        ]),
        .testTarget(name: "DefibChaosTests", dependencies: ["DefibChaos", "DefibCore", "DefibFaults"]),
        .testTarget(name: "DefibBenchTests", dependencies: ["defib-bench", "DefibPOSIX"]),
        .testTarget(name: "DefibFleetTests", dependencies: ["DefibFleet", "DefibStore", "DefibCore"]),
        .testTarget(name: "IntegrationTests", dependencies: ["DefibPOSIX", "DefibStore", "DefibCore", "DefibTestKit", "DefibFleet"]),
    ]
)
