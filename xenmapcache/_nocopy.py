"""Objects that own a resource refuse to be copied or pickled (the contract, section 10).

The contract: https://xenmapcache.readthedocs.io/en/latest/contract.html

A copy of a cache, a mapping, guest RAM or a backend would share what the
original owns (a C handle, a lock on a record, a file descriptor) and later
close, unlock or unmap it behind the original's back; a pickle would carry a
bare handle or fd number into another process, where it means nothing.
"""

from __future__ import annotations

from typing import Any, NoReturn


def refuse_copy(obj: object, why: str) -> NoReturn:
    """Raise the TypeError of a refused copy or pickle of ``obj``."""
    raise TypeError(f"{type(obj).__name__} objects cannot be copied or pickled: {why}")


class NoCopy:
    """Mixin: ``pickle``, ``copy.copy`` and ``copy.deepcopy`` raise ``TypeError``.

    A subclass says why in ``_no_copy_why``.  Costs nothing: no state, no
    ``__dict__`` (``__slots__`` is empty), three methods that only raise.
    """

    __slots__ = ()
    _no_copy_why = "it owns a resource that a copy would share"

    def __reduce_ex__(self, protocol: Any) -> NoReturn:
        refuse_copy(self, self._no_copy_why)

    def __reduce__(self) -> NoReturn:
        refuse_copy(self, self._no_copy_why)

    def __copy__(self) -> NoReturn:
        refuse_copy(self, self._no_copy_why)

    def __deepcopy__(self, memo: Any) -> NoReturn:
        refuse_copy(self, self._no_copy_why)
