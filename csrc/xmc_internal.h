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

#endif /* XMC_INTERNAL_H */
