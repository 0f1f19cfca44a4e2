#!/usr/bin/env bash
# Installs a defib .deb with dpkg into a throwaway root (scripts/throwaway-root.sh: an overlay of / on a
# tmpfs; this machine is not touched) and uses it there as an operator would: --help and --version, the man
# pages, the units verified, then defib supervising the packaged defib-proxy through a real hang (the
# parking_lot race): incident, diagnosis, native core, stacks from gdb, SIGTERM; then dpkg -r.
#
# Usage: deb-smoke.sh DEB [--without-toolchain] [--no-stacks]
#   --without-toolchain  hide /opt/swift in the root: the package must not need the toolchain's Swift runtime
#                        (true of `make deb`'s --static-swift-stdlib binaries; `make deb-check` uses it).
#   --no-stacks          no gdb on the core (capture.stacks = false): the test suite's run, where gdb reading a
#                        debug build's symbols is CPU the tests beside it need.
# Prints PASS/FAIL lines; exit 0 only when every check passed; 77 when no throwaway root can be made here.
set -uo pipefail
DEB=${1:?usage: $0 DEB [--without-toolchain] [--no-stacks]}
shift
hide=(); toolchain=with; stacks=true
for option in "$@"; do
    case $option in
        --without-toolchain) hide=(--hide /opt/swift); toolchain=without ;;
        --no-stacks) stacks=false ;;
        *) echo "usage: deb-smoke.sh DEB [--without-toolchain] [--no-stacks]" >&2; exit 2 ;;
    esac
done
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VERSION=$(tr -d ' \t\r\n' < "$ROOT/VERSION")
NAME=$(basename "$DEB")

"$ROOT/scripts/throwaway-root.sh" --put "$DEB" "${hide[@]+"${hide[@]}"}" -- bash -s "$NAME" "$VERSION" "$toolchain" "$stacks" <<'EOF'
NAME=$1 VERSION=$2 TOOLCHAIN=$3 STACKS=$4
FAIL=0
check() { if eval "$2"; then echo "PASS: $1"; else echo "FAIL: $1"; FAIL=1; fi; }
if [ "$TOOLCHAIN" = without ]; then
    check "no Swift toolchain in this root: /opt/swift is empty" '[ -z "$(ls -A /opt/swift 2>/dev/null)" ]'
fi
dpkg -i "/tmp/$NAME" > /tmp/dpkg.log 2>&1; rc=$?
check "dpkg -i $NAME (rc $rc)" '[ $rc = 0 ]' || cat /tmp/dpkg.log
check "dpkg sees defib $VERSION installed" '[ "$(dpkg-query -W -f="\${Status} \${Version}" defib)" = "install ok installed $VERSION" ]'
check "defib --version and defib-proxy --version print $VERSION" '[ "$(defib --version) $(defib-proxy --version)" = "$VERSION $VERSION" ]'
check "defib --help" 'defib --help | grep -q "^OVERVIEW: Supervise a service"'
check "man finds defib(1), defib-proxy(1), defib.toml(5)" '{ man -w defib && man -w defib-proxy && man -w 5 defib.toml; } >/dev/null'
verify=$(systemd-analyze verify defib.service defib@proxy.service 2>&1)
check "systemd-analyze verify prints nothing: '$verify'" '[ -z "$verify" ]'
check "nothing enabled: $(systemctl is-enabled defib.service 2>/dev/null)" '[ "$(systemctl is-enabled defib.service 2>/dev/null)" = disabled ]'

S=/tmp/state
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
printf '[capture]\nstacks = %s\n' "$STACKS" > /tmp/defib.toml
defib run --config /tmp/defib.toml --state-dir $S --interval 100 --deadline 1000 --socket http=127.0.0.1:$PORT \
    -- defib-proxy --route app.test=127.0.0.1:9 > /tmp/defib.log 2>&1 &
d=$!
for _ in $(seq 100); do [ "$(defib ctl --state-dir $S ping up 2>/dev/null)" = "pong up" ] && break; sleep 0.2; done
check "the packaged defib supervises the packaged proxy (ctl ping)" '[ "$(defib ctl --state-dir $S ping up 2>/dev/null)" = "pong up" ]'
defib ctl --state-dir $S fault timeout-race > /dev/null
json() { defib incidents info last --state-dir $S --json 2>/dev/null; }
field() { json | python3 -c "import json,sys; v=json.load(sys.stdin).get('$1'); print('' if v is None else v)" 2>/dev/null; }
# Recovered once the replacement answers; the core is written from the frozen instance after that (restart while
# the core is written), so wait for both.
for _ in $(seq 150); do [ "$(field outcome)" = recovered ] && [ -n "$(field core_path)$(field capture_error)" ] && break; sleep 0.2; done
check "a hang: incident recovered, diagnosis $(field diagnosis | cut -c1-40)" '[ "$(field outcome)" = recovered ] && [[ "$(field diagnosis)" == corrupted-lock-word* ]]'
core=$(field core_path)
check "a native core: $core" '[ "$(field capture_method)" = native ] && [ "$(head -c 4 "$core" | od -An -c | tr -d " ")" = "177ELF" ]'
if [ "$STACKS" = true ]; then
    for _ in $(seq 150); do [ -n "$(field stacks)" ] && break; sleep 0.2; done
    check "stacks from gdb stored" '[ "$(field stacks | grep -c "^Thread")" -ge 2 ]'
fi
proxy=$(pgrep -P $d -x defib-proxy)
kill -TERM $d; wait $d; rc=$?
check "SIGTERM: defib exits 0 (rc $rc)" '[ $rc = 0 ]'
check "its proxy ($proxy) stopped with it" '[ -n "$proxy" ] && ! kill -0 $proxy 2>/dev/null'
dpkg -r defib > /dev/null 2>&1
check "dpkg -r removes it" '[ ! -e /usr/bin/defib ] && [ ! -e /lib/systemd/system/defib.service ]'
[ $FAIL = 0 ] || { echo "--- defib.log"; tail -20 /tmp/defib.log; }
exit $FAIL
EOF
