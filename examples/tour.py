"""A tour of the xenmapcache API: run it with ``python examples/tour.py``.

docs/getting-started.md shows this file; the test suite runs it.
"""

import xenmapcache as xmc

ram = xmc.GuestRAM(1 << 30, holes=[(0x3000_0000, 0x3800_0000)])  # 1 GiB, a PCI hole
cache = xmc.MapCache(ram)  # bucket_shift=20 (1 MiB buckets), max_size=32 GiB

# A locked mapping: a buffer you can read and write in place.
with cache.map(0x10_0000, 4096, dma=True, tag="disk read #1") as m:
    view = memoryview(m)  # writable, format 'B', len 4096
    view[:4] = b"boot"
    view.release()  # release() refuses while views are alive
assert ram.read(0x10_0000, 4) == b"boot"  # it went straight into guest RAM

cache.write(0x2000, b"hello")  # transient copies, may span buckets
assert cache.read(0x2000, 5) == b"hello"

p = cache.map_ptr(0x2000)  # QEMU-style raw host address (unlocked)
assert cache.ram_addr(p) == 0x2000  # and back, for any pointer into the cache
assert cache.ram_addr(p + 5) == 0x2005  # interior pointers too

try:
    cache.read(0x3000_0000, 4)  # inside the PCI hole
except xmc.MappingError as exc:
    print("refused:", exc)

in_flight = cache.invalidate()  # a DMAMappingWarning per DMA mapping in flight: none here
assert in_flight == []
print(cache.stats())  # hits, misses, remaps, entries, locked, ...
cache.close()
ram.close()
