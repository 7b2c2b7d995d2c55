"""Trace events (``MapCache(..., trace=fn)``) on both implementations.

Which events each call emits, with the caller's own tag objects; a hook that
raises is logged and changes nothing; a hook calling its own cache gets an
error instead of a hang; unknown lookups are reported once per call, through
the fast paths too.  (tests/test_model.py compares every event of the C core
with the reference's; csrc/tests/test_trace.c checks the C fields.)
"""

from __future__ import annotations

import gc
import inspect
import logging
import os
import warnings
import weakref
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import pytest

PAGE = 4096
MIB = 1 << 20


class Recorder:
    def __init__(self) -> None:
        self.events: list[Any] = []

    def __call__(self, event: Any) -> None:
        self.events.append(event)

    def take(self) -> list[str]:
        names = [e.name for e in self.events]
        self.events.clear()
        return names


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


@pytest.fixture
def traced(xmc: ModuleType, ram: Any, rec: Recorder) -> Iterator[Any]:
    c = xmc.MapCache(ram, trace=rec)
    yield c
    c.close()


def test_trace_must_be_callable(xmc: ModuleType, ram: Any) -> None:
    with pytest.raises(TypeError, match="trace"):
        xmc.MapCache(ram, trace="print")


def test_map_hit_miss_with_the_callers_tag(traced: Any, rec: Recorder, xmc: ModuleType) -> None:
    p = traced.map_ptr(0x1010)
    first = rec.events[:]
    assert rec.take() == ["map", "miss"]
    assert (first[0].paddr, first[0].size, first[0].address) == (0, MIB, p - 0x1010)
    assert (first[1].paddr, first[1].size, first[1].address, first[1].ok) == (0x1010, 0, p, True)
    assert traced.map_ptr(0x1020) == p + 0x10  # the fast path's hit, traced
    assert rec.take() == ["hit"]
    tag = object()
    m = traced.map(0x2000, 64, dma=True, tag=tag)
    (hit,) = rec.events
    assert (hit.name, hit.tag, hit.dma, hit.paddr, hit.size, hit.address) == ("hit", tag, True, 0x2000, 64, m.address)
    rec.take()
    m.release()
    (unlock,) = rec.events
    assert (unlock.name, unlock.tag, unlock.dma, unlock.address) == ("unlock", tag, True, m.address)
    assert traced.stats().hits == 2


def test_invalidate_traces_each_dma_mapping_in_flight(traced: Any, rec: Recorder) -> None:
    traced.map_ptr(0)
    dev = traced.map(MIB, 0, tag="vram")
    dma = traced.map(2 * MIB + 8, 16, dma=True, tag="disk read #1")
    rec.take()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced.invalidate()
    names = [(e.name, e.tag, e.size) for e in rec.events]
    assert names == [("invalidate", None, 1), ("dma_in_flight", "disk read #1", 16), ("unmap", None, MIB)]
    assert rec.events[1].address == dma.address
    rec.take()
    dev.release()
    dma.release()
    assert rec.take() == ["unlock", "unlock"]


def test_unknown_lookups_are_traced_once_per_call(traced: Any, rec: Recorder, xmc: ModuleType) -> None:
    with pytest.raises(xmc.UnknownMapping):
        traced.unlock(12345)
    with pytest.raises(xmc.UnknownMapping):
        traced.ram_addr(12345)
    assert [(e.name, e.address, e.ok) for e in rec.events] == [
        ("unlock_unknown", 12345, False),
        ("ram_addr_unknown", 12345, False),
    ]


def test_remap_replace_translate_and_lock_overflow(xmc: ModuleType, ram: Any, rec: Recorder) -> None:
    hole = 32 * MIB  # the fixture's hole: translate moves it to 1 MiB
    with xmc.MapCache(ram, max_size=4 * MIB, translate=lambda p, s: p - hole + MIB, lock_limit=1, trace=rec) as c:
        c.map_ptr(0)
        c.map_ptr(4 * MIB)  # slot 0 again: the unlocked entry is remapped
        assert rec.take() == ["map", "miss", "remap", "miss"]
        c.map_ptr(hole + 0x10)
        kinds = [(e.name, e.paddr, e.old_paddr) for e in rec.events]
        assert ("translate", MIB + 0x10, hole + 0x10) in kinds
        rec.take()
        m = c.map(2 * MIB, 0)
        with pytest.raises(xmc.LockOverflow):
            c.map(2 * MIB, 0, tag="second")
        assert [(e.name, e.tag, e.ok) for e in rec.events][-1] == ("lock_overflow", "second", False)
        rec.take()
        c.replace(2 * MIB, 3 * MIB, 0)
        (replace,) = rec.events
        assert (replace.name, replace.paddr, replace.old_paddr, replace.ok) == ("replace", 3 * MIB, 2 * MIB, True)
        m.release()


def test_grant_refusal_and_unmap_at_last_unlock(xmc: ModuleType, ram: Any, rec: Recorder) -> None:
    with xmc.MapCache(ram, bucket_shift=12, grants=True, trace=rec) as c:
        with pytest.raises(xmc.MapCacheError):
            c.map_ptr(0x3000)
        assert [(e.name, e.ok) for e in rec.events] == [("refused", False)]
        rec.take()
        with c.map(0x3000, 8, tag="ring"):
            pass
        assert rec.take() == ["map", "miss", "unlock", "unmap"]


def test_a_raising_hook_is_logged_and_changes_nothing(
    xmc: ModuleType, ram: Any, caplog: pytest.LogCaptureFixture
) -> None:
    def hook(event: Any) -> None:
        raise RuntimeError(f"hook failed on {event.name}")

    with caplog.at_level(logging.ERROR, logger="xenmapcache"), xmc.MapCache(ram, trace=hook) as c:
        p = c.map_ptr(0x1000)
        c.write(0x1000, b"ok")
        assert c.read(0x1000, 2) == b"ok"
        assert c.ram_addr(p) == 0x1000
        with c.map(0x5000, 4, tag="t") as m:
            assert bytes(memoryview(m)) == c.read(0x5000, 4)
        assert c.stats().locked == 0
    failures = [r for r in caplog.records if r.name == "xenmapcache" and "trace callback" in r.getMessage()]
    assert failures and all(r.exc_info and isinstance(r.exc_info[1], RuntimeError) for r in failures)
    assert "hook failed on miss" in caplog.text


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit])
def test_an_interrupt_from_the_hook_is_raised_by_its_call_and_keeps_no_lock(
    xmc: ModuleType, ram: Any, interrupt: type[BaseException]
) -> None:
    # It was swallowed (C: printed by cffi), or left a lock the Mapping said
    # was released (the reference).
    armed: list[str] = []

    def hook(event: Any) -> None:
        if armed and event.name == armed[0]:
            armed.clear()
            raise interrupt()

    with xmc.MapCache(ram, trace=hook) as c:
        calls: list[tuple[str, Callable[[], object]]] = [
            ("miss", lambda: c.map(0x1000, 8, tag="t")),
            ("hit", lambda: c.map(0x1000, 8, tag="t")),
            ("hit", lambda: c.map_ptr(0x1000, 8, lock=True)),
            ("hit", lambda: c.map_sg([(0x1000, 8), (0x2000, 8)], tag="g")),
            ("hit", lambda: c.map_ptr(0x1000)),
            ("hit", lambda: c.read(0x1000, 4)),
            ("hit", lambda: c.readinto(0x1000, bytearray(4))),
            ("hit", lambda: c.write(0x1000, b"x")),
            ("ram_addr_unknown", lambda: c.ram_addr(1)),
            ("unlock_unknown", lambda: c.unlock(1)),
            ("invalidate", c.invalidate),
        ]
        for name, call in calls:
            armed.append(name)
            with pytest.raises(interrupt):
                call()
            assert not armed and c.stats().locked == 0 and c.locked() == []
        assert c.map_ptr(0x1000) and c.read(0x1000, 1) == b"\0"  # nothing left pending, nothing written


def _state(c: Any, ram: Any) -> tuple[Any, ...]:
    """What a call stopped by its trace hook must leave as it was."""
    st = c.stats()
    return (os.pread(ram.fileno(), 64, 0x3FF0), os.pread(ram.fileno(), 64, 0x7FFF0), st.hits, st.misses,
            st.locked, st.dma_locked, st.entries, c.locked())


def _interrupt_after(name: str, interrupt: type[BaseException]) -> tuple[Callable[[Any], None], list[int]]:
    """A trace hook that, once armed with armed.append(n), lets n events called
    ``name`` go, raises ``interrupt`` at the next one and disarms."""
    armed: list[int] = []

    def hook(event: Any) -> None:
        if armed and event.name == name:
            armed[0] -= 1
            if armed[0] < 0:
                armed.clear()
                raise interrupt()

    return hook, armed


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit])
def test_an_interrupt_from_the_hook_stops_a_write_before_its_bytes(
    xmc: ModuleType, ram: Any, interrupt: type[BaseException]
) -> None:
    # The core copied the bytes, then the call raised the hook's interrupt.
    hook, armed = _interrupt_after("hit", interrupt)
    with xmc.MapCache(ram, bucket_shift=19, trace=hook) as c:
        c.write(0x4000 - 4, b"abcdefgh")  # one bucket
        edge = (1 << 19) - 4
        c.write(edge, b"12345678")  # two: the first is pinned while the second maps
        before = _state(c, ram)
        for skip, paddr, data in [(0, 0x4000 - 4, b"ABCDEFGH"), (0, edge, b"XXXXXXXX"), (1, edge, b"YYYYYYYY")]:
            armed.append(skip)
            with pytest.raises(interrupt):
                c.write(paddr, data)
            assert not armed and _state(c, ram) == before
        assert c.read(0x4000 - 4, 8) == b"abcdefgh" and c.read(edge, 8) == b"12345678"


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit])
def test_an_interrupt_from_the_hook_stops_an_unlock_before_it_drops(
    xmc: ModuleType, ram: Any, interrupt: type[BaseException]
) -> None:
    # The core dropped the lock, then the call raised the hook's interrupt.
    hook, armed = _interrupt_after("unlock", interrupt)
    with xmc.MapCache(ram, trace=hook) as c:
        m, g = c.map(0x3000, 8, dma=True), c.map_sg([(0x3000, 8), (0x4000, 8), (0x3000, 8)], tag="g")
        raw = c.map_ptr(0x5000, 8, lock=True)
        before = _state(c, ram)
        for skip, release in [(0, m.release), (0, g.release), (2, g.release), (0, lambda: c.unlock(raw))]:
            armed.append(skip)
            with pytest.raises(interrupt):
                release()
            assert not armed and _state(c, ram) == before
            assert not m.released and not g.released and not any(x.released for x in g)
        m.release()
        g.release()
        c.unlock(raw)
        assert m.released and g.released and c.stats().locked == 0


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit])
def test_a_hook_that_keeps_raising_leaks_no_lock(xmc: ModuleType, ram: Any, interrupt: type[BaseException]) -> None:
    # A map gives back its locks after the interrupt: an unlock the hook could
    # stop, raising again on the undo's own unlock event, would leak them.
    raising = [False]

    def hook(event: Any) -> None:
        if raising[0]:
            raise interrupt()

    with xmc.MapCache(ram, trace=hook) as c:
        raising[0] = True
        for call in (
            lambda: c.map(0x1000, 8, tag="t"),
            lambda: c.map_sg([(0x1000, 8), (0x2000, 8)], tag="g"),
            lambda: c.map_ptr(0x1000, 8, lock=True),
        ):
            with pytest.raises(interrupt):
                call()
            assert c.stats().locked == 0 and c.locked() == []
        with pytest.raises(interrupt):
            c.write(0x1000, b"x")  # refusals are back once the undo is over
        raising[0] = False
        assert c.read(0x1000, 1) == b"\0"


def test_an_exception_the_hook_keeps_does_not_keep_its_cache(xmc: ModuleType, ram: Any) -> None:
    # A frame links to its caller's, so an exception a hook keeps holds every
    # frame under the hook: the sink's (the Python end of the core's trace
    # callback) held the cache in a local, so the cache outlived its last
    # reference.  The caller's own frames are the caller's: with the builtins
    # there is none of ours between it and the core, and the cache goes.
    kept: list[BaseException] = []

    def hook(event: Any) -> None:
        try:
            raise ValueError(event.name)
        except ValueError as exc:
            kept.append(exc)

    cache = xmc.MapCache(ram, trace=hook)
    alive = weakref.ref(cache)
    builtins = bool(cache._core.fast_paths())
    cache.map(0x1000, 8, tag="t").release()
    cache.write(0x1000, b"x")
    assert kept
    holders = [f.f_code.co_name for f in gc.get_referrers(cache) if inspect.isframe(f)]
    assert "sink" not in holders, holders
    if builtins:
        del cache
        gc.collect()
        assert alive() is None, "an exception the hook kept kept the cache"
    else:
        cache.close()


def test_a_hook_calling_its_own_cache_gets_an_error(xmc: ModuleType, ram: Any, caplog: pytest.LogCaptureFixture) -> None:
    seen: list[BaseException] = []
    box: list[Any] = []

    def hook(event: Any) -> None:
        try:
            box[0].stats()
        except xmc.MapCacheError as exc:
            seen.append(exc)

    with xmc.MapCache(ram, trace=hook) as c:
        box.append(c)
        c.map_ptr(0x1000)
        c.map_ptr(0x1000)
        assert len(seen) == 3  # map, miss, hit: each refused, none hung
        assert c.stats().hits == 1


def test_no_hook_no_events_and_close_is_silent(xmc: ModuleType, ram: Any, rec: Recorder) -> None:
    c = xmc.MapCache(ram, trace=rec)
    c.map_ptr(0)
    rec.take()
    c.close()
    assert rec.take() == []
    with xmc.MapCache(ram) as plain:
        plain.map_ptr(0)
        plain.map_ptr(0x10)
        assert plain.stats().hits == 1


def test_a_fast_path_kept_past_its_cache_still_reaches_a_live_hook(tmp_path: Any) -> None:
    """The C handle outlives the cache while a fast-path closure holds it: the
    hook's handle must live as long (else a traced call would reach freed memory)."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        """
        import gc
        import xenmapcache as xmc

        events = []
        ram = xmc.GuestRAM(16 << 20)
        cache = xmc.MapCache(ram, trace=events.append)
        ram_addr, unlock, map_ptr = cache.ram_addr, cache.unlock, cache.map_ptr
        del cache
        gc.collect()
        for call in (ram_addr, unlock):  # reported once each, by Python as for a live cache
            try:
                call(12345)
            except xmc.UnknownMapping:
                pass
        map_ptr(0x1000)
        print([e.name for e in events])
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "['ram_addr_unknown', 'unlock_unknown', 'map', 'miss']"
