/*
 * test_sg.c - the batch calls xmc_map_sg() and xmc_unlock_sg() and their
 * _nowait twins.  A batch maps each segment as a locked xmc_map() would; when
 * segment k fails, the locks of segments 0..k-1 are undone, out[] is left as
 * it was, and the counters moved exactly as a single failed xmc_map() of
 * segment k would move them.  The failure cases are checked against a second
 * cache (a twin) that makes the same calls one by one.  xmc_unlock_sg() finds
 * a record for every address before it drops any.
 *
 * Geometry: 64 KiB buckets, four slots (buckets 0, 4, 8 and 12 collide),
 * max_size 256 KiB, 1 MiB of pattern-filled guest RAM.
 */
#include "fault_backend.h"

#include <limits.h>
#include <pthread.h>

#define SHIFT 16
#define B (UINT64_C(1) << SHIFT)
#define TAG 7
#define UNSET ((void *)(uintptr_t)0x5a5a5a5a)

static void setup(void)
{
    fx_setup(MIB, SHIFT, 4 * B);
}

/* Every outstanding locked mapping of c, oldest first (free it). */
typedef struct listing {
    xmc_record *r;
    size_t n;
} listing;

static listing list_locked(xmc_cache *c)
{
    listing l;

    OK(xmc_locked(c, &l.r, &l.n));
    return l;
}

static bool same_listing(listing a, listing b)
{
    return a.n == b.n && (a.n == 0 || memcmp(a.r, b.r, a.n * sizeof(*a.r)) == 0);
}

static bool same_stats(xmc_stats a, xmc_stats b)
{
    return memcmp(&a, &b, sizeof(a)) == 0;
}

static void fill_unset(void **out, size_t n)
{
    for (size_t i = 0; i < n; i++)
        out[i] = UNSET;
}

static bool all_unset(void *const *out, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (out[i] != UNSET)
            return false;
    return true;
}

TEST(sg_maps_each_segment_as_a_locked_map)
{
    /* Two in one bucket, one across two buckets (one 128 KiB entry), one page. */
    const xmc_sg segs[] = {
        { 0x20100, 0x200 }, { 0x20400, 0x10 }, { 0x38000, 0x10000 }, { 0x91234, 0 },
    };
    void *out[4];
    xmc_stats s0, s;
    listing l;

    setup();
    MAP(0x20000, 0, 0); /* bucket 2 is mapped already: the first two hit */
    s0 = xt_stats(C);
    OK(xmc_map_sg(C, segs, 4, XMC_DMA, TAG, out));
    s = xt_stats(C);
    CHECK_EQ(s.hits, s0.hits + 2);
    CHECK_EQ(s.misses, s0.misses + 2);
    CHECK_EQ(s.locked, 4);
    CHECK_EQ(s.dma_locked, 4);
    CHECK_EQ(s.entries, 3);
    CHECK_EQ(F->map_calls, 3);
    l = list_locked(C);
    CHECK_EQ(l.n, 4);
    for (size_t i = 0; i < 4; i++) {
        CHECK(xt_has_pattern(out[i], segs[i].paddr, segs[i].size ? segs[i].size : 1));
        CHECK_EQ(RAM_ADDR(out[i]), segs[i].paddr);
        CHECK_EQ(l.r[i].address, (uintptr_t)out[i]); /* oldest first: in order */
        CHECK_EQ(l.r[i].paddr, segs[i].paddr);
        CHECK_EQ(l.r[i].size, segs[i].size);
        CHECK_EQ(l.r[i].tag, TAG);
        CHECK(l.r[i].dma);
    }
    xmc_records_free(l.r);
    CHECK((uint8_t *)out[1] - (uint8_t *)out[0] == 0x300); /* one entry, two locks */
    /* XMC_LOCK may be passed too; without XMC_DMA the records are not DMA. */
    OK(xmc_map_sg(C, segs, 1, XMC_LOCK, TAG + 1, out));
    CHECK_EQ(xt_stats(C).dma_locked, 4);
    CHECK_EQ(xt_stats(C).locked, 5);
    OK(xmc_unlock_tag(C, out[0], TAG + 1));
    fx_teardown();
}

/* setup(), and a twin of C with a backend of its own (returned, for
 * fb_done()): both[0] is C, both[1] the twin. */
static fb *setup_with_twin(xmc_cache *both[2])
{
    fb *tf = fb_new(MIB);

    CHECK(tf != NULL);
    setup();
    OK(xmc_cache_new(&tf->be, SHIFT, 4 * B, &both[1]));
    both[0] = C;
    return tf;
}

/*
 * A batch leaves the last entry where the same locked maps made one by one
 * leave it: the entry of its last segment when it ends in hits (which set it
 * once, at the end) or in a miss after hits, and the entry of the segment
 * before the one that failed when it fails (here, on lock_limit 2).  The
 * last entry shows in what an unlocked size-0 map of bucket 2 does next:
 * through a last entry of two buckets at bucket 2 it hits; otherwise no
 * one-bucket entry of bucket 2 is found, and it misses.
 */
static void check_last_entry(const xmc_sg *segs, size_t n, int rc, bool then_hits)
{
    xmc_cache *both[2];
    fb *tf = setup_with_twin(both);
    xmc_cache *twin = both[1];
    xmc_stats s[2];
    void *out[4], *tout[4], *p;
    size_t i;

    for (int k = 0; k < 2; k++) {
        OK(xmc_cache_set_lock_limit(both[k], 2));
        MAPC(both[k], 0x2ff00, 0x200, 0); /* bucket 2's entry of two buckets */
        MAPC(both[k], 0x10000, 0, 0);     /* the last entry is bucket 1's */
    }
    CHECK_EQ(xmc_map_sg(C, segs, n, XMC_DMA, TAG, out), rc);
    for (i = 0; i < n; i++)
        if (xmc_map(twin, segs[i].paddr, segs[i].size, XMC_LOCK | XMC_DMA, TAG, &tout[i]) !=
            XMC_OK)
            break;
    CHECK_EQ(i == n ? XMC_OK : XMC_EOVERFLOW, rc);
    for (size_t k = 0; rc != XMC_OK && k < i; k++) /* the batch's undo */
        OK(xmc_unlock_tag(twin, tout[k], TAG));
    for (int k = 0; k < 2; k++) {
        xmc_stats before = xt_stats(both[k]);
        OK(xmc_map(both[k], 0x20000, 0, 0, 0, &p));
        s[k] = xt_stats(both[k]);
        CHECK_EQ(s[k].misses, before.misses + !then_hits);
    }
    if (rc != XMC_OK)
        s[1].hits -= i; /* a failed batch takes back its hits */
    CHECK(same_stats(s[0], s[1]));
    if (rc == XMC_OK)
        OK(xmc_unlock_sg(C, out, n, TAG));
    fb_done(tf, twin);
    fx_teardown();
}

TEST(sg_leaves_the_last_entry_where_single_maps_would)
{
    const xmc_sg hits[] = { { 0x10000, 0x10 }, { 0x2ff00, 0x200 } };
    const xmc_sg then_miss[] = { { 0x2ff00, 0x200 }, { 0x50000, 0x10 } };
    const xmc_sg miss_then_hit[] = { { 0x50000, 0x10 }, { 0x2ff00, 0x200 } };
    const xmc_sg overflow[] = { { 0x2ff00, 0x200 }, { 0x2ff00, 0x200 }, { 0x2ff00, 0x200 } };

    check_last_entry(hits, 2, XMC_OK, true);
    check_last_entry(then_miss, 2, XMC_OK, false);
    check_last_entry(miss_then_hit, 2, XMC_OK, true);
    check_last_entry(overflow, 3, XMC_EOVERFLOW, true);
}

TEST(sg_unlock_drops_every_address_given)
{
    const xmc_sg segs[] = { { 0x20000, 0x10 }, { 0x20000, 0x10 }, { 0x30000, 0x10 } };
    void *out[3], *addrs[3];
    xmc_stats s;

    setup();
    OK(xmc_map_sg(C, segs, 3, XMC_DMA, TAG, out));
    CHECK(out[0] == out[1]);
    addrs[0] = out[2], addrs[1] = out[0], addrs[2] = out[0]; /* any order */
    OK(xmc_unlock_sg(C, addrs, 3, TAG));
    s = xt_stats(C);
    CHECK_EQ(s.locked, 0);
    CHECK_EQ(s.dma_locked, 0);
    CHECK_EQ(xmc_unlock_tag(C, out[0], TAG), XMC_ENOENT);
    /* The entries are unlocked now: an invalidate drops them. */
    OK(xmc_invalidate(C, NULL, NULL));
    CHECK_EQ(xt_stats(C).entries, 0);
    fx_teardown();
}

TEST(sg_unlock_follows_the_tag_and_takes_the_newest)
{
    uint8_t *p;
    listing l;
    void *a[1];

    setup();
    p = MAPT(0x20000, 0x10, XMC_LOCK, TAG);
    MAPT(0x20000, 0x20, XMC_LOCK | XMC_DMA, TAG);
    MAPT(0x20000, 0x30, XMC_LOCK, TAG + 1);
    a[0] = p;
    OK(xmc_unlock_sg(C, a, 1, TAG)); /* the newest with TAG: the 0x20 one */
    l = list_locked(C);
    CHECK_EQ(l.n, 2);
    CHECK_EQ(l.r[0].size, 0x10);
    CHECK_EQ(l.r[1].size, 0x30);
    CHECK_EQ(xt_stats(C).dma_locked, 0);
    xmc_records_free(l.r);
    OK(xmc_unlock_sg(C, a, 1, TAG + 1));
    CHECK_EQ(xmc_unlock_sg(C, a, 1, TAG + 1), XMC_ENOENT);
    OK(xmc_unlock_sg(C, a, 1, TAG));
    CHECK_EQ(xt_stats(C).locked, 0);
    fx_teardown();
}

/* The records of c and twin, oldest first, alike but for their addresses
 * (the two caches map the same guest pages at different places). */
static bool alike_listings(xmc_cache *c, xmc_cache *twin)
{
    listing a = list_locked(c), b = list_locked(twin);
    bool same = a.n == b.n;

    for (size_t i = 0; same && i < a.n; i++)
        same = a.r[i].paddr == b.r[i].paddr && a.r[i].size == b.r[i].size &&
               a.r[i].tag == b.r[i].tag && a.r[i].dma == b.r[i].dma;
    xmc_records_free(a.r);
    xmc_records_free(b.r);
    return same;
}

/*
 * The unlock of the batch just mapped (its records the newest, which
 * xmc_unlock_sg() drops without a lookup), of a batch mapped before another
 * (looked up), and of addresses given twice, with an older record at the
 * same address and tag: each drops what single xmc_unlock_tag() calls drop
 * on a twin, in the order given.
 */
TEST(sg_unlock_drops_what_single_unlocks_would)
{
    const xmc_sg first[] = { { 0x20000, 0x10 }, { 0x30000, 0x20 }, { 0x20000, 0x30 } };
    const xmc_sg second[] = { { 0x30000, 0x40 }, { 0x50000, 0x50 } };
    xmc_cache *both[2];
    fb *tf = setup_with_twin(both);
    xmc_cache *twin = both[1];
    void *out[2][3], *more[2][2];

    for (int k = 0; k < 2; k++) {
        MAPC(both[k], 0x20000, 0x10, XMC_LOCK); /* older, at first[0]'s address */
        OK(xmc_map_sg(both[k], first, 3, XMC_DMA, TAG, out[k]));
        OK(xmc_map_sg(both[k], second, 2, 0, TAG, more[k]));
    }
    CHECK(out[0][0] == out[0][2]);
    OK(xmc_unlock_sg(C, out[0], 3, TAG)); /* not the newest: looked up */
    for (int i = 0; i < 3; i++)
        OK(xmc_unlock_tag(twin, out[1][i], TAG));
    CHECK(alike_listings(C, twin));
    CHECK(same_stats(xt_stats(C), xt_stats(twin)));
    OK(xmc_map_sg(C, first, 3, XMC_DMA, TAG, out[0]));
    OK(xmc_map_sg(twin, first, 3, XMC_DMA, TAG, out[1]));
    OK(xmc_unlock_sg(C, out[0], 3, TAG)); /* the newest */
    for (int i = 0; i < 3; i++)
        OK(xmc_unlock_tag(twin, out[1][i], TAG));
    CHECK(alike_listings(C, twin));
    CHECK(same_stats(xt_stats(C), xt_stats(twin)));
    OK(xmc_unlock_sg(C, more[0], 2, TAG)); /* the newest again */
    for (int i = 0; i < 2; i++)
        OK(xmc_unlock_tag(twin, more[1][i], TAG));
    CHECK(alike_listings(C, twin));
    CHECK_EQ(xt_stats(C).locked, 1); /* the older record stays */
    CHECK(same_stats(xt_stats(C), xt_stats(twin)));
    for (int k = 0; k < 2; k++) { /* every entry but the older record's is unlocked */
        OK(xmc_invalidate(both[k], NULL, NULL));
        CHECK_EQ(xt_stats(both[k]).entries, 1);
    }
    fb_done(tf, twin);
    fx_teardown();
}

TEST(sg_unlock_with_one_unknown_address_unlocks_nothing)
{
    const xmc_sg segs[] = { { 0x20000, 0x10 }, { 0x30000, 0x10 } };
    void *out[2], *bad[4];
    char elsewhere;
    listing l0, l;

    setup();
    OK(xmc_map_sg(C, segs, 2, 0, TAG, out));
    l0 = list_locked(C);
    /* unknown last, unknown first, NULL, one address more often than its
     * records, an interior pointer, the wrong tag: each refused whole */
    bad[0] = out[0], bad[1] = out[1], bad[2] = &elsewhere;
    CHECK_EQ(xmc_unlock_sg(C, bad, 3, TAG), XMC_ENOENT);
    bad[0] = &elsewhere, bad[1] = out[0], bad[2] = out[1];
    CHECK_EQ(xmc_unlock_sg(C, bad, 3, TAG), XMC_ENOENT);
    bad[0] = out[1], bad[1] = NULL;
    CHECK_EQ(xmc_unlock_sg(C, bad, 2, TAG), XMC_ENOENT);
    bad[0] = out[0], bad[1] = out[1], bad[2] = out[0];
    CHECK_EQ(xmc_unlock_sg(C, bad, 3, TAG), XMC_ENOENT);
    bad[0] = (uint8_t *)out[0] + 1;
    CHECK_EQ(xmc_unlock_sg(C, bad, 1, TAG), XMC_ENOENT);
    bad[0] = out[0];
    CHECK_EQ(xmc_unlock_sg(C, bad, 1, TAG + 1), XMC_ENOENT);
    CHECK_EQ(xmc_unlock_sg_nowait(C, bad, 1, TAG + 1), XMC_ENOENT);
    l = list_locked(C);
    CHECK(same_listing(l, l0));
    xmc_records_free(l.r);
    xmc_records_free(l0.r);
    CHECK_EQ(xt_stats(C).locked, 2);
    /* The refusals left no claim behind: the real thing works, once. */
    bad[0] = out[1], bad[1] = out[0];
    OK(xmc_unlock_sg(C, bad, 2, TAG));
    CHECK_EQ(xt_stats(C).locked, 0);
    CHECK_EQ(xmc_unlock_sg(C, bad, 1, TAG), XMC_ENOENT);
    fx_teardown();
}

/* ---- a batch failing at segment k, against a twin making single calls ---- */

typedef struct failure {
    const char *what;
    xmc_sg segs[4];
    size_t n, k; /* segment k fails with rc */
    int rc;
    bool checked_first; /* refused before any lookup: nothing moves at all */
    void (*prepare)(fb *f, xmc_cache *c);
} failure;

static void hole_at_0x60000(fb *f, xmc_cache *c)
{
    (void)c;
    fb_bad_pages(f, 0x60, 0x61);
}

static void third_map_call_fails(fb *f, xmc_cache *c)
{
    (void)c;
    f->fail_map_at = f->map_calls + 3;
    f->fail_map_rc = XMC_ESYS;
}

static void lock_limit_2(fb *f, xmc_cache *c)
{
    (void)f;
    OK(xmc_cache_set_lock_limit(c, 2));
}

static void lock_limit_0(fb *f, xmc_cache *c)
{
    (void)f;
    OK(xmc_cache_set_lock_limit(c, 0));
}

/* A record like the batch's first one already there, but of another size:
 * undoing the wrong one would show in the listing. */
static void same_address_locked_before(fb *f, xmc_cache *c)
{
    hole_at_0x60000(f, c);
    xt_map_(c, 0x20000, 0x20, XMC_LOCK | XMC_DMA, TAG, __FILE__, __LINE__);
}

static const failure failures[] = {
    { "a hole", { { 0x20100, 0x200 }, { 0x38000, 0x10000 }, { 0x60000, 0x10 }, { 0x70000, 0 } },
      4, 2, XMC_EMAP, false, hole_at_0x60000 },
    { "a hole first", { { 0x60000, 0x10 }, { 0x20000, 0x10 } }, 2, 0, XMC_EMAP, false,
      hole_at_0x60000 },
    { "a backend failure", { { 0x20000, 0x10 }, { 0x30000, 0x10 }, { 0x50000, 0x10 } }, 3, 2,
      XMC_ESYS, false, third_map_call_fails },
    /* bucket 4 shares bucket 0's slot: it remaps the prelude's unlocked entry */
    { "a remap then a hole", { { 0x40000, 0x10 }, { 0x60000, 0x10 } }, 2, 1, XMC_EMAP, false,
      hole_at_0x60000 },
    { "a lock overflow", { { 0x20000, 0x10 }, { 0x20100, 0x10 }, { 0x20200, 0x10 } }, 3, 2,
      XMC_EOVERFLOW, false, lock_limit_2 },
    { "no locks at all", { { 0x20000, 0x10 } }, 1, 0, XMC_EOVERFLOW, false, lock_limit_0 },
    { "the same address twice", { { 0x20000, 0x10 }, { 0x20000, 0x10 }, { 0x60000, 0x10 } },
      3, 2, XMC_EMAP, false, same_address_locked_before },
    { "a wrap-around", { { 0x20000, 0x10 }, { UINT64_MAX, 2 } }, 2, 1, XMC_EINVAL, true, NULL },
    { "a size over max_size", { { 0x20000, 0x10 }, { 0, 4 * B + 1 } }, 2, 1, XMC_EINVAL, true,
      NULL },
};

/* The state both caches start from: an unlocked entry in bucket 0 (the
 * last one) and a locked DMA mapping in bucket 1. */
static void prelude(xmc_cache *c)
{
    MAPC(c, 0x10000, 0x10, XMC_LOCK | XMC_DMA);
    MAPC(c, 0x00000, 0, 0);
}

static void check_failure(const failure *t)
{
    fb *tf = fb_new(MIB);
    xmc_cache *twin;
    xmc_stats s0, s, t0, t1;
    unsigned long calls0;
    listing l0, l;
    void *out[4], *p;

    CHECK(tf != NULL);
    setup();
    OK(xmc_cache_new(&tf->be, SHIFT, 4 * B, &twin));
    prelude(C);
    prelude(twin);
    if (t->prepare) {
        t->prepare(F, C);
        t->prepare(tf, twin);
    }
    s0 = xt_stats(C);
    l0 = list_locked(C);
    calls0 = F->map_calls;
    fill_unset(out, 4);
    if (xmc_map_sg(C, t->segs, t->n, XMC_DMA, TAG, out) != t->rc)
        xt_fail(__FILE__, __LINE__, "%s: not %s", t->what, xmc_strerror(t->rc));
    CHECK(all_unset(out, 4));
    l = list_locked(C);
    if (!same_listing(l, l0))
        xt_fail(__FILE__, __LINE__, "%s: the locked mappings changed", t->what);
    xmc_records_free(l.r);
    xmc_records_free(l0.r);
    s = xt_stats(C);
    if (t->checked_first) {
        CHECK(same_stats(s, s0));
        CHECK_EQ(F->map_calls, calls0);
    } else {
        /* The twin: segments 0..k-1 one by one, then k alone. */
        for (size_t i = 0; i < t->k; i++)
            OK(xmc_map(twin, t->segs[i].paddr, t->segs[i].size, XMC_LOCK | XMC_DMA, TAG, &p));
        t0 = xt_stats(twin);
        CHECK_EQ(xmc_map(twin, t->segs[t->k].paddr, t->segs[t->k].size, XMC_LOCK | XMC_DMA,
                         TAG, &p),
                 t->rc);
        t1 = xt_stats(twin);
        CHECK_EQ(s.hits, s0.hits + (t1.hits - t0.hits));
        CHECK_EQ(s.misses, s0.misses + (t1.misses - t0.misses));
        CHECK_EQ(s.remaps, s0.remaps + (t1.remaps - t0.remaps));
        CHECK_EQ(s.locked, s0.locked);
        CHECK_EQ(s.dma_locked, s0.dma_locked);
        CHECK_EQ(s.entries, t1.entries); /* what was mapped on the way stays */
        CHECK_EQ(s.mapped_bytes, t1.mapped_bytes);
        CHECK_EQ(s.invalidations, s0.invalidations);
        CHECK_EQ(F->map_calls, tf->map_calls);
    }
    /* The cache works on, and the good segments map as a batch. */
    fb_clear_bad(F);
    F->fail_map_at = 0;
    OK(xmc_cache_set_lock_limit(C, UINT32_MAX));
    if (t->k > 0) {
        OK(xmc_map_sg(C, t->segs, t->k, XMC_DMA, TAG, out));
        OK(xmc_unlock_sg(C, out, t->k, TAG));
    }
    CHECK_EQ(xt_stats(C).locked, s0.locked);
    fb_done(tf, twin);
    fx_teardown();
}

TEST(sg_failure_at_segment_k_undoes_the_batch)
{
    for (size_t i = 0; i < sizeof(failures) / sizeof(failures[0]); i++)
        check_failure(&failures[i]);
}

/* A translate callback runs without the cache's mutex, so another user's
 * calls can land in the middle of a batch: a failed batch takes back its own
 * counts, never theirs. */
static unsigned long translate_calls;

static int busy_translate(void *opaque, uint64_t paddr, uint64_t size, uint64_t *out)
{
    void *p;

    (void)size;
    translate_calls++;
    CHECK_EQ(xmc_map(opaque, 0x10000, 0, 0, 0, &p), XMC_OK); /* another user's hit */
    *out = paddr >= 0x60000 && paddr < 0x70000 ? paddr - 0x60000 + 0x50000 : paddr;
    return XMC_OK;
}

TEST(sg_failure_keeps_the_counts_of_calls_made_during_a_translate)
{
    /* segment 1 is translated (a hole, aliased); segment 2 is a hole too */
    const xmc_sg segs[] = { { 0x20000, 0x10 }, { 0x60000, 0x10 }, { 0x80000, 0x10 } };
    fb *tf = fb_new(MIB);
    xmc_cache *twin;
    xmc_stats s0, s, t0, t1;
    unsigned long before;
    void *out[3], *p;

    CHECK(tf != NULL);
    setup();
    OK(xmc_cache_new(&tf->be, SHIFT, 4 * B, &twin));
    prelude(C);
    prelude(twin);
    OK(xmc_cache_set_translate(C, busy_translate, C));
    OK(xmc_cache_set_translate(twin, busy_translate, twin));
    fb_bad_pages(F, 0x60, 0x61);
    fb_bad_pages(F, 0x80, 0x81);
    fb_bad_pages(tf, 0x60, 0x61);
    fb_bad_pages(tf, 0x80, 0x81);
    s0 = xt_stats(C);
    CHECK_EQ(xmc_map_sg(C, segs, 3, 0, TAG, out), XMC_EMAP);
    CHECK_EQ(translate_calls, 2);
    s = xt_stats(C);
    for (size_t i = 0; i < 2; i++)
        OK(xmc_map(twin, segs[i].paddr, segs[i].size, XMC_LOCK, TAG, &p));
    t0 = xt_stats(twin);
    before = translate_calls;
    CHECK_EQ(xmc_map(twin, segs[2].paddr, segs[2].size, XMC_LOCK, TAG, &p), XMC_EMAP);
    CHECK_EQ(translate_calls - before, 1);
    t1 = xt_stats(twin);
    /* The callback's hit during segment 1 stays counted. */
    CHECK_EQ(s.hits, s0.hits + 1 + (t1.hits - t0.hits));
    CHECK_EQ(s.misses, s0.misses + (t1.misses - t0.misses));
    CHECK_EQ(s.remaps, s0.remaps + (t1.remaps - t0.remaps));
    CHECK_EQ(s.locked, s0.locked);
    fb_done(tf, twin);
    fx_teardown();
}

/* A translate callback that waits until the main thread closed the cache. */
static int waiting_translate(void *opaque, uint64_t paddr, uint64_t size, uint64_t *out)
{
    (void)opaque, (void)size;
    xt_gate_pass();
    *out = paddr - 0x60000 + 0x50000; /* to RAM that maps fine */
    return XMC_OK;
}

static void *batch_through_translate(void *arg)
{
    static const xmc_sg segs[] = { { 0x20000, 0x10 }, { 0x60000, 0x10 } };
    static int rc;

    rc = xmc_map_sg(C, segs, 2, XMC_DMA, TAG, arg);
    return &rc;
}

TEST(sg_close_while_a_batch_waits_in_translate_fails_the_batch)
{
    void *out[2] = { UNSET, UNSET }, *ret;
    pthread_t th;

    setup();
    fb_bad_pages(F, 0x60, 0x70);
    OK(xmc_cache_set_translate(C, waiting_translate, NULL));
    CHECK(pthread_create(&th, NULL, batch_through_translate, out) == 0);
    xt_gate_wait_inside(); /* segment 0 is locked; segment 1 is in translate */
    OK(xmc_cache_close(C)); /* drops segment 0's record and entry */
    xt_gate_open();
    CHECK(pthread_join(th, &ret) == 0);
    CHECK_EQ(*(int *)ret, XMC_ECLOSED);
    CHECK(all_unset(out, 2));
    CHECK_EQ(fb_live(F), 0);
    fx_teardown();
}

TEST(sg_batches_beyond_the_stack_buffer_and_at_the_limit)
{
    xmc_sg *segs = calloc(XMC_SG_MAX, sizeof(*segs));
    void **out = calloc(XMC_SG_MAX, sizeof(*out));
    xmc_stats s;

    CHECK(segs && out);
    setup();
    for (size_t i = 0; i < XMC_SG_MAX; i++)
        segs[i] = (xmc_sg){ 0x20000 + (i % 16) * 0x1000, 0x100 };
    OK(xmc_map_sg(C, segs, XMC_SG_MAX, 0, TAG, out));
    s = xt_stats(C);
    CHECK_EQ(s.locked, XMC_SG_MAX);
    CHECK_EQ(s.misses, 1);
    CHECK_EQ(s.hits, XMC_SG_MAX - 1);
    CHECK(out[17] == (uint8_t *)out[1]);
    OK(xmc_unlock_sg(C, out, XMC_SG_MAX, TAG));
    CHECK_EQ(xt_stats(C).locked, 0);
    /* 65 segments (one more than fit on the stack), the last one a hole. */
    fb_bad_pages(F, 0x60, 0x61);
    segs[64] = (xmc_sg){ 0x60000, 0x10 };
    fill_unset(out, 65);
    CHECK_EQ(xmc_map_sg(C, segs, 65, 0, TAG, out), XMC_EMAP);
    CHECK(all_unset(out, 65));
    CHECK_EQ(xt_stats(C).locked, 0);
    free(segs);
    free(out);
    fx_teardown();
}

TEST(sg_hostile_arguments_are_refused_and_change_nothing)
{
    const xmc_sg segs[] = { { 0x20000, 0x10 } };
    void *out[1] = { UNSET }, *addrs[1];
    xmc_stats s0;

    setup();
    addrs[0] = MAPT(0x30000, 0x10, XMC_LOCK, TAG);
    s0 = xt_stats(C);
    CHECK_EQ(xmc_map_sg(NULL, segs, 1, 0, TAG, out), XMC_EINVAL);
    CHECK_EQ(xmc_map_sg(C, NULL, 1, 0, TAG, out), XMC_EINVAL);
    CHECK_EQ(xmc_map_sg(C, segs, 1, 0, TAG, NULL), XMC_EINVAL);
    CHECK_EQ(xmc_map_sg(C, segs, 0, 0, TAG, out), XMC_EINVAL);
    CHECK_EQ(xmc_map_sg(C, segs, XMC_SG_MAX + 1, 0, TAG, out), XMC_EINVAL);
    CHECK_EQ(xmc_map_sg(C, segs, SIZE_MAX, 0, TAG, out), XMC_EINVAL);
    CHECK_EQ(xmc_map_sg(C, segs, SIZE_MAX / sizeof(xmc_sg) + 1, 0, TAG, out), XMC_EINVAL);
    CHECK_EQ(xmc_map_sg(C, segs, 1, 4, TAG, out), XMC_EINVAL);
    CHECK_EQ(xmc_map_sg(C, segs, 1, XMC_DMA | 8, TAG, out), XMC_EINVAL);
    CHECK_EQ(xmc_map_sg(C, segs, 1, 0x80000000u, TAG, out), XMC_EINVAL);
    CHECK_EQ(xmc_map_sg(C, segs, 1, UINT_MAX, TAG, out), XMC_EINVAL);
    CHECK_EQ(xmc_map_sg_nowait(NULL, segs, 1, 0, TAG, out), XMC_EINVAL);
    CHECK_EQ(xmc_map_sg_nowait(C, NULL, 1, 0, TAG, out), XMC_EINVAL);
    CHECK_EQ(xmc_map_sg_nowait(C, segs, 1, 0, TAG, NULL), XMC_EINVAL);
    CHECK_EQ(xmc_map_sg_nowait(C, segs, 0, 0, TAG, out), XMC_EINVAL);
    CHECK_EQ(xmc_map_sg_nowait(C, segs, SIZE_MAX, 0, TAG, out), XMC_EINVAL);
    CHECK_EQ(xmc_map_sg_nowait(C, segs, 1, 0x80000000u, TAG, out), XMC_EINVAL);
    CHECK_EQ(xmc_unlock_sg(NULL, addrs, 1, TAG), XMC_EINVAL);
    CHECK_EQ(xmc_unlock_sg(C, NULL, 1, TAG), XMC_EINVAL);
    CHECK_EQ(xmc_unlock_sg(C, addrs, 0, TAG), XMC_EINVAL);
    CHECK_EQ(xmc_unlock_sg(C, addrs, XMC_SG_MAX + 1, TAG), XMC_EINVAL);
    CHECK_EQ(xmc_unlock_sg(C, addrs, SIZE_MAX, TAG), XMC_EINVAL);
    CHECK_EQ(xmc_unlock_sg(C, addrs, SIZE_MAX / sizeof(void *) + 1, TAG), XMC_EINVAL);
    CHECK_EQ(xmc_unlock_sg_nowait(NULL, addrs, 1, TAG), XMC_EINVAL);
    CHECK_EQ(xmc_unlock_sg_nowait(C, NULL, 1, TAG), XMC_EINVAL);
    CHECK_EQ(xmc_unlock_sg_nowait(C, addrs, SIZE_MAX, TAG), XMC_EINVAL);
    CHECK(out[0] == UNSET);
    CHECK(same_stats(xt_stats(C), s0));
    CHECK_EQ(F->map_calls, 1);
    OK(xmc_unlock_sg(C, addrs, 1, TAG));
    fx_teardown();
}

/* ---- trace events ------------------------------------------------------------ */

static char events[64];
static size_t nevents;

static int trace_letters(void *opaque, const xmc_event *e)
{
    static const char letters[] = "?hmMRxdtoUlaIDrG"; /* by XMC_EV_* number */

    (void)opaque;
    if (nevents < sizeof(events) - 1)
        events[nevents++] = e->kind < sizeof(letters) - 1 ? letters[e->kind] : '!';
    if (e->kind == XMC_EV_UNLOCK_UNKNOWN)
        CHECK(e->tag == TAG && e->address == (uintptr_t)UNSET && e->rc == XMC_ENOENT);
    return 0;
}

/* The events since the last call, as letters (h hit, m miss, M map, t
 * translate, o lock overflow, U unlock, l unknown unlock). */
static const char *take_events(void)
{
    events[nevents] = 0;
    nevents = 0;
    return events;
}

TEST(sg_traced_batches_report_each_segment_and_their_undo)
{
    const xmc_sg segs[] = { { 0x20000, 0x10 }, { 0x30000, 0x10 }, { 0x20100, 0x10 } };
    const xmc_sg failing[] = { { 0x20000, 0x10 }, { 0x60000, 0x10 } };
    void *out[3], *bad[2];

    setup();
    OK(xmc_cache_set_trace(C, trace_letters, NULL));
    OK(xmc_map_sg(C, segs, 3, XMC_DMA, TAG, out));
    CHECK(strcmp(take_events(), "MmMmh") == 0); /* as three locked maps */
    fb_bad_pages(F, 0x60, 0x61);
    CHECK_EQ(xmc_map_sg(C, failing, 2, 0, TAG, out), XMC_EMAP);
    /* a hit, a miss through translate (the fb backend's: no change), the undo */
    CHECK(strcmp(take_events(), "hMtRmU") == 0);
    bad[0] = out[0], bad[1] = UNSET;
    CHECK_EQ(xmc_unlock_sg(C, bad, 2, TAG), XMC_ENOENT);
    CHECK(strcmp(take_events(), "l") == 0);
    OK(xmc_unlock_sg(C, out, 3, TAG));
    CHECK(strcmp(take_events(), "UUU") == 0);
    fx_teardown();
}

/* ---- the _nowait twins ----------------------------------------------------- */

TEST(sg_nowait_serves_hits_and_refuses_a_miss_changing_nothing)
{
    const xmc_sg segs[] = { { 0x20100, 0x10 }, { 0x30000, 0x100 }, { 0x20200, 0 },
                            { 0x50000, 0x10 } };
    void *out[4], *w[4];
    xmc_stats s0, s;
    listing l0, l;

    setup();
    MAP(0x20000, 0, 0);
    MAP(0x30000, 0x10, XMC_LOCK); /* bucket 3 mapped and locked */
    s0 = xt_stats(C);
    OK(xmc_map_sg_nowait(C, segs, 3, XMC_DMA, TAG, out));
    s = xt_stats(C);
    CHECK_EQ(s.hits, s0.hits + 3);
    CHECK_EQ(s.misses, s0.misses);
    CHECK_EQ(s.dma_locked, 3);
    CHECK_EQ(F->map_calls, 2);
    OK(xmc_unlock_sg_nowait(C, out, 3, TAG));
    /* Bucket 5 would miss: refused, with nothing changed at all. */
    s0 = xt_stats(C);
    l0 = list_locked(C);
    fill_unset(out, 4);
    CHECK_EQ(xmc_map_sg_nowait(C, segs, 4, XMC_DMA, TAG, out), XMC_EAGAIN);
    CHECK(all_unset(out, 4));
    CHECK(same_stats(xt_stats(C), s0));
    l = list_locked(C);
    CHECK(same_listing(l, l0));
    xmc_records_free(l.r);
    xmc_records_free(l0.r);
    CHECK_EQ(F->map_calls, 2);
    /* The waiting call then does it all once; the same addresses as before. */
    OK(xmc_map_sg(C, segs, 4, XMC_DMA, TAG, w));
    CHECK_EQ(xt_stats(C).misses, s0.misses + 1);
    CHECK_EQ(xt_stats(C).hits, s0.hits + 3);
    CHECK_EQ(F->map_calls, 3);
    OK(xmc_unlock_sg(C, w, 4, TAG));
    fx_teardown();
}

/* A refused _nowait batch traces nothing, like every refused _nowait call;
 * one that answers does what the waiting batch would, event for event. */
TEST(sg_nowait_traced_refusal_traces_nothing)
{
    const xmc_sg segs[] = { { 0x20100, 0x10 }, { 0x20200, 0x10 }, { 0x50000, 0x10 } };
    void *out[3], *w[3];
    xmc_stats s0;

    setup();
    MAP(0x20000, 0, 0);
    OK(xmc_cache_set_trace(C, trace_letters, NULL));
    s0 = xt_stats(C);
    fill_unset(out, 3);
    /* Two hits, then a miss: refused, with not a single event. */
    CHECK_EQ(xmc_map_sg_nowait(C, segs, 3, XMC_DMA, TAG, out), XMC_EAGAIN);
    CHECK(strcmp(take_events(), "") == 0);
    CHECK(all_unset(out, 3));
    CHECK(same_stats(xt_stats(C), s0));
    /* Served: a hit per segment, in order, with the addresses given out. */
    OK(xmc_map_sg_nowait(C, segs, 2, XMC_DMA, TAG, out));
    CHECK(strcmp(take_events(), "hh") == 0);
    /* Failed otherwise (lock overflow at segment 1): the waiting batch's events. */
    OK(xmc_cache_set_lock_limit(C, 3)); /* out holds two of the entry's locks */
    CHECK_EQ(xmc_map_sg_nowait(C, segs, 2, 0, TAG, w), XMC_EOVERFLOW);
    CHECK(strcmp(take_events(), "hoU") == 0);
    CHECK_EQ(xmc_map_sg(C, segs, 2, 0, TAG, w), XMC_EOVERFLOW);
    CHECK(strcmp(take_events(), "hoU") == 0);
    OK(xmc_unlock_sg_nowait(C, out, 2, TAG));
    CHECK(strcmp(take_events(), "UU") == 0);
    CHECK_EQ(xt_stats(C).locked, 0);
    fx_teardown();
}

static int (*real_map)(void *, void *, uint64_t, size_t, int *, void **);
static int reentry_rc[2];

static int reentrant_map(void *opaque, void *fixed, uint64_t pfn, size_t n, int *errs, void **out)
{
    const xmc_sg segs[] = { { 0x20000, 0x10 } };
    void *p[1] = { NULL };

    reentry_rc[0] = xmc_map_sg(C, segs, 1, 0, TAG, p);
    reentry_rc[1] = xmc_unlock_sg(C, p, 1, TAG);
    return real_map(opaque, fixed, pfn, n, errs, out);
}

TEST(sg_nowait_does_not_wait_and_callbacks_get_ereenter)
{
    const xmc_sg segs[] = { { 0x20000, 0x10 } };
    void *out[1];

    setup();
    OK(xmc_map_sg(C, segs, 1, 0, TAG, out));
    real_map = F->be.map;
    fx_park(0x50000); /* another thread holds the mutex, in the backend */
    CHECK_EQ(xmc_map_sg_nowait(C, segs, 1, 0, TAG, out), XMC_EAGAIN);
    CHECK_EQ(xmc_unlock_sg_nowait(C, out, 1, TAG), XMC_EAGAIN);
    CHECK(fx_unpark() != NULL);
    CHECK_EQ(xt_stats(C).locked, 1);
    F->be.map = reentrant_map;
    MAP(0x60000, 0, 0);
    F->be.map = real_map;
    CHECK_EQ(reentry_rc[0], XMC_EREENTER);
    CHECK_EQ(reentry_rc[1], XMC_EREENTER);
    OK(xmc_unlock_sg_nowait(C, out, 1, TAG));
    CHECK_EQ(xt_stats(C).locked, 0);
    fx_teardown();
}

const xt_test xt_sg_tests[] = {
    XT(sg_maps_each_segment_as_a_locked_map),
    XT(sg_leaves_the_last_entry_where_single_maps_would),
    XT(sg_unlock_drops_every_address_given),
    XT(sg_unlock_follows_the_tag_and_takes_the_newest),
    XT(sg_unlock_drops_what_single_unlocks_would),
    XT(sg_unlock_with_one_unknown_address_unlocks_nothing),
    XT(sg_failure_at_segment_k_undoes_the_batch),
    XT(sg_failure_keeps_the_counts_of_calls_made_during_a_translate),
    XT(sg_close_while_a_batch_waits_in_translate_fails_the_batch),
    XT(sg_batches_beyond_the_stack_buffer_and_at_the_limit),
    XT(sg_hostile_arguments_are_refused_and_change_nothing),
    XT(sg_traced_batches_report_each_segment_and_their_undo),
    XT(sg_nowait_serves_hits_and_refuses_a_miss_changing_nothing),
    XT(sg_nowait_traced_refusal_traces_nothing),
    XT(sg_nowait_does_not_wait_and_callbacks_get_ereenter),
    XT_END,
};
