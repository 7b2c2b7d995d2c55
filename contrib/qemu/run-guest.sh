#!/usr/bin/env bash
# Boots a Linux guest on QEMU (x86_64, TCG) whose device DMA goes through
# libxenmapcache, checks every byte of its disk I/O, and records the trace.
#
#   contrib/qemu/run-guest.sh QEMU_SRC [WORK_DIR]
#
# QEMU_SRC: a QEMU 9.1 tree (olafhering/qemu-xen e064f42c with keycodemapdb,
# as for build-qemu.sh), built here with both patches (build-qemu.sh --tcg,
# in QEMU_SRC/build-xenmapcache-tcg: a build is reused when nothing changed).
# WORK_DIR (default /tmp/xenmapcache-guest) gets the Debian packages, the
# initramfs, the disk images, QEMU's stderr and the trace (trace.xmct).
# Everything comes from Debian's packages: QEMU's build dependencies,
# linux-image-amd64 (unpacked with dpkg-deb -x, not installed) and
# busybox-static.  Environment: BYTES (per disk, default 64 MiB), THROTTLE
# (bytes/s per disk, default 8 MiB/s), TIMEOUT (s, default 1800).
#
# The guest writes BYTES of seeded data to a virtio-blk and an AHCI disk
# with O_DIRECT, reads them back and compares; the host inflates the
# virtio-balloon over QMP while the reads are in flight, which invalidates
# the mapcache; the host checks the images.  The last line is:
#   guest workload OK: <bytes> bytes verified; <maps> maps (<dma> DMA), <hits> hits, <misses> misses; <warnings> DMA warnings at <invalidations> invalidations
set -euo pipefail

[ $# -ge 1 ] && [ $# -le 2 ] || { echo "usage: $0 QEMU_SRC [WORK_DIR]" >&2; exit 2; }
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
SRC=$(cd "$1" && pwd)
WORK=${2:-/tmp/xenmapcache-guest}
BYTES=${BYTES:-$((64 << 20))}
THROTTLE=${THROTTLE:-$((8 << 20))}
TIMEOUT=${TIMEOUT:-1800}
RAM_MIB=512
# The modules the guest needs, in load order (dependencies first; the
# package has no modules.dep: each module's own depends= string says it).
MODULES="crct10dif_common crct10dif_generic crc-t10dif crc64 crc64_rocksoft_generic
crc64-rocksoft t10-pi scsi_common scsi_mod sd_mod libata libahci ahci virtio_ring
virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk virtio_balloon"

fail() { echo "FAIL: $*" >&2; exit 1; }
step() { printf '\n== %s\n' "$*"; }
start=$(date +%s)

step "QEMU with libxenmapcache (build-qemu.sh --tcg)"
"$HERE/build-qemu.sh" --tcg "$SRC" "$SRC/build-xenmapcache-tcg"
QEMU=$SRC/build-xenmapcache-tcg/qemu-system-x86_64

step "Debian's kernel and busybox-static (apt-get download, dpkg-deb -x)"
mkdir -p "$WORK/debs"
missing=
for p in gcc libc6-dev cpio; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi
kpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
[ -n "$kpkg" ] || { apt-get update -qq; kpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}'); }
[ -n "$kpkg" ] || fail "no linux-image-amd64 in apt's lists"
(cd "$WORK/debs" && { ls "${kpkg}"_*.deb >/dev/null 2>&1 || apt-get download "$kpkg" >/dev/null; } \
    && { ls busybox-static_*.deb >/dev/null 2>&1 || apt-get download busybox-static >/dev/null; })
rm -rf "$WORK/kernel" "$WORK/busybox" "$WORK/initramfs"
dpkg-deb -x "$WORK"/debs/"${kpkg}"_*.deb "$WORK/kernel"
dpkg-deb -x "$WORK"/debs/busybox-static_*.deb "$WORK/busybox"
VMLINUZ=$(ls "$WORK"/kernel/boot/vmlinuz-*)
echo "$kpkg: $(basename "$VMLINUZ")"

step "initramfs"
I=$WORK/initramfs
mkdir -p "$I/bin" "$I/dev" "$I/proc" "$I/sys" "$I/modules"
cp "$WORK/busybox/bin/busybox" "$I/bin/busybox"
gcc -O2 -static -Wall -Wextra -Werror -o "$I/bin/xmc-disk" "$HERE/guest/xmc-disk.c"
gcc -O2 -Wall -Wextra -Werror -o "$WORK/xmc-disk" "$HERE/guest/xmc-disk.c"
install -m 755 "$HERE/guest/init" "$I/init"
: >"$I/modules.order"
for m in $MODULES; do
    ko=$(find "$WORK/kernel/lib/modules" -name "$m.ko" | head -1)
    [ -n "$ko" ] || fail "no $m.ko in $kpkg"
    cp "$ko" "$I/modules/"
    echo "$m" >>"$I/modules.order"
done
echo "$BYTES" >"$I/bytes"
(cd "$I" && find . | cpio -o -H newc --quiet | gzip -1) >"$WORK/initramfs.gz"
ls -l "$WORK/initramfs.gz"

step "boot: virtio-blk + AHCI disks (throttled to $THROTTLE bytes/s), virtio-balloon"
OUT=$WORK/run
rm -rf "$OUT"
mkdir -p "$OUT"
for d in vda sda; do
    truncate -s $((BYTES + (8 << 20))) "$OUT/$d.img"
done
drive() { echo "file=$OUT/$1.img,if=none,id=$1,format=raw,throttling.bps-total=$THROTTLE"; }
export XENMAPCACHE_TCG=1 XENMAPCACHE_TRACE=$OUT/trace.xmct GUEST_RAM=$((RAM_MIB << 20))
python3 "$HERE/guest/host.py" "$OUT" "$TIMEOUT" -- \
    "$QEMU" -M pc -accel tcg -smp 1 -m $RAM_MIB -L "$SRC/pc-bios" \
    -object memory-backend-memfd,id=ram,size=${RAM_MIB}M,share=on -machine memory-backend=ram \
    -nodefaults -display none -no-reboot -serial stdio \
    -kernel "$VMLINUZ" -initrd "$WORK/initramfs.gz" -append "console=ttyS0 panic=-1 quiet" \
    -drive "$(drive vda)" -device virtio-blk-pci,drive=vda \
    -device ahci,id=ahci -drive "$(drive sda)" -device ide-hd,drive=sda,bus=ahci.0 \
    -device virtio-balloon-pci,id=balloon \
    || { tail -20 "$OUT/qemu.stderr" >&2; fail "the guest run failed (see $OUT)"; }
python3 -c 'import json, sys; sys.exit(not json.load(open(sys.argv[1]))["guest_done"])' "$OUT/host.json" \
    || fail "the guest did not finish"
cat "$OUT/host.json"

step "host: the disk images"
verified=0
"$WORK/xmc-disk" check "$OUT/vda.img" 21 "$BYTES" && verified=$((verified + BYTES))
"$WORK/xmc-disk" check "$OUT/sda.img" 22 "$BYTES" && verified=$((verified + BYTES))
[ "$verified" -eq $((2 * BYTES)) ] || fail "the images differ from what the guest wrote"

step "the mapcache's figures (QEMU's stderr)"
grep -v "^xenmapcache: " "$OUT/qemu.stderr" | tail -5 || true
stats=$(grep "^xenmapcache: " "$OUT/qemu.stderr" | tail -1)
echo "$stats"
read -r maps dma hits misses warnings invalidations < <(echo "$stats" | sed -E \
    's/^xenmapcache: ([0-9]+) maps \(([0-9]+) DMA\), ([0-9]+) hits, ([0-9]+) misses; ([0-9]+) DMA warnings at ([0-9]+) invalidations$/\1 \2 \3 \4 \5 \6/')
[ -n "${invalidations:-}" ] || fail "no mapcache figures in QEMU's stderr"
warned=$(grep -c "in flight across an invalidation" "$OUT/qemu.stderr" || true)
[ "$warned" -eq "$warnings" ] || fail "$warned warnings printed, $warnings counted"
[ "$invalidations" -ge 1 ] && [ "$warnings" -ge 1 ] || fail "no DMA warning at a balloon invalidation"
[ "$dma" -ge 1000 ] || fail "only $dma DMA maps"

step "replay of the trace on both implementations"
PY=$ROOT/.venv/bin/python
if [ -x "$PY" ]; then
    "$PY" -m xenmapcache replay --impl both "$OUT/trace.xmct" || fail "the replay differs"
else
    echo "no $PY (scripts/setup.sh): replay skipped"
fi
echo "run took $(($(date +%s) - start)) s; trace $(ls -l "$OUT/trace.xmct" | awk '{print $5}') bytes"
echo "guest workload OK: $verified bytes verified; $maps maps ($dma DMA), $hits hits, $misses misses; $warnings DMA warnings at $invalidations invalidations"
