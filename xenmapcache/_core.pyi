# The compiled cffi module (built by build_ffi.py); only xenmapcache._native uses it.
from typing import Any

ffi: Any
lib: Any
