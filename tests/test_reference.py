"""The pure-Python reference (``xenmapcache.reference``) stands on its own.

It must import and work where the C extension is missing, export the same
public names as ``xenmapcache``, and clean up after itself like the C core.
The contract tests elsewhere run on it through the ``xmc`` fixture.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
import tracemalloc
from types import ModuleType

import pytest

import xenmapcache
import xenmapcache.cache
import xenmapcache.reference as reference

MIB = 1 << 20

# A meta path finder that makes the compiled core unimportable, as on a machine
# where it was never built.
BLOCK_CORE = textwrap.dedent(
    """
    import importlib.abc
    import sys

    class NoCompiledCore(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "xenmapcache._core":
                raise ImportError("xenmapcache._core is blocked for this test")
            return None

    sys.meta_path.insert(0, NoCompiledCore())
    """
)


def run_without_core(body: str) -> subprocess.CompletedProcess[str]:
    """Run ``body`` in a fresh interpreter in which ``xenmapcache._core`` cannot be imported."""
    script = BLOCK_CORE + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)


def test_reference_works_without_the_compiled_core() -> None:
    result = run_without_core(
        """
        import xenmapcache.reference as ref

        ram = ref.GuestRAM(1 << 22, holes=[(0x10000, 0x12000)])
        with ref.MapCache(ram, bucket_shift=12, max_size=1 << 16) as cache:
            cache.write(0x1FF0, b"x" * 32)                  # spans two buckets
            assert cache.read(0x1FF0, 32) == b"x" * 32
            assert ram.read(0x1FF0, 32) == b"x" * 32
            with cache.map(0x3000, 16, dma=True, tag="disk") as m:
                view = memoryview(m)
                view[:4] = b"data"
                view.release()
                assert cache.ram_addr(m.address + 3) == 0x3003
            try:
                cache.read(0x10000, 1)
            except ref.MappingError:
                pass
            else:
                raise AssertionError("a hole was readable")
        assert ram.read(0x3000, 4) == b"data"
        assert "xenmapcache._core" not in sys.modules
        print("reference ok")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "reference ok"


def test_the_blocker_really_blocks_the_compiled_core() -> None:
    # The control for the test above: the same interpreter cannot build a C-backed cache.
    result = run_without_core(
        """
        import xenmapcache

        ram = xenmapcache.GuestRAM(1 << 22)
        try:
            xenmapcache.MapCache(ram)
        except ImportError as exc:
            print("blocked:", exc)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("blocked: xenmapcache's C core is not built")


def test_same_public_names_as_the_package() -> None:
    assert sorted(reference.__all__) == sorted(xenmapcache.__all__)
    for name in xenmapcache.__all__:
        if name == "MapCache":
            continue
        # The very same classes, so `except xenmapcache.MappingError` catches both.
        assert getattr(reference, name) is getattr(xenmapcache, name), name
    assert issubclass(reference.MapCache, xenmapcache.cache.MapCache)
    assert reference.MapCache._Core is reference._PyCore
    assert xenmapcache.MapCache._Core is xenmapcache._native.NativeCore


def test_reference_maps_real_host_memory_shared_with_guest_ram() -> None:
    ram = reference.GuestRAM(1 << 20)
    with reference.MapCache(ram, bucket_shift=12, max_size=1 << 16) as cache:
        ram.write(0x5000, b"from the guest")
        with cache.map(0x5000, 14) as m:
            view = memoryview(m)
            assert (view.format, view.ndim, view.readonly) == ("B", 1, False)
            assert bytes(view) == b"from the guest"
            view[:4] = b"FROM"
            view.release()
        # The entry is a MAP_SHARED mapping of the memfd: the write is in guest RAM.
        assert ram.read(0x5000, 14) == b"FROM the guest"
        assert _memfd_mappings() >= 1
    ram.close()


def _memfd_mappings() -> int:
    with open("/proc/self/maps") as maps:
        return sum("xenmapcache-guest-ram" in line for line in maps)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _use_and_forget(xmc: ModuleType, ram: object) -> None:
    cache = xmc.MapCache(ram, bucket_shift=12, max_size=1 << 16, dummy_on_failure=True)
    for paddr in range(0, 1 << 18, 0x3000):
        cache.map_ptr(paddr, 0x1800)
    locked = [cache.map(paddr, 100, dma=True) for paddr in range(0, 0x8000, 0x1000)]
    cache.read(32 << 20, 16)  # a hole: dummy memory
    assert cache.stats().entries > 1
    assert _memfd_mappings() > 0
    del locked, cache


def test_a_forgotten_cache_is_cleaned_up_at_gc(xmc: ModuleType, ram: object) -> None:
    xmc.MapCache(ram).close()  # warm-up: the C core keeps one handle on the RAM itself
    gc.collect()
    maps, fds = _memfd_mappings(), _open_fds()
    _use_and_forget(xmc, ram)
    gc.collect()
    assert _memfd_mappings() == maps
    assert _open_fds() == fds


def test_a_closed_reference_core_refuses_work() -> None:
    ram = reference.GuestRAM(1 << 20)
    core = reference._PyCore(ram, 12, 1 << 16, None, False, 10)
    assert core.map(0x1000, 0, 0, 0)
    core.close()
    core.close()  # a second close does nothing
    with pytest.raises(reference.MapCacheError):
        core.map(0x1000, 0, 0, 0)
    ram.close()


def test_reference_ram_pages_agree_with_page_error() -> None:
    # The reference maps runs of RAM computed from the holes; they must be
    # exactly the pages GuestRAM.page_error calls RAM (odd, overlapping holes).
    holes = [(0x3000, 0x3001), (0x5800, 0x7000), (0x6000, 0x9000), (0x20000, 0x21000)]
    ram = reference.GuestRAM(0x40000, holes=holes)
    backend = reference._RamBackend(ram)
    try:
        for first in range(0, 0x48, 3):
            for n in (1, 2, 5, 16, 40):
                runs = backend.ram_runs(first, n)
                from_runs = {first + p for i, j in runs for p in range(i, j)}
                from_errors = {p for p in range(first, first + n) if ram.page_error(p) == 0}
                assert from_runs == from_errors, (first, n, runs)
    finally:
        backend.close()
        ram.close()


def test_a_locked_mapping_costs_the_reference_core_under_200_bytes() -> None:
    # 317 B each, a million locked mappings 317 MB, before the records lost
    # their lists and dicts of their own (the C core: 56 B).
    n = 20000
    with reference.GuestRAM(MIB) as ram, reference.MapCache(ram) as cache:
        cache.unlock(cache.map_ptr(0, 8, lock=True))  # the entry is mapped: only records grow
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for i in range(n):
                cache.map_ptr(i * 8 % MIB, 8, lock=True)
            per_lock = (tracemalloc.get_traced_memory()[0] - before) / n
        finally:
            tracemalloc.stop()
        assert cache.stats().locked == n
    assert per_lock < 200, per_lock


def _header_defines(prefix: str) -> dict[str, int]:
    """``#define <prefix>NAME value`` of csrc/xenmapcache.h, as {NAME: value}."""
    import re

    from ctools import CSRC

    text = (CSRC / "xenmapcache.h").read_text()
    return {m[1]: int(m[2]) for m in re.finditer(rf"^#define {prefix}(\w+) (-?\d+)\b", text, re.M)}


def test_the_python_tables_are_the_c_headers() -> None:
    # What Python knows by number (events, status codes, flags) is the
    # header's, read from the header itself: no copy can drift.
    import xenmapcache._mapping as mapping
    import xenmapcache.cache
    import xenmapcache.reference as ref
    from xenmapcache import errors, trace

    defines = _header_defines("XMC_")
    events = _header_defines("XMC_EV_")
    assert trace.EVENT_NAMES == {number: name.lower() for name, number in events.items()}
    statuses = {n: v for n, v in defines.items() if n == "OK" or (n.startswith("E") and not n.startswith("EV_"))}
    for name, code in statuses.items():
        if hasattr(ref, name):  # the codes the reference can return
            assert getattr(ref, name) == code, name
    assert {"OK", "ENOMEM", "EINVAL", "EMAP", "ENOENT", "EOVERFLOW", "ESYS", "EFORKED", "EGRANT"} <= {
        n for n in statuses if hasattr(ref, n)
    }
    assert set(errors.EXCEPTION_OF) <= set(statuses.values())
    assert set(ref._MESSAGES) <= set(statuses.values())
    assert (mapping.LOCK, mapping.DMA, trace.XMC_DMA) == (defines["LOCK"], defines["DMA"], defines["DMA"])
    assert xenmapcache.cache.SG_MAX == defines["SG_MAX"]
