/*
 * qemu_api_check.c - xenmapcache_qemu.h with XMC_QEMU_LEGACY_API is QEMU's
 * mapcache API before QEMU 9.1, to the letter (qemu_today_check.c: today's).
 *
 * Below are QEMU's own declarations (include/sysemu/xen-mapcache.h of the
 * QEMU that introduced the `dma` flag, with hwaddr and ram_addr_t as its Xen
 * builds define them).  A C or C++ compiler accepts a second declaration of a
 * function only if it is compatible, so this compiles only while our header
 * matches.  Built as C and as C++ by tests/test_c_library.py:
 *   default             our header first, QEMU's declarations after it
 *   -DQEMU_TYPES_FIRST  QEMU's types first (XMC_HAVE_QEMU_TYPES), as inside QEMU
 *   -DQEMU_TYPES_FIRST -DNARROW_HWADDR  must fail: the header refuses 32-bit hwaddr
 */
#include <stdbool.h>
#include <stdint.h>

#ifdef QEMU_TYPES_FIRST
#ifdef NARROW_HWADDR
typedef uint32_t hwaddr;
#else
typedef uint64_t hwaddr;                  /* include/exec/hwaddr.h */
#endif
typedef uint64_t ram_addr_t;              /* include/exec/cpu-common.h, CONFIG_XEN_BACKEND */
#define RAM_ADDR_INVALID (~(ram_addr_t)0) /* include/exec/cpu-common.h */
#define XMC_HAVE_QEMU_TYPES 1
#endif

#define XMC_QEMU_LEGACY_API 1
#include "xenmapcache_qemu.h"

#ifdef __cplusplus
extern "C" {
#endif

/* QEMU's include/sysemu/xen-mapcache.h (CONFIG_XEN), save xen_map_cache_init. */
uint8_t *xen_map_cache(hwaddr phys_addr, hwaddr size, uint8_t lock, bool dma);
ram_addr_t xen_ram_addr_from_mapcache(void *ptr);
void xen_invalidate_map_cache_entry(uint8_t *buffer);
void xen_invalidate_map_cache(void);
uint8_t *xen_replace_cache_entry(hwaddr old_phys_addr, hwaddr new_phys_addr, hwaddr size);

#ifdef __cplusplus
}
#endif

/* QEMU's call sites take the functions' addresses with these types. */
typedef uint8_t *map_fn(hwaddr, hwaddr, uint8_t, bool);
typedef ram_addr_t ram_addr_fn(void *);
typedef void invalidate_entry_fn(uint8_t *);
typedef void invalidate_fn(void);
typedef uint8_t *replace_fn(hwaddr, hwaddr, hwaddr);

map_fn *const qemu_map = xen_map_cache;
ram_addr_fn *const qemu_ram_addr = xen_ram_addr_from_mapcache;
invalidate_entry_fn *const qemu_invalidate_entry = xen_invalidate_map_cache_entry;
invalidate_fn *const qemu_invalidate = xen_invalidate_map_cache;
replace_fn *const qemu_replace = xen_replace_cache_entry;
