/*
 * test_lockfree.c - the hit that takes no lock (cache.c, hit_fast).
 *
 * An unlocked request of size 0 for the bucket of the last entry is answered
 * from a published copy of that entry, validated by a sequence counter, with
 * no mutex: so it answers while another thread holds the mutex, and counts
 * itself in a slot of its thread, summed exactly by xmc_stats_get().  Every
 * change of the last entry unpublishes it first, so a hit never returns an
 * address that is being remapped, blanked or unmapped; a call from inside a
 * backend callback, a forked child of a busy cache, and a closed cache still
 * get their answers from the locked path.
 *
 * The races are made deterministic with the core's test points (built with
 * -DXMC_TESTING): a hook runs a writer in the middle of a hit, after it read
 * the published entry and before it validated it, or runs a hit in the
 * middle of a writer's publication.
 *
 * Geometry: 64 KiB buckets, four slots, 1 MiB of pattern-filled guest RAM;
 * 0x10000 and 0x50000 share slot 1, 0x30000 is alone in slot 3.
 */
#include "fault_backend.h"
#include "xmc_internal.h"


#define B (UINT64_C(1) << 16)
#define A_PADDR UINT64_C(0x10123)    /* the last entry's bucket (slot 1) */
#define SAME_SLOT UINT64_C(0x50000)  /* another bucket of slot 1 */
#define OTHER_SLOT UINT64_C(0x30000) /* slot 3 */

static void setup(void)
{
    fx_setup(MIB, 16, 4 * B);
}

/* Make A_PADDR's entry the last one and give this thread its hit slot (the
 * first hit of a thread claims it under the mutex); returns the address. */
static uint8_t *last_at_a(void)
{
    uint8_t *a = MAP(A_PADDR, 0, 0);

    CHECK(MAP(A_PADDR, 0, 0) == a);
    return a;
}

TEST(lockfree_hit_answers_while_another_thread_holds_the_mutex)
{
    xmc_stats s0;
    uint8_t *a;
    void *p = NULL;

    setup();
    a = last_at_a();
    s0 = xt_stats(C);
    fx_park(OTHER_SLOT); /* a miss of another slot, inside the backend */
    OK(xmc_map_nowait(C, A_PADDR, 0, 0, 0, &p));
    CHECK(p == a);
    OK(xmc_map(C, A_PADDR + 0x1000, 0, 0, 0, &p)); /* and the waiting call: no wait */
    CHECK(p == a + 0x1000 && xt_has_pattern(p, A_PADDR + 0x1000, 64));
    /* Anything but a hit of the last entry's bucket still needs the mutex. */
    CHECK_EQ(xmc_map_nowait(C, A_PADDR, 1, 0, 0, &p), XMC_EAGAIN);
    CHECK_EQ(xmc_map_nowait(C, A_PADDR, 0, XMC_LOCK, 0, &p), XMC_EAGAIN);
    CHECK_EQ(xmc_map_nowait(C, A_PADDR + B, 0, 0, 0, &p), XMC_EAGAIN);
    CHECK(fx_unpark() != NULL);
    CHECK_EQ(xt_stats(C).hits, s0.hits + 2);
    CHECK_EQ(xt_stats(C).misses, s0.misses + 1);
    fx_teardown();
}

TEST(lockfree_hit_waits_while_the_last_entry_is_remapped)
{
    uint8_t *a;
    void *p = NULL;

    setup();
    a = last_at_a();
    /* The miss reuses the last (unlocked) entry of its slot: in the backend,
     * the entry's pages are being replaced, so no hit may return them. */
    fx_park(SAME_SLOT);
    CHECK_EQ(xmc_map_nowait(C, A_PADDR, 0, 0, 0, &p), XMC_EAGAIN);
    CHECK(p == NULL);
    CHECK(fx_unpark() == a - (A_PADDR & (B - 1)));
    CHECK_EQ(xt_stats(C).remaps, 1);
    p = MAP(A_PADDR, 0, 0); /* a miss again, as it must be */
    CHECK_EQ(xt_stats(C).misses, 3);
    fx_teardown();
}

/* An unmap that stops at the gate, and the thread that invalidates into it. */
static int (*plain_unmap)(void *, void *, size_t);

static int gated_unmap(void *opaque, void *addr, size_t len)
{
    xt_gate_pass();
    return plain_unmap(opaque, addr, len);
}

static void *invalidate_thread(void *arg)
{
    (void)arg;
    return (void *)(intptr_t)xmc_invalidate(C, NULL, NULL);
}

TEST(lockfree_hit_waits_while_the_last_entry_is_unmapped)
{
    pthread_t th;
    void *p = NULL, *ret;

    setup();
    last_at_a();
    plain_unmap = F->be.unmap;
    F->be.unmap = gated_unmap;
    CHECK(pthread_create(&th, NULL, invalidate_thread, NULL) == 0);
    xt_gate_wait_inside(); /* the last entry is being unmapped */
    CHECK_EQ(xmc_map_nowait(C, A_PADDR, 0, 0, 0, &p), XMC_EAGAIN);
    CHECK(p == NULL);
    xt_gate_open();
    CHECK(pthread_join(th, &ret) == 0);
    CHECK_EQ((intptr_t)ret, XMC_OK);
    F->be.unmap = plain_unmap;
    CHECK_EQ(xt_stats(C).entries, 0);
    fx_teardown();
}

/* Two entries of one bucket: A's, locked, and a two-bucket one that becomes
 * the last entry.  The published copy must follow it, though its bucket is
 * the same: a copy left at A's mapping would outlive A's unmapping, which
 * unpublishes only the last entry. */
TEST(lockfree_hit_follows_a_new_last_entry_of_the_same_bucket)
{
    uint64_t bucket = A_PADDR & ~(B - 1);
    uint8_t *a, *wide;
    void *p = NULL;

    setup();
    a = last_at_a();
    CHECK(MAP(A_PADDR, 0, XMC_LOCK) == a); /* A's entry stays: no reuse */
    wide = MAP(bucket, B + 1, XMC_LOCK);   /* a new entry, two buckets long */
    CHECK(wide != a - (A_PADDR - bucket));
    fx_park(OTHER_SLOT); /* the mutex held: only a lock-free hit answers */
    OK(xmc_map_nowait(C, A_PADDR, 0, 0, 0, &p));
    CHECK(fx_unpark() != NULL);
    CHECK(p == wide + (A_PADDR - bucket) && xt_has_pattern(p, A_PADDR, 64));
    fx_teardown();
}

/* ---- the seqlock, raced deterministically through the test points ------ */

static int hook_point;  /* the point that fires the hook, once */
static int hook_action; /* what it does there */
static int hook_rc;     /* the result of what it did */
static void *hook_ptr;

enum { ACT_INVALIDATE, ACT_REPLACE, ACT_MISS, ACT_HIT };

static void hook(xmc_cache *c, int point)
{
    if (point != hook_point || c != C)
        return;
    hook_point = 0; /* once: what it calls may pass the points again */
    switch (hook_action) {
    case ACT_INVALIDATE:
        hook_rc = xmc_invalidate(c, NULL, NULL);
        break;
    case ACT_REPLACE: /* A's entry now maps bucket 5: same host pages, other guest pages */
        hook_rc = xmc_replace(c, A_PADDR, SAME_SLOT, 0, &hook_ptr);
        break;
    case ACT_MISS: /* remaps A's entry in place, at bucket 5 */
        hook_rc = xmc_map(c, SAME_SLOT, 0, 0, 0, &hook_ptr);
        break;
    default: /* a hit of the bucket being published, by the publishing thread */
        hook_ptr = NULL;
        hook_rc = xmc_map_nowait(c, OTHER_SLOT + 0x40, 0, 0, 0, &hook_ptr);
        break;
    }
}

static void arm(int point, int action)
{
    hook_point = point;
    hook_action = action;
    hook_rc = -1;
    xmc_test_point = hook;
}

/* Each of these writers runs after the hit read the published entry and
 * before it validated it: the hit must not count, and must map afresh. */
static void hit_raced_by(int action)
{
    xmc_stats s0;
    uint8_t *p = NULL;

    setup();
    last_at_a();
    s0 = xt_stats(C);
    arm(XMC_TP_HIT_READ, action);
    OK(xmc_map(C, A_PADDR, 0, 0, 0, (void **)&p));
    xmc_test_point = NULL;
    OK(hook_rc);
    CHECK_EQ(xt_stats(C).hits, s0.hits);
    CHECK_EQ(xt_stats(C).misses, s0.misses + 1 + (action == ACT_MISS));
    CHECK(xt_has_pattern(p, A_PADDR, 64)); /* guest A's bytes, not bucket 5's */
    CHECK_EQ(RAM_ADDR(p), A_PADDR);
    fx_teardown();
}

TEST(lockfree_hit_rejects_a_read_raced_by_invalidate)
{
    hit_raced_by(ACT_INVALIDATE);
}

TEST(lockfree_hit_rejects_a_read_raced_by_replace)
{
    hit_raced_by(ACT_REPLACE);
}

TEST(lockfree_hit_rejects_a_read_raced_by_a_remap)
{
    hit_raced_by(ACT_MISS);
}

/* A hit in the middle of a publication (the bucket stored, its mapping not
 * yet) sees pub_gen ahead of pub_done: the locked path, whose mutex the
 * publisher holds. */
TEST(lockfree_hit_ignores_a_half_published_entry)
{
    uint8_t *a, *o;

    setup();
    a = last_at_a();
    arm(XMC_TP_PUBLISH, ACT_HIT);
    o = MAP(OTHER_SLOT, 0, 0); /* publishes bucket 3's entry */
    xmc_test_point = NULL;
    CHECK_EQ(hook_rc, XMC_EAGAIN);
    CHECK(hook_ptr == NULL);
    CHECK(o != a);
    CHECK(MAP(OTHER_SLOT + 0x40, 0, 0) == o + 0x40);
    fx_teardown();
}

/* ---- the answers of the locked path stay ---------------------------------- */

static int (*real_map)(void *, void *, uint64_t, size_t, int *, void **);
static int reentry_rc;

static int reentrant_map(void *opaque, void *fixed, uint64_t pfn, size_t n, int *errs, void **out)
{
    void *p;

    reentry_rc = xmc_map_nowait(C, A_PADDR, 0, 0, 0, &p);
    return real_map(opaque, fixed, pfn, n, errs, out);
}

TEST(lockfree_hit_from_a_backend_callback_is_refused)
{
    setup();
    last_at_a();
    real_map = F->be.map;
    F->be.map = reentrant_map;
    MAP(OTHER_SLOT, 0, 0);
    F->be.map = real_map;
    CHECK_EQ(reentry_rc, XMC_EREENTER);
    fx_teardown();
}

static void busy_child(void)
{
    void *p = NULL;

    fx_ungate();
    CHECK_EQ(xmc_map_nowait(C, A_PADDR, 0, 0, 0, &p), XMC_EFORKED);
    CHECK_EQ(xmc_map(C, A_PADDR, 0, 0, 0, &p), XMC_EFORKED);
    CHECK(p == NULL);
    xmc_cache_free(C); /* leaks it */
}

TEST(lockfree_hit_in_a_child_of_a_busy_cache_is_eforked)
{
    setup();
    last_at_a();
    fx_park(OTHER_SLOT); /* the mutex is held at fork() */
    CHECK(xt_in_child(busy_child));
    CHECK(fx_unpark() != NULL);
    fx_teardown();
}

TEST(lockfree_hit_never_serves_a_partly_mapped_page)
{
    uint64_t bad = (A_PADDR & ~(B - 1)) + 3 * PAGE;
    void *p = NULL;

    setup();
    fb_bad_pages(F, bad >> 12, (bad >> 12) + 1);
    last_at_a(); /* its entry lacks one page */
    CHECK(MAP(A_PADDR, 0, 0) != NULL);
    CHECK_EQ(xmc_map(C, bad + 8, 0, 0, 0, &p), XMC_EMAP);
    CHECK_EQ(xmc_map_nowait(C, bad, 0, 0, 0, &p), XMC_EAGAIN); /* a miss to retry */
    fb_clear_bad(F);
    fx_teardown();
}

static int traced_hits;

static void count_hits(void *opaque, const xmc_event *ev)
{
    (void)opaque;
    traced_hits += ev->kind == XMC_EV_HIT;
}

TEST(lockfree_hit_of_a_closed_or_traced_cache_takes_the_locked_path)
{
    uint8_t *a;
    void *p;

    setup();
    a = last_at_a();
    OK(xmc_cache_set_trace(C, count_hits, NULL));
    CHECK(MAP(A_PADDR, 0, 0) == a); /* traced: every hit is an event */
    CHECK_EQ(traced_hits, 1);
    OK(xmc_cache_set_trace(C, NULL, NULL));
    CHECK(MAP(A_PADDR, 0, 0) == a);
    CHECK_EQ(traced_hits, 1);
    OK(xmc_cache_close(C));
    CHECK_EQ(xmc_map(C, A_PADDR, 0, 0, 0, &p), XMC_ECLOSED);
    CHECK_EQ(xmc_map_nowait(C, A_PADDR, 0, 0, 0, &p), XMC_ECLOSED);
    fx_teardown();
}

/* ---- exact statistics ---------------------------------------------------- */

#define HITTERS 80 /* more than a cache has hit slots */
#define HITS_EACH 2000

static pthread_barrier_t all_alive;

static void *hitter(void *arg)
{
    uint8_t *a = arg;
    void *p;

    pthread_barrier_wait(&all_alive); /* every thread alive: each its own id */
    for (int i = 0; i < HITS_EACH; i++) {
        uint64_t off = (uint64_t)(i % 16) * PAGE;
        if (xmc_map(C, (A_PADDR & ~(B - 1)) + off, 0, 0, 0, &p) != XMC_OK || p != a - (A_PADDR & (B - 1)) + off)
            return (void *)1;
    }
    return NULL;
}

TEST(lockfree_hits_of_many_threads_are_counted_exactly)
{
    pthread_t th[HITTERS];
    xmc_stats s0, s1;
    uint8_t *a;

    setup();
    a = last_at_a();
    s0 = xt_stats(C);
    CHECK(pthread_barrier_init(&all_alive, NULL, HITTERS) == 0);
    for (int t = 0; t < HITTERS; t++)
        CHECK(pthread_create(&th[t], NULL, hitter, a) == 0);
    for (int t = 0; t < HITTERS; t++) {
        void *ret;
        CHECK(pthread_join(th[t], &ret) == 0);
        CHECK(ret == NULL);
    }
    pthread_barrier_destroy(&all_alive);
    s1 = xt_stats(C);
    CHECK_EQ(s1.hits, s0.hits + (uint64_t)HITTERS * HITS_EACH);
    CHECK_EQ(s1.misses, s0.misses);
    fx_teardown();
}

const xt_test xt_lockfree_tests[] = {
    XT(lockfree_hit_answers_while_another_thread_holds_the_mutex),
    XT(lockfree_hit_waits_while_the_last_entry_is_remapped),
    XT(lockfree_hit_waits_while_the_last_entry_is_unmapped),
    XT(lockfree_hit_follows_a_new_last_entry_of_the_same_bucket),
    XT(lockfree_hit_rejects_a_read_raced_by_invalidate),
    XT(lockfree_hit_rejects_a_read_raced_by_replace),
    XT(lockfree_hit_rejects_a_read_raced_by_a_remap),
    XT(lockfree_hit_ignores_a_half_published_entry),
    XT(lockfree_hit_from_a_backend_callback_is_refused),
    XT(lockfree_hit_in_a_child_of_a_busy_cache_is_eforked),
    XT(lockfree_hit_never_serves_a_partly_mapped_page),
    XT(lockfree_hit_of_a_closed_or_traced_cache_takes_the_locked_path),
    XT(lockfree_hits_of_many_threads_are_counted_exactly),
    XT_END,
};
