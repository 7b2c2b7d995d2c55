"""What ``MapCache`` asks of a core and of a registry: the C core
(``_native.NativeCore`` with the binding's ``NativeCache``) and the
pure-Python reference (``reference._PyCore`` with ``_mapping._PyRegistry``)
both implement these, and ``mypy --strict`` checks each against them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from ._mapping import Mapping, MappingGroup

# One locked mapping as a core lists it: (address, paddr, size, tag id, dma).
Record = tuple[int, int, int, int, bool]


class Registry(Protocol):
    """The live Mappings of one cache (``NativeCache`` of ffi/cache.h, or
    ``_PyRegistry``).  ``mapping`` and ``group`` take checked arguments."""

    def mapping(self, paddr: int, size: int, dma: bool, tag: Any, /) -> Mapping: ...

    def group(self, segments: list[tuple[int, int]], dma: bool, tag: Any, /) -> MappingGroup: ...

    def tags(self) -> dict[int, Any]: ...

    def tag_of(self, ident: int, /) -> Any: ...

    def release_at(self, address: int, /) -> bool: ...

    def mappings(self) -> list[Mapping]: ...

    def set_paddr(self, mapping: Any, paddr: int, /) -> None: ...

    def detach(self) -> None: ...

    def close_registry(self) -> None: ...


class CoreType(Protocol):
    """A core's class: makes the core of one cache."""

    def __call__(
        self,
        ram: Any,
        bucket_shift: int,
        max_size: int,
        translate: Callable[[int, int], int] | None,
        dummy: bool,
        lock_limit: int,
        grants: bool = False,
        trace: Callable[[int, int, int, int, int, int, int, int], bool] | None = None,  # True: refused
    ) -> Core: ...

    def has_fast_paths(self) -> bool:
        """Whether the caches of this core come with builtins (``Core.fast_paths``)."""


class Core(Protocol):
    """A cache's core: each method one call of the core, on checked arguments;
    a failure raises the exception of its status (``errors.status_error``)."""

    def map(self, paddr: int, size: int, flags: int, tag: int, /) -> int: ...

    def map_sg(self, segments: list[tuple[int, int]], flags: int, tag: int, /) -> list[int]: ...

    def unlock_sg(self, addresses: list[int], tag: int, /) -> None: ...

    def unlock(self, address: int, tag: int, /) -> None: ...

    def ram_addr(self, address: int, /) -> int: ...

    # The DMA records in flight, and what a failed unmap raised (the invalidation happened).
    def invalidate(self) -> tuple[list[Record], BaseException | None]: ...

    def locked(self) -> list[Record]: ...

    def replace(self, old: int, new: int, size: int, /) -> int: ...

    def read(self, paddr: int, n: int, /) -> bytes: ...

    def write(self, paddr: int, data: Any, /) -> None: ...

    def stats(self) -> tuple[int, ...]: ...

    def view(self, address: int, size: int, /) -> memoryview: ...

    def close(self) -> None: ...

    def registry(self, cache: Any, checked: dict[str, Callable[..., Any]], /) -> Registry | None:
        """The registry of ``cache``'s Mappings, bound to its checked methods by
        name; None: the cache keeps a ``_PyRegistry``."""

    def fast_paths(self) -> dict[str, Callable[..., Any]]:
        """The builtins of the hot methods, by name (none: the checked methods serve)."""
