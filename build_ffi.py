"""cffi builder: compiles the C core in csrc/ into ``xenmapcache._core``.

Three tiers, three places: the C core (csrc/, which knows nothing of Python),
the binding's own C (ffi/binding.h: hot-path wrappers and CPython types), and
the Python package; this script only stitches them.

The declarations handed to cffi are the public header's own text, between its
``cdef-begin`` and ``cdef-end`` markers, so the binding cannot drift from the
header; numeric ``#define``s become ``...`` so the compiler supplies their
values.  The binding's own declarations follow from ``ffi/*_cdef.h``.  The sources are the Makefile's ``SOURCES``: one list for both builds.
The package version (``xenmapcache/_version.py``) is stamped into the module,
and ``xenmapcache._native`` refuses a module built for another version.
"""

import pathlib
import re
import sysconfig

from cffi import FFI

HERE = pathlib.Path(__file__).resolve().parent
CSRC = "csrc"
BINDING_DIR = "ffi"
# The declarations beyond the public header's, in C syntax: the callbacks
# into Python, then the binding's own entry points (ffi/binding.h).
CDEF_FILES = ("callbacks_cdef.h", "binding_cdef.h")


def public_cdef() -> str:
    header = (HERE / CSRC / "xenmapcache.h").read_text()
    body = header.split("/* cdef-begin", 1)[1].split("/* cdef-end */", 1)[0]
    body = body.split("*/", 1)[1]
    return re.sub(r"^#define (\w+) .*$", r"#define \1 ...", body, flags=re.M)


def c_sources() -> list[str]:
    makefile = (HERE / CSRC / "Makefile").read_text()
    names = re.search(r"^SOURCES\s*=\s*(.+)$", makefile, re.M)
    if names is None:
        raise RuntimeError("csrc/Makefile has no SOURCES line")
    return [f"{CSRC}/{name}" for name in names.group(1).split()]


def package_version() -> str:
    text = (HERE / "xenmapcache" / "_version.py").read_text()
    found = re.search(r'^__version__ = "([^"]+)"$', text, re.M)
    if found is None:
        raise RuntimeError("xenmapcache/_version.py has no __version__")
    return found.group(1)


def binding_cdef() -> str:
    return "".join((HERE / BINDING_DIR / name).read_text() for name in CDEF_FILES)


def binding_headers() -> list[str]:
    return sorted(f"{BINDING_DIR}/{path.name}" for path in (HERE / BINDING_DIR).glob("*.h"))


# hidden: the module exports only PyInit, so calls into the core skip the PLT;
# -O3, as CPython builds itself (the map_sg + os.preadv row: about 0.5% faster)
COMPILE_ARGS = ["-std=c11", "-O3", "-Wall", "-Wextra", "-fvisibility=hidden"]
# the stable ABI of 3.12 (cffi alone asks for 3.2's): the binding's builtins
# take vectorcall arguments; free-threaded builds have no stable ABI
DEFINE_MACROS = [] if sysconfig.get_config_var("Py_GIL_DISABLED") else [("Py_LIMITED_API", "0x030C0000")]
INCLUDE_DIRS = [CSRC, BINDING_DIR]

ffibuilder = FFI()
ffibuilder.cdef(public_cdef() + binding_cdef())
ffibuilder.set_source(
    "xenmapcache._core",
    f'#define XMC_PY_VERSION "{package_version()}"\n#include "xenmapcache.h"\n#include "binding.h"\n',
    sources=c_sources(),
    include_dirs=INCLUDE_DIRS,
    depends=[f"{CSRC}/{name}" for name in ("xenmapcache.h", "xmc_internal.h", "xmc_xenfm.h")]
    + binding_headers()
    + ["xenmapcache/_version.py"],
    extra_compile_args=COMPILE_ARGS,
    libraries=["pthread", "dl"],  # dl: the Xen backend loads libxenforeignmemory at run time
    define_macros=DEFINE_MACROS,
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
