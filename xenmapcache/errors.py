"""Exceptions and warnings of xenmapcache (the contract, section 6: https://xenmapcache.readthedocs.io/en/latest/contract.html)."""

from __future__ import annotations


class MapCacheError(Exception):
    """Base class of every error the mapcache raises.

    Raised as itself for a closed cache, a call from a backend callback into
    its own cache, and failures that fit no subclass.  A call that raises it
    (or a subclass) has changed nothing.
    """


class MappingError(MapCacheError):
    """Guest pages cannot be mapped: a hole, past the end of RAM, a backend failure.

    Raised after ``translate`` (if any) was tried and when dummy mode is off.
    An exception from a ``CallbackBackend`` is its ``__cause__``.
    """


class InvalidAddress(MapCacheError, ValueError):
    """An address or size out of range: negative, past ``2**64``, or over ``max_size``.

    Also a ``ValueError``; raised before anything reaches the C core.
    """


class UnknownMapping(MapCacheError, LookupError):
    """A host address that no mapping of this cache accounts for.

    Also a ``LookupError``: ``unlock`` of an address with no locked mapping
    (or a second unlock), ``ram_addr`` of an address in no entry, ``replace``
    of a guest address with no entry.
    """


class LockOverflow(MapCacheError):
    """An entry's lock count is at the cache's ``lock_limit``: the lock was refused, nothing changed."""


class BackendUnavailable(MapCacheError):
    """The mapping backend cannot be used on this machine; the message says which piece is missing."""


class DMAMappingWarning(RuntimeWarning):
    """A DMA mapping was still in flight when the cache was invalidated.

    A ``RuntimeWarning``, issued once per such mapping by ``invalidate()``; its
    message names the mapping's tag, guest range and host address.  Device
    memory (locked, not DMA) never causes one.
    """


# The core's status codes (csrc/xenmapcache.h, checked against it by the tests)
# and the exception each becomes: one table for both implementations.  The
# C core names each code with xmc_strerror(); the reference keeps a copy of
# those messages.
EXCEPTION_OF: dict[int, type[Exception]] = {
    -1: MemoryError,  # XMC_ENOMEM
    -2: InvalidAddress,  # XMC_EINVAL
    -3: MappingError,  # XMC_EMAP
    -4: UnknownMapping,  # XMC_ENOENT
    -5: LockOverflow,  # XMC_EOVERFLOW
    -6: BackendUnavailable,  # XMC_EUNAVAIL
    -13: MappingError,  # XMC_ECALLBACK: a Python backend's map raised (the cause)
}


def exception_for(rc: int, message: str) -> Exception:
    """The exception for the core's status code ``rc``: ``MapCacheError`` for any code not in the table."""
    return EXCEPTION_OF.get(rc, MapCacheError)(message)


def status_error(rc: int, reason: str, what: str, *where: int) -> Exception:
    """The exception of a core call ``what`` that failed with status ``rc``.

    The one place a status becomes an exception, for every path of both
    implementations: its type from :data:`EXCEPTION_OF`, its message the
    call, its arguments and ``reason`` (the core's ``xmc_strerror(rc)``), as
    ``map 0x1000+0x40: ...``, ``unlock 0x7f00...: ...``, ``map_sg of 3
    segment(s): ...``, ``replace 0x1000 -> 0x2000: ...``.  ``where`` is what
    the call was given: (paddr, size), (address,), (segment count,), (old,
    new) or nothing; a caller that passes more than the call's kind shows
    (a size of 0 to unlock, say) loses nothing.
    """
    if not where:
        call = what
    elif what in ("map_sg", "unlock_sg"):
        call = f"{what} of {where[0]} segment(s)"
    elif what == "replace":
        call = f"replace {where[0]:#x} -> {where[1]:#x}"
    elif what in ("map", "read", "write"):
        call = f"{what} {where[0]:#x}+{where[1]:#x}"
    else:
        call = f"{what} {where[0]:#x}"
    return exception_for(rc, f"{call}: {reason}")


__all__ = [
    "BackendUnavailable",
    "DMAMappingWarning",
    "InvalidAddress",
    "LockOverflow",
    "MapCacheError",
    "MappingError",
    "UnknownMapping",
]
