/*
 * test_nowait.c - the cache's mutex seen from its callers.  The _nowait
 * calls give the same answers as the waiting calls where they need neither
 * the backend nor a mutex another thread holds; otherwise XMC_EAGAIN with
 * nothing changed (statistics, entries, records, backend calls), so that the
 * waiting retry does everything exactly once.  A call from inside a backend
 * callback into the same cache fails with XMC_EREENTER instead of waiting
 * for itself.
 *
 * Geometry: 64 KiB buckets, four slots, 1 MiB of pattern-filled guest RAM.
 */
#include "fault_backend.h"

#include <pthread.h>

#define B (UINT64_C(1) << 16)

static void setup(void)
{
    fx_setup(MIB, 16, 4 * B);
}

static bool same_stats(xmc_stats a, xmc_stats b)
{
    return memcmp(&a, &b, sizeof(a)) == 0;
}

TEST(nowait_hits_answer_like_the_waiting_calls)
{
    uint8_t *u, *l, buf[64];
    xmc_stats s0, s1;
    uint64_t paddr;
    void *p;

    setup();
    u = MAP(0x12345, 0, 0);
    s0 = xt_stats(C);
    OK(xmc_map_nowait(C, 0x12345, 0, 0, 0, &p)); /* the fast path */
    CHECK(p == u);
    OK(xmc_map_nowait(C, 0x12345, 0x100, XMC_LOCK | XMC_DMA, 7, &p)); /* in the chain */
    l = p;
    CHECK(l == u);
    s1 = xt_stats(C);
    CHECK_EQ(s1.hits, s0.hits + 2);
    CHECK_EQ(s1.misses, s0.misses);
    CHECK_EQ(s1.locked, 1);
    CHECK_EQ(s1.dma_locked, 1);
    OK(xmc_ram_addr_nowait(C, l + 3, &paddr));
    CHECK_EQ(paddr, 0x12348);
    OK(xmc_read_nowait(C, 0x12000, buf, sizeof(buf)));
    CHECK(xt_has_pattern(buf, 0x12000, sizeof(buf)));
    CHECK_EQ(xmc_unlock_tag_nowait(C, l, 8), XMC_ENOENT); /* wrong tag: final */
    OK(xmc_unlock_tag_nowait(C, l, 7));
    CHECK_EQ(xt_stats(C).locked, 0);
    CHECK_EQ(F->map_calls, 1);
    fx_teardown();
}

TEST(nowait_miss_changes_nothing_and_the_retry_maps_once)
{
    xmc_stats s0;
    uint8_t buf[16];
    void *p = NULL;

    setup();
    MAP(0x10000, 0, 0);
    s0 = xt_stats(C);
    CHECK_EQ(xmc_map_nowait(C, 0x20000, 0, 0, 0, &p), XMC_EAGAIN);
    CHECK_EQ(xmc_map_nowait(C, 0x20000, 0x10, XMC_LOCK, 0, &p), XMC_EAGAIN);
    CHECK_EQ(xmc_read_nowait(C, 0x30000, buf, sizeof(buf)), XMC_EAGAIN);
    CHECK(p == NULL);
    CHECK(same_stats(xt_stats(C), s0));
    CHECK_EQ(F->map_calls, 1);
    MAP(0x20000, 0x10, XMC_LOCK); /* the waiting call: one miss, one map */
    CHECK_EQ(xt_stats(C).misses, s0.misses + 1);
    CHECK_EQ(F->map_calls, 2);
    OK(xmc_map_nowait(C, 0x20000, 0x10, XMC_LOCK, 0, &p)); /* and now it hits */
    CHECK_EQ(xt_stats(C).locked, 2);
    fx_teardown();
}

TEST(nowait_read_serves_one_bucket_only)
{
    uint8_t buf[32];
    xmc_stats s0;

    setup();
    MAP(0x10000, 0, 0);
    MAP(0x20000, 0, 0);
    s0 = xt_stats(C);
    /* Both buckets are mapped, but a read across them is left to the
     * waiting call: nothing is counted twice. */
    CHECK_EQ(xmc_read_nowait(C, 0x20000 - 16, buf, sizeof(buf)), XMC_EAGAIN);
    CHECK(same_stats(xt_stats(C), s0));
    OK(xmc_read(C, 0x20000 - 16, buf, sizeof(buf)));
    CHECK(xt_has_pattern(buf, 0x20000 - 16, sizeof(buf)));
    CHECK_EQ(xt_stats(C).hits, s0.hits + 2);
    OK(xmc_read_nowait(C, 0x20000 - 16, buf, 16)); /* up to the bucket's end */
    OK(xmc_read_nowait(C, 0x20000, buf, 0));
    fx_teardown();
}

TEST(nowait_write_serves_one_bucket_and_a_refusal_writes_nothing)
{
    uint8_t buf[32], back[32];
    xmc_stats s0;

    setup();
    memset(buf, 0xa5, sizeof(buf));
    MAP(0x10000, 0, 0);
    MAP(0x20000, 0, 0);
    s0 = xt_stats(C);
    /* Across two buckets, or onto one not mapped: refused, not a byte written. */
    CHECK_EQ(xmc_write_nowait(C, 0x20000 - 16, buf, sizeof(buf)), XMC_EAGAIN);
    CHECK_EQ(xmc_write_nowait(C, 0x30000, buf, sizeof(buf)), XMC_EAGAIN);
    CHECK(same_stats(xt_stats(C), s0));
    CHECK_EQ(F->map_calls, 2);
    OK(xmc_read(C, 0x20000 - 16, back, sizeof(back)));
    CHECK(xt_has_pattern(back, 0x20000 - 16, sizeof(back)));
    OK(xmc_ram_read(F->ram, 0x30000, back, sizeof(back)));
    CHECK(xt_has_pattern(back, 0x30000, sizeof(back)));
    /* Within one mapped bucket: written, as the waiting call would. */
    s0 = xt_stats(C);
    OK(xmc_write_nowait(C, 0x10000 + 8, buf, sizeof(buf)));
    CHECK_EQ(xt_stats(C).hits, s0.hits + 1);
    OK(xmc_ram_read(F->ram, 0x10000 + 8, back, sizeof(back)));
    CHECK(memcmp(back, buf, sizeof(buf)) == 0);
    OK(xmc_write_nowait(C, 0x10000, buf, 0));
    fx_teardown();
}

TEST(nowait_errors_are_final)
{
    uint64_t out;
    void *p;
    char c;

    setup();
    MAP(0x10000, 0, 0);
    CHECK_EQ(xmc_map_nowait(C, UINT64_MAX, 2, 0, 0, &p), XMC_EINVAL);
    CHECK_EQ(xmc_map_nowait(C, 0x10000, 0, 0x80000000u, 0, &p), XMC_EINVAL);
    CHECK_EQ(xmc_map(C, 0x10000, 0, 0x80000000u, 0, &p), XMC_EINVAL);
    CHECK_EQ(xmc_map_nowait(C, 0x10000, 0, 0, 0, NULL), XMC_EINVAL);
    CHECK_EQ(xmc_ram_addr_nowait(C, &c, &out), XMC_ENOENT);
    CHECK_EQ(xmc_ram_addr_nowait(C, &c, NULL), XMC_EINVAL);
    CHECK_EQ(xmc_unlock_tag_nowait(C, &c, 0), XMC_ENOENT);
    CHECK_EQ(xmc_read_nowait(C, 0x10000, NULL, 1), XMC_EINVAL);
    CHECK_EQ(xmc_write_nowait(C, 0x10000, NULL, 1), XMC_EINVAL);
    CHECK_EQ(xmc_write_nowait(C, UINT64_MAX - 8, &c, 64), XMC_EINVAL);
    OK(xmc_cache_set_lock_limit(C, 0));
    CHECK_EQ(xmc_map_nowait(C, 0x10000, 0, XMC_LOCK, 0, &p), XMC_EOVERFLOW);
    CHECK_EQ(xt_stats(C).locked, 0);
    fx_teardown();
}

/* The backend's own map, for callbacks that wrap it. */
static int (*real_map)(void *, void *, uint64_t, size_t, int *, void **);

/* A thread parked in the backend holds the mutex while the main thread sees
 * what a _nowait call does meanwhile. */
TEST(nowait_does_not_wait_for_a_mutex_another_thread_holds)
{
    uint8_t *l, buf[8];
    uint64_t paddr;
    void *p;

    setup();
    l = MAP(0x10000, 0x10, XMC_LOCK);
    fx_park(0x30000);
    /* The other thread is inside the backend, under the cache's mutex.  (A
     * hit of the last entry needs no mutex at all: test_lockfree.c.) */
    CHECK_EQ(xmc_map_nowait(C, 0x10000, 0x10, 0, 0, &p), XMC_EAGAIN);
    CHECK_EQ(xmc_ram_addr_nowait(C, l, &paddr), XMC_EAGAIN);
    CHECK_EQ(xmc_unlock_tag_nowait(C, l, 0), XMC_EAGAIN);
    CHECK_EQ(xmc_read_nowait(C, 0x10000, buf, sizeof(buf)), XMC_EAGAIN);
    CHECK_EQ(xmc_write_nowait(C, 0x10000, buf, sizeof(buf)), XMC_EAGAIN);
    CHECK(fx_unpark() != NULL);
    OK(xmc_unlock_tag_nowait(C, l, 0)); /* nothing was changed by the refusals */
    CHECK_EQ(xt_stats(C).locked, 0);
    fx_teardown();
}

/* Backend callbacks that call back into the cache they serve. */
static int (*real_unmap)(void *, void *, size_t);
static int reentry_rc[6];
static xmc_cache *other; /* a second cache: calls into it are fine */

static int reentrant_map(void *opaque, void *fixed, uint64_t pfn, size_t n, int *errs, void **out)
{
    xmc_stats st;
    void *p;

    reentry_rc[0] = xmc_map(C, 0x10000, 0, 0, 0, &p);
    reentry_rc[1] = xmc_map_nowait(C, 0x10000, 0, 0, 0, &p);
    reentry_rc[2] = xmc_stats_get(C, &st);
    reentry_rc[3] = xmc_stats_get(other, &st);
    return real_map(opaque, fixed, pfn, n, errs, out);
}

static int reentrant_unmap(void *opaque, void *addr, size_t len)
{
    reentry_rc[4] = xmc_invalidate(C, NULL, NULL);
    reentry_rc[5] = xmc_cache_close(C);
    return real_unmap(opaque, addr, len);
}

TEST(a_backend_callback_calling_its_own_cache_fails_instead_of_hanging)
{
    void *p;

    setup();
    OK(xmc_cache_new(&F->be, 16, 4 * B, &other));
    real_map = F->be.map;
    real_unmap = F->be.unmap;
    F->be.map = reentrant_map;
    F->be.unmap = reentrant_unmap;
    p = MAP(0x20000, 0x10, XMC_LOCK); /* the outer call goes on as usual */
    CHECK_EQ(reentry_rc[0], XMC_EREENTER);
    CHECK_EQ(reentry_rc[1], XMC_EREENTER); /* not XMC_EAGAIN: waiting cannot help */
    CHECK_EQ(reentry_rc[2], XMC_EREENTER);
    CHECK_EQ(reentry_rc[3], XMC_OK);
    OK(xmc_unlock(C, p, NULL));
    OK(xmc_invalidate(C, NULL, NULL)); /* unmaps through reentrant_unmap */
    CHECK_EQ(reentry_rc[4], XMC_EREENTER);
    CHECK_EQ(reentry_rc[5], XMC_EREENTER);
    CHECK_EQ(xt_stats(C).entries, 0);
    MAP(0x20000, 0, 0); /* the cache works on: the frame of the callback is gone */
    F->be.map = real_map;
    F->be.unmap = real_unmap;
    xmc_cache_free(other);
    fx_teardown();
}

const xt_test xt_nowait_tests[] = {
    XT(nowait_hits_answer_like_the_waiting_calls),
    XT(nowait_miss_changes_nothing_and_the_retry_maps_once),
    XT(nowait_read_serves_one_bucket_only),
    XT(nowait_write_serves_one_bucket_and_a_refusal_writes_nothing),
    XT(nowait_errors_are_final),
    XT(nowait_does_not_wait_for_a_mutex_another_thread_holds),
    XT(a_backend_callback_calling_its_own_cache_fails_instead_of_hanging),
    XT_END,
};
