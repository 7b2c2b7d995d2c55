"""The grant backend (csrc/gnttab.c, ``xmc.XenGrantTable``).

No Xen runs here, so grant mappings are driven through a stand-in for
libxengnttab (tests/c/fake_xengnttab.c) loaded by the very same dlopen code;
the unavailable paths run for real: the library missing, and (with Debian's
libxengnttab1 installed) /dev/xen/gntdev missing.  Our copies of Xen's
declarations are compiled against Xen's real headers by tests/test_xen.py.
"""

from __future__ import annotations

import ctypes
import gc
import mmap
import subprocess
import sys
from pathlib import Path

import pytest
from ctools import CC, CSRC, STRICT, TESTS_C, run

import xenmapcache as xmc
from xenmapcache import reference

PAGE = 4096
FAKE_DOMID = 7  # tests/c/fake_xengnttab.c
FAKE_GRANTS = 1000
FAKE_MARK = 0x4752414E54000000
GNTDEV = Path("/dev/xen/gntdev")


def grant_mark(ref: int) -> bytes:
    """What the fake domain's page behind grant reference ``ref`` starts with."""
    return (FAKE_MARK + ref).to_bytes(8, "little")


@pytest.fixture(scope="module")
def fake_library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fakegnttab") / "libfakexengnttab.so.1"
    run([CC, "-std=c11", *STRICT, "-shared", "-fPIC", f"-I{CSRC}", TESTS_C / "fake_xengnttab.c", "-o", out])
    return out


class Fake:
    """The fake library's counters (dlopen of the same file is the same object)."""

    def __init__(self, library: Path) -> None:
        self.dll = ctypes.CDLL(str(library))

    def __getattr__(self, name: str) -> int:
        return int(ctypes.c_int.in_dll(self.dll, f"fake_{name}").value)


@pytest.fixture
def fake(fake_library: Path) -> Fake:
    return Fake(fake_library)


def grant_table(fake_library: Path, writable: bool = True, domid: int = FAKE_DOMID) -> xmc.XenGrantTable:
    return xmc.XenGrantTable(domid, writable=writable, library=fake_library)


def test_maps_grant_references(fake_library: Path, fake: Fake) -> None:
    live = fake.live_pages
    with xmc.MapCache(grant_table(fake_library), bucket_shift=12) as cache:
        with cache.map(5 * PAGE, 8, dma=True) as m:
            assert bytes(memoryview(m)) == grant_mark(5)
            assert fake.last_first_ref == 5 and fake.last_prot == mmap.PROT_READ | mmap.PROT_WRITE
            view = memoryview(m)
            view[:8] = b"granted!"
            view.release()
        with cache.map(5 * PAGE, 8) as m:
            assert bytes(memoryview(m)) == b"granted!"  # the domain's page itself
            assert cache.ram_addr(m.address + 3) == 5 * PAGE + 3
        assert fake.live_pages > live
    assert fake.live_pages == live  # every grant mapping unmapped


def test_an_entry_maps_its_references_in_one_call(fake_library: Path, fake: Fake) -> None:
    with xmc.MapCache(grant_table(fake_library), bucket_shift=12) as cache:
        calls = fake.map_calls
        with cache.map(100 * PAGE + 100, 3 * PAGE) as m:  # references 100..103
            assert fake.map_calls == calls + 1 and fake.last_first_ref == 100
            view = memoryview(m)
            for ref in range(101, 104):
                start = ref * PAGE - (100 * PAGE + 100)
                assert bytes(view[start : start + 8]) == grant_mark(ref)
            view.release()


def test_read_only_unless_writable(fake_library: Path, fake: Fake) -> None:
    table = grant_table(fake_library, writable=False)
    assert repr(table).startswith("XenGrantTable(7, writable=False")
    with xmc.MapCache(table, bucket_shift=12) as cache, cache.map(9 * PAGE, 8) as m:
        assert fake.last_prot == mmap.PROT_READ
        assert bytes(memoryview(m)) == grant_mark(9)


@pytest.mark.parametrize("paddr", [FAKE_GRANTS * PAGE, (FAKE_GRANTS - 1) * PAGE])
def test_a_reference_not_granted_maps_nothing(fake_library: Path, fake: Fake, paddr: int) -> None:
    live = fake.live_pages
    with xmc.MapCache(grant_table(fake_library), bucket_shift=12) as cache:
        with pytest.raises(xmc.MappingError):
            cache.map(paddr, 2 * PAGE)  # the last granted page and one past it, or none
        assert cache.stats().locked == 0 and cache.stats().entries == 0
    assert fake.live_pages == live


def test_references_past_32_bits_are_refused(fake_library: Path) -> None:
    with xmc.MapCache(grant_table(fake_library), bucket_shift=12) as cache, pytest.raises(xmc.MapCacheError):
        cache.map(1 << 44, 8)  # grant reference 2**32: no such thing


def test_another_domain_cannot_be_mapped(fake_library: Path) -> None:
    with xmc.MapCache(grant_table(fake_library, domid=FAKE_DOMID + 1), bucket_shift=12) as cache:
        with pytest.raises(xmc.MappingError):
            cache.map(0, 8)


def test_caches_keep_the_backend_alive(fake_library: Path) -> None:
    table = grant_table(fake_library)
    cache = xmc.MapCache(table, bucket_shift=12)
    table.close()
    table.close()
    assert table.closed
    del table
    gc.collect()
    with cache.map(PAGE, 8) as m:
        assert bytes(memoryview(m)) == grant_mark(1)
    cache.close()


def test_a_closed_backend_makes_no_cache(fake_library: Path) -> None:
    with grant_table(fake_library) as table:
        pass
    with pytest.raises(xmc.MapCacheError, match="XenGrantTable backend of Xen domain 7 is closed"):
        xmc.MapCache(table)


@pytest.mark.parametrize("domid", [-1, 1 << 16])
def test_domid_out_of_range(fake_library: Path, domid: int) -> None:
    with pytest.raises(xmc.InvalidAddress):
        xmc.XenGrantTable(domid, library=fake_library)


def test_the_reference_core_does_not_map_grants(fake_library: Path) -> None:
    # As for XenForeignMemory: the reference maps GuestRAM and CallbackBackend only.
    with pytest.raises(TypeError, match="XenGrantTable"):
        reference.MapCache(grant_table(fake_library))


def test_library_missing_is_unavailable() -> None:
    with pytest.raises(xmc.BackendUnavailable, match="libxengnttab-absent.so.1 cannot be loaded"):
        xmc.XenGrantTable(0, library="libxengnttab-absent.so.1")


def test_a_library_without_the_entry_points_is_unavailable() -> None:
    with pytest.raises(xmc.BackendUnavailable, match="libm.so.6 has no xengnttab_open"):
        xmc.XenGrantTable(0, library="libm.so.6")


def test_gntdev_missing_is_unavailable_and_logged_nowhere(
    fake_library: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FAKE_XENGNTTAB_NO_GNTDEV", "1")
    with pytest.raises(xmc.BackendUnavailable) as info:
        xmc.XenGrantTable(FAKE_DOMID, library=fake_library)
    assert "/dev/xen/gntdev is missing" in str(info.value)
    assert "Could not open the fake gntdev: No such file or directory" in str(info.value)
    assert "noise" not in str(info.value)
    assert capfd.readouterr() == ("", "")


def real_library_loads() -> bool:
    try:
        ctypes.CDLL("libxengnttab.so.1")
    except OSError:
        return False
    return True


def unavailable_in_subprocess() -> subprocess.CompletedProcess[str]:
    """``XenGrantTable(0)`` with the default library, in a fresh process."""
    code = (
        "import xenmapcache as xmc\n"
        "try:\n"
        "    xmc.XenGrantTable(0, writable=True)\n"
        "except xmc.BackendUnavailable as exc:\n"
        "    print(exc)\n"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(not real_library_loads(), reason="libxengnttab.so.1 is not installed")
@pytest.mark.skipif(GNTDEV.exists(), reason="this machine runs under Xen")
def test_real_library_without_gntdev() -> None:
    proc = unavailable_in_subprocess()
    assert proc.stdout.startswith("Xen domain 0: /dev/xen/gntdev is missing: this is not a Xen domain")
    assert proc.stderr == ""


@pytest.mark.skipif(real_library_loads(), reason="libxengnttab.so.1 is installed")
def test_real_library_missing() -> None:
    proc = unavailable_in_subprocess()
    assert "libxengnttab.so.1 cannot be loaded" in proc.stdout
    assert proc.stderr == ""


def test_under_the_grant_rules_a_grant_lives_as_long_as_its_locks(fake_library: Path, fake: Fake) -> None:
    """As in QEMU's grant caches: locked requests only; the last unlock unmaps (the guest may revoke)."""
    live = fake.live_pages
    with xmc.MapCache(grant_table(fake_library), bucket_shift=12, grants=True) as cache:
        with pytest.raises(xmc.MapCacheError):
            cache.map_ptr(7 * PAGE)  # unlocked: refused, nothing mapped
        assert fake.live_pages == live
        first = cache.map(7 * PAGE, 8, dma=True)
        second = cache.map(7 * PAGE + 8, 8)
        assert second.address == first.address + 8 and fake.live_pages == live + 1
        first.release()
        assert fake.live_pages == live + 1  # still locked once
        second.release()
        assert fake.live_pages == live and cache.stats().entries == 0
        with cache.map(7 * PAGE, 8) as again:  # mapped afresh, not a kept entry
            assert bytes(memoryview(again)) == grant_mark(7)
        assert fake.live_pages == live
