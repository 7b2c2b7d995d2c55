"""Faults users meet (docs/contract.md, section 10): copies, failed copies, lost errors, fork.

Every test runs on both implementations (the C core and the reference).
"""

from __future__ import annotations

import copy
import gc
import logging
import mmap
import os
import pickle
import subprocess
import sys
import textwrap
import types
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest
from ctools import Flaky, run_patched_import

import xenmapcache
import xenmapcache.reference

MIB = 1 << 20
PAGE = 4096

COPIERS: dict[str, Callable[[Any], Any]] = {
    "pickle": pickle.dumps,
    "copy": copy.copy,
    "deepcopy": copy.deepcopy,
}


# -- no copies -------------------------------------------------------------------


@pytest.mark.parametrize("how", sorted(COPIERS))
def test_caches_mappings_ram_and_backends_refuse_to_be_copied(xmc: ModuleType, how: str) -> None:
    copier = COPIERS[how]
    ram = xmc.GuestRAM(4 * MIB)
    backend = xmc.CallbackBackend(lambda *a: (0, []), lambda *a: None)
    cache = xmc.MapCache(ram)
    mapping = cache.map(0x1000, 16)
    xen = object.__new__(xmc.XenForeignMemory)  # no Xen here: the class is what refuses
    try:
        for obj in (cache, mapping, ram, backend, xen):
            with pytest.raises(TypeError, match=f"{type(obj).__name__} objects cannot be copied or pickled: "):
                copier(obj)
        mapping.release()  # the original still works, once
        assert cache.stats().locked == 0
    finally:
        cache.close()
        ram.close()


def test_both_implementations_mappings_refuse_to_be_copied() -> None:
    # The C core's Mapping may become a type of its own (ffi/binding.h): it must
    # refuse as the reference's does.
    for xmc in (xenmapcache, xenmapcache.reference):
        with xmc.GuestRAM(MIB) as ram, xmc.MapCache(ram) as cache, cache.map(0, 8) as m:
            for copier in COPIERS.values():
                with pytest.raises(TypeError, match="unlock the same locked mapping"):
                    copier(m)


# -- every error changes nothing --------------------------------------------------


def test_a_write_into_a_hole_writes_nothing(xmc: ModuleType) -> None:
    hole = 3 * (1 << 16)
    with xmc.GuestRAM(MIB, holes=[(hole, hole + PAGE)]) as ram:
        with xmc.MapCache(ram, bucket_shift=16, max_size=1 << 16) as cache:  # one slot: buckets collide
            before = os.pread(ram.fileno(), MIB, 0)
            with pytest.raises(xmc.MappingError):
                cache.write(0x100, b"\xa5" * (hole + 0x10 - 0x100))
            assert os.pread(ram.fileno(), MIB, 0) == before
            assert cache.stats().locked == 0 and cache.locked() == []
            buf = cache.read(0x100, hole - 0x100)  # all of it before the hole reads back as it was
            assert buf == before[0x100:hole]
            with pytest.raises(xmc.MappingError):
                cache.read(0x100, hole)
            cache.write(0x100, b"\x5a" * (hole - 0x100))  # up to the hole: every byte lands
            assert os.pread(ram.fileno(), hole - 0x100, 0x100) == b"\x5a" * (hole - 0x100)
            cache.invalidate()
            assert cache.stats().entries == 0  # nothing stays pinned


# -- no error lost or misplaced ------------------------------------------------------



def unrelated_failure_has_no_cause(xmc: ModuleType) -> None:
    """A failure on another cache, in the same thread, after the callback errors."""
    with xmc.GuestRAM(MIB, holes=[(0, PAGE)]) as ram, xmc.MapCache(ram) as other:
        for call in (lambda: other.read(0, 8), lambda: other.map(0, 8), lambda: other.map_ptr(0)):
            with pytest.raises(xmc.MappingError) as info:
                call()
            assert info.value.__cause__ is None, f"a stale callback error became the cause: {info.value.__cause__!r}"


def test_a_failed_map_callback_is_the_cause_of_that_map_only(xmc: ModuleType) -> None:
    flaky = Flaky()
    with flaky.cache(xmc) as cache:
        flaky.fail.add("map")
        with pytest.raises(xmc.MappingError) as info:
            cache.map_ptr(0)
        assert isinstance(info.value.__cause__, OSError)
        unrelated_failure_has_no_cause(xmc)
        cache.map_ptr(0)  # works again


def test_a_failed_translate_is_the_cause_of_that_map_only(xmc: ModuleType) -> None:
    flaky = Flaky()
    with xmc.GuestRAM(MIB, holes=[(0, PAGE)]) as ram, xmc.MapCache(ram, translate=flaky.translate) as cache:
        flaky.fail.add("translate")
        with pytest.raises(xmc.MappingError) as info:
            cache.read(0, 8)
        assert isinstance(info.value.__cause__, LookupError)
        unrelated_failure_has_no_cause(xmc)


def test_a_cache_collected_during_a_failing_call_leaves_that_calls_cause(xmc: ModuleType) -> None:
    # A collected cache takes its own pending callback errors: it took every
    # one of the thread, so a collection in the middle of another cache's
    # failing call (here from its trace hook; in the model test, the garbage
    # collector) lost that call's cause (MappingError caused by None).
    flaky = Flaky()
    events: list[str] = []
    with xmc.GuestRAM(MIB, holes=[(0, PAGE)]) as ram:
        others = [xmc.MapCache(ram) for _ in range(4)]

        def hook(event: Any) -> None:
            events.append(event.name)
            if others:
                others.pop()  # its last reference: collected here, in the call

        with xmc.MapCache(ram, translate=flaky.translate, trace=hook) as cache:
            flaky.fail.add("translate")
            with pytest.raises(xmc.MappingError) as info:
                cache.map(0, 8)
            assert isinstance(info.value.__cause__, LookupError)
            assert len(others) < 4, f"no cache was collected during the call: {events}"

def test_a_failed_unmap_during_a_map_fails_that_map(xmc: ModuleType) -> None:
    flaky = Flaky()
    with flaky.cache(xmc) as cache:
        cache.map_ptr(0)  # one bucket, in slot 0 of 2
        flaky.fail.add("unmap")
        with pytest.raises(xmc.MapCacheError) as info:
            cache.map_ptr(2 << 16, (1 << 16) + 1)  # slot 0, two buckets: the old entry is unmapped first
        assert isinstance(info.value.__cause__, RuntimeError)
        unrelated_failure_has_no_cause(xmc)
    assert flaky.live == {}


def test_a_failed_unmap_during_invalidate_is_logged_there(xmc: ModuleType, caplog: pytest.LogCaptureFixture) -> None:
    flaky = Flaky()
    with flaky.cache(xmc) as cache:
        cache.map_ptr(0)
        flaky.fail.add("unmap")
        with caplog.at_level(logging.ERROR, logger="xenmapcache"):
            cache.invalidate()
        assert "unmap refused" in caplog.text
        unrelated_failure_has_no_cause(xmc)
    assert flaky.live == {}


def test_a_failed_map_during_replace_is_the_cause_of_that_replace(xmc: ModuleType) -> None:
    flaky = Flaky()
    with flaky.cache(xmc) as cache:
        cache.map_ptr(0)
        flaky.fail.add("map")
        with pytest.raises(xmc.MappingError) as info:
            cache.replace(0, 1 << 16, 0)
        assert isinstance(info.value.__cause__, OSError)
        unrelated_failure_has_no_cause(xmc)
    assert flaky.live == {}


def test_a_failed_unmap_during_close_raises_from_close(xmc: ModuleType) -> None:
    flaky = Flaky()
    cache = flaky.cache(xmc)
    cache.map_ptr(0)
    flaky.fail.add("unmap")
    with pytest.raises(xmc.MapCacheError) as info:
        cache.close()
    assert isinstance(info.value.__cause__, RuntimeError)
    assert cache.closed and flaky.live == {}  # closed, and everything unmapped once
    cache.close()  # a second close does nothing
    unrelated_failure_has_no_cause(xmc)


def test_a_failed_unmap_during_garbage_collection_is_logged_there(xmc: ModuleType, caplog: pytest.LogCaptureFixture) -> None:
    flaky = Flaky()
    cache = flaky.cache(xmc)
    cache.map_ptr(0)
    flaky.fail.add("unmap")
    with caplog.at_level(logging.ERROR, logger="xenmapcache"):
        del cache
        gc.collect()
    assert "unmap refused" in caplog.text and "collected cache" in caplog.text
    assert flaky.live == {}
    unrelated_failure_has_no_cause(xmc)


# -- callbacks never turn an interrupt into success ------------------------------------

INTERRUPTS = [KeyboardInterrupt, SystemExit]


@pytest.mark.parametrize("interrupt", INTERRUPTS, ids=lambda e: e.__name__)
def test_an_interrupted_translate_fails_the_write_and_writes_nothing(xmc: ModuleType, interrupt: type) -> None:
    # cffi returned 0 (success) for a translate that raised anything but an
    # Exception: the core then wrote to whatever the uninitialised address was.
    flaky = Flaky(interrupt)
    hole = 1 << 16
    with xmc.GuestRAM(MIB, holes=[(hole, 2 * hole)]) as ram:
        with xmc.MapCache(ram, bucket_shift=16, translate=flaky.translate) as cache:
            before = os.pread(ram.fileno(), MIB, 0)
            stats = cache.stats()
            for call in (lambda: cache.write(hole + 8, b"CTRL-C-WRITE"), lambda: cache.map(hole, 8)):
                flaky.fail.add("translate")
                with pytest.raises(interrupt):
                    call()
                assert os.pread(ram.fileno(), MIB, 0) == before
                assert cache.stats().locked == 0 and cache.locked() == []
            assert cache.stats().hits == stats.hits
            with pytest.raises(xmc.MappingError) as info:  # nothing left pending: a later failure has no cause
                cache.read(hole, 8)
            assert info.value.__cause__ is None


@pytest.mark.parametrize("interrupt", INTERRUPTS, ids=lambda e: e.__name__)
def test_an_interrupted_backend_map_fails_the_call_and_keeps_nothing(xmc: ModuleType, interrupt: type) -> None:
    flaky = Flaky(interrupt)
    # Dummy mode would map anonymous memory for pages that cannot be mapped:
    # never for a backend that raised.
    with flaky.cache(xmc, dummy_on_failure=True, translate=flaky.translate) as cache:
        for call in (lambda: cache.map_ptr(0), lambda: cache.map(0, 8), lambda: cache.write(0, b"x")):
            flaky.fail.add("map")
            with pytest.raises(interrupt):
                call()
            assert cache.stats().entries == 0 and cache.stats().locked == 0
            assert flaky.live == {}
        flaky.interrupt = None
        flaky.fail.add("map")
        with pytest.raises(xmc.MappingError) as info:  # an Exception is the cause, never a dummy success
            cache.map_ptr(0)
        assert isinstance(info.value.__cause__, OSError)
        assert cache.stats().entries == 0
        assert cache.map_ptr(0)  # works again
    assert flaky.live == {}


@pytest.mark.parametrize("interrupt", INTERRUPTS, ids=lambda e: e.__name__)
def test_an_interrupted_unmap_fails_the_map_that_needed_it(xmc: ModuleType, interrupt: type) -> None:
    flaky = Flaky(interrupt)
    with flaky.cache(xmc) as cache:
        cache.map_ptr(0)
        flaky.fail.add("unmap")
        with pytest.raises(interrupt):
            cache.map_ptr(2 << 16, (1 << 16) + 1)  # slot 0: the old entry is unmapped first
        assert cache.stats().locked == 0
        unrelated_failure_has_no_cause(xmc)
    assert flaky.live == {}


def test_an_interrupted_unmap_during_invalidate_comes_after_the_report(
    xmc: ModuleType, caplog: pytest.LogCaptureFixture
) -> None:
    flaky = Flaky(KeyboardInterrupt)
    with flaky.cache(xmc) as cache:
        cache.map_ptr(0)
        m = cache.map(1 << 16, 8, dma=True, tag="dma")
        flaky.fail.add("unmap")
        with caplog.at_level(logging.WARNING, logger="xenmapcache"), pytest.warns(xmc.DMAMappingWarning, match="'dma'"):
            with pytest.raises(KeyboardInterrupt):
                cache.invalidate()
        assert "unmapping an entry failed" in caplog.text and "1 DMA mapping(s) in flight: 'dma'" in caplog.text
        assert cache.stats().entries == 1 and cache.locked()[0].tag == "dma"  # invalidated all the same
        m.release()
        unrelated_failure_has_no_cause(xmc)
    assert flaky.live == {}


# -- fork ------------------------------------------------------------------------------

CHILD_PRELUDE = """
import ctypes, mmap, multiprocessing, os, signal, sys, threading, warnings
import {module} as xmc

warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads: on purpose here
libc = ctypes.CDLL(None)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
entered, go = threading.Event(), threading.Event()

def parked_map(first_pfn, nr_pages, fixed):
    # Bucket 1 parks inside the cache's lock until the test lets it go.
    if first_pfn == 16 and not entered.is_set():
        entered.set()
        go.wait(60)
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | (0x10 if fixed else 0)  # 0x10: MAP_FIXED
    return libc.mmap(fixed, nr_pages * 4096, 3, flags, -1, 0), [0] * nr_pages

def park(cache):
    thread = threading.Thread(target=cache.map_ptr, args=(0x10000,))
    thread.start()
    assert entered.wait(60)
    return thread
"""


def run_script(xmc: ModuleType, body: str) -> list[str]:
    """Run ``body`` after CHILD_PRELUDE in a fresh interpreter (a hang fails, by timeout); its stdout lines."""
    script = CHILD_PRELUDE.format(module=xmc.__name__) + textwrap.dedent(body)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.splitlines()


def test_fork_while_a_callback_is_parked_fails_in_the_child_and_spares_the_parent(xmc: ModuleType) -> None:
    lines = run_script(
        xmc,
        """
        busy = xmc.MapCache(xmc.CallbackBackend(parked_map, lambda a, n: libc.munmap(a, n)), bucket_shift=16)
        busy.map_ptr(0)
        ram = xmc.GuestRAM(1 << 20)
        idle = xmc.MapCache(ram)
        idle.write(0x100, b"parent")
        thread = park(busy)
        pid = os.fork()
        if pid == 0:
            signal.alarm(20)  # a hang dies of SIGALRM, and the parent sees it
            out = []
            for name, call in (("map_ptr", lambda: busy.map_ptr(0)), ("read", lambda: busy.read(0, 8)),
                               ("map", lambda: busy.map(0, 8)), ("stats", busy.stats)):
                try:
                    call()
                    out.append(name + ": worked")
                except xmc.MapCacheError as exc:
                    out.append(name + (": forked" if "forked" in str(exc) else ": " + repr(exc)))
            assert idle.read(0x100, 6) == b"parent"
            idle.write(0x200, b"child")
            out.append("idle: works")
            del busy  # collected in the child: leaked, not touched
            print("\\n".join(out), flush=True)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        print("child exit", os.waitstatus_to_exitcode(status))
        go.set()
        thread.join(60)
        assert not thread.is_alive()
        assert busy.read(0x10000, 4) == bytes(4)  # the parent's cache is undisturbed
        assert idle.read(0x200, 5) == b"child"  # guest RAM is shared with the child
        busy.close()
        idle.close()
        print("parent: works")
        """,
    )
    assert lines == ["map_ptr: forked", "read: forked", "map: forked", "stats: forked", "idle: works", "child exit 0", "parent: works"]


def test_fork_from_inside_a_backend_callback_leaves_both_processes_working(xmc: ModuleType) -> None:
    # The forking thread holds the cache's lock in both processes, and both
    # finish the miss it was in the middle of: no other thread is inside.
    lines = run_script(
        xmc,
        """
        forked = []

        def forking_map(first_pfn, nr_pages, fixed):
            if first_pfn == 16 and not forked:
                forked.append(os.fork())  # under the cache's lock, in the middle of a miss
            flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | (0x10 if fixed else 0)
            return libc.mmap(fixed, nr_pages * 4096, 3, flags, -1, 0), [0] * nr_pages

        cache = xmc.MapCache(xmc.CallbackBackend(forking_map, lambda a, n: libc.munmap(a, n)), bucket_shift=16)
        p = cache.map_ptr(0x10000)  # the miss that forks
        who = "child" if forked[0] == 0 else "parent"
        if who == "child":
            signal.alarm(20)  # a hang dies of SIGALRM, and the parent sees it
        cache.write(0x10010, who.encode())
        assert cache.read(0x10010, len(who)) == who.encode()
        assert cache.ram_addr(p + 0x10) == 0x10010
        with cache.map(0x20000, 8, dma=True, tag=who) as m, memoryview(m) as v:
            v[:2] = b"ok"
        assert cache.locked() == [] and cache.stats().locked == 0
        cache.close()
        os.write(1, f"{who}: works\\n".encode())  # one write: the two processes share the pipe
        if who == "child":
            os._exit(0)
        _, status = os.waitpid(forked[0], 0)
        print("child exit", os.waitstatus_to_exitcode(status))
        """,
    )
    assert sorted(lines) == ["child exit 0", "child: works", "parent: works"]


def test_multiprocessing_fork_workers_use_an_inherited_cache(xmc: ModuleType) -> None:
    lines = run_script(
        xmc,
        """
        ram = xmc.GuestRAM(1 << 20)
        cache = xmc.MapCache(ram, bucket_shift=16, max_size=1 << 17)
        busy = xmc.MapCache(xmc.CallbackBackend(parked_map, lambda a, n: libc.munmap(a, n)), bucket_shift=16)
        busy.map_ptr(0)

        def work(i):
            cache.write(i * 0x11000, bytes([i + 1]) * 0x2000)  # across buckets
            try:
                busy.map_ptr(0)
                return cache.read(i * 0x11000, 0x2000), "busy worked"
            except xmc.MapCacheError as exc:
                return cache.read(i * 0x11000, 0x2000), type(exc).__name__

        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(2) as pool:  # forked while the caches are idle
            got = pool.map(work, range(8))
        assert [data for data, _ in got] == [bytes([i + 1]) * 0x2000 for i in range(8)]
        print("idle:", sorted(set(what for _, what in got)))
        thread = park(busy)
        with ctx.Pool(2) as pool:  # forked while a thread is inside busy
            got = pool.map(work, range(8, 12))
        assert [data for data, _ in got] == [bytes([i + 1]) * 0x2000 for i in range(8, 12)]
        print("busy:", sorted(set(what for _, what in got)))
        go.set()
        thread.join(60)
        assert cache.read(0, 0x2000) == bytes([1]) * 0x2000  # the workers wrote shared guest RAM
        busy.close()
        cache.close()
        """,
    )
    assert lines == ["idle: ['busy worked']", "busy: ['MapCacheError']"]


# -- tests a planted bug must fail at once ----------------------------------------------

B = 1 << 16


def test_invalidate_clears_the_fast_path_even_at_a_locked_multi_bucket_entry(xmc: ModuleType) -> None:
    with xmc.GuestRAM(MIB) as ram, xmc.MapCache(ram, bucket_shift=16) as cache:
        m = cache.map(2 * B, B + 1)  # two buckets, locked: invalidate keeps the entry
        assert cache.map_ptr(2 * B + 0x10) == m.address + 0x10  # the fast path serves it
        before = cache.stats()
        cache.invalidate()
        # No last entry now: a size-0 request looks up a one-bucket entry, a miss.
        assert cache.map_ptr(2 * B + 0x10) != m.address + 0x10
        after = cache.stats()
        assert (after.hits, after.misses) == (before.hits, before.misses + 1)
        m.release()


def test_a_span_ending_on_the_bad_page_of_a_partly_mapped_entry_fails(xmc: ModuleType) -> None:
    with xmc.GuestRAM(MIB, holes=[(21 * PAGE, 22 * PAGE)]) as ram, xmc.MapCache(ram, bucket_shift=16) as cache:
        cache.map_ptr(16 * PAGE)  # bucket 1 (pages 16..31), partly mapped, is the last entry
        calls: list[Callable[[], object]] = [
            lambda: cache.map_ptr(21 * PAGE),  # the fast path
            lambda: cache.map_ptr(20 * PAGE, 2 * PAGE),  # the span's last page
            lambda: cache.map(20 * PAGE + 0x800, PAGE),
            lambda: cache.read(20 * PAGE, PAGE + 1),
            lambda: cache.map_ptr(22 * PAGE - 1, 2),  # the span's first page
        ]
        for call in calls:
            with pytest.raises(xmc.MappingError):
                call()
        cache.map_ptr(20 * PAGE, PAGE)  # the page before is fine
        assert cache.stats().locked == 0


@pytest.mark.parametrize("hole", [0, 5, 15], ids=["first", "middle", "last"])
def test_every_page_of_a_partly_mapped_entry_but_the_holes_maps(xmc: ModuleType, hole: int) -> None:
    # The valid bitmap of an entry with a bad page: each good page, the first
    # and the last of the entry included, is valid (scripts/mutate.py plants
    # a map_into that drops the last page's bit).
    with xmc.GuestRAM(MIB, holes=[((16 + hole) * PAGE, (17 + hole) * PAGE)]) as ram:
        for size in (0, 8):  # one bucket (pages 16..31); one page in it
            with xmc.MapCache(ram, bucket_shift=16) as cache:
                for page in range(16, 32):
                    if page == 16 + hole:
                        with pytest.raises(xmc.MappingError):
                            cache.map_ptr(page * PAGE + 8, size)
                    else:
                        assert cache.ram_addr(cache.map_ptr(page * PAGE + 8, size)) == page * PAGE + 8


@pytest.mark.skipif(sys.implementation.name != "cpython", reason="the builtins are CPython's (ffi/binding.h)")
def test_the_hot_methods_are_the_builtins_on_cpython() -> None:
    # A failed install falls back to Python methods silently, and every other
    # test still passes: this one says so.  Each hot method of MapCache is a
    # method descriptor of the binding, which CPython specialises on an object
    # with no instance dict: `cache.map_ptr(p)` costs the builtin's call.
    from xenmapcache._binding import HOT_METHODS

    for name in HOT_METHODS:
        assert type(vars(xenmapcache.MapCache)[name]).__name__ == "method_descriptor", name

    class Mine(xenmapcache.MapCache):  # its own descriptors (a call specialises for one class)
        def read(self, paddr: int, n: int) -> bytes:
            return bytes(n)

    assert vars(Mine)["map_ptr"].__objclass__ is Mine and vars(Mine)["read"] is Mine.read
    assert vars(xenmapcache.reference.MapCache)["map"].__objclass__ is xenmapcache.reference.MapCache
    with xenmapcache.GuestRAM(MIB) as ram:
        for cache in (xenmapcache.MapCache(ram), xenmapcache.MapCache(ram, bucket_shift=12, grants=True)):
            assert cache._core.fast_paths() and not hasattr(cache, "__dict__")
            for name in HOT_METHODS:
                assert type(getattr(cache, name)) is types.BuiltinFunctionType, name
            cache.close()


def test_a_cache_is_of_its_own_class(xmc: ModuleType, ram: Any) -> None:
    # On CPython each cache was of a subclass made per class to hold its
    # builtins (type(cache) is MapCache was False), which surprised `type(x)
    # is` checks and named the wrong class in errors.
    class Mine(xmc.MapCache):  # type: ignore[misc,name-defined]
        def read(self, paddr: int, n: int) -> bytes:
            return b"mine:" + super().read(paddr, n)

    with xmc.MapCache(ram) as cache, Mine(ram) as mine:
        assert type(cache) is xmc.MapCache and type(mine) is Mine
        assert mine.read(0x1000, 2) == b"mine:" + cache.read(0x1000, 2)  # its own method wins
        assert mine.map_ptr(0x1000) == mine.map_ptr(0x1000)
        with type(cache)(ram) as again:
            assert type(again) is xmc.MapCache and again.map_ptr(0) == again.map_ptr(0)
        for obj, name in ((cache, "MapCache"), (mine, "Mine")):
            with pytest.raises(TypeError, match=f"^{name} objects cannot be copied or pickled"):
                pickle.dumps(obj)


@pytest.mark.skipif(sys.implementation.name != "cpython", reason="the builtins are CPython's")
def test_the_binding_refuses_another_table_of_hot_methods() -> None:
    from xenmapcache import _binding, _core, _native
    from xenmapcache.cache import Mapping, MappingGroup

    assert _native.native_types() is _core
    hot = _binding.HOT_METHODS
    for table in (hot + ("stats",), hot[1:], hot[:-1] + ("map",), tuple(reversed(hot))):
        if sorted(table) == sorted(hot):
            _core.install(table, Mapping, MappingGroup)  # by name: the order is free
            continue
        with pytest.raises(ImportError, match="are not the binding's builtins"):
            _core.install(table, Mapping, MappingGroup)


@pytest.mark.skipif(sys.implementation.name != "cpython", reason="the builtins are CPython's")
def test_a_table_the_binding_was_not_built_for_fails_at_import() -> None:
    # A Python table that names a method the compiled binding lacks (a stale
    # binding): the first cache fails with ImportError, not with a wrong method.
    out = run_patched_import(
        "xenmapcache._binding",
        'module.HOT_METHODS += ("locked",)',
        """
        import xenmapcache
        try:
            xenmapcache.MapCache(xenmapcache.GuestRAM(1 << 20))
        except ImportError as exc:
            print(exc)
        """,
    )
    assert "'locked'" in out and "are not the binding's builtins" in out, out


def test_a_hole_that_ends_or_starts_inside_a_page_takes_all_of_that_page(xmc: ModuleType) -> None:
    holes = [(5 * PAGE, 6 * PAGE + 0x800), (9 * PAGE + 0x800, 10 * PAGE)]
    with xmc.GuestRAM(MIB, holes=holes) as ram, xmc.MapCache(ram, bucket_shift=16) as cache:
        for paddr in (6 * PAGE + 0x900, 9 * PAGE):
            with pytest.raises(xmc.MappingError):
                cache.map_ptr(paddr)
        cache.write(7 * PAGE, b"between")
        assert cache.read(7 * PAGE, 7) == b"between"


def test_ram_addr_of_guest_addresses_past_4_gib(xmc: ModuleType) -> None:
    # Guest RAM above 4 GiB is common; a 32-bit truncation anywhere on the way
    # back (a builtin's conversion, say) would pass every test below it.
    with xmc.GuestRAM(5 << 30) as ram, xmc.MapCache(ram) as cache:  # a sparse memfd: no memory used
        for paddr in ((4 << 30) + 0x1234, (5 << 30) - 1):
            address = cache.map_ptr(paddr)
            assert cache.ram_addr(address) == paddr
            with cache.map(paddr, 1) as m:
                assert cache.ram_addr(m.address) == paddr
