"""Faults users meet (docs/contract.md, section 10): copies, failed copies, lost errors, fork.

Every test runs on both implementations (the C core and the reference).
"""

from __future__ import annotations

import copy
import os
import pickle
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest

import xenmapcache
import xenmapcache.reference

MIB = 1 << 20
PAGE = 4096

COPIERS: dict[str, Callable[[Any], Any]] = {
    "pickle": pickle.dumps,
    "copy": copy.copy,
    "deepcopy": copy.deepcopy,
}


# -- no copies -------------------------------------------------------------------


@pytest.mark.parametrize("how", sorted(COPIERS))
def test_caches_mappings_ram_and_backends_refuse_to_be_copied(xmc: ModuleType, how: str) -> None:
    copier = COPIERS[how]
    ram = xmc.GuestRAM(4 * MIB)
    backend = xmc.CallbackBackend(lambda *a: (0, []), lambda *a: None)
    cache = xmc.MapCache(ram)
    mapping = cache.map(0x1000, 16)
    xen = object.__new__(xmc.XenForeignMemory)  # no Xen here: the class is what refuses
    try:
        for obj in (cache, mapping, ram, backend, xen):
            with pytest.raises(TypeError, match=f"{type(obj).__name__} objects cannot be copied or pickled: "):
                copier(obj)
        mapping.release()  # the original still works, once
        assert cache.stats().locked == 0
    finally:
        cache.close()
        ram.close()


def test_both_implementations_mappings_refuse_to_be_copied() -> None:
    # The C core's Mapping may become a type of its own (ffi/seam.h): it must
    # refuse as the reference's does.
    for xmc in (xenmapcache, xenmapcache.reference):
        with xmc.GuestRAM(MIB) as ram, xmc.MapCache(ram) as cache, cache.map(0, 8) as m:
            for copier in COPIERS.values():
                with pytest.raises(TypeError, match="unlock the same locked mapping"):
                    copier(m)


# -- every error changes nothing --------------------------------------------------


def test_a_write_into_a_hole_writes_nothing(xmc: ModuleType) -> None:
    hole = 3 * (1 << 16)
    with xmc.GuestRAM(MIB, holes=[(hole, hole + PAGE)]) as ram:
        with xmc.MapCache(ram, bucket_shift=16, max_size=1 << 16) as cache:  # one slot: buckets collide
            before = os.pread(ram.fileno(), MIB, 0)
            with pytest.raises(xmc.MappingError):
                cache.write(0x100, b"\xa5" * (hole + 0x10 - 0x100))
            assert os.pread(ram.fileno(), MIB, 0) == before
            assert cache.stats().locked == 0 and cache.locked() == []
            buf = cache.read(0x100, hole - 0x100)  # all of it before the hole reads back as it was
            assert buf == before[0x100:hole]
            with pytest.raises(xmc.MappingError):
                cache.read(0x100, hole)
            cache.write(0x100, b"\x5a" * (hole - 0x100))  # up to the hole: every byte lands
            assert os.pread(ram.fileno(), hole - 0x100, 0x100) == b"\x5a" * (hole - 0x100)
            cache.invalidate()
            assert cache.stats().entries == 0  # nothing stays pinned
