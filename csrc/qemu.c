/*
 * qemu.c - QEMU's mapcache functions over the cache chosen with
 * xen_map_cache_use().  The one global of the library lives here, because
 * QEMU's API has no handle; the native API has none.
 */
#include "xmc_internal.h"

#include "xenmapcache_qemu.h"

static xmc_cache *_Atomic current;

void xen_map_cache_use(xmc_cache *c)
{
    atomic_store(&current, c);
}

uint8_t *xen_map_cache(hwaddr phys_addr, hwaddr size, uint8_t lock, bool dma)
{
    unsigned flags = (lock ? XMC_LOCK : 0u) | (dma ? XMC_DMA : 0u);
    void *p;

    if (xmc_map(atomic_load(&current), phys_addr, size, flags, 0, &p) != XMC_OK)
        return NULL;
    return p;
}

ram_addr_t xen_ram_addr_from_mapcache(void *ptr)
{
    uint64_t paddr;

    if (xmc_ram_addr(atomic_load(&current), ptr, &paddr) != XMC_OK)
        return RAM_ADDR_INVALID;
    return paddr;
}

void xen_invalidate_map_cache_entry(uint8_t *buffer)
{
    xmc_unlock(atomic_load(&current), buffer, NULL);
}

void xen_invalidate_map_cache(void)
{
    xmc_invalidate(atomic_load(&current), NULL, NULL);
}

uint8_t *xen_replace_cache_entry(hwaddr old_phys_addr, hwaddr new_phys_addr,
                                 hwaddr size)
{
    void *p;

    if (xmc_replace(atomic_load(&current), old_phys_addr, new_phys_addr, size, &p) !=
        XMC_OK)
        return NULL;
    return p;
}
