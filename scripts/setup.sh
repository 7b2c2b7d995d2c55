#!/usr/bin/env bash
# Make .venv with a Python >= 3.12 and install xenmapcache into it.
#   scripts/setup.sh        install the package (what the demo needs)
#   scripts/setup.sh test   editable install with the test extras, and the
#                           system tools the C tests use (gcc, g++, make,
#                           pkg-config, and libxen-dev: Xen's real headers,
#                           libxenforeignmemory and libxengnttab, which the Xen
#                           backend tests use;
#                           clang with libFuzzer and valgrind for the fuzz and
#                           memcheck runs), apt-installed when missing
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

apt_updated=
apt_install() {
    local sudo=
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    [ -n "$apt_updated" ] || $sudo apt-get update -qq
    apt_updated=1
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

# Can clang build a libFuzzer target (csrc/fuzz)?
libfuzzer_ok() {
    local tmp rc
    tmp=$(mktemp -d)
    printf '#include <stddef.h>\n#include <stdint.h>\nint LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { (void)d; (void)n; return 0; }\n' >"$tmp/p.c"
    clang -fsanitize=fuzzer,address "$tmp/p.c" -o "$tmp/p" 2>/dev/null && rc=0 || rc=1
    rm -rf "$tmp"
    return $rc
}

need=()
command -v cc >/dev/null || need+=(gcc)
command -v make >/dev/null || need+=(make)
if [ "${1:-}" = test ]; then
    command -v c++ >/dev/null || need+=(g++)
    command -v pkg-config >/dev/null || need+=(pkg-config)
    [ -f /usr/include/xenforeignmemory.h ] && [ -f /usr/include/xengnttab.h ] || need+=(libxen-dev)
fi
if [ ${#need[@]} -gt 0 ]; then
    apt_install "${need[@]}"
fi
if [ "${1:-}" = test ]; then
    # The C suite: clang + libFuzzer for the fuzz run, valgrind for memcheck.
    # Without them tests/test_c_suite.py skips those runs and says why.
    want=()
    command -v clang >/dev/null || want+=(clang)
    command -v valgrind >/dev/null || want+=(valgrind)
    if [ ${#want[@]} -gt 0 ]; then
        apt_install "${want[@]}" || echo "setup: could not install ${want[*]}" >&2
    fi
    if command -v clang >/dev/null && ! libfuzzer_ok; then
        # Debian ships libFuzzer in libclang-rt-N-dev, N = clang's major version.
        apt_install "libclang-rt-$(clang -dumpversion | cut -d. -f1)-dev" ||
            echo "setup: could not install libFuzzer for clang" >&2
    fi
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
