#!/usr/bin/env bash
# Builds qemu-system-i386 with its mapcache (hw/xen/xen-mapcache.c) replaced by
# libxenmapcache, then checks that QEMU's callers really call us.
#
#   contrib/qemu/build-qemu.sh [--tcg] QEMU_SRC [BUILD_DIR]
#
# --tcg: the second mode, for a guest without Xen (DESIGN.md section 11):
# qemu-system-x86_64 with TCG, patched with contrib/qemu/xenmapcache-tcg.patch
# too (system/physmem.c's Xen call points and a virtio-balloon inflation go
# to the glue when QEMU runs with XENMAPCACHE_TCG=1); run-guest.sh uses it.
#
# QEMU_SRC: a QEMU source tree (checked against olafhering/qemu-xen e064f42c,
# QEMU 9.1 with the grant mapcache), with subprojects/keycodemapdb filled in
# (configure runs with --disable-download).  It is patched in place with
# contrib/qemu/xenmapcache-meson.patch, which touches meson files only (a
# second run finds it applied).  BUILD_DIR defaults to
# QEMU_SRC/build-xenmapcache.  Environment: JOBS (ninja -j, default 2),
# STOCK_QEMU (a qemu-system-i386 built from the same tree without the patch:
# its -M xenfv failure is then compared with ours, line for line).
# The Debian packages QEMU's build needs are installed when missing (as root,
# with apt-get).  A build directory is configured once and reused: ninja
# rebuilds only what changed.  See docs/qemu-build.md.
set -euo pipefail

usage() { echo "usage: $0 [--tcg] QEMU_SRC [BUILD_DIR]" >&2; exit 2; }
TCG=
if [ "${1:-}" = --tcg ]; then TCG=1; shift; fi
[ $# -ge 1 ] && [ $# -le 2 ] || usage

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
SRC=$(cd "$1" && pwd)
BUILD=${2:-$SRC/build-xenmapcache}
JOBS=${JOBS:-2}
PATCH=$HERE/xenmapcache-meson.patch
TCG_PATCH=$HERE/xenmapcache-tcg.patch
LIB=$ROOT/csrc/libxenmapcache.a
DEPS="ninja-build pkg-config libglib2.0-dev libpixman-1-dev libxen-dev flex bison python3-venv make gcc"
# QEMU's mapcache API, the functions its callers use.
SYMBOLS="xen_map_cache_init xen_map_cache xen_ram_addr_from_mapcache
xen_invalidate_map_cache_entry xen_invalidate_map_cache xen_replace_cache_entry"
# The only files the patch may change.
PATCHED="hw/xen/meson.build meson_options.txt"
# QEMU's callers of the mapcache: compiled as they are.
CALLERS="system/physmem.c hw/xen/*.c hw/i386/xen/*.c include/sysemu/xen-mapcache.h"
TARGET=i386-softmmu
QEMU_BIN=qemu-system-i386
CONFIGURE="--enable-xen --disable-tcg"
if [ -n "$TCG" ]; then
    # The TCG patch changes two callers (physmem.c, virtio-balloon.c), adds a
    # header and leaves out the softfloat tests, which meson would download.
    PATCHED="$PATCHED system/physmem.c hw/virtio/virtio-balloon.c tests/meson.build"
    CALLERS="hw/xen/*.c hw/i386/xen/*.c include/sysemu/xen-mapcache.h"
    TARGET=x86_64-softmmu
    QEMU_BIN=qemu-system-x86_64
    CONFIGURE="--enable-xen --enable-tcg --without-default-features"
    BUILD=${2:-$SRC/build-xenmapcache-tcg}
fi

step() { printf '\n== %s\n' "$*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }

[ -f "$SRC/system/physmem.c" ] && [ -f "$SRC/hw/xen/xen-mapcache.c" ] \
    || fail "$SRC is not a QEMU source tree with hw/xen/xen-mapcache.c"
[ -f "$SRC/subprojects/keycodemapdb/meson.build" ] \
    || fail "$SRC/subprojects/keycodemapdb is empty: fetch qemu/keycodemapdb at the revision of subprojects/keycodemapdb.wrap"

missing=
for p in $DEPS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    step "apt-get install$missing"
    [ "$(id -u)" = 0 ] || fail "not root: install$missing first"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi

sums() { (cd "$SRC" && sha256sum $CALLERS $PATCHED 2>/dev/null); }

BEFORE=
for pf in "$PATCH" ${TCG:+"$TCG_PATCH"}; do
    step "patch: $(basename "$pf")"
    if (cd "$SRC" && patch -p1 -R --dry-run -s -f <"$pf" >/dev/null 2>&1); then
        echo "already applied"
    else
        [ -n "$BEFORE" ] || BEFORE=$(sums)
        (cd "$SRC" && patch -p1 -s -f <"$pf")
        echo "applied"
    fi
done

step "check: only the files of the patches changed, QEMU's other callers and its header unchanged"
if git -C "$SRC" rev-parse --git-dir >/dev/null 2>&1; then
    echo "QEMU commit $(git -C "$SRC" rev-parse HEAD)"
    changed=$(git -C "$SRC" diff --name-only HEAD -- $CALLERS $PATCHED | sort | tr '\n' ' ')
    [ "$changed" = "$(echo $PATCHED | tr ' ' '\n' | sort | tr '\n' ' ')" ] \
        || fail "git diff lists '$changed', not just '$PATCHED'"
    echo "git diff --name-only: $changed"
fi
if [ -n "$BEFORE" ]; then
    changed=$({ diff <(echo "$BEFORE") <(sums) || true; } | awk '/^>/ {print $3}' | sort | tr '\n' ' ')
    [ "$changed" = "$(echo $PATCHED | tr ' ' '\n' | sort | tr '\n' ' ')" ] \
        || fail "checksums changed for '$changed', not just '$PATCHED'"
    echo "sha256 of $(echo $CALLERS) unchanged by the patch"
fi

step "libxenmapcache.a"
make -s -C "$ROOT/csrc" libxenmapcache.a
ls -l "$LIB"

step "configure and build $QEMU_BIN in $BUILD"
start=$(date +%s)
if [ ! -f "$BUILD/build.ninja" ]; then
    mkdir -p "$BUILD"
    (cd "$BUILD" && "$SRC/configure" --target-list=$TARGET $CONFIGURE \
        --disable-docs --disable-tools --disable-user \
        --disable-guest-agent --disable-werror --disable-download >configure.log)
fi
# Not a configure flag: QEMU's configure knows only the options listed in
# its scripts/meson-buildoptions.sh, which the patch leaves alone.
(cd "$BUILD" && pyvenv/bin/meson configure -Dxenmapcache="$ROOT" >/dev/null)
(cd "$BUILD" && nice ninja -j"$JOBS" $QEMU_BIN >ninja.log) \
    || { tail -30 "$BUILD/ninja.log"; fail "the build failed (log: $BUILD/ninja.log)"; }
echo "built in $(($(date +%s) - start)) s"
QEMU=$BUILD/$QEMU_BIN

step "check: the link uses libxenmapcache.a, not xen-mapcache.c"
# The link statement of build.ninja: inputs and LINK_ARGS (ninja links through
# a response file, so `ninja -t commands` would show only its name).
link=$(awk -v bin="$QEMU_BIN" '$0 ~ "^build " bin ":" {on = 1; print; next} on && /^ / {print; next} {on = 0}' \
    "$BUILD/build.ninja")
case $link in *xen-mapcache.c.o*) fail "xen-mapcache.c.o is linked" ;; esac
case $link in *"$LIB"*) ;; *) fail "$LIB is not on the link line" ;; esac
case $link in *xenmapcache-glue.c.o*) ;; *) fail "the glue is not linked" ;; esac
echo "link line: libxenmapcache.a and xenmapcache-glue.c.o, no xen-mapcache.c.o"

step "check: the mapcache symbols are ours (nm)"
nm "$QEMU" >"$BUILD/xmc-nm"
nm -g --defined-only "$LIB" >"$BUILD/xmc-lib-nm"
for s in $SYMBOLS; do
    grep -q " T $s\$" "$BUILD/xmc-lib-nm" || fail "$s is not defined by $LIB"
    grep " T $s\$" "$BUILD/xmc-nm" || fail "$s is not defined in $QEMU"
done
for s in __wrap_xen_map_cache_init __wrap_xen_invalidate_map_cache \
    __wrap_xen_invalidate_map_cache_entry xmc_qemu_configure xmc_cache_new xmc_map; do
    grep " T $s\$" "$BUILD/xmc-nm" || fail "$s missing: not our mapcache"
done
# Functions only QEMU's own xen-mapcache.c defines.
for s in xen_map_cache_init_single xen_remap_bucket; do
    if grep -q " $s\$" "$BUILD/xmc-nm"; then fail "QEMU's $s is linked"; fi
done
echo "QEMU's xen_map_cache_init_single, xen_remap_bucket: absent"
for o in system_physmem.c.o hw_xen_xen-hvm-common.c.o hw_i386_xen_xen-hvm.c.o; do
    obj=$(find "$BUILD/" -name "$o" -path "*libqemu-$TARGET*" | head -1)
    [ -n "$obj" ] || fail "no $o in $BUILD"
    echo "$o calls: $(nm -u "$obj" | awk '$2 ~ /^xen_(map_cache|ram_addr_from_mapcache|invalidate_map_cache|replace_cache_entry)/ {print $2}' | tr '\n' ' ')"
done

step "check: $QEMU_BIN --version"
"$QEMU" --version | head -1

if [ -n "$TCG" ]; then
    grep -q " [BD] xmc_tcg\$" "$BUILD/xmc-nm" || fail "physmem.c's xmc_tcg is missing: not patched"
    echo "physmem.c's hook xmc_tcg and the glue's TCG mode are linked"
    step "all checks passed"
    exit 0
fi

step "check: -M xenfv fails in xen_init, before the mapcache"
xenfv() { "$1" -M xenfv -display none -nodefaults -S 2>&1 </dev/null; }
set +e
out=$(xenfv "$QEMU"); rc=$?
set -e
echo "$out"
echo "exit status $rc"
[ "$rc" -ne 0 ] || fail "-M xenfv succeeded: is this a Xen dom0? (the check wants a machine without Xen)"
case $out in *"can't open xen interface"*) ;; *) fail "not xen_init's failure" ;; esac
case $out in *mapcache*) fail "the mapcache was reached" ;; esac
if [ -n "${STOCK_QEMU:-}" ]; then
    set +e
    stock=$(xenfv "$STOCK_QEMU"); src=$?
    set -e
    [ "$src" -eq "$rc" ] || fail "stock QEMU exits $src, ours $rc"
    # QEMU prefixes its messages with the basename of its binary.
    [ "$(echo "$stock" | sed "s|$(basename "$STOCK_QEMU")|QEMU|g")" = "$(echo "$out" | sed "s|$(basename "$QEMU")|QEMU|g")" ] \
        || fail "stock QEMU says: $stock"
    echo "identical to $STOCK_QEMU (same text, same exit status)"
fi

step "all checks passed"
