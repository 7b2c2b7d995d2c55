"""C from the tests: the repository's paths, one runner, and libc's mmap.

Imported by the tests that compile C, and by those whose backend callbacks
map memory themselves (pytest puts tests/ on sys.path).
"""

from __future__ import annotations

import ctypes
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CSRC = REPO / "csrc"
TESTS_C = REPO / "tests" / "c"
CC = os.environ.get("CC", "cc")
CXX = os.environ.get("CXX", "c++")
STRICT = ["-Wall", "-Wextra", "-Werror", "-pedantic"]
LIBS = ["-pthread", "-ldl"]  # what a static libxenmapcache.a needs besides libc

# libc's mmap and munmap with their C types, for callback backends written in Python.
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
MAP_FAILED = ctypes.c_void_p(-1).value
MAP_FIXED = 0x10


def run(cmd: Sequence[str | os.PathLike[str]], expect_ok: bool = True, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run ``cmd``; when it does not exit as ``expect_ok`` says, fail the test with its output."""
    argv = [os.fspath(c) for c in cmd]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, **kwargs)  # type: ignore[call-overload]
    if (proc.returncode == 0) != expect_ok:
        pytest.fail(
            f"{' '.join(argv)} exited {proc.returncode}, expected {'0' if expect_ok else 'a failure'}\n"
            f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
        )
    return proc


def make_csrc(*args: str) -> None:
    """``make -C csrc ARGS``: the C library as a C user builds it."""
    run(["make", "-C", CSRC, *args])
