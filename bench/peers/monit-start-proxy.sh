#!/bin/sh
# monit's `start program`, and the last step of restart-with-gcore.sh: starts defib-proxy in the background and writes
# its pid file, unless the proxy in the pid file is alive. One start at a time (flock), so monit's own start after a
# kill and the restart script never race.
set -u
DIR=@DIR@
if [ "${1:-}" != --locked ]; then
    exec 9>"$DIR/proxy.lock"
    flock 9
fi
pid=$(cat "$DIR/proxy.pid" 2>/dev/null || true)
if [ -n "$pid" ] && [ -r "/proc/$pid/status" ] && ! grep -q '^State:.*[ZX]' "/proc/$pid/status"; then
    exit 0
fi
# 9>&-: the proxy must not inherit the lock. SWIFT_BACKTRACE=enable=no: SIGABRT/SIGQUIT dump like any program.
SWIFT_BACKTRACE=enable=no @PROXY@ @PROXY_ARGS@ >>"$DIR/proxy.log" 2>&1 </dev/null 9>&- &
echo $! >"$DIR/proxy.pid"
