#!/usr/bin/env bash
# Installs what defib needs on a fresh Debian 12 machine, only what is missing (needs root or sudo):
#   base (make demo, make test): libsqlite3-dev (GRDB links the system SQLite), libsystemd-dev
#     (sd_notify, sd_journal), gdb (gcore, stacks), systemd-container (systemd-nspawn for the
#     systemd integration test), stress-ng (CPU overload in the chaos tests), curl, python3.
#   fleet (also make test): postgresql (the fleet tests initdb a throwaway cluster of their own; the Debian
#     cluster service is never started), iproute2 (the test hosts' network namespaces), openssl (TLS certificate).
#   bench (make bench): additionally wrk, monit and supervisor, the peers we compare against.
# Package services are never started by the install (policy-rc.d), so nothing runs behind your back.
set -euo pipefail
group=${1:-base}

pkgs=(libsqlite3-dev libsystemd-dev gdb systemd-container stress-ng curl python3 pkg-config)
pkgs+=(postgresql iproute2 openssl)
[ "$group" = bench ] && pkgs+=(wrk monit supervisor)

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

if ! command -v swift >/dev/null 2>&1; then
    if [ -x /opt/swift/usr/bin/swift ]; then
        echo "setup: swift is at /opt/swift/usr/bin; add it to PATH" >&2
    else
        echo "setup: Swift 6 is required (https://www.swift.org/install/linux/)" >&2
    fi
    exit 1
fi
