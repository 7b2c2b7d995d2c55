"""Guest RAM held in a Linux memfd: the embedded backend's memory.

``GuestRAM`` is plain Python (the memfd, the holes, reads and writes) so that
the pure-Python reference implementation can use it without the C core; the C
core gets its own view of the same memfd on first use (``_c_ram``).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from ._nocopy import NoCopy
from ._validate import U64_LIMIT, as_uint
from .errors import InvalidAddress, MapCacheError, MappingError

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
MAX_SIZE = (1 << 63) - PAGE_SIZE  # the largest memfd (an off_t), in whole pages


class GuestRAM(NoCopy):
    """``size`` bytes of guest RAM in a memfd, with optional holes: the embedded backend.

    ``holes`` is an iterable of ``(start, end)`` guest ranges (end exclusive)
    that are not RAM, a PCI hole for example: a page touching a hole, or past
    ``size``, cannot be mapped (the backend reports it as a per-page error and
    maps it with no access).  The memory starts zeroed and is allocated by the
    kernel as it is touched.  Pass it to :class:`MapCache`; the cache keeps
    the memory alive even after :meth:`close`.  Also a context manager.

    :raises InvalidAddress: ``size`` is zero, not a multiple of 4096 or over
        ``2**63 - 4096`` (the largest file a memfd holds), or a hole is empty,
        negative, ends past ``2**64`` or is not a ``(start, end)`` pair.
    :raises TypeError: ``size`` or a hole bound is not an int.
    :raises OSError: the memfd cannot be made (too many open files, say).

    Cost: one memfd (a file descriptor); no memory until pages are touched.
    """

    _no_copy_why = "it owns a memfd; a copy would close it twice, a pickle would carry a bare fd number"

    def __init__(self, size: int, holes: Iterable[tuple[int, int]] = ()) -> None:
        size = as_uint(size, "size", MAX_SIZE + 1)
        if size == 0 or size % PAGE_SIZE:
            raise InvalidAddress(f"RAM size must be a positive multiple of {PAGE_SIZE}")
        self._holes = _parse_holes(holes)
        self._size = size
        self._c: Any = None
        self._fd = os.memfd_create("xenmapcache-guest-ram", os.MFD_CLOEXEC)
        try:
            os.ftruncate(self._fd, size)
        except BaseException:
            os.close(self._fd)
            raise
        self._memfd = _SharedFd(self._fd)

    @classmethod
    def open(cls, path: str | os.PathLike[str], holes: Iterable[tuple[int, int]] = ()) -> GuestRAM:
        """Make guest RAM holding a copy of the raw RAM image at ``path``.

        The size is the image's, rounded up to whole pages (at least one page),
        as it is when opened; at most that many bytes are copied, whatever
        the file holds by then (a device such as ``/dev/zero``, a file that
        grows meanwhile).

        :raises OSError: the file cannot be read.
        :raises InvalidAddress: a bad hole (see the class).

        Cost: one copy of the image into the memfd.
        """
        with open(path, "rb", buffering=0) as image:
            length = os.fstat(image.fileno()).st_size
            ram = cls(max(PAGE_SIZE, -(-length // PAGE_SIZE) * PAGE_SIZE), holes)
            try:
                done = 0  # holes too: the image is all of RAM
                while done < ram.size and (chunk := memoryview(image.read(min(1 << 20, ram.size - done)))):
                    while chunk:
                        wrote = os.pwrite(ram._fd, chunk, done)
                        chunk, done = chunk[wrote:], done + wrote
            except BaseException:
                ram.close()
                raise
        return ram

    @property
    def size(self) -> int:
        """Size of guest RAM in bytes."""
        return self._size

    @property
    def holes(self) -> list[tuple[int, int]]:
        """The holes, as ``(start, end)`` pairs."""
        return list(self._holes)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._fd < 0

    def fileno(self) -> int:
        """Return the file descriptor of the memfd holding guest RAM (still owned by this object).

        :raises MapCacheError: the guest RAM is closed.

        Cost: O(1).
        """
        self._check_open()
        return self._fd

    def page_error(self, pfn: int) -> int:
        """Return 0 when guest page ``pfn`` is RAM, else an errno saying why not.

        ``ENXIO`` (6) past the end of RAM, ``EFAULT`` (14) in a hole: what the
        backend reports for that page.

        :raises InvalidAddress: ``pfn`` is negative, or not below 2**52 (the
            page of no 64-bit guest address).
        :raises TypeError: ``pfn`` is not an int.

        Cost: O(number of holes).
        """
        start = as_uint(pfn, "pfn", 1 << (64 - PAGE_SHIFT)) << PAGE_SHIFT
        if start + PAGE_SIZE > self._size:
            return 6  # ENXIO
        for lo, hi in self._holes:
            if start < hi and lo < start + PAGE_SIZE:
                return 14  # EFAULT
        return 0

    def _check_range(self, paddr: int, n: int) -> None:
        self._check_open()
        if paddr + n > self._size:
            raise InvalidAddress(f"[{paddr:#x}, {paddr + n:#x}) is past the end of RAM")
        for lo, hi in self._holes:
            if n and paddr < hi and lo < paddr + n:
                raise MappingError(f"[{paddr:#x}, {paddr + n:#x}) touches the hole [{lo:#x}, {hi:#x})")

    def read(self, paddr: int, n: int) -> bytes:
        """Read ``n`` bytes of guest RAM at ``paddr``, straight from the memfd (no cache).

        :raises InvalidAddress: negative values, or a range past the end of RAM.
        :raises MappingError: the range touches a hole.
        :raises TypeError: ``paddr`` or ``n`` is not an int.
        :raises MapCacheError: the guest RAM is closed.

        Cost: ``pread`` system calls and a copy of ``n`` bytes.
        """
        paddr, n = as_uint(paddr, "paddr"), as_uint(n, "n")
        self._check_range(paddr, n)
        chunks = []
        while n:
            chunk = os.pread(self._fd, n, paddr)
            if not chunk:
                raise MapCacheError("short read from guest RAM")
            chunks.append(chunk)
            paddr += len(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def write(self, paddr: int, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` into guest RAM at ``paddr``, straight into the memfd (no cache).

        Checked before a byte is written: a range touching a hole writes nothing.

        :raises InvalidAddress: a negative ``paddr``, or a range past the end of RAM.
        :raises MappingError: the range touches a hole.
        :raises TypeError: ``paddr`` is not an int, or ``data`` not a buffer.
        :raises MapCacheError: the guest RAM is closed.

        Cost: ``pwrite`` system calls and a copy of ``data``.
        """
        paddr = as_uint(paddr, "paddr")
        view = memoryview(data).cast("B")
        self._check_range(paddr, len(view))
        while view:
            done = os.pwrite(self._fd, view, paddr)
            view = view[done:]
            paddr += done

    def close(self) -> None:
        """Close this handle on guest RAM; a second call does nothing.

        Caches built on it keep their own reference to the memory, which lives
        until the last of them is closed.  Raises nothing.

        Cost: one ``close`` system call.
        """
        if self._fd >= 0:
            self._fd = -1
            self._memfd.release()
        self._c = None

    def __enter__(self) -> GuestRAM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._fd < 0:
            raise MapCacheError("guest RAM is closed")

    def _share(self) -> _SharedFd:
        """The memfd, for a reference cache to keep open until it lets go
        (``release()``): one descriptor however many caches use it."""
        self._check_open()
        self._memfd.retain()
        return self._memfd

    @contextlib.contextmanager
    def _c_backend(self) -> Iterator[Any]:
        """The ``xmc_backend *`` for a C cache to retain (it keeps the memfd alive)."""
        from ._binding import binding

        yield binding()[1].xmc_ram_backend(self._c_ram())

    def _c_ram(self) -> Any:
        """The C core's ``xmc_ram *`` over the same memfd (created once)."""
        if self._c is None:
            from ._binding import binding, check

            ffi, lib = binding()
            self._check_open()
            out = ffi.new("xmc_ram **")
            check(lib.xmc_ram_new_fd(self._fd, self._size, out), "GuestRAM")
            ram = ffi.gc(out[0], lib.xmc_ram_free)
            for lo, hi in self._holes:  # one ending at 2**64 takes the top page all the same
                check(lib.xmc_ram_add_hole(ram, lo, min(hi, U64_LIMIT - 1)), "GuestRAM hole")
            self._c = ram
        return self._c

    def __repr__(self) -> str:
        return f"GuestRAM(size={self._size:#x}, holes={self._holes!r})"


class _SharedFd:
    """A file descriptor with users, closed when the last of them lets go."""

    __slots__ = ("fd", "_users", "_lock")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._users = 1
        self._lock = threading.Lock()

    def retain(self) -> None:
        with self._lock:
            self._users += 1

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0:
                os.close(self.fd)
                self.fd = -1


def _parse_holes(holes: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    parsed = []
    for hole in holes:
        try:
            lo, hi = hole
        except (TypeError, ValueError):
            raise InvalidAddress(f"a hole is a (start, end) pair, not {hole!r}") from None
        lo, hi = as_uint(lo, "hole start"), as_uint(hi, "hole end", U64_LIMIT + 1)
        if lo >= hi:
            raise InvalidAddress(f"hole ({lo:#x}, {hi:#x}) is empty")
        parsed.append((lo, hi))
    return sorted(parsed)
