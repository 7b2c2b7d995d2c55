"""The binding: the one module that loads the compiled core.

``binding()`` (``ffi`` and ``lib``), the version stamp it checks, the status
code check (``check``, ``raise_for``) and the table of hot methods.  Every
other module reaches the compiled core through here, never through ``_core``
directly.  The core is loaded on first use, so the pure-Python parts of the
package (the reference implementation, GuestRAM) import without a compiler.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path
from typing import Any, NoReturn

from . import _version
from .errors import status_error

# The hot methods: on CPython each cache has a builtin for each (``fast_paths()``),
# which falls back on ``MapCache``'s checked method of the same name.  Both are
# bound by these names; the binding checks at import that it has a builtin for
# each of them and for no other (``install()``, ffi/binding.h): a difference is
# an ImportError.
HOT_METHODS = ("map_ptr", "read", "readinto", "write", "ram_addr", "unlock", "map", "map_sg")


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


def check_stamp(built_for: str, path: str | None) -> None:
    """Refuse a compiled core built for another version of the package (a stale .so)."""
    if built_for != _version.__version__:  # read now: a test moves it on
        raise ImportError(
            f"xenmapcache {_version.__version__} found a C core built for version {built_for} at {path}: "
            "it is stale; rebuild it with 'pip install .' (or 'pip install -e .')"
        )


def raise_for(rc: int, what: str, *where: int, cause: BaseException | None = None) -> NoReturn:
    """Raise the exception for the core's status code ``rc`` (non-zero) of the call
    ``what`` given ``where`` (see :func:`errors.status_error`)."""
    ffi, lib = binding()
    raise status_error(rc, ffi.string(lib.xmc_strerror(rc)).decode(), what, *where) from cause


def check(rc: int, what: str) -> None:
    """Raise unless ``rc`` is XMC_OK."""
    if rc:
        raise_for(rc, what)
