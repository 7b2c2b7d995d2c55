"""A virtio-blk-like disk model: scatter-gather DMA straight between a disk image and guest RAM.

The guest hands the device a queue of requests. Each names a sector of the disk
and a scatter-gather list: the guest-physical buffers, scattered over guest
RAM, that the data comes from or goes to. The device serves each request
with one batch of locked DMA mappings and one vectored system call:

    with cache.map_sg(sg, dma=True, tag=...) as g:
        os.preadv(fd, g.buffers(), offset)     # a read: disk image -> guest RAM
        os.pwritev(fd, g.buffers(), offset)    # a write: guest RAM -> disk image

No byte is copied by Python: the kernel moves the data between the file and
the guest's pages. The device keeps up to three requests in flight. Half-way
through, the hypervisor balloons the guest and asks for every mapping to be
dropped (``invalidate()``): the mappings of the requests in flight, and only
those, are reported (one ``DMAMappingWarning`` each, named by the request's
tag). Every request then completes, and the guest's memory and the disk image
are checked byte for byte against a model of what each request did.

Run it with ``python examples/virtio_blk.py``; the test suite does.
"""

from __future__ import annotations

import os
import random
import tempfile
import warnings
from collections import deque
from dataclasses import dataclass

import xenmapcache as xmc

MIB = 1 << 20
PAGE = 4096
SECTOR = 512
RAM_SIZE = 64 * MIB
DISK_SIZE = 4 * MIB
IN_FLIGHT = 3  # requests the device works on at once
BALLOON_AFTER = 10  # the hypervisor's invalidate comes after this many requests started


@dataclass
class Request:
    """One request of the guest's queue: a sector and where its data lives in guest RAM."""

    n: int
    write: bool
    sector: int
    sg: list[tuple[int, int]]  # (guest-physical address, length)

    @property
    def tag(self) -> str:
        return f"req{self.n} {'write' if self.write else 'read'} @{self.sector}"

    @property
    def length(self) -> int:
        return sum(size for _, size in self.sg)


def make_queue(rng: random.Random, count: int) -> list[Request]:
    """Requests as a guest driver makes them: page-sized buffers anywhere in RAM, some across a bucket."""
    queue = []
    for n in range(count):
        pages = rng.randint(1, 16)
        sg = []
        for _ in range(pages):
            page = rng.randrange(RAM_SIZE // PAGE - 1)
            size = rng.choice([PAGE, PAGE, 2 * SECTOR])
            sg.append((page * PAGE, size))
        sector = rng.randrange((DISK_SIZE - sum(s for _, s in sg)) // SECTOR)
        queue.append(Request(n, rng.random() < 0.4, sector, sg))
    return queue


class VirtioBlk:
    """The device: serves requests by DMA through one MapCache."""

    def __init__(self, cache: xmc.MapCache, image: int) -> None:
        self.cache = cache
        self.fd = image
        self.in_flight: deque[tuple[Request, xmc.MappingGroup]] = deque()
        self.done = 0
        self.moved = 0

    def start(self, req: Request) -> None:
        """Map the request's buffers for DMA: they stay locked until it completes."""
        group = self.cache.map_sg(req.sg, dma=True, tag=req.tag)
        self.in_flight.append((req, group))

    def complete_oldest(self) -> None:
        """Move the oldest request's data with one system call, then unlock its buffers."""
        req, group = self.in_flight.popleft()
        with group:
            offset = req.sector * SECTOR
            if req.write:
                moved = os.pwritev(self.fd, group.buffers(), offset)
            else:
                moved = os.preadv(self.fd, group.buffers(), offset)
        assert moved == req.length, (req, moved)
        self.done += 1
        self.moved += moved


def apply(req: Request, guest: bytearray, disk: bytearray) -> None:
    """What the request does, on plain bytearrays: the model the result is checked against."""
    offset = req.sector * SECTOR
    for paddr, size in req.sg:
        if req.write:
            disk[offset : offset + size] = guest[paddr : paddr + size]
        else:
            guest[paddr : paddr + size] = disk[offset : offset + size]
        offset += size


def main() -> None:
    rng = random.Random(2024)
    queue = make_queue(rng, 40)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "disk.img")
        disk = bytearray(rng.randbytes(DISK_SIZE))
        with open(path, "wb") as f:
            f.write(disk)
        guest = bytearray(rng.randbytes(RAM_SIZE))
        ram = xmc.GuestRAM(RAM_SIZE)
        ram.write(0, guest)
        fd = os.open(path, os.O_RDWR)
        try:
            with xmc.MapCache(ram) as cache:
                device = VirtioBlk(cache, fd)
                warned: list[str] = []
                for i, req in enumerate(queue):
                    if len(device.in_flight) == IN_FLIGHT:
                        device.complete_oldest()
                    device.start(req)
                    if i + 1 == BALLOON_AFTER:
                        expected = [r.tag for r, g in device.in_flight for _ in g]
                        with warnings.catch_warnings(record=True) as caught:
                            warnings.simplefilter("always")
                            in_flight = cache.invalidate()
                        warned = [str(w.message) for w in caught if issubclass(w.category, xmc.DMAMappingWarning)]
                        assert [lm.tag for lm in in_flight] == expected
                        assert len(warned) == len(expected)
                        print(f"balloon: invalidate() with {len(device.in_flight)} requests in flight")
                        for tag in dict.fromkeys(expected):
                            print(f"warning: DMA mapping {tag!r} in flight ({expected.count(tag)} buffer(s))")
                while device.in_flight:
                    device.complete_oldest()
                assert cache.locked() == [], "every buffer was unlocked"
            for req in queue:
                apply(req, guest, disk)
            assert ram.read(0, RAM_SIZE) == guest, "guest RAM differs from the model"
            assert os.pread(fd, DISK_SIZE, 0) == disk, "the disk image differs from the model"
        finally:
            os.close(fd)
            ram.close()
    reads = sum(not r.write for r in queue)
    print(
        f"{device.done} requests served ({reads} reads, {len(queue) - reads} writes), "
        f"{device.moved} bytes moved by preadv/pwritev, {len(warned)} buffers warned about"
    )
    print("guest RAM and disk image verified byte for byte")


if __name__ == "__main__":
    main()
