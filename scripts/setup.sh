#!/usr/bin/env bash
# Installs what defib needs on a fresh Debian 12 machine, only what is missing (needs root or sudo):
#   base (make demo, make test): libsqlite3-dev (GRDB links the system SQLite), libsystemd-dev
#     (sd_notify, sd_journal), gdb (gcore, stacks), systemd-container (systemd-nspawn for the
#     systemd integration test), stress-ng (CPU overload in the chaos tests), curl, python3, zstd and gzip
#     (compressed cores), and coredumpctl (see below).
#     Runtime evidence and its fixtures: gcc (the C fixture), golang-go and delve (the Go fixture; goroutines
#     from the core), openjdk-17-jdk-headless (javac, jcmd), and py-spy from PyPI into /usr/local/bin.
#     dpkg-dev, binutils, man-db, groff-base, zsh, fish: installing defib and its tests.
#   real programs the probe and multi-process tests run as they are, each on loopback with a free port
#   and a temp directory (their packaged services are never started): redis-server and redis-tools,
#   nginx (master + workers), systemd-timesyncd (a daemon that drops privileges and speaks sd_notify).
#   fleet (also make test): postgresql (the fleet tests initdb a throwaway cluster of their own; the Debian
#     cluster service is never started), iproute2 (the test hosts' network namespaces), openssl (TLS certificate).
#   bench (make bench): additionally wrk, monit and supervisor, the peers we compare against.
#   lint (make deb-lint): additionally lintian, Debian's package checker (a hundred Perl packages: not
#     part of make test).
# Package services are never started by the install (policy-rc.d), so nothing runs behind your back.
set -euo pipefail
group=${1:-base}

pkgs=(libsqlite3-dev libsystemd-dev gdb systemd-container stress-ng curl python3 pkg-config zstd gzip
      dpkg-dev binutils man-db groff-base zsh fish
      gcc libc6-dev golang-go delve openjdk-17-jdk-headless)
pkgs+=(redis-server redis-tools nginx systemd-timesyncd)
pkgs+=(postgresql iproute2 openssl)
[ "$group" = bench ] && pkgs+=(wrk monit supervisor)
[ "$group" = lint ] && pkgs+=(lintian)

need=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || need+=("$p")
done

if [ ${#need[@]} -gt 0 ]; then
    echo "setup: installing ${need[*]}"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    export DEBIAN_FRONTEND=noninteractive
    # Keep package scripts from starting daemons (monit, supervisord) on this machine.
    policy=/usr/sbin/policy-rc.d; made_policy=""
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null; $SUDO chmod 755 "$policy"; made_policy=1
    fi
    trap '[ -n "$made_policy" ] && $SUDO rm -f "$policy"' EXIT
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# coredumpctl, for the container test that shows defib's cores in it. Not `apt-get install systemd-coredump`:
# its postinst points this machine's kernel.core_pattern (global, not per container) at systemd-coredump,
# which would take every core on the host. The package is unpacked beside, its files used only inside the
# test's container, where they are copied into the container's own throw-away root.
coredump_dir=/usr/local/lib/defib-test/systemd-coredump
if [ ! -x "$coredump_dir/usr/bin/coredumpctl" ]; then
    echo "setup: unpacking coredumpctl (systemd-coredump) into $coredump_dir"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    tmp=$(mktemp -d)
    chmod 755 "$tmp"   # apt's download user must be able to write there
    version=$(dpkg-query -W -f='${Version}' systemd)
    ( cd "$tmp" && { apt-get download -qq "systemd-coredump=$version" 2>/dev/null ||
                     { $SUDO apt-get update -qq && apt-get download -qq "systemd-coredump=$version"; }; } )
    $SUDO mkdir -p "$coredump_dir"
    $SUDO dpkg-deb -x "$tmp"/systemd-coredump_*.deb "$coredump_dir"
    rm -rf "$tmp"
    [ -x "$coredump_dir/usr/bin/coredumpctl" ] || { echo "setup: could not unpack coredumpctl" >&2; exit 1; }
fi

# py-spy (Python stacks before the kill) is on PyPI only: its wheel is one static binary, put where defib
# looks for helpers (/usr/local/bin) whichever Python runs pip.
if ! command -v py-spy >/dev/null 2>&1 && [ ! -x /usr/local/bin/py-spy ]; then
    echo "setup: installing py-spy (PyPI) into /usr/local"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    if ! python3 -m pip --version >/dev/null 2>&1; then
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends python3-pip >/dev/null
    fi
    pip_args=(install --quiet --disable-pip-version-check --root-user-action=ignore --prefix /usr/local py-spy)
    $SUDO python3 -m pip "${pip_args[@]}" 2>/dev/null || $SUDO python3 -m pip "${pip_args[@]}" --break-system-packages
fi

if ! command -v swift >/dev/null 2>&1; then
    if [ -x /opt/swift/usr/bin/swift ]; then
        echo "setup: swift is at /opt/swift/usr/bin; add it to PATH" >&2
    else
        echo "setup: Swift 6 is required (https://www.swift.org/install/linux/)" >&2
    fi
    exit 1
fi
