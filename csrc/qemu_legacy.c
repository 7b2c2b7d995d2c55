/*
 * qemu_legacy.c - QEMU's mapcache calls of 2017 to 2024 (XMC_QEMU_LEGACY_API):
 * one cache, the embedder's own, chosen with xen_map_cache_use().  Reverse
 * lookup, unlock, invalidate and replace are shared with today's API
 * (qemu.c), which searches this cache too.
 */
#include "xmc_internal.h"

#define XMC_QEMU_LEGACY_API 1
#include "xenmapcache_qemu.h"

xmc_cache *_Atomic xmc_qemu_legacy;

void xen_map_cache_use(xmc_cache *c)
{
    atomic_store(&xmc_qemu_legacy, c);
}

uint8_t *xen_map_cache(hwaddr phys_addr, hwaddr size, uint8_t lock, bool dma)
{
    unsigned flags = (lock ? XMC_LOCK : 0u) | (dma ? XMC_DMA : 0u);
    void *p;

    if (xmc_map(atomic_load(&xmc_qemu_legacy), phys_addr, size, flags, 0, &p) != XMC_OK)
        return NULL;
    return p;
}
