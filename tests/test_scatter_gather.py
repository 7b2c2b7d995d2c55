"""map_sg (docs/contract.md, section 9): one call, a group of Mappings, all or nothing.

On both implementations; the C core's batch on CPython is a builtin of the
binding (ffi/group.h) over xmc_map_sg / xmc_unlock_sg.
"""

from __future__ import annotations

import collections.abc
import copy
import gc
import os
import pickle
import socket
import weakref
from types import ModuleType
from typing import Any

import pytest
from threads import run_threads

PAGE = 4096
MIB = 1 << 20


def test_a_group_is_a_sequence_of_mappings(xmc: ModuleType, cache: Any) -> None:
    segs = [(MIB - 16, 32), (0x5000, 100), (0x5000, 100)]  # across a bucket; twice the same
    with cache.map_sg(segs, dma=True, tag="sg") as g:
        assert isinstance(g, xmc.MappingGroup) and isinstance(g, collections.abc.Sequence)
        assert len(g) == 3 and [m.paddr for m in g] == [MIB - 16, 0x5000, 0x5000]
        assert all(isinstance(m, xmc.Mapping) and m.dma and m.tag == "sg" for m in g)
        assert g[-1] is g[2] and [m.size for m in g[1:]] == [100, 100]
        assert [(lm.paddr, lm.size, lm.tag) for lm in cache.locked()] == [(p, s, "sg") for p, s in segs]
        assert cache.stats().dma_locked == 3
        assert not g.released
    assert g.released and all(m.released for m in g) and cache.locked() == []


def test_segments_may_be_any_iterable_of_int_pairs(xmc: ModuleType, cache: Any) -> None:
    class Index(int):
        pass

    for segs in ([(0, 8)], ((0, 8),), [[0, 8]], ((Index(0), Index(8)) for _ in range(2)), {(0, 8): 1}):
        g = cache.map_sg(segs)
        assert [m.size for m in g] and all(m.size == 8 for m in g)
        g.release()
    assert cache.stats().locked == 0


def test_bad_batches_change_nothing(xmc: ModuleType, cache: Any) -> None:
    before = cache.stats()
    for bad, kind in (
        ([], xmc.InvalidAddress),
        ([(0, 8), (-1, 8)], xmc.InvalidAddress),
        ([(0, 8), (2**64 - 4, 8)], xmc.InvalidAddress),
        ([(0, 8), (0, cache.max_size + 1)], xmc.InvalidAddress),
        ([(0, 8)] * 65537, xmc.InvalidAddress),
        ([(0, 8), (0, 8, 9)], TypeError),
        ([(0, 8), 5], TypeError),
        ([(0, "8")], TypeError),
        (5, TypeError),
    ):
        with pytest.raises(kind):
            cache.map_sg(bad)
    assert cache.stats() == before and cache.locked() == []


def test_a_failing_segment_keeps_none_locked(xmc: ModuleType, ram: Any) -> None:
    with xmc.MapCache(ram) as cache:
        ok = cache.map_sg([(0x1000, 8)])  # its entry is cached: the batch's first segment hits
        ok.release()
        before = cache.stats()
        with pytest.raises(xmc.MappingError):
            cache.map_sg([(0x1000, 8), (0x2000, 8), (0x3000, 8), (0x4000, 8), (33 * MIB, 8)], dma=True, tag="x")
        after = cache.stats()
        assert after.locked == after.dma_locked == 0 and cache.locked() == []
        # as a failed map of the fifth segment alone would have moved them
        assert (after.hits, after.remaps) == (before.hits, before.remaps)
        assert after.misses == before.misses + 1
        with pytest.raises(xmc.MappingError):
            cache.map(33 * MIB, 8)
        assert cache.stats().misses == after.misses + 1


def test_release_is_all_or_nothing_while_views_live(xmc: ModuleType, cache: Any) -> None:
    g = cache.map_sg([(0, 8), (0x3000, 8)])
    views = g.buffers()
    assert [len(v) for v in views] == [8, 8] and not any(v.readonly for v in views)
    views[0].release()
    with pytest.raises(BufferError):
        g.release()
    assert cache.stats().locked == 2 and not g[0].released  # none released
    with pytest.raises(BufferError):
        cache.close()
    del views
    g.release()
    g.release()  # a second time does nothing
    assert cache.stats().locked == 0


def test_members_release_on_their_own(xmc: ModuleType, cache: Any) -> None:
    g = cache.map_sg([(0, 8), (0x3000, 8), (0x6000, 8)], tag="t")
    g[1].release()
    assert [lm.paddr for lm in cache.locked()] == [0, 0x6000]
    cache.unlock(g[0].address)  # by address, like any Mapping
    assert g[0].released and not g.released
    g.release()
    assert g.released and cache.locked() == []


def test_invalidate_names_a_batch_in_flight_by_its_tag(xmc: ModuleType, cache: Any) -> None:
    with cache.map_sg([(0, 8), (0x10_0000, 8)], dma=True, tag="disk#3") as g:
        with pytest.warns(xmc.DMAMappingWarning, match="disk#3"):
            in_flight = cache.invalidate()
        assert [lm.tag for lm in in_flight] == ["disk#3", "disk#3"]
        assert [m.released for m in g] == [False, False]


def test_vectored_io_through_the_buffers(xmc: ModuleType, cache: Any, ram: Any, tmp_path: Any) -> None:
    image = tmp_path / "disk.img"
    data = os.urandom(64 * 1024)
    image.write_bytes(data)
    segs = [(MIB - 3 * PAGE + i * 2 * PAGE, PAGE) for i in range(16)]  # scattered, across a bucket
    fd = os.open(image, os.O_RDWR)
    try:
        with cache.map_sg(segs, dma=True, tag="read") as g:
            assert os.preadv(fd, g.buffers(), 0) == len(data)
        for i, (p, s) in enumerate(segs):
            assert ram.read(p, s) == data[i * PAGE : (i + 1) * PAGE]
        ram.write(segs[3][0], b"written back")
        with cache.map_sg(segs[3:4], tag="write") as g:
            assert os.pwritev(fd, g.buffers(), 3 * PAGE) == PAGE
    finally:
        os.close(fd)
    assert image.read_bytes()[3 * PAGE : 3 * PAGE + 12] == b"written back"
    a, b = socket.socketpair()
    with a, b, cache.map_sg(segs[:2]) as g:
        a.sendmsg(g.buffers())
        with cache.map_sg(segs[4:6]) as h:
            assert b.recvmsg_into(h.buffers())[0] == 2 * PAGE
    assert ram.read(segs[4][0], PAGE) == ram.read(segs[0][0], PAGE)


def test_groups_cannot_be_pickled_or_copied(cache: Any) -> None:
    with cache.map_sg([(0, 8)]) as g:
        for how in (pickle.dumps, copy.copy, copy.deepcopy):
            with pytest.raises(TypeError):
                how(g)


def test_closing_releases_every_group(xmc: ModuleType, ram: Any) -> None:
    cache = xmc.MapCache(ram)
    g = cache.map_sg([(0, 8), (0x3000, 8)])
    cache.close()
    assert g.released
    g.release()  # nothing to do
    with pytest.raises(xmc.MapCacheError):
        cache.map_sg([(0, 8)])
    with pytest.raises(BufferError):
        g.buffers()


def test_a_forgotten_group_is_collected(xmc: ModuleType, ram: Any) -> None:
    def maps() -> int:
        with open("/proc/self/maps") as f:
            return sum(1 for _ in f)

    gc.collect()
    before = maps()
    for _ in range(30):
        cache = xmc.MapCache(ram)
        cache.map_sg([(0, 8), (0x20_0000, 8)], dma=True)
        del cache
    gc.collect()
    assert maps() <= before + 2


def test_threads_share_batches(xmc: ModuleType, ram: Any) -> None:
    with xmc.MapCache(ram, bucket_shift=16, max_size=4 * MIB) as cache:  # few slots: remaps

        def worker(seed: int) -> None:
            for i in range(400):
                base = ((seed * 7919 + i * 104729) % (30 * MIB)) & ~7
                segs = [(base + k * 0x1_1000, 64) for k in range(4)]
                with cache.map_sg(segs, dma=bool(i & 1), tag=seed) as g:
                    for m, v in zip(g, g.buffers()):
                        v[:8] = m.paddr.to_bytes(8, "little")
                        del v
                    assert all(cache.ram_addr(m.address) == m.paddr for m in g)

        run_threads(worker, 4)
        assert cache.stats().locked == 0


def test_the_group_itself_is_a_sequence_of_buffers(xmc: ModuleType, cache: Any, ram: Any, tmp_path: Any) -> None:
    image = tmp_path / "disk.img"
    data = os.urandom(3 * PAGE)
    image.write_bytes(data)
    segs = [(0x9000, PAGE), (0x20_0000, PAGE), (0x5000, PAGE)]
    fd = os.open(image, os.O_RDONLY)
    try:
        with cache.map_sg(segs, dma=True) as g:
            assert os.preadv(fd, g, 0) == len(data)  # each Mapping exports itself for the call
    finally:
        os.close(fd)
    assert g.released  # no export was left behind
    assert b"".join(ram.read(p, s) for p, s in segs) == data
    # The other calls of docs/contract.md, section 9 take it as it is, too.
    a, b = socket.socketpair()
    with a, b, cache.map_sg(segs[:2]) as g:
        assert a.sendmsg(g) == 2 * PAGE
        with cache.map_sg(segs[2:]) as h:
            assert b.recvmsg_into(h)[0] == PAGE and b.recv(2 * PAGE) == data[PAGE : 2 * PAGE]
    assert ram.read(segs[2][0], PAGE) == data[:PAGE]
    fd = os.open(image, os.O_WRONLY)
    try:
        with cache.map_sg(segs[::-1]) as g:
            assert os.pwritev(fd, g, 0) == len(data)
    finally:
        os.close(fd)
    assert image.read_bytes() == b"".join(ram.read(p, s) for p, s in segs[::-1])


def test_a_group_indexes_as_a_tuple(cache: Any) -> None:
    with cache.map_sg([(0x1000, 8), (0x2000, 8), (0x3000, 8)]) as g:
        items = tuple(g)
        assert [g[i] for i in range(-3, 3)] == [*items, *items]
        assert g[True] is items[1] and g[::2] == items[::2] and g[5:] == ()
        for bad in (3, -4, 1 << 70):
            with pytest.raises(IndexError):
                g[bad]
        with pytest.raises(TypeError):
            g["0"]
        assert repr(g).startswith("<MappingGroup of 3: (<Mapping paddr=0x1000")


def test_a_traced_batch_reports_each_segment_once(xmc: ModuleType, ram: Any) -> None:
    # The binding first tries the core's _nowait batch, which gives up at the
    # miss of the third segment: that refused try must have traced nothing.
    events: list[Any] = []
    with xmc.MapCache(ram, trace=events.append) as cache:
        cache.map(0x1000, 8).release()
        del events[:]
        with cache.map_sg([(0x1000, 8), (0x2000, 8), (5 * MIB, 8)], dma=True, tag="t") as g:
            assert [e.name for e in events] == ["hit", "hit", "map", "miss"]
            assert [e.address for e in events if e.name in ("hit", "miss")] == [m.address for m in g]
            del events[:]
        assert [e.name for e in events] == ["unlock"] * 3


# -- the members of a group: made when asked for, one object each, never tied to it --


def test_a_member_is_one_object_while_its_group_lives(cache: Any) -> None:
    g = cache.map_sg([(0x1000, 8), (0x2000, 8)])
    first = weakref.ref(g[0])
    assert first() is g[0] is next(iter(g)) is tuple(g)[0] is g[-2]
    g.release()
    del g
    gc.collect()
    assert first() is None  # it went with its group: no later group's member is it
    with cache.map_sg([(0x3000, 8), (0x4000, 8)]) as h:
        assert [m.paddr for m in h] == [0x3000, 0x4000] and first() is None


def test_a_member_kept_outlives_its_group(cache: Any, ram: Any) -> None:
    g = cache.map_sg([(0x1000, 8), (0x2000, 16)], dma=True, tag="t")
    m = g[1]
    g.release()
    del g
    gc.collect()
    assert m.released and (m.paddr, m.size, m.dma, m.tag) == (0x2000, 16, True, "t")
    assert "released" in repr(m)
    with pytest.raises(BufferError):
        memoryview(m)
    m.release()  # nothing to do
    # A locked member of a group nobody holds stays locked, usable and releasable.
    m = cache.map_sg([(0x3000, 8), (0x4000, 8)], tag="u")[0]
    gc.collect()
    assert not m.released and [lm.tag for lm in cache.locked()] == ["u", "u"]
    with memoryview(m) as view:
        view[:2] = b"hi"
    assert ram.read(0x3000, 2) == b"hi"
    m.release()
    assert m.released and [lm.paddr for lm in cache.locked()] == [0x4000]


def test_a_member_of_a_forgotten_cache_keeps_its_memory(xmc: ModuleType, ram: Any) -> None:
    cache = xmc.MapCache(ram)
    g = cache.map_sg([(0x1000, 8), (0x2000, 8)])
    m = g[1]
    view = memoryview(m)
    del cache, g
    gc.collect()
    view[:3] = b"abc"  # still mapped: the member keeps what it needs
    assert ram.read(0x2000, 3) == b"abc"
    with pytest.raises(BufferError):
        m.release()
    view.release()
    m.release()
    assert m.released


def test_groups_one_after_another_keep_their_own_members(cache: Any) -> None:
    kept = []
    for i in range(40):
        segs = [(0x1000 * (k + 1) + i, 8 + k) for k in range(1 + i % 20)]
        with cache.map_sg(segs, dma=bool(i & 1), tag=i) as g:
            assert [(m.paddr, m.size, m.dma, m.tag) for m in g] == [(p, s, bool(i & 1), i) for p, s in segs]
            assert all(cache.ram_addr(m.address) == m.paddr for m in g)
            if i % 3 == 0:
                kept.append((g[-1], segs[-1], i))
    for m, (p, s), i in kept:
        assert m.released and (m.paddr, m.size, m.dma, m.tag) == (p, s, bool(i & 1), i)
    assert cache.locked() == []


def test_a_group_in_a_cycle_through_its_tag_is_collected(cache: Any) -> None:
    class Box:
        pass

    box = Box()
    g = cache.map_sg([(0x1000, 8), (0x2000, 8)], tag=box)
    box.member, box.group = g[0], g  # type: ignore[attr-defined]
    gone = weakref.ref(box)
    g.release()
    del g, box
    gc.collect()
    assert gone() is None


def test_code_run_as_a_group_goes_finds_its_members_standing_alone(xmc: ModuleType, ram: Any) -> None:
    cache = xmc.MapCache(ram)
    g = cache.map_sg([(0x1000, 8), (0x2000, 8), (0x3000, 8)])
    held, watched = g[0], weakref.ref(g[1])
    seen: list[Any] = []

    def at_its_end(_: Any) -> None:  # Python code while the group goes: release what it reaches
        seen.extend(m for m in (held, watched()) if m is not None)
        for m in seen:
            m.release()

    gone = weakref.ref(g, at_its_end)
    del cache  # the registry lets go of the group, its mappings still locked
    gc.collect()
    del g
    gc.collect()
    assert gone() is None and seen[0] is held and all(m.released for m in seen)
    assert (held.paddr, held.size) == (0x1000, 8)
    with xmc.MapCache(ram) as cache:  # the group went once: each later group is one of its own
        groups = [cache.map_sg([(0x1000 * (i + 1), 8)], tag=i) for i in range(12)]
        assert len({id(g) for g in groups}) == 12 and [g[0].tag for g in groups] == list(range(12))
        for g in groups:
            g.release()
