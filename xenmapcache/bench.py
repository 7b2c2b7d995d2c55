"""The performance table: ``python -m xenmapcache bench``, and the workloads of ``benchmarks/``.

Every target is a ratio of two measurements taken in the same run (the
machines are shared and noisy, so absolute times mean little).  A row names
its two sides; each side is a function and its arguments, timed as
``fn(*args)`` in a loop, exactly as pytest-benchmark's ``benchmark(fn, *args)``
does.  The command alternates rounds of the two sides of a row and keeps each
side's fastest round; ``benchmarks/`` runs the same sides through
pytest-benchmark, one group per row.

The C rows (``benchmarks/c/bench.c``) are built and run with
``make -C csrc bench`` in a checkout; an installed package runs the Python
rows and says once that the C rows need a checkout.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import importlib
import itertools
import json
import mmap
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, TextIO

from . import _cli

MIB = 1 << 20
GIB = 1 << 30
PAGE = 4096
RAM_SIZE = GIB  # the guest of every row
SECTOR_IO = 4096  # one DMA transfer of the FIFO rows

Call = tuple[Callable[..., Any], tuple[Any, ...]]


def implementation(name: str) -> ModuleType | None:
    """``xenmapcache`` for ``"c"``, ``xenmapcache.reference`` for ``"reference"`` (None if absent)."""
    module = {"c": "xenmapcache", "reference": "xenmapcache.reference"}[name]
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


class Unavailable(Exception):
    """A side that cannot run here (the reference implementation is missing)."""


# -- what is timed: module-level functions, passed directly to the timer ------


@dataclass
class Fifo:
    """A disk with ``n`` DMA mappings in flight, completing oldest first."""

    unlock: Callable[[int], None]
    map_ptr: Callable[..., int]
    ring: list[int]
    pages: int
    head: int = 0
    next_pg: int = 0


def fifo_step(f: Fifo) -> None:
    """Unlock the oldest DMA mapping, lock a new one at the next page."""
    i = f.head
    f.unlock(f.ring[i])
    f.ring[i] = f.map_ptr(f.next_pg * PAGE, SECTOR_IO, True, True)
    f.next_pg = f.next_pg + 1 if f.next_pg + 1 < f.pages else 0
    f.head = i + 1 if i + 1 < len(f.ring) else 0


def read_step(read: Callable[[int, int], bytes], addresses: Iterator[int]) -> bytes:
    """``cache.read(p, 4096)`` at the next random ``p``."""
    return read(next(addresses), 4096)


def write_step(write: Callable[[int, Any], None], data: bytes, addresses: Iterator[int]) -> None:
    """``cache.write(p, data)`` of 4 KiB at the next random ``p``."""
    write(next(addresses), data)


def readinto_step(readinto: Callable[[int, Any], int], buf: bytearray, addresses: Iterator[int]) -> int:
    """``cache.readinto(p, buf)`` of 4 KiB at the next random ``p``."""
    return readinto(next(addresses), buf)


# The safe path and the raw one, each written as a user writes it.


def safe_step(cache: Any, p: int) -> None:
    """``m = cache.map(p, 4096, dma=True); m.release()``."""
    m = cache.map(p, 4096, dma=True)
    m.release()


def safe_view_step(cache: Any, p: int) -> None:
    """``with cache.map(p, 4096, dma=True) as m, memoryview(m) as v: v[0] = 1``."""
    with cache.map(p, 4096, dma=True) as m, memoryview(m) as v:
        v[0] = 1


def raw_step(cache: Any, p: int) -> None:
    """``a = cache.map_ptr(p, 4096, True, True); cache.unlock(a)``: the raw pair."""
    a = cache.map_ptr(p, 4096, True, True)
    cache.unlock(a)


def with_floor_step(buf: bytearray) -> None:
    """The two ``with`` statements of ``safe_view_step`` with no cache at all.

    The outer object is made by a call and has ``__enter__``/``__exit__`` in C,
    as a ``Mapping`` has: a ``memoryview`` of a bytearray.
    """
    with memoryview(buf) as m, memoryview(m) as v:
        v[0] = 1


def sg_step(cache: Any, segments: list[tuple[int, int]], fd: int) -> int:
    """A disk model's read: ``with cache.map_sg(sg, dma=True) as g: os.preadv(fd, g, 0)``.

    The group goes to ``os.preadv`` as it is: a sequence of buffer exporters.
    """
    with cache.map_sg(segments, dma=True) as g:
        return os.preadv(fd, g, 0)


def sg_buffers_step(cache: Any, segments: list[tuple[int, int]], fd: int) -> int:
    """``sg_step`` through ``g.buffers()``: one memoryview per segment, for APIs that want views."""
    with cache.map_sg(segments, dma=True) as g:
        return os.preadv(fd, g.buffers(), 0)


def preadv_step(views: list[memoryview], fd: int) -> int:
    """The floor of ``sg_step``: ``os.preadv`` into 16 premade memoryviews of the same guest pages."""
    return os.preadv(fd, views, 0)


def slice_step(mm: mmap.mmap, addresses: Iterator[int]) -> bytes:
    """The baseline of ``read_step``: slice a Python mmap of the same RAM."""
    p = next(addresses)
    return mm[p : p + 4096]


MIXED_REQUESTS = 4096  # per timed call of mixed_run


def mixed_run(
    ops: list[tuple[int, int]],
    map_ptr: Callable[..., int],
    ram_addr: Callable[[int], int],
    unlock: Callable[[int], None],
    read: Callable[[int, int], bytes],
) -> None:
    """An emulator's traffic: 40% lock+ram_addr+unlock, 40% 512-byte reads, 20% unlocked maps.

    The whole sequence runs in one call, in a plain loop over locals, so that
    what is timed is the mapcache and not the harness around each request.
    """
    for kind, p in ops:
        if kind == 0:
            a = map_ptr(p, 512, True, True)
            ram_addr(a)
            unlock(a)
        elif kind == 1:
            read(p, 512)
        else:
            map_ptr(p)


def mixed_ops(count: int = MIXED_REQUESTS, seed: int = 4) -> list[tuple[int, int]]:
    """The request sequence of the mixed workload."""
    rng = random.Random(seed)
    ops = []
    for _ in range(count):
        r = rng.random()
        kind = 0 if r < 0.4 else 1 if r < 0.8 else 2
        ops.append((kind, rng.randrange(RAM_SIZE - 512)))
    return ops


def random_addresses(count: int = 1 << 16, seed: int = 7, span: int = RAM_SIZE) -> Iterator[int]:
    """An endless cycle of random addresses for 4 KiB reads in the first ``span`` bytes of RAM.

    Drawn now, not on the first ``next()``: that call is the timer's first.
    """
    rng = random.Random(seed)
    return itertools.cycle([rng.randrange(span - 4096) for _ in range(count)])


# -- the sides: context managers that set up a (fn, args) and clean up --------


class Resources:
    """Guest RAM and caches shared by the sides of one run, made on first use."""

    def __init__(self) -> None:
        self._stack = contextlib.ExitStack()
        self._made: dict[str, Any] = {}

    def close(self) -> None:
        self._stack.close()
        self._made.clear()

    def __enter__(self) -> Resources:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def module(self, impl: str) -> ModuleType:
        mod = implementation(impl)
        if mod is None:
            raise Unavailable(f"xenmapcache.{impl} cannot be imported here")
        return mod

    def ram(self, impl: str) -> Any:
        key = f"ram-{impl}"
        if key not in self._made:
            ram = self.module(impl).GuestRAM(RAM_SIZE)
            self._stack.callback(ram.close)
            self._made[key] = ram
        return self._made[key]

    def cache(self, impl: str, **kw: Any) -> Any:
        """A cache of ``impl`` over its 1 GiB RAM; closed with the resources."""
        cache = self.module(impl).MapCache(self.ram(impl), **kw)
        self._stack.callback(cache.close)
        return cache

    def mapped_cache(self, impl: str, key: str) -> Any:
        """A default cache of its own (per ``key``) with every bucket mapped."""
        key = f"mapped-{impl}-{key}"
        if key not in self._made:
            cache = self.cache(impl)
            for b in range(RAM_SIZE // MIB):
                cache.map_ptr(b * MIB)
            self._made[key] = cache
        return self._made[key]

    def warm_cache(self, impl: str) -> Any:
        """A default cache with every bucket mapped and every page faulted in."""
        key = f"warm-{impl}"
        if key not in self._made:
            cache = self.cache(impl)
            for b in range(RAM_SIZE // MIB):
                cache.read(b * MIB, MIB)
            self._made[key] = cache
        return self._made[key]

    def mmap(self) -> mmap.mmap:
        if "mmap" not in self._made:
            mm = mmap.mmap(self.ram("c").fileno(), RAM_SIZE, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE)
            self._stack.callback(mm.close)
            self._made["mmap"] = mm
        found: mmap.mmap = self._made["mmap"]
        return found


Setup = Callable[[Resources], contextlib.AbstractContextManager[Call]]


HIT = 0x12345


def hit_cache(res: Resources) -> Any:
    cache = res.mapped_cache("c", "hit")
    cache.map_ptr(HIT)  # the last entry: every map_ptr(HIT) is a fast-path hit
    return cache


@contextlib.contextmanager
def hit_map_ptr(res: Resources) -> Iterator[Call]:
    cache = hit_cache(res)
    yield cache.map_ptr, (HIT,)


@contextlib.contextmanager
def hit_noop(res: Resources) -> Iterator[Call]:
    # A builtin of the same binding that takes map_ptr's arguments the same
    # way and returns an int, without the core call.
    native = hit_cache(res)._core._native
    if native is None:
        raise Unavailable("the binding has no builtins here (not CPython)")
    yield native.noop_map_ptr, (HIT,)


# The hit as the README writes it: the method looked up on the object at
# every call, against the no-op looked up the same way on its own object.


def readme_hit_step(cache: Any, p: int) -> int:
    """``cache.map_ptr(p)``."""
    return cache.map_ptr(p)  # type: ignore[no-any-return]


def noop_attr_step(native: Any, p: int) -> int:
    """``native.noop_map_ptr(p)``: the baseline of ``readme_hit_step``."""
    return native.noop_map_ptr(p)  # type: ignore[no-any-return]


@contextlib.contextmanager
def hit_readme(res: Resources) -> Iterator[Call]:
    yield readme_hit_step, (hit_cache(res), HIT)


@contextlib.contextmanager
def hit_noop_attr(res: Resources) -> Iterator[Call]:
    native = hit_cache(res)._core._native
    if native is None:
        raise Unavailable("the binding has no builtins here (not CPython)")
    yield noop_attr_step, (native, HIT)


@contextlib.contextmanager
def hit_raw(res: Resources) -> Iterator[Call]:
    from ._binding import binding

    # The C entry point itself, no Python around it: what the C work costs.
    yield binding()[1].xmc_py_map_ptr, (hit_cache(res)._core._c, HIT, 0, False, False)


# Each side of a scaling row has a cache of its own: N counts every locked
# mapping of that cache.


@contextlib.contextmanager
def dma_ring(cache: Any, n: int) -> Iterator[list[int]]:
    """``n`` DMA mappings in flight, one page each, oldest first; unlocked at the end."""
    ring = [cache.map_ptr(i * PAGE, SECTOR_IO, True, True) for i in range(n)]
    try:
        yield ring
    finally:
        for a in ring:  # what is in flight then (fifo_step replaces them in place)
            cache.unlock(a)


def fifo(impl: str, n: int) -> Setup:
    @contextlib.contextmanager
    def setup(res: Resources) -> Iterator[Call]:
        cache = res.mapped_cache(impl, f"fifo-{n}")
        pages = RAM_SIZE // PAGE
        with dma_ring(cache, n) as ring:
            yield fifo_step, (Fifo(cache.unlock, cache.map_ptr, ring, pages, next_pg=n % pages),)

    return setup


def reverse(impl: str, n: int) -> Setup:
    @contextlib.contextmanager
    def setup(res: Resources) -> Iterator[Call]:
        cache = res.mapped_cache(impl, f"reverse-{n}")
        with dma_ring(cache, n) as ring:
            yield cache.ram_addr, (ring[0],)  # the oldest

    return setup


def invalidate(impl: str, slots: int) -> Setup:
    @contextlib.contextmanager
    def setup(res: Resources) -> Iterator[Call]:
        # Page-granular: 8 Mi slots are a 32 GiB cache.  Ten live entries,
        # locked (not DMA) so that every call finds them again: the cost of
        # walking the cache is measured, not munmap.
        cache = res.cache(impl, bucket_shift=12, max_size=slots * PAGE)
        for i in range(10):
            cache.map_ptr(i * PAGE, 0, True)
        yield cache.invalidate, ()
        cache.close()

    return setup


# The two sides read different random sequences: in alternating rounds, one
# side would otherwise find in the CPU caches what the other just read.


@contextlib.contextmanager
def read_cache(res: Resources) -> Iterator[Call]:
    yield read_step, (res.warm_cache("c").read, random_addresses(seed=7))


@contextlib.contextmanager
def read_mmap(res: Resources) -> Iterator[Call]:
    res.warm_cache("c")  # the same RAM, faulted in
    yield slice_step, (res.mmap(), random_addresses(seed=8))


# readinto against read: both sides copy the same bytes, from a window that
# stays in the CPU caches.  Over all of RAM, the DRAM misses of a random 4 KiB
# copy are three quarters of either side and the same for both: the ratio
# sits at 0.96x to 1.01x there, noise around the 1x target.
WARM_SPAN = 4 * MIB


@contextlib.contextmanager
def readinto_warm(res: Resources) -> Iterator[Call]:
    yield readinto_step, (res.warm_cache("c").readinto, bytearray(4096), random_addresses(seed=9, span=WARM_SPAN))


@contextlib.contextmanager
def write_warm(res: Resources) -> Iterator[Call]:
    yield write_step, (res.warm_cache("c").write, bytes(4096), random_addresses(seed=9, span=WARM_SPAN))


@contextlib.contextmanager
def read_warm(res: Resources) -> Iterator[Call]:
    yield read_step, (res.warm_cache("c").read, random_addresses(seed=9, span=WARM_SPAN))


def safe(impl: str, step: Callable[[Any, int], None]) -> Setup:
    @contextlib.contextmanager
    def setup(res: Resources) -> Iterator[Call]:
        cache = res.mapped_cache(impl, "safe")  # every bucket mapped: all hits
        yield step, (cache, HIT)

    return setup


SG_SEGMENTS = [(i * 37 * MIB + 0x5000, PAGE) for i in range(16)]  # 16 pages, scattered over 1 GiB


def disk_image(res: Resources) -> int:
    """A 64 KiB file in the page cache, open for reading; closed with the resources."""
    if "disk" not in res._made:
        with tempfile.TemporaryFile() as f:
            f.write(os.urandom(len(SG_SEGMENTS) * PAGE))
            f.flush()
            dup = os.dup(f.fileno())
        res._stack.callback(os.close, dup)
        os.pread(dup, len(SG_SEGMENTS) * PAGE, 0)  # in the page cache
        res._made["disk"] = dup
    fd: int = res._made["disk"]
    return fd


@contextlib.contextmanager
def sg_read(res: Resources) -> Iterator[Call]:
    yield sg_step, (res.mapped_cache("c", "safe"), SG_SEGMENTS, disk_image(res))


@contextlib.contextmanager
def sg_buffers_read(res: Resources) -> Iterator[Call]:
    yield sg_buffers_step, (res.mapped_cache("c", "safe"), SG_SEGMENTS, disk_image(res))


@contextlib.contextmanager
def preadv_read(res: Resources) -> Iterator[Call]:
    """The same guest pages, mapped once by a cache of their own, as 16 views made before the timer."""
    with res.mapped_cache("c", "sg-floor").map_sg(SG_SEGMENTS, dma=True) as g:
        views = g.buffers()
        try:
            yield preadv_step, (views, disk_image(res))
        finally:
            for v in views:
                v.release()


@contextlib.contextmanager
def with_floor(res: Resources) -> Iterator[Call]:
    yield with_floor_step, (bytearray(4096),)


def mixed(impl: str) -> Setup:
    @contextlib.contextmanager
    def setup(res: Resources) -> Iterator[Call]:
        cache = res.mapped_cache(impl, "mixed")
        yield mixed_run, (mixed_ops(), cache.map_ptr, cache.ram_addr, cache.unlock, cache.read)

    return setup


# -- a real guest's trace (benchmarks/traces, from contrib/qemu/run-guest.sh) --

TRACE_CALLS = 20_000  # the prefix of the trace each replay plays


def guest_traces() -> list[Path]:
    """The committed traces of a guest run, when the source tree is at hand."""
    root = source_tree()
    return sorted((root / "benchmarks" / "traces").glob("*.xmct*")) if root else []


@contextlib.contextmanager
def _trace_prefix() -> Iterator[Any]:
    from . import replay

    traces = guest_traces()
    if not traces:
        raise Unavailable("no committed trace (benchmarks/traces/*.xmct*)")
    trace = replay.read_trace(str(traces[0]))
    if len(trace.calls) < TRACE_CALLS:
        raise Unavailable(f"{traces[0].name} has fewer than {TRACE_CALLS} calls")
    trace.calls = trace.calls[:TRACE_CALLS]
    yield trace


def trace_replay(impl: str) -> Setup:
    """The first TRACE_CALLS calls of the guest's trace, on a fresh cache of ``impl`` per replay."""

    @contextlib.contextmanager
    def setup(res: Resources) -> Iterator[Call]:
        from . import replay

        if implementation(impl) is None:
            raise Unavailable(f"no {impl} implementation here")
        with _trace_prefix() as trace:
            yield replay.replay, (trace, impl, None, False)

    return setup


@dataclass(frozen=True)
class Side:
    label: str
    setup: Setup


@dataclass(frozen=True)
class Row:
    """One line of the table: ``ratio = time(measured) / time(baseline)``."""

    group: str  # pytest-benchmark group
    path: str
    measured_as: str
    measured: Side
    baseline: Side
    target: float
    at_least: bool = False  # the ratio must be >= target (a speed-up) instead of <=
    extra: tuple[Side, ...] = field(default=())  # in the group, not in the ratio
    per_call: int = 1  # operations in one timed call (times are shown per operation)
    # Robust to a shared machine (both sides suffer its noise alike, far from
    # the target): the test suite fails when it misses twice (benchmarks/test_robust.py).
    robust: bool = False

    def passes(self, ratio: float) -> bool:
        return ratio >= self.target if self.at_least else ratio <= self.target

    @property
    def target_text(self) -> str:
        return f"{'>=' if self.at_least else '<='} {self.target:g}x"


# The baseline of the rows of the safe path: the raw pair it wraps.
RAW_PAIR_AS = "vs a = map_ptr(p, 4096, True, True); unlock(a)"
RAW_PAIR = Side("raw pair", safe("c", raw_step))

ROWS = (
    Row(
        "hit",
        "fast-path hit from Python, map_ptr(p)",
        "vs a no-op builtin of the binding, same argument list",
        Side("map_ptr(p)", hit_map_ptr),
        Side("no-op builtin", hit_noop),
        1.5,
        extra=(Side("C entry, no Python", hit_raw),),
        robust=True,
    ),
    Row(
        "hit-readme",
        "the same hit as the README writes it, cache.map_ptr(p)",
        "vs native.noop_map_ptr(p), each looked up at every call",
        Side("cache.map_ptr(p)", hit_readme),
        Side("native.noop_map_ptr(p)", hit_noop_attr),
        1.5,
    ),
    Row(
        "fifo",
        "DMA FIFO: unlock the oldest, lock a new one",
        "N = 10,000 vs N = 10",
        Side("N=10000", fifo("c", 10_000)),
        Side("N=10", fifo("c", 10)),
        1.5,
        robust=True,
    ),
    Row(
        "ram_addr",
        "ram_addr of the oldest locked mapping",
        "10,000 outstanding vs 10",
        Side("N=10000", reverse("c", 10_000)),
        Side("N=10", reverse("c", 10)),
        1.5,
        robust=True,
    ),
    Row(
        "invalidate",
        "invalidate() with 10 live entries",
        "page-granular 32 GiB (8 Mi slots) vs 1,024 slots",
        Side("8Mi slots", invalidate("c", 8 << 20)),
        Side("1024 slots", invalidate("c", 1024)),
        2.0,
        robust=True,
    ),
    Row(
        "read",
        "cache.read(p, 4096), random p in 1 GiB",
        "vs slicing a Python mmap of the same size",
        Side("cache.read", read_cache),
        Side("mmap slice", read_mmap),
        1.5,
    ),
    Row(
        "readinto",
        "cache.readinto(p, buf) of 4 KiB, random p in a warm 4 MiB",
        "vs cache.read(p, 4096), the same p",
        Side("cache.readinto", readinto_warm),
        Side("cache.read", read_warm),
        1.0,
    ),
    Row(
        "write",
        "cache.write(p, data) of 4 KiB, random p in a warm 4 MiB",
        "vs cache.readinto(p, buf) of 4 KiB, the same p",
        Side("cache.write", write_warm),
        Side("cache.readinto", readinto_warm),
        1.5,
    ),
    Row(
        "safe",
        "m = cache.map(p, 4096, dma=True); m.release()",
        RAW_PAIR_AS,
        Side("map + release", safe("c", safe_step)),
        RAW_PAIR,
        2.0,
    ),
    Row(
        "safe-view-cost",
        "with cache.map(...) as m, memoryview(m) as v: v[0] = 1",
        "vs the same two with statements over a bytearray, no cache (the floor)",
        Side("with map, view", safe("c", safe_view_step)),
        Side("the two with statements alone", with_floor),
        1.25,
        robust=True,
    ),
    Row(
        "sg-preadv",
        "with cache.map_sg(16 x 4 KiB, dma=True) as g: os.preadv(fd, g, 0)",
        "vs os.preadv into 16 premade memoryviews of the same guest pages (the floor)",
        Side("map_sg + preadv(fd, g)", sg_read),
        Side("preadv, 16 premade views", preadv_read),
        1.25,
        extra=(Side("map_sg + preadv(fd, g.buffers())", sg_buffers_read),),
    ),
    Row(
        "safe-reference",
        "the safe path: m = cache.map(...); m.release()",
        "xenmapcache.reference vs the C core (speed-up)",
        Side("reference", safe("reference", safe_step)),
        Side("C core", safe("c", safe_step)),
        10.0,
        at_least=True,
    ),
    Row(
        "trace",
        f"a Linux guest's trace through the Python API (first {TRACE_CALLS:,} calls)",
        "xenmapcache.reference vs the C core (speed-up)",
        Side("reference", trace_replay("reference")),
        Side("C core", trace_replay("c")),
        2.0,
        at_least=True,
        per_call=TRACE_CALLS,
    ),
    Row(
        "mixed",
        "mixed emulator workload",
        "xenmapcache.reference vs the C core (speed-up)",
        Side("reference", mixed("reference")),
        Side("C core", mixed("c")),
        20.0,
        at_least=True,
        per_call=MIXED_REQUESTS,
    ),
)


# -- the command ---------------------------------------------------------------


@dataclass
class Result:
    row: str
    measured_as: str
    measured: float  # ns per call
    baseline: float
    ratio: float
    target: str
    passed: bool
    unit: str = "ns"


def _loop(fn: Callable[..., Any], args: tuple[Any, ...], loops: int) -> float:
    t0 = time.perf_counter_ns()
    for _ in range(loops):
        fn(*args)
    return (time.perf_counter_ns() - t0) / loops


def _calibrate(fn: Callable[..., Any], args: tuple[Any, ...], round_s: float) -> int:
    fn(*args)  # a first call may fill caches (CPU, mapcache, specialization): not timed
    loops = 1
    while True:
        per = _loop(fn, args, loops)
        if per * loops >= round_s * 1e9 / 4 or loops >= 1 << 24:
            return max(1, int(round_s * 1e9 / max(per, 1.0)))
        loops *= 4


def measure_pair(a: Call, b: Call, rounds: int, round_s: float) -> tuple[float, float]:
    """Fastest round of each side, in ns per call, the sides alternating."""
    loops = [_calibrate(*a, round_s), _calibrate(*b, round_s)]
    best = [float("inf"), float("inf")]
    enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(rounds):
            for i, (fn, args) in enumerate((a, b)):
                best[i] = min(best[i], _loop(fn, args, loops[i]))
    finally:
        if enabled:
            gc.enable()
    return best[0], best[1]


class Progress:
    """A plain-text progress bar on stderr (redrawn in place on a terminal)."""

    def __init__(self, total: int, out: TextIO = sys.stderr) -> None:
        self.total, self.done, self.out = total, 0, out
        self.tty = out.isatty()

    def step(self, what: str) -> None:
        width = 30
        filled = width * self.done // max(self.total, 1)
        line = f"[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} {what}"
        if self.tty:
            self.out.write("\r" + line[:100].ljust(100))
        else:
            self.out.write(line + "\n")
        self.out.flush()
        self.done += 1

    def close(self) -> None:
        if self.tty:
            self.out.write("\r" + " " * 100 + "\r")
            self.out.flush()


def run_rows(rows: tuple[Row, ...], rounds: int, round_s: float, progress: Progress) -> list[Result]:
    results = []
    with Resources() as res:
        for row in rows:
            progress.step(row.path)
            try:
                with row.measured.setup(res) as a, row.baseline.setup(res) as b:
                    ta, tb = measure_pair(a, b, rounds, round_s)
            except Unavailable as exc:  # a row that cannot run is a row missing: a failure
                results.append(Result(row.path, f"missing: {exc}", 0, 0, 0, row.target_text, False))
                continue
            ratio = ta / tb
            ta, tb = ta / row.per_call, tb / row.per_call
            results.append(Result(row.path, row.measured_as, ta, tb, ratio, row.target_text, row.passes(ratio)))
    return results


NO_CHECKOUT = (
    "not measured: they need a checkout of the repository (csrc/ and benchmarks/c), "
    "and this package is installed without one"
)


def source_tree() -> Path | None:
    """The checkout this package runs from, when it has the C sources."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / "csrc" / "Makefile").is_file() and (root / "benchmarks" / "c").is_dir() else None


def run_c(quick: bool, scaling: bool) -> tuple[list[Result], list[dict[str, Any]], str | None]:
    """Build and run benchmarks/c; returns rows, scaling points and why it did not run."""
    root = source_tree()
    if root is None:
        return [], [], NO_CHECKOUT
    if shutil.which("make") is None or not (shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")):
        return [], [], "no C compiler or make"
    args = ["--json"] + (["--quick"] if quick else []) + (["--scaling"] if scaling else [])
    build = subprocess.run(["make", "-C", str(root / "csrc"), "-s", "build/bench"], capture_output=True, text=True)
    if build.returncode != 0:
        return [], [], f"the C benchmark did not build:\n{build.stderr}"
    proc = subprocess.run([str(root / "csrc" / "build" / "bench"), *args], capture_output=True, text=True)
    if proc.returncode not in (0, 1):
        return [], [], f"the C benchmark failed:\n{proc.stderr}"
    rows, points = [], []
    for line in proc.stdout.splitlines():
        item = json.loads(line)
        if "row" in item:
            rows.append(
                Result(
                    item["row"], item["measured_as"], item["a"], item["b"], item["ratio"],
                    f"<= {item['target']:g}x", item["pass"], item["unit"],
                )
            )
        else:
            points.append(item)
    return rows + run_c_replay(root, quick), points, None


# The C core over a no-op cache on the guest's trace: what the core adds per
# call, misses (an mmap each) and invalidations (a munmap per entry) included.
C_REPLAY_TARGET = 8.0


def run_c_replay(root: Path, quick: bool) -> list[Result]:
    """benchmarks/c/replay.c on the first committed trace (decompressed), if there is one."""
    traces = guest_traces()
    if not traces:
        return []
    build = subprocess.run(["make", "-C", str(root / "csrc"), "-s", "build/replay"], capture_output=True, text=True)
    if build.returncode != 0:
        return [Result("C: replay of a Linux guest's trace", f"missing: it did not build: {build.stderr}", 0, 0, 0,
                       f"<= {C_REPLAY_TARGET:g}x", False)]
    from . import replay

    with tempfile.NamedTemporaryFile(suffix=".xmct") as f:
        with replay._open(str(traces[0])) as src:
            shutil.copyfileobj(src, f)
        f.flush()
        proc = subprocess.run([str(root / "csrc" / "build" / "replay"), "--json", "--rounds", "3" if quick else "10",
                               f.name], capture_output=True, text=True)
    if proc.returncode != 0:
        return [Result("C: replay of a Linux guest's trace", f"missing: {proc.stderr.strip()}", 0, 0, 0,
                       f"<= {C_REPLAY_TARGET:g}x", False)]
    item = json.loads(proc.stdout)
    return [Result(item["row"], item["measured_as"], item["a"], item["b"], item["ratio"],
                   f"<= {C_REPLAY_TARGET:g}x", item["ratio"] <= C_REPLAY_TARGET, item["unit"])]


def print_table(results: list[Result], out: TextIO) -> None:
    header = f"{'path':<46} {'measured as':<50} {'measured':>12} {'baseline':>12} {'ratio':>8}  {'target':<9} result"
    print(header, file=out)
    print("-" * len(header), file=out)
    for r in results:
        if r.measured_as.startswith("missing"):
            print(f"{r.row:<46} {r.measured_as}", file=out)
            continue
        print(
            f"{r.row:<46} {r.measured_as:<50} {r.measured:>9.1f} {r.unit:<2} {r.baseline:>9.1f} {r.unit:<2} "
            f"{r.ratio:>7.2f}x  {r.target:<9} {'PASS' if r.passed else 'FAIL'}",
            file=out,
        )


# -- scaling curves (--plot) ---------------------------------------------------

OUTSTANDING = (1, 10, 100, 1_000, 10_000, 100_000)
LABELS = {"c": "C core", "reference": "reference"}
# benchmarks/c/bench.c --scaling names its series thus.
C_SERIES = {"C fifo cycle": "FIFO cycle", "C reverse lookup": "reverse lookup", "C invalidate": "invalidate"}
SLOTS = (1 << 10, 1 << 13, 1 << 16, 1 << 19, 1 << 23)


def scaling(impls: list[str], rounds: int, round_s: float, progress: Progress) -> dict[str, list[tuple[int, float]]]:
    """Cycle and reverse-lookup time against outstanding mappings; invalidate against slots."""
    curves: dict[str, list[tuple[int, float]]] = {}
    with Resources() as res:
        for impl in impls:
            for n in OUTSTANDING:
                progress.step(f"scaling: {impl} N={n}")
                for name, setup in (("FIFO cycle", fifo(impl, n)), ("reverse lookup", reverse(impl, n))):
                    with setup(res) as call:
                        t, _ = measure_pair(call, call, rounds, round_s)
                    curves.setdefault(f"{name}, Python API, {LABELS[impl]}", []).append((n, t))
            for slots in SLOTS:
                progress.step(f"scaling: {impl} invalidate {slots} slots")
                with invalidate(impl, slots)(res) as call:
                    t, _ = measure_pair(call, call, rounds, round_s)
                curves.setdefault(f"invalidate, Python API, {LABELS[impl]}", []).append((slots, t))
    return curves


def growth(curves: dict[str, list[tuple[int, float]]], panel: str) -> str:
    """What a panel's curves show: the one that grows most, from its first point to its last."""
    worst = ""
    most = 0.0
    for name, points in curves.items():
        if (name.startswith("invalidate")) != (panel == "invalidate") or len(points) < 2:
            continue
        (x0, y0), (x1, y1) = min(points), max(points)
        if y0 > 0 and y1 / y0 > most:
            most = y1 / y0
            worst = f"at most {most:.1f}x from {x0:,} to {x1:,} ({name})"
    return worst or "no points"


def plot(curves: dict[str, list[tuple[int, float]]], path: str, verdict: str) -> None:
    """The scaling curves in a PNG, titled with what this run found (``verdict``, each panel's growth)."""
    plt = _cli.pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    for name, points in sorted(curves.items()):
        axis = right if name.startswith("invalidate") else left
        xs, ys = zip(*sorted(points))
        axis.plot(xs, [y / 1000 for y in ys], marker="o", label=name)
    left.set(xscale="log", yscale="log", xlabel="outstanding locked mappings", ylabel="time per operation (us)")
    left.set_title(f"FIFO cycle and reverse lookup: {growth(curves, 'cycle')}", fontsize=9)
    right.set(xscale="log", yscale="log", xlabel="hash slots", ylabel="time per invalidate() (us)")
    right.set_title(f"invalidate() with 10 live entries: {growth(curves, 'invalidate')}", fontsize=9)
    for axis in (left, right):
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    fig.suptitle(f"xenmapcache bench: {verdict}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None, out: TextIO = sys.stdout, prog: str = "python -m xenmapcache bench") -> int:
    """``xenmapcache bench``: the table, measured ratio vs target per row."""
    parser = _cli.Parser(prog, main.__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds (proves it runs; noisy)")
    parser.add_argument("--rounds", type=_cli.count(10_000), default=None, help="rounds per side (default 15, quick 3)")
    parser.add_argument("--no-c", action="store_true", help="skip the C benchmark (benchmarks/c)")
    parser.add_argument(
        "--plot", metavar="FILE.png", type=_cli.plot_file, help="also draw the scaling curves (needs matplotlib)"
    )
    parser.add_argument(
        "--json", metavar="FILE", type=_cli.output_file, help="also write the rows to FILE, one JSON object per line"
    )
    args = parser.parse_args(argv)
    rounds = args.rounds or (3 if args.quick else 15)
    round_s = 0.005 if args.quick else 0.05
    impls = [name for name in ("c", "reference") if implementation(name) is not None]
    # An installed package has no C benchmark to build: the Python rows alone, said once, are no failure.
    c_wanted = not args.no_c and source_tree() is not None
    why = "skipped (--no-c)" if args.no_c else "" if c_wanted else NO_CHECKOUT

    progress = Progress(len(ROWS) + c_wanted + (len(impls) * (len(OUTSTANDING) + len(SLOTS)) if args.plot else 0))
    results = run_rows(ROWS, rounds, round_s, progress)
    c_rows: list[Result] = []
    points: list[dict[str, Any]] = []
    c_failed = False
    if c_wanted:
        progress.step("C benchmark (make -C csrc bench)")
        c_rows, points, why_not = run_c(args.quick, bool(args.plot))
        why, c_failed = why_not or "", why_not is not None
    curves = scaling(impls, rounds, round_s / 2, progress) if args.plot else {}
    progress.close()

    print_table(results + c_rows, out)
    if args.json:
        with open(args.json, "w") as f:
            for r in results + c_rows:
                print(json.dumps(dataclasses.asdict(r)), file=f)
    if why:
        print(f"\nC rows: {why}", file=out)
    failed = [r for r in results + c_rows if not r.passed]
    verdict = f"{len(results) + len(c_rows) - len(failed)} of {len(results) + len(c_rows)} rows meet their target"
    print(f"\n{verdict}", file=out)
    if c_failed:  # the C rows are missing from a checkout: that fails the run too
        print("the C rows are missing (--no-c leaves them out on purpose)", file=out)
        return 1
    if args.plot:
        for p in points:
            name = f"{C_SERIES.get(str(p['series']), str(p['series']))}, C level"
            curves.setdefault(name, []).append((int(p["x"]), float(p["ns"])))
        plot(curves, args.plot, verdict + ("" if c_rows else " (no C rows)"))
        print(f"scaling curves drawn in {args.plot}", file=out)
    return 1 if failed else 0
