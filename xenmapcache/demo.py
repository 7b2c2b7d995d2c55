"""``python -m xenmapcache demo``: an emulator's life, told through its mapcache.

A 1 GiB guest with a PCI hole boots: the firmware maps an option ROM and the
video card its VRAM for good (device memory, [a]); a disk model starts DMA
transfers ([b]); the CPU emulation reads guest memory all the while.  Then the
hypervisor balloons the guest and asks for every mapping to be dropped: the
mapcache warns once per DMA transfer still in flight and keeps device memory
silently.  The transfers complete, their data is checked in guest RAM, and a
statistics table closes the story.
"""

from __future__ import annotations

import logging
import random
import sys
import warnings
from typing import TextIO

from . import DMAMappingWarning, GuestRAM, MapCache, MappingError
from ._cli import Parser

GIB = 1 << 30
MIB = 1 << 20
PCI_HOLE = (0x3000_0000, 0x3800_0000)  # 128 MiB of MMIO space inside the 1 GiB
OPTION_ROM = 0x000C_0000
VRAM = 0x1000_0000
VRAM_SIZE = 8 * MIB
SECTOR = 512


def run(out: TextIO = sys.stdout, seed: int = 2026) -> int:
    """Play the demo, writing the story to ``out``; returns the exit status."""

    def say(text: str = "") -> None:
        print(text, file=out)

    rng = random.Random(seed)
    ram = GuestRAM(GIB, holes=[PCI_HOLE])
    say("xenmapcache demo: the mapcache of an emulator running a 1 GiB Xen guest")
    say(f"  guest RAM: {GIB // MIB} MiB in a memfd, PCI hole at [{PCI_HOLE[0]:#x}, {PCI_HOLE[1]:#x})")
    with MapCache(ram, bucket_shift=20) as cache:
        say(f"  buckets of {1 << cache.bucket_shift} bytes; one request may map up to {cache.max_size // GIB} GiB")
        say()

        say("1. Boot: device memory is mapped for good (locked, not DMA: kind [a])")
        ram.write(OPTION_ROM, b"\x55\xaa" + bytes(510))
        rom = cache.map(OPTION_ROM, 64 * 1024, tag="option ROM")
        vram = cache.map(VRAM, VRAM_SIZE, tag="VRAM")
        signature = bytes(memoryview(rom)[:2])
        say(f"   option ROM at guest {OPTION_ROM:#x} -> host {rom.address:#x}, signature {signature.hex()}")
        memoryview(vram)[: 4 * 640] = b"\x20\x07" * (2 * 640)  # a text screen of blanks
        say(f"   VRAM       at guest {VRAM:#x} -> host {vram.address:#x}, {VRAM_SIZE // MIB} MiB")
        say()

        say("2. The disk model starts DMA transfers into guest memory (locked, DMA: kind [b])")
        transfers = []
        for n in range(4):
            paddr = rng.randrange(0, PCI_HOLE[0] // SECTOR - 64) * SECTOR
            sectors = rng.choice((8, 16, 64))
            tag = f"disk read #{n} ({sectors} sectors)"
            m = cache.map(paddr, sectors * SECTOR, dma=True, tag=tag)
            payload = rng.randbytes(sectors * SECTOR)
            transfers.append((m, payload))
            say(f"   {tag:<28} guest {paddr:#011x} -> host {m.address:#x}")
        say()

        say("3. The CPU emulation reads guest memory through the cache (unlocked, transient)")
        reads = 5000
        for _ in range(reads):
            cache.read(rng.randrange(0, PCI_HOLE[0] - 8), 8)
        try:
            cache.read(PCI_HOLE[0] + 0x100, 4)
        except MappingError as exc:
            say(f"   a read inside the PCI hole is refused: {exc}")
        st = cache.stats()
        say(f"   {reads} reads: {st.hits} hits, {st.misses} misses, {st.entries} entries live")
        say()

        say("4. Balloon event: the hypervisor asks the emulator to drop every mapping")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            in_flight = cache.invalidate()
        dma_warnings = [w for w in caught if issubclass(w.category, DMAMappingWarning)]
        for w in dma_warnings:
            say(f"   WARNING {w.message}")
        st = cache.stats()
        say(
            f"   {len(dma_warnings)} DMA transfer(s) warned about, none for the option ROM or VRAM; "
            f"{st.entries} entries kept (the locked ones)"
        )
        say()

        say("5. The transfers complete: data lands in guest RAM through the locked mappings")
        for m, payload in transfers:
            memoryview(m)[:] = payload
            m.release()
        bad = [m.tag for m, payload in transfers if ram.read(m.paddr, m.size) != payload]
        say(f"   {len(transfers) - len(bad)} of {len(transfers)} transfers verified byte for byte in guest RAM")
        say(f"   the VRAM still reads back: {bytes(memoryview(vram)[:4]).hex()}")
        vram.release()
        rom.release()
        say()

        st = cache.stats()
        say("Statistics")
        for name in ("hits", "misses", "remaps", "entries", "locked", "dma_locked", "mapped_bytes", "invalidations"):
            say(f"   {name:<14} {getattr(st, name):>12}")
        ok = not bad and len(dma_warnings) == len(transfers) == len(in_flight) and st.locked == 0
    ram.close()
    say()
    say("demo finished: OK" if ok else "demo finished: FAILED")
    return 0 if ok else 1


def main(argv: list[str] | None = None, prog: str = "python -m xenmapcache demo") -> int:
    """Entry point of ``xenmapcache demo`` (it takes no options)."""
    Parser(prog, main.__doc__).parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="   log %(levelname)s %(name)s: %(message)s")
    return run()
