"""Bugs found by comparing the C core with the reference, kept fixed.

Scenarios whose failure was a segmentation fault run in a child interpreter,
so that a regression fails its test instead of killing the whole run.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from types import ModuleType

import pytest
from threads import run_threads


def run_scenario(xmc: ModuleType, body: str) -> str:
    """Run ``body`` with ``xmc`` imported in a fresh interpreter; its stdout."""
    script = f"import {xmc.__name__} as xmc\n" + textwrap.dedent(body)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr}"
    return result.stdout


def test_the_last_page_of_the_address_space_is_a_mapping_error(xmc: ModuleType) -> None:
    # ram.c rejected the last page of 2**64 as an invalid range (off by one):
    # an address inside 2**64 that is not RAM is a MappingError, and in dummy
    # mode it gets dummy memory like any other.
    out = run_scenario(
        xmc,
        """
        ram = xmc.GuestRAM(1 << 20)
        top = 2**64 - 4096
        with xmc.MapCache(ram, bucket_shift=12, max_size=1 << 16) as cache:
            for call in (lambda: cache.read(top, 4096), lambda: cache.map_ptr(2**64 - 1), lambda: cache.map(top, 16)):
                try:
                    call()
                except xmc.MappingError:
                    print("MappingError")
        with xmc.MapCache(ram, bucket_shift=12, max_size=1 << 16, dummy_on_failure=True) as cache:
            cache.write(top, b"dummy")
            print(cache.read(top, 5).decode())
        """,
    )
    assert out.split() == ["MappingError"] * 3 + ["dummy"]


def test_replace_past_the_top_of_the_address_space_leaves_the_entry_alone(xmc: ModuleType) -> None:
    # The entry keeps its size (two pages here) when replaced; at the top of
    # 2**64 it did not fit, the backend refused, and the locked entry was
    # blanked to no-access memory under a live Mapping: a crash on next use.
    out = run_scenario(
        xmc,
        """
        ram = xmc.GuestRAM(1 << 20)
        ram.write(0x800, b"kept")
        with xmc.MapCache(ram, bucket_shift=12, max_size=1 << 16) as cache:
            m = cache.map(0x800, 0x1000)
            try:
                cache.replace(0x800, 2**64 - 0x1000, 0x1000)
            except xmc.InvalidAddress:
                print("InvalidAddress")
            view = memoryview(m)
            print(bytes(view[:4]).decode(), hex(cache.ram_addr(m.address)))
            view.release()
            m.release()
        """,
    )
    assert out.split() == ["InvalidAddress", "kept", "0x800"]


def test_a_failed_replace_of_a_dummy_entry_keeps_it_accessible(xmc: ModuleType) -> None:
    # A failed replace put the entry back on its old guest pages, but a dummy
    # entry stands for pages that cannot be mapped: its Mapping then pointed
    # at no-access memory.  It gets anonymous memory again instead.
    out = run_scenario(
        xmc,
        """
        ram = xmc.GuestRAM(1 << 20, holes=[(0x10000, 0x20000)])
        with xmc.MapCache(ram, bucket_shift=12, max_size=1 << 16, dummy_on_failure=True) as cache:
            m = cache.map(0x10000, 0x100)  # a hole: dummy memory
            try:
                cache.replace(0x10000, 0x18000, 0x100)  # still a hole
            except xmc.MappingError:
                print("MappingError")
            view = memoryview(m)
            view[0] = 7
            print(view[0], hex(cache.ram_addr(m.address)))
            view.release()
            m.release()
            print(hex(cache.replace(0x10000, 0x1000, 0x100) - m.address), cache.read(0x1000, 1) == ram.read(0x1000, 1))
        """,
    )
    assert out.split() == ["MappingError", "7", "0x10000", "0x0", "True"]


def test_reads_and_writes_are_not_limited_by_a_max_size_below_the_bucket(xmc: ModuleType) -> None:
    # Copies went through map() in chunks of up to a bucket, which map()
    # refuses above max_size: a 4097-byte read of an 8 KiB-bucket cache with
    # max_size 4096 failed with InvalidAddress.  max_size bounds one mapping
    # request, not cache.read/cache.write, which may span anything.
    ram = xmc.GuestRAM(1 << 20)
    with xmc.MapCache(ram, bucket_shift=13, max_size=4096) as cache:
        data = bytes(range(256)) * 40  # 10 KiB: more than max_size and a bucket
        cache.write(0x1F00, data)
        assert cache.read(0x1F00, len(data)) == data
        assert ram.read(0x1F00, len(data)) == data
        with pytest.raises(xmc.InvalidAddress):
            cache.map(0, 4097)  # a mapping request is still bounded
    ram.close()


def test_a_failed_write_kept_in_a_reference_cycle_does_not_crash_the_gc(xmc: ModuleType) -> None:
    # The C-backed write kept a cffi export of the caller's buffer alive in
    # its frame when it raised; an exception held in a reference cycle then
    # reached the GC with the export, CPython's tp_clear of the memoryview
    # ignored it and the later release dereferenced NULL (SIGSEGV).
    out = run_scenario(
        xmc,
        """
        import gc

        ram = xmc.GuestRAM(1 << 20, holes=[(0x2000, 0x3000)])
        cache = xmc.MapCache(ram, bucket_shift=12, max_size=1 << 16)

        def fail_and_keep():
            try:
                cache.write(0x2000, bytes(4096))
            except xmc.MappingError as exc:
                kept = exc  # this frame is in exc's traceback: a cycle
                return kept

        for _ in range(3):
            error = fail_and_keep()
            del error
            gc.collect()
        print("survived")
        """,
    )
    assert out.split() == ["survived"]


def test_replace_never_moves_a_locked_mapping_onto_pages_that_cannot_be_mapped(xmc: ModuleType) -> None:
    # replace checked only the pages of the range it was asked for; another
    # locked mapping of the same entry could land on a hole (no access), and
    # the next touch of its memoryview was a segmentation fault.  Now such a
    # replace fails with MappingError and leaves the entry where it was; one
    # that keeps every locked mapping on RAM still succeeds.
    out = run_scenario(
        xmc,
        """
        ram = xmc.GuestRAM(1 << 20, holes=[(0x10000, 0x11000)])
        ram.write(0x4000, b"old")
        ram.write(0x12000, b"new")
        with xmc.MapCache(ram, bucket_shift=14, max_size=1 << 16) as cache:
            m = cache.map(0x4000, 16)                  # page 0 of bucket 1
            try:
                cache.replace(0x7000, 0x13000, 16)      # bucket 4: its page 0 is a hole
            except xmc.MappingError:
                print("MappingError")
            with memoryview(m) as view:
                print(bytes(view[:3]).decode(), hex(m.paddr))
            cache.replace(0x7000, 0x3000, 16)          # bucket 0: all RAM
            with memoryview(m) as view:
                print(hex(m.paddr), bytes(view[:1]) == ram.read(0, 1))
            m.release()
        """,
    )
    assert out.split() == ["MappingError", "old", "0x4000", "0x0", "True"]


def test_threads_each_get_their_own_addresses(xmc: ModuleType) -> None:
    # The C-backed core kept one out-parameter buffer per cache; cffi drops
    # the GIL during the call, so a thread could return another thread's
    # host address: a Mapping pointing at someone else's memory, an unlock
    # that failed, a lock that leaked.  Found by a threaded run of the
    # reference and the C core side by side.
    
    ram = xmc.GuestRAM(1 << 23)
    cache = xmc.MapCache(ram, bucket_shift=12, max_size=1 << 16)
    wrong: list[str] = []

    def worker(n: int) -> None:
        try:
            work(n)
        except Exception as exc:  # reported by the main thread
            wrong.append(f"thread {n}: {exc!r}")

    def work(n: int) -> None:
        base = n << 20
        for i in range(2000):
            paddr = base + (i * 4099) % (1 << 20)
            with cache.map(paddr, 16, tag=n) as m:
                got = cache.ram_addr(m.address)
                if got != paddr:
                    wrong.append(f"thread {n}: {paddr:#x} came back as {got:#x}")
            address = cache.map_ptr(paddr, 8, lock=True)
            try:
                cache.unlock(address)
            except xmc.UnknownMapping:
                wrong.append(f"thread {n}: lost the lock of {paddr:#x}")

    run_threads(worker, 8)
    assert wrong == []
    assert cache.stats().locked == 0
    cache.close()
    ram.close()


def test_a_failed_backend_map_in_replace_keeps_a_locked_mapping_usable(xmc: ModuleType) -> None:
    # When the backend's map at the fixed address failed outright, replace
    # never put the old pages back and left the locked entry no-access under
    # a live memoryview: the next access was a segmentation fault.
    out = run_scenario(
        xmc,
        """
        import ctypes, os
        fd = os.memfd_create("guest")
        os.ftruncate(fd, 1 << 20)
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        refuse = set()

        def map_pages(pfn, n, fixed):
            if pfn in refuse:
                raise OSError("refused")
            return libc.mmap(fixed or None, n * 4096, 3, 0x01 | (0x10 if fixed else 0), fd, pfn * 4096), [0] * n

        cache = xmc.MapCache(xmc.CallbackBackend(map_pages, lambda a, n: libc.munmap(a, n)), bucket_shift=12)
        m = cache.map(0x1000, 16)
        view = memoryview(m)
        view[0] = 7
        refuse.add(5)
        try:
            cache.replace(0x1000, 0x5000, 16)
        except xmc.MappingError:
            print("MappingError")
        print(view[0], cache.ram_addr(m.address))
        view[1] = 8  # still writable
        view.release()
        m.release()
        cache.close()
        """,
    )
    assert out.split() == ["MappingError", "7", str(0x1000)]


def test_a_hole_reaching_the_top_of_the_address_space_is_a_hole(xmc: ModuleType) -> None:
    # ram.c rounded the hole's end up to a page and overflowed past 2**64, so
    # the hole vanished and the pages inside it were mapped read/write.
    out = run_scenario(
        xmc,
        """
        ram = xmc.GuestRAM(1 << 22, holes=[(0x100000, 2**64 - 1)])
        with xmc.MapCache(ram, bucket_shift=12) as cache:
            for call in (lambda: cache.map_ptr(0x200000), lambda: cache.read(0x200000, 1)):
                try:
                    call()
                except xmc.MappingError:
                    print("MappingError")
            print(cache.read(0xFF000, 1) == bytes(1))
        """,
    )
    assert out.split() == ["MappingError", "MappingError", "True"]
