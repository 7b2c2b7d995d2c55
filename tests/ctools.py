"""C from the tests: the repository's paths, one runner, and libc's mmap.

Imported by the tests that compile C, and by those whose backend callbacks
map memory themselves (pytest puts tests/ on sys.path).
"""

from __future__ import annotations

import ctypes
import mmap
import os
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from types import ModuleType
from typing import Any
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
PAGE = 4096


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


class Flaky:
    """Anonymous memory as guest memory for a ``CallbackBackend``; the next map,
    unmap or translate can be made to raise (``fail``), or each call to run
    ``hook`` first."""

    def __init__(self, interrupt: type[BaseException] | None = None) -> None:
        self.fail: set[str] = set()
        self.live: dict[int, int] = {}
        self.interrupt = interrupt  # raised instead of each callback's own error
        self.hook: Any = None  # called by map, unmap and translate before they work

    def _raise(self, what: str, error: Exception) -> None:
        if self.hook is not None:
            self.hook()
        if what in self.fail:
            self.fail.discard(what)
            raise error if self.interrupt is None else self.interrupt()

    def map(self, first_pfn: int, nr_pages: int, fixed: int | None) -> tuple[int, list[int]]:
        self._raise("map", OSError("map refused"))
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | (MAP_FIXED if fixed else 0)
        base = libc.mmap(fixed, nr_pages * PAGE, mmap.PROT_READ | mmap.PROT_WRITE, flags, -1, 0)
        self.live[base] = nr_pages * PAGE
        return base, [0] * nr_pages

    def unmap(self, address: int, length: int) -> None:
        del self.live[address]  # never retried: a second unmap would fail here
        libc.munmap(address, length)
        self._raise("unmap", RuntimeError("unmap refused"))

    def translate(self, paddr: int, size: int) -> int:
        self._raise("translate", LookupError("translate refused"))
        return paddr

    def cache(self, xmc: ModuleType, **kwargs: Any) -> Any:
        return xmc.MapCache(xmc.CallbackBackend(self.map, self.unmap), bucket_shift=16, max_size=2 << 16, **kwargs)


def run_patched_import(module: str, patch: str, body: str) -> str:
    """Run ``body`` in a child Python whose ``module`` runs ``patch`` (a line of
    code, with the module as ``module``) right after it is imported, as a
    stale or newer checkout would have it; returns the child's stdout."""
    code = textwrap.dedent(
        f"""
        import sys
        from importlib.machinery import PathFinder

        class Patched(PathFinder):
            @classmethod
            def find_spec(cls, name, path=None, target=None):
                spec = PathFinder.find_spec(name, path, target)
                if name == {module!r} and spec is not None:
                    exec_module = spec.loader.exec_module
                    def patched(module):
                        exec_module(module)
                        {patch}
                    spec.loader.exec_module = patched
                return spec

        sys.meta_path.insert(0, Patched)
        """
    ) + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
