"""The public mapcache API (the contract, section 6) over an interchangeable core.

The contract: https://xenmapcache.readthedocs.io/en/latest/contract.html

``MapCache`` adds to a core (the C one here, the pure-Python reference in
``xenmapcache.reference``) what belongs to Python: input checks, ``Mapping``
objects with buffer export counting, tags, the DMA warnings, and lifetimes.
A core is what ``_protocols.Core`` says (``NativeCore`` in ``_native.py``, or
the reference's); its ``registry(cache, checked)`` keeps the cache's Mappings
(None: a ``_mapping._PyRegistry`` does).  On CPython that registry is a
``NativeCache`` whose builtins serve the hot methods (``HOT_METHODS``):
MapCache's own hot methods are method descriptors of the binding that call
them (unless a subclass overrides them), so that the common case costs one C
call and no Python frame; anything else they hand straight to the method
here of the same name, which checks and calls the core.
"""

from __future__ import annotations

import inspect
import logging
import os
import sys
import warnings
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from ._binding import HOT_METHODS
from ._mapping import DMA, LOCK, Mapping, MappingGroup, _PyRegistry
from ._native import NativeCore, native_types
from ._nocopy import NoCopy
from ._protocols import Core, CoreType, Registry
from ._validate import U64_LIMIT, as_uint, check_range
from .backends import CallbackBackend
from .errors import DMAMappingWarning, InvalidAddress, MapCacheError, MappingError, UnknownMapping
from .ram import GuestRAM
from .trace import Trace, emit_unknown, guard, make_sink
from .xen import XenForeignMemory, XenGrantTable

logger = logging.getLogger("xenmapcache")

DEFAULT_MAX_SIZE = (1 << 35) if sys.maxsize > 2**32 else (1 << 31)
DEFAULT_BUCKET_SHIFT = 20 if sys.maxsize > 2**32 else 16
MIN_BUCKET_SHIFT, MAX_BUCKET_SHIFT = 12, 32
LOCK_LIMIT_MAX = 2**32 - 1

Translate = Callable[[int, int], int]
# What a cache maps through: each has ``_c_backend()``, a context manager
# yielding an ``xmc_backend *`` that a C cache retains.
Backend = GuestRAM | XenForeignMemory | XenGrantTable | CallbackBackend
# A raw record (map_ptr with lock=True) carries this tag id; Mappings get their own.
RAW = 0
SG_MAX = 65536  # XMC_SG_MAX: segments in one map_sg


@dataclass(frozen=True, slots=True)
class LockedMapping:
    """One outstanding locked mapping, as listed by ``locked()`` and ``invalidate()``.

    A snapshot: it does not change when the mapping is released, and releasing
    it is done through the :class:`Mapping` (or ``cache.unlock(address)``).

    - ``address``: the host address handed out for the mapping;
    - ``paddr``: the guest-physical address behind it (after a ``replace``, the new one);
    - ``size``: the size asked for;
    - ``dma``: whether it was mapped for DMA (``dma=True``), which ``invalidate()`` warns about;
    - ``tag``: the ``tag`` given to ``cache.map()``; None for ``map_ptr(..., lock=True)``.
    """

    address: int
    paddr: int
    size: int
    dma: bool
    tag: Any


@dataclass(frozen=True, slots=True)
class Stats:
    """Counters of one cache, as returned by ``cache.stats()`` (the contract, section 6:
    https://xenmapcache.readthedocs.io/en/latest/contract.html).

    - ``hits``: requests served by an entry already mapped;
    - ``misses``: requests that had to map;
    - ``remaps``: misses that reused an unlocked entry;
    - ``entries``: live entries (host mappings);
    - ``locked``: outstanding locked mappings;
    - ``dma_locked``: of which mapped for DMA;
    - ``mapped_bytes``: bytes mapped by the live entries;
    - ``invalidations``: calls of ``invalidate()``.

    A refused call moves no counter.
    """

    hits: int
    misses: int
    remaps: int
    entries: int
    locked: int
    dma_locked: int
    mapped_bytes: int
    invalidations: int


# Every live MapCache, for the fork handler below.
_caches: weakref.WeakSet[MapCache] = weakref.WeakSet()


def _after_fork() -> None:
    """In a forked child, free the Python-side locks a parent thread may have held.

    A :class:`_PyRegistry`'s lock (shared with its Mappings) guards only the
    registry of Mappings, never a C call; a thread that held it at fork() is
    gone from the child, and the child would wait for it forever.  (The
    binding's C registry needs none: the GIL is its lock.)  The C core
    answers for its own mutex (XMC_EFORKED).
    """
    for cache in list(_caches):
        lock = getattr(cache._reg, "lock", None)
        if lock is not None:
            lock._at_fork_reinit()  # the stdlib's own way (logging, threading)


os.register_at_fork(after_in_child=_after_fork)

# On CPython, MapCache's base holds each cache's NativeCache, and a method
# descriptor of the binding stands for each hot method (ffi/hot.h, made below
# the class): `cache.map_ptr(p)` calls the builtin's C function with no
# object made, and every cache is of its own class.
try:
    _TYPES = native_types()
except ImportError:  # no C core, or a stale one: the first MapCache says so (NativeCore)
    _TYPES = None
if TYPE_CHECKING or _TYPES is None:

    class _FastBase:
        """Elsewhere (no binding types), nothing: the hot methods are MapCache's own."""

        __slots__ = ()

        def _set_fast(self, native: Any) -> None: ...

else:
    _FastBase = _TYPES.FastCache


class MapCache(_FastBase, NoCopy):
    """A Xen mapcache over guest memory (the contract, sections 3 and 6: https://xenmapcache.readthedocs.io/en/latest/contract.html).

    ``ram`` is the backend the cache maps through: a :class:`GuestRAM`, a
    :class:`XenForeignMemory`, a :class:`XenGrantTable` or a :class:`CallbackBackend`; the cache keeps it
    alive while it needs it.  ``bucket_shift`` (12 to 32) sets the bucket size,
    ``2**bucket_shift`` bytes.  ``max_size`` bounds the size of one request and
    sets the number of hash slots, ``max_size / bucket size`` (None: 32 GiB on
    64-bit hosts, 2 GiB on 32-bit ones).  ``translate(paddr, size) -> paddr``,
    if given, is called once when pages cannot be mapped, and the request
    retried at the address it returns.  ``dummy_on_failure`` maps anonymous
    memory where guest pages cannot be mapped, instead of failing (an incoming
    migration; ``replace()`` later swaps in the real pages).  ``lock_limit``
    caps the lock count of each entry (at most ``2**32 - 1``).
    ``grants=True`` applies the grant rules of QEMU's grant caches
    (https://xenmapcache.readthedocs.io/en/latest/trace-and-grants.html): only locked requests (``map``, ``map_ptr``
    with ``lock=True``), page-granular entries (``bucket_shift`` must be 12,
    else ``InvalidAddress``), each entry unmapped as soon as its last lock is
    released; an unlocked request, ``read``, ``write`` and ``replace`` raise
    ``MapCacheError`` and map nothing.
    ``trace(event)`` is called with a :class:`~xenmapcache.trace.TraceEvent`
    for everything the cache does (see :mod:`xenmapcache.trace`); what it
    raises is logged, never passed on.

    Every method is safe to call from any thread: the C core serialises the
    calls on one cache with its own mutex, and no thread waits for it while
    holding the GIL.  Every call on a closed cache raises ``MapCacheError``, and
    a call that raises has changed nothing.  Also a context manager, which
    closes the cache.  A cache that is never closed is cleaned up by the
    garbage collector.  It cannot be pickled or copied (``TypeError``).

    Attributes (read them, do not change them): ``bucket_shift``,
    ``max_size`` (as resolved: an int, never None) and ``grants``.

    :raises TypeError: ``ram`` is not a backend, a value is not an int, or
        ``translate`` or ``trace`` is not callable.
    :raises InvalidAddress: ``bucket_shift`` out of range, ``max_size`` zero
        or too large, ``lock_limit`` over ``2**32 - 1``.
    :raises MapCacheError: the backend is closed.
    :raises MemoryError: the C core is out of memory (any method may raise
        it, having changed nothing).

    Cost: the hash slots, 8 bytes each (about 256 KiB for the defaults); no
    guest memory is mapped until the first request.
    """

    # No instance dict: CPython 3.13 specialises the lookup of a method on an
    # object without one (or with an inline one, which a base with fields,
    # FastCache, rules out); `cache.map_ptr(p)` then costs its builtin's call.
    __slots__ = ("bucket_shift", "max_size", "grants", "_trace", "_core", "_ram", "_closed", "_reg", "__weakref__")
    _Core: ClassVar[CoreType] = NativeCore
    _no_copy_why = "a copy would share the cache's handle and mappings, which either copy may close"
    __signature__: ClassVar[inspect.Signature | None]  # __init__'s (set below the class)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:  # its own parameters
            try:
                cls.__signature__ = _init_signature(cls)
            except (TypeError, ValueError):  # an __init__ inspect cannot read: not MapCache's
                cls.__signature__ = None
        if _TYPES is not None:  # its own descriptors of the hot methods it inherits (ffi/hot.h)
            _TYPES.make_hot(cls, tuple(name for name in HOT_METHODS if _is_hot(getattr(cls, name))))

    def __init__(
        self,
        ram: Backend,
        bucket_shift: int = DEFAULT_BUCKET_SHIFT,
        max_size: int | None = None,
        translate: Translate | None = None,
        dummy_on_failure: bool = False,
        lock_limit: int = LOCK_LIMIT_MAX,
        grants: bool = False,
        trace: Trace | None = None,
    ) -> None:
        if not isinstance(ram, (GuestRAM, XenForeignMemory, XenGrantTable, CallbackBackend)):
            raise TypeError(
                f"ram must be a GuestRAM, XenForeignMemory, XenGrantTable or CallbackBackend, not {type(ram).__name__}"
            )
        shift = as_uint(bucket_shift, "bucket_shift")
        if not MIN_BUCKET_SHIFT <= shift <= MAX_BUCKET_SHIFT:
            raise InvalidAddress(f"bucket_shift must be in [{MIN_BUCKET_SHIFT}, {MAX_BUCKET_SHIFT}]: {shift}")
        max_size = DEFAULT_MAX_SIZE if max_size is None else as_uint(max_size, "max_size")
        if max_size == 0:
            raise InvalidAddress("max_size must be positive")
        if translate is not None and not callable(translate):
            raise TypeError("translate must be callable")
        if trace is not None and not callable(trace):
            raise TypeError("trace must be callable")
        lock_limit = as_uint(lock_limit, "lock_limit", LOCK_LIMIT_MAX + 1)
        if grants and shift != MIN_BUCKET_SHIFT:
            raise InvalidAddress(f"grants=True needs page-granular entries, bucket_shift=12: {shift}")
        self.bucket_shift = shift
        self.max_size = max_size
        self.grants = bool(grants)
        self._trace = trace
        self._core: Core = self._Core(
            ram,
            shift,
            max_size,
            translate,
            bool(dummy_on_failure),
            lock_limit,
            grants=self.grants,
            trace=None if trace is None else make_sink(self, trace),
        )
        if trace is not None:
            guard(self._core)  # an interrupt the hook raises is raised by the call that emitted the event
        self._ram = ram
        self._closed = False
        self._reg: Registry = self._core.registry(self, _CHECKED) or _PyRegistry(self._core)
        if self._core.fast_paths():  # the hot methods call the builtins of the registry (a NativeCache)
            self._set_fast(self._reg)
        _caches.add(self)
        # The registry and its Mappings refer to each other; once the
        # MapCache is gone, nothing else can use the registry: break that
        # cycle then, so that a forgotten cache is unmapped at once.
        weakref.finalize(self, self._reg.detach)

    # -- mapping ---------------------------------------------------------

    def map(self, paddr: int, size: int, dma: bool = False, tag: Any = None) -> Mapping:
        """Map ``[paddr, paddr + size)`` locked, and return it as a :class:`Mapping`.

        The mapping stays mapped, and its entry locked, until it is released
        (``m.release()``, the end of its ``with`` block, or ``cache.unlock``).
        ``dma=True`` marks it as a DMA transfer: ``invalidate()`` warns about it
        while it is outstanding.  ``tag`` is any object, reported with it.

        :raises InvalidAddress: a negative ``paddr`` or ``size``, ``paddr + size``
            past ``2**64``, or ``size`` over ``max_size``.
        :raises TypeError: ``paddr`` or ``size`` is not an int.
        :raises MappingError: a page of the range cannot be mapped (a hole, past
            the end of guest memory, a backend failure) and neither
            ``translate`` nor dummy mode helped.
        :raises LockOverflow: the entry's lock count is at ``lock_limit``.
        :raises MapCacheError: the cache is closed (or was closed meanwhile).

        Cost: on a hit, on the C core under CPython, one builtin call that
        makes one C call and the :class:`Mapping`, about as much as the raw
        ``map_ptr(..., lock=True)`` + ``unlock`` pair
        (https://xenmapcache.readthedocs.io/en/latest/scatter-gather.html); elsewhere a few microseconds of Python.  On
        a miss, the backend's map of the entry's buckets.  O(1) in the number
        of locked mappings.
        """
        self._check_open()
        paddr, size = check_range(paddr, size, self.max_size)
        return self._reg.mapping(paddr, size, bool(dma), tag)

    def map_sg(self, segments: Iterable[tuple[int, int]], dma: bool = False, tag: Any = None) -> MappingGroup:
        """Map every ``(paddr, size)`` of ``segments`` locked, in one core call; return a :class:`MappingGroup`.

        Scatter-gather DMA (https://xenmapcache.readthedocs.io/en/latest/scatter-gather.html): ``with
        cache.map_sg(sg, dma=True) as g: os.preadv(fd, g.buffers(), offset)``.
        All or nothing: when a segment cannot be mapped, none stays locked,
        and the statistics move only as that segment's failed :meth:`map`
        would.  Every mapping of the batch carries ``tag`` (:meth:`locked`
        and :meth:`invalidate` name each by it) and ``dma``.

        :raises TypeError: a segment is not a pair of ints.
        :raises InvalidAddress: no segment, more than 65,536, or a segment out
            of range (checked before anything is mapped).
        :raises MappingError: a page of a segment cannot be mapped.
        :raises LockOverflow: an entry's lock count would pass ``lock_limit``.
        :raises MapCacheError: the cache is closed.

        Cost: one C call (``xmc_map_sg``, one acquisition of the mutex) and
        one :class:`Mapping` per segment; on the C core under CPython a list
        or tuple of int pairs is served with no Python frame, and the group
        makes each :class:`Mapping` only when it is first asked for (an
        index, iteration, ``os.preadv``), from groups kept for reuse.  O(n)
        in the segments, O(1) in the locked mappings.
        """
        self._check_open()
        checked = []
        for segment in segments:
            if not isinstance(segment, tuple | list) or len(segment) != 2:
                raise TypeError(f"a segment must be a (paddr, size) pair, not {segment!r}")
            checked.append(check_range(segment[0], segment[1], self.max_size))
        if not 0 < len(checked) <= SG_MAX:
            raise InvalidAddress(f"map_sg takes 1 to {SG_MAX} segments, not {len(checked)}")
        return self._reg.group(checked, bool(dma), tag)

    def map_ptr(self, paddr: int, size: int = 0, lock: bool = False, dma: bool = False) -> int:
        """Map like QEMU's ``xen_map_cache``: return the host address of ``paddr`` as an int.

        ``size`` 0 means "within one bucket" (QEMU's usual call).  Unlocked (the
        default), the address is valid only until the cache next remaps or
        invalidates that entry: use it at once.  With ``lock=True`` the entry is
        locked as by :meth:`map`, with no tag (``dma`` marks it DMA), until
        ``cache.unlock(address)``.

        :raises InvalidAddress: a negative ``paddr`` or ``size``, a range past
            ``2**64``, or ``size`` over ``max_size``.
        :raises TypeError: ``paddr`` or ``size`` is not an int.
        :raises MappingError: a page cannot be mapped.
        :raises LockOverflow: ``lock=True`` and the entry's lock count is at the limit.
        :raises MapCacheError: the cache is closed.

        Cost: the fast path.  A hit is one C call that keeps the GIL, under
        0.1 us on CPython (https://xenmapcache.readthedocs.io/en/latest/performance.html); a miss maps, as
        :meth:`map`.
        """
        self._check_open()
        paddr, size = check_range(paddr, size, self.max_size)
        flags = (LOCK if lock else 0) | (DMA if lock and dma else 0)
        return int(self._core.map(paddr, size, flags, RAW))

    def unlock(self, address: int) -> None:
        """Drop one locked mapping at exactly ``address`` (QEMU's ``xen_invalidate_map_cache_entry``).

        Removes the newest raw lock at that address (from ``map_ptr(...,
        lock=True)``), else releases the newest :class:`Mapping` there that
        has no view alive.  The entry stays mapped (until a remap or an
        ``invalidate()``) but is no longer pinned by this lock.

        :raises UnknownMapping: no locked mapping at that exact address
            (never mapped, or already unlocked).
        :raises BufferError: every Mapping at that address has views alive.
        :raises InvalidAddress: a negative ``address`` or one of ``2**64`` or more.
        :raises TypeError: ``address`` is not an int.
        :raises MapCacheError: the cache is closed.

        Cost: O(1) in the number of locked mappings for a raw lock (one C
        call); releasing a :class:`Mapping` by its address scans the live
        Mappings of the cache.
        """
        self._check_open()
        address = as_uint(address, "address")
        try:
            self._core.unlock(address, RAW)
            return
        except UnknownMapping:
            pass
        if not self._reg.release_at(address):
            self._trace_unknown("unlock_unknown", address)
            raise UnknownMapping(f"no locked mapping at {address:#x}")

    def ram_addr(self, address: int) -> int:
        """Return the guest-physical address behind a host address inside a mapped entry.

        Any address inside any live entry resolves, locked or not: the exact
        address of a mapping, or an interior pointer into it.

        :raises UnknownMapping: the address is in no entry of this cache.
        :raises InvalidAddress: a negative ``address`` or one of ``2**64`` or more.
        :raises TypeError: ``address`` is not an int.
        :raises MapCacheError: the cache is closed.

        Cost: one C call; O(1) for the exact address of a locked mapping,
        O(log n) in the live entries for any other address.
        """
        self._check_open()
        address = as_uint(address, "address")
        try:
            return int(self._core.ram_addr(address))
        except UnknownMapping:
            self._trace_unknown("ram_addr_unknown", address)
            raise

    def read(self, paddr: int, n: int) -> bytes:
        """Read ``n`` bytes of guest memory at ``paddr`` through the cache, as a new ``bytes``.

        Transient and unlocked: the range may span buckets (it is copied a
        bucket at a time), and nothing stays locked afterwards.

        :raises MappingError: a page of the range cannot be mapped, or the
            range is too large to map in this process (then nothing is
            returned; a range that cannot be mapped costs no memory).
        :raises InvalidAddress: negative values, or ``paddr + n`` past ``2**64``.
        :raises TypeError: ``paddr`` or ``n`` is not an int.
        :raises MapCacheError: the cache is closed.

        Cost: one C call per request (the GIL is kept for a hit within a page),
        plus the copy of ``n`` bytes into the new object; a miss maps the bucket.
        """
        self._check_open()
        paddr, n = check_range(paddr, n, U64_LIMIT)
        return self._core.read(paddr, n)

    def readinto(self, paddr: int, buffer: Any) -> int:
        """Fill the writable ``buffer`` with guest memory from ``paddr``; return its length in bytes.

        Any writable C-contiguous buffer: ``bytearray``, ``memoryview``,
        ``mmap``, an ``array.array``, a numpy array.  Transient and unlocked,
        like :meth:`read`; the range may span buckets.  A failure leaves
        ``buffer`` untouched.

        :raises TypeError: ``paddr`` is not an int, or ``buffer`` is not a
            writable contiguous buffer.
        :raises MappingError: a page of the range cannot be mapped.
        :raises InvalidAddress: a negative ``paddr``, or a range past ``2**64``.
        :raises MapCacheError: the cache is closed.

        Cost: on the C core under CPython, one builtin call and one C call
        that copies straight into the buffer, with no allocation (a range
        over several buckets goes through a bounce buffer); elsewhere, a
        :meth:`read` and a copy.
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
        """Write ``data`` (any bytes-like object) into guest memory at ``paddr`` through the cache.

        Transient and unlocked, like :meth:`read`; the range may span buckets.
        All or nothing: every page is mapped before a byte is written, so a
        write that would run into a hole writes nothing.

        :raises MappingError: a page of the range cannot be mapped.
        :raises InvalidAddress: a negative ``paddr``, or a range past ``2**64``.
        :raises TypeError: ``paddr`` is not an int, or ``data`` not a buffer.
        :raises MapCacheError: the cache is closed.

        Cost: on the C core under CPython, one builtin call and one C call,
        which keeps the GIL for up to a page within one mapped bucket, plus
        the copy of ``data``; elsewhere, a C call that releases the GIL.
        """
        self._check_open()
        view = memoryview(data).cast("B")
        paddr, _ = check_range(paddr, len(view), U64_LIMIT)
        self._core.write(paddr, view)

    def replace(self, old_paddr: int, new_paddr: int, size: int) -> int:
        """Remap the entry holding ``old_paddr`` onto ``new_paddr`` in place; return the new host address.

        The entry keeps its host address (it is remapped with ``MAP_FIXED``),
        so pointers into it stay valid and now show the new guest memory; its
        locked mappings (and :class:`Mapping` objects) then report the new
        ``paddr``.  Meant for swapping the dummy mappings of an incoming
        migration for real ones; valid for any entry, locked or not.

        :raises UnknownMapping: no entry holds ``old_paddr`` with that size.
        :raises MappingError: the new pages cannot be mapped (the entry is left
            as it was).
        :raises InvalidAddress: negative values, ranges past ``2**64``, or
            ``size`` over ``max_size``.
        :raises TypeError: an argument is not an int.
        :raises MapCacheError: the cache is closed.

        Cost: one remap by the backend (a system call), plus a reverse lookup
        per live :class:`Mapping` of this cache.
        """
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
        """Return every outstanding locked mapping, oldest first, as :class:`LockedMapping` snapshots.

        :raises MapCacheError: the cache is closed.

        Cost: O(n) in the locked mappings; one C call and one object each.
        """
        self._check_open()
        return self._locked_mappings(self._core.locked())

    def invalidate(self) -> list[LockedMapping]:
        """Unmap every unlocked entry; warn about, and return, the DMA mappings in flight.

        What the hypervisor asks for after ballooning the guest (QEMU's
        ``xen_invalidate_map_cache``).  Every unlocked entry is unmapped,
        chained ones included; locked entries stay mapped with their data.  For
        each DMA mapping still outstanding, a :class:`DMAMappingWarning` is
        issued through :mod:`warnings` and one summary is logged at WARNING
        level on the ``xenmapcache`` logger; device-memory locks (not DMA) are
        kept silently.  Returns the DMA mappings in flight, oldest first.

        :raises MapCacheError: the cache is closed.  (An unmap failure of the
            backend is logged at ERROR level, not raised: the invalidation has
            happened.)
        :raises KeyboardInterrupt: (or any other interrupt) raised by a
            backend's unmap or a tag's ``repr``: after the report, which is
            made first (a tag whose ``repr`` raises is shown by its type and id).

        Cost: O(live entries + DMA mappings in flight), independent of the
        number of hash slots; one C call when no DMA is in flight.
        """
        self._check_open()
        records, failed = self._core.invalidate()
        in_flight = self._locked_mappings(records)
        # The whole report is built before anything that can raise runs (a
        # warnings filter set to "error", an interrupt in a tag's repr).
        interrupt = failed if failed is not None and not isinstance(failed, Exception) else None
        shown: dict[int, tuple[str, int]] = {}  # id(tag) -> (its repr, how many mappings); a batch shares one
        messages = []
        for lm in in_flight:
            if lm.tag is None:
                name = f"{lm.paddr:#x}"
            elif id(lm.tag) in shown:
                name = shown[id(lm.tag)][0]
            else:
                try:
                    name = repr(lm.tag)
                except BaseException as exc:  # noqa: BLE001 - kept, raised after the report
                    name = f"<{type(lm.tag).__name__} object at {id(lm.tag):#x}>"
                    if interrupt is None and not isinstance(exc, Exception):
                        interrupt = exc
            if lm.tag is not None:
                shown[id(lm.tag)] = (name, shown.get(id(lm.tag), ("", 0))[1] + 1)
            messages.append(
                f"DMA mapping {name} of guest [{lm.paddr:#x}, +{lm.size:#x}) at {lm.address:#x} "
                "is still in flight across a mapcache invalidation"
            )
        if failed is not None:
            logger.error("invalidate: unmapping an entry failed: %s", failed)
        if in_flight:
            untagged = [f"{lm.paddr:#x}" for lm in in_flight if lm.tag is None]
            tagged = [name if count == 1 else f"{name} ({count} mappings)" for name, count in shown.values()]
            logger.warning(
                "mapcache invalidated with %d DMA mapping(s) in flight: %s", len(in_flight), ", ".join(tagged + untagged)
            )
        for message in messages:
            warnings.warn(DMAMappingWarning(message), stacklevel=2)
        if interrupt is not None:
            raise interrupt
        return in_flight

    def stats(self) -> Stats:
        """Return the cache's counters as a :class:`Stats`: hits, misses, and what is mapped now.

        :raises MapCacheError: the cache is closed.

        Cost: one C call; O(1).
        """
        self._check_open()
        return Stats(*self._core.stats())

    # -- lifetime -------------------------------------------------------------

    def _trace_tag(self, ident: int) -> Any:
        """The tag object of the Mapping with tag id ``ident``, for a trace event.

        A Mapping stays in the registry until its core unlock returns, so its
        own unlock event finds it too.
        """
        return self._reg.tag_of(ident)

    def _trace_unknown(self, name: str, address: int) -> None:
        """Trace a lookup of an unknown address: here, once per call (the core may be asked twice)."""
        emit_unknown(self._trace, name, address)

    def _check_open(self) -> None:
        if self._is_closed():
            raise MapCacheError("the cache is closed")

    def _is_closed(self) -> bool:
        try:
            return self._closed
        except AttributeError:  # a subclass whose __init__ never called MapCache.__init__
            raise AttributeError(
                f"{type(self).__name__}: the cache was never set up "
                "(a subclass's __init__ must call super().__init__(...))",
                name="_closed",
                obj=self,
            ) from None

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (every call but ``close`` then raises)."""
        return self._is_closed()

    def close(self) -> None:
        """Unmap everything and drop every record; a second call does nothing.

        Every :class:`Mapping` of the cache is released with it.  Other threads
        inside a call at that moment finish, or fail with ``MapCacheError``;
        their pointers into the cache must not be used afterwards.

        :raises BufferError: a memoryview of one of its mappings is still alive
            (then nothing is closed or unmapped).
        :raises MapCacheError: called from inside a backend callback or the
            trace hook of this very cache (which run under its mutex): then
            nothing is closed; or a backend unmap failed
            (its exception is the cause): everything else is unmapped, and the
            cache is closed all the same.  In a child process forked while
            another thread was inside the cache: that cache cannot be used
            there (``XMC_EFORKED``).

        Cost: one unmap per live entry.
        """
        if self._is_closed():
            return
        # Decide before changing anything: a core call is refused here from
        # inside one of the cache's own callbacks (or in a forked child), and
        # the registry refuses while a Mapping has views (BufferError).
        self._core.stats()
        self._reg.close_registry()
        self._closed = True
        self._core.close()

    def __enter__(self) -> MapCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._reg.mappings())} mapping(s)"
        return f"<{type(self).__name__} bucket_shift={self.bucket_shift} max_size={self.max_size:#x} {state}>"


def _init_signature(cls: type[MapCache]) -> inspect.Signature:
    """The signature of calling ``cls``: its ``__init__``'s, without ``self``."""
    sig = inspect.signature(cls.__init__)
    return sig.replace(parameters=list(sig.parameters.values())[1:], return_annotation=inspect.Signature.empty)


MapCache.__signature__ = _init_signature(MapCache)
# What the builtins of the hot methods fall back on, by name.
_CHECKED = {name: getattr(MapCache, name) for name in HOT_METHODS}



def _is_hot(method: object) -> bool:
    """Whether ``method`` (from a class) is one of the binding's hot method descriptors."""
    owner = getattr(method, "__objclass__", None)
    return type(method).__name__ == "method_descriptor" and isinstance(owner, type) and issubclass(owner, MapCache)


if _TYPES is not None:  # each hot method calls the cache's builtin (ffi/hot.h)
    _TYPES.make_hot(MapCache, HOT_METHODS)
