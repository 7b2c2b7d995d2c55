/*
 * xmc_internal.h - included first by every .c file of the core.
 *
 * It sets the feature macros before any system header is seen, then brings in
 * the system headers the core relies on and the public API, so no .c file
 * includes those itself.
 */
#ifndef XMC_INTERNAL_H
#define XMC_INTERNAL_H

#define _GNU_SOURCE 1

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <search.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "xenmapcache.h"

#define XMC_PAGE_SIZE ((uint64_t)1 << XMC_PAGE_SHIFT)

/* True when the range [a, a + b) ends at or below 2**64. */
static inline int xmc_range_ok(uint64_t a, uint64_t b)
{
    return b == 0 || a <= UINT64_MAX - (b - 1);
}

/* The cache chosen with xen_map_cache_use() (qemu_legacy.c); qemu.c's
 * reverse lookup, unlock, invalidate and replace search it too. */
extern xmc_cache *_Atomic xmc_qemu_legacy;

/*
 * Test points of the lock-free hit (cache.c), compiled in only when the C
 * tests build the core with -DXMC_TESTING: a test sets xmc_test_point and
 * changes the cache at the moment a hit has read the last entry but not yet
 * validated it (XMC_TP_HIT_READ), or while a writer is half way through
 * publishing a new last entry (XMC_TP_PUBLISH), deterministically.
 */
enum { XMC_TP_HIT_READ = 1, XMC_TP_PUBLISH = 2 };
#ifdef XMC_TESTING
extern void (*xmc_test_point)(xmc_cache *c, int point);
#define XMC_TEST_POINT(c, point)                                              \
    do {                                                                      \
        if (xmc_test_point)                                                   \
            xmc_test_point((c), (point));                                     \
    } while (0)
#else
#define XMC_TEST_POINT(c, point) ((void)0)
#endif

#endif /* XMC_INTERNAL_H */
