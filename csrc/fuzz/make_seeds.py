"""Write the seed corpus of fuzz_cache.c into csrc/fuzz/corpus/.

Each seed is a short, readable call sequence in the harness's encoding, so the
fuzzer starts from inputs that already reach every operation: locks and DMA,
collisions in a small cache, holes, translate, dummy mode and replace, the
lock limit.  Run it again after changing the encoding:
``python csrc/fuzz/make_seeds.py``.  Crash inputs found later are added to the
same folder by hand, next to these.
"""

from __future__ import annotations

import pathlib
import struct

CORPUS = pathlib.Path(__file__).resolve().parent / "corpus"

# Opcodes (byte % 20) of fuzz_cache.c's run().
MAP, MAP_SG, MAP_LOCK, MAP_DMA, MAP_FLAGS = 0, 1, 2, 3, 4
UNLOCK, UNLOCK_TAG, UNLOCK_FOREIGN, RAM_ADDR, UNLOCK_SG = 5, 6, 7, 8, 9
INVALIDATE, REPLACE, READ, WRITE, HELD_WRITE, TRACE = 10, 11, 12, 13, 14, 15
DUMMY, LOCK_LIMIT, CHECK_RAM, STATS = 16, 17, 18, 19


def header(shift: int = 12, slots: int = 4, lock_limit: int = 0, translate: bool = False,
           hole2_page: int = 40, hole2_pages: int = 1, free_locked: bool = False,
           grants: bool = False) -> bytes:
    """Shift 12..14, 1..8 slots, lock limit 1..4 (0 = unlimited), second hole;
    free_locked: end with xmc_cache_free while mappings are still locked;
    grants: grant rules (the shift is then 12)."""
    # h0 % 3 picks the shift, (h0 >> 2) % 8 the number of slots.
    h0 = next(c for c in range(256) if c % 3 == shift - 12 and (c >> 2) % 8 == slots - 1)
    h1 = 0x80 if lock_limit == 0 else (lock_limit - 1)
    if translate:
        h1 |= 0x40
    if free_locked:
        h1 |= 0x20
    if grants:
        h1 |= 0x1c
    h2 = (hole2_page % 64) | ((hole2_pages - 1) << 6)
    return bytes([h0, h1, h2])


def page_addr(page: int, offset: int = 0) -> bytes:
    return bytes([0, page]) + struct.pack("<H", offset)


def hole_addr(offset: int) -> bytes:
    return bytes([160]) + struct.pack("<H", offset)


def top_addr(below: int) -> bytes:
    return bytes([245]) + struct.pack("<H", below)


def size0() -> bytes:
    return bytes([0])


def small(n: int) -> bytes:
    return bytes([100, n - 1])


def sized(n: int) -> bytes:
    return bytes([200]) + struct.pack("<H", n - 1)


def map_sg(flags: int, *segments: bytes) -> bytes:
    """A batch: each segment is address + size bytes, or b"" to repeat the one before."""
    body = b"".join(
        (b"" if i == 0 else bytes([10]) if not seg else bytes([200])) + seg
        for i, seg in enumerate(segments)
    )
    return bytes([MAP_SG, len(segments) - 1, flags]) + body


def unlock_sg(tag_of: int, *held: int) -> bytes:
    """Unlock held mappings (indexes) under the tag of held mapping tag_of."""
    return bytes([UNLOCK_SG, len(held) - 1, tag_of]) + b"".join(bytes([100, h]) for h in held)


def seeds() -> dict[str, bytes]:
    s: dict[str, bytes] = {}
    s["basic"] = header() + b"".join([
        bytes([MAP_LOCK]) + page_addr(1, 0x10) + small(16),
        bytes([MAP_DMA]) + page_addr(5, 0x100) + sized(5000),
        bytes([MAP]) + page_addr(9) + size0(),
        bytes([RAM_ADDR, 0]) + struct.pack("<H", 3),
        bytes([HELD_WRITE, 1]),
        bytes([WRITE]) + page_addr(2, 7) + struct.pack("<H", 40) + bytes(range(40)),
        bytes([READ]) + page_addr(2, 0) + struct.pack("<H", 100),
        bytes([INVALIDATE, UNLOCK, 0, UNLOCK_TAG, 0, INVALIDATE, CHECK_RAM, STATS]),
    ])
    s["collisions"] = header(shift=12, slots=2) + b"".join(
        bytes([MAP_LOCK if i % 3 == 0 else MAP]) + page_addr(2 * i) + size0()
        for i in range(12)
    ) + bytes([INVALIDATE, UNLOCK, 0, INVALIDATE])
    s["holes_translate"] = header(translate=True, hole2_page=30, hole2_pages=2) + b"".join([
        bytes([MAP_LOCK]) + hole_addr(0x10) + small(8),
        bytes([MAP]) + page_addr(30) + size0(),
        bytes([MAP]) + page_addr(70) + size0(),
        bytes([READ]) + hole_addr(0) + struct.pack("<H", 0x3000),
        bytes([MAP_DMA]) + top_addr(100) + small(50),
        bytes([INVALIDATE, UNLOCK_FOREIGN, 0, 0, 0]),
    ])
    s["dummy_replace"] = header(shift=13, slots=3) + b"".join([
        bytes([DUMMY]),
        bytes([MAP_LOCK]) + hole_addr(0x20) + small(32),
        bytes([MAP_DMA]) + page_addr(66) + size0(),
        bytes([HELD_WRITE, 0]),
        bytes([DUMMY]),
        bytes([REPLACE]) + page_addr(24) + page_addr(12) + size0() + bytes([0]),
        bytes([REPLACE]) + page_addr(2) + page_addr(25) + size0() + bytes([1, 0]),
        bytes([INVALIDATE, RAM_ADDR, 1, 0, 0, UNLOCK, 0, INVALIDATE]),
    ])
    s["lock_limit"] = header(shift=14, slots=1, lock_limit=2) + b"".join(
        bytes([MAP_LOCK]) + page_addr(3, 8 * i) + small(4) for i in range(4)
    ) + bytes([LOCK_LIMIT, 1]) + bytes([MAP_DMA]) + page_addr(3) + size0() + bytes(
        [UNLOCK, 0, UNLOCK, 0, MAP_FLAGS, 6]) + page_addr(3) + size0()
    s["bad_input"] = header() + b"".join([
        bytes([MAP]) + top_addr(0) + bytes([255]),
        bytes([MAP_LOCK]) + page_addr(1) + bytes([236]),
        bytes([MAP_FLAGS, 0xff]) + page_addr(1) + size0(),
        bytes([REPLACE]) + top_addr(1) + page_addr(1) + bytes([238]) + bytes([0]),
        bytes([WRITE]) + top_addr(3) + struct.pack("<H", 8) + bytes(8),
        bytes([UNLOCK_FOREIGN, 255, RAM_ADDR, 254]),
    ])
    s["replace_top"] = header(shift=12, slots=4, lock_limit=0) + b"".join([
        bytes([MAP_LOCK]) + page_addr(3, 0xf00) + sized(0x300),  # two-page entry
        bytes([REPLACE]) + page_addr(3, 0xf00) + top_addr(0x2ff) + sized(0x300) + bytes([0]),
        bytes([HELD_WRITE, 0, INVALIDATE, UNLOCK, 0]),
    ])
    s["many_locks_then_free"] = header(shift=13, slots=8, free_locked=True) + b"".join(
        bytes([MAP_LOCK if i % 2 else MAP_DMA]) + page_addr(i % 20, 8 * i) + small(8)
        for i in range(80)
    )
    s["batches"] = header(shift=13, slots=2, lock_limit=3, translate=True, hole2_page=40) + b"".join([
        map_sg(2, page_addr(1, 0x10) + small(16), page_addr(1, 0x20) + small(8), b"",
               page_addr(9) + size0()),
        map_sg(0, page_addr(12, 0x800) + sized(0x3000), hole_addr(0x10) + small(8)),
        map_sg(2, page_addr(3) + small(4), page_addr(40) + small(4)),  # the second fails
        map_sg(0, page_addr(1) + small(4), b"", b""),  # a lock too many
        map_sg(6, page_addr(1) + small(4)),  # bad flags
        bytes([MAP_SG, 254, 0]) + page_addr(1) + small(4),  # SIZE_MAX segments
        unlock_sg(0, 0, 1, 2),
        unlock_sg(0, 0, 0),  # once too often
        unlock_sg(1, 1, 2),
        bytes([INVALIDATE, STATS]),
    ])
    s["grants"] = header(slots=4, lock_limit=2, grants=True) + b"".join([
        bytes([MAP]) + page_addr(1) + size0(),  # refused: unlocked
        bytes([MAP_LOCK]) + page_addr(1, 0x10) + small(16),
        bytes([MAP_DMA]) + page_addr(1, 0x20) + small(8),  # the same entry
        bytes([MAP_LOCK]) + page_addr(5) + size0(),  # slot 1 again: a new entry
        bytes([MAP_LOCK]) + page_addr(1) + size0(),  # over the lock limit
        bytes([READ]) + page_addr(1) + struct.pack("<H", 8),
        bytes([REPLACE]) + page_addr(1) + page_addr(2) + size0() + bytes([0]),
        bytes([INVALIDATE, UNLOCK, 0, UNLOCK, 0, STATS, UNLOCK_TAG, 0, INVALIDATE]),
        bytes([MAP_LOCK]) + page_addr(1, 0x10) + small(16),  # mapped anew
    ])
    s["grant_batches"] = header(slots=4, lock_limit=3, grants=True) + b"".join([
        map_sg(2, page_addr(1, 0x10) + small(16), page_addr(2) + sized(0x1800), b""),
        map_sg(0, page_addr(3) + small(4), page_addr(24) + small(4)),  # a hole: undone
        map_sg(0, page_addr(1) + small(4), b"", b""),  # a lock too many on page 1
        map_sg(0, page_addr(1) + small(4), b""),
        unlock_sg(0, 0, 1),
        unlock_sg(0, 2),  # another batch's address
        unlock_sg(1, 1, 2),
        bytes([STATS, INVALIDATE]),
    ])
    s["traced"] = header(shift=13, slots=2, lock_limit=2, translate=True) + b"".join([
        bytes([TRACE]),  # the hook on: every call below reports, hits included
        bytes([MAP]) + page_addr(1) + size0(),
        bytes([MAP]) + page_addr(1) + size0(),
        bytes([MAP_DMA]) + page_addr(5, 0x100) + small(16),
        bytes([MAP_LOCK]) + hole_addr(0x10) + small(8),  # translated
        map_sg(2, page_addr(3) + small(4), page_addr(40) + small(4)),  # undone
        bytes([MAP_LOCK]) + page_addr(5) + size0(),
        bytes([MAP_LOCK]) + page_addr(5) + size0(),  # over the lock limit
        bytes([RAM_ADDR, 0]) + struct.pack("<H", 3),
        bytes([REPLACE]) + page_addr(1) + page_addr(2) + size0() + bytes([0]),
        bytes([INVALIDATE, UNLOCK, 0, UNLOCK_FOREIGN, 0, 0, 0]),
        bytes([TRACE]),  # off again: the fast path is back
        bytes([MAP]) + page_addr(1) + size0(),
        bytes([TRACE, INVALIDATE, STATS]),
    ])
    return s


def main() -> None:
    CORPUS.mkdir(exist_ok=True)
    for name, data in seeds().items():
        (CORPUS / f"seed-{name}").write_bytes(data)
        print(f"{name}: {len(data)} bytes")


if __name__ == "__main__":
    main()
