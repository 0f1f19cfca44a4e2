#!/usr/bin/env bash
# Installs what defib needs on a fresh Debian machine: SQLite headers (GRDB links the system
# libsqlite3), gdb (gcore and stack traces), curl (demo load), python3 (test backends).
# Installs only what is missing; needs root (or sudo) for apt-get.
set -euo pipefail

need=()
dpkg -s libsqlite3-dev >/dev/null 2>&1 || need+=(libsqlite3-dev)
command -v gdb   >/dev/null 2>&1 && command -v gcore >/dev/null 2>&1 || need+=(gdb)
command -v curl  >/dev/null 2>&1 || need+=(curl)
command -v python3 >/dev/null 2>&1 || need+=(python3)

if [ ${#need[@]} -gt 0 ]; then
    echo "setup: installing ${need[*]}"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

if ! command -v swift >/dev/null 2>&1; then
    if [ -x /opt/swift/usr/bin/swift ]; then
        echo "setup: swift is at /opt/swift/usr/bin; add it to PATH" >&2
    else
        echo "setup: Swift 6 is required (https://www.swift.org/install/linux/)" >&2
    fi
    exit 1
fi
