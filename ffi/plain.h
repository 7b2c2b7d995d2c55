/*
 * plain.h - the entry points that cffi calls: plain integers in and out.
 *
 * Each wraps a public function so that Python passes and gets plain
 * integers: no out-parameter to allocate per call (threads share a cache, so
 * a shared one would race) and no pointer cdata to build.  A map returns the
 * host address, or 0 on error (no mapping lives at address 0), with the
 * XMC_E* code in a thread-local that xmc_py_last_error() returns: each
 * Python thread is an OS thread, so no other call can overwrite it between
 * the failed call and the question.  Declared for cffi in binding_cdef.h.
 */
#ifndef XMC_PY_PLAIN_H
#define XMC_PY_PLAIN_H

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

/* A Mapping: locked, with the tag that names it. */
static uint64_t xmc_py_map(xmc_cache *c, uint64_t paddr, uint64_t size,
                           unsigned flags, uint64_t tag)
{
    void *p = NULL;
    int rc = xmc_map(c, paddr, size, flags, tag, &p);

    return xmc_py_encode(rc, p);
}

/* MapCache.map_ptr(paddr, size, lock, dma): a raw mapping (tag 0). */
static uint64_t xmc_py_map_ptr(xmc_cache *c, uint64_t paddr, uint64_t size, int lock,
                               int dma)
{
    return xmc_py_map(c, paddr, size, lock ? XMC_LOCK | (dma ? XMC_DMA : 0u) : 0u, 0);
}


static int xmc_py_unlock(xmc_cache *c, uintptr_t addr, uint64_t tag)
{
    return xmc_unlock_tag(c, (const void *)addr, tag);
}

/*
 * xmc_invalidate() in one call: the number of DMA mappings still in flight,
 * or an XMC_E* code.  Either way those mappings wait for this thread in
 * xmc_py_records_take() (count: xmc_py_records_count()); free them with
 * xmc_records_free().  With none in flight, that is the only call.
 */
static _Thread_local xmc_record *xmc_py_records;
static _Thread_local size_t xmc_py_nrecords;

static int64_t xmc_py_invalidate(xmc_cache *c)
{
    xmc_record *records = NULL;
    size_t n = 0;
    int rc = xmc_invalidate(c, &records, &n);

    xmc_records_free(xmc_py_records); /* any a failed caller left behind */
    xmc_py_records = records;
    xmc_py_nrecords = records ? n : 0;
    return rc != XMC_OK ? rc : (int64_t)xmc_py_nrecords;
}

static size_t xmc_py_records_count(void)
{
    return xmc_py_nrecords;
}

static xmc_record *xmc_py_records_take(void)
{
    xmc_record *records = xmc_py_records;

    xmc_py_records = NULL;
    xmc_py_nrecords = 0;
    return records;
}

#endif /* XMC_PY_PLAIN_H */
