"""The C core behind ``MapCache``: ``NativeCore``, and the binding's own types.

``NativeCore`` makes one core call through cffi per checked call; on CPython
its cache is owned by a ``NativeCache`` of the binding's C (ffi/cache.h),
whose builtins serve the common case of the hot methods and whose registry
keeps the cache's Mappings.  ``cache.py`` is the API over it.
"""

from __future__ import annotations

import copy
import functools
import logging
import mmap
import sys
import sysconfig
import weakref
from collections.abc import Callable
from typing import Any, NoReturn

from . import _binding
from ._binding import binding, check, raise_for
from ._mapping import Mapping, MappingGroup
from .trace import emit_unknown, guard, take_interrupt

logger = logging.getLogger("xenmapcache")

EAGER_READ = 1 << 24  # a read() up to this many bytes copies into a zero-filled bytearray


@functools.cache
def native_types() -> Any:
    """The ``_core`` module with the binding's own types (ffi/binding.h), or None.

    On CPython the compiled module gets ``NativeCache`` (one cache's hot calls
    and its registry of Mappings) and ``Mapping``; elsewhere (no stable ABI,
    or a free-threaded build) there are none, and the cache runs on plain
    cffi calls and the Python ``Mapping``.
    """
    _, lib = binding()
    if sys.implementation.name != "cpython" or sysconfig.get_config_var("Py_GIL_DISABLED"):
        return None
    if lib.xmc_py_fast_install() != 0:
        return None
    from . import _core  # the compiled module itself: loaded by binding() already

    _core.install(_binding.HOT_METHODS, Mapping, MappingGroup)  # ImportError: a stale binding
    return _core




class NativeCore:
    """The C core behind a ``MapCache``: one ``xmc_cache *``.

    Its methods are the checked path: the caller (``MapCache``) has validated
    every argument, and each method makes one core call through cffi.  On
    CPython the cache is owned by a ``NativeCache`` of ffi/cache.h, whose
    builtins serve the common case of the hot methods and the Mappings;
    elsewhere by ``ffi.gc``.
    """

    def __init__(
        self,
        ram: Any,
        bucket_shift: int,
        max_size: int,
        translate: Callable[[int, int], int] | None,
        dummy: bool,
        lock_limit: int,
        grants: bool = False,
        trace: Callable[..., bool] | None = None,
    ) -> None:
        from . import _callbacks  # registers the callbacks into Python: loads the compiled core

        self._ffi, self._lib = ffi, lib = binding()
        out = ffi.new("xmc_cache **")
        with ram._c_backend() as backend:
            check(lib.xmc_cache_new(backend, bucket_shift, max_size, out), "MapCache")
            # Which pending callback errors are this cache's (see _callbacks).
            self._keys: tuple[int, ...] = (int(ffi.cast("uintptr_t", backend.opaque)),)
        self._take = _callbacks.take
        if translate is not None:  # its key before anything can fail through it
            self._translate = ffi.new_handle(translate)
            self._keys += (int(ffi.cast("uintptr_t", self._translate)),)
        else:
            self._translate = None
        # The core calls the trace and translate hooks until it is freed,
        # which may be after this object is gone (a Mapping or a builtin
        # holds the C handle's owner): what frees the handle keeps them.
        self._trace = None if trace is None else ffi.new_handle(trace)
        after_free = functools.partial(_collected, _callbacks.take, self._keys, keep=(self._trace, self._translate))
        types = native_types()
        self._native: Any = None
        if types is not None:
            rc = lib.xmc_py_adopt(out[0])
            if rc != lib.XMC_OK:  # out of memory: MapCache was promised the builtins
                lib.xmc_cache_free(out[0])
                raise_for(rc, "MapCache")
            self._native = types.adopted()  # owns the cache: frees it when it goes
            if trace is not None:  # its builtins raise what the hook raised, as guard() below
                self._native.set_take_interrupt(take_interrupt)
            self._native.set_after_free(after_free)
            self._c = out[0]  # used only while self, and so _native, is alive
        else:
            self._c = ffi.gc(out[0], functools.partial(_collect, lib.xmc_cache_free, after_free))
        check(lib.xmc_cache_set_lock_limit(self._c, lock_limit), "lock_limit")
        check(lib.xmc_cache_set_dummy(self._c, dummy), "dummy_on_failure")
        check(lib.xmc_cache_set_grants(self._c, grants), "grants")
        if self._translate is not None:
            check(lib.xmc_cache_set_translate(self._c, lib._xmc_py_translate, self._translate), "translate")
        if self._trace is not None:
            check(lib.xmc_cache_set_trace(self._c, lib._xmc_py_trace, self._trace), "trace")

    @staticmethod
    def has_fast_paths() -> bool:
        """Whether every cache on this core comes with the builtins of :meth:`fast_paths`
        (CPython with the binding's types; not a free-threaded build)."""
        return native_types() is not None

    def _fail(self, rc: int, what: str, *where: int) -> NoReturn:
        """Raise for a failed core call, with the exception of one of this cache's
        Python callbacks (a backend's, translate's) as its cause."""
        fail_with(self._take, self._keys, rc, what, *where)

    def registry(self, cache: Any, checked: dict[str, Callable[..., Any]]) -> Any:
        """The registry of ``cache``'s Mappings: the ``NativeCache`` itself, bound
        to ``cache`` and to ``checked``, its checked method for each name of
        ``HOT_METHODS``; or None (the cache keeps its own)."""
        native = self._native
        if native is None:
            return None
        lib = self._lib
        owner = weakref.ref(cache)
        take, keys = self._take, self._keys
        trace = cache._trace
        parts = (self._unowned(), cache.max_size, trace)

        def stand_in(native: Any) -> Any:
            # What a builtin's checked method runs on: the MapCache, or once
            # it was collected (a kept rd = c.read), a stand-in made of its
            # parts for this call, so that the call raises what it deserves.
            live = owner()
            return live if live is not None else _Orphan(native, *parts)

        def fail(rc: int, what: str, paddr: int, size: int) -> NoReturn:
            # What a builtin calls with a failed core call's status (a closed
            # cache's too).  Holds the cache weakly, and neither it nor the
            # core otherwise: no cycle.  A builtin kept after its MapCache
            # went (rd = c.read; del c) fails as it would have.
            if what == "ram_addr" and rc == lib.XMC_ENOENT:  # once per call, as the method does
                emit_unknown(trace, "ram_addr_unknown", paddr)
            fail_with(take, keys, rc, what, paddr, size)

        native.bind(stand_in, fail, cache.max_size, 1 << cache.bucket_shift, checked)
        return native

    def _unowned(self) -> NativeCore:
        """This core's checked path without the ``NativeCache`` that owns it (no
        cycle): usable only while that one is alive, and unguarded."""
        core = object.__new__(NativeCore)
        core._ffi, core._lib, core._c, core._take, core._keys = self._ffi, self._lib, self._c, self._take, self._keys
        core._native = None
        return core

    def fast_paths(self) -> dict[str, Callable[..., Any]]:
        """The builtins of the hot methods, one for each of ``HOT_METHODS`` (none without ``NativeCache``)."""
        native = self._native
        if native is None:
            return {}
        return {name: getattr(native, name) for name in _binding.HOT_METHODS}

    def map(self, paddr: int, size: int, flags: int, tag: int) -> int:
        # The address comes back as the return value: nothing shared between threads.
        address: int = self._lib.xmc_py_map(self._c, paddr, size, flags, tag)
        if not address:
            self._fail(self._lib.xmc_py_last_error(), "map", paddr, size)
        return address

    def map_sg(self, segments: list[tuple[int, int]], flags: int, tag: int) -> list[int]:
        """One locked mapping per ``(paddr, size)``, all or nothing; their host addresses."""
        ffi, n = self._ffi, len(segments)
        segs, out = ffi.new("xmc_sg[]", segments), ffi.new("void *[]", n)
        rc = self._lib.xmc_map_sg(self._c, segs, n, flags, tag, out)
        if rc:
            self._fail(rc, "map_sg", n)
        return [int(ffi.cast("uintptr_t", p)) for p in out]

    def unlock_sg(self, addresses: list[int], tag: int) -> None:
        """Unlock one mapping with ``tag`` at each address, all or nothing."""
        ffi, n = self._ffi, len(addresses)
        addrs = ffi.new("void *[]", [ffi.cast("void *", a) for a in addresses])
        rc = self._lib.xmc_unlock_sg(self._c, addrs, n, tag)
        if rc:
            self._fail(rc, "unlock_sg", n)

    def unlock(self, address: int, tag: int) -> None:
        rc = self._lib.xmc_py_unlock(self._c, address, tag)
        if rc:
            self._fail(rc, "unlock", address)

    def ram_addr(self, address: int) -> int:
        out = self._ffi.new("uint64_t *")
        rc = self._lib.xmc_ram_addr(self._c, self._ffi.cast("void *", address), out)
        if rc:
            self._fail(rc, "ram_addr", address)
        return int(out[0])

    def _take_records(self, arr: Any, n: int) -> list[tuple[int, int, int, int, bool]]:
        """The records of a C array, which is then freed."""
        try:
            return [(r.address, r.paddr, r.size, r.tag, bool(r.dma)) for r in arr[0:n]] if n else []
        finally:
            self._lib.xmc_records_free(arr)

    def invalidate(self) -> tuple[list[tuple[int, int, int, int, bool]], BaseException | None]:
        """The DMA records in flight, and what a failed unmap raised (see MapCache.invalidate)."""
        lib = self._lib
        got = lib.xmc_py_invalidate(self._c)  # one call when no DMA is in flight
        count = got if got > 0 else lib.xmc_py_records_count() if got < 0 else 0
        records = self._take_records(lib.xmc_py_records_take(), count) if count else []
        rc = min(got, 0)
        if rc == lib.XMC_ESYS:
            # The invalidation happened; an entry failed to unmap and is gone
            # all the same (never retried): its error goes with the records.
            return records, self._take(self._keys) or OSError("system call failed")
        if rc:
            self._fail(rc, "invalidate")
        return records, None

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
            self._fail(rc, "replace", old, new)
        return int(self._ffi.cast("uintptr_t", out[0]))

    def read(self, paddr: int, n: int) -> bytes:
        # Never a bytes object written through cffi.  A long read lands in
        # pages the kernel commits only as the copy writes them, and the core
        # copies only once it has mapped the whole range: a range that cannot
        # be mapped costs no memory (a bytearray is zero-filled first).
        if n <= EAGER_READ:
            buf: bytearray | mmap.mmap = bytearray(n)
        else:
            try:
                buf = mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | mmap.MAP_NORESERVE)
            except (OverflowError, OSError) as e:
                # No room for n bytes of address space: nor, then, for the
                # core's maps of the range, which a copy holds all at once.
                raise_for(self._lib.XMC_EMAP, "read", paddr, n, cause=e)
        try:
            with self._ffi.from_buffer(buf) as dst:
                rc = self._lib.xmc_read(self._c, paddr, dst, n)
            if rc:
                self._fail(rc, "read", paddr, n)
            return bytes(buf)
        finally:
            if isinstance(buf, mmap.mmap):
                buf.close()

    def write(self, paddr: int, data: Any) -> None:
        # Release the export before raising: a traceback kept in a reference
        # cycle would hold it until the GC, whose tp_clear of the exporting
        # memoryview ignores exports and then crashes when they are released.
        with self._ffi.from_buffer(data) as src:
            n = len(src)
            rc = self._lib.xmc_write(self._c, paddr, src, n)
        if rc:
            self._fail(rc, "write", paddr, n)

    def stats(self) -> tuple[int, ...]:
        st = self._ffi.new("xmc_stats *")
        rc = self._lib.xmc_stats_get(self._c, st)
        if rc:
            self._fail(rc, "stats")
        return (st.hits, st.misses, st.remaps, st.entries, st.locked, st.dma_locked, st.mapped_bytes, st.invalidations)

    def view(self, address: int, size: int) -> memoryview:
        return memoryview(self._ffi.buffer(self._ffi.cast("char *", address), size))

    def close(self) -> None:
        # Unmap now; the handle itself is freed once no thread is inside a
        # call (a call holds a reference to it), so a racing call fails with
        # a clean error instead of touching freed memory.
        rc = self._lib.xmc_cache_close(self._c)
        if rc:
            self._fail(rc, "close")


class _Orphan:
    """What the checked methods of a ``MapCache`` run on once it was collected
    while one of its builtins was kept: its core, open still, its registry (the
    builtins' ``NativeCache``, held for the call) and its settings.  Made for
    one call: nothing keeps it."""

    def __init__(self, native: Any, core: NativeCore, max_size: int, trace: Any) -> None:
        self._reg = native
        self._core = copy.copy(core)  # its own, guarded like the MapCache's for a traced cache
        if trace is not None:
            guard(self._core)
        self.max_size = max_size
        self._trace = trace

    def _check_open(self) -> None:
        self._core.stats()  # "the cache is closed" if it was closed before it went

    def _trace_unknown(self, name: str, address: int) -> None:
        emit_unknown(self._trace, name, address)


def fail_with(
    take: Callable[[tuple[int, ...]], BaseException | None], keys: tuple[int, ...], rc: int, what: str, *where: int
) -> NoReturn:
    """Raise for the call ``what`` that failed with status ``rc``, caused by what
    the cache's callbacks (``keys``) raised meanwhile; an interrupt, theirs or
    the trace hook's, is raised as it is."""
    cause = take(keys)
    if cause is not None and not isinstance(cause, Exception):
        raise cause  # KeyboardInterrupt, SystemExit: what the caller sees
    interrupt = take_interrupt()
    if interrupt is not None:
        raise interrupt
    raise_for(rc, what, *where, cause=cause)


def _collected(
    take: Callable[[tuple[int, ...]], BaseException | None], keys: tuple[int, ...], keep: object = None
) -> None:
    """After a cache's C handle was freed by the garbage collector: an unmap
    that failed meanwhile is logged here, as an error of the ``xenmapcache``
    logger (it belongs to no later call).  ``keep`` (the trace and translate
    hooks' handles) lives as long as this function's partial, so as long as
    the C handle."""
    cause = take(keys)
    if cause is not None:
        logger.error("a collected cache failed to unmap an entry: %r", cause, exc_info=cause)


def _collect(free: Callable[[Any], None], after_free: Callable[[], None], handle: Any) -> None:
    """Free a cache's C handle (the garbage collector's side of ``close``), where
    ``ffi.gc`` owns it (no ``NativeCache``)."""
    free(handle)
    after_free()
