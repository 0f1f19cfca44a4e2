#!/usr/bin/env bash
# Builds defib_VERSION_ARCH.deb with dpkg-deb from already-built binaries (`make deb` builds them first).
# Layout: binaries in /usr/bin, units in /lib/systemd/system, tmpfiles in /usr/lib/tmpfiles.d, man pages,
# bash/zsh/fish completions, README and example config in /usr/share/doc/defib. No maintainer scripts:
# installing the package enables and starts nothing.
#
# Depends: is computed by dpkg-shlibdeps from the libraries the binaries really link (libc6, libsystemd0,
# libsqlite3-0, ...). A library no Debian package provides (the Swift runtime of a toolchain in /opt/swift,
# when the binaries were not built with --static-swift-stdlib) is an error: such a package would not run on
# a machine without that toolchain. ALLOW_UNPACKAGED_LIBS=1 builds it anyway, with a warning naming them
# (the test suite does that with its debug binaries).
#
# Environment: BUILD_DIR (default .build/release), DEB_DIR (default: the repository), MAINTAINER (default:
# DEBFULLNAME <DEBEMAIL>, else git's user.name <user.email>),
# DEB_COMPRESS (dpkg-deb's -Z: xz by default; the tests use none, xz takes a minute on debug binaries).
# The last line printed is the path of the .deb.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VERSION=$(tr -d ' \t\r\n' < "$ROOT/VERSION")
ARCH=$(dpkg --print-architecture)
BUILD_DIR=${BUILD_DIR:-.build/release}
case $BUILD_DIR in /*) ;; *) BUILD_DIR=$ROOT/$BUILD_DIR ;; esac
DEB_DIR=${DEB_DIR:-$ROOT}
# Who built the package, as Debian's tools ask: MAINTAINER, else DEBFULLNAME and DEBEMAIL (dch's), else git's user.
if [ -z "${MAINTAINER:-}" ]; then
    if [ -n "${DEBEMAIL:-}" ]; then
        MAINTAINER="${DEBFULLNAME:-defib maintainers} <$DEBEMAIL>"
    elif email=$(git -C "$ROOT" config user.email) && [ -n "$email" ]; then
        MAINTAINER="$(git -C "$ROOT" config user.name || echo defib maintainers) <$email>"
    else
        echo "deb: who maintains the package? set MAINTAINER='Name <address>' (or DEBFULLNAME and DEBEMAIL)" >&2
        exit 1
    fi
fi
OUT=$DEB_DIR/defib_${VERSION}_${ARCH}.deb
for tool in dpkg-deb dpkg-shlibdeps strip gzip; do
    command -v "$tool" >/dev/null || { echo "deb: $tool is missing (apt-get install dpkg-dev binutils)" >&2; exit 1; }
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/defib-deb.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
PKG=$WORK/pkg

# The shared libraries the binaries link, checked before anything is staged: each must come from a package.
mkdir -p "$WORK/src/debian"
printf 'Source: defib\n\nPackage: defib\nArchitecture: any\n' > "$WORK/src/debian/control"
# Whether a package ships each library: dpkg knows one by the path in its package, /lib or /usr/lib on a merged
# /usr, the link or its target; one dpkg -S for every spelling at once (each call reads the whole database).
mapfile -t libs < <(ldd "$BUILD_DIR/defib" "$BUILD_DIR/defib-proxy" | awk '/=> \// { print $3 }' | sort -u)
spellings() {
    local p
    for p in "$1" "$(readlink -f "$1")"; do
        case $p in /usr/*) echo "$p"; echo "${p#/usr}" ;; *) echo "$p"; echo "/usr$p" ;; esac
    done
}
all=(); for lib in "${libs[@]}"; do mapfile -t -O ${#all[@]} all < <(spellings "$lib"); done
known=$( (dpkg -S "${all[@]}" 2>/dev/null || true) | sed -n 's/^[^ ]*: //p')
unpackaged=()
for lib in "${libs[@]}"; do
    owner=
    while read -r p; do grep -qxF -- "$p" <<< "$known" && owner=1; done < <(spellings "$lib")
    [ -n "$owner" ] || unpackaged+=("$lib")
done
shlibdeps_flags=()
if [ ${#unpackaged[@]} -gt 0 ]; then
    if [ "${ALLOW_UNPACKAGED_LIBS:-}" = 1 ]; then
        echo "deb: WARNING: linked libraries no Debian package provides (the package runs only where they are):" >&2
        printf 'deb:   %s\n' "${unpackaged[@]}" >&2
        shlibdeps_flags+=(--ignore-missing-info)
    else
        echo "deb: these linked libraries come from no Debian package, so the .deb would not run without them:" >&2
        printf 'deb:   %s\n' "${unpackaged[@]}" >&2
        echo "deb: build with --static-swift-stdlib (make deb does), or set ALLOW_UNPACKAGED_LIBS=1" >&2
        exit 1
    fi
fi

BUILD_DIR=$BUILD_DIR DESTDIR=$PKG PREFIX=/usr UNITDIR=/lib/systemd/system TMPFILESDIR=/usr/lib/tmpfiles.d \
    ZSHCOMPDIR=/usr/share/zsh/vendor-completions STRIP=1 "$ROOT/scripts/install.sh" install >/dev/null

# Debian's own files in the doc directory: copyright and a changelog (a native package: changelog.gz).
YEARS=$(git -C "$ROOT" log --reverse --format=%ad --date=format:%Y 2>/dev/null | sed -n '1p;$p' | uniq | paste -sd-)
YEARS=${YEARS:-$(date -u +%Y)}
cat > "$PKG/usr/share/doc/defib/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: defib
Comment: The defib repository does not yet state a license; until it does, no license is granted
 beyond what the authors give in writing.

Files: *
Copyright: $YEARS the defib authors
License: none-stated
 The repository holds no license file.
EOF
printf 'defib (%s) unstable; urgency=medium\n\n  * Release %s.\n\n -- %s  %s\n' \
    "$VERSION" "$VERSION" "$MAINTAINER" "$(date -R -u -d "@$(git -C "$ROOT" log -1 --format=%ct 2>/dev/null || date +%s)")" \
    | gzip -9n > "$PKG/usr/share/doc/defib/changelog.gz"
chmod 0644 "$PKG/usr/share/doc/defib/copyright" "$PKG/usr/share/doc/defib/changelog.gz"

# Depends: from the libraries the staged (stripped) binaries need.
bins=("$PKG/usr/bin/defib" "$PKG/usr/bin/defib-proxy")
depends=$(cd "$WORK/src" && dpkg-shlibdeps -O "${shlibdeps_flags[@]}" "${bins[@]}" 2>"$WORK/shlibdeps.err" \
          | sed -n 's/^shlibs:Depends=//p') || { cat "$WORK/shlibdeps.err" >&2; exit 1; }
# Not news: the package is staged outside a debian/ tree; and the unpackaged libraries were named above.
grep -v -e 'binaries to analyze should already be installed in their package' -e 'is used in RPATH of' \
     -e "can't extract name and version from library name" -e 'could avoid a useless dependency' "$WORK/shlibdeps.err" >&2 || true
[ -n "$depends" ] || { echo "deb: dpkg-shlibdeps found no dependencies" >&2; exit 1; }

mkdir -p "$PKG/DEBIAN"
installed_kib=$(du -sk --apparent-size "$PKG" | cut -f1)
cat > "$PKG/DEBIAN/control" <<EOF
Package: defib
Version: $VERSION
Architecture: $ARCH
Maintainer: $MAINTAINER
Installed-Size: $installed_kib
Depends: $depends
Recommends: gdb
Suggests: zstd
Section: admin
Priority: optional
Description: watchdog supervisor that keeps the evidence of a hang
 defib starts a service, checks on a heartbeat (a ping on its control channel or
 sd_notify keep-alives) that it still makes progress, and when it hangs writes a
 core in milliseconds, reads the lock words out of the hung process, diagnoses
 why it hung, restarts it and records an incident to query later.
 .
 The package installs defib, the reference proxy defib-proxy, systemd units
 (defib.service, defib@.service: not enabled), a tmpfiles.d entry, man pages and
 shell completions.
EOF
(cd "$PKG" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum) > "$PKG/DEBIAN/md5sums"
chmod 0644 "$PKG/DEBIAN/control" "$PKG/DEBIAN/md5sums"
find "$PKG" -type d -exec chmod 0755 {} +

mkdir -p "$DEB_DIR"
dpkg-deb --root-owner-group -Z"${DEB_COMPRESS:-xz}" --build "$PKG" "$OUT" >/dev/null
echo "deb: Depends: $depends" >&2
echo "$OUT"
