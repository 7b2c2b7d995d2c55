"""The C library and the binding build warning-free with every compiler at hand (issue: installable everywhere).

Users compile xenmapcache themselves where no wheel fits, with whatever their
distribution has: GCC 14 makes ``incompatible-pointer-types``,
``implicit-function-declaration`` and ``int-conversion`` errors by default,
and current clang does too.  So the C library (``make`` in a copy of csrc/)
and the cffi binding (build_ffi.py's very sources and flags) are built here
with gcc, Debian's clang and zig's clang (the ``ziglang`` package, a current
LLVM), each with ``-Wall -Wextra -Werror`` and those three errors; the
binding so built is then imported and asked its version.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from ctools import CSRC, LIBS, REPO, run

from xenmapcache._version import __version__

sys.path.insert(0, str(REPO))
import build_ffi  # noqa: E402  (the binding's sources and flags, one list for every build)

ERRORS = [
    "-Wall", "-Wextra", "-Werror",
    "-Werror=incompatible-pointer-types", "-Werror=implicit-function-declaration", "-Werror=int-conversion",
]


def zig_cc() -> list[str] | None:
    """``zig cc`` from the ziglang package, when it is installed and runs."""
    command = [sys.executable, "-m", "ziglang", "cc"]
    probe = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=120)
    return command if probe.returncode == 0 else None


COMPILERS = {
    "gcc": lambda: ["gcc"] if shutil.which("gcc") else None,
    "clang": lambda: ["clang"] if shutil.which("clang") else None,
    "zig-cc": zig_cc,
}


@pytest.fixture(params=sorted(COMPILERS))
def compiler(request: pytest.FixtureRequest) -> list[str]:
    found = COMPILERS[request.param]()
    if found is None:
        message = f"{request.param} is not installed (scripts/setup.sh test installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.mark.slow
def test_the_c_library_builds_warning_free(compiler: list[str], tmp_path: Path) -> None:
    # A copy, so that csrc/'s own build (which the other tests use) is left alone.
    shutil.copytree(CSRC, tmp_path / "csrc", ignore=shutil.ignore_patterns("build", "*.a", "*.so*", "*.pc", "*.o"))
    (tmp_path / "xenmapcache").mkdir()
    shutil.copy(REPO / "xenmapcache" / "_version.py", tmp_path / "xenmapcache")
    cc = shlex.join(compiler)
    run(["make", "-C", tmp_path / "csrc", f"CC={cc}", f"CFLAGS=-O2 {shlex.join(ERRORS)}", "all"])
    assert (tmp_path / "csrc" / f"libxenmapcache.so.{__version__}").is_file()


@pytest.mark.slow
def test_the_binding_builds_warning_free_and_imports(compiler: list[str], tmp_path: Path) -> None:
    source = tmp_path / "_core.c"
    build_ffi.ffibuilder.emit_c_code(str(source))
    module = tmp_path / "_core.abi3.so"
    run(
        [
            *compiler, *build_ffi.COMPILE_ARGS, *ERRORS, "-fPIC", "-shared",
            *[f"-I{REPO / d}" for d in build_ffi.INCLUDE_DIRS], f"-I{sysconfig.get_paths()['include']}",
            *[f"-D{name}={value}" for name, value in build_ffi.DEFINE_MACROS],
            source, *[REPO / s for s in build_ffi.c_sources()], *LIBS, "-o", module,
        ]
    )
    load = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('xenmapcache._core', {str(module)!r})\n"
        "core = importlib.util.module_from_spec(spec); spec.loader.exec_module(core)\n"
        "print(core.ffi.string(core.lib.xmc_py_build_version()).decode())\n"
    )
    assert run([sys.executable, "-c", load], cwd=tmp_path).stdout.strip() == __version__
