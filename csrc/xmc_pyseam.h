/*
 * xmc_pyseam.h - the few entry points the cffi binding calls on hot paths.
 *
 * Not part of the C library: build_ffi.py includes this into the extension
 * only.  Each wraps a public function so that Python passes and gets plain
 * integers: no out-parameter to allocate per call (threads share a cache, so
 * a shared one would race) and no pointer cdata to build.  A map returns the
 * host address, or 0 on error (no mapping lives at address 0), with the
 * XMC_E* code in a thread-local that xmc_py_last_error() returns: each
 * Python thread is an OS thread, so no other call can overwrite it between
 * the failed call and the question.
 */
#ifndef XMC_PYSEAM_H
#define XMC_PYSEAM_H

#include "xenmapcache.h"

static _Thread_local int xmc_py_rc;

static uint64_t xmc_py_encode(int rc, const void *p)
{
    if (rc != XMC_OK || !p) {
        xmc_py_rc = rc != XMC_OK ? rc : XMC_EMAP;
        return 0;
    }
    return (uint64_t)(uintptr_t)p;
}

/* The error of this thread's last xmc_py_map*() call that returned 0. */
static int xmc_py_last_error(void)
{
    return xmc_py_rc;
}

/* MapCache.map_ptr(paddr, size, lock, dma): a raw mapping (tag 0). */
static uint64_t xmc_py_map_ptr(xmc_cache *c, uint64_t paddr, uint64_t size, int lock,
                               int dma)
{
    unsigned flags = lock ? XMC_LOCK | (dma ? XMC_DMA : 0u) : 0u;
    void *p = NULL;
    int rc = xmc_map(c, paddr, size, flags, 0, &p);

    return xmc_py_encode(rc, p);
}

/* The baseline of the hit benchmark: the same argument list, no work. */
static uint64_t xmc_py_noop(xmc_cache *c, uint64_t paddr, uint64_t size, int lock,
                            int dma)
{
    (void)c;
    (void)paddr;
    (void)size;
    (void)lock;
    (void)dma;
    return 0;
}

/* A Mapping: locked, with the tag that names it. */
static uint64_t xmc_py_map(xmc_cache *c, uint64_t paddr, uint64_t size,
                           unsigned flags, uint64_t tag)
{
    void *p = NULL;
    int rc = xmc_map(c, paddr, size, flags, tag, &p);

    return xmc_py_encode(rc, p);
}

/* The guest address behind addr, or UINT64_MAX: then ask xmc_ram_addr() why
 * (UINT64_MAX can also be a real answer, for the last byte of guest space). */
static uint64_t xmc_py_ram_addr(xmc_cache *c, uintptr_t addr)
{
    uint64_t paddr;

    return xmc_ram_addr(c, (const void *)addr, &paddr) == XMC_OK ? paddr : UINT64_MAX;
}

static int xmc_py_unlock(xmc_cache *c, uintptr_t addr, uint64_t tag)
{
    return xmc_unlock_tag(c, (const void *)addr, tag);
}

#endif /* XMC_PYSEAM_H */
