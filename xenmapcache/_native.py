"""The one module that touches the compiled core: ``ffi``, ``lib``, ``check``.

Every other module goes through here, never through ``_core`` directly.  The
core is imported on first use, so the pure-Python parts of the package (the
reference implementation, GuestRAM) import without a compiler.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._version import __version__
from .errors import (
    BackendUnavailable,
    InvalidAddress,
    LockOverflow,
    MapCacheError,
    MappingError,
    UnknownMapping,
)


@functools.cache
def binding() -> tuple[Any, Any]:
    """Return ``(ffi, lib)`` of the compiled core, importing it once."""
    try:
        from . import _core
    except ImportError as exc:
        _core = installed_core()
        if _core is None:
            raise ImportError(
                "xenmapcache's C core is not built; install the package with "
                "'pip install .' (it needs a C compiler)"
            ) from exc
    check_stamp(_core.ffi.string(_core.lib.xmc_py_build_version()).decode(), _core.__file__)
    return _core.ffi, _core.lib


def installed_core() -> Any:
    """The compiled core of an installed copy of the package, or None.

    ``python -m xenmapcache`` run in a checkout imports the source tree, which
    has no compiled core after a plain ``pip install .``; the installed copy on
    ``sys.path`` has one, and its version stamp is checked like any other.
    """
    here = Path(__file__).resolve().parent
    name = f"{__package__}._core"
    for entry in sys.path:
        package = Path(entry or ".").resolve() / __package__
        if package == here:
            continue
        for path in sorted(package.glob("_core.*.so")):
            spec = importlib.util.spec_from_file_location(name, path)
            if spec is None or spec.loader is None:
                continue
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            sys.modules[name] = module
            setattr(sys.modules[__package__], "_core", module)
            return module
    return None


@functools.cache
def fast_bind() -> Callable[..., tuple[Callable[..., Any], ...]] | None:
    """The builtin binder of ffi/seam.h, or None where there is none (not CPython)."""
    _, lib = binding()
    if sys.implementation.name != "cpython" or lib.xmc_py_fast_install() != 0:
        return None
    from . import _core

    bind: Callable[..., tuple[Callable[..., Any], ...]] | None = getattr(_core, "fast_bind", None)
    return bind


def check_stamp(built_for: str, path: str | None) -> None:
    """Refuse a compiled core built for another version of the package (a stale .so)."""
    if built_for != __version__:
        raise ImportError(
            f"xenmapcache {__version__} found a C core built for version {built_for} at {path}: "
            "it is stale; rebuild it with 'pip install .' (or 'pip install -e .')"
        )


@functools.cache
def _error_table() -> dict[int, type[Exception]]:
    _, lib = binding()
    return {
        lib.XMC_ENOMEM: MemoryError,
        lib.XMC_EINVAL: InvalidAddress,
        lib.XMC_EMAP: MappingError,
        lib.XMC_ENOENT: UnknownMapping,
        lib.XMC_EOVERFLOW: LockOverflow,
        lib.XMC_EUNAVAIL: BackendUnavailable,
        lib.XMC_ESYS: MapCacheError,
    }


def raise_for(rc: int, what: str) -> None:
    """Raise the exception for the core's status code ``rc`` (non-zero)."""
    ffi, lib = binding()
    message = ffi.string(lib.xmc_strerror(rc)).decode()
    raise _error_table().get(rc, MapCacheError)(f"{what}: {message}")


def check(rc: int, what: str) -> None:
    """Raise unless ``rc`` is XMC_OK."""
    if rc:
        raise_for(rc, what)
