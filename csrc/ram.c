/*
 * ram.c - guest RAM held in a Linux memfd: the embedded backend.
 *
 * Guest page p lives at offset p * 4096 of the memfd.  Pages inside a hole
 * (say a PCI hole) or past the end are not RAM: map() reports them as
 * per-page errors and leaves them mapped with no access, so a stray access
 * faults instead of reading the wrong memory.  The object is reference
 * counted: caches built on it retain it, so it lives until the last goes.
 */
#include "xmc_internal.h"

#define COPY_CHUNK (256u * 1024u)

/*
 * memfd_create(2).  glibc declares it from 2.27 on; against an older glibc
 * (the manylinux2014 baseline of the wheels, glibc 2.17) it is the system
 * call itself, which Linux has had since 3.17.
 */
#if defined(__GLIBC__) && (__GLIBC__ < 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ < 27))
#include <sys/syscall.h>
#ifndef MFD_CLOEXEC
#define MFD_CLOEXEC 0x0001U
#endif
static int ram_memfd(const char *name, unsigned flags)
{
    return (int)syscall(SYS_memfd_create, name, flags);
}
#else
static int ram_memfd(const char *name, unsigned flags)
{
    return memfd_create(name, flags);
}
#endif

typedef struct hole {
    uint64_t start, end; /* [start, end) in bytes */
} hole;

struct xmc_ram {
    xmc_backend be;
    atomic_uint refs;
    int fd;
    uint64_t size;
    hole *holes;
    size_t nr_holes;
};

/* Mark in errs[] the pages of [first, first + n) that are not RAM. */
static size_t page_errors(const xmc_ram *ram, uint64_t first, size_t n, int *errs)
{
    uint64_t ram_pages = ram->size >> XMC_PAGE_SHIFT;
    size_t bad = 0, i = n; /* i: the first page past the end, n if none */

    /* Only the pages past the end, not every page: this runs on every miss. */
    if (first >= ram_pages)
        i = 0;
    else if (ram_pages - first < n)
        i = (size_t)(ram_pages - first);
    for (; i < n; i++) {
        errs[i] = ENXIO;
        bad++;
    }
    for (size_t h = 0; h < ram->nr_holes; h++) {
        uint64_t hs = ram->holes[h].start >> XMC_PAGE_SHIFT;
        uint64_t he = (ram->holes[h].end >> XMC_PAGE_SHIFT) + /* no overflow near 2**64 */
                      ((ram->holes[h].end & (XMC_PAGE_SIZE - 1)) != 0);
        uint64_t lo = hs > first ? hs : first;
        uint64_t hi = he < first + n ? he : first + n;

        for (uint64_t p = lo; p < hi; p++)
            if (!errs[p - first]) {
                errs[p - first] = EFAULT;
                bad++;
            }
    }
    return bad;
}

static int ram_map(void *opaque, void *fixed, uint64_t first_pfn, size_t nr_pages,
                   int *errs, void **out)
{
    xmc_ram *ram = opaque;
    int fixflag = fixed ? MAP_FIXED : 0;
    size_t len, bad;
    uint8_t *base;

    /* The last page, first_pfn + nr_pages - 1, may be the last of 2**64. */
    if (nr_pages == 0 || nr_pages > (SIZE_MAX >> XMC_PAGE_SHIFT) ||
        first_pfn > (UINT64_MAX >> XMC_PAGE_SHIFT) ||
        nr_pages - 1 > (UINT64_MAX >> XMC_PAGE_SHIFT) - first_pfn)
        return XMC_EINVAL;
    len = nr_pages << XMC_PAGE_SHIFT;
    bad = page_errors(ram, first_pfn, nr_pages, errs);
    if (bad == 0) {
        base = mmap(fixed, len, PROT_READ | PROT_WRITE, MAP_SHARED | fixflag, ram->fd,
                    (off_t)(first_pfn << XMC_PAGE_SHIFT));
        if (base == MAP_FAILED)
            return XMC_ESYS;
        *out = base;
        return XMC_OK;
    }
    base = mmap(fixed, len, PROT_NONE,
                MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | fixflag, -1, 0);
    if (base == MAP_FAILED)
        return XMC_ESYS;
    for (size_t i = 0; i < nr_pages;) {
        size_t j = i;

        if (errs[i]) {
            i++;
            continue;
        }
        while (j < nr_pages && !errs[j])
            j++;
        if (mmap(base + (i << XMC_PAGE_SHIFT), (j - i) << XMC_PAGE_SHIFT,
                 PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, ram->fd,
                 (off_t)((first_pfn + i) << XMC_PAGE_SHIFT)) == MAP_FAILED) {
            if (!fixed)
                munmap(base, len);
            return XMC_ESYS;
        }
        i = j;
    }
    *out = base;
    return XMC_OK;
}

static int ram_unmap(void *opaque, void *addr, size_t len)
{
    (void)opaque;
    return munmap(addr, len) ? XMC_ESYS : XMC_OK;
}

static void ram_retain(void *opaque)
{
    xmc_ram *ram = opaque;

    atomic_fetch_add(&ram->refs, 1);
}

static void ram_release(void *opaque)
{
    xmc_ram *ram = opaque;

    if (atomic_fetch_sub(&ram->refs, 1) != 1)
        return;
    close(ram->fd);
    free(ram->holes);
    free(ram);
}

/* Wrap fd (which we now own) as guest RAM of `size` bytes. */
static int ram_wrap(int fd, uint64_t size, xmc_ram **out)
{
    xmc_ram *ram = calloc(1, sizeof(*ram));

    if (!ram) {
        close(fd);
        return XMC_ENOMEM;
    }
    ram->fd = fd;
    ram->size = size;
    atomic_init(&ram->refs, 1);
    ram->be = (xmc_backend){ .opaque = ram, .map = ram_map, .unmap = ram_unmap,
                             .retain = ram_retain, .release = ram_release };
    *out = ram;
    return XMC_OK;
}

static bool ram_size_ok(uint64_t size)
{
    return size && size % XMC_PAGE_SIZE == 0 && size <= (uint64_t)INT64_MAX;
}

int xmc_ram_new(uint64_t size, xmc_ram **out)
{
    int fd;

    if (!out)
        return XMC_EINVAL;
    *out = NULL;
    if (!ram_size_ok(size))
        return XMC_EINVAL;
    fd = ram_memfd("xenmapcache-guest-ram", MFD_CLOEXEC);
    if (fd < 0)
        return XMC_ESYS;
    if (ftruncate(fd, (off_t)size) != 0) {
        close(fd);
        return XMC_ESYS;
    }
    return ram_wrap(fd, size, out);
}

int xmc_ram_new_fd(int fd, uint64_t size, xmc_ram **out)
{
    struct stat st;
    int own;

    if (!out)
        return XMC_EINVAL;
    *out = NULL;
    if (!ram_size_ok(size) || fd < 0)
        return XMC_EINVAL;
    if (fstat(fd, &st) != 0)
        return XMC_ESYS;
    if ((uint64_t)st.st_size < size)
        return XMC_EINVAL;
    own = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (own < 0)
        return XMC_ESYS;
    return ram_wrap(own, size, out);
}

static int copy_file(int from, xmc_ram *ram)
{
    uint8_t *buf = malloc(COPY_CHUNK);
    uint64_t off = 0;
    int rc = XMC_OK;

    if (!buf)
        return XMC_ENOMEM;
    for (;;) {
        ssize_t got = read(from, buf, COPY_CHUNK);

        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0) {
            rc = got < 0 ? XMC_ESYS : XMC_OK;
            break;
        }
        if (off + (uint64_t)got > ram->size) { /* the file grew under us */
            rc = XMC_EINVAL;
            break;
        }
        rc = xmc_ram_write(ram, off, buf, (size_t)got);
        if (rc != XMC_OK)
            break;
        off += (uint64_t)got;
    }
    free(buf);
    return rc;
}

int xmc_ram_open(const char *path, xmc_ram **out)
{
    struct stat st;
    uint64_t size;
    int fd, rc;

    if (!out || !path)
        return XMC_EINVAL;
    *out = NULL;
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return XMC_ESYS;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return S_ISREG(st.st_mode) ? XMC_ESYS : XMC_EINVAL;
    }
    size = ((uint64_t)st.st_size + XMC_PAGE_SIZE - 1) & ~(XMC_PAGE_SIZE - 1);
    rc = xmc_ram_new(size, out);
    if (rc == XMC_OK) {
        rc = copy_file(fd, *out);
        if (rc != XMC_OK) {
            xmc_ram_free(*out);
            *out = NULL;
        }
    }
    close(fd);
    return rc;
}

int xmc_ram_add_hole(xmc_ram *ram, uint64_t start, uint64_t end)
{
    hole *grown;

    if (!ram || start >= end)
        return XMC_EINVAL;
    grown = realloc(ram->holes, (ram->nr_holes + 1) * sizeof(*grown));
    if (!grown)
        return XMC_ENOMEM;
    grown[ram->nr_holes++] = (hole){ start, end };
    ram->holes = grown;
    return XMC_OK;
}

int xmc_ram_size(const xmc_ram *ram, uint64_t *out)
{
    if (!ram || !out)
        return XMC_EINVAL;
    *out = ram->size;
    return XMC_OK;
}

/* Is [paddr, paddr + n) RAM?  XMC_EINVAL past the end, XMC_EMAP in a hole. */
static int ram_range_check(const xmc_ram *ram, uint64_t paddr, size_t n)
{
    if (!xmc_range_ok(paddr, n) || paddr + n > ram->size)
        return XMC_EINVAL;
    for (size_t h = 0; h < ram->nr_holes; h++)
        if (n && paddr < ram->holes[h].end && ram->holes[h].start < paddr + n)
            return XMC_EMAP;
    return XMC_OK;
}

/* Read or write n bytes at paddr through the file, a pread() or pwrite() at a
 * time until done (one that was interrupted is retried); the buffer is
 * written only when reading. */
static int ram_io(xmc_ram *ram, uint64_t paddr, const void *buf, size_t n, bool write)
{
    const uint8_t *p = buf;
    int rc;

    if (!ram || (!buf && n))
        return XMC_EINVAL;
    if ((rc = ram_range_check(ram, paddr, n)) != XMC_OK)
        return rc;
    while (n) {
        ssize_t done = write ? pwrite(ram->fd, p, n, (off_t)paddr)
                             : pread(ram->fd, (void *)(uintptr_t)p, n, (off_t)paddr);

        if (done < 0 && errno == EINTR)
            continue;
        if (done <= 0)
            return XMC_ESYS;
        p += done;
        paddr += (uint64_t)done;
        n -= (size_t)done;
    }
    return XMC_OK;
}

int xmc_ram_read(xmc_ram *ram, uint64_t paddr, void *buf, size_t n)
{
    return ram_io(ram, paddr, buf, n, false);
}

int xmc_ram_write(xmc_ram *ram, uint64_t paddr, const void *buf, size_t n)
{
    return ram_io(ram, paddr, buf, n, true);
}

const xmc_backend *xmc_ram_backend(xmc_ram *ram)
{
    return ram ? &ram->be : NULL;
}

void xmc_ram_free(xmc_ram *ram)
{
    if (ram)
        ram_release(ram);
}
