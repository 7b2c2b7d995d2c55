"""The Xen backend (csrc/xen.c, xenmapcache/xen.py).

No Xen runs here, so the mapping path is driven through a stand-in for
libxenforeignmemory (tests/c/fake_xenforeignmemory.c) loaded by the very same
dlopen code; the unavailable paths run for real: the library missing, and
(with Debian's libxenforeignmemory1 installed) /dev/xen/privcmd missing.  Our
copies of Xen's declarations are compiled against Xen's real headers.
"""

from __future__ import annotations

import ctypes
import gc
import subprocess
import sys
from pathlib import Path

import pytest
from ctools import CC, CSRC, STRICT, TESTS_C, run

import xenmapcache as xmc

PAGE = 4096
FAKE_DOMID = 7  # tests/c/fake_xenforeignmemory.c
FAKE_PAGES = 4000
PRIVCMD = Path("/dev/xen/privcmd")


def page_mark(pfn: int) -> bytes:
    """What the fake domain holds at the start of page ``pfn``."""
    return pfn.to_bytes(8, "little")


def real_library_loads() -> bool:
    try:
        ctypes.CDLL("libxenforeignmemory.so.1")
    except OSError:
        return False
    return True


@pytest.fixture(scope="module")
def fake_library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fakexen") / "libfakexenforeignmemory.so.1"
    run([CC, "-std=c11", *STRICT, "-shared", "-fPIC", f"-I{CSRC}", TESTS_C / "fake_xenforeignmemory.c", "-o", out])
    return out


@pytest.fixture
def fixed_maps(fake_library: Path) -> ctypes.c_int:
    """The fake's count of xenforeignmemory_map2 calls with MAP_FIXED."""
    # dlopen of the same file hands back the object xmc_xen_open loads.
    return ctypes.c_int.in_dll(ctypes.CDLL(str(fake_library)), "fake_fixed_maps")


def test_maps_domain_pages_through_map2(fake_library: Path) -> None:
    xen = xmc.XenForeignMemory(FAKE_DOMID, library=fake_library)
    with xmc.MapCache(xen, bucket_shift=20) as cache:
        for pfn in (0, 1, 255, 256, 3999):
            assert cache.read(pfn * PAGE, 8) == page_mark(pfn)
        with cache.map(5 * PAGE + 16, 100, dma=True, tag="disk") as m:
            view = memoryview(m)
            assert view[:3] == bytes(3)
            view[:3] = b"xen"
            view.release()
        assert cache.read(5 * PAGE + 16, 3) == b"xen"
        assert cache.ram_addr(cache.map_ptr(3 * PAGE + 8)) == 3 * PAGE + 8
        stats = cache.stats()
        assert stats.entries == 3 and stats.mapped_bytes == 3 << 20  # buckets 0, 1 and 15


def test_pages_the_domain_lacks_are_per_page_errors(fake_library: Path) -> None:
    xen = xmc.XenForeignMemory(FAKE_DOMID, library=fake_library)
    with xmc.MapCache(xen, bucket_shift=20) as cache:
        # Bucket 15 holds pages 3840..4095: the fake has pages below 4000 only.
        assert cache.read(3999 * PAGE, 8) == page_mark(3999)
        with pytest.raises(xmc.MappingError):
            cache.read(FAKE_PAGES * PAGE, 8)
        with pytest.raises(xmc.MappingError):
            cache.map(3990 * PAGE, 20 * PAGE)


def test_another_domain_cannot_be_mapped(fake_library: Path) -> None:
    xen = xmc.XenForeignMemory(FAKE_DOMID + 1, library=fake_library)
    with xmc.MapCache(xen) as cache, pytest.raises(xmc.MappingError):
        cache.read(0, 8)


def test_remap_and_replace_map_at_the_fixed_address(fake_library: Path, fixed_maps: ctypes.c_int) -> None:
    xen = xmc.XenForeignMemory(FAKE_DOMID, library=fake_library)
    before = fixed_maps.value
    # One-page buckets and two hash slots: pages 0 and 2 share slot 0.
    with xmc.MapCache(xen, bucket_shift=12, max_size=2 * PAGE) as cache:
        first = cache.map_ptr(0)
        assert cache.map_ptr(2 * PAGE) == first  # the unlocked entry, remapped in place
        assert cache.stats().remaps == 1
        assert cache.read(2 * PAGE, 8) == page_mark(2)
        assert fixed_maps.value == before + 1
        with cache.map(2 * PAGE, 8, tag="rom") as m:
            moved = cache.replace(2 * PAGE, 9 * PAGE, 8)
            assert moved == m.address == first
            assert cache.ram_addr(moved) == 9 * PAGE and m.paddr == 9 * PAGE
            assert cache.read(9 * PAGE, 8) == page_mark(9)
        assert fixed_maps.value == before + 2


def test_caches_keep_the_backend_alive(fake_library: Path) -> None:
    xen = xmc.XenForeignMemory(FAKE_DOMID, library=fake_library)
    cache = xmc.MapCache(xen)
    xen.close()
    assert xen.closed
    del xen
    gc.collect()
    assert cache.read(PAGE, 8) == page_mark(1)
    cache.close()


def test_a_closed_backend_makes_no_cache(fake_library: Path) -> None:
    xen = xmc.XenForeignMemory(FAKE_DOMID, library=fake_library)
    xen.close()
    xen.close()
    with pytest.raises(xmc.MapCacheError, match="closed"):
        xmc.MapCache(xen)


@pytest.mark.parametrize("domid", [-1, 1 << 16])
def test_domid_out_of_range(fake_library: Path, domid: int) -> None:
    with pytest.raises(xmc.InvalidAddress):
        xmc.XenForeignMemory(domid, library=fake_library)


def test_mapcache_takes_only_backends() -> None:
    with pytest.raises(TypeError, match="GuestRAM, XenForeignMemory, XenGrantTable or CallbackBackend"):
        xmc.MapCache(object())  # type: ignore[arg-type]


def test_library_missing_is_unavailable() -> None:
    with pytest.raises(xmc.BackendUnavailable, match="libxenforeignmemory-absent.so.1 cannot be loaded"):
        xmc.XenForeignMemory(0, library="libxenforeignmemory-absent.so.1")


def test_a_library_without_the_entry_points_is_unavailable() -> None:
    with pytest.raises(xmc.BackendUnavailable, match="libm.so.6 has no xenforeignmemory_open"):
        xmc.XenForeignMemory(0, library="libm.so.6")


def test_privcmd_missing_is_unavailable_and_logged_nowhere(
    fake_library: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FAKE_XENFM_NO_PRIVCMD", "1")
    with pytest.raises(xmc.BackendUnavailable) as info:
        xmc.XenForeignMemory(FAKE_DOMID, library=fake_library)
    # The library's own log line, captured by our logger, ends up in the message.
    assert "/dev/xen/privcmd is missing" in str(info.value)
    assert "Could not obtain handle on the fake privcmd: No such file or directory" in str(info.value)
    assert "noise" not in str(info.value)  # debug messages do not overwrite it
    assert capfd.readouterr() == ("", "")


def unavailable_in_subprocess() -> subprocess.CompletedProcess[str]:
    """``XenForeignMemory(0)`` with the default library, in a fresh process."""
    code = (
        "import xenmapcache as xmc\n"
        "try:\n"
        "    xmc.XenForeignMemory(0)\n"
        "except xmc.BackendUnavailable as exc:\n"
        "    print(exc)\n"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(not real_library_loads(), reason="libxenforeignmemory.so.1 is not installed")
@pytest.mark.skipif(PRIVCMD.exists(), reason="this machine runs under Xen")
def test_real_library_without_privcmd() -> None:
    proc = unavailable_in_subprocess()
    assert "/dev/xen/privcmd is missing" in proc.stdout
    assert "privileged command interface" in proc.stdout  # the library's message, kept
    assert proc.stderr == ""  # its default logger would have printed here


@pytest.mark.skipif(real_library_loads(), reason="libxenforeignmemory.so.1 is installed")
def test_real_library_missing() -> None:
    proc = unavailable_in_subprocess()
    assert "libxenforeignmemory.so.1 cannot be loaded" in proc.stdout
    assert proc.stderr == ""


def xen_headers_installed() -> bool:
    probe = subprocess.run(
        [CC, "-x", "c", "-fsyntax-only", "-"], input="#include <xenforeignmemory.h>\n", capture_output=True, text=True
    )
    return probe.returncode == 0


needs_xen_headers = pytest.mark.skipif(
    not xen_headers_installed(), reason="xenforeignmemory.h missing (scripts/setup.sh test installs libxen-dev)"
)


@needs_xen_headers
def test_our_declarations_match_xens_headers() -> None:
    run([CC, "-std=c11", *STRICT, f"-I{CSRC}", "-fsyntax-only", CSRC / "tests" / "xen_decls_check.c"])


@needs_xen_headers
def test_the_declaration_check_catches_a_drift(tmp_path: Path) -> None:
    drifted = (CSRC / "xmc_xenfm.h").read_text().replace("unsigned open_flags", "int open_flags")
    (tmp_path / "xmc_xenfm.h").write_text(drifted)
    source = CSRC / "tests" / "xen_decls_check.c"
    proc = run([CC, "-std=c11", f"-I{tmp_path}", f"-I{CSRC}", "-fsyntax-only", source], expect_ok=False)
    assert "xmc_fm_open_fn differs from xenforeignmemory_open" in proc.stderr



@needs_xen_headers
def test_the_declaration_check_catches_a_grant_table_drift(tmp_path: Path) -> None:
    drifted = (CSRC / "xmc_gnttab.h").read_text().replace("uint32_t *refs, int prot", "const uint32_t *refs, int prot")
    (tmp_path / "xmc_gnttab.h").write_text(drifted)
    source = CSRC / "tests" / "xen_decls_check.c"
    proc = run([CC, "-std=c11", f"-I{tmp_path}", f"-I{CSRC}", "-fsyntax-only", source], expect_ok=False)
    assert "xmc_gt_map_refs_fn differs from xengnttab_map_domain_grant_refs" in proc.stderr
