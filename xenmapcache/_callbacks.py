"""C-to-Python callbacks (``extern "Python"`` in build_ffi.py), registered once.

An exception raised by a user callback cannot cross C; it is kept in
``pending.errors`` for the calling thread, under the key that names the
backend or translate callback that raised, whatever it raised
(``KeyboardInterrupt`` and ``SystemExit`` too), and the callback returns its
declared error value, which the core takes as a failure.  The caller chains
the exception onto the error the core returns, or raises an interrupt as it
is (``NativeCore._fail``).  A cache takes only its own callbacks' errors and
leaves the others', so an error can never become the cause of a failure on
another cache, nor be lost to another cache's taking in the middle of the
call (a cache collected while a trace hook runs); every path that can leave
one (a failed call, an invalidate or close whose unmap failed, the garbage
collection of a cache) takes it at once.  A trace hook's error is logged (see xenmapcache.trace).

Python backends are found through ``backends``, keyed by the integer the C
core holds as its opaque pointer; the core's retain/release hooks count its
users, so a backend lives exactly as long as some C cache needs it, whatever
order the garbage collector frees things in.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import Any, Protocol

from ._binding import binding
from ._validate import U64_LIMIT
from .trace import keep

ffi, lib = binding()
pending = threading.local()


class PyBackend(Protocol):
    """What ``_xmc_py_map`` and ``_xmc_py_unmap`` call (see backends.CallbackBackend)."""

    def _map_pages(self, first_pfn: int, nr_pages: int, fixed: int | None) -> tuple[int, Sequence[int]]: ...

    def _unmap(self, address: int, length: int) -> None: ...


# opaque id -> [backend, its xmc_backend struct, number of C caches using it]
backends: dict[int, list[Any]] = {}
_registry_lock = threading.Lock()
# A thread that held it at fork() is gone from the child: free it there.
os.register_at_fork(after_in_child=_registry_lock._at_fork_reinit)  # type: ignore[attr-defined]


@contextlib.contextmanager
def registered(backend: PyBackend) -> Iterator[Any]:
    """A new ``xmc_backend *`` calling into ``backend``, for a C cache to retain.

    The block holds one reference of its own, so a cache that fails to be
    created leaves nothing behind in the registry.
    """
    be = ffi.new("xmc_backend *")
    key = id(be)
    be.opaque = ffi.cast("void *", key)
    be.map = lib._xmc_py_map
    be.unmap = lib._xmc_py_unmap
    be.retain = lib._xmc_py_retain
    be.release = lib._xmc_py_release
    with _registry_lock:
        backends[key] = [backend, be, 1]
    try:
        yield be
    finally:
        _drop(key)


def _drop(key: int) -> None:
    with _registry_lock:
        slot = backends[key]
        slot[2] -= 1
        if slot[2] == 0:
            del backends[key]


def _keep(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    """cffi's ``onerror`` of the callbacks that return a status: keep what
    the callback raised, ``BaseException`` included, for the caller.

    The callback's own frame (the traceback's first) names the cache's key in
    its ``opaque`` argument.  An interrupt already kept wins over a later
    error: cleaning up after it (a remap put back, an entry unmapped) may
    call back in and fail again.
    """
    opaque = tb.tb_frame.f_locals.get("opaque") if tb is not None else None
    key = None if opaque is None else int(ffi.cast("uintptr_t", opaque))
    errors = _errors()
    if isinstance(errors.get(key, ValueError()), Exception):
        errors[key] = exc


def _errors() -> dict[int | None, BaseException]:
    """This thread's pending callback errors, by key."""
    errors: dict[int | None, BaseException] | None = getattr(pending, "errors", None)
    if errors is None:
        errors = pending.errors = {}
    return errors


def take(keys: tuple[int, ...]) -> BaseException | None:
    """This thread's pending callback error that one of ``keys`` raised (once),
    an interrupt first; the other keys' stay for their own caches.

    One whose callback could not be told (None) is anyone's: an interrupt is
    never lost.
    """
    errors = _errors()
    if not errors:
        return None
    got = [exc for key in (*keys, None) if (exc := errors.pop(key, None)) is not None]
    return next((exc for exc in got if not isinstance(exc, Exception)), got[0] if got else None)


# Each callback that returns a status declares the one it returns when it
# raises, whatever it raises: a failure the core gives up on at once.  cffi's
# default, 0, would be XMC_OK, and an interrupt would become a success.
XMC_ECALLBACK = int(lib.XMC_ECALLBACK)


@ffi.def_extern(error=XMC_ECALLBACK, onerror=_keep)  # type: ignore[misc, untyped-decorator, unused-ignore]  # code depends on mypy's version
def _xmc_py_map(opaque: Any, fixed: Any, first_pfn: int, nr_pages: int, errs: Any, out: Any) -> int:
    backend = backends[int(ffi.cast("uintptr_t", opaque))][0]
    want = int(ffi.cast("uintptr_t", fixed)) or None
    address, errors = backend._map_pages(first_pfn, nr_pages, want)
    errors = list(errors)
    if len(errors) != nr_pages or any(type(e) is not int or e < 0 for e in errors):
        raise ValueError(f"map must return {nr_pages} per-page errors (0 or a positive errno)")
    if type(address) is not int or address <= 0 or (want is not None and address != want):
        raise ValueError(f"map returned a bad address {address!r} (fixed={want!r})")
    for i, e in enumerate(errors):
        errs[i] = e
    out[0] = ffi.cast("void *", address)
    return 0


@ffi.def_extern(error=int(lib.XMC_ESYS), onerror=_keep)  # type: ignore[misc, untyped-decorator, unused-ignore]  # code depends on mypy's version
def _xmc_py_unmap(opaque: Any, address: Any, length: int) -> int:
    backends[int(ffi.cast("uintptr_t", opaque))][0]._unmap(int(ffi.cast("uintptr_t", address)), length)
    return 0


@ffi.def_extern()  # type: ignore[misc, untyped-decorator, unused-ignore]  # code depends on mypy's version
def _xmc_py_retain(opaque: Any) -> None:
    with _registry_lock:
        backends[int(ffi.cast("uintptr_t", opaque))][2] += 1


@ffi.def_extern()  # type: ignore[misc, untyped-decorator, unused-ignore]  # code depends on mypy's version
def _xmc_py_release(opaque: Any) -> None:
    _drop(int(ffi.cast("uintptr_t", opaque)))


def _trace_lost(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> int | None:
    """cffi's ``onerror`` of the trace callback: log an error (the call goes on:
    0), keep an interrupt for the call (the event is refused: ``error``, 1)."""
    if isinstance(exc, Exception):
        logging.getLogger("xenmapcache").error("trace event lost", exc_info=(exc_type, exc, tb))
        return 0
    keep(exc)
    return None


@ffi.def_extern(error=1, onerror=_trace_lost)  # type: ignore[misc, untyped-decorator, unused-ignore]  # code depends on mypy's version
def _xmc_py_trace(opaque: Any, ev: Any) -> int:
    # The sink (xenmapcache.trace.make_sink) logs what the user's hook raises
    # and keeps an interrupt; nothing crosses back into C, which holds the
    # cache's mutex here, but the answer: 1 (refused) while an interrupt is
    # kept, which stops an unlock, a read or a write with nothing changed.
    return int(ffi.from_handle(opaque)(ev.kind, ev.rc, ev.flags, ev.paddr, ev.size, ev.address, ev.tag, ev.old_paddr))


@ffi.def_extern(error=XMC_ECALLBACK, onerror=_keep)  # type: ignore[misc, untyped-decorator, unused-ignore]  # code depends on mypy's version
def _xmc_py_translate(opaque: Any, paddr: int, size: int, out: Any) -> int:
    new = ffi.from_handle(opaque)(paddr, size)
    if type(new) is not int or not 0 <= new < U64_LIMIT:
        raise TypeError(f"translate must return an int in [0, 2**64), not {new!r}")
    out[0] = new
    return 0
