#!/usr/bin/env bash
# The demo: defib supervising defib-proxy (in front of a real HTTP backend) under a steady load of
# requests; the parking_lot try_write_for race is injected through the control channel; defib notices
# the silence, reads the lock word from the hung process's memory, writes a core, kills and restarts
# the proxy, and records the incident, printed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$(swift build --show-bin-path)
STATE=${DEMO_STATE:-$PWD/demo-state}
rm -rf "$STATE"; mkdir -p "$STATE/site"
echo "hello from the backend" > "$STATE/site/index.html"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
BACKEND_PORT=$(free_port); PROXY_PORT=$(free_port)
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

say "backend: python3 http.server on 127.0.0.1:$BACKEND_PORT"
python3 -m http.server "$BACKEND_PORT" --bind 127.0.0.1 --directory "$STATE/site" >"$STATE/backend.log" 2>&1 &
pids+=($!)

say "supervisor: defib run (heartbeat 100 ms, deadline 1000 ms, native core) -- defib-proxy on a socket defib binds and passes (127.0.0.1:$PROXY_PORT)"
# Process substitution, so that $! is defib itself (stopped by SIGTERM at the end, which stops the proxy).
"$BIN/defib" run --state-dir "$STATE" --interval 100 --deadline 1000 --capture native \
    --socket "http=127.0.0.1:$PROXY_PORT" -- \
    "$BIN/defib-proxy" --route "demo.local=127.0.0.1:$BACKEND_PORT" --churn 5 \
    > >(sed -u 's/^/  [defib] /') 2>&1 &
pids+=($!)

for _ in $(seq 1 200); do
    curl -s -o /dev/null -m 1 -H 'Host: demo.local' "http://127.0.0.1:$PROXY_PORT/" && break
    sleep 0.1
done

say "load: one request every 50 ms through the proxy (Host: demo.local)"
(
    end=$((SECONDS + 40))
    while [ $SECONDS -lt $end ] && [ ! -e "$STATE/stop-load" ]; do
        curl -s -o /dev/null -m 5 -w '%{http_code}\n' -H 'Host: demo.local' "http://127.0.0.1:$PROXY_PORT/" >>"$STATE/load.log" || echo "000" >>"$STATE/load.log"
        sleep 0.05
    done
) &
pids+=($!)
sleep 2

say "the proxy's locks while healthy (defib ctl locks)"
"$BIN/defib" ctl --state-dir "$STATE" locks

say "inject the parking_lot try_write_for timeout race (defib ctl fault timeout-race)"
"$BIN/defib" ctl --state-dir "$STATE" fault timeout-race

say "waiting for defib to detect, capture, restart and close the incident"
for _ in $(seq 1 600); do
    if "$BIN/defib" incidents --state-dir "$STATE" --json 2>/dev/null | grep -q '"outcome" *: *"recovered"'; then break; fi
    sleep 0.1
done
for _ in $(seq 1 300); do
    if "$BIN/defib" incidents info last --state-dir "$STATE" --json 2>/dev/null | grep -q '"stacks" *: *"'; then break; fi
    sleep 0.2
done
sleep 2
touch "$STATE/stop-load"; sleep 0.5

ok=$(grep -c '^200$' "$STATE/load.log" || true); total=$(wc -l <"$STATE/load.log")
say "load: $ok of $total requests answered 200 (the others were in flight when the hung instance was killed)"

say "defib incidents --state-dir $STATE"
"$BIN/defib" incidents --state-dir "$STATE"

say "defib incidents info last --state-dir $STATE"
"$BIN/defib" incidents info last --state-dir "$STATE" > "$STATE/incident.txt"
head -60 "$STATE/incident.txt"
echo
echo "(full stacks: defib incidents info last --state-dir $STATE;  open the core in gdb: defib incidents gdb last --state-dir $STATE)"
