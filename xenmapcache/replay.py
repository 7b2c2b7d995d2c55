"""Mapcache traces: record every call an emulator makes, play it back on either implementation.

A trace (https://xenmapcache.readthedocs.io/en/latest/qemu-build.html) is the list of mapcache calls of one
run, in the order they were made, each with its arguments, its result and the
thread that made it.  ``contrib/qemu/xenmapcache-glue.c`` writes one from QEMU;
:class:`TraceWriter` writes one from Python.  ``python -m xenmapcache replay``
plays traces back on a fresh cache over guest RAM of the trace's size::

    python -m xenmapcache replay [--impl c|reference|both] [--max-size BYTES] [--json] FILE...

``--impl both`` runs the C core and the pure-Python reference in lock step and
compares every result (status, guest address, tag, the DMA mappings in flight
at an invalidation, and the counters after each call); the first difference
is printed with the call that differs and the exit status is 1.

The format, version 1 (all integers little-endian; a file may be compressed
with gzip or xz, as the committed traces of benchmarks/traces are):

- a 64-byte header: ``b"XMCTRACE"``, u32 version (1), u32 record size (40),
  u64 guest RAM size, u64 max_size (0: the library's default), u32
  bucket_shift (0: the default), u32 zero, u64 number of records (0: read to
  the end), 16 zero bytes;
- 40-byte records: u8 op, u8 flags (``XMC_LOCK`` 1, ``XMC_DMA`` 2), u16 thread,
  i32 status (``XMC_OK`` 0 or an ``XMC_E*`` code of csrc/xenmapcache.h), then
  four u64 ``a b c d`` whose meaning depends on the op:

  ===========  ======================================================================
  op           a, b, c, d
  ===========  ======================================================================
  1 map        paddr, size, tag, the host address returned (0 on error)
  2 unlock     host address, 0, the tag dropped, 0
  3 ram_addr   host address, the guest address returned, 0, 0
  4 invalidate the number n of ``5`` records that follow, 0, 0, 0
  5 in flight  host address, size, tag, paddr: one DMA mapping reported by the
               invalidate before it (oldest first)
  6 replace    old paddr, new paddr, size, the host address returned
  ===========  ======================================================================

Host addresses are those of the recording process: the replay maps each one
to the address its own cache returned for the same call (an address inside a
mapping, against the last 64 maps).
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import logging
import lzma
import struct
import sys
import time
import warnings
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from . import _cli, errors

MAGIC = b"XMCTRACE"
VERSION = 1
HEADER = struct.Struct("<8sIIQQIIQ16x")
RECORD = struct.Struct("<BBHi4Q")

MAP, UNLOCK, RAM_ADDR, INVALIDATE, IN_FLIGHT, REPLACE = 1, 2, 3, 4, 5, 6
OP_NAMES = {MAP: "map", UNLOCK: "unlock", RAM_ADDR: "ram_addr", INVALIDATE: "invalidate",
            IN_FLIGHT: "in_flight", REPLACE: "replace"}
LOCK, DMA = 1, 2
RAM_ADDR_INVALID = (1 << 64) - 1
RECENT = 64  # an address inside a mapping resolves against the last RECENT maps

# Status codes of csrc/xenmapcache.h, and the exception each one raises in Python.
OK, EINVAL, EMAP, ENOENT, EOVERFLOW, ECLOSED = 0, -2, -3, -4, -5, -8
_STATUS_OF = [
    (errors.InvalidAddress, EINVAL),
    (errors.MappingError, EMAP),
    (errors.UnknownMapping, ENOENT),
    (errors.LockOverflow, EOVERFLOW),
    (errors.MapCacheError, ECLOSED),
]


class TraceError(ValueError):
    """A file that is not a trace this version can read."""


@dataclass(frozen=True, slots=True)
class Call:
    """One recorded call: ``op`` (``MAP`` ...), its flags, thread, status and operands."""

    op: int
    flags: int
    thread: int
    status: int
    a: int
    b: int
    c: int
    d: int
    in_flight: tuple[tuple[int, int, int, int], ...] = ()  # invalidate: (address, size, tag, paddr)

    def describe(self) -> str:
        """The call as a line of text, for messages."""
        name = OP_NAMES.get(self.op, str(self.op))
        if self.op == MAP:
            return (f"map(paddr={self.a:#x}, size={self.b:#x}, lock={bool(self.flags & LOCK)}, "
                    f"dma={bool(self.flags & DMA)}, tag={self.c}) thread {self.thread}")
        if self.op in (UNLOCK, RAM_ADDR):
            return f"{name}({self.a:#x}) thread {self.thread}"
        if self.op == REPLACE:
            return f"replace({self.a:#x}, {self.b:#x}, size={self.c:#x}) thread {self.thread}"
        return f"{name}() thread {self.thread}"


@dataclass(slots=True)
class Trace:
    """A whole trace: its header fields and its calls, in order."""

    ram_size: int
    max_size: int = 0
    bucket_shift: int = 0
    calls: list[Call] = field(default_factory=list)


def _open(path: str) -> BinaryIO:
    f = open(path, "rb")
    magic = f.read(6)
    f.close()
    if magic[:2] == b"\x1f\x8b":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    if magic == b"\xfd7zXZ\x00":
        return lzma.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


def read_trace(path: str) -> Trace:
    """Read a trace file (plain, gzip- or xz-compressed).

    :raises TraceError: not a trace, another version, or a truncated record.
    """
    with _open(path) as f:
        return parse(f.read(), path)


def parse(data: bytes, name: str = "trace") -> Trace:
    """Parse the bytes of a trace (see the module's docstring for the format)."""
    if len(data) < HEADER.size:
        raise TraceError(f"{name}: too short for a trace header")
    magic, version, rsize, ram_size, max_size, shift, _zero, n = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise TraceError(f"{name}: not a mapcache trace (magic {magic!r})")
    if version != VERSION or rsize != RECORD.size:
        raise TraceError(f"{name}: trace version {version} (record size {rsize}); this reader knows {VERSION}")
    body = memoryview(data)[HEADER.size:]
    if len(body) % RECORD.size:
        raise TraceError(f"{name}: truncated record at the end")
    count = len(body) // RECORD.size
    if n and n != count:
        raise TraceError(f"{name}: header says {n} records, file has {count}")
    trace = Trace(ram_size, max_size, shift)
    it = RECORD.iter_unpack(body)
    calls = trace.calls
    for op, flags, thread, status, a, b, c, d in it:
        if op == INVALIDATE:
            flight = []
            for _ in range(a):
                f = next(it, None)
                if f is None or f[0] != IN_FLIGHT:
                    raise TraceError(f"{name}: invalidate #{len(calls)} lacks its in-flight records")
                flight.append((f[4], f[5], f[6], f[7]))
            calls.append(Call(op, flags, thread, status, a, b, c, d, tuple(flight)))
        elif op in OP_NAMES and op != IN_FLIGHT:
            calls.append(Call(op, flags, thread, status, a, b, c, d))
        else:
            raise TraceError(f"{name}: unknown op {op} at call #{len(calls)}")
    return trace


class TraceWriter:
    """Write a trace, call by call (what the QEMU glue does in C).

    ``TraceWriter(f, ram_size)`` writes the header to the binary file ``f``;
    each method appends one call with its result.
    """

    def __init__(self, f: BinaryIO, ram_size: int, max_size: int = 0, bucket_shift: int = 0) -> None:
        self._f = f
        f.write(HEADER.pack(MAGIC, VERSION, RECORD.size, ram_size, max_size, bucket_shift, 0, 0))

    def _rec(self, op: int, flags: int, thread: int, status: int, a: int = 0, b: int = 0, c: int = 0,
             d: int = 0) -> None:
        self._f.write(RECORD.pack(op, flags, thread, status, a, b, c, d))

    def map(self, paddr: int, size: int, flags: int, tag: int, status: int, address: int, thread: int = 0) -> None:
        """A map call: ``flags`` of ``LOCK | DMA``, the address returned (0 on error)."""
        self._rec(MAP, flags, thread, status, paddr, size, tag, address)

    def unlock(self, address: int, status: int, tag: int = 0, thread: int = 0) -> None:
        """An unlock of ``address`` and the tag it dropped."""
        self._rec(UNLOCK, 0, thread, status, address, 0, tag)

    def ram_addr(self, address: int, status: int, paddr: int, thread: int = 0) -> None:
        """A reverse lookup and the guest address it answered."""
        self._rec(RAM_ADDR, 0, thread, status, address, paddr)

    def invalidate(self, in_flight: list[tuple[int, int, int, int]], status: int = OK, thread: int = 0) -> None:
        """An invalidation and the DMA mappings it reported: (address, size, tag, paddr)."""
        self._rec(INVALIDATE, 0, thread, status, len(in_flight))
        for address, size, tag, paddr in in_flight:
            self._rec(IN_FLIGHT, DMA, thread, OK, address, size, tag, paddr)

    def replace(self, old: int, new: int, size: int, status: int, address: int, thread: int = 0) -> None:
        """A replace call and the address it returned."""
        self._rec(REPLACE, 0, thread, status, old, new, size, address)


def status_of(exc: BaseException) -> int:
    """The ``XMC_E*`` code of an exception raised by the Python API."""
    for cls, code in _STATUS_OF:
        if isinstance(exc, cls):
            return code
    raise exc


# ---- replay ---------------------------------------------------------------


@dataclass
class Summary:
    """What one implementation did with one trace."""

    impl: str
    calls: int = 0
    hits: int = 0
    misses: int = 0
    remaps: int = 0
    dma_warnings: list[int] = field(default_factory=list)  # per invalidation
    seconds: float = 0.0

    @property
    def us_per_call(self) -> float:
        """Mean wall time per call, in microseconds."""
        return self.seconds / self.calls * 1e6 if self.calls else 0.0


class Difference(Exception):
    """Two results of one call differ."""

    def __init__(self, index: int, call: Call, what: str) -> None:
        super().__init__(f"call #{index} {call.describe()}: {what}")
        self.index = index
        self.call = call


class _Player:
    """One implementation's cache, fed calls one at a time."""

    def __init__(self, impl: str, trace: Trace, max_size: int | None) -> None:
        if impl == "c":
            import xenmapcache as mod
        else:
            from . import reference as mod  # type: ignore[no-redef]
        self.impl = impl
        self.ram = mod.GuestRAM(trace.ram_size)
        kwargs: dict[str, Any] = {"max_size": max_size}
        if trace.bucket_shift:
            kwargs["bucket_shift"] = trace.bucket_shift
        self.cache = mod.MapCache(self.ram, **kwargs)
        self.addr: dict[int, int] = {}  # recorded host address -> ours
        self.recent: deque[tuple[int, int, int]] = deque(maxlen=RECENT)  # (recorded, size, ours)
        self.dma_warnings: list[int] = []

    def _ours(self, recorded: int) -> int:
        ours = self.addr.get(recorded)
        if ours is not None:
            return ours
        for base, size, mine in reversed(self.recent):  # inside a recent mapping
            if base <= recorded < base + max(size, 1):
                return mine + (recorded - base)
        return (1 << 64) - 4096  # one no cache can know (the top page)

    def _mapped(self, recorded: int, size: int, ours: int) -> None:
        self.addr[recorded] = ours
        self.recent.append((recorded, size, ours))

    def play(self, call: Call) -> tuple[Any, ...]:
        """Make the call; return its result as a comparable tuple."""
        cache = self.cache
        op = call.op
        try:
            if op == MAP:
                if call.flags & LOCK:
                    address = cache.map(call.a, call.b, dma=bool(call.flags & DMA), tag=call.c).address
                else:
                    address = cache.map_ptr(call.a, call.b)
                self._mapped(call.d, call.b, address)
                return (OK,)
            if op == UNLOCK:
                cache.unlock(self._ours(call.a))
                return (OK,)
            if op == RAM_ADDR:
                return (OK, cache.ram_addr(self._ours(call.a)))
            if op == INVALIDATE:
                with warnings.catch_warnings(record=True) as seen:
                    warnings.simplefilter("always", errors.DMAMappingWarning)
                    flight = cache.invalidate()
                self.dma_warnings.append(sum(isinstance(w.message, errors.DMAMappingWarning) for w in seen))
                return (OK, tuple((m.tag, m.paddr, m.size) for m in flight))
            if op == REPLACE:
                self._mapped(call.d, call.c, cache.replace(call.a, call.b, call.c))
                return (OK,)
        except errors.MapCacheError as exc:
            return (status_of(exc),)
        raise TraceError(f"cannot replay op {op}")

    def summary(self, calls: int, seconds: float) -> Summary:
        """Counters and timings after the replay."""
        s = self.cache.stats()
        return Summary(self.impl, calls, s.hits, s.misses, s.remaps, self.dma_warnings, seconds)

    def close(self) -> None:
        """Close the cache (unmapping what is left) and the RAM."""
        self.cache.close()
        self.ram.close()


def _recorded(call: Call) -> tuple[Any, ...] | None:
    """The result the recording process saw, in the shape `_Player.play` returns."""
    if call.status != OK:
        return (call.status,)
    if call.op == RAM_ADDR:
        return (OK, call.b)
    if call.op == INVALIDATE:
        return (OK, tuple((tag, paddr, size) for _a, size, tag, paddr in call.in_flight))
    return (OK,)


def replay(trace: Trace, impl: str = "c", max_size: int | None = None,
           check_recorded: bool | None = None) -> list[Summary]:
    """Play ``trace`` on a fresh cache of ``impl`` (``c``, ``reference`` or ``both``).

    ``max_size`` None takes the trace's.  With ``both``, every result of the two
    implementations is compared, and their counters after every call.  With
    ``check_recorded`` (the default when the trace's max_size is kept), every
    result is also compared with the one recorded.

    :raises Difference: the first call whose results differ.
    """
    if max_size is None:
        max_size = trace.max_size or None
        if check_recorded is None:
            check_recorded = True
    impls = ["c", "reference"] if impl == "both" else [impl]
    players = [_Player(i, trace, max_size) for i in impls]
    try:
        if len(players) == 1 and not check_recorded:
            p = players[0]
            play = p.play
            t0 = time.perf_counter()
            for call in trace.calls:
                play(call)
            return [p.summary(len(trace.calls), time.perf_counter() - t0)]
        seconds = [0.0] * len(players)
        for index, call in enumerate(trace.calls):
            results = []
            for k, p in enumerate(players):
                t0 = time.perf_counter()
                results.append(p.play(call))
                seconds[k] += time.perf_counter() - t0
            if check_recorded:
                want = _recorded(call)
                if results[0] != want:
                    raise Difference(index, call, f"recorded {want}, {players[0].impl} gives {results[0]}")
            if len(players) == 2:
                if results[0] != results[1]:
                    raise Difference(index, call, f"c gives {results[0]}, reference gives {results[1]}")
                s0, s1 = (p.cache.stats() for p in players)
                if s0 != s1:
                    raise Difference(index, call, f"counters after it: c {s0}, reference {s1}")
        return [p.summary(len(trace.calls), s) for p, s in zip(players, seconds)]
    finally:
        for p in players:
            p.close()


def describe(trace: Trace) -> dict[str, Any]:
    """Counts of the trace's calls by op, and its threads."""
    ops: dict[str, int] = {}
    locked = dma = 0
    for c in trace.calls:
        ops[OP_NAMES[c.op]] = ops.get(OP_NAMES[c.op], 0) + 1
        if c.op == MAP and c.flags & LOCK:
            locked += 1
            dma += bool(c.flags & DMA)
    return {"calls": len(trace.calls), "ops": ops, "locked_maps": locked, "dma_maps": dma,
            "threads": len({c.thread for c in trace.calls}), "ram_size": trace.ram_size,
            "max_size": trace.max_size}


def iter_files(paths: list[str]) -> Iterator[tuple[str, Trace]]:
    """Each path with its trace, in order."""
    for p in paths:
        yield p, read_trace(p)


def main(argv: list[str] | None = None, prog: str = "python -m xenmapcache replay") -> int:
    """``xenmapcache replay``: play mapcache traces back on a fresh cache (see the module's docstring)."""
    parser = _cli.Parser(prog, main.__doc__)
    parser.add_argument("files", nargs="+", metavar="FILE", help="trace files (.xmct, .xmct.gz, .xmct.xz)")
    parser.add_argument("--impl", choices=["c", "reference", "both"], default="c",
                        help="the C core, the Python reference, or both compared call by call (default c)")
    parser.add_argument("--max-size", type=_cli.count(1 << 62), default=None, metavar="BYTES",
                        help="the cache's max_size (default: the trace's); results are then not "
                        "compared with the recorded ones")
    parser.add_argument("--json", action="store_true", help="one JSON object per run on stdout")
    parser.add_argument("--plot", metavar="FILE.png", type=_cli.plot_file,
                        help="replay each trace on the C core with max_size from the guest's RAM size down to "
                        "a sixteenth, and draw the misses against it (needs matplotlib)")
    args = parser.parse_args(argv)
    # Each invalidation with DMA in flight logs a summary: counted here instead.
    logger = logging.getLogger("xenmapcache")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        return _run(parser, args)
    finally:
        logger.setLevel(level)


def sweep(trace: Trace, divisors: tuple[int, ...] = (1, 2, 4, 8, 16)) -> list[tuple[int, Summary]]:
    """Replay on the C core with max_size = RAM size / d for each d: (max_size, summary)."""
    return [(trace.ram_size // d, replay(trace, "c", trace.ram_size // d)[0]) for d in divisors]


def plot_sweeps(sweeps: dict[str, list[tuple[int, Summary]]], path: str) -> None:
    """Misses and remaps against max_size, one line per trace."""

    plt = _cli.pyplot()
    fig, axis = plt.subplots(figsize=(8, 5))
    for name, points in sweeps.items():
        xs = [m >> 20 for m, _s in points]
        axis.plot(xs, [s.misses for _m, s in points], marker="o", label=f"{name}: misses")
        axis.plot(xs, [s.remaps for _m, s in points], marker="x", linestyle="--", label=f"{name}: remaps")
    axis.set_xscale("log", base=2)
    sizes = sorted({m >> 20 for points in sweeps.values() for m, _s in points})
    axis.set_xticks(sizes, [str(x) for x in sizes])
    axis.minorticks_off()
    axis.set(xlabel="max_size (MiB): the guest's RAM down to a sixteenth", ylabel="calls")
    axis.invert_xaxis()
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=8)
    axis.set_title("A guest's mapcache trace replayed as the cache shrinks (C core)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    traces = list(_load(parser, args.files))  # every file read (or refused) before any work
    if args.plot:
        sweeps = {}
        for path, trace in traces:
            sweeps[path.rsplit("/", 1)[-1]] = points = sweep(trace)
            for max_size, s in points:
                print(f"{path}: max_size {max_size >> 20} MiB: {s.hits} hits, {s.misses} misses, "
                      f"{s.remaps} remaps")
        plot_sweeps(sweeps, args.plot)
        return 0
    out: list[dict[str, Any]] = []
    status = 0
    for path, trace in traces:
        info = {"file": path, **describe(trace)}
        try:
            summaries = replay(trace, args.impl, args.max_size)
        except Difference as d:
            info["difference"] = str(d)
            status = 1
            summaries = []
        info["results"] = [
            {"impl": s.impl, "hits": s.hits, "misses": s.misses, "remaps": s.remaps,
             "dma_warnings": s.dma_warnings, "us_per_call": round(s.us_per_call, 3)} for s in summaries
        ]
        if args.max_size is not None:
            info["max_size"] = args.max_size
        out.append(info)
        if not args.json:
            _print(info, args.impl)
        if status:
            break
    if args.json:
        json.dump(out, sys.stdout, indent=1)
        print()
    return status


def _load(parser: argparse.ArgumentParser, paths: list[str]) -> Iterator[tuple[str, Trace]]:
    for p in paths:
        try:
            yield p, read_trace(p)
        except (OSError, TraceError, EOFError, lzma.LZMAError) as exc:
            parser.error(str(exc))


def _print(info: dict[str, Any], impl: str) -> None:
    ops = ", ".join(f"{k} {v}" for k, v in sorted(info["ops"].items()))
    buf = io.StringIO()
    buf.write(f"{info['file']}: {info['calls']} calls ({ops}; {info['dma_maps']} DMA), "
              f"{info['threads']} thread(s), guest RAM {info['ram_size'] >> 20} MiB, "
              f"max_size {info['max_size'] or 'default'}\n")
    for r in info["results"]:
        w = r["dma_warnings"]
        per = f" ({min(w)} to {max(w)} per invalidation)" if w else ""
        buf.write(f"  {r['impl']}: {r['hits']} hits, {r['misses']} misses, {r['remaps']} remaps; "
                  f"{sum(w)} DMA warnings at {len(w)} invalidations{per}; {r['us_per_call']:.3f} us/call\n")
    if "difference" in info:
        buf.write(f"  DIFFERENCE at {info['difference']}\n")
    elif impl == "both":
        buf.write("  c and reference agree on every result\n")
    sys.stdout.write(buf.getvalue())
