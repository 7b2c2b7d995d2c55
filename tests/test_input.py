"""Hostile and malformed input: every public entry point gives its documented error.

These run in a child interpreter (tests/test_hostile.py starts it with
XMC_HOSTILE_CHILD=1), so an input that crashed the process would fail that
test instead of ending the whole run.
"""

from __future__ import annotations

import contextlib
import os
import threading
from types import ModuleType
from typing import Any

import pytest

MIB = 1 << 20
U64 = 2**64


@pytest.mark.parametrize("paddr", [-1, -(2**70), U64, U64 + 5])
def test_out_of_range_addresses_are_invalid(cache: Any, xmc: ModuleType, paddr: int) -> None:
    for call in (
        lambda: cache.map(paddr, 16),
        lambda: cache.map_sg([(0, 16), (paddr, 16)]),
        lambda: cache.map_ptr(paddr),
        lambda: cache.read(paddr, 1),
        lambda: cache.readinto(paddr, bytearray(1)),
        lambda: cache.write(paddr, b"x"),
        lambda: cache.replace(paddr, 0, 16),
        lambda: cache.replace(0, paddr, 16),
        lambda: cache.ram_addr(paddr),
        lambda: cache.unlock(paddr),
    ):
        with pytest.raises(xmc.InvalidAddress):
            call()
    assert issubclass(xmc.InvalidAddress, ValueError)


def test_wrap_around_and_oversized_requests(cache: Any, xmc: ModuleType) -> None:
    with pytest.raises(xmc.InvalidAddress):
        cache.map(U64 - 16, 32)  # paddr + size passes 2**64
    with pytest.raises(xmc.InvalidAddress):
        cache.map(0, cache.max_size + 1)
    with pytest.raises(xmc.InvalidAddress):
        cache.map_sg([(0, 16), (U64 - 16, 32)])
    with pytest.raises(xmc.InvalidAddress):
        cache.map_sg([(0, cache.max_size + 1)])
    with pytest.raises(xmc.MappingError):
        cache.map_sg([(0, 16), (U64 - 16, 16)])  # in range, but not RAM: the first is undone
    with pytest.raises(xmc.InvalidAddress):
        cache.read(U64 - 1, 2)
    with pytest.raises(xmc.InvalidAddress):
        cache.readinto(U64 - 1, bytearray(2))
    with pytest.raises(xmc.MappingError):
        cache.readinto(U64 - 2, bytearray(2))  # in range, but not RAM
    with pytest.raises(xmc.MappingError):
        cache.map(U64 - 16, 16)  # in range, but not RAM
    with pytest.raises(xmc.MappingError):
        cache.map_ptr(U64 - 1)
    assert cache.stats().locked == 0


@pytest.mark.parametrize("bad", ["0", 1.5, None, b"\0", True, [1]])
def test_wrong_types_are_type_errors(cache: Any, bad: Any) -> None:
    for call in (
        lambda: cache.map(bad, 16),
        lambda: cache.map(0, bad),
        lambda: cache.map_sg([(0, 16), (bad, 16)]),
        lambda: cache.map_sg([(0, bad)]),
        lambda: cache.map_sg(bad),
        lambda: cache.map_ptr(bad),
        lambda: cache.read(bad, 1),
        lambda: cache.readinto(bad, bytearray(1)),
        lambda: cache.readinto(0, bad),  # not a writable buffer
        lambda: cache.ram_addr(bad),
        lambda: cache.unlock(bad),
    ):
        with pytest.raises(TypeError):
            call()


@pytest.mark.parametrize(
    "kw",
    [
        {"bucket_shift": 11},
        {"bucket_shift": 33},
        {"bucket_shift": 200},
        {"bucket_shift": -1},
        {"max_size": 0},
        {"max_size": -5},
        {"max_size": 1 << 62},  # far too many slots
        {"lock_limit": 2**32},
        {"lock_limit": -1},
    ],
)
def test_bad_cache_parameters(xmc: ModuleType, ram: Any, kw: dict[str, int]) -> None:
    with pytest.raises(xmc.InvalidAddress):
        xmc.MapCache(ram, **kw)


def test_bad_guest_ram(xmc: ModuleType) -> None:
    for size in (0, 4095, -4096):
        with pytest.raises(xmc.InvalidAddress):
            xmc.GuestRAM(size)
    with pytest.raises(xmc.InvalidAddress):
        xmc.GuestRAM(MIB, holes=[(10, 5)])
    with pytest.raises(xmc.InvalidAddress):
        xmc.GuestRAM(MIB, holes=[(1, 2, 3)])
    with pytest.raises(TypeError):
        xmc.MapCache(object())


def test_guest_ram_bounds(xmc: ModuleType, ram: Any) -> None:
    with pytest.raises(xmc.InvalidAddress):
        ram.read(ram.size - 1, 2)
    with pytest.raises(xmc.InvalidAddress):
        ram.write(ram.size, b"x")
    with pytest.raises(xmc.MappingError):
        ram.read(32 * MIB, 1)  # the hole
    assert ram.read(ram.size - 1, 1) == b"\0"


def test_page_error_checks_its_page_number(xmc: ModuleType, ram: Any) -> None:
    # GuestRAM(...).page_error(-1) once answered 0, "RAM", for a page that cannot exist.
    for bad in (-1, -(1 << 70), 1 << 52):
        with pytest.raises(xmc.InvalidAddress):
            ram.page_error(bad)
    for bad in ("0", 1.0, None):
        with pytest.raises(TypeError):
            ram.page_error(bad)
    assert ram.page_error(0) == 0
    assert ram.page_error((1 << 52) - 1) == 6  # ENXIO: past the end of RAM
    assert ram.page_error(32 * MIB >> 12) == 14  # EFAULT: the hole


def test_guest_ram_from_an_image_file(xmc: ModuleType, tmp_path: Any) -> None:
    image = tmp_path / "ram.img"
    image.write_bytes(b"\x11" * 5000)
    ram = xmc.GuestRAM.open(image)
    assert ram.size == 8192
    with xmc.MapCache(ram) as cache:
        assert cache.read(4990, 12) == b"\x11" * 10 + b"\0\0"
        cache.write(0, b"\x22")
    assert image.read_bytes()[:1] == b"\x11"  # a copy: the image is untouched
    ram.close()


def test_guest_ram_from_a_file_copies_at_most_its_size(xmc: ModuleType, tmp_path: Any) -> None:
    # A pipe has no size: one page, of the first bytes it gives.  (/dev/zero,
    # which has no end either, grew the memfd until memory ran out.)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)

    def feed() -> None:
        with contextlib.suppress(BrokenPipeError):
            fifo.write_bytes(b"\x44" * 3 * 4096)

    writer = threading.Thread(target=feed)
    writer.start()
    with xmc.GuestRAM.open(fifo) as ram:
        assert ram.size == 4096 and os.fstat(ram.fileno()).st_size == 4096
        assert ram.read(0, 4096) == b"\x44" * 4096
    writer.join()
    with xmc.GuestRAM.open("/dev/zero") as ram:
        assert ram.size == 4096 and os.fstat(ram.fileno()).st_size == 4096
    image = tmp_path / "ram.img"
    image.write_bytes(b"\x33" * 8192)
    with xmc.GuestRAM.open(image, holes=[(0, 4096)]) as ram:  # the hole's bytes are copied too
        assert os.pread(ram.fileno(), 8192, 0) == b"\x33" * 8192


def test_guest_ram_sizes_and_holes_at_the_top_of_the_address_space(xmc: ModuleType) -> None:
    for size in (2**64 - 4096, 2**63):  # more than a memfd holds: a clear error, not OverflowError
        with pytest.raises(xmc.InvalidAddress, match="size"):
            xmc.GuestRAM(size)
    with pytest.raises(xmc.InvalidAddress):
        xmc.GuestRAM(MIB, holes=[(MIB, 2**64 + 1)])
    with xmc.GuestRAM(4 * MIB, holes=[(2 * MIB, 2**64)]) as ram:  # a hole may end at 2**64
        assert ram.holes == [(2 * MIB, 2**64)]
        with xmc.MapCache(ram, bucket_shift=12) as cache:
            assert cache.read(2 * MIB - 1, 1) == b"\0"
            with pytest.raises(xmc.MappingError):
                cache.read(2 * MIB, 1)
            with pytest.raises(xmc.MappingError):
                cache.map_ptr(4 * MIB - 4096)


def test_a_closed_cache_refuses_everything(xmc: ModuleType, ram: Any) -> None:
    cache = xmc.MapCache(ram)
    m = cache.map(0, 8)
    cache.close()
    cache.close()  # twice is fine
    assert m.released
    m.release()  # nothing to do
    for call in (
        lambda: cache.map(0, 8),
        lambda: cache.map_sg([(0, 8)]),
        lambda: cache.map_ptr(0),
        lambda: cache.read(0, 1),
        lambda: cache.readinto(0, bytearray(1)),
        lambda: cache.write(0, b"x"),
        lambda: cache.ram_addr(m.address),
        lambda: cache.unlock(m.address),
        cache.invalidate,
        cache.locked,
        cache.stats,
        lambda: cache.replace(0, 4096, 8),
    ):
        with pytest.raises(xmc.MapCacheError):
            call()
    with pytest.raises(BufferError):
        memoryview(m)


def test_foreign_and_interior_pointers(cache: Any, xmc: ModuleType) -> None:
    m = cache.map(0x1000, 64)
    foreign = id(object())
    for address in (0, 1, foreign, m.address - 0x1001, 2**64 - 1):  # before the bucket
        with pytest.raises(xmc.UnknownMapping):
            cache.ram_addr(address)
        with pytest.raises(xmc.UnknownMapping):
            cache.unlock(address)
    with pytest.raises(xmc.UnknownMapping):
        cache.unlock(m.address + 1)  # interior: resolvable, but not a locked mapping
    assert cache.ram_addr(m.address + 1) == 0x1001
    m.release()


def test_readinto_refuses_buffers_it_cannot_fill(cache: Any, xmc: ModuleType) -> None:
    import array

    for bad in (b"read-only", memoryview(bytearray(8)).toreadonly(), memoryview(bytearray(16))[::2], "text", 5):
        with pytest.raises(TypeError):
            cache.readinto(0, bad)
    words = array.array("I", [7, 7])
    assert cache.readinto(0x10, words) == 8 and list(words) == [0, 0]
    assert cache.readinto(0x10, bytearray()) == 0
