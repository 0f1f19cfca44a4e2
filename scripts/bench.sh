#!/usr/bin/env bash
# Runs the named benchmark parts and writes bench/REPORT.md (make bench runs `core overhead`).
#
#   scripts/bench.sh [PART...]        default: core overhead
#
# Parts:
#   core      core capture of the reference proxy, idle and with 512 MiB + 8 threads: native writer vs gcore vs
#             the kernel's dump (defib-bench core)
#   overhead  defib supervising the idle proxy at 10 Hz for 60 s: its CPU, RSS and start-up (defib-bench overhead)
#   peers     the same hang under defib, monit, systemd's watchdog (booted in an isolated container: needs root) and
#             supervisord: hang -> serving, cores, records, refused connections, each supervisor's own cost
#             (defib-bench peers; about 8 minutes; configs in bench/peers/; needs `scripts/setup.sh bench`)
#   stall     the pause a stall's evidence costs the service, seen by a thread timestamping in a loop: stacks only
#             vs a full native core, small and large (defib-bench stall; about a minute)
#   runtime   the runtime tools' cost and the pause they impose: py-spy --nonblocking vs ptrace, jcmd vs jstack,
#             dlv on the core after the restart vs dlv attach before the kill (scripts/bench-runtime.py; ~2 minutes)
#   fleet     the fleet database at scale: 1000 simulated hosts ship 1 000 000 incidents through the real shipper into a
#             throwaway PostgreSQL; ingest rate, `fleet signatures --since 1h`, `fleet incidents --signature S`
#             (defib-bench fleet; about 10 minutes and 5 GB of scratch; BENCH_OUT=bench/fleet keeps bench/REPORT.md)
#
# Adding a part (e.g. `peers`, defib vs monit/supervisord): define a function part_NAME below. It runs with
# $BIN (the release binaries) and $OUT (the report directory) set and must write $OUT/NAME.json holding at least
#   {"part": "NAME", "status": "ok" | "FAIL", "reason": null | "...",
#    "targets": [{"id": "...", "target": "...", "measured": "...", "pass": true}],
#    "markdown": "## Its section of REPORT.md\n..."}
# (defib-bench's own parts show the shape; `defib-bench fail --part NAME --reason WHY` writes a FAIL one).
# A part that exits non-zero without writing its JSON is reported as FAIL with its exit code; the other parts
# still run. Every process a part starts must be stopped by its pid (or pidfd), never by name.
#
# Environment: BENCH_SCRATCH (default .build-bench), BENCH_OUT (default bench), BENCH_COMMAND (the command quoted
# in the report; default this script's command line), BENCH_ARGS_core / BENCH_ARGS_overhead / BENCH_ARGS_peers (extra
# flags, e.g. BENCH_ARGS_overhead="--duration 10", BENCH_ARGS_peers="--peers defib-native,monit --reps 3",
# BENCH_ARGS_fleet="--hosts 100 --incidents 100000").
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/opt/swift/usr/bin"

parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(core overhead)
SCRATCH=${BENCH_SCRATCH:-.build-bench}
OUT=${BENCH_OUT:-bench}
COMMAND=${BENCH_COMMAND:-"scripts/bench.sh ${parts[*]}"}
mkdir -p "$OUT"

echo "bench: release build into $SCRATCH"
# A product that does not build fails the parts that need it (an older binary would give stale figures).
declare -A broken=()
for product in defib-bench defib-proxy defib; do
    if ! swift build -c release --scratch-path "$SCRATCH" --product "$product"; then
        broken[$product]=1
        echo "bench: release build of $product failed" >&2
    fi
done
BIN="$(swift build -c release --scratch-path "$SCRATCH" --show-bin-path 2>/dev/null || echo "$SCRATCH/release")"
BENCH="$BIN/defib-bench"
if [ -n "${broken[defib-bench]:-}" ] || [ ! -x "$BENCH" ]; then
    # Without defib-bench there is nobody to write JSON: say so in a report of our own.
    {
        echo "# defib benchmarks"
        echo
        echo "Generated $(date -u +%Y-%m-%dT%H:%M:%SZ) by \`$COMMAND\`."
        echo
        echo "**FAIL**: defib-bench did not build (swift build -c release --scratch-path $SCRATCH --product defib-bench); no part ran: ${parts[*]}."
    } > "$OUT/REPORT.md"
    echo "bench: FAIL: defib-bench did not build; wrote $OUT/REPORT.md" >&2
    exit 1
fi
export BIN OUT

# The products each part runs (checked against the build before it starts).
needs_core="defib-proxy"
needs_overhead="defib defib-proxy"

part_core() {
    # shellcheck disable=SC2086
    "$BENCH" core --out "$OUT" --proxy "$BIN/defib-proxy" ${BENCH_ARGS_core:-}
}

part_overhead() {
    # shellcheck disable=SC2086
    "$BENCH" overhead --out "$OUT" --proxy "$BIN/defib-proxy" --defib "$BIN/defib" ${BENCH_ARGS_overhead:-}
}

needs_peers="defib defib-proxy"

part_peers() {
    # shellcheck disable=SC2086
    "$BENCH" peers --out "$OUT" --proxy "$BIN/defib-proxy" --defib "$BIN/defib" --templates bench/peers ${BENCH_ARGS_peers:-}
}

needs_stall="defib-proxy"

part_stall() {
    # shellcheck disable=SC2086
    "$BENCH" stall --out "$OUT" --proxy "$BIN/defib-proxy" ${BENCH_ARGS_stall:-}
}

needs_runtime="defib"

part_runtime() {
    BIN="$BIN" OUT="$OUT" python3 scripts/bench-runtime.py
}

needs_fleet="defib"

part_fleet() {
    # A throwaway PostgreSQL of its own (initdb in the work directory, loopback); 1000 hosts, 1 000 000 incidents.
    # shellcheck disable=SC2086
    "$BENCH" fleet --out "$OUT" --defib "$BIN/defib" ${BENCH_ARGS_fleet:-}
}

failed=()
for part in "${parts[@]}"; do
    echo "bench: part $part"
    rm -f "$OUT/$part.json"
    if ! declare -F "part_$part" >/dev/null; then
        "$BENCH" fail --out "$OUT" --part "$part" --reason "unknown part '$part' (scripts/bench.sh defines: $(declare -F | awk '/ part_/ {sub("part_", "", $3); print $3}' | paste -sd' '))"
        failed+=("$part")
        continue
    fi
    needs_var="needs_$part"
    missing=""
    for product in ${!needs_var:-}; do
        [ -n "${broken[$product]:-}" ] && missing+="$product "
    done
    if [ -n "$missing" ]; then
        "$BENCH" fail --out "$OUT" --part "$part" --reason "the release build of ${missing% } failed (swift build -c release --scratch-path $SCRATCH)"
        failed+=("$part")
        continue
    fi
    # stderr goes to the terminal and to a file, whose last lines explain a part that dies without its JSON.
    errlog="$(mktemp)"
    "part_$part" 2> >(tee "$errlog" >&2)
    rc=$?
    wait $! 2>/dev/null
    if [ ! -s "$OUT/$part.json" ]; then
        last="$(grep -m1 -iE '^(error|fatal)' "$errlog" || grep -v '^[[:space:]]*$' "$errlog" | tail -n 1)"
        "$BENCH" fail --out "$OUT" --part "$part" --reason "part_$part exited with code $rc without writing $OUT/$part.json: ${last:-no output}"
        failed+=("$part")
    elif [ "$rc" -ne 0 ]; then
        failed+=("$part")
    fi
    rm -f "$errlog"
done

toolchain="$(swift --version 2>/dev/null | head -1)"
"$BENCH" report --out "$OUT" --command "$COMMAND" --toolchain "$toolchain" "${parts[@]}"
echo "bench: report in $OUT/REPORT.md (raw figures: ${parts[*]/%/.json})"
if [ ${#failed[@]} -gt 0 ]; then
    echo "bench: FAIL: part(s) could not run: ${failed[*]}" >&2
    exit 1
fi
# Targets that were missed are FAIL lines in the report, not a failed command: the figures are the result.
exit 0
