"""One test per rule of docs/contract.md, section 3, on every implementation."""

from __future__ import annotations

import logging
import warnings
from types import ModuleType
from typing import Any

import pytest

PAGE = 4096
MIB = 1 << 20


def small_cache(xmc: ModuleType, ram: Any, slots: int = 4, shift: int = 12, **kw: Any) -> Any:
    """A cache with few slots, so that index i and i + slots share a chain."""
    return xmc.MapCache(ram, bucket_shift=shift, max_size=slots << shift, **kw)


# -- map: the fast path, chains, reuse -------------------------------------------


def test_fast_path_hit_returns_the_same_address(cache: Any) -> None:
    first = cache.map_ptr(0x12345)
    before = cache.stats()
    assert cache.map_ptr(0x12345) == first
    assert cache.map_ptr(0x12000) == first - 0x345
    after = cache.stats()
    assert after.hits == before.hits + 2 and after.misses == before.misses


def test_mapped_memory_is_guest_memory(ram: Any, cache: Any) -> None:
    ram.write(0x5000, b"guest bytes")
    with cache.map(0x5000, 11) as m:
        view = memoryview(m)
        assert bytes(view) == b"guest bytes"
        view[:5] = b"GUEST"
        view.release()
    assert ram.read(0x5000, 5) == b"GUEST"


def test_exact_match_is_preferred_anywhere_in_the_chain(xmc: ModuleType, ram: Any) -> None:
    with small_cache(xmc, ram) as cache:
        locked = cache.map(0, PAGE)  # index 0, head of slot 0, locked
        cache.map_ptr(4 * PAGE)  # index 4: the head is locked, so a second entry
        before = cache.stats()
        assert cache.map_ptr(0, PAGE) == locked.address  # found behind nothing new
        after = cache.stats()
        assert after.hits == before.hits + 1 and after.misses == before.misses
        assert after.entries == 2
        locked.release()


def test_an_unlocked_entry_is_reused(xmc: ModuleType, ram: Any) -> None:
    with small_cache(xmc, ram) as cache:
        cache.map_ptr(0)
        cache.map_ptr(4 * PAGE)  # same slot, the unlocked entry is remapped
        st = cache.stats()
        assert (st.entries, st.misses, st.remaps) == (1, 2, 1)


def test_a_locked_entry_is_never_reused(xmc: ModuleType, ram: Any) -> None:
    ram.write(0, b"locked data")
    with small_cache(xmc, ram) as cache:
        m = cache.map(0, PAGE)
        for i in range(1, 6):
            cache.map_ptr(4 * i * PAGE)
        assert bytes(memoryview(m)[:11]) == b"locked data"
        assert cache.ram_addr(m.address) == 0
        assert cache.stats().entries == 2
        m.release()


def test_a_request_crossing_buckets_gets_one_contiguous_mapping(xmc: ModuleType, ram: Any) -> None:
    data = bytes(range(256)) * 64
    paddr = MIB - 8192
    ram.write(paddr, data)
    with xmc.MapCache(ram, bucket_shift=20) as cache, cache.map(paddr, len(data)) as m:
        view = memoryview(m)
        assert bytes(view) == data
        assert cache.stats().mapped_bytes == 2 * MIB
        view.release()


def test_size_zero_checks_one_page_but_maps_one_bucket(xmc: ModuleType) -> None:
    ram = xmc.GuestRAM(4 * MIB, holes=[(MIB + 2 * PAGE, 2 * MIB)])
    with xmc.MapCache(ram) as cache:
        cache.map_ptr(MIB)  # page 0 of the bucket is RAM
        cache.map_ptr(MIB + PAGE)
        assert cache.stats().mapped_bytes == MIB
        with pytest.raises(xmc.MappingError):
            cache.map_ptr(MIB + 2 * PAGE)  # in the hole
        with pytest.raises(xmc.MappingError):
            cache.map(MIB, 3 * PAGE)  # reaches into the hole
        with cache.map(MIB, 2 * PAGE) as m:
            assert m.size == 2 * PAGE
    ram.close()


def test_a_failed_map_changes_no_lock_count(cache: Any, xmc: ModuleType) -> None:
    good = cache.map(0, PAGE)
    with pytest.raises(xmc.MappingError):
        cache.map(32 * MIB, PAGE)  # the hole
    st = cache.stats()
    assert (st.locked, len(cache.locked())) == (1, 1)
    good.release()
    assert cache.stats().locked == 0


# -- translate and dummy mode -------------------------------------------------------


def test_translate_is_called_once_and_its_address_used(xmc: ModuleType, ram: Any) -> None:
    calls = []

    def translate(paddr: int, size: int) -> int:
        calls.append((paddr, size))
        return paddr - 32 * MIB  # out of the hole, into RAM

    ram.write(0x1000, b"translated")
    with xmc.MapCache(ram, translate=translate) as cache:
        with cache.map(32 * MIB + 0x1000, 10) as m:
            assert bytes(memoryview(m)) == b"translated"
            assert cache.ram_addr(m.address) == 0x1000
            assert m.paddr == 32 * MIB + 0x1000
        assert calls == [(32 * MIB + 0x1000, 10)]
        assert cache.map_ptr(0x1000)  # RAM: no call
        assert len(calls) == 1


def test_translate_to_bad_pages_fails_without_a_second_call(xmc: ModuleType, ram: Any) -> None:
    calls = []

    def translate(paddr: int, size: int) -> int:
        calls.append(paddr)
        return paddr + MIB  # still in the hole

    with xmc.MapCache(ram, translate=translate) as cache:
        with pytest.raises(xmc.MappingError):
            cache.map(33 * MIB, PAGE)
        assert calls == [33 * MIB]


def test_an_error_in_translate_becomes_a_mapping_error(xmc: ModuleType, ram: Any) -> None:
    def translate(paddr: int, size: int) -> int:
        raise KeyError("no such region")

    with xmc.MapCache(ram, translate=translate) as cache:
        with pytest.raises(xmc.MappingError) as info:
            cache.map_ptr(33 * MIB)
        assert isinstance(info.value.__cause__, KeyError)
        assert cache.read(0, 4) == bytes(4)  # the cache still works


def test_dummy_mode_maps_anonymous_memory(xmc: ModuleType, ram: Any) -> None:
    with xmc.MapCache(ram, dummy_on_failure=True) as cache:
        with cache.map(33 * MIB, 2 * PAGE) as m:
            view = memoryview(m)
            view[:] = b"\xab" * (2 * PAGE)  # writable, and guest RAM is untouched
            assert bytes(view[:2]) == b"\xab\xab"
            view.release()
        cache.write(0, b"real")
        assert ram.read(0, 4) == b"real"


# -- locks and reverse records ------------------------------------------------------


def test_lock_limit_overflow_fails_and_changes_nothing(xmc: ModuleType, ram: Any) -> None:
    with xmc.MapCache(ram, lock_limit=2) as cache:
        a, b = cache.map(0, 16), cache.map(0x100, 16)  # one entry, two locks
        before = (cache.stats(), cache.locked())
        with pytest.raises(xmc.LockOverflow):
            cache.map(0x200, 16)
        assert (cache.stats(), cache.locked()) == before  # nothing changed, counters included
        a.release()
        c = cache.map(0x200, 16)  # room again
        b.release()
        c.release()
        assert cache.stats().locked == 0


def test_a_zero_lock_limit_refuses_every_lock_and_maps_nothing(xmc: ModuleType, ram: Any) -> None:
    with xmc.MapCache(ram, lock_limit=0) as cache:
        with pytest.raises(xmc.LockOverflow):
            cache.map(0, 16)
        st = cache.stats()
        assert (st.hits, st.misses, st.entries, st.locked) == (0, 0, 0, 0)
        assert cache.map_ptr(0) and cache.read(0, 1) == b"\0"  # unlocked use still works


def test_two_locks_on_one_address_are_two_records(cache: Any, xmc: ModuleType) -> None:
    p1 = cache.map_ptr(0x3000, 64, lock=True)
    p2 = cache.map_ptr(0x3000, 64, lock=True)
    assert p1 == p2
    assert cache.stats().locked == 2
    cache.unlock(p1)
    assert cache.stats().locked == 1
    cache.unlock(p1)
    with pytest.raises(xmc.UnknownMapping):
        cache.unlock(p1)


def test_ram_addr_resolves_exact_and_interior_pointers(cache: Any) -> None:
    m = cache.map(0x7000, 100, tag="x")
    assert cache.ram_addr(m.address) == 0x7000
    assert cache.ram_addr(m.address + 99) == 0x7000 + 99
    p = cache.map_ptr(3 * MIB + 5)  # unlocked entries resolve too
    assert cache.ram_addr(p) == 3 * MIB + 5
    assert cache.ram_addr(p - 5 + MIB - 1) == 4 * MIB - 1  # last byte of that bucket
    m.release()


def test_ram_addr_of_an_unknown_address_is_a_clear_error(cache: Any, xmc: ModuleType) -> None:
    with pytest.raises(xmc.UnknownMapping):
        cache.ram_addr(0x1000)
    with pytest.raises(LookupError):
        cache.ram_addr(2**64 - 1)


def test_unlock_of_an_unknown_or_released_address_changes_nothing(cache: Any, xmc: ModuleType) -> None:
    m = cache.map(0x9000, 8)
    address = m.address
    with pytest.raises(xmc.UnknownMapping):
        cache.unlock(address + 1)
    assert cache.stats().locked == 1
    cache.unlock(address)
    with pytest.raises(xmc.UnknownMapping):
        cache.unlock(address)
    assert cache.stats().locked == 0


# -- invalidate ----------------------------------------------------------------


def test_invalidate_drops_unlocked_and_keeps_locked_intact(xmc: ModuleType, ram: Any) -> None:
    ram.write(0x1000, b"keep me")
    with small_cache(xmc, ram) as cache:
        rom = cache.map(0x1000, 7, tag="rom")
        for i in range(8):
            cache.map_ptr(i * PAGE + 4 * PAGE)
        assert cache.invalidate() == []
        st = cache.stats()
        assert (st.entries, st.mapped_bytes, st.invalidations) == (1, PAGE, 1)
        assert bytes(memoryview(rom)) == b"keep me"
        rom.release()


def test_invalidate_warns_once_per_dma_mapping_and_never_for_device_memory(
    cache: Any, xmc: ModuleType, caplog: pytest.LogCaptureFixture
) -> None:
    vram = cache.map(0x10000, PAGE, tag="vram")
    disk = [cache.map(MIB * (i + 1), 512, dma=True, tag=f"disk{i}") for i in range(3)]
    raw = cache.map_ptr(5 * MIB, 64, lock=True, dma=True)
    with caplog.at_level(logging.WARNING, logger="xenmapcache"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            in_flight = cache.invalidate()
    dma_warnings = [w for w in caught if issubclass(w.category, xmc.DMAMappingWarning)]
    assert len(dma_warnings) == 4 and len(caught) == 4
    assert sorted(lm.tag for lm in in_flight if lm.tag) == ["disk0", "disk1", "disk2"]
    assert all(lm.dma for lm in in_flight)
    assert {lm.paddr for lm in in_flight} == {MIB, 2 * MIB, 3 * MIB, 5 * MIB}
    assert not any("vram" in str(w.message) for w in dma_warnings)
    assert any("disk1" in str(w.message) for w in dma_warnings)
    summaries = [r for r in caplog.records if r.name == "xenmapcache" and r.levelno == logging.WARNING]
    assert len(summaries) == 1 and "4" in summaries[0].getMessage()
    assert issubclass(xmc.DMAMappingWarning, RuntimeWarning)
    for m in disk:
        m.release()
    cache.unlock(raw)
    vram.release()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cache.invalidate() == []


class BadRepr:
    """A tag whose repr raises ``error``."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def __repr__(self) -> str:
        raise self.error


@pytest.mark.parametrize("error", [ValueError("no repr"), KeyboardInterrupt()], ids=["Exception", "interrupt"])
def test_invalidate_reports_everything_even_when_a_tag_repr_raises(
    cache: Any, xmc: ModuleType, caplog: pytest.LogCaptureFixture, error: BaseException
) -> None:
    bad = BadRepr(error)
    mappings = [cache.map(MIB, 512, dma=True, tag=bad), cache.map(2 * MIB, 512, dma=True, tag="disk")]
    with caplog.at_level(logging.WARNING, logger="xenmapcache"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if isinstance(error, Exception):
            in_flight = cache.invalidate()
            assert [lm.tag for lm in in_flight] == [bad, "disk"]
        else:  # the interrupt is raised, after the report
            with pytest.raises(KeyboardInterrupt):
                cache.invalidate()
    shown = f"<BadRepr object at {id(bad):#x}>"
    assert [str(w.message).split(" of guest")[0] for w in caught] == [f"DMA mapping {shown}", "DMA mapping 'disk'"]
    assert f"2 DMA mapping(s) in flight: {shown}, 'disk'" in caplog.text
    assert cache.stats().invalidations == 1 and cache.stats().locked == 2  # done, and nothing undone
    for m in mappings:
        m.release()


def test_invalidate_names_a_batch_once_with_its_count(cache: Any, caplog: pytest.LogCaptureFixture) -> None:
    # examples/virtio_blk.py logged 'req7 read @4742' seven times, once per segment.
    groups = [cache.map_sg([(MIB * i + PAGE * j, 512) for j in range(n)], dma=True, tag=f"req{i}") for i, n in ((1, 3), (2, 1))]
    raw = cache.map_ptr(5 * MIB, 64, lock=True, dma=True)
    with caplog.at_level(logging.WARNING, logger="xenmapcache"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert len(cache.invalidate()) == 5
    summary = [r.getMessage() for r in caplog.records if r.name == "xenmapcache"]
    assert summary == [f"mapcache invalidated with 5 DMA mapping(s) in flight: 'req1' (3 mappings), 'req2', {5 * MIB:#x}"]
    for g in groups:
        g.release()
    cache.unlock(raw)


def test_invalidate_clears_the_fast_path(cache: Any, xmc: ModuleType) -> None:
    p = cache.map_ptr(0x4000)
    cache.invalidate()
    with pytest.raises(xmc.UnknownMapping):
        cache.ram_addr(p)
    before = cache.stats()
    cache.map_ptr(0x4000)
    assert cache.stats().misses == before.misses + 1


# -- replace -------------------------------------------------------------------


def test_replace_remaps_in_place_and_records_follow(xmc: ModuleType, ram: Any) -> None:
    ram.write(0x2000, b"old")
    ram.write(2 * MIB + 0x2000, b"new")
    with xmc.MapCache(ram) as cache:
        m = cache.map(0x2000, 3)
        address = cache.replace(0x2000, 2 * MIB + 0x2000, 3)
        assert address == m.address  # same host address
        assert bytes(memoryview(m)) == b"new"
        assert cache.ram_addr(m.address) == 2 * MIB + 0x2000
        assert [lm.paddr for lm in cache.locked()] == [2 * MIB + 0x2000]
        m.release()  # the record still finds its entry
        assert cache.stats().locked == 0


def test_replace_of_a_missing_entry_or_onto_bad_pages_is_an_error(cache: Any, xmc: ModuleType, ram: Any) -> None:
    with pytest.raises(xmc.UnknownMapping):
        cache.replace(0x2000, 0x4000, PAGE)
    ram.write(0x2000, b"intact")
    m = cache.map(0x2000, PAGE)
    with pytest.raises(xmc.MappingError):
        cache.replace(0x2000, 33 * MIB, PAGE)
    assert bytes(memoryview(m)[:6]) == b"intact"
    assert cache.ram_addr(m.address) == 0x2000
    m.release()


@pytest.mark.parametrize("traced", [False, True], ids=["untraced", "traced"])
def test_replace_leaves_the_last_entry_alone_failed_or_not(xmc: ModuleType, ram: Any, traced: bool) -> None:
    # As QEMU's xen_replace_cache_entry, replace keeps the entry that served
    # last as the last one: an unlocked size-0 map of its bucket is a hit,
    # even where no lookup by size would find it (an entry of two buckets).
    # The C core forgot it, so a failed replace changed what the next call
    # did (a miss and a new entry); the model test found it.
    bucket = 1 << 16
    events: list[Any] = []
    with xmc.MapCache(ram, bucket_shift=16, trace=events.append if traced else None) as cache:
        m = cache.map(bucket - 1, 2)  # one entry of two buckets, the last one
        base = m.address - (bucket - 1)
        with pytest.raises(xmc.MappingError):
            cache.replace(bucket - 1, 33 * MIB + bucket - 1, 2)  # onto the hole: put back
        for paddr in (0x1000, None):
            if paddr is None:  # now over 2 MiB
                assert cache.replace(bucket - 1, 2 * MIB + bucket - 1, 2) == m.address
                paddr = 2 * MIB + 0x1000
            before = cache.stats()
            p = cache.map_ptr(paddr)
            assert (p, cache.ram_addr(p)) == (base + 0x1000, paddr)
            after = cache.stats()
            assert (after.hits, after.misses, after.entries) == (before.hits + 1, before.misses, before.entries)
        m.release()


def test_replace_swaps_a_dummy_mapping_for_real_memory(xmc: ModuleType) -> None:
    ram = xmc.GuestRAM(4 * MIB, holes=[(MIB, 2 * MIB)])
    ram.write(2 * MIB, b"migrated")
    with xmc.MapCache(ram, dummy_on_failure=True) as cache:
        m = cache.map(MIB, 8)  # a hole: dummy memory
        assert cache.replace(MIB, 2 * MIB, 8) == m.address
        assert bytes(memoryview(m)) == b"migrated"
        m.release()
    ram.close()


# -- copies, statistics, several caches ----------------------------------------------


def test_read_and_write_span_buckets(cache: Any, ram: Any, xmc: ModuleType) -> None:
    data = bytes(range(256)) * 40
    cache.write(MIB - 5000, data)
    assert ram.read(MIB - 5000, len(data)) == data
    assert cache.read(MIB - 5000, len(data)) == data
    with pytest.raises(xmc.MappingError):
        cache.read(32 * MIB - 10, 20)  # runs into the hole


def test_stats_count_what_they_say(xmc: ModuleType, ram: Any) -> None:
    with small_cache(xmc, ram) as cache:
        cache.map_ptr(0)  # miss
        cache.map_ptr(0)  # hit
        a = cache.map(4 * PAGE, 8, dma=True)  # miss, remap of the unlocked entry
        b = cache.map(PAGE, 8)  # miss, new entry in slot 1
        st = cache.stats()
        assert (st.hits, st.misses, st.remaps) == (1, 3, 1)
        assert (st.entries, st.locked, st.dma_locked, st.mapped_bytes) == (2, 2, 1, 2 * PAGE)
        a.release()
        b.release()


def test_caches_are_independent(xmc: ModuleType, ram: Any) -> None:
    with xmc.MapCache(ram, bucket_shift=12) as small, xmc.MapCache(ram, bucket_shift=16) as big:
        p = small.map_ptr(0x1000)
        q = big.map_ptr(0x1000)
        assert p != q
        assert small.stats().mapped_bytes == PAGE and big.stats().mapped_bytes == 1 << 16
        small.invalidate()
        assert big.ram_addr(q) == 0x1000


def test_page_granular_cache(xmc: ModuleType, ram: Any) -> None:
    with xmc.MapCache(ram, bucket_shift=12) as cache:
        cache.write(PAGE - 2, b"abcd")  # two buckets
        assert cache.read(PAGE - 2, 4) == b"abcd"
        m = cache.map(PAGE - 2, 4)
        assert cache.stats().mapped_bytes >= 2 * PAGE
        assert cache.ram_addr(m.address + 3) == PAGE + 1
        m.release()
