"""xenmapcache: the Xen mapcache, a fast C core with a safe Python API.

    import xenmapcache as xmc
    ram = xmc.GuestRAM(1 << 30, holes=[(0xC000_0000, 0x1_0000_0000)])
    with xmc.MapCache(ram) as cache, cache.map(0x1000, 512, dma=True, tag="disk") as m:
        memoryview(m)[:4] = b"data"

The tour: https://xenmapcache.readthedocs.io/en/latest/getting-started.html
The contract: https://xenmapcache.readthedocs.io/en/latest/contract.html
"""

from .backends import CallbackBackend
from ._mapping import Mapping, MappingGroup
from .cache import LockedMapping, MapCache, Stats
from .errors import (
    BackendUnavailable,
    DMAMappingWarning,
    InvalidAddress,
    LockOverflow,
    MapCacheError,
    MappingError,
    UnknownMapping,
)
from ._version import __version__
from .ram import GuestRAM
from .trace import TraceEvent
from .xen import XenForeignMemory, XenGrantTable

__all__ = [
    "BackendUnavailable",
    "CallbackBackend",
    "DMAMappingWarning",
    "GuestRAM",
    "InvalidAddress",
    "LockOverflow",
    "LockedMapping",
    "MapCache",
    "MapCacheError",
    "Mapping",
    "MappingGroup",
    "MappingError",
    "Stats",
    "TraceEvent",
    "UnknownMapping",
    "XenForeignMemory",
    "XenGrantTable",
    "__version__",
]
