/*
 * test_trace.c - trace events (xmc_cache_set_trace): which events each call
 * emits (as letters: h hit, m miss, M map, R remap, x unmap, d dummy,
 * t translate, o lock overflow, U unlock, l unknown unlock, a unknown
 * ram_addr, I invalidate, D DMA in flight, r replace, G grant refusal), in which order, with which fields; hits traced even on the fast
 * path; a hook calling its own cache gets XMC_EREENTER; no hook, no events;
 * closing emits nothing.
 *
 * Geometry: 64 KiB buckets, four slots, 1 MiB of RAM, through the counting
 * fault backend (its translate maps tr_from.. onto tr_to..).
 */
#include "fault_backend.h"

#define SHIFT 16
#define B (UINT64_C(1) << SHIFT)
#define MAX_EV 64

static xmc_event ev[MAX_EV];
static size_t nev;
static int reentry_rc = 1;
static bool reenter;
static uint32_t refuse; /* the hook refuses an event of this kind (0: none) */
static int refuse_skip; /* after letting this many of them go */

static int hook(void *opaque, const xmc_event *e)
{
    CHECK(opaque == &nev);
    CHECK_EQ(e->struct_size, sizeof(xmc_event));
    if (nev < MAX_EV)
        ev[nev++] = *e;
    if (reenter) {
        xmc_stats st;
        reentry_rc = xmc_stats_get(C, &st);
    }
    return e->kind == refuse && refuse_skip-- == 0;
}

static void setup(void)
{
    fx_setup(MIB, SHIFT, 4 * B);
    OK(xmc_cache_set_trace(C, hook, &nev));
    nev = 0;
}

/* The kinds seen since the last call, as a string of letters (see below). */
static const char *kinds(void)
{
    static const char letters[] = "?hmMRxdtoUlaIDrG"; /* by XMC_EV_* number */
    static char out[MAX_EV + 1];

    for (size_t i = 0; i < nev; i++)
        out[i] = ev[i].kind < sizeof(letters) - 1 ? letters[ev[i].kind] : '!';
    out[nev] = 0;
    nev = 0;
    return out;
}

#define KINDS(want)                                                           \
    do {                                                                      \
        const char *got_ = kinds();                                           \
        if (strcmp(got_, (want)) != 0)                                        \
            xt_fail(__FILE__, __LINE__, "events \"%s\", want \"%s\"", got_, (want)); \
    } while (0)

TEST(trace_map_hit_miss_and_fast_path)
{
    uint8_t *p, *q;

    setup();
    p = MAP(0x10010, 0, 0);
    CHECK_EQ(nev, 2);
    CHECK_EQ(ev[0].kind, XMC_EV_MAP); /* the entry: whole bucket */
    CHECK_EQ(ev[0].paddr, 0x10000);
    CHECK_EQ(ev[0].size, B);
    CHECK_EQ(ev[0].address, (uintptr_t)(p - 0x10));
    CHECK_EQ(ev[1].kind, XMC_EV_MISS); /* the request */
    CHECK_EQ(ev[1].paddr, 0x10010);
    CHECK_EQ(ev[1].size, 0);
    CHECK_EQ(ev[1].address, (uintptr_t)p);
    CHECK_EQ(ev[1].rc, XMC_OK);
    KINDS("Mm");
    /* The fast path's hit, traced: same address, counted once. */
    q = MAP(0x10020, 0, 0);
    CHECK(q == p + 0x10);
    CHECK_EQ(ev[0].kind, XMC_EV_HIT);
    CHECK_EQ(ev[0].paddr, 0x10020);
    CHECK_EQ(ev[0].address, (uintptr_t)q);
    KINDS("h");
    CHECK_EQ(xt_stats(C).hits, 1);
    /* A locked DMA hit carries its flags and tag. */
    q = MAPT(0x10040, 8, XMC_LOCK | XMC_DMA, 42);
    CHECK_EQ(ev[0].kind, XMC_EV_HIT);
    CHECK_EQ(ev[0].flags, XMC_LOCK | XMC_DMA);
    CHECK_EQ(ev[0].tag, 42);
    CHECK_EQ(ev[0].size, 8);
    KINDS("h");
    /* Unlock: the mapping, then an unknown one. */
    OK(xmc_unlock(C, q, NULL));
    CHECK_EQ(ev[0].kind, XMC_EV_UNLOCK);
    CHECK_EQ(ev[0].paddr, 0x10040);
    CHECK_EQ(ev[0].tag, 42);
    CHECK_EQ(ev[0].flags, XMC_LOCK | XMC_DMA);
    CHECK_EQ(ev[0].address, (uintptr_t)q);
    KINDS("U");
    CHECK_EQ(xmc_unlock(C, q, NULL), XMC_ENOENT);
    CHECK_EQ(ev[0].address, (uintptr_t)q);
    CHECK_EQ(ev[0].rc, XMC_ENOENT);
    KINDS("l");
    uint64_t pa;
    CHECK_EQ(xmc_ram_addr(C, &pa, &pa), XMC_ENOENT);
    CHECK_EQ(ev[0].address, (uintptr_t)&pa);
    KINDS("a");
    OK(xmc_ram_addr(C, q, &pa)); /* found: nothing to say */
    KINDS("");
    fx_teardown();
}

TEST(trace_remap_unmap_and_invalidate)
{
    uint8_t *dma, *dev;

    setup();
    MAP(0, 0, 0);
    MAP(4 * B, 0, 0); /* slot 0 again: the unlocked entry is remapped */
    KINDS("MmRm");
    CHECK_EQ(xt_stats(C).remaps, 1);
    dev = MAPT(B, 0, XMC_LOCK, 1);
    dma = MAPT(2 * B + 8, 16, XMC_LOCK | XMC_DMA, 2);
    KINDS("MmMm");
    OK(xmc_invalidate(C, NULL, NULL));
    /* invalidate (1 DMA mapping in flight), that mapping, the unlocked entry. */
    CHECK_EQ(ev[0].kind, XMC_EV_INVALIDATE);
    CHECK_EQ(ev[0].size, 1);
    CHECK_EQ(ev[1].kind, XMC_EV_DMA_IN_FLIGHT);
    CHECK_EQ(ev[1].address, (uintptr_t)dma);
    CHECK_EQ(ev[1].paddr, 2 * B + 8);
    CHECK_EQ(ev[1].size, 16);
    CHECK_EQ(ev[1].tag, 2);
    CHECK_EQ(ev[2].kind, XMC_EV_UNMAP);
    CHECK_EQ(ev[2].paddr, 4 * B);
    CHECK_EQ(ev[2].size, B);
    CHECK_EQ(ev[2].rc, XMC_OK);
    KINDS("IDx");
    OK(xmc_unlock(C, dma, NULL));
    OK(xmc_unlock(C, dev, NULL));
    KINDS("UU");
    fx_teardown();
}

TEST(trace_failed_unmap_carries_its_error)
{
    setup();
    MAP(0, 0, 0);
    KINDS("Mm");
    F->fail_unmap_at = F->unmap_calls + 1;
    CHECK_EQ(xmc_invalidate(C, NULL, NULL), XMC_ESYS);
    CHECK_EQ(ev[1].kind, XMC_EV_UNMAP);
    CHECK_EQ(ev[1].rc, XMC_ESYS);
    KINDS("Ix");
    fx_teardown();
}

TEST(trace_lock_overflow_translate_dummy_replace)
{
    void *p, *q;

    setup();
    nev = 0;
    OK(xmc_cache_set_lock_limit(C, 1));
    p = MAPT(0x1000, 0, XMC_LOCK, 9);
    KINDS("Mm");
    CHECK_EQ(xmc_map(C, 0x1000, 0, XMC_LOCK, 10, &q), XMC_EOVERFLOW);
    CHECK_EQ(ev[0].rc, XMC_EOVERFLOW);
    CHECK_EQ(ev[0].tag, 10);
    CHECK_EQ(ev[0].address, 0);
    KINDS("o");
    OK(xmc_unlock(C, p, NULL));
    KINDS("U");
    /* Translate: a bad page, the backend's translate, then the new address. */
    fb_bad_pages(F, 0x30, 0x31);
    F->tr_on = true;
    F->tr_from = 0x30000;
    F->tr_len = B;
    F->tr_to = 0x50000;
    OK(xmc_map(C, 0x30010, 0, 0, 0, &p));
    /* The bucket with the bad page, the translation, its bucket, the request. */
    KINDS("MtMm");
    CHECK_EQ(RAM_ADDR(p), 0x50010);
    /* Dummy memory when nothing else works: the bad bucket mapped over in
     * place, the backend's "no translation" (the same address), again, then
     * the entry swapped for anonymous memory. */
    F->tr_on = false;
    OK(xmc_cache_set_dummy(C, true));
    MAP(0x30020, 0, 0);
    CHECK_EQ(ev[1].paddr, ev[1].old_paddr);
    KINDS("RtRxdm");
    /* Replace: the event says from where to where, and how it went. */
    OK(xmc_replace(C, 0x30000, 0x60000, 0, &p));
    CHECK_EQ(ev[0].kind, XMC_EV_REPLACE);
    CHECK_EQ(ev[0].old_paddr, 0x30000);
    CHECK_EQ(ev[0].paddr, 0x60000);
    CHECK_EQ(ev[0].address, (uintptr_t)p);
    KINDS("r");
    CHECK_EQ(xmc_replace(C, 0xa0000, 0x60000, 0, &p), XMC_ENOENT);
    CHECK_EQ(ev[0].rc, XMC_ENOENT);
    KINDS("r");
    fx_teardown();
}

TEST(trace_grant_refusal)
{
    fb *f = fb_new(MIB);
    xmc_cache *c;
    void *p;

    CHECK(f);
    OK(xmc_cache_new(&f->be, XMC_PAGE_SHIFT, MIB, &c));
    OK(xmc_cache_set_grants(c, true));
    OK(xmc_cache_set_trace(c, hook, &nev));
    nev = 0;
    CHECK_EQ(xmc_map(c, 0x2000, 0, 0, 0, &p), XMC_EGRANT);
    CHECK_EQ(ev[0].rc, XMC_EGRANT);
    KINDS("G");
    OK(xmc_map(c, 0x2000, 0, XMC_LOCK, 0, &p));
    OK(xmc_unlock(c, p, NULL));
    KINDS("MmUx"); /* unmapped at the last unlock */
    fb_done(f, c);
}

TEST(trace_hook_calling_its_cache_gets_ereenter)
{
    setup();
    reenter = true;
    MAP(0, 0, 0);
    CHECK_EQ(reentry_rc, XMC_EREENTER);
    reenter = false;
    /* The cache still works afterwards, from this thread. */
    CHECK_EQ(xt_stats(C).misses, 1);
    fx_teardown();
}

TEST(trace_off_means_no_events_and_close_says_nothing)
{
    setup();
    MAP(0, 0, 0);
    KINDS("Mm");
    OK(xmc_cache_set_trace(C, NULL, NULL));
    MAP(0x100, 0, 0);
    MAP(B, 0, 0);
    KINDS("");
    CHECK_EQ(xt_stats(C).hits, 1); /* the fast path again */
    OK(xmc_cache_set_trace(C, hook, &nev));
    MAP(0x200, 0, 0); /* switched on with a last entry: still traced */
    KINDS("h");
    OK(xmc_cache_close(C));
    KINDS("");
    CHECK_EQ(xmc_cache_set_trace(C, hook, &nev), XMC_ECLOSED);
    CHECK_EQ(xmc_cache_set_trace(NULL, hook, &nev), XMC_EINVAL);
    fx_teardown();
}

/* What a refused call must leave as it was. */
static bool same_stats(xmc_stats a, xmc_stats b)
{
    return a.hits == b.hits && a.misses == b.misses && a.locked == b.locked &&
           a.dma_locked == b.dma_locked && a.entries == b.entries;
}

TEST(trace_refused_write_copies_nothing)
{
    uint8_t got[4];
    xmc_stats st;

    setup();
    OK(xmc_write(C, 2 * B - 2, "abcd", 4)); /* maps both buckets */
    KINDS("MmMm");
    st = xt_stats(C);
    refuse = XMC_EV_HIT;
    refuse_skip = 0;
    CHECK_EQ(xmc_write(C, 2 * B - 1, "X", 1), XMC_ECALLBACK); /* one bucket */
    KINDS("h");
    CHECK(same_stats(xt_stats(C), st));
    refuse_skip = 1; /* the second chunk's hit: after the first was pinned */
    CHECK_EQ(xmc_write(C, 2 * B - 2, "WXYZ", 4), XMC_ECALLBACK);
    KINDS("hh");
    CHECK(same_stats(xt_stats(C), st));
    CHECK_EQ(xmc_read(C, 2 * B - 2, got, 4), XMC_OK); /* refuse_skip spent */
    KINDS("hh");
    CHECK(memcmp(got, "abcd", 4) == 0);
    /* read stops too, and a refused miss keeps the entry it mapped. */
    refuse = XMC_EV_MISS;
    refuse_skip = 0;
    CHECK_EQ(xmc_read(C, 3 * B, got, 4), XMC_ECALLBACK);
    KINDS("Mm");
    CHECK_EQ(xt_stats(C).entries, st.entries + 1);
    refuse = 0;
    fx_teardown();
}

TEST(trace_refused_unlock_drops_nothing)
{
    uint8_t *a, *b;
    void *addrs[3];
    xmc_stats st;

    setup();
    a = MAPT(0x10000, 16, XMC_LOCK | XMC_DMA, 7);
    b = MAPT(0x10100, 16, XMC_LOCK, 7);
    KINDS("Mmh");
    st = xt_stats(C);
    refuse = XMC_EV_UNLOCK;
    refuse_skip = 0;
    CHECK_EQ(xmc_unlock_tag(C, a, 7), XMC_ECALLBACK);
    KINDS("U");
    CHECK(same_stats(xt_stats(C), st));
    refuse_skip = 0;
    CHECK_EQ(xmc_unlock_tag_nowait(C, a, 7), XMC_ECALLBACK);
    CHECK(same_stats(xt_stats(C), st));
    OK(xmc_unlock_tag_nowait(C, a, 7)); /* refuse_skip spent */
    KINDS("UU");
    CHECK_EQ(xt_stats(C).dma_locked, st.dma_locked - 1);
    /* A batch tells every unlock before any lock goes: all or nothing. */
    a = MAPT(0x10000, 16, XMC_LOCK, 7);
    a = MAPT(0x10000, 16, XMC_LOCK, 7); /* twice at one address */
    addrs[0] = a;
    addrs[1] = b;
    addrs[2] = a;
    nev = 0;
    st = xt_stats(C);
    refuse_skip = 2;
    CHECK_EQ(xmc_unlock_sg(C, addrs, 3, 7), XMC_ECALLBACK);
    KINDS("UUU");
    CHECK(same_stats(xt_stats(C), st));
    refuse_skip = 1;
    CHECK_EQ(xmc_unlock_sg_nowait(C, addrs, 3, 7), XMC_ECALLBACK);
    KINDS("UU");
    CHECK(same_stats(xt_stats(C), st));
    OK(xmc_unlock_sg(C, addrs, 3, 7)); /* refuse_skip spent */
    KINDS("UUU");
    CHECK_EQ(xt_stats(C).locked, st.locked - 3);
    CHECK_EQ(xt_stats(C).locked, 0);
    refuse = 0;
    fx_teardown();
}

TEST(trace_refused_undo_of_a_failed_batch_still_unlocks)
{
    xmc_sg segs[2] = { { 0, 16 }, { 2 * MIB, 16 } }; /* the second is no RAM */
    void *out[2];
    xmc_stats st;

    setup();
    st = xt_stats(C);
    refuse = XMC_EV_UNLOCK;
    refuse_skip = 0;
    CHECK(xmc_map_sg(C, segs, 2, 0, 5, out) != XMC_OK);
    CHECK_EQ(xt_stats(C).locked, st.locked); /* the undo's unlock dropped it */
    refuse = 0;
    fx_teardown();
}

const xt_test xt_trace_tests[] = {
    XT(trace_refused_write_copies_nothing),
    XT(trace_refused_unlock_drops_nothing),
    XT(trace_refused_undo_of_a_failed_batch_still_unlocks),
    XT(trace_map_hit_miss_and_fast_path),
    XT(trace_remap_unmap_and_invalidate),
    XT(trace_failed_unmap_carries_its_error),
    XT(trace_lock_overflow_translate_dummy_replace),
    XT(trace_grant_refusal),
    XT(trace_hook_calling_its_cache_gets_ereenter),
    XT(trace_off_means_no_events_and_close_says_nothing),
    XT_END,
};
