"""Guest memory of a running Xen domain: the real foreign-memory backend.

``XenForeignMemory(domid)`` wraps the C core's ``xmc_xen``, which loads
libxenforeignmemory at run time; pass it to ``MapCache`` in place of a
``GuestRAM``.  Where Xen is absent it raises ``BackendUnavailable`` saying
which piece is missing (the library, or /dev/xen/privcmd); importing this
module never needs Xen.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from ._nocopy import NoCopy
from ._validate import as_uint
from .errors import BackendUnavailable, MapCacheError

DOMID_LIMIT = 1 << 16
WHY_SIZE = 512


class XenForeignMemory(NoCopy):
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

    def __init__(self, domid: int, library: str | os.PathLike[str] | None = None) -> None:
        from ._native import binding, check

        ffi, lib = binding()
        self.domid = as_uint(domid, "domid", DOMID_LIMIT)
        self.library = None if library is None else os.fsdecode(library)
        why = ffi.new("char[]", WHY_SIZE)
        out = ffi.new("xmc_xen **")
        name = ffi.NULL if self.library is None else os.fsencode(self.library)
        rc = lib.xmc_xen_open(self.domid, name, why, WHY_SIZE, out)
        if rc == lib.XMC_EUNAVAIL:
            raise BackendUnavailable(f"Xen domain {self.domid}: {ffi.string(why).decode(errors='replace')}")
        check(rc, f"XenForeignMemory({self.domid})")
        self._c: Any = ffi.gc(out[0], lib.xmc_xen_free)
        self._ffi, self._lib = ffi, lib

    @contextlib.contextmanager
    def _c_backend(self) -> Iterator[Any]:
        """The C core's ``const xmc_backend *`` (caches retain what it points into)."""
        if self._c is None:
            raise MapCacheError(f"the backend of Xen domain {self.domid} is closed")
        yield self._lib.xmc_xen_backend(self._c)

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

    def __enter__(self) -> XenForeignMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        where = "" if self.library is None else f", library={self.library!r}"
        return f"XenForeignMemory({self.domid}{where})"
