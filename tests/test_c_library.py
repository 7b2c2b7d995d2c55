"""The plain C library (docs/contract.md, section 7): what an emulator written in C gets.

``make -C csrc`` builds both libraries and the pkg-config file; programs using
only the two public headers build as C and C++, link statically and
dynamically, and run; ``make install`` lays out what a packager expects
(a versioned shared library with its SONAME link, two pkg-config files), and
docs/c-api.md's commands, run verbatim, build its example both ways.  QEMU's
API and the example device models: tests/test_qemu_api.py.
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
SONAME = f"libxenmapcache.so.{__version__.split('.')[0]}"
INSTALLED = (
    "include/xenmapcache.h", "include/xenmapcache_qemu.h", "lib/libxenmapcache.a",
    f"lib/libxenmapcache.so.{__version__}", "lib/pkgconfig/xenmapcache.pc", "lib/pkgconfig/xenmapcache-static.pc",
)
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
    assert (SONAME in needed) == (link == "dynamic"), needed
    assert not [n for n in needed if "xenmapcache" in n and n != SONAME], needed
    return out


def soname(library: Path) -> str:
    """The DT_SONAME of a shared library."""
    found = re.search(r"\(SONAME\)\s+Library soname: \[([^\]]+)\]", run(["readelf", "-d", library]).stdout)
    assert found, library
    return found.group(1)


def assert_shared_library_links(libdir: Path) -> None:
    """libxenmapcache.so -> .so.MAJOR -> .so.X.Y.Z, the real file, whose SONAME is .so.MAJOR."""
    assert (libdir / "libxenmapcache.so").readlink() == Path(SONAME)
    assert (libdir / SONAME).readlink() == Path(f"libxenmapcache.so.{__version__}")
    real = libdir / f"libxenmapcache.so.{__version__}"
    assert real.is_file() and not real.is_symlink()
    assert soname(real) == SONAME


def test_make_builds_both_libraries_and_the_pc_files(built: None) -> None:
    for name in ("libxenmapcache.a", "libxenmapcache.so", "xenmapcache.pc", "xenmapcache-static.pc", *HEADERS):
        assert (CSRC / name).is_file(), name
    assert_shared_library_links(CSRC)
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
    for name in INSTALLED:
        assert (prefix / name).is_file(), name
    assert_shared_library_links(prefix / "lib")
    env = {**os.environ, "PKG_CONFIG_PATH": str(prefix / "lib" / "pkgconfig")}
    assert run(["pkg-config", "--modversion", "xenmapcache"], env=env).stdout.strip() == __version__
    flags = shlex.split(run(["pkg-config", "--cflags", "--libs", "xenmapcache"], env=env).stdout)
    assert f"-I{prefix}/include" in flags
    for source, name in ((TESTS_C / "api_user.c", "api_user: OK"), (REPO / "examples" / "emulator.c", "emulator: OK")):
        program = tmp_path / source.stem
        run([CC, "-std=c11", *STRICT, source, *flags, f"-Wl,-rpath,{prefix}/lib", "-o", program])
        assert needed_libraries(program).count(SONAME) == 1
        assert run([program]).stdout.strip().endswith(name)
    static = shlex.split(run(["pkg-config", "--cflags", "--libs", "xenmapcache-static"], env=env).stdout)
    program = tmp_path / "api_user_static"
    run([CC, "-std=c11", *STRICT, TESTS_C / "api_user.c", *static, "-o", program])
    assert not [n for n in needed_libraries(program) if "xenmapcache" in n]
    assert run([program]).stdout.strip().endswith("api_user: OK")


def test_make_install_into_a_staging_tree(built: None, tmp_path: Path) -> None:
    # What a distribution package does: the paths say /usr, the files land under DESTDIR.
    stage = tmp_path / "stage"
    try:
        make_csrc("install", "PREFIX=/usr", f"DESTDIR={stage}")
    finally:
        make_csrc()
    for name in INSTALLED:
        assert (stage / "usr" / name).is_file(), name
    assert_shared_library_links(stage / "usr" / "lib")
    for pc in ("xenmapcache.pc", "xenmapcache-static.pc"):
        text = (stage / "usr/lib/pkgconfig" / pc).read_text()
        assert "prefix=/usr\n" in text and str(stage) not in text


def page_blocks(page: Path, language: str) -> list[str]:
    """The fenced code blocks of a Markdown page in one language, in order."""
    return re.findall(rf"^```{language}\n(.*?)^```$", page.read_text(), re.M | re.S)


@pytest.mark.slow
def test_the_c_api_page_commands_run_verbatim(built: None, tmp_path: Path) -> None:
    """docs/c-api.md's route: install from the checkout, then build its dm.c shared and static, and run both."""
    page = REPO / "docs" / "c-api.md"
    (program,) = [b for b in page_blocks(page, "c") if b.startswith("/* dm.c:")]
    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    home.mkdir()
    (work / "dm.c").write_text(program)
    run([CC, "-std=c11", *STRICT, f"-I{CSRC}", "-fsyntax-only", work / "dm.c"])  # the example is warning-clean
    section = page.read_text().split("## Build, install and link", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^```sh\n(.*?)^```$", section, re.M | re.S)
    install = [b for b in blocks if b.startswith("make -C csrc install")]
    assert len(install) == 1 and len(blocks) > 1, blocks
    env = {k: v for k, v in os.environ.items() if not k.startswith("PKG_CONFIG")} | {"HOME": str(home)}
    try:
        run(["bash", "-euo", "pipefail", "-c", install[0]], cwd=REPO, env=env)  # from the checkout
    finally:
        make_csrc()
    # The rest in order, in one shell (an export carries over), where dm.c is.
    rest = "\n".join(b for b in blocks if b not in install)
    out = run(["bash", "-euo", "pipefail", "-c", rest], cwd=work, env=env).stdout
    assert out.count("dm: OK") == 2, out
    assert needed_libraries(work / "dm").count(SONAME) == 1
    assert not [n for n in needed_libraries(work / "dm-static") if "xenmapcache" in n]
    for name in INSTALLED:
        assert (home / ".local" / name).is_file(), name
