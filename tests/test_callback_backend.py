"""CallbackBackend: an emulator's own memory, mapped through Python callables."""

from __future__ import annotations

import ctypes
import gc
import logging
import mmap
import os
import subprocess
import sys
import textwrap
from types import ModuleType
from typing import Any

import pytest
from ctools import MAP_FAILED, MAP_FIXED, libc

import xenmapcache
from xenmapcache import _callbacks

PAGE = 4096
MIB = 1 << 20

PROT_NONE = 0


class OwnMemory:
    """An emulator's guest memory: a memfd it maps itself, with a hole."""

    def __init__(self, size: int, hole: tuple[int, int]) -> None:
        self.fd = os.memfd_create("emulator-ram", os.MFD_CLOEXEC)
        os.ftruncate(self.fd, size)
        self.size, self.hole = size, hole
        self.live: dict[int, int] = {}  # address -> length
        self.maps = self.unmaps = 0
        self.fail_unmap = False

    def map(self, first_pfn: int, nr_pages: int, fixed: int | None) -> tuple[int, list[int]]:
        length = nr_pages * PAGE
        errors = []
        for pfn in range(first_pfn, first_pfn + nr_pages):
            start = pfn * PAGE
            errors.append(14 if start + PAGE > self.size or self.hole[0] <= start < self.hole[1] else 0)
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | (MAP_FIXED if fixed else 0)
        base = libc.mmap(fixed, length, PROT_NONE, flags, -1, 0)
        if base == MAP_FAILED:
            raise OSError(ctypes.get_errno(), "mmap")
        for i, err in enumerate(errors):
            if not err:
                page = libc.mmap(
                    base + i * PAGE,
                    PAGE,
                    mmap.PROT_READ | mmap.PROT_WRITE,
                    mmap.MAP_SHARED | MAP_FIXED,
                    self.fd,
                    (first_pfn + i) * PAGE,
                )
                assert page == base + i * PAGE
        if base not in self.live:  # a new mapping, not one remapped in place
            self.maps += 1
        self.live[base] = length
        return base, errors

    def unmap(self, address: int, length: int) -> None:
        if self.fail_unmap:
            self.fail_unmap = False
            raise RuntimeError("unmap refused")
        assert self.live.pop(address) == length
        self.unmaps += 1
        assert libc.munmap(address, length) == 0

    def backend(self) -> xenmapcache.CallbackBackend:
        return xenmapcache.CallbackBackend(self.map, self.unmap)


@pytest.fixture
def mem() -> Any:
    m = OwnMemory(4 * MIB, hole=(MIB, 2 * MIB))
    yield m
    os.close(m.fd)


def test_callback_backend_maps_reads_writes_and_holes(xmc: ModuleType, mem: OwnMemory) -> None:
    with xmc.MapCache(mem.backend(), bucket_shift=16) as cache:
        cache.write(0x1234, b"own memory")
        assert os.pread(mem.fd, 10, 0x1234) == b"own memory"
        with cache.map(0x2000, 16, dma=True, tag="dma") as m:
            assert bytes(memoryview(m)[:0]) == b""
            assert cache.ram_addr(m.address) == 0x2000
        with pytest.raises(xmc.MappingError):
            cache.read(MIB + 8, 1)
        cache.map_ptr(16 * PAGE)
        cache.map_ptr(16 * PAGE + (1 << 16) * 4)
        cache.invalidate()
    assert mem.live == {} and mem.maps == mem.unmaps  # every mapping unmapped exactly once


def test_errors_in_callbacks_become_mapping_errors(xmc: ModuleType, mem: OwnMemory) -> None:
    def broken(first_pfn: int, nr_pages: int, fixed: int | None) -> tuple[int, list[int]]:
        raise OSError("device gone")

    def short(first_pfn: int, nr_pages: int, fixed: int | None) -> tuple[int, list[int]]:
        base, errors = mem.map(first_pfn, nr_pages, fixed)
        mem.unmap(base, nr_pages * PAGE)
        return base, errors[:-1]

    with xmc.MapCache(xmc.CallbackBackend(broken, mem.unmap)) as cache:
        with pytest.raises(xmc.MappingError) as info:
            cache.map_ptr(0)
        assert isinstance(info.value.__cause__, OSError)
        assert cache.stats().entries == 0
    with xmc.MapCache(xmc.CallbackBackend(short, mem.unmap)) as cache:
        with pytest.raises(xmc.MappingError) as info:
            cache.map_ptr(0)
        assert "per-page errors" in str(info.value.__cause__)
    assert mem.live == {}


def test_an_unmap_failure_is_reported_once_and_not_retried(
    xmc: ModuleType, mem: OwnMemory, caplog: pytest.LogCaptureFixture
) -> None:
    cache = xmc.MapCache(mem.backend(), bucket_shift=16)
    cache.map_ptr(0)
    mem.fail_unmap = True
    with caplog.at_level(logging.ERROR, logger="xenmapcache"):
        cache.invalidate()
    assert [r.levelno for r in caplog.records] == [logging.ERROR]
    assert "unmap refused" in caplog.records[0].getMessage()
    assert cache.stats().entries == 0
    cache.close()  # nothing left to unmap: no second attempt
    assert len(mem.live) == 1  # the one the backend refused to unmap
    for address, length in list(mem.live.items()):
        mem.unmap(address, length)


def test_a_forgotten_cache_unmaps_through_its_backend(xmc: ModuleType, mem: OwnMemory) -> None:
    cache = xmc.MapCache(mem.backend(), bucket_shift=12)
    for i in range(10):
        cache.map(i * PAGE, 8, dma=True)  # locked: kept until the cache dies
    del cache
    gc.collect()
    assert mem.live == {}
    assert not _callbacks.backends  # the C core's registry let go of the backend


def test_callbacks_must_be_callable() -> None:
    with pytest.raises(TypeError):
        xenmapcache.CallbackBackend(None, print)  # type: ignore[arg-type]


def test_dummy_entries_never_leak_backend_mappings(xmc: ModuleType, mem: OwnMemory) -> None:
    with xmc.MapCache(mem.backend(), bucket_shift=12, max_size=4 * PAGE, dummy_on_failure=True) as cache:
        for i in range(8):
            cache.map_ptr(MIB + 4 * i * PAGE)  # the hole: dummy memory, one slot
            cache.map_ptr(4 * i * PAGE)  # the same slot again, real memory
        m = cache.map(MIB, 8)  # dummy, then swapped for real memory in place
        cache.replace(MIB, 0, 8)
        m.release()
    assert mem.live == {} and mem.maps == mem.unmaps


# The child scripts below map anonymous memory through ctypes as their backend.
CHILD_PRELUDE = """
import ctypes, mmap, threading, time
import {module} as xmc

libc = ctypes.CDLL(None)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]

def anon_map(nr_pages, fixed):
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | (0x10 if fixed else 0)  # 0x10: MAP_FIXED
    return libc.mmap(fixed, nr_pages * 4096, 3, flags, -1, 0), [0] * nr_pages
"""


def run_child(xmc: ModuleType, body: str) -> list[str]:
    """Run ``body`` after CHILD_PRELUDE in a fresh interpreter (a hang fails, by timeout); its stdout lines."""
    script = CHILD_PRELUDE.format(module=xmc.__name__) + textwrap.dedent(body)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_a_thread_waiting_for_the_cache_lets_python_run(xmc: ModuleType) -> None:
    # A backend callback runs under the cache's mutex and needs the GIL. A
    # call from another thread that needs the mutex meanwhile (here a new
    # thread's first hit, which claims the slot it will count its hits in)
    # must wait for it without holding the GIL (the C core tries first without
    # waiting, and only then releases the GIL to wait): otherwise the callback
    # could never finish and nothing else in the interpreter would run.
    out = run_child(
        xmc,
        """
        entered, go = threading.Event(), threading.Event()

        def map_(first_pfn, nr_pages, fixed):
            if first_pfn == 16 and not entered.is_set():
                entered.set()
                go.wait(60)  # inside the cache's mutex, GIL released while waiting
            return anon_map(nr_pages, fixed)

        cache = xmc.MapCache(xmc.CallbackBackend(map_, lambda a, n: libc.munmap(a, n)), bucket_shift=16)
        cache.map_ptr(0)
        miss = threading.Thread(target=cache.map_ptr, args=(0x10000,))
        miss.start()
        entered.wait(60)
        hit = threading.Thread(target=cache.map_ptr, args=(0x100,))
        hit.start()
        spins, end = 0, time.monotonic() + 0.3
        while time.monotonic() < end:  # this thread keeps running Python
            spins += 1
        assert hit.is_alive(), "the hit did not wait for the mutex"
        go.set()
        miss.join(60)
        hit.join(60)
        assert not miss.is_alive() and not hit.is_alive()
        assert cache.stats().hits >= 1 and spins > 1000
        cache.close()
        print("ok")
        """,
    )
    assert out == ["ok"]


def test_a_hit_does_not_wait_for_the_mutex_a_callback_holds(xmc: ModuleType) -> None:
    # The C core's hit takes no lock (docs/performance.md, "The hit without a
    # lock"): while a miss of another bucket holds the cache's mutex in its
    # backend callback, a thread that has hit this cache before (its first hit
    # claims the slot it counts its hits in) hits the last entry at once,
    # through the builtin map_ptr, keeping the GIL, and every hit is counted.
    if xmc.__name__ != "xenmapcache":
        pytest.skip("the C core's lock-free hit (the reference takes its lock)")
    out = run_child(
        xmc,
        """
        entered, go = threading.Event(), threading.Event()

        def map_(first_pfn, nr_pages, fixed):
            if first_pfn == 16 and not entered.is_set():
                entered.set()
                go.wait(60)  # inside the cache's mutex
            return anon_map(nr_pages, fixed)

        cache = xmc.MapCache(xmc.CallbackBackend(map_, lambda a, n: libc.munmap(a, n)), bucket_shift=16)
        p = cache.map_ptr(0)
        assert cache.map_ptr(0x100) == p + 0x100
        miss = threading.Thread(target=cache.map_ptr, args=(0x10000,))
        miss.start()
        entered.wait(60)
        got = [cache.map_ptr(0x200) for _ in range(1000)]
        assert miss.is_alive(), "the hits waited for the mutex"
        assert got == [p + 0x200] * 1000
        go.set()
        miss.join(60)
        assert not miss.is_alive()
        st = cache.stats()
        assert (st.hits, st.misses) == (1001, 2), st
        cache.close()
        print("ok")
        """,
    )
    assert out == ["ok"]


def test_a_callback_calling_its_own_cache_gets_an_error_not_a_hang(xmc: ModuleType) -> None:
    # map and unmap run under the cache's lock, so a call from them into the
    # same cache would wait for itself. It raises MapCacheError instead, which
    # the callback may catch or let through (then the outer call fails with it
    # as the cause).
    lines = run_child(
        xmc,
        """
        seen, mode = [], ["catch"]

        def call_in(what, fn):
            try:
                fn()
                seen.append(what + ": no error")
            except xmc.MapCacheError as exc:
                seen.append(what + (": refused" if "own backend callbacks" in str(exc) else ": " + str(exc)))
                if mode[0] == "raise":
                    raise

        def map_(first_pfn, nr_pages, fixed):
            call_in("map_ptr", lambda: cache.map_ptr(0))
            call_in("read", lambda: cache.read(0, 8))
            call_in("stats", cache.stats)
            return anon_map(nr_pages, fixed)

        def unmap(address, length):
            call_in("invalidate", cache.invalidate)
            libc.munmap(address, length)

        cache = xmc.MapCache(xmc.CallbackBackend(map_, unmap), bucket_shift=16)
        cache.map_ptr(0x10000)  # the outer call goes on
        mode[0] = "raise"
        try:
            cache.map_ptr(0x20000)
        except xmc.MappingError as exc:
            seen.append("outer: MappingError from " + type(exc.__cause__).__name__)
        mode[0] = "catch"
        cache.invalidate()  # unmaps the entry of 0x10000 through the callback
        print(cache.stats().entries)
        cache.close()
        print("\\n".join(seen))
        """,
    )
    assert lines[0] == "0"
    assert lines[1:] == [
        "map_ptr: refused",
        "read: refused",
        "stats: refused",
        "map_ptr: refused",
        "outer: MappingError from MapCacheError",
        "invalidate: refused",
    ], lines
