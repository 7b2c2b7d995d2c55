"""The pure-Python reference implementation of the mapcache: the oracle.

``xenmapcache.reference`` exports the same public names as ``xenmapcache``
(the contract, section 6: https://xenmapcache.readthedocs.io/en/latest/contract.html), but its
``MapCache`` runs on ``_PyCore``, a line-by-line
Python rendering of ``csrc/cache.c`` and of the memfd backend of
``csrc/ram.c``.  It needs no compiler and never imports the C extension, so
it can stand in for the C core anywhere and be compared with it step by step
(``tests/test_model.py`` does exactly that).

Mirroring the C algorithm exactly means the same entries, in the same chains,
in the same order, so that statistics, remaps and error paths agree too:

- entries hang off slot chains (``index % nr_slots``), appended at the tail;
- ``map`` takes the fast path (unlocked, size 0, the last entry holds the
  index and its page is valid), else prefers an exact match anywhere in the
  chain, else remaps the first unlocked entry of the chain (in place with
  ``MAP_FIXED`` when the size is the same), else adds an entry;
- pages that cannot be mapped call ``translate`` once, then fall back to
  anonymous memory in dummy mode, then fail with ``MappingError``;
- locked mappings leave records, found by exact host address in O(1) (newest
  first for one address) and kept on an age list (oldest first); any address
  inside a live entry resolves by bisection over the entries' start addresses.

Guest pages are really mapped, with ``mmap`` and ``munmap`` from libc through
ctypes on the guest RAM's memfd; pages that are not RAM are mapped with no
access, as in C.  One ``threading.Lock`` per cache plays the C mutex.
"""

from __future__ import annotations

import bisect
import ctypes
import mmap as _mmap
import os
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

from . import cache as _cache
from .backends import CallbackBackend
from . import errors as _errors
from ._mapping import DMA, LOCK, Mapping, MappingGroup
from .cache import LockedMapping, Stats
from .errors import *  # noqa: F403 - the very exception classes of the package
from .errors import BackendUnavailable, InvalidAddress, LockOverflow, MapCacheError, MappingError, UnknownMapping
from ._version import __version__
from .ram import PAGE_SHIFT, PAGE_SIZE, GuestRAM
from .trace import EVENT_NUMBERS as _EV
from .trace import Sink, TraceEvent
from .xen import XenForeignMemory, XenGrantTable

# The same public names as the package (tests/test_reference.py checks it).
__all__ = [
    *_errors.__all__,
    "CallbackBackend",
    "GuestRAM",
    "LockedMapping",
    "MapCache",
    "Mapping",
    "MappingGroup",
    "Stats",
    "TraceEvent",
    "XenForeignMemory",
    "XenGrantTable",
    "__version__",
]

# Status codes, as in csrc/xenmapcache.h (internal: they become exceptions at the edge).
OK, ENOMEM, EINVAL, EMAP, ENOENT, EOVERFLOW, EUNAVAIL, ESYS = 0, -1, -2, -3, -4, -5, -6, -7
EREENTER, EFORKED, EGRANT, ECALLBACK = -10, -11, -12, -13
# The messages of xmc_strerror(); the exception of each code comes from the
# package's one table (errors.EXCEPTION_OF).
_MESSAGES: dict[int, str] = {
    ENOMEM: "out of memory",
    EINVAL: "invalid argument or address",
    EMAP: "guest pages cannot be mapped",
    ENOENT: "no such mapping",
    EOVERFLOW: "lock count at its limit",
    EUNAVAIL: "backend not available",
    ESYS: "system call failed",
    EREENTER: "called from inside one of the cache's own backend callbacks",
    EGRANT: "not allowed on a grant cache (locked requests only, no replace)",
    EFORKED: "the process forked while another thread was inside the cache; unusable in the child",
    ECALLBACK: "a callback failed; nothing was retried",
}

MAX_SLOTS = 1 << 24  # XMC_MAX_SLOTS
SG_MAX = 65536  # XMC_SG_MAX
U64_MAX = (1 << 64) - 1
PFN_LIMIT = 1 << (64 - PAGE_SHIFT)  # pages in the 64-bit guest-physical space

ENTRY_DUMMY, ENTRY_ANON, ENTRY_ALLVALID = 1, 2, 4

# Linux mmap(2) values (the mmap module lacks MAP_FIXED and PROT_NONE).
PROT_NONE = 0
PROT_RW = _mmap.PROT_READ | _mmap.PROT_WRITE
MAP_SHARED = _mmap.MAP_SHARED
MAP_PRIVATE = _mmap.MAP_PRIVATE
MAP_ANONYMOUS = _mmap.MAP_ANONYMOUS
MAP_FIXED = 0x10
MAP_NORESERVE = 0x4000
MAP_FAILED = U64_MAX

_libc = ctypes.CDLL(None, use_errno=True)
_c_mmap = _libc.mmap
_c_mmap.restype = ctypes.c_void_p
_c_mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int64]
_c_munmap = _libc.munmap
_c_munmap.restype = ctypes.c_int
_c_munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]

Record = tuple[int, int, int, int, bool]  # (address, paddr, size, tag, dma)


def _sys_mmap(addr: int | None, length: int, prot: int, flags: int, fd: int = -1, offset: int = 0) -> int | None:
    """libc mmap; the address, or None on failure."""
    got = _c_mmap(addr, length, prot, flags, fd, offset)
    if got is None or got == MAP_FAILED:
        return None
    return int(got)


def _sys_munmap(addr: int, length: int) -> int:
    return OK if _c_munmap(addr, length) == 0 else ESYS


def _raise(rc: int, what: str, *where: int, cause: BaseException | None = None) -> NoReturn:
    if cause is not None and not isinstance(cause, Exception):
        raise cause  # an interrupt stays what it was, as _native.fail_with
    raise _errors.status_error(rc, _MESSAGES.get(rc, "unknown error"), what, *where) from cause


def _range_ok(a: int, b: int) -> bool:
    """True when ``[a, a + b)`` ends at or below 2**64 (``xmc_range_ok``)."""
    return b == 0 or a <= U64_MAX - (b - 1)


class _RamBackend:
    """The memfd backend of csrc/ram.c over a :class:`GuestRAM` (sharing its fd, which it keeps open)."""

    error: BaseException | None = None  # never set: no Python callback to fail
    inside: frozenset[int] = frozenset()  # no callback to be inside

    def __init__(self, ram: GuestRAM) -> None:
        self.ram = ram
        self._memfd = ram._share()
        self.fd = self._memfd.fd
        self._pages = ram.size >> PAGE_SHIFT
        self._hole_pages = [(lo >> PAGE_SHIFT, -(-hi // PAGE_SIZE)) for lo, hi in ram.holes]

    def ram_runs(self, first: int, n: int) -> list[tuple[int, int]]:
        """The runs of RAM pages in ``[first, first + n)``, as ``(start, end)`` offsets from first.

        A page is RAM when ``GuestRAM.page_error`` gives 0 for it: below the
        end of RAM and touching no hole.  Computed from the holes, not page by
        page, so that a huge hostile request costs no more than a small one.
        """
        end = min(first + n, self._pages)
        runs = []
        pos = first
        for lo, hi in self._hole_pages:  # sorted by start
            if lo >= end:
                break
            if lo > pos:
                runs.append((pos - first, lo - first))
            pos = max(pos, hi)
        if pos < end:
            runs.append((pos - first, end - first))
        return runs

    def map(self, fixed: int | None, first_pfn: int, nr_pages: int) -> tuple[int, int, int]:
        """``ram_map``: (status, address, bitmap of the pages mapped)."""
        if nr_pages == 0 or first_pfn + nr_pages > PFN_LIMIT:
            return EINVAL, 0, 0
        length = nr_pages << PAGE_SHIFT
        fixflag = MAP_FIXED if fixed is not None else 0
        runs = self.ram_runs(first_pfn, nr_pages)
        valid = sum(((1 << (j - i)) - 1) << i for i, j in runs)
        if runs == [(0, nr_pages)]:
            base = _sys_mmap(fixed, length, PROT_RW, MAP_SHARED | fixflag, self.fd, first_pfn << PAGE_SHIFT)
            return (ESYS, 0, 0) if base is None else (OK, base, valid)
        base = _sys_mmap(fixed, length, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | fixflag)
        if base is None:
            return ESYS, 0, 0
        for i, j in runs:
            got = _sys_mmap(
                base + (i << PAGE_SHIFT),
                (j - i) << PAGE_SHIFT,
                PROT_RW,
                MAP_SHARED | MAP_FIXED,
                self.fd,
                (first_pfn + i) << PAGE_SHIFT,
            )
            if got is None:
                if fixed is None:
                    _sys_munmap(base, length)
                return ESYS, 0, 0
        return OK, base, valid

    def unmap(self, addr: int, length: int) -> int:
        return _sys_munmap(addr, length)

    def close(self) -> None:
        if self.fd >= 0:
            self.fd = -1
            self._memfd.release()


class _CallbackAdapter:
    """A :class:`CallbackBackend` seen through the interface of ``_RamBackend``:
    the same checks as the C core's ``_xmc_py_map`` and ``_xmc_py_unmap``."""

    def __init__(self, backend: CallbackBackend) -> None:
        self.backend = backend
        self.error: BaseException | None = None  # the last callback's exception
        self.inside: set[int] = set()  # threads inside a callback, holding the cache's lock

    def map(self, fixed: int | None, first_pfn: int, nr_pages: int) -> tuple[int, int, int]:
        self.inside.add(threading.get_ident())
        try:
            address, errors = self.backend._map_pages(first_pfn, nr_pages, fixed)
            errors = list(errors)
            if len(errors) != nr_pages or any(type(e) is not int or e < 0 for e in errors):
                raise ValueError(f"map must return {nr_pages} per-page errors (0 or a positive errno)")
            if type(address) is not int or address <= 0 or (fixed is not None and address != fixed):
                raise ValueError(f"map returned a bad address {address!r} (fixed={fixed!r})")
        except BaseException as exc:  # an interrupt too: the call fails, as XMC_ECALLBACK in C
            self._keep(exc)
            return ECALLBACK, 0, 0
        finally:
            self.inside.discard(threading.get_ident())
        return OK, address, sum(1 << i for i, e in enumerate(errors) if not e)

    def _keep(self, exc: BaseException) -> None:
        """Keep ``exc`` for the caller; an interrupt kept already wins (see _callbacks._keep)."""
        if self.error is None or isinstance(self.error, Exception):
            self.error = exc

    def unmap(self, addr: int, length: int) -> int:
        self.inside.add(threading.get_ident())
        try:
            self.backend._unmap(addr, length)
        except BaseException as exc:
            self._keep(exc)
            return ESYS
        finally:
            self.inside.discard(threading.get_ident())
        return OK

    def close(self) -> None:
        pass


class _Entry:
    """One host mapping of whole buckets (``xmc_entry``)."""

    __slots__ = ("vaddr", "index", "size", "lock", "flags", "valid", "slot")

    def __init__(self) -> None:
        self.vaddr = 0
        self.index = 0
        self.size = 0
        self.lock = 0
        self.flags = 0
        self.valid = 0  # bit p set: page p is mapped
        self.slot = -1  # the chain it is on (C follows its pprev link)

    def pages_valid(self, first: int, n: int) -> bool:
        if first + n > (self.size >> PAGE_SHIFT):
            return False
        if self.flags & ENTRY_ALLVALID:
            return True
        mask = ((1 << n) - 1) << first
        return self.valid & mask == mask


class _Rec:
    """One locked mapping (``record``).

    Kept small (a million locked mappings are a real load): no list or dict
    of its own.  ``shadow`` is the next older record at the same address
    (the reverse index holds the newest); ``older`` and ``newer`` link every
    record in age order, as the C core's ``oldest`` list does.
    """

    __slots__ = ("addr", "entry", "size", "tag", "dma", "shadow", "older", "newer")

    def __init__(self, addr: int, entry: _Entry, size: int, tag: int, dma: bool) -> None:
        self.addr = addr
        self.entry = entry
        self.size = size
        self.tag = tag
        self.dma = dma
        self.shadow: _Rec | None = None
        self.older: _Rec | None = None
        self.newer: _Rec | None = None


class _Refusals(threading.local):
    """``trace_refusals``: the trace hook's refusals in this thread."""

    count = 0


_refusals = _Refusals()


class _State:
    """Everything a cache owns, apart from the core object, so a finalizer can free it."""

    def __init__(self, backend: _RamBackend | _CallbackAdapter) -> None:
        self.be = backend
        self.slots: dict[int, list[_Entry]] = {}
        self.live: dict[_Entry, None] = {}  # insertion order; C pushes at the head
        self.starts: list[int] = []  # sorted host start addresses of live entries
        self.by_start: dict[int, _Entry] = {}
        self.shift = 0  # the cache's bucket shift, for trace events
        self.rev: dict[int, _Rec] = {}  # host address -> its newest record (older ones: shadow)
        self.oldest: _Rec | None = None  # the age list (older, newer)
        self.newest: _Rec | None = None
        self.last: _Entry | None = None
        self.hits = self.misses = self.remaps = self.entries = 0
        self.locked = self.dma_locked = self.mapped_bytes = self.invalidations = 0
        self.closed = False
        self.forked = False  # inherited through fork() with its lock held (see _after_fork)
        self.sink: Sink | None = None  # the trace hook
        self.tracing: set[int] = set()  # threads inside it, holding the cache's lock

    def trace(
        self, kind: str, rc: int, flags: int, paddr: int, size: int, address: int, tag: int = 0, old: int = 0
    ) -> bool:
        """Emit a trace event (``trace_emit``): the hook runs holding the cache's lock.
        Whether it refused the event (counted in ``_refusals``, per thread)."""
        if self.sink is None:
            return False
        me = threading.get_ident()
        self.tracing.add(me)
        try:
            refused = self.sink(_EV[kind], rc, flags, paddr, size, address, tag, old)
        finally:
            self.tracing.discard(me)
        if refused:
            _refusals.count = _refusals.count + 1
        return refused

    def unmap_entry(self, e: _Entry) -> int:
        if e.flags & ENTRY_ANON:
            return _sys_munmap(e.vaddr, e.size)
        return self.be.unmap(e.vaddr, e.size)

    def tree_add(self, e: _Entry) -> None:
        bisect.insort(self.starts, e.vaddr)
        self.by_start[e.vaddr] = e

    def tree_del(self, e: _Entry) -> None:
        i = bisect.bisect_left(self.starts, e.vaddr)
        if i < len(self.starts) and self.starts[i] == e.vaddr and self.by_start.get(e.vaddr) is e:
            del self.starts[i]
            del self.by_start[e.vaddr]

    def tree_find(self, addr: int) -> _Entry | None:
        i = bisect.bisect_right(self.starts, addr) - 1
        if i < 0:
            return None
        e = self.by_start[self.starts[i]]
        return e if addr < e.vaddr + e.size else None

    def chain_append(self, e: _Entry, nr_slots: int) -> None:
        e.slot = e.index % nr_slots
        self.slots.setdefault(e.slot, []).append(e)

    def chain_del(self, e: _Entry) -> None:
        chain = self.slots[e.slot]
        chain.remove(e)
        if not chain:
            del self.slots[e.slot]

    def destroy(self, e: _Entry) -> int:
        """``entry_destroy``: unlink, unmap, forget; the unmap status."""
        self.chain_del(e)
        del self.live[e]
        if self.last is e:
            self.last = None
        self.entries -= 1
        self.mapped_bytes -= e.size
        rc = OK
        if e.size:  # size 0: a failed remap left nothing mapped or indexed
            self.tree_del(e)
            rc = self.unmap_entry(e)
            self.trace("unmap", rc, 0, e.index << self.shift, e.size, e.vaddr)
        return rc

    def free(self) -> int:
        """``xmc_cache_close``: drop every record, unmap every entry, close the fd;
        the first failed unmap (every entry is unmapped once all the same)."""
        if self.closed:
            return OK
        self.closed = True
        self.sink = None  # closing says nothing, as in C
        self.rev.clear()
        self.oldest = self.newest = None
        rc = OK
        for e in list(self.live):
            if e.size:
                urc = self.unmap_entry(e)
                rc = urc if rc == OK else rc
        self.live.clear()
        self.slots.clear()
        self.starts.clear()
        self.by_start.clear()
        self.last = None
        self.be.close()
        return rc


def _free(state: _State, lock: threading.Lock) -> None:
    """The garbage collector's close: a failed unmap is logged, it belongs to no later call."""
    if state.forked:
        return  # half updated by a thread that is gone: leak it, touch nothing
    with _entered(state, lock, "close"):
        rc = state.free()
    if rc != OK:
        cause, state.be.error = state.be.error, None
        _cache.logger.error("a collected cache failed to unmap an entry: %r", cause, exc_info=cause)


def _entered(state: _State, lock: threading.Lock, what: str) -> threading.Lock:
    """``lock``, unless this thread is inside one of the cache's backend
    callbacks (it holds the lock already, and would wait for itself) or the
    cache was inherited through fork() while another thread held it."""
    if state.forked:
        _raise(EFORKED, what)
    inside = state.be.inside
    if (inside and threading.get_ident() in inside) or (state.tracing and threading.get_ident() in state.tracing):
        _raise(EREENTER, what)
    return lock


# Every live reference cache, for the fork handler.
_caches: weakref.WeakSet[_PyCore] = weakref.WeakSet()


def _after_fork() -> None:
    """In a forked child: a cache whose lock another thread held at fork() is
    unusable (that thread is gone, and left it half updated); ``fork_child`` in
    C.  The forking thread may hold it itself, from inside one of the cache's
    callbacks: it finishes its call in the child too.  A free lock is reset: a
    thread parked on it at fork() can leave it marked as waited for, and the
    child's first acquire would then wait forever."""
    me = threading.get_ident()  # the same in the child (pthread_self)
    for core in list(_caches):
        st = core._st
        if core._lock.locked():
            if me not in st.be.inside and me not in st.tracing:
                st.forked = True
        else:
            core._lock._at_fork_reinit()  # type: ignore[attr-defined]  # the stdlib's own way


os.register_at_fork(after_in_child=_after_fork)


class _PyCore:
    """The reference core: ``csrc/cache.c`` in Python, with the interface of ``_native.NativeCore``."""

    def __init__(
        self,
        ram: GuestRAM | CallbackBackend,
        bucket_shift: int,
        max_size: int,
        translate: Callable[[int, int], int] | None,
        dummy: bool,
        lock_limit: int,
        grants: bool = False,
        trace: Sink | None = None,
    ) -> None:
        bucket = 1 << bucket_shift
        slots = max_size // bucket + (max_size % bucket != 0)
        if slots > MAX_SLOTS:
            _raise(EINVAL, "MapCache")
        self._shift = bucket_shift
        self._bucket = bucket
        self._max_size = max_size
        self._nr_slots = slots
        self._translate = translate
        self._dummy = dummy
        self._lock_limit = lock_limit
        self._grants = grants  # MapCache checked bucket_shift == 12
        self._lock = threading.Lock()
        if isinstance(ram, CallbackBackend):
            backend: _RamBackend | _CallbackAdapter = _CallbackAdapter(ram)
        elif isinstance(ram, GuestRAM):
            backend = _RamBackend(ram)
        else:
            raise TypeError(f"the reference core maps GuestRAM or CallbackBackend, not {type(ram).__name__}")
        self._st = _State(backend)
        self._st.shift = bucket_shift
        self._st.sink = trace
        self._finalizer = weakref.finalize(self, _free, self._st, self._lock)
        _caches.add(self)

    @staticmethod
    def has_fast_paths() -> bool:
        """No builtins: the checked methods serve every call."""
        return False

    def registry(self, cache: Any, checked: dict[str, Callable[..., Any]]) -> None:
        """None: the cache keeps its Mappings in a ``_PyRegistry``."""
        return None

    def fast_paths(self) -> dict[str, Callable[..., Any]]:
        """None: see :meth:`has_fast_paths`."""
        return {}

    # -- mapping internals (the caller holds self._lock) ---------------------

    def _map_into(self, e: _Entry, index: int, size: int, fixed: bool, dummy: bool) -> int:
        """``map_into``: map bucket ``index`` into e; on failure e is unchanged."""
        pages = size >> PAGE_SHIFT
        if dummy:
            addr = _sys_mmap(
                e.vaddr if fixed else None,
                size,
                PROT_RW,
                MAP_PRIVATE | MAP_ANONYMOUS | (MAP_FIXED if fixed else 0),
            )
            if addr is None:
                return ESYS
            e.valid = (1 << pages) - 1
            e.flags = ENTRY_DUMMY | ENTRY_ANON | ENTRY_ALLVALID
        else:
            rc, addr, valid = self._st.be.map(e.vaddr if fixed else None, index << (self._shift - PAGE_SHIFT), pages)
            if rc == OK and not addr:
                rc = EMAP
            if rc != OK:
                return rc if rc < 0 else EMAP
            e.valid = valid
            e.flags = ENTRY_ALLVALID if valid == (1 << pages) - 1 else 0
        e.vaddr = addr
        e.index = index
        e.size = size
        return OK

    def _entry_new(self, index: int, size: int, dummy: bool) -> tuple[int, _Entry]:
        st = self._st
        e = _Entry()
        rc = self._map_into(e, index, size, False, dummy)
        if rc != OK:
            return rc, e
        st.tree_add(e)
        st.chain_append(e, self._nr_slots)
        st.live[e] = None
        st.entries += 1
        st.mapped_bytes += size
        st.trace("dummy" if dummy else "map", OK, 0, index << self._shift, size, e.vaddr)
        return OK, e

    def _entry_remap(self, e: _Entry, index: int, size: int, dummy: bool) -> tuple[int, _Entry | None]:
        """Point the unlocked entry e at bucket ``index``: in place when it keeps its
        size and kind of memory, else replaced by a new entry; on failure e is destroyed."""
        st = self._st
        if size != e.size or dummy != bool(e.flags & ENTRY_ANON):
            rc = st.destroy(e)
            return self._entry_new(index, size, dummy) if rc == OK else (rc, None)
        old_slot = e.index % self._nr_slots
        rc = self._map_into(e, index, size, True, dummy)
        if rc != OK:  # the backend unmaps whatever is left there
            st.destroy(e)
            return rc, None
        if index % self._nr_slots != old_slot:
            st.chain_del(e)
            st.chain_append(e, self._nr_slots)
        st.trace("dummy" if dummy else "remap", OK, 0, index << self._shift, size, e.vaddr)
        return OK, e

    def _find_or_map(self, index: int, size: int, first: int, n: int, dummy: bool) -> tuple[int, _Entry | None]:
        st = self._st
        reuse = None
        for e in st.slots.get(index % self._nr_slots, ()):
            if e.index == index and e.size == size and e.pages_valid(first, n):
                st.hits += 1
                return OK, e
            if reuse is None and e.lock == 0 and not self._grants:
                reuse = e
        st.misses += 1
        if reuse is not None:
            st.remaps += 1
            rc, found = self._entry_remap(reuse, index, size, dummy)
        else:
            rc, found = self._entry_new(index, size, dummy)
        if rc != OK or found is None:
            return rc, None
        if not found.pages_valid(first, n):
            if self._grants:  # a grant entry lives only while locked
                st.destroy(found)
            return EMAP, None
        return OK, found

    def _call_translate(self, paddr: int, size: int) -> tuple[int, int, BaseException | None]:
        """Run the translate callback without the lock, as the C core does."""
        fn = self._translate
        if fn is None:
            return ENOENT, 0, None
        self._lock.release()
        try:
            new = fn(paddr, size)
            if type(new) is not int or not 0 <= new <= U64_MAX:
                raise TypeError(f"translate must return an int in [0, 2**64), not {new!r}")
        except BaseException as exc:  # an interrupt too: the C core sees a failed callback the same way
            return EMAP, 0, exc
        finally:
            self._lock.acquire()
        if not _range_ok(new, size):
            return EINVAL, 0, None
        return OK, new, None

    def _map_locked(self, paddr: int, size: int, flags: int, tag: int) -> tuple[int, int, BaseException | None]:
        """``map_locked``: (status, host address, translate's exception)."""
        st = self._st
        lock = bool(flags & LOCK)
        shift, bucket = self._shift, self._bucket
        index = paddr >> shift
        offset = paddr & (bucket - 1)
        e = st.last
        if not lock and size == 0 and e is not None and e.index == index and e.pages_valid(offset >> PAGE_SHIFT, 1):
            st.hits += 1
            return OK, e.vaddr + offset, None
        if not _range_ok(paddr, size) or size > self._max_size:
            return EINVAL, 0, None
        if self._grants and not lock:
            return EGRANT, 0, None
        if lock and self._lock_limit == 0:
            return EOVERFLOW, 0, None  # before any lookup: nothing changes
        translated = dummy = False
        while True:
            cache_size, n = bucket, 1
            if size:
                cache_size = (offset + size + bucket - 1) & ~(bucket - 1)
                n = ((paddr & (PAGE_SIZE - 1)) + size + PAGE_SIZE - 1) >> PAGE_SHIFT
            rc, found = self._find_or_map(index, cache_size, offset >> PAGE_SHIFT, n, dummy)
            if rc != EMAP:
                break
            st.last = None
            if not translated and self._translate is not None:
                asked = paddr
                rc, paddr, cause = self._call_translate(paddr, size)
                if rc != OK:
                    return rc, 0, cause
                st.trace("translate", OK, flags & 3, paddr, size, 0, tag if lock else 0, asked)
                translated = True
                index = paddr >> shift
                offset = paddr & (bucket - 1)
            elif not dummy and self._dummy:
                dummy = True
            else:
                return EMAP, 0, None
        if rc != OK or found is None:
            return rc, 0, None
        address = found.vaddr + offset
        if lock:
            if found.lock >= self._lock_limit:
                st.hits -= 1  # found locked already, not mapped: take back the hit
                return EOVERFLOW, 0, None
            self._record_add(found, address, size, tag, bool(flags & DMA))
            found.lock += 1
        if not self._grants:  # a grant entry may go at any unlock
            st.last = found
        return OK, address, None

    def _map_traced(self, paddr: int, size: int, flags: int, tag: int) -> tuple[int, int, BaseException | None]:
        """``map_slow``: ``_map_locked`` and its hit, miss, lock overflow or refusal event."""
        st = self._st
        if st.sink is None:
            return self._map_locked(paddr, size, flags, tag)
        misses = st.misses
        rc, address, cause = self._map_locked(paddr, size, flags, tag)
        kind = None
        if rc == EGRANT:
            kind = "refused"
        elif rc == EOVERFLOW:
            kind = "lock_overflow"
        elif st.misses != misses:
            kind = "miss"
        elif rc == OK:
            kind = "hit"
        if kind is not None:
            lock = flags & LOCK
            st.trace(kind, rc, flags & 3, paddr, size, address if rc == OK else 0, tag if lock else 0)
        return rc, address, cause

    # -- records --------------------------------------------------------------

    def _record_add(self, e: _Entry, addr: int, size: int, tag: int, dma: bool) -> None:
        st = self._st
        r = _Rec(addr, e, size, tag, dma)
        r.shadow = st.rev.get(addr)
        st.rev[addr] = r
        r.older = st.newest
        if st.newest is None:
            st.oldest = r
        else:
            st.newest.newer = r
        st.newest = r
        st.locked += 1
        st.dma_locked += dma

    def _record_find(self, addr: int, tag: int | None) -> _Rec | None:
        r = self._st.rev.get(addr)
        while r is not None and tag is not None and r.tag != tag:
            r = r.shadow
        return r

    def _ages(self) -> Iterator[_Rec]:
        """Every record, oldest first."""
        r = self._st.oldest
        while r is not None:
            yield r
            r = r.newer

    def _record_del(self, r: _Rec) -> None:
        st = self._st
        top = st.rev[r.addr]
        if top is r:
            if r.shadow is None:
                del st.rev[r.addr]
            else:
                st.rev[r.addr] = r.shadow
        else:
            while top.shadow is not r:
                top = top.shadow  # type: ignore[assignment]  # r is below it
            top.shadow = r.shadow
        if r.older is None:
            st.oldest = r.newer
        else:
            r.older.newer = r.newer
        if r.newer is None:
            st.newest = r.older
        else:
            r.newer.older = r.older
        r.entry.lock -= 1
        st.locked -= 1
        st.dma_locked -= r.dma

    def _entry_paddr(self, e: _Entry, addr: int) -> int:
        return (e.index << self._shift) + (addr - e.vaddr)

    def _records(self, dma_only: bool) -> list[Record]:
        return [
            (r.addr, self._entry_paddr(r.entry, r.addr), r.size, r.tag, r.dma)
            for r in self._ages()
            if not dma_only or r.dma
        ]

    # -- replace internals ------------------------------------------------------

    def _records_valid(self, e: _Entry) -> bool:
        """Do the locked mappings of e all lie on pages e has mapped?"""
        for r in self._ages():
            off = r.addr - e.vaddr
            n = ((off & (PAGE_SIZE - 1)) + (r.size or 1) + PAGE_SIZE - 1) >> PAGE_SHIFT
            if r.entry is e and not e.pages_valid(off >> PAGE_SHIFT, n):
                return False
        return True

    def _entry_blank(self, e: _Entry) -> None:
        """Give up on e's contents: keep its range reserved with no access."""
        if _sys_mmap(e.vaddr, e.size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE) is None:
            self._st.be.unmap(e.vaddr, e.size)
        e.flags = ENTRY_ANON
        e.valid = 0

    def _replace_locked(self, old_paddr: int, new_paddr: int, size: int) -> tuple[int, int]:
        """``replace_locked``: (status, host address of new_paddr)."""
        shift, bucket = self._shift, self._bucket
        index = old_paddr >> shift
        offset = old_paddr & (bucket - 1)
        new_offset = new_paddr & (bucket - 1)
        cache_size, n = bucket, 1
        if not _range_ok(old_paddr, size) or not _range_ok(new_paddr, size) or size > self._max_size:
            return EINVAL, 0
        if self._grants:  # a grant entry is never remapped in place
            return EGRANT, 0
        if size:
            cache_size = (offset + size + bucket - 1) & ~(bucket - 1)
            n = ((new_paddr & (PAGE_SIZE - 1)) + size + PAGE_SIZE - 1) >> PAGE_SHIFT
        slot = index % self._nr_slots
        for e in self._st.slots.get(slot, ()):
            if e.index == index and e.size == cache_size:
                break
        else:
            return ENOENT, 0
        if (new_offset >> PAGE_SHIFT) + n > (cache_size >> PAGE_SHIFT):
            return EINVAL, 0
        if not _range_ok(new_paddr - new_offset, cache_size):  # e keeps its size
            return EINVAL, 0
        old_index = e.index
        was_dummy = bool(e.flags & ENTRY_DUMMY)
        rc = self._map_into(e, new_paddr >> shift, cache_size, True, False)
        if rc == OK and (
            not e.pages_valid(new_offset >> PAGE_SHIFT, n) or (e.lock and not self._records_valid(e))
        ):
            rc = EMAP  # no locked mapping may end up on pages that cannot be mapped
        if rc != OK:
            # Put back guest pages, or anonymous memory for a dummy entry.
            if self._map_into(e, old_index, cache_size, True, was_dummy) == OK:
                return rc, 0
            e.index = old_index  # the records still name the old address
            if e.lock == 0:
                self._entry_blank(e)
                self._st.destroy(e)
            elif self._map_into(e, old_index, cache_size, True, True) == OK:
                # Its holders still use it: dummy memory, never no-access; but
                # no lookup may match it again, so its pages count as invalid.
                e.flags &= ~ENTRY_ALLVALID
                e.valid = 0
            else:
                self._entry_blank(e)  # not even anonymous memory could be had
            return rc, 0
        if e.index % self._nr_slots != old_index % self._nr_slots:
            self._st.chain_del(e)
            self._st.chain_append(e, self._nr_slots)
        return OK, e.vaddr + new_offset

    def _copy_chunk(self, paddr: int, n: int) -> int:
        """``copy_chunk``: the bytes of one bucket (map refuses more than max_size)."""
        return min(n, self._bucket - (paddr & (self._bucket - 1)), self._max_size)

    def _copy_locked(self, paddr: int, n: int, src: memoryview | None, out: list[bytes]) -> tuple[int, BaseException | None]:
        """``copy_locked``: all or nothing; every chunk mapped and pinned before a byte moves."""
        if not _range_ok(paddr, n):
            return EINVAL, None
        pieces: list[tuple[_Entry, int, int]] = []  # (entry, host address, length)
        pin = self._copy_chunk(paddr, n) < n  # one chunk alone needs no pin
        rc, cause = OK, None
        st, refusals, hits = self._st, _refusals.count, 0
        while n:
            chunk = self._copy_chunk(paddr, n)
            misses = st.misses
            rc, p, cause = self._map_traced(paddr, chunk, 0, 0)
            if rc != OK:
                break
            hits += st.misses == misses
            e = self._st.last
            assert e is not None  # map_locked leaves the entry that served in last
            if pin:
                e.lock += 1
            pieces.append((e, p, chunk))
            paddr += chunk
            n -= chunk
        if rc == OK and _refusals.count != refusals:  # the trace hook stopped the copy
            st.hits -= hits
            rc = ECALLBACK
        if rc == OK:
            done = 0
            for _, p, chunk in pieces:
                # One libc memmove per chunk, no ctypes array built per call:
                # the comparator of the speed-up rows copies as fast as Python can.
                if src is not None:
                    ctypes.memmove(p, src[done : done + chunk].tobytes(), chunk)
                else:
                    out.append(ctypes.string_at(p, chunk))
                done += chunk
        if pin and not self._st.closed:  # closed while translate ran: every entry is gone
            for e, _, _ in pieces:
                e.lock -= 1
        return rc, cause

    def _check_open(self) -> None:
        if self._st.closed:
            raise MapCacheError("the cache is closed")

    # -- the core interface (see _native.NativeCore) -------------------------------

    def map(self, paddr: int, size: int, flags: int, tag: int) -> int:
        """Host address of ``paddr``; flags LOCK and DMA; a locked map keeps ``tag``."""
        with _entered(self._st, self._lock, "map"):
            self._check_open()
            rc, address, cause = self._map_traced(paddr, size, flags, tag)
        if rc != OK:
            _raise(rc, "map", paddr, size, cause=cause or self._take_error())
        return address

    def _map_sg_locked(self, segs: list[tuple[int, int]], flags: int, tag: int) -> tuple[int, list[int], BaseException | None]:
        """``map_sg_locked``: every segment as ``_map_locked`` would, all or nothing."""
        if not 0 < len(segs) <= SG_MAX:
            return EINVAL, [], None
        for paddr, size in segs:
            if not _range_ok(paddr, size) or size > self._max_size:
                return EINVAL, [], None
        st = self._st
        start = (st.hits, st.misses, st.remaps)
        done: list[int] = []
        for paddr, size in segs:
            before = (st.hits, st.misses, st.remaps)
            rc, address, cause = self._map_traced(paddr, size, flags | LOCK, tag)
            if rc != OK:
                for a in reversed(done):  # undo, newest first
                    r = self._record_find(a, tag)
                    if r is not None:
                        self._record_drop(r, False)  # the batch's own error is the one to report
                # Only what the failing segment's own attempt moved stays counted.
                st.hits -= before[0] - start[0]
                st.misses -= before[1] - start[1]
                st.remaps -= before[2] - start[2]
                return rc, [], cause
            done.append(address)
        return OK, done, None

    def map_sg(self, segments: list[tuple[int, int]], flags: int, tag: int) -> list[int]:
        """One locked mapping per ``(paddr, size)``, all or nothing; their host addresses."""
        with _entered(self._st, self._lock, "map_sg"):
            self._check_open()
            rc, addresses, cause = self._map_sg_locked(segments, flags, tag)
        if rc != OK:
            _raise(rc, "map_sg", len(segments), cause=cause or self._take_error())
        return addresses

    def unlock_sg(self, addresses: list[int], tag: int) -> None:
        """Unlock the newest mapping with ``tag`` at each address, all or nothing
        (an address listed k times needs k of them)."""
        with _entered(self._st, self._lock, "unlock_sg"):
            self._check_open()
            rc = EINVAL if not 0 < len(addresses) <= SG_MAX else OK
            claimed: list[_Rec] = []
            below: dict[int, _Rec] = {}  # address -> its record claimed last: the next is older
            for a in addresses if rc == OK else ():
                r = below[a].shadow if a in below else self._st.rev.get(a)
                while r is not None and r.tag != tag:
                    r = r.shadow
                if r is None:
                    rc = ENOENT
                    break
                below[a] = r
                claimed.append(r)
            if rc == OK and self._st.sink is not None:  # every unlock told before any lock goes
                for r in claimed:
                    if self._trace_unlock(r):
                        rc = ECALLBACK
                        break
            if rc == OK:
                for r in claimed:
                    if self._record_release(r) != OK:
                        rc = ESYS  # unlocked all the same: reported once
        if rc != OK:
            _raise(rc, "unlock_sg", len(addresses), cause=self._take_error() if rc == ESYS else None)

    def _trace_unlock(self, r: _Rec) -> bool:
        """``trace_unlock``: the unlock event of r; whether the hook refused it."""
        flags = LOCK | (DMA if r.dma else 0)
        return self._st.trace("unlock", OK, flags, self._entry_paddr(r.entry, r.addr), r.size, r.addr, r.tag)

    def _record_release(self, r: _Rec) -> int:
        """``record_release``: ``_record_del``, then the grant rule (an entry whose
        last lock went is unmapped)."""
        self._record_del(r)
        if self._grants and r.entry.lock == 0:
            return OK if self._st.destroy(r.entry) == OK else ESYS
        return OK

    def _record_drop(self, r: _Rec, stoppable: bool) -> int:
        """``record_drop``: its unlock event, then ``_record_release``; a refused
        event stops an unlock (ECALLBACK, nothing changed), never an undo."""
        if self._trace_unlock(r) and stoppable:
            return ECALLBACK
        return self._record_release(r)

    def unlock(self, address: int, tag: int) -> None:
        """Drop the newest locked mapping at exactly ``address`` that carries ``tag``."""
        with _entered(self._st, self._lock, "unlock"):
            self._check_open()
            r = self._record_find(address, tag)
            if r is None:
                self._st.trace("unlock_unknown", ENOENT, 0, 0, 0, address, tag)
                rc = ENOENT
            else:  # the last lock of a grant entry: unmapped now
                rc = self._record_drop(r, True)
        if rc == ENOENT:
            _raise(ENOENT, "unlock", address)
        if rc != OK:
            _raise(rc, "unlock", address, cause=self._take_error() if rc == ESYS else None)

    def ram_addr(self, address: int) -> int:
        """Guest address behind a host address inside a live entry."""
        with _entered(self._st, self._lock, "ram_addr"):
            self._check_open()
            r = self._record_find(address, None)
            e = r.entry if r is not None else self._st.tree_find(address)
            paddr = None if e is None else self._entry_paddr(e, address)
            if e is None:
                self._st.trace("ram_addr_unknown", ENOENT, 0, 0, 0, address)
        if paddr is None:
            _raise(ENOENT, "ram_addr", address)
        return paddr

    def invalidate(self) -> tuple[list[Record], BaseException | None]:
        """Unmap every unlocked entry; the DMA records still outstanding, oldest
        first, and what a failed unmap raised."""
        with _entered(self._st, self._lock, "invalidate"):
            self._check_open()
            st = self._st
            in_flight = self._records(True)
            st.trace("invalidate", OK, 0, 0, len(in_flight), 0)
            for address, paddr, size, tag, _ in in_flight:
                st.trace("dma_in_flight", OK, LOCK | DMA, paddr, size, address, tag)
            rc = OK
            for e in reversed(list(st.live)):
                if e.lock == 0:
                    urc = st.destroy(e)
                    if rc == OK:
                        rc = urc
            st.last = None
            st.invalidations += 1
        if rc == ESYS:  # as the C core's binding: the error goes with the records
            return in_flight, self._take_error() or OSError("system call failed")
        if rc != OK:
            _raise(rc, "invalidate")
        return in_flight, None

    def _take_error(self) -> BaseException | None:
        """The exception of the backend's last failed callback, if any (once)."""
        be = self._st.be
        error, be.error = be.error, None
        return error

    def locked(self) -> list[Record]:
        """Every outstanding locked mapping, oldest first."""
        with _entered(self._st, self._lock, "locked"):
            self._check_open()
            return self._records(False)

    def replace(self, old: int, new: int, size: int) -> int:
        """Remap the entry holding ``old`` onto ``new`` in place; the host address of ``new``."""
        with _entered(self._st, self._lock, "replace"):
            self._check_open()
            rc, address = self._replace_locked(old, new, size)
            self._st.trace("replace", rc, 0, new, size, address if rc == OK else 0, 0, old)
        if rc != OK:
            _raise(rc, "replace", old, new, cause=self._take_error())
        return address

    def read(self, paddr: int, n: int) -> bytes:
        """Copy ``n`` bytes of guest memory out through the cache."""
        out: list[bytes] = []
        with _entered(self._st, self._lock, "read"):
            self._check_open()
            rc, cause = self._copy_locked(paddr, n, None, out)
        if rc != OK:
            _raise(rc, "read", paddr, n, cause=cause or self._take_error())
        return b"".join(out)

    def write(self, paddr: int, data: Any) -> None:
        """Copy ``data`` into guest memory through the cache."""
        src = memoryview(data).cast("B")
        with _entered(self._st, self._lock, "write"):
            self._check_open()
            rc, cause = self._copy_locked(paddr, len(src), src, [])
        if rc != OK:
            _raise(rc, "write", paddr, len(src), cause=cause or self._take_error())

    def stats(self) -> tuple[int, ...]:
        """(hits, misses, remaps, entries, locked, dma_locked, mapped_bytes, invalidations)."""
        with _entered(self._st, self._lock, "stats"):
            st = self._st
            return (
                st.hits,
                st.misses,
                st.remaps,
                st.entries,
                st.locked,
                st.dma_locked,
                st.mapped_bytes,
                st.invalidations,
            )

    def view(self, address: int, size: int) -> memoryview:
        """A writable 1-D memoryview (format 'B') of ``size`` bytes of host memory."""
        return memoryview((ctypes.c_ubyte * size).from_address(address)).cast("B")

    def close(self) -> None:
        """Unmap everything and close the cache's handle on guest RAM; a failed unmap raises."""
        with _entered(self._st, self._lock, "close"):  # refused before anything changes
            if not self._finalizer.detach():
                return
            rc = self._st.free()
        if rc != OK:
            _raise(rc, "close", cause=self._take_error())


class MapCache(_cache.MapCache):
    """The mapcache of the contract, section 6, on the pure-Python reference core (https://xenmapcache.readthedocs.io/en/latest/contract.html)."""

    _Core = _PyCore
