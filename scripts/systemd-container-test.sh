#!/usr/bin/env bash
# defib under a real systemd, booted in an isolated container: systemd-nspawn on an overlay root whose
# upper layer is a tmpfs (nothing reaches this machine's files), inside its own PID and mount
# namespaces, launched from its own cgroup and torn down by killing one process. Never boot systemd
# bare on the host: its tmpfiles would wipe the machine's /tmp.
#
# Usage: systemd-container-test.sh BIN_DIR   (BIN_DIR holds the built defib and defib-proxy)
# Prints PASS/FAIL lines; exit 0 only if every check passed; exit 77 when namespaces or systemd-nspawn
# are not available here (the caller reports a skip).
#
# What it shows:
#   0. systemd-analyze verify prints nothing for defib.service and defib@proxy.service (binaries installed);
#   1. systemd sees READY=1 (start returns once the proxy answers) and defib's STATUS= text; with Delegate=yes
#      the proxy runs in an instance cgroup below the unit's, defib in a `supervisor` leaf beside it; a second
#      instance runs its proxy as nobody (user = "nobody"), pinged in its instance directory;
#   2. a hang injected into the proxy is handled by defib: an incident, a restart of the proxy in a new
#      instance cgroup, and systemd does not restart defib (NRestarts stays 0); its zstd-compressed core is
#      announced the way systemd-coredump announces cores: `coredumpctl list defib-proxy` shows it,
#      `coredumpctl info` shows defib's diagnosis, and `coredumpctl gdb` opens it with every thread;
#   3. SIGSTOP on defib: systemd's watchdog restarts defib, and afterwards exactly one proxy runs;
#   4. a wedged event loop in defib (SIGSTOP freezes it for real): the watchdog's SIGABRT (systemd follows
#      it with SIGCONT) kills it with a core (ExecMainCode=dumped, signal 6, a core file), then one defib
#      and one proxy run again.
set -u
BIN=$(cd "${1:?usage: $0 BIN_DIR}" && pwd)
ROOT=$(cd "$(dirname "$0")/.." && pwd)
NSPAWN=$(command -v systemd-nspawn || true)
[ -x "$BIN/defib" ] && [ -x "$BIN/defib-proxy" ] || { echo "no defib/defib-proxy in $BIN"; exit 2; }
[ -n "$NSPAWN" ] || { echo "SKIP: systemd-nspawn not installed (apt-get install systemd-container)"; exit 77; }
[ "$(id -u)" = 0 ] || { echo "SKIP: needs root to create namespaces"; exit 77; }
unshare -m -p -f true 2>/dev/null || { echo "SKIP: cannot create mount and PID namespaces here"; exit 77; }
[ -d /sys/fs/cgroup/unified ] || [ -f /sys/fs/cgroup/cgroup.controllers ] || { echo "SKIP: no cgroup2 hierarchy"; exit 77; }

W=$(mktemp -d /var/tmp/defib-sd.XXXXXX)
if [ -d /sys/fs/cgroup/unified ]; then CGU=/sys/fs/cgroup/unified/defib-sd.$$; else CGU=/sys/fs/cgroup/defib-sd.$$; fi
CGL=/sys/fs/cgroup/systemd/defib-sd.$$
T0=$(date +%s.%N); P1=; BG=; FAIL=0
log() { printf '[%5.1fs] %s\n' "$(echo "$(date +%s.%N) - $T0" | bc)" "$*"; }
check() { if eval "$2"; then log "PASS: $1"; else log "FAIL: $1"; FAIL=1; fi; }
alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }
ct() { timeout 30 nsenter -t "$P1" -m -u -i -n -p -- env -i PATH=/usr/local/bin:/usr/bin:/bin SYSTEMD_PAGER=cat "$@"; }
cleanup() {
    trap - EXIT INT TERM
    if alive "$P1"; then ct systemctl poweroff --no-block &>/dev/null
        for _ in $(seq 50); do alive "$BG" || break; sleep 0.1; done; fi
    alive "$BG" && { log "hard stop"; kill -TERM "$BG"; }
    [ -n "$BG" ] && wait "$BG" 2>/dev/null
    [ -e "$CGU/cgroup.kill" ] && echo 1 > "$CGU/cgroup.kill"
    for _ in $(seq 50); do grep -qs 'populated 1' "$CGU/cgroup.events" || break; sleep 0.1; done
    for c in "$CGU" "$CGL"; do [ -d "$c" ] && find "$c" -depth -type d -exec rmdir {} \; 2>/dev/null; done
    if grep -q " $W" /proc/self/mountinfo; then log "FAIL: still mounted: $W"; FAIL=1; else rm -rf --one-file-system "$W"; fi
    for m in /tmp/defib-sd-marker.$$ /var/tmp/defib-sd-marker.$$; do
        if [ -e "$m" ]; then rm "$m"; else log "FAIL: $m vanished: the container touched the host's temp dirs"; FAIL=1; fi
    done
    log "cleaned up, FAIL=$FAIL"
    exit $FAIL
}
trap cleanup EXIT; trap 'FAIL=1; cleanup' INT TERM
touch /tmp/defib-sd-marker.$$ /var/tmp/defib-sd-marker.$$

mkdir -p "$W/root" "$W/ovl" "$W/opt/bin" "$W/opt/units" "$CGU"
cp "$BIN/defib" "$BIN/defib-proxy" "$W/opt/bin/"
cp "$ROOT"/units/*.service "$W/opt/units/"
# The units' Documentation= names the man pages, and systemd-analyze verify checks that man finds them.
mkdir -p "$W/opt/man"; for page in defib.1 defib.toml.5; do gzip -9nc "$ROOT/man/$page" > "$W/opt/man/$page.gz"; done
# coredumpctl: unpacked by scripts/setup.sh (not installed on this machine: see there), or the machine's own.
COREDUMPCTL=${DEFIB_COREDUMPCTL:-/usr/local/lib/defib-test/systemd-coredump/usr/bin/coredumpctl}
[ -x "$COREDUMPCTL" ] || COREDUMPCTL=$(command -v coredumpctl || true)
[ -n "$COREDUMPCTL" ] && cp "$COREDUMPCTL" "$W/opt/bin/coredumpctl"
timeout -s KILL 120 unshare -m --propagation private -p -f --kill-child --mount-proc -- bash -c '
  set -e; W=$1; echo $$ > $2/cgroup.procs
  mount -t tmpfs -o size=2g defib-sd $W/ovl; mkdir $W/ovl/upper $W/ovl/work
  mount -t overlay defib-sd -o lowerdir=/,upperdir=$W/ovl/upper,workdir=$W/ovl/work $W/root
  mount -t tmpfs defib-sd /run
  SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 exec $3 -D $W/root -b \
    --register=no --keep-unit --private-network --link-journal=no --resolv-conf=off \
    --timezone=off --tmpfs=/tmp --tmpfs=/var/tmp --tmpfs=/var/log/journal \
    --bind-ro=$W/opt:/opt/defib -- systemd.unit=basic.target
' defib-sd "$W" "$CGU" "$NSPAWN" > "$W/console.log" 2>&1 &
BG=$!
for _ in $(seq 100); do
    for p in $(cat "$CGU"/payload/init.scope/cgroup.procs 2>/dev/null); do
        grep -qP '^NSpid:.*\t1$' /proc/$p/status && P1=$p; done
    [ -n "$P1" ] || ! alive $BG && break; sleep 0.1
done
st=
for _ in $(seq 100); do
    [ -n "$P1" ] || break
    st=$(ct systemctl is-system-running --wait 2>&1); case $st in running|degraded) break;; esac; sleep 0.1
done
check "booted: PID1=host pid ${P1:-none}, state=$st" '[ "$st" = running ] || [ "$st" = degraded ]'
if [ $FAIL != 0 ]; then tail -20 "$W/console.log"; exit; fi

U=defib@proxy
STATE=/var/lib/defib/proxy
ct install -m 0755 /opt/defib/bin/defib /opt/defib/bin/defib-proxy /usr/local/bin/
[ -x "$W/opt/bin/coredumpctl" ] && ct install -m 0755 /opt/defib/bin/coredumpctl /usr/bin/coredumpctl
ct cp /opt/defib/units/defib@.service /opt/defib/units/defib.service /etc/systemd/system/
ct install -D -m 0644 /opt/defib/man/defib.1.gz /usr/local/share/man/man1/defib.1.gz
ct install -D -m 0644 /opt/defib/man/defib.toml.5.gz /usr/local/share/man/man5/defib.toml.5.gz
ct mkdir -p /etc/defib /etc/systemd/system/$U.service.d
ct sh -c 'cat > /etc/defib/proxy.toml' <<'EOF'
state_dir = "/var/lib/defib/proxy"
[service]
name = "proxy"
argv = ["/usr/local/bin/defib-proxy", "--route", "app.test=127.0.0.1:18081"]
[heartbeat]
interval_ms = 100
deadline_ms = 1000
[capture]
budget_ms = 2000
compress = "zstd"
[sockets]
http = "127.0.0.1:18080"
EOF
# A short watchdog so the test is quick.
ct sh -c "cat > /etc/systemd/system/$U.service.d/test.conf" <<EOF
[Service]
WatchdogSec=3s
TimeoutAbortSec=5s
EOF
ct systemctl daemon-reload
verify=$(ct systemd-analyze verify defib.service defib@proxy.service 2>&1)
check "systemd-analyze verify prints nothing for the units: '${verify}'" '[ -z "$verify" ]'
show() { ct systemctl show -p SubState,Result,NRestarts,MainPID,ExecMainCode,ExecMainStatus,StatusText $U; }
load() { eval "$(show | sed "s/'//g; s/^\([A-Za-z]*\)=\(.*\)/\1='\2'/")"; }
proxies() { ct ps -eo comm= | grep -c '^defib-proxy$'; }
defibs() { ct ps -eo comm= | grep -c '^defib$'; }

# 1. READY and STATUS.
ct systemctl start $U; rc=$?          # returns once defib sent READY=1
load; FIRST=$MainPID
check "READY=1 seen: start rc=$rc, SubState=$SubState" '[ $rc = 0 ] && [ "$SubState" = running ]'
check "STATUS= shown: '$StatusText'" '[[ "$StatusText" == proxy:\ running\ pid* ]]'
healthz() { ct curl -s -m 5 -o /dev/null -w '%{http_code}' http://127.0.0.1:18080/healthz 2>/dev/null; }
check "the proxy serves on the socket defib bound and passed (LISTEN_FDS): /healthz $(healthz)" '[ "$(healthz)" = 200 ]'

# 1b. Delegate=yes: defib runs its service in a cgroup of its own below the unit's, itself in a leaf beside it.
cgroup_of() { ct cat /proc/"$1"/cgroup 2>/dev/null | sed -n 's/^0:://p'; }
PROXY=$(ct ps -eo pid=,comm= | awk '$2 == "defib-proxy" { print $1; exit }')
pcg=$(cgroup_of "$PROXY"); dcg=$(cgroup_of "$FIRST")
check "the proxy runs in its instance's cgroup: '$pcg'" '[[ "$pcg" == */defib@proxy.service/defib-proxy-*/instance-1 ]]'
check "defib moved itself into a leaf of the delegated cgroup: '$dcg'" '[[ "$dcg" == */defib@proxy.service/supervisor ]]'
nocg=$(ct journalctl -u $U --no-pager -o cat 2>/dev/null | grep -c "no cgroup for the service")
check "no 'no cgroup for the service' warning in the unit's journal ($nocg)" '[ "$nocg" = 0 ]'

# 1c. A service with a user of its own under the unit's hardening: defib@nobody runs a proxy as nobody, which
#     answers pings from its instance directory.
ct sh -c 'cat > /etc/defib/nobody.toml' <<'EOF'
state_dir = "/var/lib/defib/nobody"
[service]
name = "nobody"
user = "nobody"
argv = ["/usr/local/bin/defib-proxy", "--route", "app.test=127.0.0.1:18081"]
[heartbeat]
interval_ms = 100
deadline_ms = 1000
[sockets]
http = "127.0.0.1:18090"
EOF
ct systemctl start defib@nobody; rc=$?
nuser=$(ct ps -o user= -C defib-proxy | sort | tr '\n' ' ')
npong=$(ct defib ctl --state-dir /var/lib/defib/nobody --name nobody ping 3 2>&1)
check "defib@nobody: started (rc=$rc), its proxy runs as nobody (users: $nuser), answers '$npong'" \
      '[ $rc = 0 ] && [[ "$nuser" == *nobody* ]] && [ "$npong" = "pong 3" ]'
[ $rc = 0 ] || ct journalctl -u defib@nobody --no-pager -o cat | tail -15 | sed "s/^/    /"
ct systemctl stop defib@nobody

# 2. A hang in the proxy is defib's business, not systemd's.
ct defib ctl --state-dir $STATE fault timeout-race >/dev/null
recovered=
for _ in $(seq 150); do
    # Recovered once the replacement answers; the core is written from the frozen instance after that and the
    # frozen instance killed once it is (restart while the core is written): wait for all three.
    if ct defib incidents --state-dir $STATE --json 2>/dev/null | python3 -c 'import json, sys
i = json.load(sys.stdin)[0]
sys.exit(0 if i["outcome"] == "recovered" and i["core_path"] and i["killed_at"] else 1)' 2>/dev/null; then recovered=1; break; fi
    sleep 0.2
done
# The frozen instance, killed, is reaped and its cgroup leaf removed by defib's loop right after.
for _ in $(seq 50); do [ "$(proxies)" = 1 ] && break; sleep 0.1; done
load
check "hang handled by defib: incident recovered, defib not restarted (NRestarts=$NRestarts, MainPID $FIRST->$MainPID)" \
      '[ -n "$recovered" ] && [ "$NRestarts" = 0 ] && [ "$MainPID" = "$FIRST" ]'
words=$(ct defib incidents --state-dir $STATE --json | python3 -c 'import json,sys; i=json.load(sys.stdin)[0]; print(" ".join(i["lock_words"]), "|", i["diagnosis"][:60])')
check "the incident names the corrupted lock word: $words" '[[ "$words" == *0xfffffffffffffffe* ]]'
core=$(ct defib incidents --state-dir $STATE --json | python3 -c 'import json,sys; i=json.load(sys.stdin)[0]; print(i["capture_method"], i["core_path"], i["capture_error"])')
check "a native core was taken under the unit's hardening: $core" '[[ "$core" == "native /var/lib/defib/proxy/cores/"*" None" ]]'
check "one proxy after the restart ($(proxies))" '[ "$(proxies)" = 1 ]'
for _ in $(seq 50); do ct test -d "/sys/fs/cgroup${pcg}" || break; sleep 0.1; done
PROXY2=$(ct ps -eo pid=,comm= | awk '$2 == "defib-proxy" { print $1; exit }')
pcg2=$(cgroup_of "$PROXY2")
check "the new proxy has a new instance cgroup: '$pcg2'; the old one is gone" \
      '[[ "$pcg2" == */defib@proxy.service/defib-proxy-*/instance-2 ]] && ! ct test -d "/sys/fs/cgroup${pcg}"'
check "the new proxy serves on the same passed socket: /healthz $(healthz)" '[ "$(healthz)" = 200 ]'
entry=$(ct journalctl -o json --no-pager MESSAGE_ID=5d3b0e6f4a2c4e1f9b7a8c6d2e4f1a03 2>/dev/null | tail -1)
check "journald has the incident as a structured entry (MESSAGE_ID, INCIDENT_ID, SERVICE, PID)" \
      '[[ "$entry" == *\"INCIDENT_ID\"* ]] && [[ "$entry" == *\"SERVICE\":\"proxy\"* ]] && [[ "$entry" == *\"PID\"* ]]'
closed=$(ct journalctl -o json --no-pager MESSAGE_ID=5d3b0e6f4a2c4e1f9b7a8c6d2e4f1a04 2>/dev/null | tail -1)
check "journald's closed entry carries DIAGNOSIS, SIGNATURE and CORE_PATH" \
      '[[ "$closed" == *\"DIAGNOSIS\":\"corrupted-lock-word* ]] && [[ "$closed" == *\"SIGNATURE\"* ]] && [[ "$closed" == *\"CORE_PATH\":\"/var/lib/defib/proxy/cores/* ]]'

# 2b. defib's core in coredumpctl: announced once it is final (stacks read, zstd done), as systemd-coredump's.
listed=
for _ in $(seq 150); do
    listed=$(ct coredumpctl --no-pager list defib-proxy 2>&1) && break
    sleep 0.2
done
check "coredumpctl list defib-proxy shows defib's core: $(echo "$listed" | tail -1)" \
      '[[ "$listed" == *present*/usr/local/bin/defib-proxy* ]]'
cinfo=$(ct coredumpctl --no-pager info defib-proxy 2>&1)
check "coredumpctl info shows defib's diagnosis in its message, the unit and the zstd core: $(echo "$cinfo" | grep -E 'Message|Storage|Unit' | tr -s ' ' | tr '\n' ';')" \
      '[[ "$cinfo" == *"Diagnosis: corrupted-lock-word"* ]] && [[ "$cinfo" == *"Unit: defib@proxy.service"* ]] && [[ "$cinfo" == *"Storage: /var/lib/defib/proxy/cores/"*".zst (present)"* ]] && [[ "$cinfo" == *"Signal: 9 (KILL)"* ]]'
[[ "$cinfo" == *"Diagnosis: corrupted-lock-word"* ]] || echo "$cinfo" | head -20 | sed 's/^/    /'
threads=$(ct defib incidents -1 --state-dir $STATE --json=short | python3 -c 'import json,sys; print(json.load(sys.stdin)["threads"])')
gdbout=$(ct coredumpctl --no-pager gdb defib-proxy -A "-batch -nx -ex 'info threads'" 2>&1)
seen=$(echo "$gdbout" | grep -cE '^\*? +[0-9]+ +(Thread|LWP) ')
check "coredumpctl gdb opens the core (decompressed by coredumpctl) with every thread: $seen of $threads" \
      '[ -n "$threads" ] && [ "$seen" = "$threads" ] && [[ "$gdbout" == *"Core was generated by"* ]]'
[ "$seen" = "$threads" ] || echo "$gdbout" | tail -30 | sed 's/^/    /'

# 3. SIGSTOP on defib: systemd's watchdog restarts it; one proxy afterwards.
ct kill -STOP "$MainPID"
seen=
for _ in $(seq 300); do
    load
    [ "$Result" = watchdog ] && seen=1
    [ -n "$seen" ] && [ "$SubState" = running ] && [ "$MainPID" != "$FIRST" ] && [ "$MainPID" != 0 ] && break
    sleep 0.1
done
SECOND=$MainPID
check "SIGSTOP: watchdog fired and restarted defib (Result=$Result, NRestarts=$NRestarts, MainPID $FIRST->$SECOND)" \
      '[ -n "$seen" ] && [ "$NRestarts" = 1 ] && [ "$SubState" = running ]'
for _ in $(seq 50); do [ "$(proxies)" = 1 ] && [ "$(defibs)" = 1 ] && break; sleep 0.1; done
check "exactly one defib ($(defibs)) and one proxy ($(proxies)) after the watchdog restart" '[ "$(proxies)" = 1 ] && [ "$(defibs)" = 1 ]'

# 4. A wedged event loop: SIGSTOP stops defib's loop for real (nothing in defib plays along); systemd's
#    watchdog fires and sends SIGABRT (then SIGCONT, as systemd does with every kill): defib dies with a core.
ct kill -STOP "$SECOND"
dumped=; how=
for _ in $(seq 300); do
    load
    # ExecMainCode/Status describe the dead process only until the restart: record them when seen.
    if [ -z "$dumped" ] && [ "$Result" = watchdog ] && [ "$ExecMainCode" != 0 ]; then
        dumped=1; how="ExecMainCode=$ExecMainCode (3 = dumped) ExecMainStatus=$ExecMainStatus (6 = SIGABRT)"
    fi
    [ -n "$dumped" ] && [ "$SubState" = running ] && [ "$MainPID" != "$SECOND" ] && [ "$MainPID" != 0 ] && break
    sleep 0.05
done
check "wedged loop: killed by the watchdog with a core: ${how:-never seen}" \
      '[ "$how" = "ExecMainCode=3 (3 = dumped) ExecMainStatus=6 (6 = SIGABRT)" ]'
pattern=$(cat /proc/sys/kernel/core_pattern)
if [[ "$pattern" == "|"* ]]; then
    # The host pipes cores to a helper (systemd-coredump, apport) outside the container: ExecMainCode=dumped
    # above is the kernel's word that it dumped; the file is the helper's business.
    log "PASS: the core file is in defib's working directory (core_pattern pipes to '${pattern%% *}': the kernel's ExecMainCode=dumped is the evidence)"
else
    core=$(ct find $STATE -maxdepth 1 -type f -name 'core*' 2>/dev/null | head -1)
    check "the core file is in defib's working directory: '${core:-none}' (core_pattern '$pattern')" \
          '[ -n "$core" ] && [ "$(ct head -c 4 "$core" | od -An -c | tr -d " ")" = "177ELF" ]'
fi
check "restarted after the wedge: NRestarts=$NRestarts, SubState=$SubState" '[ "$NRestarts" = 2 ] && [ "$SubState" = running ]'
for _ in $(seq 50); do [ "$(proxies)" = 1 ] && [ "$(defibs)" = 1 ] && break; sleep 0.1; done
check "exactly one defib ($(defibs)) and one proxy ($(proxies)) after the wedge" '[ "$(proxies)" = 1 ] && [ "$(defibs)" = 1 ]'
ct systemctl status --no-pager -n 0 $U | sed 's/^/    /'
