/*
 * xenmapcache_qemu.h - QEMU's mapcache API over xenmapcache caches.
 *
 * The functions keep QEMU's names and argument lists so device-model code
 * written against QEMU's include/system/xen-mapcache.h links against this
 * library unchanged: by default the API of QEMU 9.1 and later (2024), with
 * grant mappings; define XMC_QEMU_LEGACY_API before including this header for
 * the pre-2024 set (xen_map_cache_use() and the 4-argument xen_map_cache()).
 * Unlike QEMU's, these never abort: a failed or refused map returns NULL, an
 * unknown pointer RAM_ADDR_INVALID, an unknown unlock does nothing.
 *
 * Today's API keeps QEMU's three caches (foreign memory; read-only and
 * read-write grant mappings, page-granular, under the grant rules), which
 * xmc_qemu_configure() builds: the one global state of the library, since
 * QEMU's API has no handle.
 *
 * Define XMC_HAVE_QEMU_TYPES if hwaddr, ram_addr_t and MemoryRegion are
 * already declared (inside QEMU); the header refuses, at compile time,
 * hwaddr or ram_addr_t of another width than 64 bits.
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
typedef struct MemoryRegion MemoryRegion; /* opaque here: only its address matters */
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

#ifdef XMC_QEMU_LEGACY_API

/*
 * QEMU 2.12 to 9.0: one cache, the caller's, chosen with xen_map_cache_use()
 * (NULL: none).  xen_map_cache() maps in it (lock 1 pins the entry, dma marks
 * it DMA); its symbol is xmc_qemu_legacy_map_cache, so one library serves
 * both APIs.  The calls at the end of this header search this cache too.
 * Errors: none reported, as in QEMU, never an abort: a failed map returns
 * NULL (call xmc_map() to see why, XMC_EINVAL or XMC_EMAP and so on).
 * Cost: that of the xmc_map() call it makes.
 */
#define xen_map_cache xmc_qemu_legacy_map_cache
void xen_map_cache_use(xmc_cache *c);
uint8_t *xen_map_cache(hwaddr phys_addr, hwaddr size, uint8_t lock, bool dma);

#else /* today's API */

/*
 * QEMU's guest-address translation hook: tried once when the pages of a
 * foreign-memory request cannot be mapped (see xmc_cache_set_translate).
 */
typedef hwaddr (*phys_offset_to_gaddr_t)(hwaddr phys_offset, ram_addr_t size);

/*
 * Ours, in place of the globals QEMU's xen_map_cache_init() reads: builds the
 * three caches over `foreign` (required) and the grant backends (NULL: no
 * such cache, and a request for it returns NULL); grant_region is the
 * MemoryRegion whose requests are grant references (QEMU's xen_grants region;
 * NULL: none).  The caches retain the backends, so their owners may free
 * them now.  xmc_qemu_shutdown() frees the caches, unmapping everything, and
 * forgets the configuration; no other call may be running then.  Errors:
 * XMC_EINVAL (no `foreign`, a backend without map or unmap, caches built
 * already: call xmc_qemu_shutdown() first), XMC_ENOMEM; on an error nothing
 * is built.  xmc_qemu_shutdown() never fails.  Cost: that of three
 * xmc_cache_new() (the grant caches have 256 Ki slots of one page each);
 * shutdown, one unmap per live entry.
 */
int xmc_qemu_configure(const xmc_backend *foreign, const xmc_backend *grants_ro,
                       const xmc_backend *grants_rw, const MemoryRegion *grant_region);
void xmc_qemu_shutdown(void);

/*
 * The caches xmc_qemu_configure() built, for the native API: statistics, the
 * incoming-migration mode (xmc_cache_set_dummy), the DMA mappings in flight
 * (xmc_invalidate).  Valid until xmc_qemu_shutdown().  It never fails: NULL
 * when there is no such cache.  Cost: a mutex, O(1).
 */
#define XMC_QEMU_FOREIGN 0
#define XMC_QEMU_GRANTS_RO 1
#define XMC_QEMU_GRANTS_RW 2
xmc_cache *xmc_qemu_cache(unsigned which);

/*
 * QEMU's.  xen_map_cache_init() turns the configured caches on (without a
 * configuration it does nothing); f may be NULL, opaque is unused, as in
 * QEMU.  xen_map_cache_enabled() is true from then until
 * xmc_qemu_shutdown().  xen_map_cache() sends a request on grant_region to
 * the read-write grant cache when is_write, else to the read-only one: it
 * must be locked, and page p of it is grant reference
 * (p - ram_addr_offset) >> 12 (ram_addr_offset page-aligned, at most
 * phys_addr); any other region goes to foreign memory, where ram_addr_offset
 * and is_write play no part.  Errors: none reported, as in QEMU, never an
 * abort: a failed or refused map returns NULL (an unlocked grant request, no
 * such cache, or what xmc_map() would fail with: XMC_EINVAL, XMC_EMAP,
 * XMC_EOVERFLOW...).  Cost: one xmc_map() call.
 * QEMU 11 passes mr as a const MemoryRegion *: define XMC_QEMU_MR_CONST as
 * const before including this header to declare it so (the library's code is
 * the same either way: it only compares the address).
 */
#ifndef XMC_QEMU_MR_CONST
#define XMC_QEMU_MR_CONST /* QEMU 9.1 and 10: MemoryRegion *mr */
#endif
void xen_map_cache_init(phys_offset_to_gaddr_t f, void *opaque);
bool xen_map_cache_enabled(void);
uint8_t *xen_map_cache(XMC_QEMU_MR_CONST MemoryRegion *mr, hwaddr phys_addr, hwaddr size,
                       ram_addr_t ram_addr_offset, uint8_t lock, bool dma,
                       bool is_write);

#endif /* XMC_QEMU_LEGACY_API */

/*
 * Both APIs: xen_ram_addr_from_mapcache() is the reverse lookup (the guest
 * address, for a grant the request's phys_addr, behind any pointer inside a
 * mapped entry), xen_invalidate_map_cache_entry() unlocks one locked mapping
 * at exactly that pointer, xen_invalidate_map_cache() drops every unlocked
 * entry and keeps the locked ones (call xmc_invalidate() for the DMA mappings
 * in flight), xen_replace_cache_entry() remaps a foreign-memory entry in
 * place.  Each searches every cache in use: today's three, then the one of
 * xen_map_cache_use().  Errors: none reported, never an abort: an unknown
 * pointer is RAM_ADDR_INVALID, a failed replace NULL (XMC_ENOENT, XMC_EMAP
 * from xmc_replace()), an unknown unlock does nothing.  Cost: that of the
 * xmc_* call made on each cache searched, at most four.
 */
ram_addr_t xen_ram_addr_from_mapcache(void *ptr);
void xen_invalidate_map_cache_entry(uint8_t *buffer);
void xen_invalidate_map_cache(void);
uint8_t *xen_replace_cache_entry(hwaddr old_phys_addr, hwaddr new_phys_addr,
                                 hwaddr size);

#ifdef __cplusplus
}
#endif

#endif /* XENMAPCACHE_QEMU_H */
