/*
 * fault_backend.c - the counting, fault-injecting test backend (see the
 * header).  It forwards to the memfd RAM's own backend and keeps a table of
 * the mappings it handed out, keyed by host address.
 */
#include "fault_backend.h"

#include <errno.h>
#include <pthread.h>
#include <sys/mman.h>

static fb_mapping *find_live(fb *f, uintptr_t addr)
{
    for (size_t i = 0; i < f->nlive; i++)
        if (f->live[i].addr == addr)
            return &f->live[i];
    return NULL;
}

static void drop_live(fb *f, fb_mapping *m)
{
    *m = f->live[--f->nlive];
}

static bool page_bad(const fb *f, uint64_t pfn)
{
    for (size_t i = 0; i < f->nbad; i++)
        if (f->bad[i].lo <= pfn && pfn < f->bad[i].hi)
            return true;
    return false;
}

static int fb_map(void *opaque, void *fixed, uint64_t first_pfn, size_t nr_pages,
                  int *errs, void **out)
{
    fb *f = opaque;
    size_t len = nr_pages * PAGE;
    fb_mapping *m;
    int rc;

    f->map_calls++;
    if (fixed)
        f->fixed_maps++;
    if (f->fail_map_always || f->map_calls == f->fail_map_at) {
        if (fixed && f->fail_map_clobbers)
            mmap(fixed, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
        return f->fail_map_rc ? f->fail_map_rc : XMC_ESYS;
    }
    rc = f->rb->map(f->rb->opaque, fixed, first_pfn, nr_pages, errs, out);
    if (rc != XMC_OK)
        return rc;
    for (size_t i = 0; i < nr_pages; i++) {
        if (errs[i] || !page_bad(f, first_pfn + i))
            continue;
        errs[i] = EIO;
        mmap((uint8_t *)*out + i * PAGE, PAGE, PROT_NONE,
             MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    }
    m = fixed ? find_live(f, (uintptr_t)fixed) : NULL;
    if (!fixed) {
        /* The kernel gave us this range: whatever we recorded there is gone
         * (the cache munmapped it itself after mapping over it). */
        uintptr_t lo = (uintptr_t)*out, hi = lo + len;

        for (size_t i = 0; i < f->nlive;) {
            fb_mapping *o = &f->live[i];

            if (!o->unmap_failed && o->addr < hi && lo < o->addr + o->len)
                drop_live(f, o);
            else
                i++;
        }
    }
    if (m) {
        m->len = len; /* mapped over in place */
    } else if (f->nlive < FB_MAX_LIVE) {
        f->live[f->nlive++] = (fb_mapping){ .addr = (uintptr_t)*out, .len = len };
    }
    return XMC_OK;
}

static int fb_unmap(void *opaque, void *addr, size_t len)
{
    fb *f = opaque;
    fb_mapping *m = find_live(f, (uintptr_t)addr);

    f->unmap_calls++;
    if (!m) {
        f->unknown_unmaps++;
        return XMC_EINVAL; /* never munmap what we did not hand out */
    }
    if (m->unmap_failed) {
        f->retried_unmaps++;
        return XMC_ESYS;
    }
    if (m->len != len)
        f->bad_len_unmaps++;
    if (f->unmap_calls == f->fail_unmap_at) {
        m->unmap_failed = true;
        return XMC_ESYS;
    }
    munmap(addr, m->len);
    drop_live(f, m);
    return XMC_OK;
}

static int fb_translate(void *opaque, uint64_t paddr, uint64_t size, uint64_t *out)
{
    fb *f = opaque;

    (void)size;
    f->translate_calls++;
    /* Like QEMU's physmap lookup: no translation is the address unchanged. */
    if (!f->tr_on || paddr < f->tr_from || paddr - f->tr_from >= f->tr_len)
        *out = paddr;
    else
        *out = paddr - f->tr_from + f->tr_to;
    return XMC_OK;
}

fb *fb_new(uint64_t size)
{
    fb *f = calloc(1, sizeof(*f));

    if (!f)
        return NULL;
    f->ram = xt_ram(size);
    f->rb = xmc_ram_backend(f->ram);
    f->be = (xmc_backend){ .opaque = f, .map = fb_map, .unmap = fb_unmap,
                           .translate = fb_translate };
    return f;
}

void fb_free(fb *f)
{
    if (!f)
        return;
    for (size_t i = 0; i < f->nlive; i++)
        if (f->live[i].unmap_failed)
            munmap((void *)f->live[i].addr, f->live[i].len);
    xmc_ram_free(f->ram);
    free(f);
}

void fb_bad_pages(fb *f, uint64_t lo, uint64_t hi)
{
    if (f->nbad < FB_MAX_BAD) {
        f->bad[f->nbad].lo = lo;
        f->bad[f->nbad].hi = hi;
        f->nbad++;
    }
}

void fb_clear_bad(fb *f)
{
    f->nbad = 0;
}

size_t fb_live(const fb *f)
{
    return f->nlive;
}

size_t fb_failed_unmaps(const fb *f)
{
    size_t n = 0;

    for (size_t i = 0; i < f->nlive; i++)
        n += f->live[i].unmap_failed;
    return n;
}

bool fb_clean(const fb *f)
{
    return f->unknown_unmaps == 0 && f->retried_unmaps == 0 && f->bad_len_unmaps == 0;
}

void fb_done_(fb *f, xmc_cache *c, const char *file, int line)
{
    xmc_cache_free(c);
    if (!fb_clean(f))
        xt_fail(file, line, "backend saw %lu unknown, %lu retried, %lu wrong-length unmaps",
                f->unknown_unmaps, f->retried_unmaps, f->bad_len_unmaps);
    for (size_t i = 0; i < f->nlive; i++) {
        const fb_mapping *m = &f->live[i];

        /* Mapped over by the cache (dummy, blanking) and unmapped since: fine. */
        if (!m->unmap_failed && xt_mapped((void *)m->addr, m->len, false))
            xt_fail(file, line, "mapping %#lx+%#zx left mapped after xmc_cache_free",
                    (unsigned long)m->addr, m->len);
    }
    fb_free(f);
}

fb *F;
xmc_cache *C;

void fx_setup_(uint64_t ram_size, unsigned shift, uint64_t max_size,
               const char *file, int line)
{
    int rc;

    F = fb_new(ram_size);
    if (!F)
        xt_fail(file, line, "fb_new failed");
    rc = xmc_cache_new(&F->be, shift, max_size, &C);
    if (rc != XMC_OK)
        xt_fail(file, line, "xmc_cache_new: %s", xmc_strerror(rc));
}

void *xt_map_(xmc_cache *c, uint64_t paddr, uint64_t size, unsigned flags,
              uint64_t tag, const char *file, int line)
{
    void *p = NULL;
    uint64_t back = 0;
    int rc = xmc_map(c, paddr, size, flags, tag, &p);

    if (rc != XMC_OK)
        xt_fail(file, line, "xmc_map(%#" PRIx64 ", %#" PRIx64 ", %u): %s", paddr,
                size, flags, xmc_strerror(rc));
    rc = xmc_ram_addr(c, p, &back);
    if (rc != XMC_OK || back != paddr)
        xt_fail(file, line, "ram_addr(map(%#" PRIx64 ")) = %#" PRIx64 " (%s)", paddr,
                back, xmc_strerror(rc));
    return p;
}

uint64_t xt_ram_addr_(xmc_cache *c, const void *p, const char *file, int line)
{
    uint64_t back = 0;
    int rc = xmc_ram_addr(c, p, &back);

    if (rc != XMC_OK)
        xt_fail(file, line, "xmc_ram_addr(%p): %s", p, xmc_strerror(rc));
    return back;
}

/* ---- a thread parked inside the backend ---------------------------------- */

static int (*ungated_map)(void *, void *, uint64_t, size_t, int *, void **);
static pthread_t parked;

static int gated_map(void *opaque, void *fixed, uint64_t pfn, size_t n, int *errs, void **out)
{
    xt_gate_pass();
    return ungated_map(opaque, fixed, pfn, n, errs, out);
}

static void *park_miss(void *paddr)
{
    void *p;

    return xmc_map(C, (uint64_t)(uintptr_t)paddr, 0, 0, 0, &p) == XMC_OK ? p : NULL;
}

void fx_park(uint64_t paddr)
{
    ungated_map = F->be.map;
    F->be.map = gated_map; /* the cache calls through &F->be */
    CHECK(pthread_create(&parked, NULL, park_miss, (void *)(uintptr_t)paddr) == 0);
    xt_gate_wait_inside();
}

void fx_ungate(void)
{
    F->be.map = ungated_map;
}

void *fx_unpark(void)
{
    void *ret = NULL;

    xt_gate_open();
    CHECK(pthread_join(parked, &ret) == 0);
    fx_ungate();
    return ret;
}
