/*
 * Stand-in for QEMU 9.1's sysemu/xen-mapcache.h (CONFIG_XEN_IS_POSSIBLE): the
 * declarations QEMU's callers compile against.
 */
#ifndef STUB_SYSEMU_XEN_MAPCACHE_H
#define STUB_SYSEMU_XEN_MAPCACHE_H
#include "exec/memory.h"

typedef hwaddr (*phys_offset_to_gaddr_t)(hwaddr phys_offset, ram_addr_t size);

void xen_map_cache_init(phys_offset_to_gaddr_t f, void *opaque);
#ifdef STUB_MISMATCH /* a QEMU whose size argument differs from ours */
uint8_t *xen_map_cache(MemoryRegion *mr, hwaddr phys_addr, uint32_t size,
                       ram_addr_t ram_addr_offset, uint8_t lock, bool dma,
                       bool is_write);
#elif defined(STUB_QEMU11) /* QEMU 11 (2026) */
uint8_t *xen_map_cache(const MemoryRegion *mr, hwaddr phys_addr, hwaddr size,
                       ram_addr_t ram_addr_offset, uint8_t lock, bool dma,
                       bool is_write);
#else
uint8_t *xen_map_cache(MemoryRegion *mr, hwaddr phys_addr, hwaddr size,
                       ram_addr_t ram_addr_offset, uint8_t lock, bool dma,
                       bool is_write);
#endif
ram_addr_t xen_ram_addr_from_mapcache(void *ptr);
void xen_invalidate_map_cache_entry(uint8_t *buffer);
void xen_invalidate_map_cache(void);
uint8_t *xen_replace_cache_entry(hwaddr old_phys_addr, hwaddr new_phys_addr,
                                 hwaddr size);
#endif
