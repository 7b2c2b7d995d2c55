"""The package is built for real: the compiled core imports and answers."""

import xenmapcache
from xenmapcache import _core


def test_compiled_core_is_present() -> None:
    assert _core.lib.XMC_OK == 0
    assert _core.ffi.string(_core.lib.xmc_strerror(_core.lib.XMC_EMAP)) == b"guest pages cannot be mapped"


def test_one_call_through_c_and_python() -> None:
    ram = xenmapcache.GuestRAM(1 << 24)
    with xenmapcache.MapCache(ram) as cache:
        cache.write(0x1234, b"xen")
        assert cache.read(0x1234, 3) == b"xen"
        assert cache.ram_addr(cache.map_ptr(0x1234)) == 0x1234
    ram.close()
