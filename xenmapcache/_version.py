"""The version of xenmapcache: the one place it is written.

pyproject.toml, build_ffi.py (which stamps it into the compiled core) and
csrc/Makefile (the pkg-config file) all read it from here.
"""

__version__ = "0.1.0"
