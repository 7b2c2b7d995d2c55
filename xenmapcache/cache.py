"""The public mapcache API (docs/contract.md, section 6) over an interchangeable core.

``MapCache`` adds to a core (the C one here, the pure-Python reference in
``xenmapcache.reference``) what belongs to Python: input checks, ``Mapping``
objects with buffer export counting, tags, the DMA warnings, and lifetimes.
A core exposes: map, unlock, ram_addr, invalidate, replace, locked, read,
write, stats, view and close (see ``_NativeCore``).  A core may also offer
``fast_paths(cache)``: closures that the cache installs over its own
``map_ptr``, ``read``, ``ram_addr`` and ``unlock`` so that the common case
costs one C call and no Python object besides the result.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import sys
import threading
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._nocopy import NoCopy
from ._validate import U64_LIMIT, as_uint, check_range
from .backends import CallbackBackend
from .errors import DMAMappingWarning, InvalidAddress, MapCacheError, MappingError, UnknownMapping
from .ram import GuestRAM
from .trace import Sink, Trace, TraceEvent, emit, make_sink
from .xen import XenForeignMemory, XenGrantTable

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
Backend = GuestRAM | XenForeignMemory | XenGrantTable | CallbackBackend
# A raw record (map_ptr with lock=True) carries this tag id; Mappings get their own.
RAW = 0
# cache.read fills a fresh bytes object in place (one copy instead of two) on
# CPython, where cffi passes a bytes object to C as a pointer to its own data.
FILL_BYTES = sys.implementation.name == "cpython"
FAST_READ_MAX = 1 << 24  # larger reads take the checked path: the copy dominates


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
    """Counters of one cache, as returned by ``cache.stats()`` (docs/contract.md, section 6).

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


class Mapping(NoCopy):
    """A locked mapping of guest memory: ``memoryview(m)`` reads and writes it.

    Made by :meth:`MapCache.map`, never directly.  The mapping stays locked
    until :meth:`release` (or the end of its ``with`` block): its entry is
    neither unmapped nor reused, and ``invalidate()`` keeps it (and warns about
    it when ``dma`` is true).  ``memoryview(m)`` is writable, one-dimensional,
    of format ``'B'`` and ``size`` bytes long, and reads and writes guest memory
    in place (no copy).  The mapping counts the views exported from it (PEP
    688, slices included): while one is alive, releasing the mapping, or
    closing its cache, raises ``BufferError`` and leaves it mapped, so a view
    never outlives the host mapping behind it.  After release, taking a new
    view raises ``BufferError``.

    Attributes (read them, do not change them):

    - ``address``: the host address of ``paddr``;
    - ``paddr``: the guest-physical address (follows ``cache.replace()``);
    - ``size``: the size asked for, in bytes;
    - ``dma``: whether the mapping is for DMA;
    - ``tag``: any object given to ``cache.map()``, reported by ``locked()``,
      ``invalidate()`` and the ``DMAMappingWarning``.
    """

    __slots__ = ("address", "paddr", "size", "dma", "tag", "_cache", "_lock", "_id", "_exports", "_released")
    _no_copy_why = "a copy would unlock the same locked mapping a second time"

    def __init__(self, cache: MapCache, ident: int, paddr: int, size: int, dma: bool, tag: Any) -> None:
        self._cache = cache
        self._lock = cache._lock  # its own reference: the GC may clear the cache first
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
        """Whether the mapping was released (or its cache closed): then it is unmapped for us."""
        return self._released

    def __buffer__(self, flags: int) -> memoryview:
        with self._lock:
            if self._released:
                raise BufferError("the mapping was released")
            self._exports += 1
        return self._cache._core.view(self.address, self.size)

    def __release_buffer__(self, view: memoryview) -> None:
        view.release()
        with self._lock:
            self._exports -= 1

    def release(self) -> None:
        """Unlock the mapping: drop its reverse record and its lock on the entry.

        A second call, or a call after the cache was closed, does nothing.

        :raises BufferError: a memoryview of the mapping is still alive (the
            mapping stays locked; release the views first).
        :raises MapCacheError: the C core refused (it cannot, short of a bug).

        Cost: O(1), one C call, whatever the number of locked mappings.
        """
        with self._lock:
            if self._released:
                return
            if self._exports:
                raise BufferError(f"{self._exports} memoryview(s) of the mapping are still alive")
            self._released = True
            self._cache._forget(self)
        self._cache._core.unlock(self.address, self._id)

    def __enter__(self) -> Mapping:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "released" if self._released else f"at {self.address:#x}"
        return f"<Mapping paddr={self.paddr:#x} size={self.size:#x} dma={self.dma} tag={self.tag!r} {state}>"


class _NativeCore:
    """The C core behind a ``MapCache``: one ``xmc_cache *``."""

    def __init__(
        self,
        ram: Backend,
        bucket_shift: int,
        max_size: int,
        translate: Translate | None,
        dummy: bool,
        lock_limit: int,
        grants: bool = False,
        trace: Sink | None = None,
    ) -> None:
        from ._native import binding, check

        self._ffi, self._lib = ffi, lib = binding()
        self._check = check
        from . import _callbacks

        out = ffi.new("xmc_cache **")
        # The core calls the trace hook until it is freed, which may be after
        # this object is gone (fast-path closures hold the handle): the C
        # handle's destructor keeps it.
        self._trace = None if trace is None else ffi.new_handle(trace)
        with ram._c_backend() as backend:
            check(lib.xmc_cache_new(backend, bucket_shift, max_size, out), "MapCache")
            # Which pending callback errors are this cache's (see _callbacks).
            self._keys: tuple[int, ...] = (int(ffi.cast("uintptr_t", backend.opaque)),)
        self._c = ffi.gc(
            out[0], functools.partial(_collect, lib.xmc_cache_free, _callbacks.take, self._keys, keep=self._trace)
        )
        check(lib.xmc_cache_set_lock_limit(self._c, lock_limit), "lock_limit")
        check(lib.xmc_cache_set_dummy(self._c, dummy), "dummy_on_failure")
        check(lib.xmc_cache_set_grants(self._c, grants), "grants")
        self._translate = None
        self._take = _callbacks.take
        if translate is not None:
            self._translate = ffi.new_handle(translate)
            self._keys += (int(ffi.cast("uintptr_t", self._translate)),)
            check(lib.xmc_cache_set_translate(self._c, lib._xmc_py_translate, self._translate), "translate")
        if self._trace is not None:
            check(lib.xmc_cache_set_trace(self._c, lib._xmc_py_trace, self._trace), "trace")

    def _fail(self, rc: int, what: str) -> None:
        cause = self._take(self._keys)  # from one of this cache's Python callbacks
        try:
            self._check(rc, what)
        except MapCacheError as exc:
            raise exc from cause

    def _fail_last(self, what: str) -> None:
        """Raise for this thread's last map that returned 0 (see ffi/seam.h)."""
        self._fail(self._lib.xmc_py_last_error(), what)

    def map(self, paddr: int, size: int, flags: int, tag: int) -> int:
        # The address comes back as the return value: nothing shared between threads.
        address: int = self._lib.xmc_py_map(self._c, paddr, size, flags, tag)
        if not address:
            self._fail_last(f"map {paddr:#x}+{size:#x}")
        return address

    def unlock(self, address: int, tag: int) -> None:
        rc = self._lib.xmc_py_unlock(self._c, address, tag)
        if rc:
            self._fail(rc, f"unlock {address:#x}")

    def ram_addr(self, address: int) -> int:
        paddr: int = self._lib.xmc_py_ram_addr(self._c, address)
        if paddr != U64_LIMIT - 1:
            return paddr
        out = self._ffi.new("uint64_t *")  # an error, or really the last byte of guest space
        self._check(self._lib.xmc_ram_addr(self._c, self._ffi.cast("void *", address), out), f"ram_addr {address:#x}")
        return int(out[0])

    def _take_records(self, arr: Any, n: int) -> list[tuple[int, int, int, int, bool]]:
        """The records of a C array, which is then freed."""
        try:
            return [(r.address, r.paddr, r.size, r.tag, bool(r.dma)) for r in arr[0:n]] if n else []
        finally:
            self._lib.xmc_records_free(arr)

    def invalidate(self) -> list[tuple[int, int, int, int, bool]]:
        lib = self._lib
        got = lib.xmc_py_invalidate(self._c)  # one call when no DMA is in flight
        count = got if got > 0 else lib.xmc_py_records_count() if got < 0 else 0
        records = self._take_records(lib.xmc_py_records_take(), count) if count else []
        rc = min(got, 0)
        if rc == lib.XMC_ESYS:
            # The invalidation happened; an entry failed to unmap and is gone
            # all the same (never retried).  Say so once and keep the records.
            cause = self._take(self._keys)
            logger.error("invalidate: unmapping an entry failed: %s", cause or "system call failed")
        elif rc:
            self._fail(rc, "invalidate")
        return records

    def locked(self) -> list[tuple[int, int, int, int, bool]]:
        arr, n = self._ffi.new("xmc_record **"), self._ffi.new("size_t *")
        rc = self._lib.xmc_locked(self._c, arr, n)
        if rc:
            self._fail(rc, "locked")
        return self._take_records(arr[0], n[0])

    def replace(self, old: int, new: int, size: int) -> int:
        out = self._ffi.new("void **")
        rc = self._lib.xmc_replace(self._c, old, new, size, out)
        if rc:
            self._fail(rc, f"replace {old:#x} -> {new:#x}")
        return int(self._ffi.cast("uintptr_t", out[0]))

    def read(self, paddr: int, n: int) -> bytes:
        if FILL_BYTES and n > 1:
            buf = bytes(n)  # fresh, private, never the shared b"" or 1-byte objects
            rc = self._lib.xmc_read(self._c, paddr, buf, n)
            if rc:
                self._fail(rc, f"read {paddr:#x}+{n:#x}")
            return buf
        ba = bytearray(n)
        rc = self._lib.xmc_read(self._c, paddr, self._ffi.from_buffer(ba), n)
        if rc:
            self._fail(rc, f"read {paddr:#x}+{n:#x}")
        return bytes(ba)

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

    def fast_paths(self, cache: MapCache) -> dict[str, Callable[..., Any]]:
        """Closures for ``cache.map_ptr``, ``read``, ``ram_addr`` and ``unlock``.

        Each does the common case in one C call with the cache handle in a
        closure cell: no bound method, no attribute lookups, no validation
        beyond an exact ``int`` check (cffi itself rejects negative and
        too-large values with OverflowError).  Anything unusual (another
        type, an out-of-range value, an error) goes to the cache's own
        method, which validates and raises as documented.  After ``close()``
        the core refuses every call (XMC_ECLOSED) and the handle is freed
        only with the last reference, which the closures hold: a closure kept
        past ``close()`` raises, it never touches freed memory.  The cache is
        held weakly: the closures live in its ``__dict__``.  On CPython the
        closures are in turn wrapped by builtins (see ffi/seam.h).
        """
        from ._native import fast_bind

        lib, core = self._lib, self
        handle = self._c
        owner_ref = weakref.ref(cache)
        cls = type(cache)
        map_ptr_c, read_c, ram_addr_c, unlock_c = lib.xmc_py_map_ptr, lib.xmc_read, lib.xmc_py_ram_addr, lib.xmc_py_unlock
        no_paddr, fail = U64_LIMIT - 1, self._fail_last

        def owner() -> MapCache:
            c = owner_ref()
            if c is None:
                raise MapCacheError("the cache is gone")
            return c

        def map_ptr(paddr: int, size: int = 0, lock: bool = False, dma: bool = False) -> int:
            if type(paddr) is int and type(size) is int:
                try:
                    address: int = map_ptr_c(handle, paddr, size, lock, dma)
                except (OverflowError, TypeError):
                    pass
                else:
                    if address:
                        return address
                    owner()._check_open()
                    fail(f"map {paddr:#x}+{size:#x}")
            return cls.map_ptr(owner(), paddr, size, lock, dma)

        def read(paddr: int, n: int) -> bytes:
            if type(paddr) is int and type(n) is int and 1 < n <= FAST_READ_MAX:
                buf = bytes(n)  # fresh and private: the core fills it in place
                try:
                    rc = read_c(handle, paddr, buf, n)
                except OverflowError:
                    pass
                else:
                    if not rc:
                        return buf
                    owner()._check_open()
                    core._fail(rc, f"read {paddr:#x}+{n:#x}")  # not again: translate ran once
            return cls.read(owner(), paddr, n)

        def ram_addr(address: int) -> int:
            if type(address) is int:
                try:
                    paddr: int = ram_addr_c(handle, address)
                except OverflowError:
                    pass
                else:
                    if paddr != no_paddr:
                        return paddr
            return cls.ram_addr(owner(), address)

        def unlock(address: int) -> None:
            if type(address) is int:
                try:
                    rc = unlock_c(handle, address, RAW)
                except OverflowError:
                    pass
                else:
                    if not rc:
                        return
            cls.unlock(owner(), address)  # Mappings at that address, or the error

        for fn, method in ((map_ptr, cls.map_ptr), (read, cls.read), (ram_addr, cls.ram_addr), (unlock, cls.unlock)):
            fn.__doc__ = method.__doc__
        paths: dict[str, Callable[..., Any]] = {"map_ptr": map_ptr, "ram_addr": ram_addr, "unlock": unlock}
        if FILL_BYTES:
            paths["read"] = read
        bind = fast_bind()
        if bind is None:
            return paths

        # On CPython, builtins of ffi/seam.h do the common case without a
        # Python frame; they hand anything else to the closures above, and
        # a failed core call to these, which raise (nothing is done twice).
        def failure(what: str) -> Callable[[int, int, int], None]:
            def fail(rc: int, paddr: int, size: int) -> None:
                owner()._check_open()
                core._fail(rc, f"{what} {paddr:#x}+{size:#x}")

            return fail

        address = int(self._ffi.cast("uintptr_t", handle))
        built = bind(address, handle, map_ptr, read, ram_addr, unlock, failure("map"), failure("read"))
        return dict(zip(("map_ptr", "read", "ram_addr", "unlock"), built, strict=True))

    def close(self) -> None:
        # Unmap now; the handle itself is freed by the GC once no thread is
        # inside a call (a call holds a reference to it), so a racing call
        # fails with a clean error instead of touching freed memory.
        rc = self._lib.xmc_cache_close(self._c)
        if rc:
            self._fail(rc, "close")


def _collect(
    free: Callable[[Any], None],
    take: Callable[[tuple[int, ...]], BaseException | None],
    keys: tuple[int, ...],
    handle: Any,
    keep: object = None,
) -> None:
    """Free a cache's C handle (the garbage collector's side of ``close``).

    An unmap that fails meanwhile is logged here, as an error of the
    ``xenmapcache`` logger: it belongs to no later call.  ``keep`` (the
    trace hook's handle) lives as long as this destructor, so as long as
    the C handle.
    """
    free(handle)
    cause = take(keys)
    if cause is not None:
        logger.error("a collected cache failed to unmap an entry: %r", cause, exc_info=cause)


# Every live MapCache, for the fork handler below.
_caches: weakref.WeakSet[MapCache] = weakref.WeakSet()


def _after_fork() -> None:
    """In a forked child, free the Python-side locks a parent thread may have held.

    ``MapCache._lock`` (shared with its Mappings) guards only the registry
    of Mappings, never a C call; a thread that held it at fork() is gone from
    the child, and the child would wait for it forever.  The C core answers
    for its own mutex (XMC_EFORKED).
    """
    for cache in list(_caches):
        cache._lock._at_fork_reinit()  # type: ignore[attr-defined]  # the stdlib's own way (logging, threading)


os.register_at_fork(after_in_child=_after_fork)


class MapCache(NoCopy):
    """A Xen mapcache over guest memory (docs/contract.md, sections 3 and 6).

    ``ram`` is the backend the cache maps through: a :class:`GuestRAM`, a
    :class:`XenForeignMemory` or a :class:`CallbackBackend`; the cache keeps it
    alive while it needs it.  ``bucket_shift`` (12 to 32) sets the bucket size,
    ``2**bucket_shift`` bytes.  ``max_size`` bounds the size of one request and
    sets the number of hash slots, ``max_size / bucket size`` (None: 32 GiB on
    64-bit hosts, 2 GiB on 32-bit ones).  ``translate(paddr, size) -> paddr``,
    if given, is called once when pages cannot be mapped, and the request
    retried at the address it returns.  ``dummy_on_failure`` maps anonymous
    memory where guest pages cannot be mapped, instead of failing (an incoming
    migration; ``replace()`` later swaps in the real pages).  ``lock_limit``
    caps the lock count of each entry (at most ``2**32 - 1``).
    ``grants=True`` applies the grant rules of QEMU's grant caches (see
    docs/trace-and-grants.md): only locked requests (``map``, ``map_ptr``
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

    _Core: Any = _NativeCore
    _no_copy_why = "a copy would share the cache's handle and mappings, which either copy may close"

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
        self._gone: dict[int, Any] = {}  # tags of Mappings being released, for their unlock events
        self._core: _NativeCore = self._Core(
            ram,
            shift,
            max_size,
            translate,
            bool(dummy_on_failure),
            lock_limit,
            grants=self.grants,
            trace=None if trace is None else make_sink(self, trace),
        )
        fast_paths = getattr(self._core, "fast_paths", None)
        if fast_paths is not None:  # instance attributes: they shadow the methods below
            paths = fast_paths(self)
            if self.grants:  # a grant unlock may unmap and fail: the method reports it
                paths.pop("unlock", None)
            vars(self).update(paths)
        self._ram = ram
        self._mappings: dict[int, Mapping] = {}
        self._by_address: dict[int, list[Mapping]] = {}
        self._ids = itertools.count(1)
        self._closed = False
        # Guards buffer exports and the registry, never held across a C call:
        # the C core serialises the cache itself.
        self._lock = threading.Lock()
        _caches.add(self)

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

        Cost: on a hit, one C call plus the :class:`Mapping` and its
        bookkeeping in Python (a few microseconds; ``map_ptr(..., lock=True)``
        is the cheap raw form); on a miss, the backend's map of the entry's
        buckets (a system call for a memfd, a hypercall on Xen).  O(1) in the
        number of locked mappings.
        """
        self._check_open()
        paddr, size = check_range(paddr, size, self.max_size)
        m = Mapping(self, next(self._ids), paddr, size, bool(dma), tag)
        self._mappings[m._id] = m  # before the call: invalidate() may list it at once
        try:
            m.address = self._core.map(paddr, size, LOCK | (DMA if dma else 0), m._id)
        except BaseException:
            self._mappings.pop(m._id, None)
            raise
        with self._lock:
            if self._closed:  # closed while we mapped: the core has unmapped it
                m._released = True
                raise MapCacheError("the cache was closed")
            self._by_address.setdefault(m.address, []).append(m)
        return m

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
        0.1 us on CPython (see docs/performance.md); a miss maps, as :meth:`map`.
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

        Cost: O(1) in the number of locked mappings; one C call (the reverse
        records are hashed by host address).
        """
        self._check_open()
        address = as_uint(address, "address")
        try:
            self._core.unlock(address, RAW)
            return
        except UnknownMapping:
            pass
        with self._lock:
            holders = self._by_address.get(address, [])
            idle = [m for m in holders if not m._exports]
        if idle:
            idle[-1].release()
        elif holders:
            raise BufferError(f"every mapping at {address:#x} still has memoryviews alive")
        else:
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
            return self._core.ram_addr(address)
        except UnknownMapping:
            self._trace_unknown("ram_addr_unknown", address)
            raise

    def read(self, paddr: int, n: int) -> bytes:
        """Read ``n`` bytes of guest memory at ``paddr`` through the cache, as a new ``bytes``.

        Transient and unlocked: the range may span buckets (it is copied a
        bucket at a time), and nothing stays locked afterwards.

        :raises MappingError: a page of the range cannot be mapped (then
            nothing is returned).
        :raises InvalidAddress: negative values, or ``paddr + n`` past ``2**64``.
        :raises TypeError: ``paddr`` or ``n`` is not an int.
        :raises MapCacheError: the cache is closed.

        Cost: one C call per request (the GIL is kept for a hit within a page),
        plus the copy of ``n`` bytes into the new object; a miss maps the bucket.
        """
        self._check_open()
        paddr, n = check_range(paddr, n, U64_LIMIT)
        return self._core.read(paddr, n)

    def write(self, paddr: int, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` (any bytes-like object) into guest memory at ``paddr`` through the cache.

        Transient and unlocked, like :meth:`read`; the range may span buckets.
        All or nothing: every page is mapped before a byte is written, so a
        write that would run into a hole writes nothing.

        :raises MappingError: a page of the range cannot be mapped.
        :raises InvalidAddress: a negative ``paddr``, or a range past ``2**64``.
        :raises TypeError: ``paddr`` is not an int, or ``data`` not a buffer.
        :raises MapCacheError: the cache is closed.

        Cost: one C call that releases the GIL, plus the copy of ``data``.
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
        for m in list(self._mappings.values()):  # Mappings follow their entry
            try:
                m.paddr = self._core.ram_addr(m.address)
            except UnknownMapping:  # released meanwhile, or not mapped yet
                pass
        return address

    # -- bulk operations ---------------------------------------------------

    def _locked_mapping(self, record: tuple[int, int, int, int, bool]) -> LockedMapping:
        address, paddr, size, ident, dma = record
        holder = self._mappings.get(ident)
        return LockedMapping(address, paddr, size, dma, holder.tag if holder else None)

    def locked(self) -> list[LockedMapping]:
        """Return every outstanding locked mapping, oldest first, as :class:`LockedMapping` snapshots.

        :raises MapCacheError: the cache is closed.

        Cost: O(n) in the locked mappings; one C call and one object each.
        """
        self._check_open()
        return [self._locked_mapping(r) for r in self._core.locked()]

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

        Cost: O(live entries + DMA mappings in flight), independent of the
        number of hash slots; one C call when no DMA is in flight.
        """
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
        """Return the cache's counters as a :class:`Stats`: hits, misses, and what is mapped now.

        :raises MapCacheError: the cache is closed.

        Cost: one C call; O(1).
        """
        self._check_open()
        return Stats(*self._core.stats())

    # -- lifetime -------------------------------------------------------------

    def _trace_tag(self, ident: int, unlocking: bool) -> Any:
        """The tag object of the Mapping with id ``ident``, for a trace event."""
        m = self._mappings.get(ident)
        if m is not None:
            return m.tag
        return self._gone.pop(ident, None) if unlocking else self._gone.get(ident)

    def _trace_unknown(self, name: str, address: int) -> None:
        """Trace a lookup of an unknown address: here, once per call (the core may be asked twice)."""
        if self._trace is not None:
            emit(self._trace, TraceEvent(name, 0, 0, address, None, False, False))

    def _forget(self, m: Mapping) -> None:
        """Drop ``m`` from the registry; the caller holds ``self._lock``."""
        if self._trace is not None:
            self._gone[m._id] = m.tag
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
        """Whether :meth:`close` was called (every call but ``close`` then raises)."""
        return self._closed

    def close(self) -> None:
        """Unmap everything and drop every record; a second call does nothing.

        Every :class:`Mapping` of the cache is released with it.  Other threads
        inside a call at that moment finish, or fail with ``MapCacheError``;
        their pointers into the cache must not be used afterwards.

        :raises BufferError: a memoryview of one of its mappings is still alive
            (then nothing is closed or unmapped).
        :raises MapCacheError: called from inside a backend callback of this
            very cache (which runs under its mutex); or a backend unmap failed
            (its exception is the cause): everything else is unmapped, and the
            cache is closed all the same.  In a child process forked while
            another thread was inside the cache: that cache cannot be used
            there (``XMC_EFORKED``).

        Cost: one unmap per live entry.
        """
        with self._lock:
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
            self._gone.clear()
        self._core.close()

    def __enter__(self) -> MapCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._mappings)} mapping(s)"
        return f"<{type(self).__name__} bucket_shift={self.bucket_shift} max_size={self.max_size:#x} {state}>"
