"""cffi builder: compiles the C core in csrc/ into ``xenmapcache._core``.

Three tiers, three places: the C core (csrc/, which knows nothing of Python),
the binding's own C (ffi/seam.h: hot-path wrappers and CPython builtins), and
the Python package; this script only stitches them.

The declarations handed to cffi are the public header's own text, between its
``cdef-begin`` and ``cdef-end`` markers, so the binding cannot drift from the
header; numeric ``#define``s become ``...`` so the compiler supplies their
values.  The sources are the Makefile's ``SOURCES``: one list for both builds.
The package version (``xenmapcache/_version.py``) is stamped into the module,
and ``xenmapcache._native`` refuses a module built for another version.
"""

import pathlib
import re
import sysconfig
from typing import Any

from cffi import FFI

HERE = pathlib.Path(__file__).resolve().parent
CSRC = "csrc"
SEAM_DIR = "ffi"

# Callbacks from C into Python (translate hooks, Python-side backends, trace hooks).
CALLBACKS = """
extern "Python" int _xmc_py_translate(void *, uint64_t, uint64_t, uint64_t *);
extern "Python" int _xmc_py_map(void *, void *, uint64_t, size_t, int *, void **);
extern "Python" int _xmc_py_unmap(void *, void *, size_t);
extern "Python" void _xmc_py_retain(void *);
extern "Python" void _xmc_py_release(void *);
extern "Python" void _xmc_py_trace(void *, const xmc_event *);
"""

# The hot-path wrappers of ffi/seam.h: plain integers in and out.
SEAM = """
int xmc_py_last_error(void);
uint64_t xmc_py_map_ptr(xmc_cache *c, uint64_t paddr, uint64_t size, int lock, int dma);
uint64_t xmc_py_noop(xmc_cache *c, uint64_t paddr, uint64_t size, int lock, int dma);
uint64_t xmc_py_map(xmc_cache *c, uint64_t paddr, uint64_t size, unsigned flags, uint64_t tag);
uint64_t xmc_py_ram_addr(xmc_cache *c, uintptr_t addr);
int xmc_py_unlock(xmc_cache *c, uintptr_t addr, uint64_t tag);
int64_t xmc_py_invalidate(xmc_cache *c);
size_t xmc_py_records_count(void);
xmc_record *xmc_py_records_take(void);
int xmc_py_fast_install(void);
int xmc_py_adopt(xmc_cache *c);
"""

# The version the module is built for, compared at import (a stale .so fails).
STAMP_CDEF = "const char *xmc_py_build_version(void);"
STAMP_SOURCE = 'static const char *xmc_py_build_version(void) {{ return "{}"; }}'


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


# What the module is compiled from and with; tests/test_compilers.py compiles
# the same with each compiler it finds, warnings as errors.
SOURCE = '#include "xenmapcache.h"\n#include "seam.h"\n' + STAMP_SOURCE.format(package_version())
BUILD: dict[str, Any] = dict(
    sources=c_sources(),
    include_dirs=[CSRC, SEAM_DIR],
    depends=[f"{CSRC}/{name}" for name in ("xenmapcache.h", "xmc_internal.h", "xmc_xenfm.h")]
    + [f"{SEAM_DIR}/seam.h", "xenmapcache/_version.py"],
    # hidden: the module exports only PyInit, so calls into the core skip the PLT
    extra_compile_args=["-std=c11", "-O2", "-Wall", "-Wextra", "-fvisibility=hidden"],
    libraries=["pthread", "dl"],  # dl: the Xen backend loads libxenforeignmemory at run time
    # the stable ABI of 3.12 (cffi alone asks for 3.2's): seam.h's builtins
    # take vectorcall arguments; free-threaded builds have no stable ABI
    define_macros=[] if sysconfig.get_config_var("Py_GIL_DISABLED") else [("Py_LIMITED_API", "0x030C0000")],
)

ffibuilder = FFI()
ffibuilder.cdef(public_cdef() + CALLBACKS + SEAM + STAMP_CDEF)
ffibuilder.set_source("xenmapcache._core", SOURCE, **BUILD)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
