/*
 * fake_xenforeignmemory.c - a stand-in for libxenforeignmemory.so.1, so that
 * tests can drive the Xen backend (csrc/xen.c) on a machine without Xen:
 * load it with XenForeignMemory(FAKE_DOMID, library=<this .so>).
 *
 * "Domain" FAKE_DOMID has FAKE_PAGES pages in a memfd; page p starts with the
 * 8-byte little-endian value p.  Pages at or past FAKE_PAGES fail with
 * -EINVAL in err[] (and stay mapped with no access), any other domain fails
 * the whole call with ESRCH.  With FAKE_XENFM_NO_PRIVCMD set in the
 * environment, open() logs an error and then some debug noise through the
 * logger and fails with ENOENT, as the real library does without
 * /dev/xen/privcmd.  fake_fixed_maps counts calls
 * with MAP_FIXED.
 */
#define _GNU_SOURCE 1

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "xmc_xenfm.h"

#define FAKE_DOMID 7u
#define FAKE_PAGES 4000u
#define PAGE 4096u

struct xenforeignmemory_handle {
    int fd;
};

int fake_fixed_maps;

static void logf_(struct xentoollog_logger *logger, unsigned level, int errnoval,
                  const char *fmt, ...)
{
    xmc_xtl_logger *l = (xmc_xtl_logger *)(void *)logger;
    va_list ap;

    va_start(ap, fmt);
    l->vmessage(logger, level, errnoval, "xenforeignmemory", fmt, ap);
    va_end(ap);
}

xmc_fm_open_fn xenforeignmemory_open;
xmc_fm_close_fn xenforeignmemory_close;
xmc_fm_map2_fn xenforeignmemory_map2;
xmc_fm_unmap_fn xenforeignmemory_unmap;

struct xenforeignmemory_handle *xenforeignmemory_open(struct xentoollog_logger *logger,
                                                      unsigned open_flags)
{
    struct xenforeignmemory_handle *h;

    (void)open_flags;
    if (getenv("FAKE_XENFM_NO_PRIVCMD")) {
        if (logger) {
            logf_(logger, 8 /* XTL_ERROR */, ENOENT, "Could not obtain handle on %s",
                  "the fake privcmd");
            logf_(logger, 1 /* XTL_DEBUG */, -1, "debug noise after the error");
        }
        errno = ENOENT;
        return NULL;
    }
    h = malloc(sizeof(*h));
    if (!h)
        return NULL;
    h->fd = memfd_create("fake-xen-domain", MFD_CLOEXEC);
    if (h->fd < 0 || ftruncate(h->fd, (off_t)FAKE_PAGES * PAGE) != 0) {
        free(h);
        return NULL;
    }
    for (unsigned long p = 0; p < FAKE_PAGES; p++) {
        unsigned char head[8];
        for (int i = 0; i < 8; i++)
            head[i] = (unsigned char)(p >> (8 * i));
        if (pwrite(h->fd, head, sizeof(head), (off_t)(p * PAGE)) != (ssize_t)sizeof(head)) {
            close(h->fd);
            free(h);
            return NULL;
        }
    }
    return h;
}

int xenforeignmemory_close(struct xenforeignmemory_handle *h)
{
    close(h->fd);
    free(h);
    return 0;
}

void *xenforeignmemory_map2(struct xenforeignmemory_handle *h, uint32_t dom, void *addr,
                            int prot, int flags, size_t pages, const xmc_xen_pfn_t arr[],
                            int err[])
{
    unsigned char *base;

    if (dom != FAKE_DOMID) {
        errno = ESRCH;
        return NULL;
    }
    if (flags & MAP_FIXED)
        fake_fixed_maps++;
    base = mmap(addr, pages * PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | flags, -1, 0);
    if (base == MAP_FAILED)
        return NULL;
    for (size_t i = 0; i < pages; i++) {
        err[i] = 0;
        if (arr[i] >= FAKE_PAGES) {
            err[i] = -EINVAL;
            continue;
        }
        if (mmap(base + i * PAGE, PAGE, prot, MAP_SHARED | MAP_FIXED, h->fd,
                 (off_t)(arr[i] * PAGE)) == MAP_FAILED) {
            munmap(base, pages * PAGE);
            return NULL;
        }
    }
    return base;
}

int xenforeignmemory_unmap(struct xenforeignmemory_handle *h, void *addr, size_t pages)
{
    (void)h;
    return munmap(addr, pages * PAGE);
}
