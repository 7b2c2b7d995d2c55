# The compiled cffi module (built by build_ffi.py); only xenmapcache._native uses it.
from typing import Any

ffi: Any
lib: Any

# Put on the module by lib.xmc_py_fast_install() (CPython only; ffi/binding.h).
def install(hot_methods: tuple[str, ...], mapping: type, group: type, /) -> None: ...
def adopted() -> Any: ...
