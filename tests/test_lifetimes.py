"""Buffers never outlive mappings; nothing leaks; threads do not corrupt the cache."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import hashlib
import inspect
import os
import random
import struct
import threading
import time
import weakref
from types import ModuleType
from typing import Any

import pytest
from ctools import Flaky
from threads import run_threads

PAGE = 4096
MIB = 1 << 20


# -- buffer safety ------------------------------------------------------------------


def test_memoryview_shape(cache: Any) -> None:
    with cache.map(0x100, 300) as m:
        with memoryview(m) as view:
            assert (view.format, view.ndim, len(view), view.readonly, view.itemsize) == ("B", 1, 300, False, 1)


def test_every_export_request_gets_the_bytes_of_the_mapping(cache: Any) -> None:
    # Whatever a consumer asks for, 1-D unsigned bytes of the mapping, writable;
    # the binding fills its exports itself, so there every request flag is tried.
    with cache.map(0x100, 300) as m, cache.map_sg([(0x2000, 40)]) as g:
        for x in (m, g[0]):
            n = x.size
            (ctypes.c_char * n).from_buffer(x)[n - 1] = b"\x09"  # a writable simple buffer
            assert struct.unpack_from("B", x, n - 1) == (9,) and cache.read(x.paddr + n - 1, 1) == b"\x09"
            assert hashlib.sha256(x).digest() == hashlib.sha256(cache.read(x.paddr, n)).digest()
            if type(x).__module__ != "xenmapcache._core":
                continue
            for flags in set(inspect.BufferFlags) - {inspect.BufferFlags.READ, inspect.BufferFlags.WRITE}:
                with x.__buffer__(flags) as view:
                    assert (view.format, view.ndim, view.shape, view.strides, view.readonly) == ("B", 1, (n,), (1,), False)
    assert m.released and g.released  # every export was given back: the releases went through


def test_release_refuses_while_a_view_is_alive(cache: Any) -> None:
    m = cache.map(0, 64)
    view = memoryview(m)
    with pytest.raises(BufferError):
        m.release()
    assert cache.stats().locked == 1  # still locked, still mapped
    view[0] = 7
    view.release()
    m.release()
    assert cache.stats().locked == 0


def test_slices_of_a_view_count_as_exports(cache: Any) -> None:
    m = cache.map(0, 64)
    view = memoryview(m)
    part = view[8:16]
    view.release()
    with pytest.raises(BufferError):
        m.release()  # the slice still holds the buffer
    part.release()
    m.release()


def test_several_views_are_counted_exactly(cache: Any) -> None:
    m = cache.map(0, 64)
    views = [memoryview(m) for _ in range(3)]
    for v in views[:2]:
        v.release()
    with pytest.raises(BufferError):
        m.release()
    views[2].release()
    m.release()
    m.release()  # a second release of the same object does nothing


def test_close_refuses_while_a_view_is_alive(xmc: ModuleType, ram: Any) -> None:
    cache = xmc.MapCache(ram)
    m = cache.map(0x10, 4)
    view = memoryview(m)
    with pytest.raises(BufferError):
        cache.close()
    view[:] = b"live"  # still mapped
    assert cache.read(0x10, 4) == b"live"
    view.release()
    cache.close()


@pytest.mark.parametrize("then", ["close", "collect"])
@pytest.mark.parametrize("where", ["trace", "backend"])
def test_a_close_refused_from_inside_a_callback_leaves_the_cache_fully_open(
    xmc: ModuleType, where: str, then: str
) -> None:
    # The refusal came after the cache had marked itself and its Mappings
    # closed: every Mapping read as released, and a second close did nothing.
    box: list[Any] = []
    refused: list[str] = []  # not the exception: its traceback would hold the cache

    def close_now(*event: object) -> None:
        if box and not refused:
            try:
                box[0].close()
            except xmc.MapCacheError as exc:
                refused.append(str(exc))

    ram = Flaky()
    if where == "trace":
        cache = ram.cache(xmc, trace=close_now)
    else:
        ram.hook = close_now
        cache = ram.cache(xmc)
    m = cache.map(0, 8)
    box.append(cache)
    cache.map_ptr(1 << 16)  # a miss: the backend maps, and the trace hook hears of it
    assert len(refused) == 1
    assert not cache.closed and not m.released and cache.stats().locked == 1
    with memoryview(m) as view:
        view[:4] = b"open"
    assert cache.read(0, 4) == b"open"
    box.clear()
    if then == "close":
        cache.close()  # a close from outside works, and unmaps everything
        assert cache.closed and m.released
    else:  # nothing detached: the garbage collector still cleans up
        m.release()
        del cache, m
        gc.collect()
    assert ram.live == {}


def test_unlock_by_address_never_pulls_a_mapping_from_under_a_view(cache: Any) -> None:
    m = cache.map(0x10, 4)
    view = memoryview(m)
    with pytest.raises(BufferError):
        cache.unlock(m.address)
    view.release()
    cache.unlock(m.address)
    assert m.released


def test_unlock_by_address_never_matches_a_mapping_still_in_flight(xmc: ModuleType) -> None:
    # While a map is in flight its Mapping is registered with no address yet:
    # an unlock(0) meanwhile released it, and the lock it then took leaked.
    entered, go = threading.Event(), threading.Event()

    def translate(paddr: int, size: int) -> int:  # runs without the cache's lock
        entered.set()
        assert go.wait(30)
        return paddr - MIB

    with xmc.GuestRAM(2 * MIB, holes=[(MIB, 2 * MIB)]) as ram, xmc.MapCache(ram, translate=translate) as cache:
        got: list[Any] = []
        thread = threading.Thread(target=lambda: got.append(cache.map(MIB, 8)))
        thread.start()
        assert entered.wait(30)
        try:
            with pytest.raises(xmc.UnknownMapping):
                cache.unlock(0)
        finally:
            go.set()
            thread.join()
        (m,) = got
        assert not m.released and m.paddr == MIB and cache.stats().locked == 1
        with memoryview(m) as view:
            view[0] = 7
        m.release()
        assert cache.stats().locked == 0 and ram.read(0, 1) == b"\x07"


def test_unlock_by_address_never_matches_a_mapping_whose_backend_is_slow(xmc: ModuleType) -> None:
    # The window the hostile user found: a slow backend map.  Until the map's
    # Mapping had its address, another thread's unlock(0) matched it: the map
    # returned a Mapping already released and its lock leaked (the C builtins
    # left 5 locks in 60 maps).  Each map here is a miss.
    flaky = Flaky()
    flaky.hook = lambda: time.sleep(0.002)
    stop = threading.Event()
    with flaky.cache(xmc) as cache:

        def unlocker() -> None:
            while not stop.is_set():
                with contextlib.suppress(xmc.UnknownMapping):
                    cache.unlock(0)

        thread = threading.Thread(target=unlocker)
        thread.start()
        released = 0
        try:
            for i in range(200):
                m = cache.map((i % 32 + 1) << 16, 8)
                released += m.released
                m.release()
                cache.invalidate()
        finally:
            stop.set()
            thread.join()
        assert (released, cache.stats().locked) == (0, 0)
    assert flaky.live == {}


def test_the_attributes_of_a_mapping_are_read_only(xmc: ModuleType, ram: Any) -> None:
    # A size set by the user made memoryview(m) reach past the mapping: SIGSEGV.
    with xmc.MapCache(ram) as cache, cache.map(0x1000, 8, tag="t") as m:
        for name, value in (("size", 1 << 34), ("address", 0), ("paddr", 0), ("dma", True), ("tag", "u")):
            with pytest.raises(AttributeError):
                setattr(m, name, value)
        assert (m.size, m.paddr, m.dma, m.tag) == (8, 0x1000, False, "t")
        with memoryview(m) as view:
            assert len(view) == 8


def test_mappings_and_groups_take_weak_references(xmc: ModuleType, ram: Any) -> None:
    with xmc.MapCache(ram) as cache:
        m, g = cache.map(0, 8), cache.map_sg([(0x1000, 8), (0x2000, 8)])
        refs = [weakref.ref(m), weakref.ref(g), weakref.ref(g[0])]
        assert [r() for r in refs] == [m, g, g[0]]
        m.release()
        g.release()
        del m, g
        gc.collect()
        assert [r() for r in refs] == [None, None, None]


def test_no_view_of_a_released_mapping(cache: Any) -> None:
    m = cache.map(0, 8)
    m.release()
    with pytest.raises(BufferError):
        memoryview(m)


def test_context_managers(xmc: ModuleType, ram: Any) -> None:
    with xmc.MapCache(ram) as cache:
        with cache.map(0, 8, tag="t") as m:
            assert cache.locked()[0].tag == "t"
        assert m.released and cache.locked() == []
    assert cache.closed


# -- leaks ---------------------------------------------------------------------------


def mapping_count() -> int:
    with open("/proc/self/maps") as maps:
        return sum(1 for _ in maps)


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def churn(xmc: ModuleType, close: bool, caches: int = 250) -> None:
    ram = xmc.GuestRAM(4 * MIB, holes=[(MIB, MIB + PAGE)])
    for i in range(caches):
        cache = xmc.MapCache(ram, bucket_shift=12 + i % 4)
        cache.map(i * PAGE, 100, dma=True)
        cache.map_ptr(MIB - PAGE)  # its bucket may reach into the hole: PROT_NONE pages
        cache.read(0, 3 * PAGE)
        if close:
            cache.close()
    ram.close()


@pytest.mark.parametrize("close", [True, False], ids=["closed", "forgotten"])
def test_caches_leave_no_mapping_or_fd_behind(xmc: ModuleType, close: bool) -> None:
    churn(xmc, close, 50)  # warm up imports and allocator pools
    gc.collect()
    maps, fds = mapping_count(), fd_count()
    for _ in range(4):  # 1,000 caches created, used and closed (or forgotten)
        churn(xmc, close)
    gc.collect()
    assert fd_count() == fds
    assert mapping_count() <= maps + 2  # the allocator may keep an arena


def test_caches_over_one_guest_ram_share_its_descriptors(xmc: ModuleType) -> None:
    # The reference took an fd per cache (3,000 caches: EMFILE); the C core a few in all.
    with xmc.GuestRAM(MIB) as ram:
        first = xmc.MapCache(ram)
        fds = fd_count()
        caches = [xmc.MapCache(ram) for _ in range(300)]
        assert fd_count() <= fds + 2
        ram.close()  # the caches keep the memory
        for i, cache in enumerate(caches):
            cache.write(i % 256 * PAGE, b"kept")
        assert all(cache.read(i % 256 * PAGE, 4) == b"kept" for i, cache in enumerate(caches))
        for cache in (first, *caches):
            cache.close()
    assert fd_count() < fds


def test_guest_ram_outlives_its_handle_while_a_cache_uses_it(xmc: ModuleType) -> None:
    ram = xmc.GuestRAM(MIB)
    cache = xmc.MapCache(ram)
    ram.write(0, b"still here")
    ram.close()
    assert cache.read(0, 10) == b"still here"
    cache.close()


# -- threads ---------------------------------------------------------------------------


def test_threads_with_a_concurrent_invalidator(xmc: ModuleType) -> None:
    ram = xmc.GuestRAM(8 * MIB)
    cache = xmc.MapCache(ram, bucket_shift=12, max_size=8 * PAGE)  # heavy collisions

    def worker(n: int) -> None:
        rng = random.Random(n)
        for i in range(300):
            base = (n * 64 + rng.randrange(64)) * PAGE + 16
            pattern = bytes([n, i % 251]) * 16
            cache.write(base, pattern)
            with cache.map(base, len(pattern), dma=bool(i % 2), tag=(n, i)) as m:
                with memoryview(m) as view:
                    assert bytes(view) == pattern
                    view[:2] = b"ok"
                assert cache.ram_addr(m.address) == base
            assert cache.read(base, 2) == b"ok"
            p = cache.map_ptr(base, 16, lock=True)
            assert cache.ram_addr(p + 3) == base + 3
            cache.unlock(p)

    def invalidator(stop: threading.Event) -> None:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            while not stop.is_set():
                cache.invalidate()

    run_threads(worker, 8, background=invalidator)
    st = cache.stats()
    assert (st.locked, st.dma_locked) == (0, 0) and cache.locked() == []
    assert st.invalidations > 0
    cache.close()
    ram.close()


def test_close_while_other_threads_are_inside_calls(xmc: ModuleType) -> None:
    ram = xmc.GuestRAM(4 * MIB)
    for _ in range(20):
        cache = xmc.MapCache(ram, bucket_shift=12)
        outcomes: list[str] = []

        def reader(_: int) -> None:
            for i in range(2000):
                try:
                    cache.read((i % 512) * PAGE, 64)
                    cache.map_ptr((i % 512) * PAGE + 8)
                except xmc.MapCacheError:
                    outcomes.append("closed")
                    return
            outcomes.append("done")

        run_threads(reader, 3, meanwhile=cache.close)
        assert len(outcomes) == 3
    ram.close()
