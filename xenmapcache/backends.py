"""Backends beyond the embedded guest RAM: Python callables.

``CallbackBackend`` lets an emulator that owns its guest memory plug it into
the C core: the core calls ``map`` and ``unmap`` whenever it needs an entry
mapped or dropped, exactly as it calls the memfd or Xen backends.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ._nocopy import NoCopy

MapFn = Callable[[int, int, "int | None"], tuple[int, Sequence[int]]]
UnmapFn = Callable[[int, int], None]


class CallbackBackend(NoCopy):
    """Guest memory mapped by Python callables.

    ``map(first_pfn, nr_pages, fixed)`` maps ``nr_pages`` guest pages from
    page frame ``first_pfn`` and returns ``(address, errors)``: the host
    address, and one int per page, 0 if the page is mapped or a positive errno
    if not (such a page must be left inaccessible).  When ``fixed`` is an int
    the mapping must be made at exactly that address, replacing what is there
    (the cache remaps entries in place).  ``unmap(address, length)`` undoes a
    map.  An exception from either becomes a ``MappingError`` (or, for unmap, a
    logged error) with the exception as its ``__cause__``.  They run under the
    cache's lock: a call from them into the cache that uses them raises
    ``MapCacheError`` instead of waiting for itself.

    :raises TypeError: ``map`` or ``unmap`` is not callable.

    Cost: each miss of a cache on this backend costs a call of ``map`` from C
    into Python (a few microseconds besides the mapping itself), each dropped
    entry a call of ``unmap``.  A complete example:
    https://xenmapcache.readthedocs.io/en/latest/backends.html
    """

    _no_copy_why = "its callbacks are the emulator's own mappings, which a copy cannot own"

    def __init__(self, map: MapFn, unmap: UnmapFn) -> None:
        if not callable(map) or not callable(unmap):
            raise TypeError("map and unmap must be callable")
        self.map = map
        self.unmap = unmap

    def _map_pages(self, first_pfn: int, nr_pages: int, fixed: int | None) -> tuple[int, Sequence[int]]:
        return self.map(first_pfn, nr_pages, fixed)

    def _unmap(self, address: int, length: int) -> None:
        self.unmap(address, length)

    @contextlib.contextmanager
    def _c_backend(self) -> Iterator[Any]:
        """An ``xmc_backend *`` for a C cache to retain."""
        from ._callbacks import registered

        with registered(self) as be:
            yield be

    def __repr__(self) -> str:
        return f"CallbackBackend(map={self.map!r}, unmap={self.unmap!r})"
