# defib — the two commands a newcomer needs: `make demo` and `make test`.
SHELL := /bin/bash
export PATH := $(PATH):/opt/swift/usr/bin

.PHONY: setup build release demo test bench clean

setup:
	@scripts/setup.sh

build: setup
	swift build

release: setup
	swift build -c release

## Supervisor + proxy + load + the injected parking_lot race, ending with the incident printed.
demo: setup
	swift build
	scripts/demo.sh

## Every test: unit (state machine, lock, store, config) and integration (real binaries).
test: setup
	swift build --build-tests
	swift test

## Benchmarks (a few minutes, not part of `make test`): core capture (native vs gcore vs the kernel's dump) and
## defib's own cost, and the same hang under defib, monit, systemd and supervisord; writes bench/REPORT.md and bench/*.json.
bench: setup
	scripts/setup.sh bench
	BENCH_COMMAND="make bench" scripts/bench.sh core overhead peers

clean:
	rm -rf .build demo-state
