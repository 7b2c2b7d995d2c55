/*
 * xen.c - the real Xen backend: guest memory of a running domain, mapped
 * through libxenforeignmemory.
 *
 * The library is loaded with dlopen() when a backend is created, so building
 * and importing need no Xen at all; where the library or /dev/xen/privcmd is
 * missing, xmc_xen_open() fails with XMC_EUNAVAIL and says which.  We hand
 * the library a logger of our own: its default one would print to stderr.
 * While opening, that logger keeps the library's last message for the error
 * text; afterwards it drops everything (library code does not print).
 * The object is reference counted like xmc_ram: caches built on it retain it.
 */
#include "xmc_internal.h"

#include "xmc_xtl.h"

#define PFNS_ON_STACK 256 /* one default 1 MiB bucket */

struct xmc_xen {
    xmc_quiet_logger logger;
    xmc_backend be;
    atomic_uint refs;
    uint32_t domid;
    void *dl;
    xmc_fm_close_fn *fm_close;
    xmc_fm_map2_fn *fm_map2;
    xmc_fm_unmap_fn *fm_unmap;
    struct xenforeignmemory_handle *fmem;
};

/* ---- the backend -------------------------------------------------------- */

static int xen_map(void *opaque, void *fixed, uint64_t first_pfn, size_t nr_pages,
                   int *errs, void **out)
{
    xmc_xen *xen = opaque;
    xmc_xen_pfn_t pfns_stack[PFNS_ON_STACK];
    xmc_xen_pfn_t *pfns = pfns_stack;
    void *addr;

    if (nr_pages == 0 || nr_pages > (SIZE_MAX >> XMC_PAGE_SHIFT) ||
        first_pfn > (uint64_t)(xmc_xen_pfn_t)-1 - (nr_pages - 1))
        return XMC_EINVAL;
    if (nr_pages > PFNS_ON_STACK) {
        pfns = calloc(nr_pages, sizeof(*pfns));
        if (!pfns)
            return XMC_ENOMEM;
    }
    for (size_t i = 0; i < nr_pages; i++)
        pfns[i] = (xmc_xen_pfn_t)(first_pfn + i);
    addr = xen->fm_map2(xen->fmem, xen->domid, fixed, PROT_READ | PROT_WRITE,
                        fixed ? MAP_FIXED : 0, nr_pages, pfns, errs);
    if (pfns != pfns_stack)
        free(pfns);
    if (!addr)
        return XMC_EMAP;
    /* The library reports -errno per page; the backend contract wants errno. */
    for (size_t i = 0; i < nr_pages; i++)
        if (errs[i] < 0)
            errs[i] = errs[i] == INT_MIN ? EIO : -errs[i];
    *out = addr;
    return XMC_OK;
}

static int xen_unmap(void *opaque, void *addr, size_t len)
{
    xmc_xen *xen = opaque;

    return xen->fm_unmap(xen->fmem, addr, len >> XMC_PAGE_SHIFT) ? XMC_ESYS : XMC_OK;
}

static void xen_retain(void *opaque)
{
    xmc_xen *xen = opaque;

    atomic_fetch_add(&xen->refs, 1);
}

static void xen_release(void *opaque)
{
    xmc_xen *xen = opaque;

    if (atomic_fetch_sub(&xen->refs, 1) != 1)
        return;
    if (xen->fmem)
        xen->fm_close(xen->fmem);
    if (xen->dl)
        dlclose(xen->dl);
    free(xen);
}

/* ---- construction ------------------------------------------------------- */

static const xmc_xen_lib LIB = { .name = "libxenforeignmemory", .since = "Xen 4.10",
                                 .device = "/dev/xen/privcmd", .driver = "privcmd",
                                 .open = "xenforeignmemory_open" };

static int load_library(xmc_xen *xen, const char *library, char *why, size_t why_size,
                        xmc_fm_open_fn **fm_open)
{
    const xmc_dl_sym syms[] = {
        { "xenforeignmemory_open", fm_open },
        { "xenforeignmemory_close", &xen->fm_close },
        { "xenforeignmemory_map2", &xen->fm_map2 },
        { "xenforeignmemory_unmap", &xen->fm_unmap },
    };

    return xmc_dl_load(&LIB, library, syms, sizeof(syms) / sizeof(syms[0]), &xen->dl, why,
                       why_size);
}

static int open_privcmd(xmc_xen *xen, xmc_fm_open_fn *fm_open, char *why,
                        size_t why_size)
{
    char log[XMC_XTL_LOG_SIZE] = "";
    int err;

    xen->logger.log = log;
    xen->fmem = fm_open(xmc_xtl(&xen->logger), 0);
    err = errno;
    xen->logger.log = NULL;
    return xen->fmem ? XMC_OK : xmc_xen_open_failed(&LIB, err, log, why, why_size);
}

int xmc_xen_open(uint32_t domid, const char *library, char *why, size_t why_size,
                 xmc_xen **out)
{
    xmc_fm_open_fn *fm_open = NULL;
    xmc_xen *xen;
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
        library = XMC_XENFM_LIBRARY;
    xen = calloc(1, sizeof(*xen));
    if (!xen)
        return XMC_ENOMEM;
    xmc_quiet_logger_init(&xen->logger);
    xen->domid = domid;
    atomic_init(&xen->refs, 1);
    xen->be = (xmc_backend){ .opaque = xen, .map = xen_map, .unmap = xen_unmap,
                             .retain = xen_retain, .release = xen_release };
    rc = load_library(xen, library, why, why_size, &fm_open);
    if (rc == XMC_OK)
        rc = open_privcmd(xen, fm_open, why, why_size);
    if (rc != XMC_OK) {
        xen_release(xen);
        return rc;
    }
    *out = xen;
    return XMC_OK;
}

int xmc_xen_new(uint32_t domid, xmc_xen **out)
{
    return xmc_xen_open(domid, NULL, NULL, 0, out);
}

const xmc_backend *xmc_xen_backend(xmc_xen *xen)
{
    return xen ? &xen->be : NULL;
}

void xmc_xen_free(xmc_xen *xen)
{
    if (xen)
        xen_release(xen);
}
