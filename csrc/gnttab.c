/*
 * gnttab.c - the grant backend: pages a Xen domain granted us, mapped
 * through libxengnttab (QEMU's path for virtio devices of Xen guests).
 *
 * The backend's page numbers are grant references: a map of n pages from
 * page r maps references r .. r+n-1 of the domain with one
 * xengnttab_map_domain_grant_refs() call (PROT_READ, plus PROT_WRITE when
 * the backend is writable), all or nothing, never at a fixed address; unmap
 * is xengnttab_unmap().  Use it under a cache with the grant rules on
 * (xmc_cache_set_grants), which never remaps an entry in place.
 *
 * Like xen.c: the library is loaded with dlopen() when a backend is created;
 * where the library or /dev/xen/gntdev is missing, xmc_gnttab_open() fails
 * with XMC_EUNAVAIL and says which; the library gets our quiet logger.  The
 * object is reference counted: caches built on it retain it.
 */
#include "xmc_internal.h"

#include "xmc_gnttab.h"
#include "xmc_xtl.h"

#define REFS_ON_STACK 256
#define GRANT_REF_MAX UINT32_MAX

struct xmc_gnttab {
    xmc_quiet_logger logger;
    xmc_backend be;
    atomic_uint refs;
    uint32_t domid;
    int prot;
    void *dl;
    xmc_gt_close_fn *gt_close;
    xmc_gt_map_refs_fn *gt_map_refs;
    xmc_gt_unmap_fn *gt_unmap;
    struct xengntdev_handle *xgt;
};

/* ---- the backend -------------------------------------------------------- */

static int gt_map(void *opaque, void *fixed, uint64_t first_ref, size_t nr_pages,
                  int *errs, void **out)
{
    xmc_gnttab *g = opaque;
    uint32_t refs_stack[REFS_ON_STACK];
    uint32_t *refs = refs_stack;
    void *addr;

    if (fixed) /* a grant mapping cannot be placed: no remap in place */
        return XMC_EINVAL;
    if (nr_pages == 0 || nr_pages > GRANT_REF_MAX ||
        first_ref > GRANT_REF_MAX - (nr_pages - 1))
        return XMC_EINVAL;
    if (nr_pages > REFS_ON_STACK) {
        refs = calloc(nr_pages, sizeof(*refs));
        if (!refs)
            return XMC_ENOMEM;
    }
    for (size_t i = 0; i < nr_pages; i++)
        refs[i] = (uint32_t)(first_ref + i);
    addr = g->gt_map_refs(g->xgt, (uint32_t)nr_pages, g->domid, refs, g->prot);
    if (refs != refs_stack)
        free(refs);
    if (!addr)
        return XMC_EMAP; /* the library maps every reference or none */
    memset(errs, 0, nr_pages * sizeof(*errs));
    *out = addr;
    return XMC_OK;
}

static int gt_unmap(void *opaque, void *addr, size_t len)
{
    xmc_gnttab *g = opaque;

    return g->gt_unmap(g->xgt, addr, (uint32_t)(len >> XMC_PAGE_SHIFT)) ? XMC_ESYS
                                                                          : XMC_OK;
}

static void gt_retain(void *opaque)
{
    xmc_gnttab *g = opaque;

    atomic_fetch_add(&g->refs, 1);
}

static void gt_release(void *opaque)
{
    xmc_gnttab *g = opaque;

    if (atomic_fetch_sub(&g->refs, 1) != 1)
        return;
    if (g->xgt)
        g->gt_close(g->xgt);
    if (g->dl)
        dlclose(g->dl);
    free(g);
}

/* ---- construction ------------------------------------------------------- */

static const xmc_xen_lib LIB = { .name = "libxengnttab", .since = "Xen 4.7",
                                 .device = "/dev/xen/gntdev", .driver = "gntdev",
                                 .open = "xengnttab_open" };

static int load_library(xmc_gnttab *g, const char *library, char *why, size_t why_size,
                        xmc_gt_open_fn **gt_open)
{
    const xmc_dl_sym syms[] = {
        { "xengnttab_open", gt_open },
        { "xengnttab_close", &g->gt_close },
        { "xengnttab_map_domain_grant_refs", &g->gt_map_refs },
        { "xengnttab_unmap", &g->gt_unmap },
    };

    return xmc_dl_load(&LIB, library, syms, sizeof(syms) / sizeof(syms[0]), &g->dl, why,
                       why_size);
}

static int open_gntdev(xmc_gnttab *g, xmc_gt_open_fn *gt_open, char *why, size_t why_size)
{
    char log[XMC_XTL_LOG_SIZE] = "";
    int err;

    g->logger.log = log;
    g->xgt = gt_open(xmc_xtl(&g->logger), 0);
    err = errno;
    g->logger.log = NULL;
    return g->xgt ? XMC_OK : xmc_xen_open_failed(&LIB, err, log, why, why_size);
}

int xmc_gnttab_open(uint32_t domid, bool writable, const char *library, char *why,
                    size_t why_size, xmc_gnttab **out)
{
    xmc_gt_open_fn *gt_open = NULL;
    xmc_gnttab *g;
    int rc;

    xmc_say(why, why_size, "%s", "");
    if (!out)
        return XMC_EINVAL;
    *out = NULL;
    if (domid > UINT16_MAX) {
        xmc_say(why, why_size, "domid %" PRIu32 " is not a Xen domain id (0..65535)", domid);
        return XMC_EINVAL;
    }
    if (!library)
        library = XMC_GNTTAB_LIBRARY;
    g = calloc(1, sizeof(*g));
    if (!g)
        return XMC_ENOMEM;
    xmc_quiet_logger_init(&g->logger);
    g->domid = domid;
    g->prot = writable ? PROT_READ | PROT_WRITE : PROT_READ;
    atomic_init(&g->refs, 1);
    g->be = (xmc_backend){ .opaque = g, .map = gt_map, .unmap = gt_unmap,
                           .retain = gt_retain, .release = gt_release };
    rc = load_library(g, library, why, why_size, &gt_open);
    if (rc == XMC_OK)
        rc = open_gntdev(g, gt_open, why, why_size);
    if (rc != XMC_OK) {
        gt_release(g);
        return rc;
    }
    *out = g;
    return XMC_OK;
}

const xmc_backend *xmc_gnttab_backend(xmc_gnttab *g)
{
    return g ? &g->be : NULL;
}

void xmc_gnttab_free(xmc_gnttab *g)
{
    if (g)
        gt_release(g);
}
