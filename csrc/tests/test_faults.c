/*
 * test_faults.c - fault injection through the counting backend: chosen map
 * calls, chosen unmap calls and chosen pages fail.  Every error must reach
 * the caller, leave no half-built entry in a chain, change no lock count, let
 * the next call work, and an unmap failure must be reported once and never
 * retried (a retry could unmap memory that is someone else's by then).
 *
 * Geometry: 64 KiB buckets, four slots, 1 MiB of RAM.
 */
#include "fault_backend.h"

#define SHIFT 16
#define B (UINT64_C(1) << SHIFT)

static void setup(void)
{
    fx_setup(MIB, SHIFT, 4 * B);
}

/* The next map call fails with rc. */
static void fail_next_map(int rc)
{
    F->fail_map_at = F->map_calls + 1;
    F->fail_map_rc = rc;
}

static void fail_next_unmap(void)
{
    F->fail_unmap_at = F->unmap_calls + 1;
}

TEST(fault_map_of_new_entry_reaches_caller_and_leaves_nothing)
{
    /* A mapping error (or a positive errno) is retried once after translate
     * (the backend's answers "no translation"); other errors are final. */
    static const struct { int inject, expect, translates; } cases[] = {
        { XMC_ESYS, XMC_ESYS, 0 }, { XMC_ENOMEM, XMC_ENOMEM, 0 },
        { XMC_EMAP, XMC_EMAP, 1 }, { 5 /* a positive errno */, XMC_EMAP, 1 },
    };
    unsigned long calls, translates;
    xmc_stats s;
    void *p;

    setup();
    F->fail_map_always = true;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        F->fail_map_rc = cases[i].inject;
        calls = F->map_calls;
        translates = F->translate_calls;
        CHECK_EQ(xmc_map(C, 0x10000, 0, XMC_LOCK | XMC_DMA, 1, &p), cases[i].expect);
        CHECK_EQ(F->translate_calls - translates, cases[i].translates);
        CHECK_EQ(F->map_calls - calls, 1 + cases[i].translates);
        s = xt_stats(C);
        CHECK_EQ(s.entries, 0);
        CHECK_EQ(s.mapped_bytes, 0);
        CHECK_EQ(s.locked, 0);
        CHECK_EQ(s.dma_locked, 0);
        CHECK_EQ(fb_live(F), 0);
    }
    /* The next call works and maps the right memory. */
    F->fail_map_always = false;
    p = MAP(0x10000, 0, XMC_LOCK);
    CHECK(xt_has_pattern(p, 0x10000, B));
    OK(xmc_unlock(C, p, NULL));
    fx_teardown();
}

TEST(fault_map_on_in_place_remap_drops_the_entry)
{
    uint8_t *a;
    void *p;

    for (int clobber = 0; clobber < 2; clobber++) {
        setup();
        F->fail_map_clobbers = clobber;
        a = MAP(0x00000, 0, 0); /* unlocked, the last entry */
        MAP(0x10000, 0, XMC_LOCK);
        fail_next_map(XMC_ESYS);
        CHECK_EQ(xmc_map(C, 0x40000, 0, 0, 0, &p), XMC_ESYS); /* reuses a's entry */
        CHECK_EQ(F->fixed_maps, 1);
        CHECK_EQ(xt_stats(C).entries, 1);
        CHECK_EQ(xt_stats(C).mapped_bytes, B);
        CHECK_EQ(xmc_ram_addr(C, a, (uint64_t *)&p), XMC_ENOENT);
        CHECK(!xt_mapped(a, B, false)); /* dropped, not leaked */
        /* The slot and the fast path work again. */
        CHECK(xt_has_pattern(MAP(0x40000, 0, 0), 0x40000, B));
        CHECK(xt_has_pattern(MAP(0x00010, 0, 0), 0x10, 64));
        fx_teardown();
    }
}

TEST(fault_map_after_unmap_on_resizing_remap_drops_the_entry)
{
    uint8_t *a;
    void *p;

    setup();
    a = MAP(0x00000, 0, 0);
    fail_next_map(XMC_ESYS);
    /* Same slot, two buckets: the old entry is unmapped, the new map fails. */
    CHECK_EQ(xmc_map(C, 0x40000, 2 * B, 0, 0, &p), XMC_ESYS);
    CHECK_EQ(xt_stats(C).entries, 0);
    CHECK_EQ(xt_stats(C).mapped_bytes, 0);
    CHECK_EQ(fb_live(F), 0);
    CHECK(!xt_mapped(a, B, false));
    CHECK(xt_has_pattern(MAP(0x40000, 2 * B, 0), 0x40000, 2 * B));
    fx_teardown();
}

TEST(fault_unmap_on_resizing_remap_is_reported_once)
{
    unsigned long unmaps;
    uint8_t *a;
    void *p;

    setup();
    a = MAP(0x00000, 0, 0);
    fail_next_unmap();
    CHECK_EQ(xmc_map(C, 0x40000, 2 * B, 0, 0, &p), XMC_ESYS);
    unmaps = F->unmap_calls;
    CHECK_EQ(fb_failed_unmaps(F), 1);
    CHECK_EQ(xt_stats(C).entries, 0); /* the cache let go of it */
    CHECK_EQ(xt_stats(C).mapped_bytes, 0);
    CHECK_EQ(xmc_ram_addr(C, a, (uint64_t *)&p), XMC_ENOENT);
    CHECK(xt_has_pattern(MAP(0x40000, 2 * B, 0), 0x40000, 2 * B));
    OK(xmc_invalidate(C, NULL, NULL));
    CHECK_EQ(F->unmap_calls, unmaps + 1); /* the new entry only */
    CHECK(fb_clean(F));
    fx_teardown(); /* and xmc_cache_free does not retry it either */
}

TEST(fault_unmap_in_invalidate_is_reported_once)
{
    uint8_t *l;
    xmc_stats s;

    setup();
    MAP(0x00000, 0, 0);
    MAP(0x10000, 0, 0);
    MAP(0x20000, 2 * B, 0);
    l = MAP(0x30000, 0, XMC_LOCK);
    F->fail_unmap_at = F->unmap_calls + 2; /* the second of three */
    CHECK_EQ(xmc_invalidate(C, NULL, NULL), XMC_ESYS);
    s = xt_stats(C);
    CHECK_EQ(s.entries, 1); /* every unlocked entry is gone all the same */
    CHECK_EQ(s.mapped_bytes, B);
    CHECK_EQ(s.invalidations, 1);
    CHECK_EQ(F->unmap_calls, 3);
    CHECK_EQ(fb_failed_unmaps(F), 1);
    OK(xmc_invalidate(C, NULL, NULL)); /* no retry */
    CHECK_EQ(F->unmap_calls, 3);
    CHECK(xt_has_pattern(l, 0x30000, B));
    CHECK(xt_has_pattern(MAP(0x10000, 0, 0), 0x10000, B));
    OK(xmc_unlock(C, l, NULL));
    fx_teardown();
    /* fb_done checked that xmc_cache_free did not retry it. */
}

TEST(fault_unmap_in_cache_free_is_not_retried)
{
    setup();
    MAP(0x00000, 0, XMC_LOCK);
    MAP(0x10000, 0, 0);
    MAP(0x20000, 0, XMC_LOCK | XMC_DMA);
    fail_next_unmap();
    xmc_cache_free(C);
    C = NULL;
    CHECK_EQ(F->unmap_calls, 3);
    CHECK_EQ(fb_failed_unmaps(F), 1);
    CHECK_EQ(fb_live(F), 1);
    fx_teardown();
}

TEST(fault_chosen_pages_fail_alone)
{
    uint8_t *p;
    void *q;

    setup();
    fb_bad_pages(F, 0x23, 0x25); /* pages 3 and 4 of bucket 2 */
    p = MAP(0x20000, 3 * PAGE, XMC_LOCK);
    CHECK(xt_has_pattern(p, 0x20000, 3 * PAGE));
    CHECK(xt_faults(xt_touch_read, p + 3 * PAGE));
    CHECK(xt_faults(xt_touch_write, p + 4 * PAGE));
    CHECK(xt_has_pattern(p + 5 * PAGE, 0x25000, PAGE));
    CHECK_EQ(xmc_map(C, 0x23000, 0, XMC_LOCK, 0, &q), XMC_EMAP);
    CHECK_EQ(xmc_map(C, 0x22fff, 2, 0, 0, &q), XMC_EMAP);
    CHECK_EQ(xmc_map(C, 0x20000, 4 * PAGE, XMC_LOCK | XMC_DMA, 0, &q), XMC_EMAP);
    CHECK_EQ(xt_stats(C).locked, 1);
    /* The same pages through a two-bucket entry fail the same way. */
    CHECK_EQ(xmc_map(C, 0x1f000, 0x5000, 0, 0, &q), XMC_EMAP);
    MAP(0x1f000, 0x4000, 0);
    OK(xmc_unlock(C, p, NULL));
    fx_teardown();
}

TEST(fault_map_in_replace_of_unlocked_entry_restores_it)
{
    uint8_t *a;
    void *q;

    setup();
    a = MAP(0x10000, 0, 0);
    fail_next_map(XMC_ESYS);
    CHECK_EQ(xmc_replace(C, 0x10000, 0x20000, 0, &q), XMC_ESYS);
    /* The old pages are put back: the entry is as it was. */
    CHECK_EQ(xt_stats(C).entries, 1);
    CHECK_EQ(xt_stats(C).mapped_bytes, B);
    CHECK(xt_has_pattern(a, 0x10000, B));
    CHECK_EQ(RAM_ADDR(a), 0x10000);
    CHECK(MAP(0x10000, 0, 0) == a);
    fx_teardown();
}

TEST(fault_map_in_replace_of_locked_entry_keeps_it)
{
    uint8_t *l;
    xmc_record *r;
    size_t n;
    void *q;

    setup();
    l = MAPT(0x10100, 0x10, XMC_LOCK | XMC_DMA, 9);
    fail_next_map(XMC_ESYS);
    CHECK_EQ(xmc_replace(C, 0x10000, 0x20000, 0, &q), XMC_ESYS);
    /* Still locked, known, and on its old pages: its holder reads on. */
    CHECK_EQ(xt_stats(C).entries, 1);
    CHECK_EQ(RAM_ADDR(l), 0x10100);
    OK(xmc_locked(C, &r, &n));
    CHECK(n == 1 && r[0].paddr == 0x10100 && r[0].tag == 9);
    xmc_records_free(r);
    CHECK(!xt_faults(xt_touch_read, l));
    CHECK(xt_has_pattern(l - 0x100, 0x10000, B));
    OK(xmc_unlock(C, l, NULL));
    OK(xmc_invalidate(C, NULL, NULL));
    CHECK_EQ(xt_stats(C).entries, 0);
    CHECK(!xt_mapped(l, 1, false));
    fx_teardown();
}

TEST(fault_on_restore_after_failed_replace)
{
    uint8_t *l, *u;
    void *q;

    setup();
    /* Locked: the new pages are bad, and so is the map that restores the old. */
    l = MAP(0x10200, 0, XMC_LOCK);
    fb_bad_pages(F, 0x20, 0x21);
    F->fail_map_at = F->map_calls + 2;
    CHECK_EQ(xmc_replace(C, 0x10000, 0x20000, 0, &q), XMC_EMAP);
    CHECK_EQ(RAM_ADDR(l), 0x10200); /* the record still names the old page */
    /* Neither pages can be had: dummy memory, so its holder never faults. */
    CHECK(!xt_faults(xt_touch_read, l));
    l[0] = 0x5a;
    CHECK_EQ(l[0], 0x5a);
    OK(xmc_unlock(C, l, NULL));
    CHECK(xt_has_pattern(MAP(0x10000, 0, 0), 0x10000, B));
    CHECK(xt_has_pattern(MAP(0x50000, 0, 0), 0x50000, B)); /* slot 1 reused */
    OK(xmc_invalidate(C, NULL, NULL));
    CHECK_EQ(xt_stats(C).entries, 0);

    /* Unlocked: the failed entry is dropped, not left in a chain. */
    u = MAP(0x30000, 0, 0);
    F->fail_map_at = F->map_calls + 2;
    CHECK_EQ(xmc_replace(C, 0x30000, 0x20000, 0, &q), XMC_EMAP);
    CHECK_EQ(xt_stats(C).entries, 0);
    CHECK_EQ(xt_stats(C).mapped_bytes, 0);
    CHECK(!xt_mapped(u, B, false));
    CHECK(xt_has_pattern(MAP(0x30000, 0, 0), 0x30000, B));
    fx_teardown();
}

TEST(fault_every_map_failing_is_survivable)
{
    uint8_t buf[32];
    void *p;

    setup();
    p = MAP(0x10000, 0, XMC_LOCK);
    MAP(0x20000, 0, 0);
    F->fail_map_always = true;
    for (uint64_t a = 0; a < MIB; a += 0x7000) {
        if (xmc_map(C, a, 0x100, XMC_LOCK, 0, &p) != XMC_OK)
            continue;
        /* Only entries already mapped can serve: buckets 1 and 2. */
        CHECK((a >> SHIFT) == 1 || (a >> SHIFT) == 2);
        OK(xmc_unlock(C, p, NULL));
    }
    CHECK(xmc_read(C, 0x80000, buf, sizeof(buf)) != XMC_OK);
    CHECK_EQ(xt_stats(C).locked, 1);
    OK(xmc_invalidate(C, NULL, NULL));
    CHECK_EQ(xt_stats(C).entries, 1);
    F->fail_map_always = false;
    OK(xmc_read(C, 0x80000, buf, sizeof(buf)));
    CHECK(xt_has_pattern(buf, 0x80000, sizeof(buf)));
    fx_teardown();
}

/* A backend that claims success but hands back no address. */
static int null_map(void *o, void *f, uint64_t pfn, size_t n, int *e, void **out)
{
    (void)o, (void)f, (void)pfn, (void)n, (void)e;
    *out = NULL;
    return XMC_OK;
}

static int count_unmap(void *o, void *a, size_t l)
{
    (void)a, (void)l;
    ++*(int *)o;
    return XMC_OK;
}

TEST(fault_backend_returning_no_address_is_a_map_error)
{
    int unmaps = 0;
    xmc_backend be = { .opaque = &unmaps, .map = null_map, .unmap = count_unmap };
    xmc_cache *c;
    void *p;

    OK(xmc_cache_new(&be, 16, MIB, &c));
    CHECK_EQ(xmc_map(c, 0, 0, XMC_LOCK, 0, &p), XMC_EMAP);
    CHECK_EQ(xt_stats(c).entries, 0);
    CHECK_EQ(xt_stats(c).locked, 0);
    xmc_cache_free(c);
    CHECK_EQ(unmaps, 0);
}

const xt_test xt_faults_tests[] = {
    XT(fault_map_of_new_entry_reaches_caller_and_leaves_nothing),
    XT(fault_map_on_in_place_remap_drops_the_entry),
    XT(fault_map_after_unmap_on_resizing_remap_drops_the_entry),
    XT(fault_unmap_on_resizing_remap_is_reported_once),
    XT(fault_unmap_in_invalidate_is_reported_once),
    XT(fault_unmap_in_cache_free_is_not_retried),
    XT(fault_chosen_pages_fail_alone),
    XT(fault_map_in_replace_of_unlocked_entry_restores_it),
    XT(fault_map_in_replace_of_locked_entry_keeps_it),
    XT(fault_on_restore_after_failed_replace),
    XT(fault_every_map_failing_is_survivable),
    XT(fault_backend_returning_no_address_is_a_map_error),
    XT_END,
};
