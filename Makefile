# defib — the two commands a newcomer needs: `make demo` and `make test`.
SHELL := /bin/bash
export PATH := $(PATH):/opt/swift/usr/bin

.PHONY: setup build release demo test bench clean release-static install install-files uninstall deb deb-check deb-lint man

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
	rm -rf .build demo-state defib_*.deb

## Installing it like a system tool. `make install` builds release binaries with the Swift runtime linked in
## (--static-swift-stdlib: they run without /opt/swift) and installs under PREFIX (default /usr/local), staged
## under DESTDIR; `make install SKIP_BUILD=1 BUILD_DIR=DIR` (or `make install-files`) takes binaries already
## built in DIR. Nothing is enabled or started. `make deb` builds defib_VERSION_ARCH.deb the same way.
PREFIX ?= /usr/local
BUILD_DIR ?= .build/release
INSTALL_ENV = BUILD_DIR="$(BUILD_DIR)" DESTDIR="$(DESTDIR)" PREFIX="$(PREFIX)" $(foreach v,BINDIR DATADIR MANDIR DOCDIR UNITDIR TMPFILESDIR BASHCOMPDIR ZSHCOMPDIR FISHCOMPDIR STRIP,$(if $($(v)),$(v)="$($(v))"))

# The Swift runtime linked in (the binaries run without a toolchain); -z now: relocations resolved at start-up,
# so the GOT can be read-only (full RELRO).
RELEASE_FLAGS = -c release --static-swift-stdlib -Xlinker -z -Xlinker now
release-static: setup
	swift build $(RELEASE_FLAGS) --product defib
	swift build $(RELEASE_FLAGS) --product defib-proxy

install: $(if $(SKIP_BUILD),,release-static)
	@$(INSTALL_ENV) scripts/install.sh install

install-files:
	@$(INSTALL_ENV) scripts/install.sh install

uninstall:
	@$(INSTALL_ENV) scripts/install.sh uninstall

## The .deb's path is the last line printed. DEB_DIR: where it goes (default: the repository).
deb: $(if $(SKIP_BUILD),,release-static)
	@BUILD_DIR="$(BUILD_DIR)" DEB_DIR="$(DEB_DIR)" DEB_COMPRESS="$(DEB_COMPRESS)" ALLOW_UNPACKAGED_LIBS="$(ALLOW_UNPACKAGED_LIBS)" scripts/deb.sh

DEB_FILE = $(or $(DEB_DIR),.)/defib_$(shell cat VERSION)_$(shell dpkg --print-architecture).deb

## That .deb installed with dpkg into a throwaway root without /opt/swift and used there: a real hang, a core, SIGTERM.
deb-check: deb
	scripts/deb-smoke.sh $(DEB_FILE) --without-toolchain

## lintian, Debian's package checker, on that .deb (installs lintian the first time: a minute or two).
deb-lint: deb
	@scripts/setup.sh lint
	lintian --fail-on error,warning --display-info $(DEB_FILE)

## Regenerates man/defib.1 and man/defib-proxy.1 from the built binaries' argument parsers (commit the result;
## the test suite fails while they are out of date).
man: build
	scripts/gen-man.sh .build/debug

