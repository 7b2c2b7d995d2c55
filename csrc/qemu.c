/*
 * qemu.c - QEMU's mapcache API of today (QEMU 9.1 and later) over three
 * caches: foreign memory, and read-only and read-write grant mappings.
 *
 * QEMU's API has no handle, so the caches live here, the one global state of
 * the library; the native API has none.  xmc_qemu_configure() builds them
 * (all or nothing), xen_map_cache_init() publishes them, xmc_qemu_shutdown()
 * frees them; those three are serialised by a mutex of their own, while the
 * mapping calls only load the published pointers.
 *
 * A grant cache is keyed, as in QEMU, by the request's phys_addr (so reverse
 * lookup answers phys_addr), but its pages are grant references
 * (phys_addr - ram_addr_offset) >> 12: each grant cache maps through a small
 * wrapper backend that subtracts the request's ram_addr_offset, which
 * xen_map_cache() leaves in a thread-local variable.  The backend's map runs
 * inside that very xmc_map() call, in the same thread, so it sees the right
 * offset.  The pre-2024 calls are in qemu_legacy.c.
 */
#include "xmc_internal.h"

#include "xenmapcache_qemu.h"

#define NCACHES 3
#define GRANT_MAX_SIZE (UINT64_C(1) << 30) /* 256 Ki slots of one page */

static pthread_mutex_t admin = PTHREAD_MUTEX_INITIALIZER;
static xmc_cache *built[NCACHES];            /* by xmc_qemu_configure() */
static xmc_cache *_Atomic active[NCACHES];   /* by xen_map_cache_init() */
static const MemoryRegion *grant_region;     /* written before `active` */
static phys_offset_to_gaddr_t gaddr_of;      /* likewise */
static const xmc_backend *grant_inner[NCACHES]; /* what each wrapper maps through */
static xmc_backend grant_wrapper[NCACHES];
static _Thread_local uint64_t grant_first_page; /* ram_addr_offset >> 12 */

/* ---- the grant wrapper backend ---------------------------------------- */

static int grant_map(void *opaque, void *fixed, uint64_t first_pfn, size_t nr_pages,
                     int *errs, void **out)
{
    const xmc_backend *be = *(const xmc_backend **)opaque;

    if (first_pfn < grant_first_page)
        return XMC_EINVAL;
    return be->map(be->opaque, fixed, first_pfn - grant_first_page, nr_pages, errs, out);
}

static int grant_unmap(void *opaque, void *addr, size_t len)
{
    const xmc_backend *be = *(const xmc_backend **)opaque;

    return be->unmap(be->opaque, addr, len);
}

static void grant_retain(void *opaque)
{
    const xmc_backend *be = *(const xmc_backend **)opaque;

    if (be->retain)
        be->retain(be->opaque);
}

static void grant_release(void *opaque)
{
    const xmc_backend *be = *(const xmc_backend **)opaque;

    if (be->release)
        be->release(be->opaque);
}

/* ---- set-up and tear-down --------------------------------------------- */

static int translate(void *opaque, uint64_t paddr, uint64_t size, uint64_t *out)
{
    (void)opaque;
    *out = gaddr_of(paddr, size);
    return XMC_OK;
}

static void free_built(void)
{
    for (int i = 0; i < NCACHES; i++) {
        xmc_cache_free(built[i]);
        built[i] = NULL;
        grant_inner[i] = NULL;
    }
    grant_region = NULL;
    gaddr_of = NULL;
}

static int build(const xmc_backend *const be[NCACHES])
{
    int rc = xmc_cache_new(be[XMC_QEMU_FOREIGN], 0, 0, &built[XMC_QEMU_FOREIGN]);

    for (int i = XMC_QEMU_GRANTS_RO; rc == XMC_OK && i <= XMC_QEMU_GRANTS_RW; i++) {
        if (!be[i])
            continue;
        if (!be[i]->map || !be[i]->unmap)
            return XMC_EINVAL;
        grant_inner[i] = be[i];
        grant_wrapper[i] = (xmc_backend){ .opaque = (void *)&grant_inner[i],
                                          .map = grant_map, .unmap = grant_unmap,
                                          .retain = grant_retain,
                                          .release = grant_release };
        rc = xmc_cache_new(&grant_wrapper[i], XMC_PAGE_SHIFT, GRANT_MAX_SIZE, &built[i]);
        if (rc == XMC_OK)
            rc = xmc_cache_set_grants(built[i], true);
    }
    return rc;
}

int xmc_qemu_configure(const xmc_backend *foreign, const xmc_backend *grants_ro,
                       const xmc_backend *grants_rw, const MemoryRegion *region)
{
    const xmc_backend *be[NCACHES] = { foreign, grants_ro, grants_rw };
    int rc;

    if (!foreign)
        return XMC_EINVAL;
    pthread_mutex_lock(&admin);
    if (built[XMC_QEMU_FOREIGN]) {
        rc = XMC_EINVAL;
    } else if ((rc = build(be)) != XMC_OK) {
        free_built();
    } else {
        grant_region = region;
    }
    pthread_mutex_unlock(&admin);
    return rc;
}

xmc_cache *xmc_qemu_cache(unsigned which)
{
    xmc_cache *c;

    if (which >= NCACHES)
        return NULL;
    pthread_mutex_lock(&admin);
    c = built[which];
    pthread_mutex_unlock(&admin);
    return c;
}

void xen_map_cache_init(phys_offset_to_gaddr_t f, void *opaque)
{
    (void)opaque;
    pthread_mutex_lock(&admin);
    if (built[XMC_QEMU_FOREIGN] && !atomic_load(&active[XMC_QEMU_FOREIGN])) {
        gaddr_of = f;
        xmc_cache_set_translate(built[XMC_QEMU_FOREIGN], f ? translate : NULL, NULL);
        /* The foreign cache last: it is what says "enabled". */
        for (int i = NCACHES - 1; i >= 0; i--)
            atomic_store(&active[i], built[i]);
    }
    pthread_mutex_unlock(&admin);
}

void xmc_qemu_shutdown(void)
{
    pthread_mutex_lock(&admin);
    for (int i = 0; i < NCACHES; i++)
        atomic_store(&active[i], NULL);
    free_built();
    pthread_mutex_unlock(&admin);
}

bool xen_map_cache_enabled(void)
{
    return atomic_load(&active[XMC_QEMU_FOREIGN]) != NULL;
}

/* ---- the mapping calls ------------------------------------------------ */

uint8_t *xen_map_cache(XMC_QEMU_MR_CONST MemoryRegion *mr, hwaddr phys_addr, hwaddr size,
                       ram_addr_t ram_addr_offset, uint8_t lock, bool dma,
                       bool is_write)
{
    unsigned flags = (lock ? XMC_LOCK : 0u) | (dma ? XMC_DMA : 0u);
    xmc_cache *c = atomic_load(&active[XMC_QEMU_FOREIGN]);
    void *p;

    if (!c)
        return NULL;
    if (grant_region && mr == grant_region) {
        /* Grants are mapped for a transfer only (QEMU aborts otherwise). */
        if (!lock || ram_addr_offset > phys_addr ||
            (ram_addr_offset & (XMC_PAGE_SIZE - 1)))
            return NULL;
        c = atomic_load(&active[is_write ? XMC_QEMU_GRANTS_RW : XMC_QEMU_GRANTS_RO]);
        if (!c)
            return NULL;
        grant_first_page = ram_addr_offset >> XMC_PAGE_SHIFT;
    }
    if (xmc_map(c, phys_addr, size, flags, 0, &p) != XMC_OK)
        return NULL;
    return p;
}

/* Every cache in use: today's three, then the legacy one. */
static size_t caches_in_use(xmc_cache *out[NCACHES + 1])
{
    size_t n = 0;

    for (int i = 0; i < NCACHES; i++)
        if ((out[n] = atomic_load(&active[i])) != NULL)
            n++;
    if ((out[n] = atomic_load(&xmc_qemu_legacy)) != NULL)
        n++;
    return n;
}

ram_addr_t xen_ram_addr_from_mapcache(void *ptr)
{
    xmc_cache *caches[NCACHES + 1];
    size_t n = caches_in_use(caches);
    uint64_t paddr;

    for (size_t i = 0; i < n; i++)
        if (xmc_ram_addr(caches[i], ptr, &paddr) == XMC_OK)
            return paddr;
    return RAM_ADDR_INVALID;
}

void xen_invalidate_map_cache_entry(uint8_t *buffer)
{
    xmc_cache *caches[NCACHES + 1];
    size_t n = caches_in_use(caches);

    for (size_t i = 0; i < n; i++)
        if (xmc_unlock(caches[i], buffer, NULL) != XMC_ENOENT)
            return; /* done, or failed after dropping the lock (a grant's unmap) */
}

void xen_invalidate_map_cache(void)
{
    xmc_cache *caches[NCACHES + 1];
    size_t n = caches_in_use(caches);

    for (size_t i = 0; i < n; i++)
        xmc_invalidate(caches[i], NULL, NULL);
}

uint8_t *xen_replace_cache_entry(hwaddr old_phys_addr, hwaddr new_phys_addr,
                                 hwaddr size)
{
    xmc_cache *c = atomic_load(&active[XMC_QEMU_FOREIGN]);
    void *p;

    if (!c)
        c = atomic_load(&xmc_qemu_legacy);
    if (xmc_replace(c, old_phys_addr, new_phys_addr, size, &p) != XMC_OK)
        return NULL;
    return p;
}
