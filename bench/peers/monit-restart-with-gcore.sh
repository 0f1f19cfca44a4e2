#!/bin/sh
# monit's `exec` action when the control-socket ping fails: a core of the hung proxy with gcore (DIR/cores/core.PID),
# then SIGKILL and a new proxy. What defib does on a hang, with the tools a monit user has.
set -u
DIR=@DIR@
exec 9>"$DIR/proxy.lock"
flock 9
pid=$(cat "$DIR/proxy.pid" 2>/dev/null || true)
if [ -n "$pid" ] && [ -r "/proc/$pid/status" ]; then
    echo "$(date +%s.%N) gcore $pid" >>"$DIR/restart.log"
    gcore -o "$DIR/cores/core" "$pid" >>"$DIR/restart.log" 2>&1
    kill -KILL "$pid"
    # Gone, or a zombie waiting for its reaper: either way its sockets are closed.
    while [ -r "/proc/$pid/status" ] && ! grep -q '^State:.*[ZX]' "/proc/$pid/status"; do sleep 0.01; done
    echo "$(date +%s.%N) killed $pid" >>"$DIR/restart.log"
fi
"$DIR/start-proxy.sh" --locked
