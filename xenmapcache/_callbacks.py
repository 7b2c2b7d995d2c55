"""C-to-Python callbacks (``extern "Python"`` in build_ffi.py), registered once.

An exception raised by a user callback cannot cross C; it is kept in
``pending.error`` for the calling thread, and the caller chains it onto the
error the core returns.
"""

from __future__ import annotations

import threading
from typing import Any

from ._native import binding
from ._validate import U64_LIMIT

ffi, lib = binding()
pending = threading.local()


@ffi.def_extern()  # type: ignore[misc, untyped-decorator, unused-ignore]  # code depends on mypy's version
def _xmc_py_translate(opaque: Any, paddr: int, size: int, out: Any) -> int:
    try:
        new = ffi.from_handle(opaque)(paddr, size)
        if type(new) is not int or not 0 <= new < U64_LIMIT:
            raise TypeError(f"translate must return an int in [0, 2**64), not {new!r}")
    except Exception as exc:  # handed to the caller, see the module docstring
        pending.error = exc
        return -1
    out[0] = new
    return 0
