/*
 * qemu_today_check.c - xenmapcache_qemu.h is QEMU's mapcache API of today
 * (QEMU 9.1 and later), to the letter.
 *
 * Below are QEMU's own declarations (include/system/xen-mapcache.h with
 * CONFIG_XEN_IS_POSSIBLE).  A C or C++ compiler accepts a second declaration
 * of a function only if it is compatible, so this compiles only while our
 * header matches.  Built as C and as C++ by tests/test_qemu_api.py:
 *   default             our header alone, QEMU's declarations after it
 *   -DQEMU_TYPES_FIRST  QEMU's types first (qemu_types.h), as inside QEMU
 *   -DQEMU_TYPES_FIRST -DNARROW_HWADDR  must fail: the header refuses 32-bit hwaddr
 */
#include <stdbool.h>
#include <stdint.h>

#ifdef QEMU_TYPES_FIRST
#include "qemu_types.h"
#endif

#include "xenmapcache_qemu.h"

#ifdef __cplusplus
extern "C" {
#endif

/* QEMU's include/system/xen-mapcache.h. */
typedef hwaddr (*phys_offset_to_gaddr_t)(hwaddr phys_offset, ram_addr_t size);
void xen_map_cache_init(phys_offset_to_gaddr_t f, void *opaque);
uint8_t *xen_map_cache(MemoryRegion *mr, hwaddr phys_addr, hwaddr size,
                       ram_addr_t ram_addr_offset, uint8_t lock, bool dma, bool is_write);
ram_addr_t xen_ram_addr_from_mapcache(void *ptr);
void xen_invalidate_map_cache_entry(uint8_t *buffer);
void xen_invalidate_map_cache(void);
uint8_t *xen_replace_cache_entry(hwaddr old_phys_addr, hwaddr new_phys_addr, hwaddr size);
bool xen_map_cache_enabled(void);

#ifdef __cplusplus
}
#endif

/* QEMU's call sites take the functions' addresses with these types. */
typedef void init_fn(phys_offset_to_gaddr_t, void *);
typedef uint8_t *map_fn(MemoryRegion *, hwaddr, hwaddr, ram_addr_t, uint8_t, bool, bool);
typedef ram_addr_t ram_addr_fn(void *);
typedef void invalidate_entry_fn(uint8_t *);
typedef void invalidate_fn(void);
typedef uint8_t *replace_fn(hwaddr, hwaddr, hwaddr);
typedef bool enabled_fn(void);

init_fn *const qemu_init = xen_map_cache_init;
map_fn *const qemu_map = xen_map_cache;
ram_addr_fn *const qemu_ram_addr = xen_ram_addr_from_mapcache;
invalidate_entry_fn *const qemu_invalidate_entry = xen_invalidate_map_cache_entry;
invalidate_fn *const qemu_invalidate = xen_invalidate_map_cache;
replace_fn *const qemu_replace = xen_replace_cache_entry;
enabled_fn *const qemu_enabled = xen_map_cache_enabled;
