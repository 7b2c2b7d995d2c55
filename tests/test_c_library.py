"""The plain C library (docs/contract.md, section 7): what an emulator written in C gets.

``make -C csrc`` builds both libraries and the pkg-config file; programs using
only the two public headers build as C and C++, link statically and
dynamically, and run; ``make install`` plus pkg-config is enough to build
against it.  QEMU's API and the example device models: tests/test_qemu_api.py.
"""

from __future__ import annotations

import ctypes
import os
import re
import shlex
from pathlib import Path

import pytest
from ctools import CC, CSRC, CXX, LIBS, REPO, STRICT, TESTS_C, make_csrc, run

from xenmapcache._version import __version__

HEADERS = ("xenmapcache.h", "xenmapcache_qemu.h")
# The names of docs/contract.md, section 7 (fixed), and the Xen constructors.
FIXED_NAMES = (
    "xmc_ram_new",
    "xmc_ram_free",
    "xmc_ram_backend",
    "xmc_cache_new",
    "xmc_cache_free",
    "xen_map_cache_use",
    "xen_map_cache",
    "xen_ram_addr_from_mapcache",
    "xen_invalidate_map_cache_entry",
    "xen_invalidate_map_cache",
    "xen_replace_cache_entry",
    "xmc_xen_new",
    "xmc_xen_open",
    "xmc_xen_backend",
    "xmc_xen_free",
    "xmc_gnttab_open",
    "xmc_gnttab_backend",
    "xmc_gnttab_free",
)
LANGUAGES = {
    "c11": (CC, "c"),
    "c17": (CC, "c"),
    "c++11": (CXX, "c++"),
    "c++14": (CXX, "c++"),
    "c++17": (CXX, "c++"),
    "c++20": (CXX, "c++"),
}


@pytest.fixture(scope="module")
def built() -> None:
    """``make -C csrc``, as a C user would run it."""
    make_csrc()


def needed_libraries(binary: Path) -> list[str]:
    """The DT_NEEDED entries of an ELF binary."""
    out = run(["readelf", "-d", binary]).stdout
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)


def build(source: Path, out: Path, link: str, std: str = "c11") -> Path:
    """Compile ``source`` against csrc/ and link it ``static`` or ``dynamic``."""
    compiler, lang = LANGUAGES[std]
    if link == "static":
        libs = [CSRC / "libxenmapcache.a", *LIBS]
    else:
        libs = [f"-L{CSRC}", "-lxenmapcache", f"-Wl,-rpath,{CSRC}"]
    run([compiler, f"-std={std}", *STRICT, "-x", lang, f"-I{CSRC}", source, "-x", "none", *libs, "-o", out])
    needed = needed_libraries(out)
    assert ("libxenmapcache.so" in needed) == (link == "dynamic"), needed
    return out


def test_make_builds_both_libraries_and_the_pc_file(built: None) -> None:
    for name in ("libxenmapcache.a", "libxenmapcache.so", "xenmapcache.pc", *HEADERS):
        assert (CSRC / name).is_file(), name
    members = run(["ar", "t", CSRC / "libxenmapcache.a"]).stdout.split()
    sources = re.search(r"^SOURCES\s*=\s*(.+)$", (CSRC / "Makefile").read_text(), re.M)
    assert sources is not None
    assert sorted(members) == sorted(f"{Path(s).stem}.o" for s in sources.group(1).split())
    shared = ctypes.CDLL(str(CSRC / "libxenmapcache.so"))
    for name in FIXED_NAMES:
        assert hasattr(shared, name), name
    assert f"Version: {__version__}\n" in (CSRC / "xenmapcache.pc").read_text()


@pytest.mark.parametrize("std", sorted(LANGUAGES))
@pytest.mark.parametrize("header", HEADERS)
def test_each_header_compiles_alone(tmp_path: Path, header: str, std: str) -> None:
    compiler, lang = LANGUAGES[std]
    unit = tmp_path / "unit"
    unit.write_text(f'#include "{header}"\nint main(void) {{ return XMC_OK; }}\n')
    run([compiler, f"-std={std}", *STRICT, "-x", lang, f"-I{CSRC}", "-fsyntax-only", unit])


@pytest.mark.parametrize("link", ["static", "dynamic"])
def test_c_program_using_only_the_headers(built: None, tmp_path: Path, link: str) -> None:
    program = build(TESTS_C / "api_user.c", tmp_path / "api_user", link)
    assert run([program]).stdout.strip().endswith("api_user: OK")


@pytest.mark.parametrize("link", ["static", "dynamic"])
def test_cxx_program_using_only_the_headers(built: None, tmp_path: Path, link: str) -> None:
    program = build(TESTS_C / "api_user.cpp", tmp_path / "api_user_cxx", link, std="c++11")
    assert run([program]).stdout.strip().endswith("api_user++: OK")


def test_make_install_then_pkg_config(built: None, tmp_path: Path) -> None:
    prefix = tmp_path / "prefix"
    try:
        make_csrc("install", f"PREFIX={prefix}")
    finally:
        make_csrc()  # csrc/xenmapcache.pc back to the default prefix
    for name in ("include/xenmapcache.h", "include/xenmapcache_qemu.h", "lib/libxenmapcache.a",
                 "lib/libxenmapcache.so", "lib/pkgconfig/xenmapcache.pc"):
        assert (prefix / name).is_file(), name
    env = {**os.environ, "PKG_CONFIG_PATH": str(prefix / "lib" / "pkgconfig")}
    assert run(["pkg-config", "--modversion", "xenmapcache"], env=env).stdout.strip() == __version__
    flags = shlex.split(run(["pkg-config", "--cflags", "--libs", "xenmapcache"], env=env).stdout)
    assert f"-I{prefix}/include" in flags
    for source, name in ((TESTS_C / "api_user.c", "api_user: OK"), (REPO / "examples" / "emulator.c", "emulator: OK")):
        program = tmp_path / source.stem
        run([CC, "-std=c11", *STRICT, source, *flags, f"-Wl,-rpath,{prefix}/lib", "-o", program])
        assert needed_libraries(program).count("libxenmapcache.so") == 1
        assert run([program]).stdout.strip().endswith(name)
