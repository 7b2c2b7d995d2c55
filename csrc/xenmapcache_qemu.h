/*
 * xenmapcache_qemu.h - QEMU's mapcache API over one xenmapcache cache.
 *
 * The six functions keep QEMU's names and argument lists so device-model code
 * written against hw/xen/xen-mapcache.h links against this library unchanged.
 * They act on the cache chosen with xen_map_cache_use(); unlike QEMU they
 * never abort: a failed map returns NULL, an unknown pointer RAM_ADDR_INVALID.
 * Define XMC_HAVE_QEMU_TYPES if hwaddr and ram_addr_t are already declared.
 */
#ifndef XENMAPCACHE_QEMU_H
#define XENMAPCACHE_QEMU_H

#include "xenmapcache.h"

#ifdef __cplusplus
extern "C" {
#endif

#ifndef XMC_HAVE_QEMU_TYPES
typedef uint64_t hwaddr;
typedef uint64_t ram_addr_t;
#endif

#ifndef RAM_ADDR_INVALID
#define RAM_ADDR_INVALID (~(ram_addr_t)0)
#endif

/*
 * The library is built with both types as uint64_t, which is what QEMU's Xen
 * builds use (hwaddr always, ram_addr_t with CONFIG_XEN_BACKEND): types of
 * another width from the includer would silently break the calls below.
 */
#ifdef __cplusplus
#define XMC_QEMU_ASSERT(cond, msg) static_assert(cond, msg)
#else
#define XMC_QEMU_ASSERT(cond, msg) _Static_assert(cond, msg)
#endif
XMC_QEMU_ASSERT(sizeof(hwaddr) == 8 && (hwaddr)-1 > 0,
                "xenmapcache_qemu.h: hwaddr must be a 64-bit unsigned type");
XMC_QEMU_ASSERT(sizeof(ram_addr_t) == 8 && (ram_addr_t)-1 > 0,
                "xenmapcache_qemu.h: ram_addr_t must be a 64-bit unsigned type");
XMC_QEMU_ASSERT(RAM_ADDR_INVALID == (ram_addr_t)-1,
                "xenmapcache_qemu.h: RAM_ADDR_INVALID must be all ones");
#undef XMC_QEMU_ASSERT

/*
 * xen_map_cache_use() chooses the cache the others act on (NULL: none).  Then,
 * as in QEMU: xen_map_cache() maps (lock 1 pins the entry, dma marks it DMA),
 * xen_ram_addr_from_mapcache() is the reverse lookup,
 * xen_invalidate_map_cache_entry() unlocks, xen_invalidate_map_cache() drops
 * every unlocked entry, xen_replace_cache_entry() remaps an entry in place.
 * Errors: no status codes, as in QEMU, but never an abort: a failed map or
 * replace returns NULL, an unknown pointer RAM_ADDR_INVALID, and a failed
 * unlock or invalidate does nothing (call the xmc_* functions to see why).
 * Cost: that of the xmc_* call each one makes (see xenmapcache.h).
 */
void xen_map_cache_use(xmc_cache *c);
uint8_t *xen_map_cache(hwaddr phys_addr, hwaddr size, uint8_t lock, bool dma);
ram_addr_t xen_ram_addr_from_mapcache(void *ptr);
void xen_invalidate_map_cache_entry(uint8_t *buffer);
void xen_invalidate_map_cache(void);
uint8_t *xen_replace_cache_entry(hwaddr old_phys_addr, hwaddr new_phys_addr,
                                 hwaddr size);

#ifdef __cplusplus
}
#endif

#endif /* XENMAPCACHE_QEMU_H */
