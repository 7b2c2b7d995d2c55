#!/usr/bin/env bash
# Make .venv with a Python >= 3.12 and install xenmapcache into it.
#   scripts/setup.sh        install the package (what the demo needs)
#   scripts/setup.sh test   editable install with the test extras, and the
#                           system tools the C tests use (gcc, g++, make,
#                           pkg-config, and libxen-dev: Xen's real headers and
#                           libxenforeignmemory, which the Xen backend tests use)
set -euo pipefail
cd "$(dirname "$0")/.."

find_python() {
    local candidate
    for candidate in "${PYTHON:-}" python3.13 python3.12 python3 \
        "$HOME"/.pyenv/versions/3.1[3-9]*/bin/python3 \
        "$HOME"/.pyenv/versions/3.12*/bin/python3; do
        [ -n "$candidate" ] || continue
        if "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
            command -v "$candidate"
            return 0
        fi
    done
    echo "xenmapcache needs Python >= 3.12: none found (set PYTHON=/path/to/python3.12)" >&2
    return 1
}

need=()
command -v cc >/dev/null || need+=(gcc)
command -v make >/dev/null || need+=(make)
if [ "${1:-}" = test ]; then
    command -v c++ >/dev/null || need+=(g++)
    command -v pkg-config >/dev/null || need+=(pkg-config)
    [ -f /usr/include/xenforeignmemory.h ] || need+=(libxen-dev)
fi
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi

if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import sys; sys.exit(sys.version_info < (3, 12))'; then
    rm -rf .venv
    "$(find_python)" -m venv .venv
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
if [ "${1:-}" = test ]; then
    .venv/bin/python -m pip install -q -e '.[test]'
else
    .venv/bin/python -m pip install -q .
fi
