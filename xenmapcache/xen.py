"""The real Xen backends: guest memory of a running domain, and its grants.

``XenForeignMemory(domid)`` wraps the C core's ``xmc_xen``, which loads
libxenforeignmemory at run time; ``XenGrantTable(domid)`` wraps ``xmc_gnttab``,
which loads libxengnttab.  Pass either to ``MapCache`` in place of a
``GuestRAM``.  Where Xen is absent they raise ``BackendUnavailable`` saying
which piece is missing (the library, or /dev/xen/privcmd or /dev/xen/gntdev);
importing this module never needs Xen.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any, Self

from ._nocopy import NoCopy
from ._validate import as_uint
from .errors import BackendUnavailable, MapCacheError

DOMID_LIMIT = 1 << 16
WHY_SIZE = 512


class _XenBackend(NoCopy):
    """What both Xen backends share: opening, the C handle, closing, the context manager."""

    domid: int
    library: str | None
    _what: str  # the C object: "xmc_xen" has xmc_xen_open, xmc_xen_backend, xmc_xen_free
    _c: Any
    _ffi: Any
    _lib: Any

    def _open(self, domid: int, library: str | os.PathLike[str] | None, *args: Any) -> None:
        """Call ``<_what>_open(domid, *args, library, why, size, &out)``; keep the handle or raise."""
        from ._binding import binding, check

        ffi, lib = binding()
        self._c = None
        self.domid = as_uint(domid, "domid", DOMID_LIMIT)
        self.library = None if library is None else os.fsdecode(library)
        why = ffi.new("char[]", WHY_SIZE)
        what = self._what
        out = ffi.new(f"{what} **")
        name = ffi.NULL if self.library is None else os.fsencode(self.library)
        rc = getattr(lib, f"{what}_open")(self.domid, *args, name, why, WHY_SIZE, out)
        if rc == lib.XMC_EUNAVAIL:
            raise BackendUnavailable(f"Xen domain {self.domid}: {ffi.string(why).decode(errors='replace')}")
        check(rc, repr(self))
        self._c = ffi.gc(out[0], getattr(lib, f"{what}_free"))
        self._ffi, self._lib = ffi, lib

    @contextlib.contextmanager
    def _c_backend(self) -> Iterator[Any]:
        """The C core's ``const xmc_backend *`` (caches retain what it points into)."""
        if self._c is None:
            raise MapCacheError(f"the {type(self).__name__} backend of Xen domain {self.domid} is closed")
        yield getattr(self._lib, f"{self._what}_backend")(self._c)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._c is None

    def close(self) -> None:
        """Drop this handle; a second call does nothing.

        Caches built on it keep their own reference, and the library handle
        lives until the last of them is closed.  Raises nothing.

        Cost: O(1).
        """
        if self._c is not None:
            self._ffi.release(self._c)
            self._c = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _library_repr(self) -> str:
        """``, library='...'`` when one was named, for ``__repr__``."""
        return "" if self.library is None else f", library={self.library!r}"


class XenForeignMemory(_XenBackend):
    """The memory of Xen domain ``domid``, mapped through libxenforeignmemory.

    Pass it to :class:`MapCache`, which keeps it alive while it needs it.
    ``library`` names the shared library to load (default
    ``libxenforeignmemory.so.1``), for a Xen installed outside the loader's
    path.  The library is loaded here, at run time, never at import; its
    messages are kept out of stderr and end up in the exception.  Also a
    context manager.

    :raises BackendUnavailable: the library cannot be loaded, or
        ``/dev/xen/privcmd`` is missing (not running in a Xen domain); the
        message says which.
    :raises InvalidAddress: ``domid`` is negative or not below 65536.
    :raises TypeError: ``domid`` is not an int.

    Cost: a ``dlopen`` and an open of the privcmd device, once.
    """

    _no_copy_why = "it owns a libxenforeignmemory handle, which a copy would close twice"
    _what = "xmc_xen"

    def __init__(self, domid: int, library: str | os.PathLike[str] | None = None) -> None:
        self._open(domid, library)

    def __repr__(self) -> str:
        return f"XenForeignMemory({self.domid}{self._library_repr()})"


class XenGrantTable(_XenBackend):
    """Pages Xen domain ``domid`` granted us, mapped through libxengnttab.

    A backend whose page numbers are grant references: a cache over it maps
    guest page ``p`` (address ``p << 12``) from grant reference ``p``, all of
    an entry's references in one ``xengnttab_map_domain_grant_refs`` call or
    none.  Mappings are read-only unless ``writable``.  A grant cannot be
    remapped in place, so use it as QEMU does:
    ``MapCache(table, bucket_shift=12, grants=True)``.  ``library`` names the
    shared library to load (default ``libxengnttab.so.1``).  The library is
    loaded here, at run time, never at import; its messages are kept out of
    stderr and end up in the exception.  Also a context manager.

    :raises BackendUnavailable: the library cannot be loaded, or
        ``/dev/xen/gntdev`` is missing (not running in a Xen domain); the
        message says which.
    :raises InvalidAddress: ``domid`` is negative or not below 65536.
    :raises TypeError: ``domid`` is not an int.

    Cost: a ``dlopen`` and an open of the gntdev device, once.
    """

    _no_copy_why = "it owns a libxengnttab handle, which a copy would close twice"
    _what = "xmc_gnttab"

    def __init__(self, domid: int, writable: bool = False, library: str | os.PathLike[str] | None = None) -> None:
        self.writable = bool(writable)
        self._open(domid, library, self.writable)

    def __repr__(self) -> str:
        return f"XenGrantTable({self.domid}, writable={self.writable}{self._library_repr()})"
