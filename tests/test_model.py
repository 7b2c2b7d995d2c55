"""Model-based test: the C core and the pure-Python reference, side by side.

A hypothesis ``RuleBasedStateMachine`` drives two caches with one
configuration, one over the C core (``xenmapcache``) and one over the reference
(``xenmapcache.reference``), each on its own ``GuestRAM`` with the same size,
holes and contents, through random sequences of map (locked or not, DMA,
tags), map_sg batches and their release, map_ptr, unlock, Mapping.release, memoryview reads and writes, cache
reads and writes, ram_addr (exact, interior and foreign pointers), invalidate,
replace and close/reopen, the hit of the last entry from the main thread or
from one of two other threads (the C core's lock-free hit: each thread counts
its hits apart, and the stats must still equal the reference's), on small caches (bucket_shift 12..14, one to four
slots, so chains collide), with holes, a small lock_limit, dummy mode,
translate callbacks, grant rules (``grants=True``: locked requests only,
entries unmapped at their last unlock) and trace hooks (half the caches: then
both must have emitted the same events, host addresses aside, at every step).

After every step both must have given the same results or the same exception
types; host addresses differ between the two, so records are compared by guest
address (and by which records share an address).  Invariants: equal stats and
locked() lists; each cache's lock count equals its records and each record
resolves to its guest address; mapped_bytes is whole buckets; the reference's
own bookkeeping is consistent; guest RAM is identical in both and equal to a
shadow ``bytearray`` kept by the test (except where dummy memory may have
stood in for guest memory, see ``CacheModel.taint``).

Profiles (environment variable ``XMC_MODEL_PROFILE``); the test fails if a
run checks fewer steps than its profile promises, and prints the count and
how often each call succeeded or raised what (run pytest with ``-s``):

- ``ci`` (default, part of the normal suite): 100 sequences of up to 60
  steps, about 5,000 steps, some 10 seconds;
- ``long``: 1,000 sequences of up to 200 steps, over 100,000 steps, a few
  minutes: ``XMC_MODEL_PROFILE=long python -m pytest tests/test_model.py -s``.
"""

from __future__ import annotations

import os
import random
import sys
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule, run_state_machine_as_test

import xenmapcache
import xenmapcache.reference

PAGE = 4096
RAM_SIZE = 256 * 1024
RAM_PAGES = RAM_SIZE // PAGE
TOP = 1 << 64
MAX_HELD = 16

# name: (sequences, most steps per sequence, fewest steps the run must reach)
PROFILES = {
    "ci": (100, 60, 3_000),
    "long": (1_000, 200, 100_000),
}
PROFILE_NAME = os.environ.get("XMC_MODEL_PROFILE", "ci")
EXAMPLES, STEPS_PER_EXAMPLE, MIN_STEPS = PROFILES[PROFILE_NAME]
SETTINGS = settings(
    max_examples=EXAMPLES,
    stateful_step_count=STEPS_PER_EXAMPLE,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    print_blob=True,
)
# Two long-lived threads besides the main one, for hits from other threads.
HIT_THREADS = [ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"model-hitter-{i}") for i in range(2)]
COUNTS = {"checks": 0, "setups": 0, "calls": 0, "events": 0}
OUTCOMES: Counter[str] = Counter()  # "rule: ok" or "rule: ExceptionType", printed at the end


# -- translate callbacks: pure functions of (paddr, size), one log per cache ----


def _offset(paddr: int, size: int) -> int:
    """Somewhere else in (or just past) guest RAM."""
    return (paddr + 0x9000) % (RAM_SIZE + 0x10000)


def _flaky(paddr: int, size: int) -> int:
    if (paddr >> 12) % 3 == 0:
        raise LookupError(f"no translation for {paddr:#x}")
    return _offset(paddr, size)


def _wild(paddr: int, size: int) -> Any:
    """Answers a careless callback might give: out of range, negative, not an int."""
    return [TOP - 1, -5, "0x1000", _offset(paddr, size)][(paddr >> 12) % 4]


TRANSLATES: dict[str | None, Callable[[int, int], Any] | None] = {
    None: None,
    "offset": _offset,
    "flaky": _flaky,
    "wild": _wild,
}


@dataclass(frozen=True)
class Config:
    """One cache configuration, used for both implementations."""

    shift: int
    max_size: int
    lock_limit: int
    dummy: bool
    translate: str | None
    grants: bool = False
    traced: bool = False

    @property
    def bucket(self) -> int:
        return 1 << self.shift


configs = st.builds(
    lambda shift, slots, trim, lock_limit, dummy, translate, grants, traced: Config(
        12 if grants else shift,
        max(PAGE, slots * (1 << (12 if grants else shift)) - trim),
        lock_limit,
        dummy,
        translate,
        grants,
        traced,
    ),
    grants=st.sampled_from([False, False, False, True]),
    traced=st.booleans(),
    shift=st.integers(12, 14),
    slots=st.integers(1, 4),
    trim=st.sampled_from([0, 0, PAGE]),
    lock_limit=st.sampled_from([1, 2, 3, 2**32 - 1]),
    dummy=st.booleans(),
    translate=st.sampled_from(sorted(TRANSLATES, key=str)),
)

holes = st.lists(
    st.builds(
        lambda page, skew, length: (page * PAGE + skew, page * PAGE + skew + length),
        st.integers(0, RAM_PAGES - 1),
        st.sampled_from([0, 0, 1, 2048]),
        st.integers(1, 3 * PAGE),
    ),
    max_size=2,
)


class System:
    """One implementation under test: its module, guest RAM, cache and translate log."""

    def __init__(self, name: str, xmc: ModuleType, ram_holes: list[tuple[int, int]], contents: bytes) -> None:
        self.name = name
        self.xmc = xmc
        self.ram = xmc.GuestRAM(RAM_SIZE, holes=ram_holes)
        os.pwrite(self.ram.fileno(), contents, 0)  # holes included: they must never leak
        self.log: list[tuple[int, int]] = []
        self.events: list[Any] = []  # trace events, when traced
        self.cache: Any = None
        self.translate_fn: Callable[[int, int], Any] | None = None
        self.armed: type[BaseException] | None = None  # the next translate raises it
        self.armed_trace: type[BaseException] | None = None  # the next trace event raises it

    def interrupt(self) -> None:
        """Raise the interrupt armed for translate, once."""
        armed, self.armed = self.armed, None
        if armed is not None:
            raise armed()

    def trace(self, event: Any) -> None:
        """The trace hook: records the event; raises the interrupt armed for it, once."""
        self.events.append(event)
        armed, self.armed_trace = self.armed_trace, None
        if armed is not None:
            raise armed()

    def translate(self, paddr: int, size: int) -> Any:
        """The configured translate, logged; it raises the armed interrupt instead, once."""
        assert self.translate_fn is not None
        self.log.append((paddr, size))
        self.interrupt()
        return self.translate_fn(paddr, size)

    def open(self, cfg: Config) -> None:
        self.log.clear()
        self.translate_fn = TRANSLATES[cfg.translate]
        self.cache = self.xmc.MapCache(
            self.ram,
            bucket_shift=cfg.shift,
            max_size=cfg.max_size,
            translate=None if self.translate_fn is None else self.translate,
            dummy_on_failure=cfg.dummy,
            lock_limit=cfg.lock_limit,
            grants=cfg.grants,
            trace=self.trace if cfg.traced else None,
        )

    def memory(self) -> bytes:
        return os.pread(self.ram.fileno(), RAM_SIZE, 0)


@dataclass
class Held:
    """A locked mapping held in both caches (Mapping objects, or raw addresses)."""

    c: Any
    py: Any
    offset: int  # of the mapping inside its entry (stable across replace)
    entry_size: int
    size: int


def outcome(fn: Callable[[], Any], interrupts: bool = False) -> tuple[bool, Any]:
    try:
        return True, fn()
    except Exception as exc:  # compared between the implementations by the caller
        return False, exc
    except (KeyboardInterrupt, SystemExit) as exc:
        if not interrupts:  # none was armed: a real one
            raise
        return False, exc


def describe(ok: bool, value: Any) -> str:
    if ok:
        return f"returned {value!r}"
    return f"raised {type(value).__name__}({value}) caused by {value.__cause__!r}"


class CacheModel(RuleBasedStateMachine):
    """Two caches, C and reference, one configuration, the same calls."""

    def __init__(self) -> None:
        super().__init__()
        self.c: System | None = None
        self.py: System | None = None
        self.cfg = Config(12, PAGE, 1, False, None)
        self.shadow = bytearray()
        self.tainted: set[int] = set()  # pages whose guest RAM the shadow cannot vouch for
        self.mappings: list[Held] = []  # Mapping objects
        self.raw: list[Held] = []  # map_ptr(lock=True) addresses
        self.groups: list[tuple[Any, Any]] = []  # map_sg results (their members are in mappings)
        self.view: tuple[memoryview, memoryview, Held] | None = None
        self.error: type[BaseException] | None = None  # of the last call that failed on both
        self.recent: list[int] = [0]  # guest addresses asked for lately: reuse makes hits

    # -- helpers ---------------------------------------------------------------

    def systems(self) -> tuple[System, System]:
        assert self.c is not None and self.py is not None
        return self.c, self.py

    def state(self, s: System) -> tuple[Any, ...]:
        """What a failed call must leave as it was: guest RAM, locked list, lock counters."""
        if s.cache is None or s.cache.closed:
            return (s.memory(),)
        st = s.cache.stats()
        return s.memory(), [(r.address, r.paddr, r.size, r.dma, r.tag) for r in s.cache.locked()], st.locked, st.dma_locked

    def both(self, op: Callable[[System], Any], reads_only: bool = False, interrupts: bool = False) -> tuple[Any, Any] | None:
        """Run op on both; same exception type (and cause type) or both succeed.

        Every error changes nothing: after a failed call, each system's guest
        RAM, locked list and lock counters are as they were before it.
        """
        c, py = self.systems()
        before = None if reads_only else (self.state(c), self.state(py))
        ok_c, rc = outcome(lambda: op(c), interrupts)
        ok_py, rpy = outcome(lambda: op(py), interrupts)
        if not ok_c and before is not None:
            assert self.state(c) == before[0], f"C changed state in a call that raised {rc!r}"
        if not ok_py and before is not None:
            assert self.state(py) == before[1], f"the reference changed state in a call that raised {rpy!r}"
        COUNTS["calls"] += 1
        self.error = None if ok_c else type(rc)
        caller = sys._getframe(1)
        while caller.f_code.co_name in {"same", "actual"}:
            caller = caller.f_back  # type: ignore[assignment]
        OUTCOMES[f"{caller.f_code.co_name}: {'ok' if ok_c else type(rc).__name__}"] += 1
        assert ok_c == ok_py, f"C {describe(ok_c, rc)}, reference {describe(ok_py, rpy)}"
        if ok_c:
            return rc, rpy
        assert type(rc) is type(rpy), f"C {describe(ok_c, rc)}, reference {describe(ok_py, rpy)}"
        assert type(rc.__cause__) is type(rpy.__cause__), f"C {describe(ok_c, rc)}, reference {describe(ok_py, rpy)}"
        return None

    def same(self, op: Callable[[System], Any]) -> Any:
        """Run op on both; it must succeed with equal results (op changes nothing)."""
        got = self.both(op, reads_only=True)
        assert got is not None, "expected success"
        assert got[0] == got[1], f"C {got[0]!r} != reference {got[1]!r}"
        return got[0]

    def valid(self, paddr: int, size: int) -> bool:
        """Are all guest pages of [paddr, paddr + max(size, 1)) RAM?"""
        ram = self.systems()[0].ram
        last = (paddr + max(size, 1) - 1) >> 12
        return last < RAM_PAGES and all(ram.page_error(p) == 0 for p in range(paddr >> 12, last + 1))

    def taint(self, paddr: int, size: int) -> None:
        """Dummy memory may stand in for the buckets of [paddr, paddr + size) from now on."""
        shift = self.cfg.shift
        for b in range(paddr >> shift, ((paddr + max(size, 1) - 1) >> shift) + 1):
            self.tainted.update(range(b << (shift - 12), (b + 1) << (shift - 12)))

    def land(self, paddr: int, size: int) -> tuple[str, Any]:
        """Where a request for [paddr, +size) lands: ("ram", paddr) | ("error", type) | ("unknown", None)."""
        if self.valid(paddr, size):
            return "ram", paddr
        fn = TRANSLATES[self.cfg.translate]
        new: Any = None
        if fn is not None:
            try:
                new = fn(paddr, size)
                if type(new) is not int or not 0 <= new < TOP:
                    new = None
            except LookupError:
                new = None
        if self.cfg.dummy:
            # An existing dummy entry may answer before translate is even asked.
            self.taint(paddr, size)
            if new is not None and new + size <= TOP:
                self.taint(new, size)
            return "unknown", None
        if fn is None or new is None:
            return "error", xenmapcache.MappingError
        if new + size > TOP:
            return "error", xenmapcache.InvalidAddress
        if self.valid(new, size):
            return "ram", new
        return "error", xenmapcache.MappingError

    def plan_copy(self, paddr: int, n: int) -> tuple[list[tuple[str, Any, int, int]], Any]:
        """The chunks of a cache read/write: (kind, guest address, length, offset), and the final error."""
        if paddr + n > TOP:
            return [], xenmapcache.InvalidAddress
        if self.cfg.grants and n:  # a copy is an unlocked request
            return [], xenmapcache.MapCacheError
        chunks: list[tuple[str, Any, int, int]] = []
        done, bucket = 0, self.cfg.bucket
        while n:
            chunk = min(n, bucket - (paddr & (bucket - 1)), self.cfg.max_size)
            kind, where = self.land(paddr, chunk)
            if kind == "error":
                return chunks, where
            chunks.append((kind, where, chunk, done))
            paddr, done, n = paddr + chunk, done + chunk, n - chunk
        return chunks, None

    def check_bytes(self, where: int, data: bytes) -> None:
        """``data`` read at guest ``where`` equals the shadow, outside tainted pages."""
        pos = where
        while pos < where + len(data):
            end = min(where + len(data), (pos | (PAGE - 1)) + 1)
            if pos >> 12 not in self.tainted:
                got = data[pos - where : end - where]
                assert got == self.shadow[pos:end], f"guest bytes at {pos:#x} differ from the shadow"
            pos = end

    def store(self, where: int, data: bytes) -> None:
        self.shadow[where : where + len(data)] = data

    def paddrs(self, data: st.DataObject) -> int:
        bucket = self.cfg.bucket
        paddr = data.draw(
            st.one_of(
                st.builds(
                    lambda base, delta: min(max(base + delta, 0), TOP - 1),
                    st.sampled_from(self.recent),
                    st.integers(-PAGE, PAGE),
                ),
                st.integers(0, RAM_SIZE + 4 * bucket - 1),
                st.builds(
                    lambda page, skew: page * PAGE + skew,
                    st.integers(0, RAM_PAGES + 8),
                    st.sampled_from([0, 1, 2047, 4095]),
                ),
                st.integers(TOP - 4 * bucket, TOP - 1),
            ),
            label="paddr",
        )
        self.recent = [paddr, *self.recent[:7]]
        return paddr

    def sizes(self, data: st.DataObject) -> int:
        m = self.cfg.max_size
        return data.draw(
            st.one_of(st.just(0), st.integers(1, m), st.sampled_from([1, PAGE, self.cfg.bucket, m, m + 1])),
            label="size",
        )

    def pattern(self, data: st.DataObject, n: int) -> bytes:
        seed = data.draw(st.integers(0, 2**16), label="seed")
        return random.Random(seed).randbytes(n)

    def address(self, s: System, held: Held) -> int:
        """The host address of a held mapping in system s."""
        h = held.c if s is self.c else held.py
        return h if isinstance(h, int) else int(h.address)

    def actual(self, held: Held) -> int:
        """The guest address a held mapping resolves to now (same in both)."""
        return int(self.same(lambda s: s.cache.ram_addr(self.address(s, held))))

    def entry_of(self, paddr: int, size: int) -> tuple[int, int]:
        """(offset in entry, entry size) of a request that landed at paddr."""
        bucket = self.cfg.bucket
        offset = paddr & (bucket - 1)
        return offset, (offset + max(size, 1) + bucket - 1) & ~(bucket - 1)

    # -- set-up ----------------------------------------------------------------

    @initialize(cfg=configs, ram_holes=holes, seed=st.integers(0, 2**16))
    def setup(self, cfg: Config, ram_holes: list[tuple[int, int]], seed: int) -> None:
        COUNTS["setups"] += 1
        contents = random.Random(seed).randbytes(RAM_SIZE)
        self.shadow = bytearray(contents)
        self.c = System("c", xenmapcache, ram_holes, contents)
        self.py = System("py", xenmapcache.reference, ram_holes, contents)
        self.cfg = cfg
        for s in self.systems():
            s.open(cfg)

    def teardown(self) -> None:
        if self.view is not None:
            self.drop_view()
        for s in (self.c, self.py):
            if s is not None:
                if s.cache is not None:
                    s.cache.close()
                s.ram.close()

    # -- mapping ---------------------------------------------------------------

    @precondition(lambda self: len(self.mappings) < MAX_HELD)
    @rule(data=st.data(), dma=st.booleans(), tag=st.sampled_from([None, "disk", 7]))
    def map_locked(self, data: st.DataObject, dma: bool, tag: Any) -> None:
        paddr, size = self.paddrs(data), self.sizes(data)
        kind, where = self.land(paddr, size) if paddr + size <= TOP and size <= self.cfg.max_size else ("skip", None)
        got = self.both(lambda s: s.cache.map(paddr, size, dma=dma, tag=tag))
        if got is None:
            self.expect_failure(kind, where)
            return
        mc, mp = got
        assert (mc.paddr, mc.size, mc.dma, mc.tag) == (mp.paddr, mp.size, mp.dma, mp.tag) == (paddr, size, dma, tag)
        assert len(memoryview(mc)) == len(memoryview(mp)) == size
        actual = int(self.same(lambda s: s.cache.ram_addr((mc if s is self.c else mp).address)))
        if kind == "ram":
            assert actual == where
        self.mappings.append(Held(mc, mp, *self.entry_of(actual, size), size))

    @precondition(lambda self: len(self.mappings) <= MAX_HELD - 4)
    @rule(data=st.data(), dma=st.booleans(), tag=st.sampled_from([None, "sg", 9]))
    def map_sg(self, data: st.DataObject, dma: bool, tag: Any) -> None:
        """A scatter-gather batch: all of it mapped in both, or none in either."""
        n = data.draw(st.integers(1, 4), label="segments")
        segs = [(self.paddrs(data), self.sizes(data)) for _ in range(n)]
        for paddr, size in segs:
            if paddr + size <= TOP and size <= self.cfg.max_size:
                self.land(paddr, size)  # in dummy mode: where dummy memory may stand in
        got = self.both(lambda s: s.cache.map_sg(segs, dma=dma, tag=tag))
        if got is None:
            return  # same_state then checks that nothing stayed locked and the books agree
        gc, gp = got
        assert len(gc) == len(gp) == n
        for mc, mp, (paddr, size) in zip(gc, gp, segs, strict=True):
            assert (mc.paddr, mc.size, mc.dma, mc.tag) == (mp.paddr, mp.size, mp.dma, mp.tag) == (paddr, size, dma, tag)
            actual = int(self.same(lambda s: s.cache.ram_addr((mc if s is self.c else mp).address)))
            self.mappings.append(Held(mc, mp, *self.entry_of(actual, size), size))
        self.groups.append((gc, gp))

    @precondition(lambda self: self.groups)
    @rule(data=st.data())
    def release_group(self, data: st.DataObject) -> None:
        gc, gp = data.draw(st.sampled_from(self.groups), label="group")
        self.both(lambda s: (gc if s is self.c else gp).release())
        assert gc.released == gp.released
        assert [m.released for m in gc] == [m.released for m in gp]
        if gc.released:
            self.groups.remove((gc, gp))
            self.mappings = [h for h in self.mappings if not h.c.released]

    def expect_failure(self, kind: str, where: Any) -> None:
        """A map failed on both: was that the failure land() foresaw?"""
        if kind == "error":
            assert self.error is where, f"expected {where.__name__}, got {self.error}"
        elif kind == "ram":
            assert self.error is xenmapcache.LockOverflow, f"a map of RAM failed with {self.error}"

    @rule(data=st.data(), lock=st.booleans(), dma=st.booleans())
    def map_ptr(self, data: st.DataObject, lock: bool, dma: bool) -> None:
        if lock and len(self.raw) >= MAX_HELD:
            lock = False
        paddr, size = self.paddrs(data), self.sizes(data)
        kind, where = self.land(paddr, size) if paddr + size <= TOP and size <= self.cfg.max_size else ("skip", None)
        if self.cfg.grants and not lock and kind != "skip":
            kind, where = "error", xenmapcache.MapCacheError
        got = self.both(lambda s: s.cache.map_ptr(paddr, size, lock=lock, dma=dma))
        if got is None:
            self.expect_failure(kind, where)
            assert lock or self.error is not xenmapcache.LockOverflow
            return
        ac, ap = got
        actual = int(self.same(lambda s: s.cache.ram_addr(ac if s is self.c else ap)))
        if kind == "ram":
            assert actual == where
        offset, entry_size = self.entry_of(actual, size)
        # An interior pointer anywhere in the entry, while it is surely alive.
        delta = data.draw(st.integers(-offset, entry_size - offset - 1), label="delta")
        assert self.same(lambda s: s.cache.ram_addr((ac if s is self.c else ap) + delta)) == actual + delta
        if lock:
            self.raw.append(Held(ac, ap, offset, entry_size, size))

    @rule(data=st.data(), thread=st.sampled_from([None, None, 0, 1]))
    def map_ptr_fast(self, data: st.DataObject, thread: int | None) -> None:
        """QEMU's most common call: an unlocked size-0 map near the last one (the fast path),
        from this thread or another (``thread``)."""
        base = data.draw(st.sampled_from(self.recent), label="near")
        paddr = (base & ~(PAGE - 1)) + data.draw(st.integers(0, PAGE - 1), label="offset")
        kind, where = self.land(paddr, 0) if paddr < TOP else ("skip", None)
        if self.cfg.grants:
            kind, where = "error", xenmapcache.MapCacheError
        if thread is None:
            got = self.both(lambda s: s.cache.map_ptr(paddr))
        else:
            got = self.both(lambda s: HIT_THREADS[thread].submit(s.cache.map_ptr, paddr).result())
        if got is None:
            self.expect_failure(kind, where)
            return
        actual = int(self.same(lambda s: s.cache.ram_addr(got[0] if s is self.c else got[1])))
        if kind == "ram":
            assert actual == where

    @precondition(lambda self: self.mappings)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        held = data.draw(st.sampled_from(self.mappings), label="mapping")
        self.both(lambda s: (held.c if s is self.c else held.py).release())
        assert held.c.released == held.py.released
        if held.c.released:
            self.mappings.remove(held)
            assert self.both(lambda s: (held.c if s is self.c else held.py).release()) is not None  # no-op

    @rule(data=st.data())
    def unlock(self, data: st.DataObject) -> None:
        choices: list[tuple[int, int]] = [(h.c, h.py) for h in self.raw]
        choices += [(h.c.address, h.py.address) for h in self.mappings]
        choices += [(0, 0), (2**64 - 1, 2**64 - 1)]
        ac, ap = data.draw(st.sampled_from(choices), label="address")
        raw_here = [h for h in self.raw if h.c == ac]
        got = self.both(lambda s: s.cache.unlock(ac if s is self.c else ap))
        if got is None:
            return
        if raw_here:  # a raw record at the address goes first
            self.raw.remove(raw_here[-1])
            return
        released = [h for h in self.mappings if h.c.released or h.py.released]
        assert len(released) == 1 and released[0].c.released and released[0].py.released
        self.mappings.remove(released[0])

    # -- memory through Mappings and through the cache ---------------------------

    def accessible(self, data: st.DataObject) -> tuple[Held, int] | None:
        """A Mapping whose pages are surely host-accessible, and its guest address."""
        held = data.draw(st.sampled_from(self.mappings), label="mapping")
        if held.size == 0:
            return None
        where = self.actual(held)
        # Pages that are not RAM hold dummy memory (see same_state); leave them be.
        return (held, where) if self.valid(where, held.size) else None

    @precondition(lambda self: self.mappings)
    @rule(data=st.data(), write=st.booleans())
    def view_access(self, data: st.DataObject, write: bool) -> None:
        """Write into a Mapping's memoryview, or read it, in both caches."""
        picked = self.accessible(data)
        if picked is None:
            return
        held, where = picked
        if write:
            start = data.draw(st.integers(0, held.size - 1), label="start")
            chunk = self.pattern(data, data.draw(st.integers(1, held.size - start), label="length"))
            for m in (held.c, held.py):
                with memoryview(m) as view:
                    view[start : start + len(chunk)] = chunk
            self.store(where + start, chunk)
            return
        with memoryview(held.c) as vc, memoryview(held.py) as vp:
            assert vc.format == vp.format == "B" and not vc.readonly
            assert bytes(vc) == bytes(vp)
            self.check_bytes(where, bytes(vc))

    @precondition(lambda self: self.mappings and self.view is None)
    @rule(data=st.data())
    def hold_view(self, data: st.DataObject) -> None:
        held = data.draw(st.sampled_from(self.mappings), label="mapping")
        self.view = (memoryview(held.c), memoryview(held.py), held)
        # While a view is exported the mapping cannot be released.
        got = self.both(lambda s: (held.c if s is self.c else held.py).release())
        assert got is None and not held.c.released and not held.py.released

    @precondition(lambda self: self.view is not None)
    @rule()
    def drop_view(self) -> None:
        assert self.view is not None
        self.view[0].release()
        self.view[1].release()
        self.view = None

    @rule(data=st.data())
    def read(self, data: st.DataObject) -> None:
        paddr = self.paddrs(data)
        n = data.draw(st.integers(0, 3 * self.cfg.bucket), label="n")
        plan, error = self.plan_copy(paddr, n)
        got = self.both(lambda s: s.cache.read(paddr, n))
        if not self.cfg.dummy:
            assert self.error is error, f"expected {error}, got {self.error}"
        if got is None:
            return
        assert got[0] == got[1]
        assert len(got[0]) == n
        for kind, where, chunk, done in plan:
            if kind == "ram":
                self.check_bytes(where, got[0][done : done + chunk])

    @rule(data=st.data())
    def write(self, data: st.DataObject) -> None:
        paddr = self.paddrs(data)
        payload = self.pattern(data, data.draw(st.integers(0, 3 * self.cfg.bucket), label="n"))
        plan, error = self.plan_copy(paddr, len(payload))
        ok = self.both(lambda s: s.cache.write(paddr, payload)) is not None
        if not self.cfg.dummy:
            assert self.error is error, f"expected {error}, got {self.error}"
        if not ok:
            return  # a failed write writes nothing (both() checked guest RAM)
        for kind, where, chunk, done in plan:
            if kind == "ram":
                self.store(where, payload[done : done + chunk])

    # -- interrupting callbacks --------------------------------------------------------

    CALLS = ["map", "map_sg", "map_ptr", "read", "write"]

    def interrupted(
        self,
        data: st.DataObject,
        call: str,
        hook: str,
        interrupt: type[BaseException],
        held: Held | None = None,
        group: tuple[Any, Any] | None = None,
    ) -> tuple[Any, bool, list[tuple[str, Any, int, int]], Any, bytes]:
        """Make ``call`` on both with ``hook`` ("armed": translate, or
        "armed_trace") set to raise ``interrupt`` once; (what both() gave,
        whether the hook raised, the write's plan and error, its payload)."""
        paddr, size = self.paddrs(data), self.sizes(data)
        payload = self.pattern(data, size) if call == "write" else b""
        plan, error = self.plan_copy(paddr, size) if call == "write" else ([], None)
        if call in ("map", "map_sg", "map_ptr") and paddr + size <= TOP and size <= self.cfg.max_size:
            self.land(paddr, size)  # in dummy mode: where dummy memory may stand in
        ops: dict[str, Callable[[System], Any]] = {
            "map": lambda s: s.cache.map(paddr, size, tag="irq"),
            "map_sg": lambda s: s.cache.map_sg([(paddr, size)], tag="irq"),
            "map_ptr": lambda s: s.cache.map_ptr(paddr, size, lock=True),
            "read": lambda s: s.cache.read(paddr, size),
            "write": lambda s: s.cache.write(paddr, payload),
            "release": lambda s: getattr(held, s.name).release(),
            "release_group": lambda s: (group[0] if s is self.c else group[1]).release(),  # type: ignore[index]
            "unlock": lambda s: s.cache.unlock(getattr(held, s.name)),
        }
        for s in self.systems():
            setattr(s, hook, interrupt)
        try:  # a call that raises the interrupt has changed nothing (both() checks)
            got = self.both(ops[call], interrupts=True)
            fired = [getattr(s, hook) is None for s in self.systems()]
        finally:
            for s in self.systems():
                setattr(s, hook, None)
        assert fired[0] == fired[1], f"{hook} raised in one implementation only"
        return got, fired[0], plan, error, payload

    def give_back(self, call: str, got: Any) -> None:
        """Unlock what an interrupt rule's call locked (in both)."""
        if call in ("map", "map_sg"):
            self.both(lambda s: got[0 if s is self.c else 1].release())
        elif call == "map_ptr":
            self.both(lambda s: s.cache.unlock(got[0 if s is self.c else 1]))

    def wrote(self, plan: list[tuple[str, Any, int, int]], payload: bytes) -> None:
        for kind, where, chunk, done in plan:
            if kind == "ram":
                self.store(where, payload[done : done + chunk])

    @precondition(lambda self: self.cfg.translate is not None)
    @rule(data=st.data(), interrupt=st.sampled_from([KeyboardInterrupt, SystemExit]), call=st.sampled_from(CALLS))
    def interrupted_translate(self, data: st.DataObject, interrupt: type[BaseException], call: str) -> None:
        """translate raises an interrupt: the call raises it as it is, having
        changed nothing (both() checks), or never needed translate."""
        got, fired, plan, _, payload = self.interrupted(data, call, "armed", interrupt)
        if got is None:
            assert self.error is interrupt or not fired, f"{call} raised {self.error} for a {interrupt.__name__}"
            return
        assert not fired, f"{call} succeeded although translate raised {interrupt.__name__}"
        if call == "read":
            assert got[0] == got[1]
        elif call == "write":
            self.wrote(plan, payload)
        self.give_back(call, got)

    @precondition(lambda self: self.cfg.traced)
    @rule(
        data=st.data(),
        interrupt=st.sampled_from([KeyboardInterrupt, SystemExit]),
        call=st.sampled_from([*CALLS, "release", "release_group", "unlock"]),
    )
    def interrupted_trace(self, data: st.DataObject, interrupt: type[BaseException], call: str) -> None:
        """The trace hook raises an interrupt on the call's first event: the
        call raises it as it is, having changed nothing (both() checks): a
        read, a write or an unlock (of a Mapping, a group or a raw lock) stops
        before its effect, a map gives back what it locked."""
        held, group = None, None
        if call == "release":
            held = data.draw(st.sampled_from(self.mappings), label="mapping") if self.mappings else None
            if held is None or held.c.released or (self.view is not None and self.view[2] is held):
                return
        elif call == "release_group":
            group = data.draw(st.sampled_from(self.groups), label="group") if self.groups else None
            if group is None or (self.view is not None and any(self.view[2].c is m for m in group[0])):
                return
        elif call == "unlock":
            held = data.draw(st.sampled_from(self.raw), label="raw") if self.raw else None
            if held is None:
                return
        got, fired, plan, error, payload = self.interrupted(data, call, "armed_trace", interrupt, held, group)
        if fired:
            assert got is None and self.error is interrupt, f"{call} ended with {self.error} for a {interrupt.__name__}"
        if call == "release":
            assert held is not None and held.c.released == held.py.released
            assert held.c.released is not fired
            if held.c.released:
                self.mappings.remove(held)
        elif call == "release_group":
            assert group is not None and group[0].released == group[1].released
            assert [m.released for m in group[0]] == [m.released for m in group[1]]
            if group[0].released:
                self.groups.remove(group)
                self.mappings = [h for h in self.mappings if not h.c.released]
        elif call == "unlock":
            if got is not None:
                self.raw.remove(held)  # type: ignore[arg-type]
        elif call == "write" and error is None and got is not None:
            self.wrote(plan, payload)
        elif got is not None:
            self.give_back(call, got)

    # -- reverse lookups ---------------------------------------------------------

    @precondition(lambda self: self.mappings or self.raw)
    @rule(data=st.data())
    def ram_addr_interior(self, data: st.DataObject) -> None:
        held = data.draw(st.sampled_from(self.mappings + self.raw), label="held")
        delta = data.draw(st.integers(-held.offset, held.entry_size - held.offset - 1), label="delta")
        base = self.actual(held)
        assert self.same(lambda s: s.cache.ram_addr(self.address(s, held) + delta)) == base + delta

    @rule(which=st.sampled_from(["zero", "one", "top", "heap"]))
    def ram_addr_foreign(self, which: str) -> None:
        buf = bytearray(16)
        address = {"zero": 0, "one": 1, "top": 2**64 - 1, "heap": id(buf)}[which]
        assert self.both(lambda s: s.cache.ram_addr(address)) is None

    # -- invalidate, replace, close --------------------------------------------------

    @rule()
    def invalidate(self) -> None:
        caught = {}

        def run(s: System) -> list[Any]:
            with warnings.catch_warnings(record=True) as seen:
                warnings.simplefilter("always")
                in_flight: list[Any] = s.cache.invalidate()
            caught[s.name] = [w for w in seen if issubclass(w.category, xenmapcache.DMAMappingWarning)]
            return in_flight

        got = self.both(run)
        assert got is not None
        key = [(r.paddr, r.size, r.dma, r.tag) for r in got[0]]
        assert key == [(r.paddr, r.size, r.dma, r.tag) for r in got[1]]
        assert all(dma for _, _, dma, _ in key)
        assert len(caught["c"]) == len(caught["py"]) == len(key)

    @rule(data=st.data(), source=st.sampled_from(["held", "entry", "entry", "random"]))
    def replace(self, data: st.DataObject, source: str) -> None:
        pool = self.mappings + self.raw
        bucket = self.cfg.bucket
        if source == "random" or not pool:
            old, size = self.paddrs(data), self.sizes(data)
        elif source == "held":  # exactly a locked mapping's range
            held = data.draw(st.sampled_from(pool), label="held")
            old, size = self.actual(held), held.size
        else:  # another range of a locked mapping's entry (the same entry size)
            held = data.draw(st.sampled_from(pool), label="held")
            base = self.actual(held) - held.offset
            off = data.draw(st.integers(0, held.entry_size - 1), label="offset")
            if held.entry_size > bucket:
                size = held.entry_size - off
            else:
                size = data.draw(st.integers(0, bucket - off), label="size")
            old = base + off
        # Buckets with pages that are not RAM: moving there leaves some pages unmapped.
        spotty = [lo & ~(bucket - 1) for lo, _ in self.systems()[0].ram.holes] + [RAM_SIZE - bucket]
        new = data.draw(
            st.one_of(
                # The same offset in another bucket of RAM: the usual case.
                st.integers(0, RAM_SIZE // bucket - 1).map(lambda b: b * bucket + (old & (bucket - 1))),
                st.sampled_from(spotty).map(lambda b: b + (old & (bucket - 1))),
                st.integers(0, RAM_SIZE - 1),
                st.integers(TOP - 2 * bucket, TOP - 1),
                st.just(TOP - max(size, 1)),  # ends at 2**64; the entry may not fit
                st.integers(0, RAM_SIZE // bucket - 1).map(lambda b: b * bucket + bucket - 1),  # may overhang
            ),
            label="new",
        )
        got = self.both(lambda s: s.cache.replace(old, new, size))
        if got is not None:
            assert self.same(lambda s: s.cache.ram_addr(got[0] if s is self.c else got[1])) == new
        for h in self.mappings:
            assert h.c.paddr == h.py.paddr

    @rule(cfg=configs)
    def close_and_reopen(self, cfg: Config) -> None:
        c, py = self.systems()
        if self.view is not None:
            assert self.both(lambda s: s.cache.close()) is None  # BufferError, nothing closed
            assert not c.cache.closed and not py.cache.closed
            self.drop_view()
        self.both(lambda s: s.cache.close())
        assert c.cache.closed and py.cache.closed
        assert all(h.c.released and h.py.released for h in self.mappings)
        assert self.both(lambda s: s.cache.read(0, 1)) is None  # a closed cache refuses work
        assert all(gc.released and gp.released for gc, gp in self.groups)
        self.mappings.clear()
        self.raw.clear()
        self.groups.clear()
        # No dummy memory is left: what guest RAM holds now is the truth.
        memory = c.memory()
        assert memory == py.memory()
        for page in self.tainted:
            self.shadow[page * PAGE : (page + 1) * PAGE] = memory[page * PAGE : (page + 1) * PAGE]
        self.tainted.clear()
        self.cfg = cfg
        for s in (c, py):
            s.open(cfg)

    # -- invariants ------------------------------------------------------------------

    @invariant()
    def same_state(self) -> None:
        if self.c is None:
            return
        COUNTS["checks"] += 1  # after every rule, the set-up included
        c, py = self.systems()
        # The same events (host addresses differ: only whether there was one).
        traces = [[(e.name, e.paddr, e.size, e.tag, e.dma, e.ok, e.old_paddr, e.address != 0) for e in s.events] for s in (c, py)]
        c.events.clear()
        py.events.clear()
        assert traces[0] == traces[1], f"C traced {traces[0]}, reference {traces[1]}"
        COUNTS["events"] += len(traces[0])
        stats = self.same(lambda s: s.cache.stats())
        assert c.log == py.log, "translate was called differently"
        records = self.both(lambda s: s.cache.locked(), reads_only=True)
        assert records is not None
        rc, rpy = records
        assert [(r.paddr, r.size, r.dma, r.tag) for r in rc] == [(r.paddr, r.size, r.dma, r.tag) for r in rpy]
        # Records share an address in one exactly when they do in the other.
        assert [[a.address == b.address for b in rc] for a in rc] == [[a.address == b.address for b in rpy] for a in rpy]
        assert stats.locked == len(rc)
        assert stats.dma_locked == sum(r.dma for r in rc)
        assert stats.mapped_bytes % self.cfg.bucket == 0
        assert stats.mapped_bytes >= stats.entries * self.cfg.bucket
        assert (stats.entries == 0) == (stats.mapped_bytes == 0)
        for s, recs in ((c, rc), (py, rpy)):
            for r in recs:
                assert s.cache.ram_addr(r.address) == r.paddr
        for r in rc:
            # A locked mapping stays on memory it can use: guest RAM, or dummy
            # memory (tainted pages).  Were it moved onto pages that cannot be
            # mapped, touching it would be a segmentation fault.
            if not self.valid(r.paddr, r.size):
                pages = range(r.paddr >> 12, ((r.paddr + max(r.size, 1) - 1) >> 12) + 1)
                assert all(p in self.tainted for p in pages), f"locked mapping of {r.paddr:#x} on pages not RAM"
        self.check_reference_books(stats)

    def check_reference_books(self, stats: Any) -> None:
        """The reference's own bookkeeping adds up (and so the C stats it equals)."""
        state = self.systems()[1].cache._core._st
        live = list(state.live)
        assert stats.entries == len(live) == len(state.by_start) == len(state.starts)
        assert stats.mapped_bytes == sum(e.size for e in live)
        assert stats.locked == sum(e.lock for e in live) == len(list(self.systems()[1].cache._core._ages()))
        assert state.starts == sorted(e.vaddr for e in live)
        assert sorted(id(e) for chain in state.slots.values() for e in chain) == sorted(id(e) for e in live)
        assert state.last is None or state.last in state.live
        if self.cfg.grants:  # an entry lives exactly as long as it is locked
            assert state.last is None and all(e.lock > 0 for e in live)

    @invariant()
    def guest_ram_matches_the_shadow(self) -> None:
        if self.c is None:
            return
        c, py = self.systems()
        memory = c.memory()
        assert memory == py.memory(), "the two guest RAMs differ"
        if not self.tainted:
            assert memory == self.shadow
            return
        for page in range(RAM_PAGES):
            if page not in self.tainted:
                lo = page * PAGE
                assert memory[lo : lo + PAGE] == self.shadow[lo : lo + PAGE], f"guest page {page} differs"


def test_c_core_agrees_with_the_reference() -> None:
    """Run the state machine under the selected profile and check how far it got."""
    COUNTS.update(checks=0, setups=0, calls=0, events=0)
    OUTCOMES.clear()
    run_state_machine_as_test(CacheModel, settings=SETTINGS)
    steps = COUNTS["checks"] - COUNTS["setups"]
    print(
        f"\nmodel profile {PROFILE_NAME!r}: {COUNTS['setups']} sequences, {steps} steps checked, "
        f"{COUNTS['calls']} calls compared, {COUNTS['events']} trace events compared"
    )
    for what, n in sorted(OUTCOMES.items()):
        print(f"  {n:8d}  {what}")
    assert steps >= MIN_STEPS
