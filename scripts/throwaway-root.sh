#!/usr/bin/env bash
# Runs a command chrooted into a throwaway copy of this machine's root: an overlay whose lower layer is /
# and whose upper layer is a tmpfs, mounted in a private mount namespace. Whatever the command installs or
# writes there (dpkg -i, make install) is gone when it exits; the machine's files are never touched.
#
# Usage: throwaway-root.sh [--copy DIR]... [--put FILE]... [--hide PATH]... -- COMMAND [ARGS...]
#   --copy DIR   copy DIR's tree into the root (a DESTDIR staging: DIR/usr/bin/x becomes /usr/bin/x)
#   --put FILE   copy FILE into the root's /tmp
#   --hide PATH  mount an empty directory over PATH in the root (e.g. /opt/swift: no toolchain there)
# The command runs with / as the overlay, its own /tmp and /run (tmpfs), and /proc and /dev of the machine.
# Exit status: the command's; 77 when this machine cannot make the namespace (not root, no overlayfs).
set -euo pipefail
ops=()
while [ $# -gt 0 ]; do
    case $1 in
        --copy) ops+=(copy "$(cd "$2" && pwd)"); shift 2 ;;
        --put) ops+=(put "$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"); shift 2 ;;
        --hide) ops+=(hide "$2"); shift 2 ;;
        --) shift; break ;;
        *) echo "usage: $0 [--copy DIR]... [--put FILE]... [--hide PATH]... -- COMMAND..." >&2; exit 2 ;;
    esac
done
[ $# -gt 0 ] || { echo "throwaway-root: no command" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "SKIP: throwaway-root needs root (mount namespaces)" >&2; exit 77; }
unshare -m --propagation private true 2>/dev/null || { echo "SKIP: cannot create a mount namespace here" >&2; exit 77; }

W=$(mktemp -d /var/tmp/defib-root.XXXXXX)
trap 'rmdir "$W" 2>/dev/null || true' EXIT
# The tmpfs is the namespace's own mount: it and everything in it go away with the namespace.
set +e
unshare -m --propagation private -- bash -c '
    set -e
    W=$1; shift
    mount -t tmpfs -o size=4g defib-root "$W"
    mkdir "$W/upper" "$W/work" "$W/root"
    mount -t overlay defib-root -o lowerdir=/,upperdir="$W/upper",workdir="$W/work" "$W/root"
    R=$W/root
    mount -t tmpfs defib-root "$R/tmp"
    mount -t tmpfs defib-root "$R/run"
    mount --rbind /proc "$R/proc"
    mount --rbind /dev "$R/dev"
    while [ "$1" != -- ]; do
        case $1 in
            copy) cp -a "$2/." "$R/" ;;
            put) cp "$2" "$R/tmp/" ;;
            hide) mkdir -p "$R$2"; mount -t tmpfs -o ro,size=1m defib-root "$R$2" ;;
        esac
        shift 2
    done
    shift
    # man-db would rebuild its index for every package dpkg installs here: not what a test wants to wait for.
    rm -f "$R/var/lib/man-db/auto-update"
    exec chroot "$R" /usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin HOME=/root LANG=C.UTF-8 "$@"
' throwaway-root "$W" "${ops[@]+"${ops[@]}"}" -- "$@"
rc=$?
exit $rc
