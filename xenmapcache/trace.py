"""Trace events: what a cache does, as QEMU's mapcache reports through its trace points.

``MapCache(..., trace=fn)`` calls ``fn(event)`` with a :class:`TraceEvent` for
every event of the C core's ``xmc_cache_set_trace`` (the reference core emits
the same events in the same order).  More: https://xenmapcache.readthedocs.io/en/latest/trace-and-grants.html

The core calls in with the cache's mutex held: ``fn`` must not call the same
cache (that raises ``MapCacheError``).  An exception raised by ``fn`` is
logged on the ``xenmapcache`` logger (with its traceback) and the call that
emitted the event carries on: a trace hook never changes what the cache does.
An interrupt (``KeyboardInterrupt``, ``SystemExit``: anything not an
``Exception``) is never lost and the call raises it having changed nothing:
the sink answers the core that the event is refused, which stops a read, a
write or an unlock (``unlock_sg`` all or nothing) before its effect; a call
whose work is done when it reports it (a map) finishes, then gives back any
lock it took (see :func:`guard`).
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

logger = logging.getLogger("xenmapcache")

# XMC_EV_* of csrc/xenmapcache.h, by number.
EVENT_NAMES = {
    1: "hit",
    2: "miss",
    3: "map",
    4: "remap",
    5: "unmap",
    6: "dummy",
    7: "translate",
    8: "lock_overflow",
    9: "unlock",
    10: "unlock_unknown",
    11: "ram_addr_unknown",
    12: "invalidate",
    13: "dma_in_flight",
    14: "replace",
    15: "refused",
}
EVENT_NUMBERS = {name: number for number, name in EVENT_NAMES.items()}
# Reported by MapCache itself, once per call that raises UnknownMapping: the
# core may be asked more than once for one call (a fast path, then the method).
PYTHON_LEVEL = frozenset({10, 11})
XMC_DMA = 2

Trace = Callable[["TraceEvent"], object]
# What a core calls: (kind, rc, flags, paddr, size, address, tag id, old_paddr);
# True refuses the event (an interrupt is kept for the call).
Sink = Callable[[int, int, int, int, int, int, int, int], bool]


@dataclass(frozen=True, slots=True)
class TraceEvent:
    """One trace event.

    ``name``: what happened (``"hit"``, ``"miss"``, ``"map"``, ``"remap"``,
    ``"unmap"``, ``"dummy"``, ``"translate"``, ``"lock_overflow"``,
    ``"unlock"``, ``"unlock_unknown"``, ``"ram_addr_unknown"``,
    ``"invalidate"``, ``"dma_in_flight"``, ``"replace"``, ``"refused"``);
    ``paddr`` and ``size``: the guest range (of the request, or of the entry
    for map, remap, dummy and unmap; for invalidate, ``size`` counts the DMA
    mappings in flight); ``address``: the host address (0 when none);
    ``tag``: the locked mapping's tag, as given to ``map`` (None otherwise);
    ``dma``: whether the request or mapping is DMA; ``ok``: whether it
    succeeded; ``old_paddr``: for replace the old guest address, for
    translate the one asked for (0 otherwise).
    """

    name: str
    paddr: int
    size: int
    address: int
    tag: Any
    dma: bool
    ok: bool = True
    old_paddr: int = 0


class Tagged(Protocol):
    """What a sink asks of its cache: the tag object behind a tag id."""

    def _trace_tag(self, ident: int) -> Any: ...


def make_sink(cache: Tagged, fn: Trace) -> Sink:
    """The callback a core emits into: builds a :class:`TraceEvent` for ``fn``.

    Tags travel through the core as ids; they are turned back into the
    caller's objects here.  The cache is held weakly: the core holds the sink.
    Nor does the sink's frame hold it while ``fn`` runs: an exception that
    ``fn`` keeps holds its frame and so every caller's frame (a frame links
    to its caller), the sink's too.
    """
    owner = weakref.ref(cache)

    def sink(kind: int, rc: int, flags: int, paddr: int, size: int, address: int, tag: int, old: int) -> bool:
        if kind not in PYTHON_LEVEL:
            emit(fn, TraceEvent(EVENT_NAMES.get(kind, f"event {kind}"), paddr, size, address, _tag_object(owner, tag),
                                bool(flags & XMC_DMA), rc == 0, old))
        return getattr(_kept, "interrupt", None) is not None and not getattr(_kept, "undoing", False)

    return sink


def _tag_object(owner: Callable[[], Tagged | None], tag: int) -> Any:
    """The tag object behind the tag id ``tag`` (0: none) of the cache ``owner()``, if alive."""
    cache = owner() if tag else None
    return None if cache is None else cache._trace_tag(tag)


def emit(fn: Trace, event: TraceEvent) -> None:
    """Call ``fn(event)``; log an exception it raises, keep an interrupt (:func:`keep`)."""
    try:
        fn(event)
    except Exception:
        logger.exception("trace callback %r raised on %s", fn, event)
    except BaseException as exc:  # KeyboardInterrupt, SystemExit: for the caller
        keep(exc)


_kept = threading.local()


def keep(exc: BaseException) -> None:
    """Keep an interrupt a trace hook raised for this thread's call (the first one wins)."""
    if getattr(_kept, "interrupt", None) is None:
        _kept.interrupt = exc


def emit_unknown(fn: Trace | None, name: str, address: int) -> None:
    """Trace a lookup of an unknown address with ``fn`` (if any): once per call,
    from Python, as the core may be asked twice.  An interrupt the hook raised
    is raised here, instead of UnknownMapping."""
    if fn is not None:
        emit(fn, TraceEvent(name, 0, 0, address, None, False, False))
        interrupt = take_interrupt()
        if interrupt is not None:
            raise interrupt


def take_interrupt(undo: bool = False) -> BaseException | None:
    """This thread's kept interrupt, if any (once).  With ``undo``, when there is
    one, the caller is about to give back what its call locked: until the next
    call, the sink refuses no event (an undo that a hook raising again could
    stop would leak the lock)."""
    exc: BaseException | None = getattr(_kept, "interrupt", None)
    _kept.interrupt = None
    _kept.undoing = undo and exc is not None
    return exc


# The core methods that emit events, and how each gives back what it locked.
_UNDO: dict[str, Callable[[Any, Any, tuple[Any, ...]], object] | None] = {
    "map": lambda core, address, args: type(core).unlock(core, address, args[3]) if args[2] & 1 else None,  # XMC_LOCK
    "map_sg": lambda core, addresses, args: type(core).unlock_sg(core, addresses, args[2]),
    "unlock": None,
    "unlock_sg": None,
    "ram_addr": None,
    "invalidate": None,
    "replace": None,
    "read": None,
    "write": None,
}


def guard(core: Any) -> None:
    """Make each call of a traced core raise the interrupt its trace hook raised
    meanwhile (instead of what the call returned or raised); a map first gives
    back the locks it took.  The calls are wrapped on the instance, holding it
    weakly (no cycle)."""
    owner = weakref.ref(core)
    cls = type(core)
    for name, undo in _UNDO.items():
        setattr(core, name, _guarded(owner, getattr(cls, name), undo))


def _guarded(owner: Callable[[], Any], method: Callable[..., Any], undo: Callable[[Any, Any, tuple[Any, ...]], object] | None) -> Callable[..., Any]:
    def call(*args: Any) -> Any:
        core = owner()
        try:
            result = method(core, *args)
        except BaseException:
            interrupt = take_interrupt()
            if interrupt is not None:
                raise interrupt from None
            raise
        interrupt = take_interrupt(undo is not None)
        if interrupt is not None:
            if undo is not None:
                try:
                    undo(core, result, args)
                finally:
                    take_interrupt()  # the undo's own events may raise again: the first one is the one
            raise interrupt
        return result

    return call
