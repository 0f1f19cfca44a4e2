import DefibCore
import Testing

/// `[capture] runtime` and `runtime_budget_ms`.
struct ConfigRuntimeTests {
    @Test func theRuntimeIsAutoByDefaultAndCanBeForced() throws {
        let defaults = try SupervisorConfig.parse("", path: "empty.toml")
        #expect(defaults.capture.runtime == .auto && defaults.capture.runtime.forced == nil)
        #expect(defaults.capture.effectiveRuntimeBudgetMs == 3000)
        for name in ["native", "go", "python", "java"] {
            let c = try SupervisorConfig.parse("[capture]\nruntime = \"\(name)\"\n", path: "r.toml")
            #expect(c.capture.runtime.forced?.rawValue == name)
        }
    }

    @Test func anUnknownRuntimeIsNamedWithTheChoices() {
        do {
            _ = try SupervisorConfig.parse("[capture]\nruntime = \"golang\"\n", path: "r.toml")
            Issue.record("an unknown runtime was accepted")
        } catch let error as ConfigError {
            #expect(error.issues.map(\.description) == [
                "r.toml:2: capture.runtime: unknown runtime \"golang\" (expected one of: auto, native, go, python, java)",
            ])
        } catch {
            Issue.record("unexpected error \(error)")
        }
    }

    @Test func theRuntimeBudgetNeverTakesMoreThanHalfTheCaptureBudget() throws {
        let c = try SupervisorConfig.parse("[capture]\nbudget_ms = 1000\nruntime_budget_ms = 5000\n", path: "b.toml")
        #expect(c.capture.effectiveRuntimeBudgetMs == 500)
        let d = try SupervisorConfig.parse("[capture]\nruntime_budget_ms = 800\n", path: "b.toml")
        #expect(d.capture.effectiveRuntimeBudgetMs == 800)
    }
}
