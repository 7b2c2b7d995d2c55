/*
 * fake_xengnttab.c - a stand-in for libxengnttab.so.1, so that tests can
 * drive the grant backend (csrc/gnttab.c) on a machine without Xen: load it
 * with XenGrantTable(FAKE_DOMID, library=<this .so>) or
 * xmc_gnttab_open(FAKE_DOMID, ..., "<this .so>", ...).
 *
 * "Domain" FAKE_DOMID grants FAKE_GRANTS pages, held in a memfd shared by
 * every handle of the process: grant reference r is page r, which starts out
 * with the 8-byte little-endian value FAKE_MARK + r.  A map naming a
 * reference at or past FAKE_GRANTS fails as a whole with EINVAL (the real
 * library maps all or nothing), any other domain with ESRCH.  With
 * FAKE_XENGNTTAB_NO_GNTDEV set in the environment, open() logs an error and
 * then some debug noise through the logger and fails with ENOENT, as the real
 * library does without /dev/xen/gntdev.  The counters below let tests check
 * every mapping is unmapped exactly once and with which protection it was
 * made.
 */
#define _GNU_SOURCE 1

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "xmc_gnttab.h"
#include "xmc_xenfm.h"

#define FAKE_DOMID 7u
#define FAKE_GRANTS 1000u
#define FAKE_MARK 0x4752414e54000000ull /* "\0\0\0TNARG" little-endian */
#define PAGE 4096u

struct xengntdev_handle {
    int unused;
};

int fake_map_calls;   /* successful xengnttab_map_domain_grant_refs calls */
int fake_live_pages;  /* pages mapped and not yet unmapped */
int fake_last_prot;   /* prot of the last successful map */
uint32_t fake_last_first_ref;

static int domain_fd = -1;

static void logf_(struct xentoollog_logger *logger, unsigned level, int errnoval,
                  const char *fmt, ...)
{
    xmc_xtl_logger *l = (xmc_xtl_logger *)(void *)logger;
    va_list ap;

    va_start(ap, fmt);
    l->vmessage(logger, level, errnoval, "gnttab", fmt, ap);
    va_end(ap);
}

static int domain_memory(void)
{
    int fd;

    if (domain_fd >= 0)
        return domain_fd;
    fd = memfd_create("fake-xen-grants", MFD_CLOEXEC);
    if (fd < 0 || ftruncate(fd, (off_t)FAKE_GRANTS * PAGE) != 0)
        return -1;
    for (unsigned long r = 0; r < FAKE_GRANTS; r++) {
        unsigned long long mark = FAKE_MARK + r;
        unsigned char head[8];
        for (int i = 0; i < 8; i++)
            head[i] = (unsigned char)(mark >> (8 * i));
        if (pwrite(fd, head, sizeof(head), (off_t)(r * PAGE)) != (ssize_t)sizeof(head)) {
            close(fd);
            return -1;
        }
    }
    domain_fd = fd;
    return fd;
}

xmc_gt_open_fn xengnttab_open;
xmc_gt_close_fn xengnttab_close;
xmc_gt_map_refs_fn xengnttab_map_domain_grant_refs;
xmc_gt_unmap_fn xengnttab_unmap;

struct xengntdev_handle *xengnttab_open(struct xentoollog_logger *logger, unsigned open_flags)
{
    (void)open_flags;
    if (getenv("FAKE_XENGNTTAB_NO_GNTDEV")) {
        if (logger) {
            logf_(logger, 8 /* XTL_ERROR */, ENOENT, "Could not open %s", "the fake gntdev");
            logf_(logger, 1 /* XTL_DEBUG */, -1, "debug noise after the error");
        }
        errno = ENOENT;
        return NULL;
    }
    if (domain_memory() < 0)
        return NULL;
    return calloc(1, sizeof(struct xengntdev_handle));
}

int xengnttab_close(struct xengntdev_handle *xgt)
{
    free(xgt);
    return 0;
}

void *xengnttab_map_domain_grant_refs(struct xengntdev_handle *xgt, uint32_t count,
                                      uint32_t domid, uint32_t *refs, int prot)
{
    unsigned char *base;

    (void)xgt;
    if (domid != FAKE_DOMID) {
        errno = ESRCH;
        return NULL;
    }
    for (uint32_t i = 0; i < count; i++)
        if (refs[i] >= FAKE_GRANTS) {
            errno = EINVAL;
            return NULL;
        }
    base = mmap(NULL, (size_t)count * PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED)
        return NULL;
    for (uint32_t i = 0; i < count; i++)
        if (mmap(base + (size_t)i * PAGE, PAGE, prot, MAP_SHARED | MAP_FIXED, domain_fd,
                 (off_t)refs[i] * PAGE) == MAP_FAILED) {
            munmap(base, (size_t)count * PAGE);
            return NULL;
        }
    fake_map_calls++;
    fake_live_pages += (int)count;
    fake_last_prot = prot;
    fake_last_first_ref = refs[0];
    return base;
}

int xengnttab_unmap(struct xengntdev_handle *xgt, void *start_address, uint32_t count)
{
    (void)xgt;
    if (munmap(start_address, (size_t)count * PAGE) != 0)
        return -1;
    fake_live_pages -= (int)count;
    return 0;
}
