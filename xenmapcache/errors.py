"""Exceptions and warnings of xenmapcache (DESIGN.md section 6)."""

from __future__ import annotations


class MapCacheError(Exception):
    """Base class of every error the mapcache raises."""


class MappingError(MapCacheError):
    """Guest pages cannot be mapped (a hole, past the end of RAM, a backend failure)."""


class InvalidAddress(MapCacheError, ValueError):
    """An address or size out of range: negative, past 2**64, or over max_size."""


class UnknownMapping(MapCacheError, LookupError):
    """A host address that no mapping of this cache accounts for."""


class LockOverflow(MapCacheError):
    """An entry's lock count is at the cache's lock_limit."""


class BackendUnavailable(MapCacheError):
    """The mapping backend cannot be used on this machine."""


class DMAMappingWarning(RuntimeWarning):
    """A DMA mapping was still in flight when the cache was invalidated."""


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
}


def exception_for(rc: int, message: str) -> Exception:
    """The exception for the core's status code ``rc``: ``MapCacheError`` for any code not in the table."""
    return EXCEPTION_OF.get(rc, MapCacheError)(message)


__all__ = [
    "BackendUnavailable",
    "DMAMappingWarning",
    "InvalidAddress",
    "LockOverflow",
    "MapCacheError",
    "MappingError",
    "UnknownMapping",
]
