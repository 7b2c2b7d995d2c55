"""The public mapcache API (DESIGN.md section 6) over an interchangeable core.

``MapCache`` adds to a core (the C one here, the pure-Python reference in
``xenmapcache.reference``) what belongs to Python: input checks, ``Mapping``
objects with buffer export counting, tags, the DMA warnings, and lifetimes.
A core exposes: map, unlock, ram_addr, invalidate, replace, locked, read,
write, stats, view and close (see ``_NativeCore``).
"""

from __future__ import annotations

import itertools
import logging
import sys
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._validate import U64_LIMIT, as_uint, check_range
from .errors import DMAMappingWarning, InvalidAddress, MapCacheError, MappingError, UnknownMapping
from .ram import GuestRAM

logger = logging.getLogger("xenmapcache")

LOCK = 1
DMA = 2
DEFAULT_MAX_SIZE = (1 << 35) if sys.maxsize > 2**32 else (1 << 31)
DEFAULT_BUCKET_SHIFT = 20 if sys.maxsize > 2**32 else 16
MIN_BUCKET_SHIFT, MAX_BUCKET_SHIFT = 12, 32
LOCK_LIMIT_MAX = 2**32 - 1

Translate = Callable[[int, int], int]
# A raw record (map_ptr with lock=True) carries this tag id; Mappings get their own.
RAW = 0


@dataclass(frozen=True, slots=True)
class LockedMapping:
    """One outstanding locked mapping, as listed by ``locked()`` and ``invalidate()``."""

    address: int
    paddr: int
    size: int
    dma: bool
    tag: Any


@dataclass(frozen=True, slots=True)
class Stats:
    """Counters of one cache; see DESIGN.md section 6."""

    hits: int
    misses: int
    remaps: int
    entries: int
    locked: int
    dma_locked: int
    mapped_bytes: int
    invalidations: int


class Mapping:
    """A locked mapping of guest memory: ``memoryview(m)`` reads and writes it.

    The mapping stays locked until :meth:`release` (or the ``with`` block
    ends).  While a memoryview of it is alive, releasing it raises
    ``BufferError``: a view never outlives the host mapping behind it.
    """

    __slots__ = ("address", "paddr", "size", "dma", "tag", "_cache", "_id", "_exports", "_released")

    def __init__(self, cache: MapCache, ident: int, paddr: int, size: int, dma: bool, tag: Any) -> None:
        self._cache = cache
        self._id = ident
        self.address = 0
        self.paddr = paddr
        self.size = size
        self.dma = dma
        self.tag = tag
        self._exports = 0
        self._released = False

    @property
    def released(self) -> bool:
        """Whether the mapping was released (or its cache closed)."""
        return self._released

    def __buffer__(self, flags: int) -> memoryview:
        if self._released:
            raise BufferError("the mapping was released")
        view = self._cache._core.view(self.address, self.size)
        self._exports += 1
        return view

    def __release_buffer__(self, view: memoryview) -> None:
        self._exports -= 1
        view.release()

    def release(self) -> None:
        """Unlock the mapping; a second call does nothing."""
        if self._released:
            return
        if self._exports:
            raise BufferError(f"{self._exports} memoryview(s) of the mapping are still alive")
        self._cache._forget(self)
        self._cache._core.unlock(self.address, self._id)
        self._released = True

    def __enter__(self) -> Mapping:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "released" if self._released else f"at {self.address:#x}"
        return f"<Mapping paddr={self.paddr:#x} size={self.size:#x} dma={self.dma} tag={self.tag!r} {state}>"


class _OutParams(threading.local):
    """Out-parameters for calls into C, one set per thread: cffi releases the
    GIL during a call, so a shared buffer would hand one thread's result to
    another (a Mapping with someone else's address)."""

    def __init__(self, ffi: Any) -> None:
        self.ptr = ffi.new("void **")
        self.u64 = ffi.new("uint64_t *")


class _NativeCore:
    """The C core behind a ``MapCache``: one ``xmc_cache *``."""

    def __init__(
        self,
        ram: GuestRAM,
        bucket_shift: int,
        max_size: int,
        translate: Translate | None,
        dummy: bool,
        lock_limit: int,
    ) -> None:
        from ._native import binding, check

        self._ffi, self._lib = ffi, lib = binding()
        self._check = check
        c_ram = ram._c_ram()
        out = ffi.new("xmc_cache **")
        check(lib.xmc_cache_new(lib.xmc_ram_backend(c_ram), bucket_shift, max_size, out), "MapCache")
        self._c = ffi.gc(out[0], lib.xmc_cache_free)
        check(lib.xmc_cache_set_lock_limit(self._c, lock_limit), "lock_limit")
        check(lib.xmc_cache_set_dummy(self._c, dummy), "dummy_on_failure")
        self._translate = None
        if translate is not None:
            from . import _callbacks

            self._translate = ffi.new_handle(translate)
            check(lib.xmc_cache_set_translate(self._c, lib._xmc_py_translate, self._translate), "translate")
            self._pending = _callbacks.pending
        self._out = _OutParams(ffi)

    def _fail(self, rc: int, what: str) -> None:
        cause = None
        if self._translate is not None:
            cause = getattr(self._pending, "error", None)
            self._pending.error = None
        try:
            self._check(rc, what)
        except MappingError as exc:
            raise exc from cause

    def map(self, paddr: int, size: int, flags: int, tag: int) -> int:
        out = self._out.ptr
        rc = self._lib.xmc_map(self._c, paddr, size, flags, tag, out)
        if rc:
            self._fail(rc, f"map {paddr:#x}+{size:#x}")
        return int(self._ffi.cast("uintptr_t", out[0]))

    def unlock(self, address: int, tag: int) -> None:
        self._check(self._lib.xmc_unlock_tag(self._c, self._ffi.cast("void *", address), tag), f"unlock {address:#x}")

    def ram_addr(self, address: int) -> int:
        out = self._out.u64
        self._check(self._lib.xmc_ram_addr(self._c, self._ffi.cast("void *", address), out), f"ram_addr {address:#x}")
        return int(out[0])

    def _records(self, fn: Any, what: str) -> list[tuple[int, int, int, int, bool]]:
        ffi = self._ffi
        arr, n = ffi.new("xmc_record **"), ffi.new("size_t *")
        self._check(fn(self._c, arr, n), what)
        try:
            return [(r.address, r.paddr, r.size, r.tag, bool(r.dma)) for r in arr[0][0 : n[0]]]
        finally:
            self._lib.xmc_records_free(arr[0])

    def invalidate(self) -> list[tuple[int, int, int, int, bool]]:
        return self._records(self._lib.xmc_invalidate, "invalidate")

    def locked(self) -> list[tuple[int, int, int, int, bool]]:
        return self._records(self._lib.xmc_locked, "locked")

    def replace(self, old: int, new: int, size: int) -> int:
        out = self._out.ptr
        rc = self._lib.xmc_replace(self._c, old, new, size, out)
        if rc:
            self._fail(rc, f"replace {old:#x} -> {new:#x}")
        return int(self._ffi.cast("uintptr_t", out[0]))

    def read(self, paddr: int, n: int) -> bytes:
        buf = bytearray(n)
        rc = self._lib.xmc_read(self._c, paddr, self._ffi.from_buffer(buf), n)
        if rc:
            self._fail(rc, f"read {paddr:#x}+{n:#x}")
        return bytes(buf)

    def write(self, paddr: int, data: Any) -> None:
        # Release the export before raising: a traceback kept in a reference
        # cycle would hold it until the GC, whose tp_clear of the exporting
        # memoryview ignores exports and then crashes when they are released.
        with self._ffi.from_buffer(data) as src:
            n = len(src)
            rc = self._lib.xmc_write(self._c, paddr, src, n)
        if rc:
            self._fail(rc, f"write {paddr:#x}+{n:#x}")

    def stats(self) -> tuple[int, ...]:
        st = self._ffi.new("xmc_stats *")
        self._check(self._lib.xmc_stats_get(self._c, st), "stats")
        return (st.hits, st.misses, st.remaps, st.entries, st.locked, st.dma_locked, st.mapped_bytes, st.invalidations)

    def view(self, address: int, size: int) -> memoryview:
        return memoryview(self._ffi.buffer(self._ffi.cast("char *", address), size))

    def close(self) -> None:
        self._ffi.release(self._c)


class MapCache:
    """A Xen mapcache over guest RAM (see DESIGN.md section 6).

    ``bucket_shift`` (12..32) sets the bucket size; ``max_size`` bounds one
    request and sets the number of hash slots (None: 32 GiB on 64-bit hosts);
    ``translate(paddr, size) -> paddr`` is tried once when pages cannot be
    mapped; ``dummy_on_failure`` maps anonymous memory instead of failing
    (incoming migration); ``lock_limit`` caps each entry's lock count.
    """

    _Core: Any = _NativeCore

    def __init__(
        self,
        ram: GuestRAM,
        bucket_shift: int = DEFAULT_BUCKET_SHIFT,
        max_size: int | None = None,
        translate: Translate | None = None,
        dummy_on_failure: bool = False,
        lock_limit: int = LOCK_LIMIT_MAX,
    ) -> None:
        if not isinstance(ram, GuestRAM):
            raise TypeError(f"ram must be a GuestRAM, not {type(ram).__name__}")
        shift = as_uint(bucket_shift, "bucket_shift")
        if not MIN_BUCKET_SHIFT <= shift <= MAX_BUCKET_SHIFT:
            raise InvalidAddress(f"bucket_shift must be in [{MIN_BUCKET_SHIFT}, {MAX_BUCKET_SHIFT}]: {shift}")
        max_size = DEFAULT_MAX_SIZE if max_size is None else as_uint(max_size, "max_size")
        if max_size == 0:
            raise InvalidAddress("max_size must be positive")
        if translate is not None and not callable(translate):
            raise TypeError("translate must be callable")
        lock_limit = as_uint(lock_limit, "lock_limit", LOCK_LIMIT_MAX + 1)
        self.bucket_shift = shift
        self.max_size = max_size
        self._core = self._Core(ram, shift, max_size, translate, bool(dummy_on_failure), lock_limit)
        self._ram = ram
        self._mappings: dict[int, Mapping] = {}
        self._by_address: dict[int, list[Mapping]] = {}
        self._ids = itertools.count(1)
        self._closed = False
        self._close_lock = threading.Lock()

    # -- mapping ---------------------------------------------------------

    def map(self, paddr: int, size: int, dma: bool = False, tag: Any = None) -> Mapping:
        """Map ``[paddr, paddr + size)`` locked; returns a :class:`Mapping`."""
        self._check_open()
        paddr, size = check_range(paddr, size, self.max_size)
        m = Mapping(self, next(self._ids), paddr, size, bool(dma), tag)
        self._mappings[m._id] = m
        try:
            m.address = self._core.map(paddr, size, LOCK | (DMA if dma else 0), m._id)
        except BaseException:
            del self._mappings[m._id]
            raise
        self._by_address.setdefault(m.address, []).append(m)
        return m

    def map_ptr(self, paddr: int, size: int = 0, lock: bool = False, dma: bool = False) -> int:
        """Map like QEMU's ``xen_map_cache``: returns the host address as an int."""
        self._check_open()
        paddr, size = check_range(paddr, size, self.max_size)
        flags = (LOCK if lock else 0) | (DMA if lock and dma else 0)
        return int(self._core.map(paddr, size, flags, RAW))

    def unlock(self, address: int) -> None:
        """Drop one locked mapping at exactly ``address`` (QEMU's invalidate_map_cache_entry)."""
        self._check_open()
        address = as_uint(address, "address")
        try:
            self._core.unlock(address, RAW)
            return
        except UnknownMapping:
            pass
        holders = self._by_address.get(address, [])
        for m in reversed(holders):
            if not m._exports:
                m.release()
                return
        if holders:
            raise BufferError(f"every mapping at {address:#x} still has memoryviews alive")
        raise UnknownMapping(f"no locked mapping at {address:#x}")

    def ram_addr(self, address: int) -> int:
        """The guest-physical address behind a host address inside a mapped entry."""
        self._check_open()
        return self._core.ram_addr(as_uint(address, "address"))

    def read(self, paddr: int, n: int) -> bytes:
        """Read ``n`` bytes of guest memory through the cache (unlocked)."""
        self._check_open()
        paddr, n = check_range(paddr, n, U64_LIMIT)
        return self._core.read(paddr, n)

    def write(self, paddr: int, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` into guest memory through the cache (unlocked)."""
        self._check_open()
        view = memoryview(data).cast("B")
        paddr, _ = check_range(paddr, len(view), U64_LIMIT)
        self._core.write(paddr, view)

    def replace(self, old_paddr: int, new_paddr: int, size: int) -> int:
        """Remap the entry holding ``old_paddr`` onto ``new_paddr`` in place; returns its host address."""
        self._check_open()
        old_paddr, size = check_range(old_paddr, size, self.max_size)
        new_paddr, _ = check_range(new_paddr, size, self.max_size)
        address = self._core.replace(old_paddr, new_paddr, size)
        for m in list(self._mappings.values()):  # Mappings follow their entry
            if m.address:
                m.paddr = self._core.ram_addr(m.address)
        return address

    # -- bulk operations ---------------------------------------------------

    def _locked_mapping(self, record: tuple[int, int, int, int, bool]) -> LockedMapping:
        address, paddr, size, ident, dma = record
        holder = self._mappings.get(ident)
        return LockedMapping(address, paddr, size, dma, holder.tag if holder else None)

    def locked(self) -> list[LockedMapping]:
        """Every outstanding locked mapping, oldest first."""
        self._check_open()
        return [self._locked_mapping(r) for r in self._core.locked()]

    def invalidate(self) -> list[LockedMapping]:
        """Unmap every unlocked entry; warn about and return the DMA mappings in flight."""
        self._check_open()
        in_flight = [self._locked_mapping(r) for r in self._core.invalidate()]
        for lm in in_flight:
            warnings.warn(
                DMAMappingWarning(
                    f"DMA mapping {lm.tag!r} of guest [{lm.paddr:#x}, +{lm.size:#x}) at {lm.address:#x} "
                    "is still in flight across a mapcache invalidation"
                ),
                stacklevel=2,
            )
        if in_flight:
            logger.warning(
                "mapcache invalidated with %d DMA mapping(s) in flight: %s",
                len(in_flight),
                ", ".join(repr(lm.tag) if lm.tag is not None else f"{lm.paddr:#x}" for lm in in_flight),
            )
        return in_flight

    def stats(self) -> Stats:
        """Hit/miss counters and what is mapped now."""
        self._check_open()
        return Stats(*self._core.stats())

    # -- lifetime -------------------------------------------------------------

    def _forget(self, m: Mapping) -> None:
        self._mappings.pop(m._id, None)
        holders = self._by_address.get(m.address)
        if holders is not None:
            holders.remove(m)
            if not holders:
                del self._by_address[m.address]

    def _check_open(self) -> None:
        if self._closed:
            raise MapCacheError("the cache is closed")

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def close(self) -> None:
        """Unmap everything.  Raises BufferError (and keeps everything) while a view is alive."""
        with self._close_lock:
            if self._closed:
                return
            busy = [m for m in self._mappings.values() if m._exports]
            if busy:
                raise BufferError(f"{len(busy)} mapping(s) still have memoryviews alive")
            self._closed = True
            for m in self._mappings.values():
                m._released = True
            self._mappings.clear()
            self._by_address.clear()
            self._core.close()

    def __enter__(self) -> MapCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._mappings)} mapping(s)"
        return f"<{type(self).__name__} bucket_shift={self.bucket_shift} max_size={self.max_size:#x} {state}>"
