"""One test per pitfall of QEMU's mapcache (docs/contract.md, section 4) that we must not repeat."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest

PAGE = 4096


def collide(xmc: ModuleType, ram: Any, **kw: Any) -> Any:
    """Four slots of one page: index i and i + 4 share a chain."""
    return xmc.MapCache(ram, bucket_shift=12, max_size=4 * PAGE, **kw)


def test_fifo_unlock_of_many_locked_mappings(cache: Any) -> None:
    """QEMU walks a list of every locked mapping; we keep them hashed (speed: benchmarks/)."""
    held = [cache.map_ptr(i * 64, 64, lock=True, dma=True) for i in range(2000)]
    for i, p in enumerate(held):
        assert cache.ram_addr(p) == i * 64
        cache.unlock(p)
    assert cache.stats().locked == 0


def unlocked_duplicate_ahead_of_locked(xmc: ModuleType, cache: Any, ram: Any) -> tuple[Any, int]:
    """Chain of slot 0: [E2 unlocked, index 0] then [E1 locked, index 0]: same index, same size."""
    ram.write(0x40, b"E1 data")
    ahead = cache.map(4 * PAGE, 16)  # E2, index 4, head of slot 0 (locked for now)
    locked = cache.map(0x40, 16)  # E1, index 0, appended behind it
    ahead.release()
    other = cache.replace(4 * PAGE, 0, 16)  # E2 becomes index 0 too, still ahead
    assert other != locked.address - 0x40
    return locked, other


def test_unlock_finds_the_exact_entry_not_the_first_lookalike(xmc: ModuleType, ram: Any) -> None:
    with collide(xmc, ram) as cache:
        locked, _ = unlocked_duplicate_ahead_of_locked(xmc, cache, ram)
        locked.release()
        st = cache.stats()
        assert st.locked == 0
        with pytest.raises(xmc.UnknownMapping):
            cache.unlock(locked.address)
        cache.invalidate()  # both entries unlocked: both go, no count wrapped around
        assert cache.stats().entries == 0


def test_ram_addr_resolves_the_entry_the_address_lies_in(xmc: ModuleType, ram: Any) -> None:
    with collide(xmc, ram) as cache:
        locked, other = unlocked_duplicate_ahead_of_locked(xmc, cache, ram)
        assert cache.ram_addr(locked.address) == 0x40
        assert cache.ram_addr(locked.address + 8) == 0x48
        assert cache.ram_addr(other + 0x100) == 0x100
        assert bytes(memoryview(locked)[:7]) == b"E1 data"
        locked.release()


def test_invalidate_unmaps_chained_unlocked_entries(xmc: ModuleType, ram: Any) -> None:
    with collide(xmc, ram) as cache:
        head = cache.map(0, 8)  # locked head of slot 0
        chained = [cache.map_ptr((4 * k) * PAGE) for k in (1,)]  # behind it, unlocked
        chained.append(cache.map_ptr(PAGE))  # slot 1, head
        assert cache.stats().entries == 3
        cache.invalidate()
        st = cache.stats()
        assert (st.entries, st.mapped_bytes) == (1, PAGE)
        for p in chained:
            with pytest.raises(xmc.UnknownMapping):
                cache.ram_addr(p)
        head.release()


def test_records_follow_replace(xmc: ModuleType, ram: Any) -> None:
    with collide(xmc, ram) as cache:
        m = cache.map(PAGE, 8, dma=True, tag="t")
        cache.replace(PAGE, 2 * PAGE, 8)  # moves to another slot
        assert cache.ram_addr(m.address) == 2 * PAGE
        assert cache.locked()[0].paddr == 2 * PAGE
        with pytest.warns(xmc.DMAMappingWarning, match="'t'"):
            cache.invalidate()  # the entry is locked: it stays
        assert cache.stats().entries == 1
        m.release()
        assert cache.stats().locked == 0
        cache.invalidate()
        assert cache.stats().entries == 0


def test_lock_overflow_and_unknown_pointers_do_not_abort(xmc: ModuleType, ram: Any) -> None:
    with xmc.MapCache(ram, lock_limit=1) as cache:
        m = cache.map(0, 8)
        with pytest.raises(xmc.LockOverflow):
            cache.map(0, 8)
        with pytest.raises(xmc.UnknownMapping):
            cache.ram_addr(m.address + (1 << 40))
        with pytest.raises(xmc.UnknownMapping):
            cache.unlock(12345)
        m.release()
        assert cache.read(0, 1) == b"\0"
