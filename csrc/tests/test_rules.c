/*
 * test_rules.c - one test per rule of docs/contract.md, section 3: map (fast path,
 * exact match anywhere in the chain, reuse of unlocked entries only, valid
 * bitmaps, translate, dummy mode, lock counts and records), ram_addr, unlock,
 * invalidate, replace, read/write and the statistics.
 *
 * Geometry unless a test says otherwise: 64 KiB buckets (shift 16), four
 * slots (max_size 256 KiB), so bucket indexes 0, 4, 8 and 12 share slot 0;
 * 1 MiB of guest RAM filled with xt_pattern(); the counting backend F.
 */
#include "fault_backend.h"

#include <time.h>

#define SHIFT 16
#define B (UINT64_C(1) << SHIFT)
#define SLOTS 4

static void setup(void)
{
    fx_setup(MIB, SHIFT, SLOTS * B);
}

/* ---- map ------------------------------------------------------------------ */

TEST(map_returns_guest_memory)
{
    uint8_t *p;
    uint8_t buf[16];

    setup();
    p = MAP(0x12345, 0, 0);
    CHECK(xt_has_pattern(p, 0x12345, 16));
    memcpy(p, "written via map", 16);
    OK(xmc_ram_read(F->ram, 0x12345, buf, 16));
    CHECK(memcmp(buf, "written via map", 16) == 0);
    OK(xmc_ram_write(F->ram, 0x12345, "and back again!", 16));
    CHECK(memcmp(p, "and back again!", 16) == 0);
    fx_teardown();
}

TEST(map_size_zero_maps_one_bucket_and_checks_one_page)
{
    xmc_stats s;
    void *p;

    setup();
    fb_bad_pages(F, 17, 18); /* page 1 of bucket 1 cannot be mapped */
    MAP(0x10000, 0, 0);      /* page 0: fine, size 0 checks one page */
    s = xt_stats(C);
    CHECK_EQ(s.entries, 1);
    CHECK_EQ(s.mapped_bytes, B);
    CHECK_EQ(xmc_map(C, 0x11000, 0, 0, 0, &p), XMC_EMAP);
    CHECK_EQ(xmc_map(C, 0x10000, 2 * PAGE, 0, 0, &p), XMC_EMAP); /* spans page 1 */
    MAP(0x10000, PAGE, 0);
    fx_teardown();
}

TEST(map_across_buckets_makes_one_contiguous_entry)
{
    uint8_t *p;
    xmc_stats s;

    setup();
    p = MAP(B - 16, 32, 0); /* offset + size rounds up to two buckets */
    CHECK(xt_has_pattern(p, B - 16, 32));
    s = xt_stats(C);
    CHECK_EQ(s.entries, 1);
    CHECK_EQ(s.mapped_bytes, 2 * B);
    p = MAP(3 * B + 100, 2 * B, XMC_LOCK); /* three buckets */
    CHECK(xt_has_pattern(p, 3 * B + 100, 2 * B));
    CHECK_EQ(xt_stats(C).mapped_bytes, 5 * B);
    CHECK_EQ(RAM_ADDR(p + 2 * B - 1), 3 * B + 100 + 2 * B - 1);
    OK(xmc_unlock(C, p, NULL));
    fx_teardown();
}

TEST(map_fast_path_serves_last_entry_without_mapping)
{
    unsigned long calls;
    xmc_stats s0, s1;
    uint8_t *p, *q;

    setup();
    p = MAP(0x20000, 0, 0);
    calls = F->map_calls;
    s0 = xt_stats(C);
    q = MAP(0x2f000, 0, 0); /* another page of the last entry's bucket */
    s1 = xt_stats(C);
    CHECK_EQ(F->map_calls, calls);
    CHECK_EQ(s1.hits, s0.hits + 1);
    CHECK_EQ(s1.misses, s0.misses);
    CHECK(q == p + 0xf000);
    fx_teardown();
}

TEST(map_fast_path_needs_a_valid_page)
{
    void *p;

    setup();
    fb_bad_pages(F, 0x25, 0x26);
    MAP(0x20000, 0, 0); /* last entry now covers bucket 2, page 5 invalid */
    CHECK_EQ(xmc_map(C, 0x25000, 0, 0, 0, &p), XMC_EMAP);
    CHECK_EQ(xt_stats(C).locked, 0);
    fx_teardown();
}

TEST(map_prefers_exact_match_anywhere_in_chain)
{
    uint8_t *a, *b;
    xmc_stats s0, s1;
    unsigned long calls;

    setup();
    a = MAP(0 * B, 0, XMC_LOCK);   /* slot 0, head, locked */
    b = MAP(4 * B + 8, 0, 0);      /* slot 0, chained behind a */
    MAP(1 * B, 0, 0);              /* change the last entry */
    OK(xmc_unlock(C, a, NULL));    /* the head is now unlocked: reusable */
    calls = F->map_calls;
    s0 = xt_stats(C);
    CHECK(MAP(4 * B + 8, 0, 0) == b); /* found behind the head, not remapped */
    s1 = xt_stats(C);
    CHECK_EQ(F->map_calls, calls);
    CHECK_EQ(s1.remaps, s0.remaps);
    CHECK_EQ(s1.hits, s0.hits + 1);
    CHECK(MAP(0, 0, 0) == a); /* and the head still maps bucket 0 */
    fx_teardown();
}

TEST(map_reuses_an_unlocked_entry_on_a_miss)
{
    xmc_stats s;
    uint8_t *a, *b;

    setup();
    a = MAP(0, 0, 0);
    b = MAP(4 * B, 0, 0); /* same slot: the unlocked head is remapped */
    s = xt_stats(C);
    CHECK_EQ(s.entries, 1);
    CHECK_EQ(s.remaps, 1);
    CHECK_EQ(s.mapped_bytes, B);
    CHECK(a == b); /* same size: remapped in place */
    CHECK(xt_has_pattern(b, 4 * B, B));
    CHECK_EQ(fb_live(F), 1);
    fx_teardown();
}

TEST(map_never_reuses_a_locked_entry)
{
    uint8_t *a, *b;
    xmc_stats s;

    setup();
    a = MAP(0x100, 0, XMC_LOCK);
    b = MAP(4 * B, 0, 0);
    s = xt_stats(C);
    CHECK_EQ(s.entries, 2);
    CHECK_EQ(s.remaps, 0);
    CHECK(a != b);
    CHECK(xt_has_pattern(a, 0x100, B - 0x100));
    CHECK_EQ(RAM_ADDR(a), 0x100);
    OK(xmc_unlock(C, a, NULL));
    fx_teardown();
}

TEST(map_other_size_of_same_bucket_is_another_entry)
{
    uint8_t *a, *b;

    setup();
    a = MAP(0x3000, 0, XMC_LOCK);         /* cache_size one bucket */
    b = MAP(0x3000, B, XMC_LOCK);         /* cache_size two buckets */
    CHECK(a != b);
    CHECK_EQ(xt_stats(C).entries, 2);
    CHECK_EQ(xt_stats(C).mapped_bytes, 3 * B);
    CHECK(xt_has_pattern(b, 0x3000, B));
    OK(xmc_unlock(C, a, NULL));
    OK(xmc_unlock(C, b, NULL));
    fx_teardown();
}

TEST(map_failure_changes_no_lock_count)
{
    void *p;
    xmc_stats s;

    setup();
    fb_bad_pages(F, 0x30, 0x31);
    CHECK_EQ(xmc_map(C, 0x30000, 0, XMC_LOCK | XMC_DMA, 7, &p), XMC_EMAP);
    s = xt_stats(C);
    CHECK_EQ(s.locked, 0);
    CHECK_EQ(s.dma_locked, 0);
    CHECK_EQ(xt_nlocked(C), 0);
    /* The entry that failed is unlocked: invalidate drops it. */
    OK(xmc_invalidate(C, NULL, NULL));
    CHECK_EQ(xt_stats(C).entries, 0);
    fx_teardown();
}

static unsigned long translate_calls;

/* Guest [0x80000, 0x90000) is an alias of [0x40000, 0x50000). */
static int alias_translate(void *opaque, uint64_t paddr, uint64_t size, uint64_t *out)
{
    (void)size;
    translate_calls++;
    if (opaque)
        *out = *(uint64_t *)opaque; /* a fixed answer */
    else if (paddr >= 0x80000 && paddr < 0x90000)
        *out = paddr - 0x40000;
    else
        return XMC_EMAP;
    return XMC_OK;
}

TEST(map_calls_translate_once_and_retries)
{
    uint64_t fixed = 0x85000; /* itself invalid */
    uint64_t back;
    uint8_t *p;

    setup();
    fb_bad_pages(F, 0x80, 0x90);
    OK(xmc_cache_set_translate(C, alias_translate, NULL));
    OK(xmc_map(C, 0x81234, 16, XMC_LOCK, 0, (void **)&p));
    CHECK_EQ(translate_calls, 1);
    CHECK(xt_has_pattern(p, 0x41234, 16));
    OK(xmc_ram_addr(C, p, &back));
    CHECK_EQ(back, 0x41234);
    OK(xmc_unlock(C, p, NULL));
    /* A translation that is no better fails once, without looping. */
    translate_calls = 0;
    OK(xmc_cache_set_translate(C, alias_translate, &fixed));
    CHECK_EQ(xmc_map(C, 0x82000, 0, 0, 0, (void **)&p), XMC_EMAP);
    CHECK_EQ(translate_calls, 1);
    /* A callback that fails gives a mapping error. */
    translate_calls = 0;
    OK(xmc_cache_set_translate(C, alias_translate, NULL));
    CHECK_EQ(xmc_map(C, 0xf0000 + MIB, 0, 0, 0, (void **)&p), XMC_EMAP);
    CHECK_EQ(translate_calls, 1);
    /* Valid pages never call it. */
    translate_calls = 0;
    MAP(0x50000, 0, 0);
    CHECK_EQ(translate_calls, 0);
    fx_teardown();
}

TEST(map_falls_back_on_backend_translate)
{
    uint8_t *p;

    setup();
    fb_bad_pages(F, 0x80, 0x90);
    F->tr_on = true;
    F->tr_from = 0x80000;
    F->tr_len = 0x10000;
    F->tr_to = 0x10000;
    OK(xmc_map(C, 0x80010, 0x10, XMC_LOCK | XMC_DMA, 0, (void **)&p));
    CHECK_EQ(F->translate_calls, 1);
    CHECK(xt_has_pattern(p, 0x10010, 0x10));
    CHECK_EQ(RAM_ADDR(p), 0x10010); /* the record names the translated page */
    OK(xmc_unlock(C, p, NULL));
    fx_teardown();
}

TEST(map_translate_to_wrapping_address_is_invalid)
{
    uint64_t top = UINT64_MAX - 100;
    void *p;

    setup();
    fb_bad_pages(F, 0, 1);
    OK(xmc_cache_set_translate(C, alias_translate, &top));
    CHECK_EQ(xmc_map(C, 0x10, 0x1000, 0, 0, &p), XMC_EINVAL);
    fx_teardown();
}

/* The callback may call back into the same cache: the mutex is not held. */
static int reentrant_translate(void *opaque, uint64_t paddr, uint64_t size,
                               uint64_t *out)
{
    void *p;
    int rc = xmc_map(opaque, 0x20000, 0, 0, 0, &p);

    (void)size;
    *out = paddr - 0x80000 + 0x40000;
    return rc;
}

TEST(map_translate_callback_may_reenter_the_cache)
{
    uint8_t *p;

    setup();
    fb_bad_pages(F, 0x80, 0x90);
    OK(xmc_cache_set_translate(C, reentrant_translate, C));
    OK(xmc_map(C, 0x80000, 0, 0, 0, (void **)&p));
    CHECK(xt_has_pattern(p, 0x40000, 64));
    fx_teardown();
}

TEST(map_dummy_mode_maps_anonymous_memory)
{
    uint8_t *p;
    uint8_t buf[4];

    setup();
    fb_bad_pages(F, 0x30, 0x40); /* bucket 3 not there yet (incoming migration) */
    CHECK_EQ(xmc_map(C, 0x30000, 0, XMC_LOCK, 0, (void **)&p), XMC_EMAP);
    OK(xmc_cache_set_dummy(C, true));
    p = MAP(0x30010, 0x100, XMC_LOCK);
    CHECK(p[0] == 0 && p[0xff] == 0); /* fresh anonymous memory */
    memcpy(p, "anon", 4);
    OK(xmc_ram_read(F->ram, 0x30010, buf, 4)); /* guest RAM untouched */
    CHECK(xt_has_pattern(buf, 0x30010, 4));
    OK(xmc_unlock(C, p, NULL));
    OK(xmc_cache_set_dummy(C, false));
    fx_teardown();
}

/* ---- locks and reverse records -------------------------------------------- */

TEST(lock_twice_on_one_address_makes_two_records)
{
    uint8_t *a, *b;
    uint64_t tag;
    xmc_stats s;

    setup();
    a = MAPT(0x5000, 8, XMC_LOCK, 1);
    b = MAPT(0x5000, 8, XMC_LOCK, 2);
    CHECK(a == b);
    s = xt_stats(C);
    CHECK_EQ(s.locked, 2);
    CHECK_EQ(xt_nlocked(C), 2);
    OK(xmc_unlock(C, a, &tag));
    CHECK_EQ(tag, 2); /* the newest goes first */
    OK(xmc_unlock(C, a, &tag));
    CHECK_EQ(tag, 1);
    CHECK_EQ(xmc_unlock(C, a, &tag), XMC_ENOENT);
    CHECK_EQ(xt_stats(C).locked, 0);
    fx_teardown();
}

TEST(lock_at_the_limit_fails_and_changes_nothing)
{
    uint8_t *a, *b;
    xmc_record *r;
    size_t n;
    void *p;

    setup();
    OK(xmc_cache_set_lock_limit(C, 2));
    a = MAP(0x1000, 0, XMC_LOCK);
    b = MAP(0x2000, 0, XMC_LOCK | XMC_DMA);
    CHECK_EQ(xmc_map(C, 0x3000, 0, XMC_LOCK, 0, &p), XMC_EOVERFLOW);
    CHECK_EQ(xmc_map(C, 0x3000, 0, XMC_LOCK | XMC_DMA, 0, &p), XMC_EOVERFLOW);
    CHECK_EQ(xt_stats(C).locked, 2);
    CHECK_EQ(xt_stats(C).dma_locked, 1);
    OK(xmc_locked(C, &r, &n));
    CHECK_EQ(n, 2);
    CHECK(r[0].address == (uintptr_t)a && r[1].address == (uintptr_t)b);
    xmc_records_free(r);
    /* Unlocked requests and other buckets are unaffected. */
    MAP(0x3000, 0, 0);
    xmc_unlock(C, MAP(0x10000, 0, XMC_LOCK), NULL);
    /* One unlock makes room again. */
    OK(xmc_unlock(C, a, NULL));
    a = MAP(0x3000, 0, XMC_LOCK);
    OK(xmc_unlock(C, a, NULL));
    OK(xmc_unlock(C, b, NULL));
    /* A limit of 0 forbids locking at all. */
    OK(xmc_cache_set_lock_limit(C, 0));
    CHECK_EQ(xmc_map(C, 0x3000, 0, XMC_LOCK, 0, &p), XMC_EOVERFLOW);
    CHECK_EQ(xt_stats(C).locked, 0);
    fx_teardown();
}

TEST(records_keep_size_dma_and_tag_oldest_first)
{
    uint8_t *a, *b, *d;
    xmc_record *r;
    size_t n;

    setup();
    a = MAPT(0x1100, 0x20, XMC_LOCK, 11);
    b = MAPT(0x52200, 0x300, XMC_LOCK | XMC_DMA, 22);
    d = MAPT(0x1100, 0, XMC_LOCK | XMC_DMA, 33);
    OK(xmc_locked(C, &r, &n));
    CHECK_EQ(n, 3);
    CHECK(r[0].address == (uintptr_t)a && r[0].paddr == 0x1100 && r[0].size == 0x20 &&
          r[0].tag == 11 && !r[0].dma);
    CHECK(r[1].address == (uintptr_t)b && r[1].paddr == 0x52200 && r[1].size == 0x300 &&
          r[1].tag == 22 && r[1].dma);
    CHECK(r[2].address == (uintptr_t)d && r[2].paddr == 0x1100 && r[2].tag == 33 &&
          r[2].dma);
    xmc_records_free(r);
    CHECK_EQ(xt_stats(C).dma_locked, 2);
    /* XMC_DMA without XMC_LOCK leaves no record. */
    MAP(0x2000, 0, XMC_DMA);
    CHECK_EQ(xt_stats(C).locked, 3);
    OK(xmc_unlock(C, a, NULL));
    OK(xmc_unlock(C, b, NULL));
    OK(xmc_unlock(C, d, NULL));
    OK(xmc_locked(C, &r, &n));
    CHECK_EQ(n, 0);
    xmc_records_free(r);
    fx_teardown();
}

TEST(unlock_tag_picks_the_tagged_record)
{
    uint8_t *a;
    xmc_record *r;
    size_t n;

    setup();
    a = MAPT(0x4000, 0, XMC_LOCK, 100);
    MAPT(0x4000, 0, XMC_LOCK | XMC_DMA, 200);
    MAPT(0x4000, 0, XMC_LOCK, 300);
    OK(xmc_unlock_tag(C, a, 200));
    CHECK_EQ(xmc_unlock_tag(C, a, 200), XMC_ENOENT);
    CHECK_EQ(xmc_unlock_tag(C, a, 999), XMC_ENOENT);
    OK(xmc_locked(C, &r, &n));
    CHECK_EQ(n, 2);
    CHECK(r[0].tag == 100 && r[1].tag == 300);
    xmc_records_free(r);
    CHECK_EQ(xt_stats(C).dma_locked, 0);
    OK(xmc_unlock_tag(C, a, 100));
    OK(xmc_unlock_tag(C, a, 300));
    fx_teardown();
}

TEST(ram_addr_resolves_exact_and_interior_pointers)
{
    uint8_t *l, *u, *m;

    setup();
    l = MAP(0x21000, 0x800, XMC_LOCK);
    CHECK_EQ(RAM_ADDR(l), 0x21000);
    CHECK_EQ(RAM_ADDR(l + 0x7ff), 0x217ff);
    CHECK_EQ(RAM_ADDR(l - 0x1000), 0x20000);     /* start of its entry */
    CHECK_EQ(RAM_ADDR(l + 0xefff), 0x2ffff);     /* last byte of its entry */
    u = MAP(0x60000, 0, 0);                      /* unlocked entries too */
    CHECK_EQ(RAM_ADDR(u + 0x1234), 0x61234);
    m = MAP(0x9ff00, 0x200, 0);                  /* a two-bucket entry */
    CHECK_EQ(RAM_ADDR(m + 0x100), 0xa0000);
    CHECK_EQ(RAM_ADDR(m - 0xff00 + 2 * B - 1), 0xaffff);
    OK(xmc_unlock(C, l, NULL));
    fx_teardown();
}

TEST(ram_addr_of_unknown_pointer_is_enoent)
{
    int local;
    void *heap = malloc(16);
    uint8_t *u;
    uint64_t out = 42;

    setup();
    u = MAP(0x10000, 0, 0);
    CHECK_EQ(xmc_ram_addr(C, &local, &out), XMC_ENOENT);
    CHECK_EQ(xmc_ram_addr(C, heap, &out), XMC_ENOENT);
    CHECK_EQ(xmc_ram_addr(C, NULL, &out), XMC_ENOENT);
    CHECK_EQ(xmc_ram_addr(C, (void *)UINTPTR_MAX, &out), XMC_ENOENT);
    CHECK_EQ(xmc_ram_addr(C, u + B, &out), XMC_ENOENT); /* one past its entry */
    CHECK_EQ(xmc_ram_addr(C, u - 1, &out), XMC_ENOENT);
    CHECK_EQ(out, 42);
    OK(xmc_invalidate(C, NULL, NULL));
    CHECK_EQ(xmc_ram_addr(C, u, &out), XMC_ENOENT); /* gone with its entry */
    free(heap);
    fx_teardown();
}

TEST(unlock_unknown_or_twice_is_enoent_and_changes_nothing)
{
    uint8_t *a;
    int local;
    xmc_stats s0;

    setup();
    a = MAP(0x7000, 0, XMC_LOCK | XMC_DMA);
    s0 = xt_stats(C);
    CHECK_EQ(xmc_unlock(C, &local, NULL), XMC_ENOENT);
    CHECK_EQ(xmc_unlock(C, NULL, NULL), XMC_ENOENT);
    CHECK_EQ(xmc_unlock(C, a + 1, NULL), XMC_ENOENT); /* exact addresses only */
    CHECK_EQ(xmc_unlock(C, MAP(0x8000, 0, 0), NULL), XMC_ENOENT); /* unlocked */
    CHECK_EQ(xt_stats(C).locked, s0.locked);
    CHECK_EQ(xt_stats(C).dma_locked, 1);
    OK(xmc_unlock(C, a, NULL));
    CHECK_EQ(xmc_unlock(C, a, NULL), XMC_ENOENT);
    CHECK_EQ(xt_stats(C).locked, 0);
    CHECK_EQ(xt_stats(C).dma_locked, 0);
    fx_teardown();
}

TEST(unlock_never_leaves_last_entry_dangling)
{
    uint8_t *a;

    setup();
    a = MAP(0x30000, 0, XMC_LOCK); /* the last entry */
    OK(xmc_unlock(C, a, NULL));
    OK(xmc_invalidate(C, NULL, NULL)); /* frees it */
    /* The fast path must not look at the freed entry (ASan would see it). */
    a = MAP(0x30000, 0, 0);
    CHECK(xt_has_pattern(a, 0x30000, 16));
    a = MAP(0x40000, 0, XMC_LOCK);
    OK(xmc_unlock(C, a, NULL));
    MAP(0x80000, 0, 0); /* reuses that entry: last must follow */
    CHECK(xt_has_pattern(MAP(0x80010, 0, 0), 0x80010, 16));
    fx_teardown();
}

/* ---- invalidate ------------------------------------------------------------ */

TEST(invalidate_unmaps_unlocked_and_keeps_locked_data)
{
    uint8_t *l, *u1, *u2;
    xmc_stats s;

    setup();
    l = MAP(0x1000, 0x100, XMC_LOCK);
    memcpy(l, "keep me", 8);
    u1 = MAP(0x50000, 0, 0);
    u2 = MAP(0x60000, 3 * B, 0);
    CHECK_EQ(fb_live(F), 3);
    OK(xmc_invalidate(C, NULL, NULL));
    s = xt_stats(C);
    CHECK_EQ(s.entries, 1);
    CHECK_EQ(s.mapped_bytes, B);
    CHECK_EQ(s.invalidations, 1);
    CHECK_EQ(fb_live(F), 1);
    CHECK(!xt_mapped(u1, B, false));
    CHECK(!xt_mapped(u2, 3 * B, false));
    CHECK(memcmp(l, "keep me", 8) == 0);
    CHECK_EQ(RAM_ADDR(l), 0x1000);
    OK(xmc_unlock(C, l, NULL));
    OK(xmc_invalidate(C, NULL, NULL));
    CHECK_EQ(xt_stats(C).entries, 0);
    CHECK_EQ(xt_stats(C).mapped_bytes, 0);
    CHECK_EQ(fb_live(F), 0);
    fx_teardown();
}

TEST(invalidate_reports_dma_mappings_only)
{
    uint8_t *dev, *d1, *d2;
    xmc_record *r = NULL;
    size_t n = 99;

    setup();
    dev = MAPT(0x10000, 0x1000, XMC_LOCK, 1); /* [a] device memory */
    d1 = MAPT(0x20000, 0x200, XMC_LOCK | XMC_DMA, 2);
    d2 = MAPT(0x20000, 0x200, XMC_LOCK | XMC_DMA, 3);
    OK(xmc_invalidate(C, &r, &n));
    CHECK_EQ(n, 2);
    CHECK(r[0].tag == 2 && r[1].tag == 3 && r[0].dma && r[1].dma);
    CHECK(r[0].address == (uintptr_t)d1 && r[1].address == (uintptr_t)d2);
    CHECK(r[0].paddr == 0x20000 && r[0].size == 0x200);
    xmc_records_free(r);
    OK(xmc_unlock(C, d1, NULL));
    OK(xmc_unlock(C, d2, NULL));
    OK(xmc_invalidate(C, &r, &n));
    CHECK_EQ(n, 0);
    xmc_records_free(r);
    CHECK_EQ(xt_stats(C).entries, 1); /* the device memory stays */
    CHECK(xt_has_pattern(dev, 0x10000, 0x1000));
    OK(xmc_unlock(C, dev, NULL));
    fx_teardown();
}

TEST(invalidate_clears_the_fast_path)
{
    unsigned long calls;

    setup();
    MAP(0x20000, 0, 0);
    OK(xmc_invalidate(C, NULL, NULL));
    calls = F->map_calls;
    CHECK(xt_has_pattern(MAP(0x20000, 0, 0), 0x20000, 64));
    CHECK_EQ(F->map_calls, calls + 1);
    fx_teardown();
}

TEST(invalidate_cost_follows_live_entries_not_slots)
{
    xmc_cache *big;
    struct timespec t0, t1;
    double secs;

    F = fb_new(MIB);
    CHECK(F);
    /* 2**24 slots of one page each. */
    OK(xmc_cache_new(&F->be, 12, (uint64_t)XMC_MAX_SLOTS << 12, &big));
    MAPC(big, 0x3000, 0, XMC_LOCK);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < 20000; i++) {
        MAPC(big, 0x5000, 0, 0);
        OK(xmc_invalidate(big, NULL, NULL));
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    /* A walk over 2**24 slots per call would take minutes. */
    CHECK(xt_slow() || secs < 10.0);
    CHECK_EQ(xt_stats(big).invalidations, 20000);
    fb_done(F, big);
}

/* ---- replace -------------------------------------------------------------- */

TEST(replace_remaps_an_unlocked_entry_in_place)
{
    uint8_t *p, *q;
    xmc_stats s0, s1;

    setup();
    p = MAP(0x10000, 0, 0);
    s0 = xt_stats(C);
    OK(xmc_replace(C, 0x10000, 0x70000, 0, (void **)&q));
    s1 = xt_stats(C);
    CHECK(p == q); /* same host address */
    CHECK(xt_has_pattern(q, 0x70000, B));
    CHECK_EQ(RAM_ADDR(q + 0x10), 0x70010);
    CHECK_EQ(s1.entries, s0.entries);
    CHECK_EQ(s1.mapped_bytes, s0.mapped_bytes);
    /* The entry now serves bucket 7, and bucket 1 needs a new one. */
    CHECK(MAP(0x70000, 0, 0) == q);
    CHECK(MAP(0x10000, 0, 0) != q);
    fx_teardown();
}

TEST(replace_locked_entry_records_follow)
{
    uint8_t *p, *q;
    xmc_record *r;
    size_t n;

    setup();
    p = MAPT(0x10100, 0x100, XMC_LOCK | XMC_DMA, 5);
    OK(xmc_replace(C, 0x10000, 0x30000, 0, (void **)&q));
    CHECK(q == p - 0x100);
    CHECK_EQ(RAM_ADDR(p), 0x30100); /* the record follows the entry */
    CHECK(xt_has_pattern(p, 0x30100, 0x100));
    OK(xmc_locked(C, &r, &n));
    CHECK(n == 1 && r[0].paddr == 0x30100 && r[0].address == (uintptr_t)p);
    xmc_records_free(r);
    OK(xmc_invalidate(C, &r, &n)); /* still locked: kept, reported */
    CHECK(n == 1 && r[0].paddr == 0x30100 && r[0].tag == 5);
    xmc_records_free(r);
    CHECK(xt_has_pattern(p, 0x30100, 0x100));
    OK(xmc_unlock(C, p, NULL));
    CHECK_EQ(xt_stats(C).locked, 0);
    OK(xmc_invalidate(C, NULL, NULL));
    CHECK_EQ(xt_stats(C).entries, 0);
    fx_teardown();
}

TEST(replace_errors_leave_the_entry_alone)
{
    uint8_t *p;
    void *q;

    setup();
    p = MAP(0x10000, 0, XMC_LOCK);
    CHECK_EQ(xmc_replace(C, 0x20000, 0x30000, 0, &q), XMC_ENOENT); /* no entry */
    CHECK_EQ(xmc_replace(C, 0x10000, 0x30000, 2 * B, &q), XMC_ENOENT); /* size */
    CHECK_EQ(xmc_replace(C, 0x10000, UINT64_MAX, 2, &q), XMC_EINVAL);
    CHECK_EQ(xmc_replace(C, 0x10000, 0x30800, 0xf900, &q), XMC_EINVAL); /* too long */
    fb_bad_pages(F, 0x40, 0x41);
    CHECK_EQ(xmc_replace(C, 0x10000, 0x40000, 0, &q), XMC_EMAP);
    CHECK(xt_has_pattern(p, 0x10000, B)); /* old contents back in place */
    CHECK_EQ(RAM_ADDR(p), 0x10000);
    OK(xmc_unlock(C, p, NULL));
    fx_teardown();
}

/* As QEMU's xen_replace_cache_entry: the entry that served last stays the
 * last one, failed replace or not, so a size-0 map of its bucket hits even
 * where a lookup by size would not find it (an entry of two buckets). */
TEST(replace_leaves_the_last_entry_alone)
{
    uint8_t *p, *base;
    unsigned long calls;
    xmc_stats s0, s1;
    void *q;

    setup();
    p = MAP(B - 16, 32, XMC_LOCK); /* two buckets, the last entry */
    base = p - (B - 16);
    fb_bad_pages(F, 0x4f, 0x50); /* the first page of the new range */
    CHECK_EQ(xmc_replace(C, B - 16, 0x40000 + B - 16, 32, &q), XMC_EMAP); /* put back */
    for (int moved = 0; moved < 2; moved++) {
        uint64_t paddr = moved ? 0x60000 + 0x1000 : 0x1000;

        if (moved) {
            OK(xmc_replace(C, B - 16, 0x60000 + B - 16, 32, &q));
            CHECK(q == (void *)p);
        }
        calls = F->map_calls;
        s0 = xt_stats(C);
        CHECK((uint8_t *)MAP(paddr, 0, 0) == base + 0x1000);
        s1 = xt_stats(C);
        CHECK_EQ(s1.hits, s0.hits + 1);
        CHECK_EQ(s1.misses, s0.misses);
        CHECK_EQ(s1.entries, s0.entries);
        CHECK_EQ(F->map_calls, calls);
    }
    OK(xmc_unlock(C, p, NULL));
    fx_teardown();
}

TEST(replace_swaps_dummy_for_real_memory)
{
    uint8_t *p, *q;

    setup();
    fb_bad_pages(F, 0x50, 0x60); /* not migrated yet */
    OK(xmc_cache_set_dummy(C, true));
    p = MAP(0x50000, 0x1000, XMC_LOCK);
    CHECK(p[0] == 0);
    fb_clear_bad(F); /* migration done */
    OK(xmc_cache_set_dummy(C, false));
    OK(xmc_replace(C, 0x50000, 0x50000, 0x1000, (void **)&q));
    CHECK(p == q);
    CHECK(xt_has_pattern(p, 0x50000, B)); /* the real guest memory now */
    OK(xmc_unlock(C, p, NULL));
    OK(xmc_invalidate(C, NULL, NULL));
    CHECK_EQ(xt_stats(C).entries, 0);
    fx_teardown();
}

/* ---- copies and statistics ------------------------------------------------ */

TEST(read_write_span_buckets_and_stop_at_holes)
{
    static uint8_t buf[3 * B], back[3 * B];

    setup();
    for (size_t i = 0; i < sizeof(buf); i++)
        buf[i] = (uint8_t)(i * 13 + 5);
    OK(xmc_write(C, 0x1fff0, buf, sizeof(buf)));
    OK(xmc_read(C, 0x1fff0, back, sizeof(back)));
    CHECK(memcmp(buf, back, sizeof(buf)) == 0);
    OK(xmc_ram_read(F->ram, 0x1fff0, back, sizeof(back)));
    CHECK(memcmp(buf, back, sizeof(buf)) == 0);
    OK(xmc_read(C, 0x1234, back, 0));
    fb_bad_pages(F, 0x90, 0x91);
    CHECK_EQ(xmc_read(C, 0x8f000, back, 0x2000), XMC_EMAP);
    CHECK_EQ(xmc_write(C, 0x8f000, buf, 0x2000), XMC_EMAP);
    CHECK_EQ(xmc_read(C, MIB - 0x10, back, 0x20), XMC_EMAP); /* past the end */
    CHECK_EQ(xt_stats(C).locked, 0);
    fx_teardown();
}

TEST(stats_count_hits_misses_remaps_and_bytes)
{
    xmc_stats s;
    uint8_t *l;

    setup();
    MAP(0x0, 0, 0);              /* miss: new */
    MAP(0x100, 0, 0);            /* hit (fast path) */
    MAP(0x4 * B, 0, 0);          /* miss: remap of bucket 0's entry */
    l = MAP(0x1 * B, B + 1, XMC_LOCK | XMC_DMA); /* miss: new, two buckets */
    MAP(0x1 * B, B + 1, XMC_LOCK); /* hit */
    s = xt_stats(C);
    CHECK_EQ(s.hits, 2);
    CHECK_EQ(s.misses, 3);
    CHECK_EQ(s.remaps, 1);
    CHECK_EQ(s.entries, 2);
    CHECK_EQ(s.locked, 2);
    CHECK_EQ(s.dma_locked, 1);
    CHECK_EQ(s.mapped_bytes, 3 * B);
    CHECK_EQ(s.invalidations, 0);
    OK(xmc_invalidate(C, NULL, NULL));
    s = xt_stats(C);
    CHECK_EQ(s.entries, 1);
    CHECK_EQ(s.mapped_bytes, 2 * B);
    CHECK_EQ(s.invalidations, 1);
    OK(xmc_unlock(C, l, NULL));
    OK(xmc_unlock(C, l, NULL));
    fx_teardown();
}

const xt_test xt_rules_tests[] = {
    XT(map_returns_guest_memory),
    XT(map_size_zero_maps_one_bucket_and_checks_one_page),
    XT(map_across_buckets_makes_one_contiguous_entry),
    XT(map_fast_path_serves_last_entry_without_mapping),
    XT(map_fast_path_needs_a_valid_page),
    XT(map_prefers_exact_match_anywhere_in_chain),
    XT(map_reuses_an_unlocked_entry_on_a_miss),
    XT(map_never_reuses_a_locked_entry),
    XT(map_other_size_of_same_bucket_is_another_entry),
    XT(map_failure_changes_no_lock_count),
    XT(map_calls_translate_once_and_retries),
    XT(map_falls_back_on_backend_translate),
    XT(map_translate_to_wrapping_address_is_invalid),
    XT(map_translate_callback_may_reenter_the_cache),
    XT(map_dummy_mode_maps_anonymous_memory),
    XT(lock_twice_on_one_address_makes_two_records),
    XT(lock_at_the_limit_fails_and_changes_nothing),
    XT(records_keep_size_dma_and_tag_oldest_first),
    XT(unlock_tag_picks_the_tagged_record),
    XT(ram_addr_resolves_exact_and_interior_pointers),
    XT(ram_addr_of_unknown_pointer_is_enoent),
    XT(unlock_unknown_or_twice_is_enoent_and_changes_nothing),
    XT(unlock_never_leaves_last_entry_dangling),
    XT(invalidate_unmaps_unlocked_and_keeps_locked_data),
    XT(invalidate_reports_dma_mappings_only),
    XT(invalidate_clears_the_fast_path),
    XT(invalidate_cost_follows_live_entries_not_slots),
    XT(replace_remaps_an_unlocked_entry_in_place),
    XT(replace_locked_entry_records_follow),
    XT(replace_errors_leave_the_entry_alone),
    XT(replace_leaves_the_last_entry_alone),
    XT(replace_swaps_dummy_for_real_memory),
    XT(read_write_span_buckets_and_stop_at_holes),
    XT(stats_count_hits_misses_remaps_and_bytes),
    XT_END,
};
