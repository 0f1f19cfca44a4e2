import DefibCore

/// The runtime's tools as effects: py-spy or jcmd against the live process before the kill, delve over a Go
/// service's core after the close (a helper the loop reaps, like gdb).
extension SystemEffects {
    public func readRuntimeStacks(_ request: RuntimeStacksRequest) -> RuntimeStacksOutcome {
        let keepAlive = request.managerKeepAlive.map { BoundedKeepAlive(periodNs: $0.periodNs, untilNs: $0.untilNs) }
        defer { keepAlive?.finish() }
        return RuntimeEvidenceCollector.read(request)
    }

    public func startGoroutines(_ request: GoroutinesRequest) -> Result<Int32, EffectFailure> {
        do {
            let dlv = try GoroutinesJob.start(request)
            helpers[dlv.pid] = dlv
            return .success(dlv.pid)
        } catch {
            return .failure(EffectFailure("\(error)"))
        }
    }

    public func readGoroutines(path: String) -> String { GoroutinesJob.read(outputPath: path) }
}
