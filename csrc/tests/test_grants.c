/*
 * test_grants.c - grant rules (xmc_cache_set_grants): locked requests only,
 * page-granular entries, an entry unmapped as soon as its last lock goes
 * (never kept for hits, never remapped, never the fast path's), DMA in
 * flight reported by invalidate, and the switch itself only before any map.
 *
 * Geometry: page buckets (shift 12), 64 KiB max_size (16 slots), 1 MiB RAM,
 * through the counting fault backend so every map and unmap is seen.
 */
#include "fault_backend.h"

static void setup(void)
{
    fx_setup(MIB, XMC_PAGE_SHIFT, 16 * PAGE);
    OK(xmc_cache_set_grants(C, true));
}

TEST(grants_need_page_buckets_and_no_map_yet)
{
    fb *f = fb_new(MIB);
    xmc_cache *c;
    void *p;

    CHECK(f);
    OK(xmc_cache_new(&f->be, 16, MIB, &c));
    CHECK_EQ(xmc_cache_set_grants(c, true), XMC_EINVAL); /* not page-granular */
    OK(xmc_cache_set_grants(c, false));                    /* what it is: fine */
    xmc_cache_free(c);

    OK(xmc_cache_new(&f->be, XMC_PAGE_SHIFT, MIB, &c));
    CHECK_EQ(xmc_cache_set_grants(NULL, true), XMC_EINVAL);
    OK(xmc_cache_set_grants(c, true));
    OK(xmc_cache_set_grants(c, true)); /* again: nothing changes */
    OK(xmc_map(c, 0x3000, 0, XMC_LOCK, 0, &p));
    CHECK_EQ(xmc_cache_set_grants(c, false), XMC_EINVAL); /* after a map */
    OK(xmc_unlock(c, p, NULL));
    CHECK_EQ(xmc_cache_set_grants(c, false), XMC_EINVAL); /* even with nothing mapped */
    fb_done(f, c);

    /* The other way round: a plain cache that has mapped cannot turn grant. */
    f = fb_new(MIB);
    CHECK(f);
    OK(xmc_cache_new(&f->be, XMC_PAGE_SHIFT, MIB, &c));
    OK(xmc_map(c, 0x3000, 0, 0, 0, &p));
    CHECK_EQ(xmc_cache_set_grants(c, true), XMC_EINVAL);
    fb_done(f, c);
}

TEST(grants_unlocked_requests_fail_and_map_nothing)
{
    uint8_t buf[16] = { 0 };
    void *p = NULL;
    xmc_stats s;

    setup();
    CHECK_EQ(xmc_map(C, 0x5000, 0, 0, 0, &p), XMC_EGRANT);
    CHECK_EQ(xmc_map(C, 0x5000, 100, XMC_DMA, 0, &p), XMC_EGRANT);
    CHECK_EQ(xmc_map_nowait(C, 0x5000, 0, 0, 0, &p), XMC_EGRANT);
    CHECK_EQ(xmc_read(C, 0x5000, buf, sizeof(buf)), XMC_EGRANT);
    CHECK_EQ(xmc_read_nowait(C, 0x5000, buf, sizeof(buf)), XMC_EGRANT);
    CHECK_EQ(xmc_write(C, 0x5000, buf, sizeof(buf)), XMC_EGRANT);
    CHECK_EQ(xmc_write_nowait(C, 0x5000, buf, sizeof(buf)), XMC_EGRANT);
    /* An invalid address is still an invalid address. */
    CHECK_EQ(xmc_map(C, UINT64_MAX, 2, 0, 0, &p), XMC_EINVAL);
    /* Unlocked requests fail even with a locked entry right there. */
    p = MAP(0x5000, 0, XMC_LOCK);
    void *q = NULL;
    CHECK_EQ(xmc_map(C, 0x5000, 0, 0, 0, &q), XMC_EGRANT);
    CHECK(q == NULL);
    s = xt_stats(C);
    CHECK_EQ(s.misses, 1);
    CHECK_EQ(s.hits, 0);
    CHECK_EQ(s.entries, 1);
    CHECK_EQ(F->map_calls, 1);
    CHECK(strcmp(xmc_strerror(XMC_EGRANT), xmc_strerror(12345)) != 0); /* its own message */
    OK(xmc_unlock(C, p, NULL));
    fx_teardown();
}

TEST(grants_entry_unmapped_at_last_unlock)
{
    uint8_t *p, *q;
    xmc_stats s;

    setup();
    p = MAP(0x7010, 32, XMC_LOCK);
    CHECK(xt_has_pattern(p, 0x7010, 32));
    CHECK_EQ(F->map_calls, 1);
    CHECK_EQ(xt_stats(C).mapped_bytes, PAGE); /* one page: page-granular */
    /* A second lock of the same page shares the entry while it is locked. */
    q = MAP(0x7020, 8, XMC_LOCK | XMC_DMA);
    CHECK(q == p + 0x10);
    CHECK_EQ(F->map_calls, 1);
    s = xt_stats(C);
    CHECK_EQ(s.hits, 1);
    CHECK_EQ(s.entries, 1);
    OK(xmc_unlock(C, p, NULL));
    CHECK_EQ(fb_live(F), 1); /* still locked once */
    CHECK(xt_has_pattern(q, 0x7020, 8));
    OK(xmc_unlock(C, q, NULL));
    /* The last lock went: unmapped at once, nothing kept for later hits. */
    CHECK_EQ(fb_live(F), 0);
    CHECK(!xt_mapped(p - 0x10, PAGE, false));
    s = xt_stats(C);
    CHECK_EQ(s.entries, 0);
    CHECK_EQ(s.mapped_bytes, 0);
    CHECK_EQ(s.locked, 0);
    uint64_t pa;
    CHECK_EQ(xmc_ram_addr(C, p, &pa), XMC_ENOENT);
    CHECK_EQ(xmc_unlock(C, p, NULL), XMC_ENOENT);
    /* The same page again maps anew. */
    p = MAP(0x7010, 32, XMC_LOCK);
    CHECK_EQ(F->map_calls, 2);
    CHECK_EQ(xt_stats(C).misses, 2);
    OK(xmc_unlock(C, p, NULL));
    CHECK_EQ(F->unmap_calls, 2);
    fx_teardown();
}

TEST(grants_never_remap_a_colliding_entry)
{
    /* Slot 3 holds pages 3 and 19 (16 slots): a plain cache would reuse an
     * unlocked entry; a grant cache has none, so each page gets its own. */
    uint8_t *a, *b;

    setup();
    a = MAP(3 * PAGE, 0, XMC_LOCK);
    b = MAP(19 * PAGE, 0, XMC_LOCK);
    CHECK(xt_has_pattern(a, 3 * PAGE, PAGE));
    CHECK(xt_has_pattern(b, 19 * PAGE, PAGE));
    CHECK_EQ(xt_stats(C).remaps, 0);
    CHECK_EQ(F->fixed_maps, 0);
    OK(xmc_unlock(C, a, NULL));
    CHECK(xt_has_pattern(b, 19 * PAGE, PAGE));
    a = MAP(35 * PAGE, 0, XMC_LOCK); /* same slot again: a new entry, not a remap */
    CHECK_EQ(xt_stats(C).remaps, 0);
    CHECK_EQ(F->fixed_maps, 0);
    OK(xmc_unlock(C, a, NULL));
    OK(xmc_unlock(C, b, NULL));
    CHECK_EQ(fb_live(F), 0);
    fx_teardown();
}

TEST(grants_failed_map_leaves_no_entry)
{
    void *p;

    setup();
    fb_bad_pages(F, 9, 10);
    CHECK_EQ(xmc_map(C, 9 * PAGE, 0, XMC_LOCK, 0, &p), XMC_EMAP);
    CHECK_EQ(xt_stats(C).entries, 0);
    CHECK_EQ(fb_live(F), 0); /* the entry with an invalid page is gone */
    /* A request spanning a bad page: same. */
    CHECK_EQ(xmc_map(C, 8 * PAGE, 2 * PAGE, XMC_LOCK, 0, &p), XMC_EMAP);
    CHECK_EQ(fb_live(F), 0);
    /* Lock limit 0: refused before anything. */
    OK(xmc_cache_set_lock_limit(C, 0));
    CHECK_EQ(xmc_map(C, 2 * PAGE, 0, XMC_LOCK, 0, &p), XMC_EOVERFLOW);
    CHECK_EQ(fb_live(F), 0);
    CHECK_EQ(xt_stats(C).locked, 0);
    fx_teardown();
}

TEST(grants_lock_overflow_keeps_the_entry)
{
    void *p, *q;

    setup();
    OK(xmc_cache_set_lock_limit(C, 1));
    p = MAP(0x4000, 0, XMC_LOCK);
    CHECK_EQ(xmc_map(C, 0x4000, 0, XMC_LOCK, 0, &q), XMC_EOVERFLOW);
    CHECK_EQ(fb_live(F), 1);
    CHECK(xt_has_pattern(p, 0x4000, PAGE));
    OK(xmc_unlock(C, p, NULL));
    CHECK_EQ(fb_live(F), 0);
    fx_teardown();
}

TEST(grants_invalidate_reports_dma_and_keeps_locked)
{
    xmc_record *recs;
    size_t n;
    uint8_t *dev, *dma;

    setup();
    dev = MAPT(0x1000, 0, XMC_LOCK, 7);
    dma = MAPT(0x2000, 64, XMC_LOCK | XMC_DMA, 8);
    OK(xmc_invalidate(C, &recs, &n));
    CHECK_EQ(n, 1);
    CHECK_EQ(recs[0].address, (uintptr_t)dma);
    CHECK_EQ(recs[0].paddr, 0x2000);
    CHECK_EQ(recs[0].tag, 8);
    CHECK(recs[0].dma);
    xmc_records_free(recs);
    CHECK(xt_has_pattern(dev, 0x1000, PAGE));
    CHECK(xt_has_pattern(dma, 0x2000, 64));
    CHECK_EQ(fb_live(F), 2);
    OK(xmc_unlock(C, dma, NULL));
    OK(xmc_unlock(C, dev, NULL));
    CHECK_EQ(fb_live(F), 0);
    fx_teardown();
}

TEST(grants_replace_refused)
{
    void *p, *q = NULL;

    setup();
    p = MAP(0x3000, 0, XMC_LOCK);
    CHECK_EQ(xmc_replace(C, 0x3000, 0x9000, 0, &q), XMC_EGRANT);
    CHECK(q == NULL);
    CHECK_EQ(RAM_ADDR(p), 0x3000);
    CHECK_EQ(F->fixed_maps, 0);
    OK(xmc_unlock(C, p, NULL));
    fx_teardown();
}

TEST(grants_nowait_unlock_leaves_the_unmap_to_the_waiting_call)
{
    void *p, *q;

    setup();
    p = MAPT(0x6000, 0, XMC_LOCK, 5);
    q = MAPT(0x6000, 0, XMC_LOCK, 6);
    OK(xmc_unlock_tag_nowait(C, q, 6)); /* not the last lock: fine */
    CHECK_EQ(xmc_unlock_tag_nowait(C, p, 5), XMC_EAGAIN); /* would unmap */
    CHECK_EQ(xt_stats(C).locked, 1);
    CHECK_EQ(fb_live(F), 1);
    OK(xmc_unlock_tag(C, p, 5));
    CHECK_EQ(fb_live(F), 0);
    /* A nowait locked request hits a locked entry, and refuses a miss. */
    p = MAP(0x6000, 0, XMC_LOCK);
    OK(xmc_map_nowait(C, 0x6000, 0, XMC_LOCK, 0, &q));
    CHECK(q == p);
    CHECK_EQ(xmc_map_nowait(C, 0x8000, 0, XMC_LOCK, 0, &q), XMC_EAGAIN);
    OK(xmc_unlock(C, q, NULL));
    OK(xmc_unlock(C, p, NULL));
    fx_teardown();
}

TEST(grants_failed_unmap_reported_once_lock_gone)
{
    void *p;

    setup();
    p = MAP(0x3000, 0, XMC_LOCK);
    F->fail_unmap_at = F->unmap_calls + 1;
    CHECK_EQ(xmc_unlock(C, p, NULL), XMC_ESYS);
    CHECK_EQ(xt_stats(C).locked, 0);
    CHECK_EQ(xt_stats(C).entries, 0);
    CHECK_EQ(xmc_unlock(C, p, NULL), XMC_ENOENT); /* never retried */
    CHECK_EQ(fb_failed_unmaps(F), 1);
    fx_teardown();
}

TEST(grants_dummy_mode_entries_go_too)
{
    uint8_t *p;

    setup();
    OK(xmc_cache_set_dummy(C, true));
    fb_bad_pages(F, 4, 5);
    p = MAP(4 * PAGE, 0, XMC_LOCK);
    p[0] = 1; /* anonymous memory, writable */
    CHECK_EQ(xt_stats(C).entries, 1);
    OK(xmc_unlock(C, p, NULL));
    CHECK_EQ(xt_stats(C).entries, 0);
    CHECK(!xt_mapped(p, PAGE, false));
    fx_teardown();
}

TEST(grants_batches_unmap_at_last_unlock_and_undo)
{
    const xmc_sg segs[] = { { 2 * PAGE, 16 }, { 3 * PAGE, PAGE }, { 2 * PAGE, 8 } };
    const xmc_sg bad[] = { { 5 * PAGE, 16 }, { 6 * PAGE, 16 }, { 9 * PAGE, 16 } };
    void *out[3] = { NULL, NULL, NULL };
    void *q = NULL;

    setup();
    CHECK_EQ(xmc_map_sg(C, segs, 3, 0, 7, out), XMC_OK); /* a batch is locked */
    CHECK_EQ(xt_stats(C).entries, 2);
    CHECK_EQ(xt_stats(C).locked, 3);
    /* The nowait unlock of a grant batch leaves the unmaps to the waiting call. */
    CHECK_EQ(xmc_unlock_sg_nowait(C, out, 3, 7), XMC_EAGAIN);
    CHECK_EQ(xt_stats(C).locked, 3);
    OK(xmc_unlock_sg(C, out, 3, 7));
    CHECK_EQ(xt_stats(C).entries, 0); /* each entry went with its last lock */
    CHECK_EQ(xt_stats(C).locked, 0);
    CHECK(!xt_mapped(out[1], PAGE, false));

    /* A batch failing on its last segment keeps no entry of the first two. */
    fb_bad_pages(F, 9, 10);
    CHECK_EQ(xmc_map_sg(C, bad, 3, 0, 7, out), XMC_EMAP);
    CHECK_EQ(xt_stats(C).entries, 0);
    CHECK_EQ(xt_stats(C).locked, 0);
    CHECK_EQ(F->map_calls, F->unmap_calls);
    CHECK_EQ(xmc_map(C, 5 * PAGE, 0, 0, 0, &q), XMC_EGRANT);
    fx_teardown();
}

const xt_test xt_grants_tests[] = {
    XT(grants_need_page_buckets_and_no_map_yet),
    XT(grants_unlocked_requests_fail_and_map_nothing),
    XT(grants_entry_unmapped_at_last_unlock),
    XT(grants_never_remap_a_colliding_entry),
    XT(grants_failed_map_leaves_no_entry),
    XT(grants_lock_overflow_keeps_the_entry),
    XT(grants_invalidate_reports_dma_and_keeps_locked),
    XT(grants_replace_refused),
    XT(grants_nowait_unlock_leaves_the_unmap_to_the_waiting_call),
    XT(grants_failed_unmap_reported_once_lock_gone),
    XT(grants_dummy_mode_entries_go_too),
    XT(grants_batches_unmap_at_last_unlock_and_undo),
    XT_END,
};
