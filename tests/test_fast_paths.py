"""The per-cache fast paths of the hot methods (``_binding.HOT_METHODS``) keep the contract.

On CPython the C core's cache gets builtins (ffi/binding.h) that fall back
straight on MapCache's checked methods; elsewhere the checked methods alone,
over plain cffi calls.  Every test here runs on the three implementations of
conftest: ``c`` (the builtins), ``c-cffi`` (cffi calls alone) and ``py`` (the
reference).
"""

from __future__ import annotations

import gc
import sys
import tracemalloc
from types import ModuleType
from typing import Any

import pytest
from threads import run_threads

PAGE = 4096
MIB = 1 << 20


def test_methods_kept_after_their_cache_went_still_raise_what_they_should(xmc: ModuleType, ram: Any) -> None:
    # Every failure of a builtin whose MapCache was collected said "the cache
    # is gone", a temporary cache's map at its lock limit too.
    with pytest.raises(xmc.LockOverflow):
        xmc.MapCache(ram, lock_limit=0).map(0, 1)
    cache = xmc.MapCache(ram, bucket_shift=16, lock_limit=1)
    read, map_, map_ptr, ram_addr = cache.read, cache.map, cache.map_ptr, cache.ram_addr
    del cache
    gc.collect()
    assert read(0x1000, 2) == b"\0\0"
    with pytest.raises(xmc.MappingError):
        read(32 * MIB, 1)  # the hole
    held = map_(0x1000, 8)
    with pytest.raises(xmc.LockOverflow):
        map_(0x1000, 8)
    with pytest.raises(xmc.UnknownMapping):
        ram_addr(1)
    assert ram_addr(map_ptr(0x2000)) == 0x2000
    held.release()


BAD_CALLS = {  # each hot method: (arguments, what they deserve)
    "map_ptr": [(("x",), TypeError), ((-1,), "InvalidAddress"), ((0, 2**64), "InvalidAddress")],
    "read": [(("x", 1), TypeError), ((0, -1), "InvalidAddress"), ((2**64 - 1, 2), "InvalidAddress")],
    "readinto": [(("x", bytearray(1)), TypeError), ((0, b"read-only"), TypeError), ((-1, bytearray(1)), "InvalidAddress")],
    "write": [(("x", b"a"), TypeError), ((0, 5), TypeError), ((-1, b"a"), "InvalidAddress")],
    "ram_addr": [(("x",), TypeError), ((-1,), "InvalidAddress"), ((1,), "UnknownMapping")],
    "unlock": [(("x",), TypeError), ((-1,), "InvalidAddress"), ((0,), "UnknownMapping"), ((4096,), "UnknownMapping")],
    "map": [(("x", 1), TypeError), ((0, -1), "InvalidAddress"), ((0, 1 << 40), "InvalidAddress")],
    "map_sg": [(([("a", 1)],), TypeError), ((5,), TypeError), (([],), "InvalidAddress"), (([(-1, 1)],), "InvalidAddress")],
}


@pytest.mark.parametrize("name", sorted(BAD_CALLS))
def test_a_method_kept_after_its_cache_went_raises_what_its_arguments_deserve(
    xmc: ModuleType, ram: Any, name: str
) -> None:
    # The builtins fell back on the checked method through the MapCache they
    # hold weakly: once it was collected every such call said "the cache is
    # closed" although the core is open.  Unlock of an unknown address too.
    cache = xmc.MapCache(ram, bucket_shift=16)
    method, read = getattr(cache, name), cache.read
    address = cache.map_ptr(0x1000, 16, lock=True)
    del cache
    gc.collect()
    for args, deserved in BAD_CALLS[name]:
        expected = getattr(xmc, deserved) if isinstance(deserved, str) else deserved
        with pytest.raises(expected) as info:
            method(*args)
        assert "closed" not in str(info.value) and "gone" not in str(info.value), (args, info.value)
    assert read(0x1000, 4) == b"\0\0\0\0"  # and the core still serves
    assert len(read(0, (1 << 24) + 1)) == (1 << 24) + 1  # past the builtin's own limit: the checked way
    if name == "unlock":
        method(address)  # the raw lock taken before the cache went
        with pytest.raises(xmc.UnknownMapping):
            method(address)


def test_a_method_kept_after_its_cache_went_traces_and_knows_it_was_closed(xmc: ModuleType, ram: Any) -> None:
    events: list[str] = []
    cache = xmc.MapCache(ram, trace=lambda event: events.append(event.name))
    unlock = cache.unlock
    del cache
    gc.collect()
    with pytest.raises(xmc.UnknownMapping):
        unlock(0x1000)
    assert events.count("unlock_unknown") == 1
    assert [e for e in events if e.endswith("_unknown")] == ["unlock_unknown"]
    cache = xmc.MapCache(ram)
    read = cache.read
    cache.close()
    del cache
    gc.collect()
    for args in ((0x1000, 4), ("x", 4), (0, 1 << 25)):
        with pytest.raises(xmc.MapCacheError, match="closed"):
            read(*args)


def test_closures_kept_past_close_raise(xmc: ModuleType, ram: Any) -> None:
    cache = xmc.MapCache(ram)
    address = cache.map_ptr(0x1000, 16, lock=True)
    kept = (cache.map_ptr, cache.read, cache.ram_addr, cache.unlock)
    cache.close()
    map_ptr, read, ram_addr, unlock = kept
    for call in (lambda: map_ptr(0x1000), lambda: read(0x1000, 64), lambda: ram_addr(address), lambda: unlock(address)):
        with pytest.raises(xmc.MapCacheError, match="closed"):
            call()


def test_a_failed_read_calls_translate_once(xmc: ModuleType, ram: Any) -> None:
    calls = []

    def translate(paddr: int, size: int) -> int:
        calls.append(paddr)
        return 40 * MIB + 123  # just past the hole

    def refuse(paddr: int, size: int) -> int:
        calls.append(paddr)
        raise LookupError("no such guest page")

    with xmc.MapCache(ram, translate=refuse) as cache:
        with pytest.raises(xmc.MappingError) as info:
            cache.read(33 * MIB, 4096)  # the hole
        assert calls == [33 * MIB]
        assert isinstance(info.value.__cause__, LookupError)
        with pytest.raises(xmc.MappingError):
            cache.map_ptr(34 * MIB)
        assert calls == [33 * MIB, 34 * MIB]
    calls.clear()
    ram.write(40 * MIB + 123, b"moved")
    with xmc.MapCache(ram, translate=translate) as cache:
        assert cache.read(33 * MIB, 5) == b"moved"
        assert calls == [33 * MIB]


@pytest.mark.parametrize("n", [0, 1, 2, 4095, 4096, MIB + 3])
def test_reads_of_every_size_match_ram(cache: Any, ram: Any, n: int) -> None:
    data = bytes(range(256)) * (n // 256 + 1)
    ram.write(MIB - 7, data[:n])
    got = cache.read(MIB - 7, n)  # crosses a bucket boundary
    assert type(got) is bytes and got == data[:n]
    if n and type(cache).__module__ == "xenmapcache.cache":
        # The C core fills a new object in place: never a shared one (the
        # reference may hand out CPython's cached one-byte objects).
        assert cache.read(MIB - 7, n) is not got


def test_the_fast_paths_take_the_same_inputs(xmc: ModuleType, cache: Any) -> None:
    class Index(int):
        pass

    assert cache.map_ptr(Index(0x2000)) == cache.map_ptr(0x2000)
    assert cache.read(Index(0x2000), Index(2)) == cache.read(0x2000, 2)
    for bad in (True, 1.0, "1"):
        with pytest.raises(TypeError):
            cache.map_ptr(0x2000, bad)
        with pytest.raises(TypeError):
            cache.read(0x2000, bad)
    for bad_n in (-1, 2**64):
        with pytest.raises(xmc.InvalidAddress):
            cache.read(0x2000, bad_n)
    with pytest.raises(xmc.InvalidAddress):
        cache.map_ptr(0x2000, -1)
    assert cache.map_ptr(0x2000, lock=None) == cache.map_ptr(0x2000)  # truthiness, as documented


def test_the_fast_paths_take_keywords_like_the_methods(xmc: ModuleType, cache: Any) -> None:
    before = cache.stats().locked
    a = cache.map_ptr(0x3000, size=64, lock=True, dma=True)
    assert a == cache.map_ptr(paddr=0x3000, dma=False, lock=True, size=64)
    assert cache.stats().locked == before + 2 and cache.stats().dma_locked >= 1
    cache.unlock(a)
    cache.unlock(address=a)
    assert cache.stats().locked == before
    assert cache.map_ptr(0x3000, size=0) == cache.map_ptr(0x3000)
    key = "lo" + "ck"  # a keyword name that is not the interned string
    assert cache.map_ptr(0x3000, **{key: False}) == cache.map_ptr(0x3000)
    assert cache.read(paddr=0x3000, n=4) == cache.read(0x3000, n=4) == cache.read(0x3000, 4)
    assert cache.ram_addr(address=a) == 0x3000
    for call in (
        lambda: cache.map_ptr(0x3000, paddr=0x3000),  # given twice
        lambda: cache.map_ptr(0x3000, bogus=1),
        lambda: cache.map_ptr(size=4),  # paddr missing
        lambda: cache.map_ptr(0x3000, 0, False, False, 1),  # one too many
        lambda: cache.read(0x3000, 4, n=4),
        lambda: cache.read(n=4),
        lambda: cache.read(0x3000, count=4),
    ):
        with pytest.raises(TypeError):
            call()
    assert cache.stats().locked == before


def test_threads_share_the_fast_paths(xmc: ModuleType, ram: Any) -> None:
    with xmc.MapCache(ram, bucket_shift=16, max_size=4 * MIB) as cache:  # few slots: remaps too

        def worker(seed: int) -> None:
            for i in range(2000):
                p = ((seed * 7919 + i * 104729) % (30 * MIB)) & ~7
                a = cache.map_ptr(p, 8, lock=True, dma=bool(i & 1))
                assert cache.ram_addr(a) == p
                assert len(cache.read(p, 64)) == 64
                cache.map_ptr(p ^ 0x10_0000)
                cache.unlock(a)

        run_threads(worker, 4)
        assert cache.stats().locked == 0


def test_the_fast_paths_leak_nothing(xmc: ModuleType, cache: Any) -> None:
    if xmc.__name__ != "xenmapcache":
        pytest.skip("the C core's fast paths")

    def work(n: int) -> None:
        for i in range(n):
            a = cache.map_ptr((i % 4096) * PAGE, 64, True, True)  # below the hole
            cache.ram_addr(a)
            cache.unlock(a)
            cache.read((i % 4096) * 64, 512)
            cache.map_ptr((i % 4096) * 8)
            if i % 8:
                continue
            for bad in (-1, 2**64, True):  # the fallbacks raise
                with pytest.raises((TypeError, ValueError)):
                    cache.map_ptr(bad)
                with pytest.raises((TypeError, ValueError)):
                    cache.read(bad, 8)
            with pytest.raises(xmc.UnknownMapping):
                cache.unlock(12345)
            with pytest.raises(xmc.MappingError):
                cache.read(33 * MIB, 8)  # the hole: a failed core call
            with pytest.raises(xmc.MappingError):
                cache.map_ptr(33 * MIB, 8, True)

    work(2000)  # warm every cache and free list
    gc.collect()
    refs = sys.getrefcount(cache.map_ptr), sys.getrefcount(cache)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    work(20000)
    gc.collect()
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert grown < 64 * 1024, grown
    assert (sys.getrefcount(cache.map_ptr), sys.getrefcount(cache)) == refs


def test_help_on_a_cache_method_says_what_it_raises(xmc: ModuleType, cache: Any) -> None:
    # On CPython cache.map is the builtin, and help(cache.map) shows its doc:
    # the checked method's whole docstring, Raises list included.
    import pydoc

    from xenmapcache._binding import HOT_METHODS

    for name in HOT_METHODS:
        method = getattr(cache, name)
        assert method.__doc__ == getattr(xmc.MapCache, name).__doc__, name
        text = pydoc.render_doc(method, renderer=pydoc.plaintext)
        assert ":raises MapCacheError: the cache is closed" in text, name


def test_the_builtins_are_bound_by_name(xmc: ModuleType, cache: Any) -> None:
    # Each builtin falls back on the checked method of its own name: an
    # argument only the checked method takes (an int subclass) gets the
    # answer of that method.
    class Int(int):
        pass

    one = Int(1)
    assert cache.read(one, 2) == cache.read(1, 2)
    assert cache.map_ptr(one) == cache.map_ptr(1)
    with cache.map(one, 8) as m:
        assert m.paddr == 1
    with cache.map_sg([(one, 8)]) as g:
        assert g[0].paddr == 1
    assert cache.readinto(one, bytearray(2)) == 2
    cache.write(one, b"ab")
    assert cache.read(1, 2) == b"ab"
    address = cache.map_ptr(0x1000, 8, lock=True)
    assert cache.ram_addr(Int(address)) == 0x1000
    cache.unlock(Int(address))
    assert cache.stats().locked == 0


def test_ints_of_every_width_read_exactly(xmc: ModuleType) -> None:
    # The builtins read an int of one digit, of two or three (a guest address
    # past 1 GiB, every host address) and past 2**63 each its own way; each
    # must come out exact, and one out of [0, 2**64) must not wrap into it.
    ram = xmc.GuestRAM(8 << 30)  # sparse: nothing is touched but the pages written
    cache = xmc.MapCache(ram)
    try:
        paddrs = [0x1234, (1 << 30) - 8, 1 << 30, (1 << 32) + 0x5678, (8 << 30) - 8]
        for p in paddrs:
            cache.write(p, p.to_bytes(8, "little"))
            address = cache.map_ptr(p, 8, lock=True)
            assert cache.ram_addr(address) == p
            assert cache.read(p, 8) == p.to_bytes(8, "little")
            for wrapped in (address - 2**64, address + 2**64, -address):
                with pytest.raises(xmc.InvalidAddress):
                    cache.ram_addr(wrapped)
            cache.unlock(address)
        with cache.map_sg([(p, 8) for p in paddrs], dma=True) as g:
            assert [bytes(m) for m in g] == [p.to_bytes(8, "little") for p in paddrs]
        for past_ram in (8 << 30, 2**63, 2**64 - 1):  # in range, but no guest page there
            for call in (lambda: cache.map_ptr(past_ram), lambda: cache.map_sg([(past_ram, 1)])):
                with pytest.raises(xmc.MappingError):
                    call()
        for bad in (2**64, -1, -(2**63), -(2**64)):
            for call in (lambda: cache.map_ptr(bad), lambda: cache.map_sg([(bad, 1)]), lambda: cache.read(0, bad)):
                with pytest.raises(xmc.InvalidAddress):
                    call()
    finally:
        cache.close()
        ram.close()


def vm_peak_reset() -> int:
    """Reset this process's resident high-water mark; its value in KiB now."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return vm_peak()


def vm_peak() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


@pytest.mark.parametrize("n", [(1 << 32) + 1, 2**63, 2**64 - 1])
def test_a_read_past_the_guest_costs_no_memory(xmc: ModuleType, cache: Any, n: int) -> None:
    # A read of n bytes past the guest's 64 MiB zero-filled a bytearray of n
    # bytes before the core found the range unmappable: 4 GiB of memory for a
    # MappingError, or an OverflowError from 2**63 on.
    before = vm_peak_reset()
    with pytest.raises(xmc.MappingError):
        cache.read(0, n)
    assert vm_peak() - before < 256 * 1024
    cache.write(32 * MIB - 1, b"\x7f")
    assert cache.read(0, 32 * MIB)[-1:] == b"\x7f"  # a long read that can be served still is
