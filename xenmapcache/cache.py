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

import collections.abc
import itertools
import logging
import sys
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator
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
SG_MAX = 65536  # XMC_SG_MAX: segments in one map_sg


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


class MappingGroup:
    """The Mappings of one :meth:`MapCache.map_sg` call: a sequence of :class:`Mapping`.

    ``len(g)``, ``g[i]``, iteration; :meth:`buffers` gives one writable
    memoryview per mapping for vectored I/O (``os.preadv``, ``os.pwritev``,
    ``socket.recvmsg_into``, ``socket.sendmsg``); :meth:`release` (or the end
    of a ``with`` block) unlocks them all in one core call, all or nothing.
    Each mapping can also be released on its own.  Every buffer rule of
    :class:`Mapping` holds for every view: :meth:`release` raises
    ``BufferError``, releasing none, while a view of any of them is alive
    (the list :meth:`buffers` returns holds one view each until it goes).
    """

    __slots__ = ()

    if TYPE_CHECKING:

        def __len__(self) -> int: ...

        def __getitem__(self, index: int) -> Mapping: ...

        def __iter__(self) -> Iterator[Mapping]: ...

    @property
    def released(self) -> bool:
        """Whether every mapping of the group was released (or its cache closed)."""
        raise NotImplementedError

    def buffers(self) -> list[memoryview]:
        """One writable 1-D memoryview (format 'B') per mapping, in order.

        Each is an export of its mapping: release the views (or drop the
        list) before :meth:`release`.  Costs one memoryview per mapping.
        """
        raise NotImplementedError

    def release(self) -> None:
        """Unlock every mapping of the group still locked, in one core call.

        A second call does nothing.  Raises ``BufferError`` (and releases
        none) while a memoryview of any of them is alive.
        """
        raise NotImplementedError

    def __enter__(self) -> MappingGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


collections.abc.Sequence.register(MappingGroup)


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


class _PyMappingGroup(MappingGroup):
    """The Python ``MappingGroup``, kept by a :class:`_PyRegistry`."""

    __slots__ = ("_reg", "_items", "_id")

    def __init__(self, reg: _PyRegistry, items: tuple[_PyMapping, ...], ident: int) -> None:
        self._reg = reg
        self._items = items
        self._id = ident

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: Any) -> Any:
        return self._items[index]

    def __iter__(self) -> Iterator[Mapping]:
        return iter(self._items)

    @property
    def released(self) -> bool:
        """Whether every mapping of the group was released (or its cache closed)."""
        return all(m._released for m in self._items)

    def buffers(self) -> list[memoryview]:
        """One writable memoryview per mapping, in order."""
        return [memoryview(m) for m in self._items]

    def release(self) -> None:
        """Unlock every mapping still locked, all or nothing (BufferError while views live)."""
        self._reg.release_group(self)

    def __reduce__(self) -> Any:
        raise TypeError("cannot pickle or copy a MappingGroup: it owns locks on guest memory")

    def __repr__(self) -> str:
        return f"<MappingGroup of {len(self._items)}: {self._items!r}>"


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
        self._mappings: dict[_PyMapping, None] = {}  # the live Mappings, oldest first
        self._ids = itertools.count(1)
        self._closed = False

    def map(self, paddr: int, size: int, dma: bool, tag: Any) -> Mapping:
        m = _PyMapping(self, next(self._ids), paddr, size, dma, tag)
        with self.lock:
            if self._closed:
                raise MapCacheError("the cache is closed")
            self._mappings[m] = None  # before the call: invalidate() may list it at once
        try:
            m.address = self.core.map(paddr, size, LOCK | (DMA if dma else 0), m._id)
        except BaseException:
            with self.lock:
                self._mappings.pop(m, None)
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
            self._mappings.pop(m, None)
        self.core.unlock(m.address, m._id)

    def map_sg(self, segments: list[tuple[int, int]], dma: bool, tag: Any) -> MappingGroup:
        ident = next(self._ids)  # one tag id for the batch, as the core's batch takes
        items = tuple(_PyMapping(self, ident, paddr, size, dma, tag) for paddr, size in segments)
        with self.lock:
            if self._closed:
                raise MapCacheError("the cache is closed")
            self._mappings.update(dict.fromkeys(items))
        try:
            addresses = self.core.map_sg(segments, LOCK | (DMA if dma else 0), ident)
        except BaseException:
            with self.lock:
                for m in items:
                    self._mappings.pop(m, None)
            raise
        for m, address in zip(items, addresses, strict=True):
            m.address = address
        with self.lock:
            if self._closed:  # closed while we mapped: the core has unmapped them
                for m in items:
                    m._released = True
                raise MapCacheError("the cache was closed")
        return _PyMappingGroup(self, items, ident)

    def release_group(self, g: _PyMappingGroup) -> None:
        with self.lock:
            live = [m for m in g._items if not m._released]
            busy = sum(1 for m in live if m._exports)
            if busy:
                raise BufferError(f"memoryviews of {busy} mapping(s) of the group are still alive")
            if not live:
                return
            for m in live:
                m._released = True
                self._mappings.pop(m, None)
        try:
            self.core.unlock_sg([m.address for m in live], g._id)
        except BaseException:
            with self.lock:
                if self._closed:  # closed meanwhile: unmapped already
                    return
                for m in live:  # nothing was unlocked: as it was
                    m._released = False
                    self._mappings[m] = None
            raise

    def tags(self) -> dict[int, Any]:
        with self.lock:
            return {m._id: m.tag for m in self._mappings}

    def release_at(self, address: int) -> bool:
        with self.lock:
            holders = [m for m in self._mappings if m.address == address]
            idle = [m for m in holders if not m._exports]
        if idle:
            idle[-1].release()
            return True
        if holders:
            raise BufferError(f"every mapping at {address:#x} still has memoryviews alive")
        return False

    def mappings(self) -> list[Mapping]:
        with self.lock:
            return list(self._mappings)

    def set_paddr(self, m: _PyMapping, paddr: int) -> None:
        m.paddr = paddr

    def close_registry(self) -> None:
        with self.lock:
            busy = [m for m in self._mappings if m._exports]
            if busy:
                raise BufferError(f"{len(busy)} mapping(s) still have memoryviews alive")
            self._closed = True
            for m in self._mappings:
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

    def map_sg(self, segments: Iterable[tuple[int, int]], dma: bool = False, tag: Any = None) -> MappingGroup:
        """Map every ``(paddr, size)`` of ``segments`` locked, in one core call; returns a :class:`MappingGroup`.

        Scatter-gather DMA: ``with cache.map_sg(sg, dma=True) as g:
        os.preadv(fd, g.buffers(), offset)``.  All or nothing: when a segment
        cannot be mapped, none stays locked and the statistics move only as
        that segment's failed map would.  Every mapping of the batch carries
        ``tag`` (:meth:`locked` and :meth:`invalidate` name each by it).
        Raises ``TypeError`` unless segments are pairs of ints,
        ``InvalidAddress`` for an empty batch, more than 65,536 segments or a
        segment out of range (checked before anything is mapped), and what
        :meth:`map` raises.  On the C core (CPython) a builtin serves a list
        or tuple of int pairs with no Python frame.
        """
        self._check_open()
        checked = []
        for segment in segments:
            if not isinstance(segment, tuple | list) or len(segment) != 2:
                raise TypeError(f"a segment must be a (paddr, size) pair, not {segment!r}")
            checked.append(check_range(segment[0], segment[1], self.max_size))
        if not 0 < len(checked) <= SG_MAX:
            raise InvalidAddress(f"map_sg takes 1 to {SG_MAX} segments, not {len(checked)}")
        return self._reg.map_sg(checked, bool(dma), tag)  # type: ignore[no-any-return]

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
