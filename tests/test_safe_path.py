"""The safe path: Mapping, readinto, and one checked path behind the fast one.

On CPython the C core's ``Mapping`` is a type of the binding's own C
(ffi/binding.h) and its cache's hot methods are builtins that hand anything
unusual straight to ``MapCache``'s checked methods.  These tests hold both
implementations (and, where it matters, the C core without its builtins) to
the same contract.
"""

from __future__ import annotations

import array
import copy
import gc
import mmap
import pickle
import sys
import threading
import tracemalloc
import types
import weakref
from types import ModuleType
from typing import Any

import pytest
from threads import run_threads

PAGE = 4096
MIB = 1 << 20
U64 = 2**64


# -- one status-code table, one message per failure ----------------------------------


def test_one_status_table_serves_both_implementations() -> None:
    import xenmapcache.reference as ref
    from xenmapcache import _binding, errors

    ffi, lib = _binding.binding()
    names = {"ENOMEM": ref.ENOMEM, "EINVAL": ref.EINVAL, "EMAP": ref.EMAP, "ENOENT": ref.ENOENT}
    names |= {"EOVERFLOW": ref.EOVERFLOW, "EUNAVAIL": ref.EUNAVAIL, "ESYS": ref.ESYS, "EREENTER": ref.EREENTER}
    names |= {"EFORKED": ref.EFORKED, "EGRANT": ref.EGRANT, "ECALLBACK": ref.ECALLBACK}
    for name, code in names.items():
        assert getattr(lib, f"XMC_{name}") == code, name
        # the reference's copy of the messages is the C core's own
        assert ref._MESSAGES[code] == ffi.string(lib.xmc_strerror(code)).decode(), name
    for code, kind in errors.EXCEPTION_OF.items():
        assert isinstance(errors.exception_for(code, "x"), kind)
        assert code in names.values()
    assert type(errors.exception_for(lib.XMC_ECLOSED, "x")) is errors.MapCacheError


@pytest.mark.parametrize("call", ["read", "readinto", "write", "map", "map_ptr", "ram_addr", "unlock"])
def test_a_failure_gives_one_message_whatever_path_raised_it(ram: Any, call: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import xenmapcache
    import xenmapcache._native
    import xenmapcache.reference

    args: dict[str, tuple[Any, ...]] = {
        "read": (U64 - 2, 4096),  # wraps: refused before any core call
        "readinto": (33 * MIB, bytearray(64)),  # the hole: a failed core call
        "write": (32 * MIB - 8, bytes(64)),  # runs into the hole
        "map": (33 * MIB, 64),
        "map_ptr": (33 * MIB, 64, True),
        "ram_addr": (12345,),
        "unlock": (12345,),
    }
    messages = []
    for module, types in ((xenmapcache, True), (xenmapcache, False), (xenmapcache.reference, False)):
        if not types:
            monkeypatch.setattr(xenmapcache._native, "native_types", lambda: None)
        with module.MapCache(module.GuestRAM(64 * MIB, holes=[(32 * MIB, 40 * MIB)])) as cache:
            with pytest.raises(module.MapCacheError) as info:
                getattr(cache, call)(*args[call])
            messages.append((type(info.value), str(info.value)))
    assert messages[0] == messages[1] == messages[2], messages


# Arguments only the checked methods take (an int subclass), so that each
# builtin hands its call to the checked method of its name.
class _Int(int):
    pass


def _unusual_calls(cache: Any) -> dict[str, Any]:
    one = _Int(1)
    address = cache.map_ptr(0x1000, 8, lock=True)
    return {
        "map_ptr": lambda: cache.map_ptr(one),
        "read": lambda: cache.read(one, 2),
        "readinto": lambda: cache.readinto(one, bytearray(2)),
        "write": lambda: cache.write(one, b"ab"),
        "ram_addr": lambda: cache.ram_addr(_Int(address)),
        "unlock": lambda: cache.unlock(_Int(address)),
        "map": lambda: cache.map(one, 8).release(),
        "map_sg": lambda: cache.map_sg([(one, 8)]).release(),
    }


@pytest.mark.skipif(sys.implementation.name != "cpython", reason="the builtins are CPython's")
def test_a_checked_method_calls_the_core_never_a_builtin() -> None:
    # One fast path and one checked path: a builtin hands an unusual call to
    # the checked method of its name, which checks and calls the core (and
    # the registry), never a builtin of the hot methods again.
    import xenmapcache
    from xenmapcache._binding import HOT_METHODS

    class Watch:
        name = ""
        inside: list[Any] = []  # the frames of the checked method running
        called: list[str] = []  # the builtins called while it runs

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event == "call" and frame.f_code.co_qualname == f"MapCache.{Watch.name}":
            Watch.inside.append(frame)
        elif event == "return" and Watch.inside and frame is Watch.inside[-1]:
            Watch.inside.pop()
        elif event == "c_call" and Watch.inside:
            Watch.called.append(getattr(arg, "__name__", ""))

    with xenmapcache.GuestRAM(MIB) as ram, xenmapcache.MapCache(ram) as cache:
        for name, call in _unusual_calls(cache).items():
            Watch.name, Watch.called = name, []
            sys.setprofile(profile)
            try:
                call()
            finally:
                sys.setprofile(None)
            assert Watch.called, name  # the checked method ran, and reached the core
            assert not set(Watch.called) & set(HOT_METHODS), (name, Watch.called)


@pytest.mark.parametrize("name", ["map_ptr", "read", "readinto", "write", "ram_addr", "unlock", "map", "map_sg"])
def test_a_closed_cache_raises_from_the_fast_path_itself(xmc: ModuleType, ram: Any, name: str) -> None:
    # A call on a closed cache raises MapCacheError wherever it is served:
    # the builtin raises it itself, without handing over to the checked method.
    cache = xmc.MapCache(ram)
    address = cache.map_ptr(0x1000, 8, lock=True)
    calls = {
        "map_ptr": lambda: cache.map_ptr(0x1000),
        "read": lambda: cache.read(0x1000, 2),
        "readinto": lambda: cache.readinto(0x1000, bytearray(2)),
        "write": lambda: cache.write(0x1000, b"ab"),
        "ram_addr": lambda: cache.ram_addr(address),
        "unlock": lambda: cache.unlock(address),
        "map": lambda: cache.map(0x1000, 8),
        "map_sg": lambda: cache.map_sg([(0x1000, 8)]),
    }
    builtin = bool(cache._core.fast_paths())
    cache.close()
    with pytest.raises(xmc.MapCacheError, match="the cache is closed") as info:
        calls[name]()
    frames = [f.f_code.co_qualname for f, _ in __import__("traceback").walk_tb(info.value.__traceback__)]
    assert (f"MapCache.{name}" in frames) != builtin, frames


def test_the_checked_path_takes_what_the_fast_path_refuses(xmc: ModuleType, ram: Any) -> None:
    with xmc.MapCache(ram) as cache:
        for name, call in _unusual_calls(cache).items():
            call()
        assert cache.read(1, 2) == b"ab"
        assert cache.stats().locked == 0


def test_a_subclass_override_is_never_shadowed(xmc: ModuleType, ram: Any) -> None:
    seen = []

    class Counting(xmc.MapCache):  # type: ignore[misc,name-defined]
        def map_ptr(self, paddr: int, size: int = 0, lock: bool = False, dma: bool = False) -> int:
            seen.append(paddr)
            return int(super().map_ptr(paddr, size, lock, dma))

        def map(self, paddr: int, size: int, dma: bool = False, tag: Any = None) -> Any:
            seen.append(-paddr)
            return super().map(paddr, size, dma, tag)

    with Counting(ram) as cache:
        assert cache.map_ptr(0x5000) == cache.map_ptr(0x5000)
        cache.map(0x6000, 8).release()
        assert seen == [0x5000, 0x5000, -0x6000]
        assert cache.read(0x5000, 2) == b"\0\0"  # not overridden: the fast one


def test_a_subclass_that_skips_init_is_told_so(xmc: ModuleType, ram: Any) -> None:
    class Forgetful(xmc.MapCache):  # type: ignore[misc,name-defined]
        def __init__(self, ram: Any) -> None:
            self.ram = ram  # no super().__init__()

    cache = Forgetful(ram)
    calls = (lambda: cache.read(0, 1), lambda: cache.map_ptr(0), lambda: cache.map(0, 8), cache.stats, cache.close)
    for call in calls:  # a builtin's empty slot, or a method's missing state
        with pytest.raises(AttributeError, match=r"never set up.*super\(\).__init__"):
            call()
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        xmc.MapCache(ram).nothing


def test_the_constructor_shows_its_parameters(xmc: ModuleType, ram: Any) -> None:
    # MapCache.__new__ only picks the class (builtins in slots); help() and the
    # docs must still show __init__'s parameters, and a subclass its own.
    import inspect

    assert list(inspect.signature(xmc.MapCache).parameters)[:3] == ["ram", "bucket_shift", "max_size"]

    class Sized(xmc.MapCache):  # type: ignore[misc,name-defined]
        def __init__(self, ram: Any, mib: int) -> None:
            super().__init__(ram, max_size=mib << 20)

    assert list(inspect.signature(Sized).parameters) == ["ram", "mib"]
    with Sized(ram, 4) as cache:
        assert cache.max_size == 4 << 20 and isinstance(cache, Sized)
        assert cache.map_ptr(0x1000) == cache.map_ptr(0x1000)


def test_the_compiled_module_takes_no_raw_address() -> None:
    from xenmapcache import _core, _native

    assert _native.native_types() is _core
    assert not hasattr(_core, "fast_bind")
    with pytest.raises(LookupError):
        _core.adopted()  # nothing handed over by this thread
    for kind in (_core.NativeCache, _core.Mapping):
        with pytest.raises(TypeError):
            kind()


# -- Mapping ------------------------------------------------------------------------


def test_mappings_are_of_the_public_type(xmc: ModuleType, cache: Any) -> None:
    with cache.map(0x2000, 100, dma=True, tag=("disk", 1)) as m:
        assert isinstance(m, xmc.Mapping)
        assert (m.paddr, m.size, m.dma, m.tag, m.released) == (0x2000, 100, True, ("disk", 1), False)
        assert cache.ram_addr(m.address) == 0x2000
        assert "paddr=0x2000" in repr(m) and "disk" in repr(m)
    assert m.released and "released" in repr(m)


def test_mappings_cannot_be_pickled_or_copied(cache: Any) -> None:
    with cache.map(0x2000, 8) as m:
        for how in (pickle.dumps, copy.copy, copy.deepcopy):
            with pytest.raises(TypeError):
                how(m)


def test_enter_and_exit_behave_as_methods(cache: Any) -> None:
    # On CPython the binding binds them itself (no GC'd method object per with
    # statement); they must still be ordinary methods to whoever calls them.
    m = cache.map(0x2000, 8)
    assert m.__enter__() is m
    exit_ = m.__exit__
    assert "__exit__" in repr(exit_)
    with pytest.raises(TypeError):
        m.__enter__(1)
    with pytest.raises(TypeError):
        exit_(None, None, None, extra=1)
    exit_(None, None, None)
    assert m.released
    m2 = cache.map(0x2000, 8)
    type(m2).__exit__(m2, None, None, None)
    assert m2.released
    with pytest.raises((TypeError, AttributeError)):  # the reference's is plain Python
        type(m2).__exit__(object(), None, None, None)
    g = cache.map_sg([(0x2000, 8), (0x5000, 8)])
    assert g.__enter__() is g
    g.__exit__(None, None, None)
    assert g.released and cache.stats().locked == 0


def test_a_cycle_through_a_bound_exit_is_collected(cache: Any) -> None:
    class Box:
        exit: Any = None

    box = Box()
    m = cache.map(0x2000, 8, tag=box)
    box.exit = m.__exit__  # box -> bound __exit__ -> m -> tag box
    collected = weakref.ref(box)
    m.release()
    del m, box
    gc.collect()
    assert collected() is None


def test_a_new_mapping_keeps_nothing_of_an_old_one(cache: Any) -> None:
    # Freed Mappings are reused by the binding: each new one starts clean.
    for i in range(200):
        with cache.map(0x1000 + i, 8, dma=True, tag=("old", i)):
            pass
    m = cache.map(0x3000, 4)
    assert (m.paddr, m.size, m.dma, m.tag, m.released) == (0x3000, 4, False, None, False)
    with memoryview(m) as v:
        assert len(v) == 4
    m.release()


def test_views_write_guest_memory_in_place(cache: Any, ram: Any) -> None:
    with cache.map(MIB - 8, 16, tag="edge") as m, memoryview(m) as v:  # spans two buckets
        v[:] = bytes(range(16))
        assert bytes(v[4:6]) == b"\x04\x05"
    assert ram.read(MIB - 8, 16) == bytes(range(16))


def test_an_exception_in_the_with_block_still_releases(cache: Any) -> None:
    with pytest.raises(KeyError):
        with cache.map(0, 8) as m:
            raise KeyError("boom")
    assert m.released and cache.stats().locked == 0


def test_a_failed_map_keeps_nothing(xmc: ModuleType, cache: Any) -> None:
    before = cache.stats()
    with pytest.raises(xmc.MappingError):
        cache.map(33 * MIB, 64, dma=True, tag="hole")
    assert cache.locked() == [] and cache.stats().locked == before.locked == 0


def test_lock_overflow_keeps_nothing(xmc: ModuleType, ram: Any) -> None:
    with xmc.MapCache(ram, lock_limit=2) as cache:
        held = [cache.map(0x1000, 8, tag=i) for i in range(2)]
        with pytest.raises(xmc.LockOverflow):
            cache.map(0x1000, 8, tag="third")
        assert [lm.tag for lm in cache.locked()] == [0, 1]
        for m in held:
            m.release()


def test_replace_moves_mappings(cache: Any, ram: Any) -> None:
    m = cache.map(0x10_0010, 16, tag="moving")
    ram.write(0x20_0010, b"new home")
    cache.replace(0x10_0000, 0x20_0000, 0)
    assert m.paddr == 0x20_0010 and cache.locked()[0].paddr == 0x20_0010
    with memoryview(m) as v:
        assert bytes(v[:8]) == b"new home"
    m.release()


def test_a_forgotten_cache_with_mappings_is_collected(xmc: ModuleType, ram: Any) -> None:
    def maps() -> int:
        with open("/proc/self/maps") as f:
            return sum(1 for _ in f)

    gc.collect()
    before = maps()
    for _ in range(50):
        cache = xmc.MapCache(ram)
        cache.map(0x1000, 64, dma=True, tag="forgotten")
        cache.map(0x20_0000, 8)
        del cache
    gc.collect()
    assert maps() <= before + 2


def test_threads_map_view_and_release_while_others_list(xmc: ModuleType, ram: Any) -> None:
    with xmc.MapCache(ram, bucket_shift=16, max_size=4 * MIB) as cache:

        def worker(seed: int) -> None:
            for i in range(1500):
                p = ((seed * 7919 + i * 104729) % (30 * MIB)) & ~7
                with cache.map(p, 8, dma=bool(i & 1), tag=(seed, i)) as m, memoryview(m) as v:
                    v[:8] = p.to_bytes(8, "little")
                    assert cache.read(p, 8) == bytes(v)

        def lister(stop: threading.Event) -> None:
            while not stop.is_set():
                for lm in cache.locked():
                    assert lm.tag is None or isinstance(lm.tag, tuple)

        run_threads(worker, 4, background=lister)
        assert cache.stats().locked == 0 and cache.locked() == []


def test_the_safe_path_leaks_nothing(xmc: ModuleType, cache: Any) -> None:
    def work(n: int) -> None:
        buf = bytearray(512)
        for i in range(n):
            with cache.map((i % 4096) * PAGE, 64, dma=True, tag="t") as m, memoryview(m) as v:
                v[0] = i & 0xFF
            cache.readinto((i % 4096) * 64, buf)
            m2 = cache.map(0x1000, 8)
            m2.release()
            if i % 16 == 0:
                with pytest.raises(xmc.MappingError):
                    cache.map(33 * MIB, 8)

    work(1000)
    gc.collect()
    refs = sys.getrefcount(cache)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    work(5000)
    gc.collect()
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert grown < 64 * 1024, grown
    assert sys.getrefcount(cache) == refs


# -- readinto --------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 7, 4096, MIB + 3])
def test_readinto_fills_any_writable_buffer(cache: Any, ram: Any, n: int) -> None:
    data = bytes(range(256)) * (n // 256 + 1)
    ram.write(MIB - 5, data[:n])  # crosses a bucket boundary
    for buf in (bytearray(n), memoryview(bytearray(n + 10))[5 : 5 + n]):
        assert cache.readinto(MIB - 5, buf) == n
        assert bytes(buf) == data[:n]
    with mmap.mmap(-1, n) as mm:
        assert cache.readinto(MIB - 5, mm) == n and mm[:] == data[:n]
    if n % 4 == 0:
        words = array.array("I", bytes(n))
        assert cache.readinto(MIB - 5, words) == n and words.tobytes() == data[:n]


def test_readinto_fills_numpy_arrays(cache: Any, ram: Any) -> None:
    import numpy as np

    ram.write(MIB - 8, bytes(range(64)))
    grid = np.zeros((4, 2), dtype=np.float64)  # 64 bytes, C-contiguous, two dimensions
    assert cache.readinto(MIB - 8, grid) == 64
    assert grid.tobytes() == bytes(range(64))
    column = np.zeros((8, 2), dtype=np.uint8)[:, 0]  # strided: not one run of memory
    with pytest.raises(TypeError):
        cache.readinto(0, column)
    frozen = np.zeros(8, dtype=np.uint8)
    frozen.flags.writeable = False
    with pytest.raises(TypeError):
        cache.readinto(0, frozen)
    assert not frozen.any() and not column.any()


def test_write_takes_any_contiguous_buffer(cache: Any, ram: Any) -> None:
    import numpy as np

    data = bytes(range(256)) * 20  # 5,120 bytes: more than a page, across a bucket
    for buf in (data, bytearray(data), memoryview(data)[10:], array.array("I", data), np.frombuffer(data, np.uint16)):
        ram.write(MIB - 100, bytes(len(data)))
        assert cache.write(MIB - 100, buf) is None
        flat = bytes(memoryview(buf).cast("B"))
        assert ram.read(MIB - 100, len(data)) == flat + bytes(len(data) - len(flat))
    for bad in ("text", memoryview(data)[::2], 12):
        with pytest.raises(TypeError):
            cache.write(0, bad)
    assert cache.write(0x10, b"") is None


def test_a_failed_readinto_leaves_the_buffer_untouched(xmc: ModuleType, cache: Any, ram: Any) -> None:
    ram.write(32 * MIB - 4, b"RAM!")
    buf = bytearray(b"\xee" * 64)
    with pytest.raises(xmc.MappingError):
        cache.readinto(32 * MIB - 4, buf)  # runs into the hole, in the next bucket
    assert buf == b"\xee" * 64
    assert cache.readinto(32 * MIB - 4, memoryview(buf)[:4]) == 4 and buf[:4] == b"RAM!"


def test_readinto_allocates_nothing(xmc: ModuleType, cache: Any) -> None:
    if not cache._core.fast_paths():
        pytest.skip("the C core's builtin")
    buf = bytearray(4096)
    for i in range(1000):
        cache.readinto((i % 1000) * PAGE, buf)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()
    for i in range(10000):
        cache.readinto((i % 1000) * PAGE, buf)
    after = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert after[1] - before[0] < 4096  # peak: not even one page allocated
