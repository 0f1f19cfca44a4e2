#!/bin/sh
# Release-build micro-benchmark of ParkingLock (uncontended read/write, recorder attached or not, two
# readers on one lock). Usage: scripts/lock-bench/run.sh [REV]  — with REV (e.g. HEAD~3), the same
# benchmark is also built against ParkingLock as of REV and both are run, interleaved, twice.
set -e
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
work=${TMPDIR:-/tmp}/defib-lock-bench
export PATH="$PATH:/opt/swift/usr/bin"

build() {  # build SRCROOT OUT
    src=$1; out=$2
    rm -rf "$out"; mkdir -p "$out"
    for c in "$src"/Sources/CDefibShims/lock.c "$src"/Sources/CDefibShims/read_holds.c; do
        [ -f "$c" ] && clang -O2 -fPIC -I"$src/Sources/CDefibShims/include" -c "$c" -o "$out/$(basename "$c" .c).o"
    done
    printf 'module CDefibShims { umbrella "%s" export * }\n' "$src/Sources/CDefibShims/include" > "$out/module.modulemap"
    swiftc -O -wmo -parse-as-library -module-name FlightRecorder -emit-module -emit-module-path "$out/FlightRecorder.swiftmodule" \
        -emit-object -o "$out/FlightRecorder.o" "$src"/Sources/FlightRecorder/*.swift
    swiftc -O -wmo -parse-as-library -module-name ParkingLock -I "$out" -Xcc -fmodule-map-file="$out/module.modulemap" \
        -emit-module -emit-module-path "$out/ParkingLock.swiftmodule" -emit-object -o "$out/ParkingLock.o" "$src"/Sources/ParkingLock/*.swift
    swiftc -O -parse-as-library -module-name LockBench "$here/main.swift" -I "$out" -Xcc -fmodule-map-file="$out/module.modulemap" \
        "$out"/*.o -o "$out/lock-bench"
}

mkdir -p "$work"
build "$root" "$work/current"
if [ -n "$1" ]; then
    rm -rf "$work/src-$1"; mkdir -p "$work/src-$1"
    (cd "$root" && git archive "$1" Sources/ParkingLock Sources/FlightRecorder Sources/CDefibShims) | tar -x -C "$work/src-$1"
    build "$work/src-$1" "$work/at-rev"
    for round in 1 2; do
        echo "== $1 (round $round)"; "$work/at-rev/lock-bench"
        echo "== working tree (round $round)"; "$work/current/lock-bench"
    done
else
    "$work/current/lock-bench"
fi
