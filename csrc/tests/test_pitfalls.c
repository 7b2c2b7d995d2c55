/*
 * test_pitfalls.c - one test per pitfall of QEMU's mapcache listed in
 * docs/contract.md, section 4, each shown not to be reproduced.
 *
 * Geometry: 64 KiB buckets, four slots, 1 MiB of RAM, the counting backend.
 * Two entries for the same bucket and size are built with the backend's
 * chosen-page failures: an entry whose page 4 failed does not satisfy a later
 * request for page 4, so that request gets an entry of its own behind it in
 * the same chain.
 */
#include "fault_backend.h"

#include <time.h>

#define SHIFT 16
#define B (UINT64_C(1) << SHIFT)

/*
 * Chain of slot 1: [twin (unlocked), locked], both bucket 1, both one bucket
 * long.  Returns the locked mapping (guest 0x14000) and the twin's base.
 */
static uint8_t *twins(uint8_t **twin_base)
{
    uint8_t *first;

    fx_setup(MIB, SHIFT, 4 * B);
    fb_bad_pages(F, 0x14, 0x15);
    first = MAP(0x10000, 0, XMC_LOCK); /* page 0x14 failed in this entry */
    fb_clear_bad(F);
    *twin_base = first;
    return MAP(0x14000, 0, XMC_LOCK); /* a second entry, chained behind */
}

TEST(pitfall_unlock_hits_exact_entry_behind_unlocked_twin)
{
    uint8_t *twin, *locked;
    xmc_stats s;

    locked = twins(&twin);
    CHECK_EQ(xt_stats(C).entries, 2);
    OK(xmc_unlock(C, twin, NULL)); /* the head is now an unlocked twin */
    /* QEMU would decrement the head's count here (wrapping it around). */
    OK(xmc_unlock(C, locked, NULL));
    s = xt_stats(C);
    CHECK_EQ(s.locked, 0);
    CHECK_EQ(xmc_unlock(C, locked, NULL), XMC_ENOENT);
    /* Both counts are zero, not one wrapped: invalidate drops both. */
    OK(xmc_invalidate(C, NULL, NULL));
    s = xt_stats(C);
    CHECK_EQ(s.entries, 0);
    CHECK_EQ(s.mapped_bytes, 0);
    CHECK_EQ(fb_live(F), 0);
    fx_teardown();
}

TEST(pitfall_ram_addr_resolves_exact_entry_behind_unlocked_twin)
{
    uint8_t *twin, *locked;
    xmc_record *r;
    size_t n;

    locked = twins(&twin);
    OK(xmc_unlock(C, twin, NULL));
    CHECK(locked != twin + 0x4000);
    CHECK_EQ(RAM_ADDR(locked), 0x14000);         /* exact */
    CHECK_EQ(RAM_ADDR(locked + 0x123), 0x14123); /* interior */
    CHECK_EQ(RAM_ADDR(locked - 0x4000), 0x10000);
    CHECK_EQ(RAM_ADDR(twin + 0x8000), 0x18000);  /* the twin's own pages */
    CHECK(xt_has_pattern(locked, 0x14000, 0x100));
    OK(xmc_locked(C, &r, &n));
    CHECK(n == 1 && r[0].paddr == 0x14000 && r[0].address == (uintptr_t)locked);
    xmc_records_free(r);
    /* A new lock on the bucket's page 0 goes to the twin (first exact match). */
    CHECK(MAP(0x10000, 0, XMC_LOCK) == twin);
    OK(xmc_unlock(C, twin, NULL));
    OK(xmc_unlock(C, locked, NULL));
    fx_teardown();
}

TEST(pitfall_invalidate_unmaps_chained_unlocked_entries)
{
    uint8_t *a, *b, *c, *d;
    xmc_stats s;

    fx_setup(MIB, SHIFT, 4 * B);
    /* Slot 0 chain: [a, b, c, d], buckets 0, 4, 8, 12; then b and d unlocked. */
    a = MAP(0x00000, 0, XMC_LOCK);
    b = MAP(0x40000, 0, XMC_LOCK);
    c = MAP(0x80000, 0, XMC_LOCK);
    d = MAP(0xc0000, 0, XMC_LOCK);
    OK(xmc_unlock(C, b, NULL));
    OK(xmc_unlock(C, d, NULL));
    OK(xmc_invalidate(C, NULL, NULL));
    s = xt_stats(C);
    CHECK_EQ(s.entries, 2);
    CHECK_EQ(s.mapped_bytes, 2 * B);
    CHECK(!xt_mapped(b, B, false));
    CHECK(!xt_mapped(d, B, false));
    CHECK(xt_has_pattern(a, 0, B) && xt_has_pattern(c, 0x80000, B));
    /* An unlocked head with locked entries behind it: the head goes too. */
    OK(xmc_unlock(C, a, NULL));
    OK(xmc_invalidate(C, NULL, NULL));
    CHECK_EQ(xt_stats(C).entries, 1);
    CHECK(!xt_mapped(a, B, false));
    CHECK_EQ(RAM_ADDR(c + 5), 0x80005);
    OK(xmc_unlock(C, c, NULL));
    OK(xmc_invalidate(C, NULL, NULL));
    CHECK_EQ(fb_live(F), 0);
    fx_teardown();
}

TEST(pitfall_replace_records_follow_and_unlock_finds_them)
{
    uint8_t *p, *q;
    uint64_t tag;

    fx_setup(MIB, SHIFT, 4 * B);
    p = MAPT(0x12000, 0x10, XMC_LOCK | XMC_DMA, 77);
    MAP(0x50000, 0, XMC_LOCK); /* something else in another chain */
    OK(xmc_replace(C, 0x10000, 0x62000 - 0x2000, 0, (void **)&q));
    CHECK_EQ(RAM_ADDR(p), 0x62000);
    /* QEMU's records keep the old index and unlock would miss the entry. */
    OK(xmc_unlock(C, p, &tag));
    CHECK_EQ(tag, 77);
    CHECK_EQ(xt_stats(C).dma_locked, 0);
    OK(xmc_invalidate(C, NULL, NULL));
    CHECK(!xt_mapped(q, B, false)); /* the replaced entry was really unlocked */
    fx_teardown();
}

TEST(pitfall_lock_overflow_is_an_error_not_an_abort)
{
    uint8_t *p;
    void *q;

    fx_setup(MIB, SHIFT, 4 * B);
    OK(xmc_cache_set_lock_limit(C, 3));
    for (int i = 0; i < 3; i++)
        p = MAP(0x1000, 0, XMC_LOCK);
    for (int i = 0; i < 3; i++)
        CHECK_EQ(xmc_map(C, 0x1000, 0, XMC_LOCK, 0, &q), XMC_EOVERFLOW);
    CHECK_EQ(xt_stats(C).locked, 3);
    CHECK_EQ(xt_nlocked(C), 3);
    for (int i = 0; i < 3; i++)
        OK(xmc_unlock(C, p, NULL));
    CHECK_EQ(xmc_unlock(C, p, NULL), XMC_ENOENT);
    fx_teardown();
}

TEST(pitfall_unknown_pointer_is_an_error_not_an_abort)
{
    uint64_t out;
    uint8_t *p;
    char local;

    fx_setup(MIB, SHIFT, 4 * B);
    p = MAP(0x1000, 0, XMC_LOCK);
    CHECK_EQ(xmc_ram_addr(C, &local, &out), XMC_ENOENT);
    CHECK_EQ(xmc_unlock(C, &local, NULL), XMC_ENOENT);
    CHECK_EQ(xmc_unlock_tag(C, p, 1234), XMC_ENOENT);
    OK(xmc_unlock(C, p, NULL));
    OK(xmc_invalidate(C, NULL, NULL));
    CHECK_EQ(xmc_ram_addr(C, p, &out), XMC_ENOENT);
    CHECK_EQ(xmc_unlock(C, p, NULL), XMC_ENOENT);
    fx_teardown();
}

static double seconds(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/*
 * QEMU walks a list of every locked mapping on each unlock and reverse
 * lookup: 100,000 of them would cost ~5e9 steps.  Here each is a hash probe.
 */
TEST(pitfall_unlock_and_ram_addr_do_not_walk_all_locks)
{
    enum { N = 100000 };
    uint8_t **ptrs = calloc(N, sizeof(*ptrs));
    uint64_t out;
    double t0, t;

    CHECK(ptrs);
    fx_setup(MIB, SHIFT, 4 * B);
    for (size_t i = 0; i < N; i++) /* 100,000 distinct addresses over 2 entries */
        ptrs[i] = MAPT((i % 2) * 0x10000 + (i / 2) % 0x10000, 0, XMC_LOCK, i);
    t0 = seconds();
    for (size_t i = 0; i < N; i++) {
        size_t j = (i * 7919) % N; /* every index once, scattered */
        OK(xmc_ram_addr(C, ptrs[j], &out));
        CHECK_EQ(out, (j % 2) * 0x10000 + (j / 2) % 0x10000);
    }
    for (size_t i = 0; i < N; i++)
        OK(xmc_unlock(C, ptrs[(i * 7919) % N], NULL));
    t = seconds() - t0;
    CHECK(xt_slow() || t < 10.0);
    CHECK_EQ(xt_stats(C).locked, 0);
    free(ptrs);
    fx_teardown();
}

const xt_test xt_pitfalls_tests[] = {
    XT(pitfall_unlock_hits_exact_entry_behind_unlocked_twin),
    XT(pitfall_ram_addr_resolves_exact_entry_behind_unlocked_twin),
    XT(pitfall_invalidate_unmaps_chained_unlocked_entries),
    XT(pitfall_replace_records_follow_and_unlock_finds_them),
    XT(pitfall_lock_overflow_is_an_error_not_an_abort),
    XT(pitfall_unknown_pointer_is_an_error_not_an_abort),
    XT(pitfall_unlock_and_ram_addr_do_not_walk_all_locks),
    XT_END,
};
