"""Grant rules (``MapCache(..., grants=True)``) on both implementations.

Over ``GuestRAM`` and over a ``CallbackBackend`` that counts what it maps and
unmaps, so "unmapped as soon as its last lock goes" is seen from the backend.
"""

from __future__ import annotations

import mmap
import os
import warnings
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest
from ctools import MAP_FAILED, MAP_FIXED, libc

PAGE = 4096
MIB = 1 << 20



class Counting:
    """Guest memory in a memfd, mapped by the callbacks; every map and unmap counted."""

    def __init__(self, size: int) -> None:
        self.fd = os.memfd_create("grant-ram", os.MFD_CLOEXEC)
        os.ftruncate(self.fd, size)
        self.size = size
        self.live: dict[int, int] = {}
        self.maps = self.unmaps = self.fixed = 0
        self.fail_unmap = False

    def map(self, first_pfn: int, nr_pages: int, fixed: int | None) -> tuple[int, list[int]]:
        if first_pfn + nr_pages > self.size // PAGE:
            raise OSError("past the end")
        flags = mmap.MAP_SHARED | (MAP_FIXED if fixed else 0)
        base = libc.mmap(fixed, nr_pages * PAGE, mmap.PROT_READ | mmap.PROT_WRITE, flags, self.fd, first_pfn * PAGE)
        assert base not in (None, MAP_FAILED)
        self.maps += 1
        self.fixed += fixed is not None
        self.live[base] = nr_pages * PAGE
        return base, [0] * nr_pages

    def unmap(self, address: int, length: int) -> None:
        if self.fail_unmap:
            self.fail_unmap = False
            raise RuntimeError("grant unmap refused")
        assert self.live.pop(address) == length
        self.unmaps += 1
        assert libc.munmap(address, length) == 0

    def close(self) -> None:
        os.close(self.fd)


@pytest.fixture
def mem() -> Iterator[Counting]:
    m = Counting(4 * MIB)
    yield m
    m.close()


@pytest.fixture(params=["ram", "callbacks"])
def grant_cache(request: pytest.FixtureRequest, xmc: ModuleType, mem: Counting) -> Iterator[Any]:
    """A grant cache over GuestRAM or over the counting callbacks."""
    if request.param == "ram":
        backend: Any = xmc.GuestRAM(4 * MIB)
        backend.write(0, bytes(range(256)) * (4 * MIB // 256))
    else:
        backend = xmc.CallbackBackend(mem.map, mem.unmap)
        os.pwrite(mem.fd, bytes(range(256)) * (4 * MIB // 256), 0)
    c = xmc.MapCache(backend, bucket_shift=12, max_size=64 * 1024, grants=True)
    yield c
    c.close()
    if request.param == "ram":
        backend.close()


def test_grants_need_page_buckets(xmc: ModuleType, ram: Any) -> None:
    with pytest.raises(xmc.InvalidAddress, match="bucket_shift=12"):
        xmc.MapCache(ram, grants=True)
    with xmc.MapCache(ram, bucket_shift=12, grants=True) as c:
        assert c.grants
    with xmc.MapCache(ram) as c:
        assert not c.grants


def test_unlocked_requests_fail_and_map_nothing(grant_cache: Any, xmc: ModuleType) -> None:
    c = grant_cache
    for call in (
        lambda: c.map_ptr(0x5000),
        lambda: c.map_ptr(0x5000, 16),
        lambda: c.read(0x5000, 8),
        lambda: c.write(0x5000, b"x"),
    ):
        with pytest.raises(xmc.MapCacheError, match="grant cache"):
            call()
    st = c.stats()
    assert (st.entries, st.misses, st.hits, st.mapped_bytes) == (0, 0, 0, 0)
    with c.map(0x5000, 8) as m:  # locked: fine; unlocked still refused beside it
        with pytest.raises(xmc.MapCacheError, match="grant cache"):
            c.map_ptr(0x5000)
        assert bytes(memoryview(m)) == bytes(range(0, 8))


def test_entry_unmapped_as_soon_as_its_last_lock_goes(grant_cache: Any, mem: Counting) -> None:
    c = grant_cache
    a = c.map(0x7010, 32, dma=True, tag="ring")
    b = c.map(0x7020, 8)  # the same page: the same locked entry
    assert b.address == a.address + 0x10
    st = c.stats()
    assert (st.entries, st.misses, st.hits, st.mapped_bytes) == (1, 1, 1, PAGE)
    a.release()
    assert c.stats().entries == 1
    assert c.ram_addr(b.address) == 0x7020
    b.release()
    st = c.stats()
    assert (st.entries, st.mapped_bytes, st.locked) == (0, 0, 0)
    with pytest.raises(LookupError):
        c.ram_addr(b.address)
    # Not kept for hits: the same page maps anew.
    with c.map(0x7010, 32):
        assert c.stats().misses == 2
    assert c.stats().entries == 0


def test_the_backend_sees_each_unmap_at_the_last_unlock(xmc: ModuleType, mem: Counting) -> None:
    c = xmc.MapCache(xmc.CallbackBackend(mem.map, mem.unmap), bucket_shift=12, max_size=64 * 1024, grants=True)
    first = c.map_ptr(3 * PAGE, lock=True)
    c.map_ptr(3 * PAGE, lock=True)
    other = c.map_ptr(19 * PAGE, lock=True)  # same slot (16 slots): its own entry, no remap
    assert (mem.maps, mem.fixed, c.stats().remaps) == (2, 0, 0)
    c.unlock(first)
    assert mem.unmaps == 0
    c.unlock(first)
    assert mem.unmaps == 1 and first not in mem.live
    c.unlock(other)
    assert mem.unmaps == 2 and not mem.live
    c.close()


def test_a_failed_grant_unmap_is_reported_once_and_the_lock_is_gone(xmc: ModuleType, mem: Counting) -> None:
    c = xmc.MapCache(xmc.CallbackBackend(mem.map, mem.unmap), bucket_shift=12, max_size=64 * 1024, grants=True)
    m = c.map(0x3000, 0)
    p = c.map_ptr(0x4000, lock=True)
    mem.fail_unmap = True
    with pytest.raises(xmc.MapCacheError) as info:
        m.release()
    assert isinstance(info.value.__cause__, RuntimeError)
    mem.fail_unmap = True
    with pytest.raises(xmc.MapCacheError) as info:
        c.unlock(p)
    assert isinstance(info.value.__cause__, RuntimeError)  # the backend's error, not "unknown"
    assert not isinstance(info.value, xmc.UnknownMapping)
    assert (c.stats().locked, c.stats().entries) == (0, 0)
    with pytest.raises(xmc.UnknownMapping):  # gone, never retried
        c.unlock(p)
    m.release()  # a second release does nothing
    c.close()
    for address, length in mem.live.items():  # what the refused unmaps left
        libc.munmap(address, length)


def test_invalidate_warns_about_dma_in_flight(grant_cache: Any, xmc: ModuleType) -> None:
    c = grant_cache
    dev = c.map(0x1000, 0, tag="rom")
    dma = c.map(0x2000, 64, dma=True, tag="virtio ring")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        in_flight = c.invalidate()
    assert [lm.tag for lm in in_flight] == ["virtio ring"]
    assert [w.category for w in caught] == [xmc.DMAMappingWarning]
    assert bytes(memoryview(dma))[:4] == bytes(range(0, 4))
    assert c.stats().entries == 2  # every grant entry is locked: none dropped
    dma.release()
    dev.release()
    assert c.stats().entries == 0


def test_replace_is_refused(grant_cache: Any, xmc: ModuleType) -> None:
    c = grant_cache
    with c.map(0x3000, 0) as m:
        with pytest.raises(xmc.MapCacheError, match="grant cache"):
            c.replace(0x3000, 0x9000, 0)
        assert c.ram_addr(m.address) == 0x3000


def test_a_failed_map_leaves_no_entry(xmc: ModuleType) -> None:
    with xmc.GuestRAM(MIB, holes=[(0x9000, 0xA000)]) as ram, xmc.MapCache(ram, bucket_shift=12, grants=True) as c:
        with pytest.raises(xmc.MappingError):
            c.map(0x9000, 16)
        with pytest.raises(xmc.MappingError):
            c.map(0x8000, 2 * PAGE)
        assert c.stats().entries == 0
        with c.map(0x8000, PAGE) as m:
            assert m.size == PAGE
