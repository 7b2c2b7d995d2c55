"""QEMU's mapcache API of today, and of before 2024 (csrc/xenmapcache_qemu.h, qemu.c).

The header matches QEMU's own declarations, today's and the legacy ones, as
C and C++, with our types and with QEMU's; a device model written only
against today's calls (tests/c/qemu_user.c: foreign and grant requests,
is_write, ram_addr_offset, reverse lookup, unlock, invalidate with DMA in
flight, replace) builds as C11 and C++, links statically and dynamically, and
behaves as QEMU's mapcache does without its pitfalls; both example device
models, today's and the legacy one, build the same ways and run.
"""

from __future__ import annotations

import ctypes
import os
import re
from pathlib import Path

import pytest
from ctools import CC, CSRC, CXX, LIBS, REPO, STRICT, TESTS_C, make_csrc, run

LANGUAGES = {"c11": (CC, "c"), "c++11": (CXX, "c++"), "c++17": (CXX, "c++")}
TODAYS_NAMES = (
    "xmc_qemu_configure",
    "xmc_qemu_shutdown",
    "xmc_qemu_cache",
    "xen_map_cache_init",
    "xen_map_cache_enabled",
    "xen_map_cache",
    "xen_ram_addr_from_mapcache",
    "xen_invalidate_map_cache_entry",
    "xen_invalidate_map_cache",
    "xen_replace_cache_entry",
)
LEGACY_NAMES = ("xen_map_cache_use", "xmc_qemu_legacy_map_cache")


@pytest.fixture(scope="module")
def built() -> None:
    """``make -C csrc``, as a C user would run it."""
    make_csrc()


@pytest.fixture(scope="module")
def fake_gnttab(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fakegnttab") / "libfakexengnttab.so.1"
    run([CC, "-std=c11", *STRICT, "-shared", "-fPIC", f"-I{CSRC}", TESTS_C / "fake_xengnttab.c", "-o", out])
    return out


def build(source: Path, out: Path, link: str, std: str) -> Path:
    """Compile ``source`` (headers from csrc/ and tests/c/) and link it ``static`` or ``dynamic``."""
    compiler, lang = LANGUAGES[std]
    libs: list[str | Path]
    if link == "static":
        libs = [CSRC / "libxenmapcache.a", *LIBS]
    else:
        libs = [f"-L{CSRC}", "-lxenmapcache", f"-Wl,-rpath,{CSRC}", "-ldl"]
    run([compiler, f"-std={std}", *STRICT, "-x", lang, f"-I{CSRC}", f"-I{TESTS_C}", source, "-x", "none", *libs,
         "-o", out])
    return out


@pytest.mark.parametrize("std", ["c11", "c++11"])
@pytest.mark.parametrize("defines", [[], ["-DQEMU_TYPES_FIRST"]], ids=["our-types", "qemu-types"])
@pytest.mark.parametrize("check", ["qemu_today_check.c", "qemu_api_check.c"], ids=["today", "legacy"])
def test_header_matches_qemus_declarations(std: str, defines: list[str], check: str) -> None:
    compiler, lang = LANGUAGES[std]
    run([compiler, f"-std={std}", *STRICT, "-x", lang, f"-I{CSRC}", f"-I{TESTS_C}", *defines, "-fsyntax-only",
         TESTS_C / check])


@pytest.mark.parametrize("std", ["c11", "c++11"])
def test_todays_header_refuses_a_32_bit_hwaddr(std: str) -> None:
    compiler, lang = LANGUAGES[std]
    defines = ["-DQEMU_TYPES_FIRST", "-DNARROW_HWADDR"]
    proc = run([compiler, f"-std={std}", "-x", lang, f"-I{CSRC}", f"-I{TESTS_C}", *defines, "-fsyntax-only",
                TESTS_C / "qemu_today_check.c"], expect_ok=False)
    assert "hwaddr must be a 64-bit unsigned type" in proc.stderr


def test_legacy_calls_are_not_declared_by_default(tmp_path: Path) -> None:
    unit = tmp_path / "unit.c"
    unit.write_text('#include "xenmapcache_qemu.h"\nvoid f(xmc_cache *c) { xen_map_cache_use(c); }\n')
    proc = run([CC, "-std=c11", *STRICT, f"-I{CSRC}", "-fsyntax-only", unit], expect_ok=False)
    assert "xen_map_cache_use" in proc.stderr


def test_one_library_serves_both_apis(built: None) -> None:
    shared = ctypes.CDLL(str(CSRC / "libxenmapcache.so"))
    for name in (*TODAYS_NAMES, *LEGACY_NAMES):
        assert hasattr(shared, name), name


@pytest.mark.parametrize("std", ["c11", "c++11"])
@pytest.mark.parametrize("link", ["static", "dynamic"])
def test_a_device_model_on_todays_calls(built: None, fake_gnttab: Path, tmp_path: Path, link: str, std: str) -> None:
    program = build(TESTS_C / "qemu_user.c", tmp_path / "qemu_user", link, std)
    proc = run([program, fake_gnttab])
    assert proc.stdout.strip() == "qemu_user: OK" and proc.stderr == ""


def test_the_device_model_under_sanitizers(fake_gnttab: Path, tmp_path: Path) -> None:
    """Every mapping unmapped once, nothing leaked, no undefined behaviour."""
    sources = re.search(r"^SOURCES\s*=\s*(.+)$", (CSRC / "Makefile").read_text(), re.M)
    assert sources is not None
    program = tmp_path / "qemu_user_asan"
    sanitize = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]
    run([CC, "-std=c11", *STRICT, "-O1", "-g", *sanitize, f"-I{CSRC}", f"-I{TESTS_C}", TESTS_C / "qemu_user.c",
         *(CSRC / name for name in sources.group(1).split()), *LIBS, "-o", program])
    proc = run([program, fake_gnttab], env={**os.environ, "ASAN_OPTIONS": "detect_leaks=1"})
    assert proc.stdout.strip() == "qemu_user: OK" and proc.stderr == ""


@pytest.mark.parametrize("std", ["c11", "c++11"])
@pytest.mark.parametrize("link", ["static", "dynamic"])
@pytest.mark.parametrize("example", ["emulator", "emulator_legacy"])
def test_example_device_models(built: None, tmp_path: Path, example: str, link: str, std: str) -> None:
    program = build(REPO / "examples" / f"{example}.c", tmp_path / example, link, std)
    out = run([program]).stdout
    assert "warning: DMA mapping of guest [0x123400, +0x8000) in flight" in out
    assert "FAILED" not in out
    assert out.strip().endswith(f"{example}: OK")
    if example == "emulator":
        assert "virtio: done; both grants unmapped at their last unlock    ok" in out
