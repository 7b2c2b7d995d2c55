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


__all__ = [
    "BackendUnavailable",
    "DMAMappingWarning",
    "InvalidAddress",
    "LockOverflow",
    "MapCacheError",
    "MappingError",
    "UnknownMapping",
]
