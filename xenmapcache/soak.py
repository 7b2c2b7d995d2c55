"""``python -m xenmapcache soak``: mixed traffic for a long time, showing that nothing drifts.

Worker threads, and forked children one after another, drive a mixed
workload through two caches of different geometry (few slots, so every
request collides) over one guest RAM with holes:

- locked ``Mapping`` objects (DMA and device memory, tags) read and written
  through memoryviews, and raw locked pointers read and written through
  ctypes, each checked against the worker's shadow of its own pages;
- ``read`` and ``write`` spans across buckets, checked against the shadow;
- writes that run into a hole, which must fail and write nothing;
- reads of a constant region, also through a translated hole, while the
  entries of that region are moved around by ``replace``;
- ``invalidate`` with DMA in flight; private caches created, used and closed
  (or dropped for the garbage collector).

The main thread samples, once a second, the resident set size, the open file
descriptors, the lines of ``/proc/self/maps`` and the caches' ``stats()``.
The run fails (exit status 1) when any byte differs from its shadow, a child
fails, or a sample grows without bound: after a warm-up, the floor (lower
decile) of the last quarter of the run must stay within a tolerance of the
floor of the second quarter (a leak of one mapping per second shows; the
sawtooth of caches left to the garbage collector does not).
"""

from __future__ import annotations

import ctypes
import faulthandler
import gc
import hashlib
import importlib
import logging
import os
import random
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, TextIO

from . import _cli

MIB = 1 << 20
PAGE = 4096
RAM_SIZE = 64 * MIB
REGION = 4 * MIB  # pages each worker thread owns: [i * REGION, (i + 1) * REGION)
MAX_THREADS = 5
MAX_SECONDS = 7 * 86400.0  # a week: longer is a typo, not a soak
LOG_EVERY = 10  # seconds between progress lines when stderr is not a terminal
CHILD_BASE, CHILD_SIZE = 20 * MIB, 4 * MIB  # the forked children's pages
CONST_BASE, CONST_SIZE = 24 * MIB, 8 * MIB  # never written; replace moves its entries
FENCE = 40 * MIB  # a hole of three pages: writes that reach it must write nothing (below it: zeros)
FENCE_END = FENCE + 3 * PAGE
ALIAS_BASE, ALIAS_SIZE = 48 * MIB, 8 * MIB  # a hole, translated onto the constant region
HOLES = [(FENCE, FENCE_END), (ALIAS_BASE, ALIAS_BASE + ALIAS_SIZE)]
MAX_HELD = 4

# Drift tolerances: how far the last quarter's floor may exceed the second quarter's.
TOLERANCE = {
    "rss_mib": (8.0, 0.10),  # absolute slack, relative slack
    "fds": (4.0, 0.0),
    "maps_lines": (48.0, 0.05),
    "entries": (16.0, 0.25),
    "locked": (2.0 * MAX_HELD * MAX_THREADS, 0.0),
}


def constant(base: int, n: int) -> bytes:
    """The bytes of the constant region at guest ``base`` (a function of the address)."""
    return bytes(((p >> 12) * 31 + (p & 0xFFF) * 7 + 1) & 0xFF for p in range(base, base + n))


class Mismatch(AssertionError):
    """A byte read back differs from what the soak wrote (or from the constant)."""


@dataclass
class Counters:
    """What one worker did."""

    ops: int = 0
    bytes_checked: int = 0
    failed_writes: int = 0
    caches: int = 0
    errors: list[str] = field(default_factory=list)


class Soak:
    """The shared state of one run: guest RAM, the caches, the constant region."""

    def __init__(self, xmc: ModuleType, seed: int) -> None:
        self.xmc = xmc
        self.seed = seed
        self.ram = xmc.GuestRAM(RAM_SIZE, holes=HOLES)
        self.const = constant(CONST_BASE, CONST_SIZE)
        os.pwrite(self.ram.fileno(), self.const, CONST_BASE)
        # Two geometries, few slots: every request collides with others.
        self.caches = [
            xmc.MapCache(self.ram, bucket_shift=16, max_size=1 * MIB, translate=self.translate, lock_limit=64),
            xmc.MapCache(self.ram, bucket_shift=14, max_size=256 * 1024, translate=self.translate),
        ]
        self.stop = threading.Event()

    @staticmethod
    def translate(paddr: int, size: int) -> int:
        """The alias hole reads as the constant region; anything else is not RAM."""
        if ALIAS_BASE <= paddr < ALIAS_BASE + ALIAS_SIZE:
            return CONST_BASE + (paddr - ALIAS_BASE)
        raise LookupError(f"no translation for {paddr:#x}")

    def close(self) -> None:
        for cache in self.caches:
            cache.close()
        self.ram.close()


class Worker:
    """One thread's (or child's) workload over its own pages [base, base + size)."""

    def __init__(self, soak: Soak, base: int, size: int, seed: int, shadow: bytearray | None = None) -> None:
        self.soak = soak
        self.base, self.size = base, size
        self.rng = random.Random(seed)
        self.shadow = shadow if shadow is not None else bytearray(size)
        self.held: list[tuple[Any, Any]] = []  # (cache, Mapping)
        self.count = Counters()
        self.caches = soak.caches

    # -- helpers ---------------------------------------------------------------

    def cache(self) -> Any:
        return self.rng.choice(self.caches)

    def span(self, most: int) -> tuple[int, int]:
        """A random span of at most ``most`` bytes of this worker's pages: (offset, length)."""
        n = self.rng.randint(1, most)
        return self.rng.randrange(0, self.size - n), n

    def check(self, got: bytes, want: bytes | bytearray, what: str) -> None:
        if got != want:
            at = next(i for i in range(len(want)) if got[i] != want[i])
            raise Mismatch(f"{what}: byte {at} of {len(want)} differs ({got[at]:#x} != {want[at]:#x})")
        self.count.bytes_checked += len(want)

    # -- operations ------------------------------------------------------------------

    def op_write(self) -> None:
        off, n = self.span(3 * 65536)
        data = self.rng.randbytes(n)
        self.cache().write(self.base + off, data)
        self.shadow[off : off + n] = data

    def op_read(self) -> None:
        off, n = self.span(3 * 65536)
        self.check(self.cache().read(self.base + off, n), self.shadow[off : off + n], "read")

    def op_map(self) -> None:
        if len(self.held) >= MAX_HELD:
            self.op_release()
        cache = self.cache()
        off, n = self.span(16 * 1024)
        dma = self.rng.random() < 0.5
        m = cache.map(self.base + off, n, dma=dma, tag=("dma" if dma else "device", off))
        with memoryview(m) as view:
            self.check(bytes(view), self.shadow[off : off + n], "Mapping view")
            data = self.rng.randbytes(n)
            view[:] = data
        self.shadow[off : off + n] = data
        self.held.append((cache, (m, off)))

    def op_release(self) -> None:
        if self.held:
            _, (m, off) = self.held.pop(self.rng.randrange(len(self.held)))
            with memoryview(m) as view:
                self.check(bytes(view), self.shadow[off : off + m.size], "Mapping view at release")
            m.release()

    def op_raw(self) -> None:
        cache = self.cache()
        off, n = self.span(8 * 1024)
        address = cache.map_ptr(self.base + off, n, lock=True, dma=self.rng.random() < 0.5)
        try:
            if cache.ram_addr(address) != self.base + off:
                raise Mismatch("ram_addr of a raw locked mapping")
            self.check(ctypes.string_at(address, n), self.shadow[off : off + n], "raw pointer")
            data = self.rng.randbytes(n)
            ctypes.memmove(address, data, n)
            self.shadow[off : off + n] = data
        finally:
            cache.unlock(address)

    def op_fenced_write(self) -> None:
        """A write running into the fence hole: refused, and nothing written."""
        before = self.rng.randint(1, 2 * 65536)
        start = FENCE - before
        try:
            self.cache().write(start, b"\xee" * (before + self.rng.randint(1, 2 * PAGE)))
        except self.soak.xmc.MappingError:
            self.count.failed_writes += 1
        else:
            raise Mismatch("a write into a hole succeeded")
        if os.pread(self.soak.ram.fileno(), before, start) != bytes(before):
            raise Mismatch("a failed write changed guest memory")

    def op_const(self) -> None:
        off = self.rng.randrange(0, CONST_SIZE - 65536)
        n = self.rng.randint(1, 65536)
        base = ALIAS_BASE if self.rng.random() < 0.3 else CONST_BASE  # through translate, or not
        self.check(self.cache().read(base + off, n), self.soak.const[off : off + n], "constant region")

    def op_replace(self) -> None:
        cache = self.cache()
        bucket = 1 << cache.bucket_shift
        buckets = CONST_SIZE // bucket
        old = CONST_BASE + self.rng.randrange(buckets) * bucket
        new = CONST_BASE + self.rng.randrange(buckets) * bucket
        try:
            cache.replace(old, new, 0)
        except self.soak.xmc.UnknownMapping:
            pass  # no entry for that bucket just now

    def op_invalidate(self) -> None:
        self.cache().invalidate()

    def op_private_cache(self) -> None:
        """A cache of its own, created, used, and closed or left to the collector."""
        xmc = self.soak.xmc
        cache = xmc.MapCache(self.soak.ram, bucket_shift=self.rng.choice([12, 14, 16]), max_size=MIB)
        self.count.caches += 1
        off, n = self.span(2 * 65536)
        data = self.rng.randbytes(n)
        cache.write(self.base + off, data)
        self.shadow[off : off + n] = data
        m = cache.map(self.base + off, min(n, 4096), dma=True)
        self.check(bytes(memoryview(m)), self.shadow[off : off + min(n, 4096)], "private cache")
        if self.rng.random() < 0.5:
            m.release()
            cache.close()
        # else: dropped with the mapping held; the garbage collector unmaps it

    OPS: list[tuple[str, float]] = [
        ("op_write", 20),
        ("op_read", 20),
        ("op_map", 12),
        ("op_release", 10),
        ("op_raw", 12),
        ("op_fenced_write", 4),
        ("op_const", 12),
        ("op_replace", 3),
        ("op_invalidate", 1),
        ("op_private_cache", 0.5),
    ]

    def step(self) -> None:
        names, weights = zip(*self.OPS, strict=True)
        name = self.rng.choices(names, weights)[0]
        getattr(self, name)()
        self.count.ops += 1

    def finish(self) -> None:
        """Release what is held and check every page once more."""
        while self.held:
            self.op_release()
        for off in range(0, self.size, 256 * 1024):
            n = min(256 * 1024, self.size - off)
            self.check(self.caches[0].read(self.base + off, n), self.shadow[off : off + n], "final read")

    def run(self, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                self.step()
            self.finish()
        except Exception as exc:  # reported in the summary; the run fails
            self.count.errors.append(f"{type(exc).__name__}: {exc}")
            stop.set()


def child_main(soak: Soak, seed: int, seconds: float, write_fd: int) -> int:
    """A forked child: the inherited caches, then one of its own, on the children's pages."""
    # A hang prints where it is stuck and exits 1, which the parent reports.
    faulthandler.dump_traceback_later(seconds + 30, exit=True)
    xmc = soak.xmc
    inherited = "idle"
    for cache in soak.caches:
        try:
            cache.stats()
        except xmc.MapCacheError as exc:
            if "forked" not in str(exc):
                raise
            inherited = "busy"  # a parent thread was inside it at fork(): refused at once
    shadow = bytearray(os.pread(soak.ram.fileno(), CHILD_SIZE, CHILD_BASE))
    worker = Worker(soak, CHILD_BASE, CHILD_SIZE, seed, shadow)
    own = xmc.MapCache(soak.ram, bucket_shift=15, max_size=512 * 1024, translate=soak.translate)
    worker.caches = [own] + ([c for c in soak.caches] if inherited == "idle" else [])
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        worker.step()
    worker.finish()
    own.close()
    digest = hashlib.sha256(worker.shadow).hexdigest()
    os.write(write_fd, f"{inherited} {worker.count.ops} {digest}\n".encode())
    return 0


@dataclass
class Child:
    pid: int
    read_fd: int
    started: float


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MIB


def sample(soak: Soak, t: float) -> dict[str, float]:
    stats = [c.stats() for c in soak.caches]
    with open("/proc/self/maps") as f:
        maps_lines = sum(1 for _ in f)
    return {
        "t": t,
        "rss_mib": rss_mib(),
        "fds": float(len(os.listdir("/proc/self/fd"))),
        "maps_lines": float(maps_lines),
        "entries": float(sum(s.entries for s in stats)),
        "locked": float(sum(s.locked for s in stats)),
        "mapped_mib": sum(s.mapped_bytes for s in stats) / MIB,
    }


def floor(values: list[float]) -> float:
    """The lower decile: where a sawtooth (garbage collection) comes back down to."""
    ordered = sorted(values)
    return ordered[len(ordered) // 10]


def drift(samples: list[dict[str, float]]) -> list[str]:
    """The metrics whose floor in the last quarter exceeds their floor in the second.

    A floor (the lower decile) rather than a mean: caches left to the garbage
    collector make the mappings a sawtooth, which a leak lifts as a whole.
    """
    n = len(samples)
    if n < 8:
        return []
    second = samples[n // 4 : n // 2]
    last = samples[3 * n // 4 :]
    grown = []
    for key, (slack, rel) in TOLERANCE.items():
        early = floor([s[key] for s in second])
        late = floor([s[key] for s in last])
        if late > early * (1 + rel) + slack:
            grown.append(f"{key}: {early:.1f} -> {late:.1f}")
    return grown


def verdict(failures: list[str]) -> str:
    """What the run found, in one line: its last line and its plot's title."""
    if not failures:
        return "ok, nothing drifted and every byte matched"
    return f"FAILED: {failures[0]}" + (f" (and {len(failures) - 1} more)" if len(failures) > 1 else "")


def plot(samples: list[dict[str, float]], path: str, failures: list[str]) -> None:
    """RSS, mappings and descriptors over time, in a PNG (needs matplotlib), titled with the verdict."""

    plt = _cli.pyplot()
    minutes = [s["t"] / 60 for s in samples]
    fig, axes = plt.subplots(3, 1, figsize=(10, 8), sharex=True)
    axes[0].plot(minutes, [s["rss_mib"] for s in samples], label="resident set (MiB)")
    axes[0].plot(minutes, [s["mapped_mib"] for s in samples], label="mapped by the two caches (MiB)")
    axes[1].plot(minutes, [s["maps_lines"] for s in samples], label="/proc/self/maps lines")
    axes[2].plot(minutes, [s["entries"] for s in samples], label="entries (both caches)")
    axes[2].plot(minutes, [s["locked"] for s in samples], label="locked mappings")
    axes[2].plot(minutes, [s["fds"] for s in samples], label="open fds")
    axes[2].set_xlabel("minutes")
    for axis in axes:
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=8, loc="upper left")
    fig.suptitle(f"xenmapcache soak, {samples[-1]['t'] if samples else 0:.0f} s: {verdict(failures)}"[:110])
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def summary(samples: list[dict[str, float]], out: TextIO) -> None:
    keys = ["rss_mib", "fds", "maps_lines", "entries", "locked", "mapped_mib"]
    print(f"{'sample':<12} {'first':>10} {'min':>10} {'max':>10} {'last':>10}", file=out)
    for key in keys:
        values = [s[key] for s in samples]
        print(f"{key:<12} {values[0]:>10.1f} {min(values):>10.1f} {max(values):>10.1f} {values[-1]:>10.1f}", file=out)


def run(
    xmc: ModuleType,
    seconds: float,
    threads: int,
    child_every: float,
    seed: int,
    err: TextIO,
) -> tuple[list[dict[str, float]], list[str], dict[str, int]]:
    """Run the soak; (samples, failures, totals)."""
    # DMA in flight across invalidate() is part of the workload: no warning each time.
    warnings.simplefilter("ignore", xmc.DMAMappingWarning)
    logging.getLogger("xenmapcache").setLevel(logging.ERROR)
    soak = Soak(xmc, seed)
    tty = err.isatty()
    workers = [Worker(soak, i * REGION, REGION, seed * 1000 + i) for i in range(threads)]
    pool = [threading.Thread(target=w.run, args=(soak.stop,), name=f"soak-{i}") for i, w in enumerate(workers)]
    failures: list[str] = []
    totals = {"children": 0, "children_busy": 0, "child_ops": 0}
    samples: list[dict[str, float]] = []
    child: Child | None = None
    child_seed = 0
    start = time.monotonic()
    next_child = start + min(child_every, seconds / 4)
    for t in pool:
        t.start()

    def reap(c: Child, block: bool) -> bool:
        pid, status = os.waitpid(c.pid, 0 if block else os.WNOHANG)
        if pid == 0:
            return False
        line = os.read(c.read_fd, 4096).decode().split()
        os.close(c.read_fd)
        code = os.waitstatus_to_exitcode(status)
        if code != 0 or len(line) != 3:
            failures.append(f"child {c.pid} exited {code}")
            return True
        inherited, ops, digest = line
        now = hashlib.sha256(os.pread(soak.ram.fileno(), CHILD_SIZE, CHILD_BASE)).hexdigest()
        if now != digest:
            failures.append(f"child {c.pid}: guest RAM differs from its shadow")
        totals["children"] += 1
        totals["children_busy"] += inherited == "busy"
        totals["child_ops"] += int(ops)
        return True

    try:
        while True:
            now = time.monotonic()
            if now - start >= seconds or soak.stop.is_set():
                break
            if child is not None and reap(child, block=False):
                child = None
            if child is None and now >= next_child:
                rfd, wfd = os.pipe()
                child_seed += 1
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads: on purpose
                    pid = os.fork()
                if pid == 0:
                    os.close(rfd)
                    code = 1
                    try:
                        code = child_main(soak, seed * 7919 + child_seed, min(2.0, child_every / 2), wfd)
                    finally:
                        os._exit(code)
                os.close(wfd)
                child = Child(pid, rfd, now)
                next_child = now + child_every
            samples.append(sample(soak, now - start))
            s = samples[-1]
            ops = sum(w.count.ops for w in workers)
            line = (
                f"soak {now - start:7.0f}/{seconds:.0f} s  {ops:>10} ops  rss {s['rss_mib']:6.1f} MiB  "
                f"maps {s['maps_lines']:5.0f}  fds {s['fds']:3.0f}  entries {s['entries']:4.0f}  "
                f"children {totals['children']}"
            )
            if tty:  # redrawn in place each second
                err.write("\r" + line)
            elif len(samples) % LOG_EVERY == 1:  # a log file gets a line every LOG_EVERY seconds
                err.write(line + "\n")
            err.flush()
            soak.stop.wait(1.0)
    finally:
        soak.stop.set()
        for t in pool:
            t.join()
        if child is not None:
            reap(child, block=True)
        if tty:
            err.write("\n")
    gc.collect()
    for i, w in enumerate(workers):
        failures += [f"thread {i}: {e}" for e in w.count.errors]
    totals["ops"] = sum(w.count.ops for w in workers)
    totals["bytes_checked"] = sum(w.count.bytes_checked for w in workers)
    totals["failed_writes"] = sum(w.count.failed_writes for w in workers)
    totals["caches"] = sum(w.count.caches for w in workers)
    stats = [c.stats() for c in soak.caches]
    totals["hits"] = sum(s.hits for s in stats)
    totals["misses"] = sum(s.misses for s in stats)
    totals["invalidations"] = sum(s.invalidations for s in stats)
    soak.close()
    failures += [f"grows without bound: {d}" for d in drift(samples)]
    return samples, failures, totals


def main(argv: list[str] | None = None, out: TextIO = sys.stdout, err: TextIO = sys.stderr,
         prog: str = "python -m xenmapcache soak") -> int:
    """``xenmapcache soak``: mixed traffic for N seconds; exit 1 on any drift or differing byte."""
    parser = _cli.Parser(prog, main.__doc__)
    parser.add_argument("--seconds", type=_cli.seconds(MAX_SECONDS), default=60.0, help="how long to run (default 60)")
    parser.add_argument(
        "--threads", type=_cli.count(MAX_THREADS), default=4, help=f"worker threads, 1..{MAX_THREADS} (default 4)"
    )
    parser.add_argument(
        "--child-every", type=_cli.seconds(MAX_SECONDS), default=5.0, help="seconds between forked children (default 5)"
    )
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument("--reference", action="store_true", help="soak the pure-Python reference instead")
    parser.add_argument(
        "--plot", metavar="FILE.png", type=_cli.plot_file, help="draw RSS, mappings and fds over time (needs matplotlib)"
    )
    args = parser.parse_args(argv)
    xmc = importlib.import_module("xenmapcache.reference" if args.reference else "xenmapcache")
    samples, failures, totals = run(xmc, args.seconds, args.threads, args.child_every, args.seed, err)
    summary(samples, out)
    print(
        f"\n{totals['ops']} operations by {args.threads} threads ({totals['hits']} hits, {totals['misses']} misses, "
        f"{totals['invalidations']} invalidations), {totals['bytes_checked']} bytes checked against the shadow, "
        f"{totals['failed_writes']} writes into a hole refused with nothing written, {totals['caches']} private caches; "
        f"{totals['children']} forked children ({totals['children_busy']} found an inherited cache busy), "
        f"{totals['child_ops']} operations in them",
        file=out,
    )
    if args.plot:
        plot(samples, args.plot, failures)
        print(f"curves drawn in {args.plot}", file=out)
    for f in failures:
        print(f"FAIL {f}", file=out)
    print("soak: " + verdict(failures), file=out)
    return 1 if failures else 0
