#!/bin/sh
# monit's `stop program` (not used by the benchmark's fault path): SIGTERM to the proxy in the pid file.
set -u
pid=$(cat "@DIR@/proxy.pid" 2>/dev/null || true)
[ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null
exit 0
