"""The public mapcache API (DESIGN.md section 6) over an interchangeable core.

``MapCache`` adds to a core (the C one here, the pure-Python reference in
``xenmapcache.reference``) what belongs to Python: input checks, ``Mapping``
objects with buffer export counting, tags, the DMA warnings, and lifetimes.
A core exposes: map, unlock, ram_addr, invalidate, replace, locked, read,
write, stats, view and close (see ``NativeCore`` in ``_native.py``, the
binding).  A core may also offer ``registry(cache)``, which keeps the cache's
Mappings (else a :class:`_PyRegistry` does), and ``fast_paths()``: builtins
that the cache installs over its own ``map_ptr``, ``read``, ``readinto``,
``ram_addr``, ``unlock`` and ``map`` (unless a subclass overrides them), so
that the common case costs one C call and no Python frame; anything else
they hand straight to the method here, which checks and raises.
"""

from __future__ import annotations

import itertools
import logging
import sys
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._native import NativeCore
from ._validate import U64_LIMIT, as_uint, check_range
from .backends import CallbackBackend
from .errors import DMAMappingWarning, InvalidAddress, MapCacheError, MappingError, UnknownMapping
from .ram import GuestRAM
from .xen import XenForeignMemory

logger = logging.getLogger("xenmapcache")

LOCK = 1
DMA = 2
DEFAULT_MAX_SIZE = (1 << 35) if sys.maxsize > 2**32 else (1 << 31)
DEFAULT_BUCKET_SHIFT = 20 if sys.maxsize > 2**32 else 16
MIN_BUCKET_SHIFT, MAX_BUCKET_SHIFT = 12, 32
LOCK_LIMIT_MAX = 2**32 - 1

Translate = Callable[[int, int], int]
# What a cache maps through: each has ``_c_backend()``, a context manager
# yielding an ``xmc_backend *`` that a C cache retains.
Backend = GuestRAM | XenForeignMemory | CallbackBackend
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

    Made by :meth:`MapCache.map`.  The mapping stays locked until
    :meth:`release` (or the ``with`` block ends).  While a memoryview of it
    (or of a slice of one) is alive, releasing it, or closing its cache,
    raises ``BufferError``: a view never outlives the host mapping behind it.
    Attributes: ``address`` (host), ``paddr`` (guest; follows
    :meth:`MapCache.replace`), ``size``, ``dma``, ``tag``.

    This class is the type every implementation's mappings share: on the C
    core (CPython) they are instances of a subclass written in the binding's
    C (``xenmapcache._core.Mapping``: the buffer is the host memory itself,
    exported and counted without a Python frame), elsewhere and in the
    reference of the Python one.  Neither can be pickled or copied.
    """

    __slots__ = ()

    address: int
    paddr: int
    size: int
    dma: bool
    tag: Any

    @property
    def released(self) -> bool:
        """Whether the mapping was released (or its cache closed)."""
        raise NotImplementedError

    if TYPE_CHECKING:

        def __buffer__(self, flags: int, /) -> memoryview:
            """A writable 1-D view (format 'B', len == size) of the mapped memory."""

    def release(self) -> None:
        """Unlock the mapping; a second call does nothing.

        Raises ``BufferError`` (and keeps the mapping) while a memoryview of
        it is alive.  Costs one core call.
        """
        raise NotImplementedError

    def __enter__(self) -> Mapping:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class _PyMapping(Mapping):
    """The Python ``Mapping``, kept by a :class:`_PyRegistry` (PEP 688 buffer)."""

    __slots__ = ("address", "paddr", "size", "dma", "tag", "_reg", "_id", "_exports", "_released")

    def __init__(self, reg: _PyRegistry, ident: int, paddr: int, size: int, dma: bool, tag: Any) -> None:
        self._reg = reg
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
        with self._reg.lock:
            if self._released:
                raise BufferError("the mapping was released")
            self._exports += 1
        view: memoryview = self._reg.core.view(self.address, self.size)
        return view

    def __release_buffer__(self, view: memoryview) -> None:
        view.release()
        with self._reg.lock:
            self._exports -= 1

    def release(self) -> None:
        """Unlock the mapping; a second call does nothing (BufferError while views live)."""
        self._reg.release(self)

    def __reduce__(self) -> Any:
        raise TypeError("cannot pickle or copy a Mapping: it owns a lock on guest memory")

    def __repr__(self) -> str:
        state = "released" if self._released else f"at {self.address:#x}"
        return f"<Mapping paddr={self.paddr:#x} size={self.size:#x} dma={self.dma} tag={self.tag!r} {state}>"


class _PyRegistry:
    """The live Mappings of one cache, in Python (the reference core, and the
    C core where the binding has no types of its own: not CPython).

    The same interface as ``NativeCache`` of ffi/seam.h: ``map``, ``tags``,
    ``release_at``, ``mappings``, ``set_paddr``, ``close_registry``.  Its lock
    guards exports and the registry, never held across a core call: the core
    serialises the cache itself.
    """

    def __init__(self, core: Any) -> None:
        self.core = core
        self.lock = threading.Lock()
        self._mappings: dict[int, _PyMapping] = {}  # tag id -> Mapping, oldest first
        self._ids = itertools.count(1)
        self._closed = False

    def map(self, paddr: int, size: int, dma: bool, tag: Any) -> Mapping:
        m = _PyMapping(self, next(self._ids), paddr, size, dma, tag)
        with self.lock:
            if self._closed:
                raise MapCacheError("the cache is closed")
            self._mappings[m._id] = m  # before the call: invalidate() may list it at once
        try:
            m.address = self.core.map(paddr, size, LOCK | (DMA if dma else 0), m._id)
        except BaseException:
            with self.lock:
                self._mappings.pop(m._id, None)
            raise
        with self.lock:
            if self._closed:  # closed while we mapped: the core has unmapped it
                m._released = True
                raise MapCacheError("the cache was closed")
        return m

    def release(self, m: _PyMapping) -> None:
        with self.lock:
            if m._released:
                return
            if m._exports:
                raise BufferError(f"{m._exports} memoryview(s) of the mapping are still alive")
            m._released = True
            self._mappings.pop(m._id, None)
        self.core.unlock(m.address, m._id)

    def tags(self) -> dict[int, Any]:
        with self.lock:
            return {ident: m.tag for ident, m in self._mappings.items()}

    def release_at(self, address: int) -> bool:
        with self.lock:
            holders = [m for m in self._mappings.values() if m.address == address]
            idle = [m for m in holders if not m._exports]
        if idle:
            idle[-1].release()
            return True
        if holders:
            raise BufferError(f"every mapping at {address:#x} still has memoryviews alive")
        return False

    def mappings(self) -> list[Mapping]:
        with self.lock:
            return list(self._mappings.values())

    def set_paddr(self, m: _PyMapping, paddr: int) -> None:
        m.paddr = paddr

    def close_registry(self) -> None:
        with self.lock:
            busy = [m for m in self._mappings.values() if m._exports]
            if busy:
                raise BufferError(f"{len(busy)} mapping(s) still have memoryviews alive")
            self._closed = True
            for m in self._mappings.values():
                m._released = True
            self._mappings.clear()


class MapCache:
    """A Xen mapcache over guest RAM (see DESIGN.md section 6).

    ``bucket_shift`` (12..32) sets the bucket size; ``max_size`` bounds one
    request and sets the number of hash slots (None: 32 GiB on 64-bit hosts);
    ``translate(paddr, size) -> paddr`` is tried once when pages cannot be
    mapped; ``dummy_on_failure`` maps anonymous memory instead of failing
    (incoming migration); ``lock_limit`` caps each entry's lock count.
    """

    _Core: Any = NativeCore

    def __init__(
        self,
        ram: Backend,
        bucket_shift: int = DEFAULT_BUCKET_SHIFT,
        max_size: int | None = None,
        translate: Translate | None = None,
        dummy_on_failure: bool = False,
        lock_limit: int = LOCK_LIMIT_MAX,
    ) -> None:
        if not isinstance(ram, (GuestRAM, XenForeignMemory, CallbackBackend)):
            raise TypeError(f"ram must be a GuestRAM, XenForeignMemory or CallbackBackend, not {type(ram).__name__}")
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
        self._core: Any = self._Core(ram, shift, max_size, translate, bool(dummy_on_failure), lock_limit)
        self._ram = ram
        self._closed = False
        registry = getattr(self._core, "registry", None)
        self._reg: Any = (registry(self) if registry is not None else None) or _PyRegistry(self._core)
        fast_paths = getattr(self._core, "fast_paths", None)
        for name, fn in (fast_paths() if fast_paths is not None else {}).items():
            # The builtins stand for MapCache's own methods, never a subclass's.
            if getattr(type(self), name) is getattr(MapCache, name):
                setattr(self, name, fn)

    # -- mapping ---------------------------------------------------------

    def map(self, paddr: int, size: int, dma: bool = False, tag: Any = None) -> Mapping:
        """Map ``[paddr, paddr + size)`` locked; returns a :class:`Mapping`.

        ``tag`` (any object) names it in :meth:`locked` and :meth:`invalidate`.
        Raises ``InvalidAddress``, ``MappingError``, ``LockOverflow``, or
        ``MapCacheError`` on a closed cache; a failure keeps no lock.  On the
        C core (CPython) a builtin serves it: one core call, no Python frame.
        """
        self._check_open()
        paddr, size = check_range(paddr, size, self.max_size)
        return self._reg.map(paddr, size, bool(dma), tag)  # type: ignore[no-any-return]

    def map_ptr(self, paddr: int, size: int = 0, lock: bool = False, dma: bool = False) -> int:
        """Map like QEMU's ``xen_map_cache``: returns the host address as an int."""
        self._check_open()
        paddr, size = check_range(paddr, size, self.max_size)
        flags = (LOCK if lock else 0) | (DMA if lock and dma else 0)
        return int(self._core.map(paddr, size, flags, RAW))

    def unlock(self, address: int) -> None:
        """Drop one locked mapping at exactly ``address`` (QEMU's invalidate_map_cache_entry).

        A raw lock (``map_ptr(..., lock=True)``) first, else the newest
        :class:`Mapping` there that no view holds (``BufferError`` if every
        one has views); ``UnknownMapping`` when there is none.
        """
        self._check_open()
        address = as_uint(address, "address")
        try:
            self._core.unlock(address, RAW)
            return
        except UnknownMapping:
            pass
        if not self._reg.release_at(address):
            raise UnknownMapping(f"no locked mapping at {address:#x}")

    def ram_addr(self, address: int) -> int:
        """The guest-physical address behind a host address inside a mapped entry."""
        self._check_open()
        return int(self._core.ram_addr(as_uint(address, "address")))

    def read(self, paddr: int, n: int) -> bytes:
        """Read ``n`` bytes of guest memory through the cache (unlocked)."""
        self._check_open()
        paddr, n = check_range(paddr, n, U64_LIMIT)
        return self._core.read(paddr, n)  # type: ignore[no-any-return]

    def readinto(self, paddr: int, buffer: Any) -> int:
        """Fill the writable ``buffer`` with guest memory from ``paddr``; returns its length in bytes.

        Any writable C-contiguous buffer: ``bytearray``, ``memoryview``,
        ``mmap``, a numpy array.  Unlocked, like :meth:`read`, and may span
        buckets.  On the C core (CPython) a builtin copies straight into the
        buffer with no allocation (over several buckets, through a bounce
        buffer, so that a failure leaves ``buffer`` untouched).  Raises
        ``TypeError`` for a read-only or non-contiguous buffer, and what
        :meth:`read` raises.
        """
        self._check_open()
        with memoryview(buffer) as view:
            if view.readonly:
                raise TypeError("readinto needs a writable buffer")
            with view.cast("B") as flat:  # TypeError unless contiguous
                paddr, n = check_range(paddr, len(flat), U64_LIMIT)
                flat[:] = self._core.read(paddr, n)
        return n

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
        for m in self._reg.mappings():  # Mappings follow their entry
            try:
                self._reg.set_paddr(m, self._core.ram_addr(m.address))
            except UnknownMapping:  # released meanwhile, or not mapped yet
                pass
        return int(address)

    # -- bulk operations ---------------------------------------------------

    def _locked_mappings(self, records: list[tuple[int, int, int, int, bool]]) -> list[LockedMapping]:
        tags = self._reg.tags() if records else {}
        return [LockedMapping(address, paddr, size, dma, tags.get(ident)) for address, paddr, size, ident, dma in records]

    def locked(self) -> list[LockedMapping]:
        """Every outstanding locked mapping, oldest first."""
        self._check_open()
        return self._locked_mappings(self._core.locked())

    def invalidate(self) -> list[LockedMapping]:
        """Unmap every unlocked entry; warn about and return the DMA mappings in flight."""
        self._check_open()
        in_flight = self._locked_mappings(self._core.invalidate())
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

    def _check_open(self) -> None:
        if self._closed:
            raise MapCacheError("the cache is closed")

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def close(self) -> None:
        """Unmap everything.  Raises BufferError (and keeps everything) while a view is alive."""
        if self._closed:
            return
        self._reg.close_registry()  # BufferError while a Mapping has views
        self._closed = True
        self._core.close()

    def __enter__(self) -> MapCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._reg.mappings())} mapping(s)"
        return f"<{type(self).__name__} bucket_shift={self.bucket_shift} max_size={self.max_size:#x} {state}>"
