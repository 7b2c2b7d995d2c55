"""Mapping and MappingGroup, and the registry of a cache's Mappings in Python.

Below the cores: the binding's C types (ffi/mapping.h, ffi/group.h) subclass
these two, and ``_PyRegistry`` keeps the Mappings where the binding has no
types of its own (the reference core, and the C core off CPython).
"""

from __future__ import annotations

import collections.abc
import itertools
import operator
import threading
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from ._nocopy import NoCopy
from .errors import MapCacheError

# The flags of a core's map: LOCK keeps the entry, DMA marks a transfer.
LOCK = 1
DMA = 2


class Mapping(NoCopy):
    """A locked mapping of guest memory: ``memoryview(m)`` reads and writes it.

    Made by :meth:`MapCache.map` (or :meth:`MapCache.map_sg`), never directly.
    The mapping stays locked until :meth:`release` (or the end of its
    ``with`` block): its entry is neither unmapped nor reused, and
    ``invalidate()`` keeps it (and warns about it when ``dma`` is true).
    ``memoryview(m)`` is writable, one-dimensional, of format ``'B'`` and
    ``size`` bytes long, and reads and writes guest memory in place (no copy).
    The mapping counts the views exported from it (PEP 688, slices included):
    while one is alive, releasing the mapping, or closing its cache, raises
    ``BufferError`` and leaves it mapped, so a view never outlives the host
    mapping behind it.  After release, taking a new view raises
    ``BufferError``.

    Attributes (read-only):

    - ``address``: the host address of ``paddr``;
    - ``paddr``: the guest-physical address (follows ``cache.replace()``);
    - ``size``: the size asked for, in bytes;
    - ``dma``: whether the mapping is for DMA;
    - ``tag``: any object given to ``cache.map()``, reported by ``locked()``,
      ``invalidate()`` and the ``DMAMappingWarning``.

    This class is the type the mappings of every implementation share.  On
    the C core under CPython they are instances of a subclass written in the
    binding's own C (``xenmapcache._core.Mapping``, ffi/mapping.h): it exports
    the host memory itself and counts exports without a Python frame, and
    its registry lives in C.  Elsewhere, and in the reference, a Python
    subclass does the same.
    """

    __slots__ = ()
    _no_copy_why = "a copy would unlock the same locked mapping a second time"

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
        """Unlock the mapping: drop its reverse record and its lock on the entry.

        A second call, or a call after the cache was closed, does nothing.

        :raises BufferError: a memoryview of the mapping is still alive (the
            mapping stays locked; release the views first).
        :raises MapCacheError: the C core refused (it cannot, short of a bug).

        Cost: O(1), one C call, whatever the number of locked mappings; on
        the C core under CPython, no Python frame either.
        """
        raise NotImplementedError

    def __enter__(self) -> Mapping:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class MappingGroup(NoCopy):
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
    _no_copy_why = "a copy would unlock the same locked mappings a second time"

    if TYPE_CHECKING:

        def __len__(self) -> int: ...

        def __getitem__(self, index: int) -> Mapping: ...

        def __iter__(self) -> Iterator[Mapping]: ...

    @property
    def released(self) -> bool:
        """Whether every mapping of the group was released (or its cache closed): then all are unmapped for us."""
        raise NotImplementedError

    def buffers(self) -> list[memoryview]:
        """Return one writable 1-D memoryview (format ``'B'``) per mapping, in order.

        Each is an export of its mapping: release the views (or drop the
        list) before :meth:`release`.

        :raises BufferError: a mapping of the group was released.

        Cost: one memoryview per mapping (no copy); on the C core under
        CPython, one call with no Python frame.
        """
        raise NotImplementedError

    def release(self) -> None:
        """Unlock every mapping of the group still locked, in one core call.

        A second call, or a call after the cache was closed, does nothing.

        :raises BufferError: a memoryview of one of them is still alive (then
            none is released).
        :raises MapCacheError: the C core refused (it cannot, short of a bug).

        Cost: one C call (``xmc_unlock_sg``) for the whole group: O(n) in its
        mappings, O(1) in the other locked mappings of the cache.
        """
        raise NotImplementedError

    def __enter__(self) -> MappingGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


collections.abc.Sequence.register(MappingGroup)


class _PyMapping(Mapping):
    """The Python ``Mapping``, kept by a :class:`_PyRegistry` (PEP 688 buffer).

    Its attributes are read-only properties over private slots: a ``size``
    the user could set would make ``memoryview(m)`` reach past the mapping.
    """

    __slots__ = ("_address", "_paddr", "_size", "_dma", "_tag", "_reg", "_id", "_exports", "_released", "__weakref__")

    address = property(operator.attrgetter("_address"), doc="The host address of ``paddr``.")
    paddr = property(operator.attrgetter("_paddr"), doc="The guest-physical address (follows ``cache.replace()``).")
    size = property(operator.attrgetter("_size"), doc="The size asked for, in bytes.")
    dma = property(operator.attrgetter("_dma"), doc="Whether the mapping is for DMA.")
    tag = property(operator.attrgetter("_tag"), doc="The object given to ``cache.map()``.")

    def __init__(self, reg: _PyRegistry, ident: int, paddr: int, size: int, dma: bool, tag: Any) -> None:
        self._reg = reg
        self._id = ident
        self._address = 0  # 0 while in flight: the registry indexes it by address once mapped
        self._paddr = paddr
        self._size = size
        self._dma = dma
        self._tag = tag
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
        view: memoryview = self._reg.core.view(self._address, self._size)
        return view

    def __release_buffer__(self, view: memoryview) -> None:
        view.release()
        with self._reg.lock:
            self._exports -= 1

    def release(self) -> None:
        """Unlock the mapping; a second call does nothing (BufferError while views live)."""
        self._reg.release(self)

    def __repr__(self) -> str:
        state = "released" if self._released else f"at {self._address:#x}"
        return f"<Mapping paddr={self._paddr:#x} size={self._size:#x} dma={self._dma} tag={self._tag!r} {state}>"


class _PyMappingGroup(MappingGroup):
    """The Python ``MappingGroup``, kept by a :class:`_PyRegistry`."""

    __slots__ = ("_reg", "_items", "_id", "__weakref__")

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

    def __repr__(self) -> str:
        return f"<MappingGroup of {len(self._items)}: {self._items!r}>"


class _PyRegistry:
    """The live Mappings of one cache, in Python (the reference core, and the
    C core where the binding has no types of its own: not CPython).

    ``_protocols.Registry``, as ``NativeCache`` of ffi/cache.h: ``mapping``,
    ``group``, ``tags``, ``tag_of``, ``release_at``, ``mappings``,
    ``set_paddr``, ``close_registry``.  Its lock guards exports and the
    registry, never held across a core call: the core serialises the cache
    itself.  A Mapping is registered (its tag id found by a trace event) from
    before its core call until after its unlock returns, but found by address
    only once mapped: never while in flight, when it has no address yet.
    """

    def __init__(self, core: Any) -> None:
        self.core = core
        self.lock = threading.Lock()
        self._mappings: dict[_PyMapping, None] = {}  # the live Mappings, oldest first
        self._at: dict[int, list[_PyMapping]] = {}  # host address -> its mapped Mappings, oldest first
        self._tags: dict[int, list[Any]] = {}  # tag id -> [tag, live Mappings carrying it]
        self._ids = itertools.count(1)
        self._closed = False

    def _add(self, items: Iterable[_PyMapping], ident: int, tag: Any) -> None:
        """Register ``items`` (holding the lock), in flight: no address yet."""
        if self._closed:
            raise MapCacheError("the cache is closed")
        n = len(self._mappings)
        self._mappings.update(dict.fromkeys(items))
        self._tags[ident] = [tag, len(self._mappings) - n]

    def _mapped(self, items: Iterable[_PyMapping]) -> None:
        """``items`` have their addresses (holding the lock): find them by address."""
        for m in items:
            self._at.setdefault(m._address, []).append(m)

    def _forget(self, items: Iterable[_PyMapping]) -> None:
        """Drop ``items`` from every index (holding the lock)."""
        for m in items:
            if self._mappings.pop(m, False) is not False:
                slot = self._tags[m._id]
                slot[1] -= 1
                if not slot[1]:
                    del self._tags[m._id]
            same = self._at.get(m._address)
            if same is not None and m in same:
                same.remove(m)
                if not same:
                    del self._at[m._address]

    def mapping(self, paddr: int, size: int, dma: bool, tag: Any) -> Mapping:
        ident = next(self._ids)
        m = _PyMapping(self, ident, paddr, size, dma, tag)
        with self.lock:
            self._add((m,), ident, tag)  # before the call: invalidate() may list it at once
        try:
            m._address = self.core.map(paddr, size, LOCK | (DMA if dma else 0), ident)
        except BaseException:
            with self.lock:
                self._forget((m,))
            raise
        with self.lock:
            if self._closed:  # closed while we mapped: the core has unmapped it
                m._released = True
                raise MapCacheError("the cache was closed")
            self._mapped((m,))
        return m

    def release(self, m: _PyMapping) -> None:
        with self.lock:
            if m._released:
                return
            if m._exports:
                raise BufferError(f"{m._exports} memoryview(s) of the mapping are still alive")
            m._released = True
        try:  # still registered meanwhile: the core's trace event names its tag
            self.core.unlock(m._address, m._id)
        except BaseException:
            self._failed((m,))
            raise
        with self.lock:
            self._forget((m,))

    def _failed(self, items: tuple[_PyMapping, ...] | list[_PyMapping]) -> None:
        """After a failed core unlock of ``items`` (one tag id, all or nothing):
        as they were when the core still holds their locks (a call stopped
        before its effect: its trace hook's interrupt, a refused re-entry),
        else released (a grant entry that failed to unmap; a closed cache).
        O(locked mappings), on this rare path only."""
        try:
            held = sum(r[3] == items[0]._id for r in self.core.locked())
        except MapCacheError:  # closed, or asked from inside a callback
            held = 0
        with self.lock:
            if held >= len(items) and not self._closed:
                for m in items:
                    m._released = False
            else:
                self._forget(items)

    def group(self, segments: list[tuple[int, int]], dma: bool, tag: Any) -> MappingGroup:
        ident = next(self._ids)  # one tag id for the batch, as the core's batch takes
        items = tuple(_PyMapping(self, ident, paddr, size, dma, tag) for paddr, size in segments)
        with self.lock:
            self._add(items, ident, tag)
        try:
            addresses = self.core.map_sg(segments, LOCK | (DMA if dma else 0), ident)
        except BaseException:
            with self.lock:
                self._forget(items)
            raise
        for m, address in zip(items, addresses, strict=True):
            m._address = address
        with self.lock:
            if self._closed:  # closed while we mapped: the core has unmapped them
                for m in items:
                    m._released = True
                raise MapCacheError("the cache was closed")
            self._mapped(items)
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
        # As release(): an error is reported with the locks gone (a grant
        # entry failing to unmap) or all kept (the call stopped).
        try:
            self.core.unlock_sg([m._address for m in live], g._id)
        except BaseException:
            self._failed(live)
            raise
        with self.lock:
            self._forget(live)

    def tags(self) -> dict[int, Any]:
        with self.lock:
            return {ident: slot[0] for ident, slot in self._tags.items()}

    def tag_of(self, ident: int) -> Any:
        slot = self._tags.get(ident)  # one dict lookup (atomic): O(1) per trace event
        return None if slot is None else slot[0]

    def release_at(self, address: int) -> bool:
        with self.lock:
            holders = [m for m in self._at.get(address, ()) if not m._released]
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
        m._paddr = paddr

    def detach(self) -> None:
        """Drop the references to the Mappings (the MapCache is gone); see ffi/registry.h."""
        with self.lock:
            self._mappings.clear()
            self._at.clear()
            self._tags.clear()

    def close_registry(self) -> None:
        with self.lock:
            busy = [m for m in self._mappings if m._exports]
            if busy:
                raise BufferError(f"{len(busy)} mapping(s) still have memoryviews alive")
            self._closed = True
            for m in self._mappings:
                m._released = True
            self._mappings.clear()
            self._at.clear()
            self._tags.clear()
