"""Input checks done in Python before anything crosses into C."""

from __future__ import annotations

from .errors import InvalidAddress

U64_LIMIT = 1 << 64


def as_uint(value: object, name: str, limit: int = U64_LIMIT) -> int:
    """``value`` as an int in ``[0, limit)``: TypeError if not an int, InvalidAddress if out of range."""
    if type(value) is not int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, not {type(value).__name__}")
        value = int(value)
    if value < 0:
        raise InvalidAddress(f"{name} must not be negative: {value}")
    if value >= limit:
        raise InvalidAddress(f"{name} must be below {limit:#x}: {value:#x}")
    return value


def check_range(paddr: object, size: object, max_size: int) -> tuple[int, int]:
    """Validate a guest range: ints, ``paddr + size <= 2**64``, ``size <= max_size``."""
    p = as_uint(paddr, "paddr")
    s = as_uint(size, "size")
    if p + s > U64_LIMIT:
        raise InvalidAddress(f"paddr + size passes 2**64: {p:#x} + {s:#x}")
    if s > max_size:
        raise InvalidAddress(f"size {s:#x} is over max_size {max_size:#x}")
    return p, s
