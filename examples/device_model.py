"""A device model's life: video RAM, a disk doing DMA, and a balloon event.

A small emulator with two devices works on a 256 MiB guest:

- a display adapter maps its 4 MiB of video RAM for good: a locked mapping that
  is *not* DMA (device memory, kind [a] of docs/concepts.md);
- a disk controller serves read requests by DMA: it locks the guest buffer
  (``dma=True``, kind [b]), copies sectors from its disk image into it with
  ``os.preadv`` straight into the mapping, and unlocks it when done.

Half-way through, the hypervisor balloons the guest and asks for every mapping
to be dropped (``invalidate()``): the transfers still in flight are reported,
one ``DMAMappingWarning`` each, the video RAM is kept silently. The transfers
then complete and every sector is checked in guest RAM.

Run it with ``python examples/device_model.py``; the test suite does.
"""

from __future__ import annotations

import os
import tempfile
import warnings

import xenmapcache as xmc

MIB = 1 << 20
SECTOR = 512
VRAM = 0x0800_0000  # guest address of the video RAM
VRAM_SIZE = 4 * MIB


class Display:
    """Video RAM, mapped once for the life of the device (not DMA)."""

    def __init__(self, cache: xmc.MapCache) -> None:
        self.vram = cache.map(VRAM, VRAM_SIZE, tag="VRAM")

    def clear(self, attr: int) -> None:
        with memoryview(self.vram) as view:
            view[:] = bytes([0x20, attr]) * (VRAM_SIZE // 2)


class Disk:
    """A disk controller: reads sectors of an image file into guest memory by DMA."""

    def __init__(self, cache: xmc.MapCache, image: int) -> None:
        self.cache, self.image = cache, image
        self.in_flight: dict[int, tuple[xmc.Mapping, int]] = {}  # request -> buffer, first sector

    def start_read(self, request: int, sector: int, count: int, paddr: int) -> None:
        """Lock the guest buffer of a request; the data arrives in ``finish``."""
        buffer = self.cache.map(paddr, count * SECTOR, dma=True, tag=f"disk read #{request} (sector {sector})")
        self.in_flight[request] = buffer, sector

    def finish(self, request: int) -> None:
        """Copy the sectors into the locked buffer, then unlock it."""
        buffer, sector = self.in_flight.pop(request)
        with buffer, memoryview(buffer) as view:  # the view goes first, then the lock
            done = os.preadv(self.image, [view], sector * SECTOR)
            assert done == buffer.size


def main() -> None:
    ram = xmc.GuestRAM(256 * MIB, holes=[(0x0C00_0000, 0x0D00_0000)])
    with tempfile.TemporaryFile() as image, xmc.MapCache(ram) as cache:
        image.write(os.urandom(1024 * SECTOR))  # a 512 KiB disk image
        image.flush()
        display = Display(cache)
        display.clear(0x07)
        disk = Disk(cache, image.fileno())

        requests = {n: (n * 16, 16, 0x0010_0000 + n * 0x9000) for n in range(6)}  # sector, count, guest buffer
        for n, (sector, count, paddr) in requests.items():
            disk.start_read(n, sector, count, paddr)
        for n in (0, 1, 2):  # the first three complete before the balloon event
            disk.finish(n)

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            in_flight = cache.invalidate()  # the hypervisor: drop every mapping
        for w in caught:
            print("warning:", w.message)
        assert [lm.tag for lm in in_flight] == [f"disk read #{n} (sector {n * 16})" for n in (3, 4, 5)]
        assert len(caught) == 3 and all(issubclass(w.category, xmc.DMAMappingWarning) for w in caught)
        assert all("VRAM" not in str(w.message) for w in caught)  # device memory: silent

        for n in (3, 4, 5):  # the transfers in flight complete after all
            disk.finish(n)
        for n, (sector, count, paddr) in requests.items():
            image.seek(sector * SECTOR)
            assert ram.read(paddr, count * SECTOR) == image.read(count * SECTOR), n
        assert ram.read(VRAM, 2) == b"\x20\x07"  # the video RAM never moved
        display.vram.release()
        stats = cache.stats()
        assert stats.locked == 0 and stats.invalidations == 1
        print(f"{len(requests)} transfers verified in guest RAM, {len(caught)} warned about; {stats}")
    ram.close()


if __name__ == "__main__":
    main()
