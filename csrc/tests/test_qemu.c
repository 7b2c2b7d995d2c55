/*
 * test_qemu.c - QEMU's mapcache API of today (qemu.c) over counting backends:
 * which cache a request reaches, which grant references the grant backends
 * are asked for, that configuration is all or nothing, that nothing is left
 * mapped after xmc_qemu_shutdown(), and that the legacy cache is searched
 * alongside.  tests/test_qemu_api.py runs a whole device model on top.
 */
#include "fault_backend.h"
#include "xenmapcache_qemu.h"

#include <pthread.h>

static char grant_block, ram_block;
#define GRANTS ((MemoryRegion *)(void *)&grant_block)
#define RAM ((MemoryRegion *)(void *)&ram_block)
#define OFFSET (UINT64_C(1) << 40) /* the grant region's ram_addr_offset */

static int translations;

/* The legacy calls under their symbols (XMC_QEMU_LEGACY_API names them so). */
void xen_map_cache_use(xmc_cache *c);
uint8_t *xmc_qemu_legacy_map_cache(hwaddr phys_addr, hwaddr size, uint8_t lock, bool dma);

static hwaddr to_low_ram(hwaddr phys_offset, ram_addr_t size)
{
    (void)size;
    translations++;
    return phys_offset & (MIB - 1);
}

TEST(qemu_requests_reach_their_cache_and_references)
{
    fb *ram = fb_new(4 * MIB), *ro = fb_new(64 * PAGE), *rw = fb_new(64 * PAGE);
    uint8_t *f, *r, *w, *two;

    CHECK(ram && ro && rw);
    OK(xmc_qemu_configure(&ram->be, &ro->be, &rw->be, GRANTS));
    CHECK(!xen_map_cache_enabled());
    CHECK(xen_map_cache(RAM, 0, 0, 0, 0, false, false) == NULL); /* not yet */
    xen_map_cache_init(to_low_ram, NULL);
    CHECK(xen_map_cache_enabled());

    f = xen_map_cache(RAM, 0x101000, 8, 0x7000, 1, true, false); /* offset: no part */
    CHECK(f && xt_has_pattern(f, 0x101000, 8));
    /* Grant request: page p is grant reference (p - ram_addr_offset) >> 12. */
    r = xen_map_cache(GRANTS, OFFSET + 5 * PAGE + 0x10, 8, OFFSET, 1, true, false);
    CHECK(r && xt_has_pattern(r, 5 * PAGE + 0x10, 8));
    CHECK_EQ(ro->map_calls, 1);
    CHECK_EQ(rw->map_calls, 0);
    w = xen_map_cache(GRANTS, OFFSET + 5 * PAGE, 8, OFFSET, 1, false, true);
    CHECK(w && w != r - 0x10 && xt_has_pattern(w, 5 * PAGE, 8));
    CHECK_EQ(rw->map_calls, 1);
    two = xen_map_cache(GRANTS, OFFSET + 62 * PAGE + 1, PAGE, OFFSET, 1, false, true);
    CHECK(two && xt_has_pattern(two, 62 * PAGE + 1, PAGE)); /* references 62 and 63 */

    /* Refused without a map: unlocked, below the block, an unaligned block,
     * references the backend lacks. */
    CHECK(xen_map_cache(GRANTS, OFFSET + PAGE, 8, OFFSET, 0, false, false) == NULL);
    CHECK(xen_map_cache(GRANTS, PAGE, 8, OFFSET, 1, false, false) == NULL);
    CHECK(xen_map_cache(GRANTS, OFFSET + PAGE, 8, OFFSET + 8, 1, false, false) == NULL);
    CHECK(xen_map_cache(GRANTS, OFFSET + 64 * PAGE, 8, OFFSET, 1, false, false) == NULL);
    CHECK_EQ(xt_stats(xmc_qemu_cache(XMC_QEMU_GRANTS_RO)).locked, 1);

    /* Reverse lookup, unlock: every cache is searched. */
    CHECK_EQ(xen_ram_addr_from_mapcache(f + 1), 0x101001);
    CHECK_EQ(xen_ram_addr_from_mapcache(r), OFFSET + 5 * PAGE + 0x10);
    CHECK_EQ(xen_ram_addr_from_mapcache(w + 3), OFFSET + 5 * PAGE + 3);
    CHECK(xen_ram_addr_from_mapcache(&grant_block) == RAM_ADDR_INVALID);
    xen_invalidate_map_cache(); /* all locked: nothing goes */
    CHECK(xt_has_pattern(r, 5 * PAGE + 0x10, 8) && xt_has_pattern(f, 0x101000, 8));
    xen_invalidate_map_cache_entry(r);
    CHECK_EQ(fb_live(ro), 0); /* the grant rules: unmapped at its last unlock */
    xen_invalidate_map_cache_entry(w);
    CHECK_EQ(fb_live(rw), 1);
    xen_invalidate_map_cache_entry(two);
    CHECK_EQ(fb_live(rw), 0);
    xen_invalidate_map_cache_entry(f);
    xen_invalidate_map_cache_entry(f); /* unknown now: nothing happens */
    CHECK_EQ(xt_stats(xmc_qemu_cache(XMC_QEMU_GRANTS_RO)).locked, 0);
    CHECK_EQ(xt_stats(xmc_qemu_cache(XMC_QEMU_GRANTS_RW)).locked, 0);
    CHECK_EQ(xt_stats(xmc_qemu_cache(XMC_QEMU_FOREIGN)).locked, 0);
    CHECK_EQ(ro->fixed_maps + rw->fixed_maps, 0);

    /* The translate hook, on foreign memory: tried once when pages fail. */
    fb_bad_pages(ram, 0x300, 0x301);
    f = xen_map_cache(RAM, 0x300000 + 0x20, 8, 0, 1, false, false);
    CHECK_EQ(translations, 1);
    CHECK(f && xt_has_pattern(f, 0x20, 8));
    CHECK_EQ(xen_ram_addr_from_mapcache(f), 0x20);
    xen_invalidate_map_cache_entry(f);

    xmc_qemu_shutdown();
    CHECK(!xen_map_cache_enabled());
    CHECK(xmc_qemu_cache(XMC_QEMU_FOREIGN) == NULL && xmc_qemu_cache(9) == NULL);
    fb_done(ram, NULL);
    fb_done(ro, NULL);
    fb_done(rw, NULL);
}

TEST(qemu_configure_is_all_or_nothing)
{
    fb *ram = fb_new(MIB), *g = fb_new(4 * PAGE);
    xmc_backend broken = { 0 };

    CHECK(ram && g);
    CHECK_EQ(xmc_qemu_configure(NULL, &g->be, &g->be, GRANTS), XMC_EINVAL);
    CHECK_EQ(xmc_qemu_configure(&ram->be, &g->be, &broken, GRANTS), XMC_EINVAL);
    CHECK(xmc_qemu_cache(XMC_QEMU_FOREIGN) == NULL && xmc_qemu_cache(XMC_QEMU_GRANTS_RO) == NULL);
    xen_map_cache_init(NULL, NULL); /* nothing configured: nothing on */
    CHECK(!xen_map_cache_enabled());

    /* No grant caches: grant requests fail, foreign ones work. */
    OK(xmc_qemu_configure(&ram->be, NULL, NULL, GRANTS));
    CHECK_EQ(xmc_qemu_configure(&ram->be, NULL, NULL, GRANTS), XMC_EINVAL); /* once */
    xen_map_cache_init(NULL, NULL);
    CHECK(xen_map_cache(GRANTS, OFFSET, 8, OFFSET, 1, false, true) == NULL);
    CHECK(xen_map_cache(RAM, 0x1000, 8, 0, 1, false, true) != NULL);
    xmc_qemu_shutdown(); /* unmaps the locked mapping too */
    xmc_qemu_shutdown(); /* twice: nothing to do */
    fb_done(ram, NULL);
    fb_done(g, NULL);
}

TEST(qemu_legacy_cache_is_searched_too)
{
    fb *a = fb_new(MIB), *b = fb_new(MIB);
    xmc_cache *legacy;
    uint8_t *p, *q;

    CHECK(a && b);
    OK(xmc_cache_new(&b->be, 0, 0, &legacy));
    OK(xmc_qemu_configure(&a->be, NULL, NULL, NULL));
    xen_map_cache_init(NULL, NULL);
    xen_map_cache_use(legacy);
    p = xen_map_cache(RAM, 0x2000, 8, 0, 1, true, true);
    q = xmc_qemu_legacy_map_cache(0x3000, 8, 1, true);
    CHECK(p && q);
    CHECK_EQ(xen_ram_addr_from_mapcache(q), 0x3000);
    xen_invalidate_map_cache_entry(q);
    CHECK_EQ(xt_stats(legacy).locked, 0);
    CHECK_EQ(xt_stats(xmc_qemu_cache(XMC_QEMU_FOREIGN)).locked, 1);
    xen_map_cache_use(NULL);
    xmc_qemu_shutdown();
    fb_done(a, NULL);
    fb_done(b, legacy);
}

/* A thread mapping grants of a block at its own ram_addr_offset. */
struct grant_worker {
    uint64_t offset;
    int bad; /* mappings that did not show the page of their reference */
};

static void *map_grants(void *arg)
{
    struct grant_worker *w = arg;
    int rounds = xt_slow() ? 1000 : 10000; /* valgrind is slow enough to interleave */

    for (int i = 0; i < rounds; i++) {
        uint64_t ref = (uint64_t)(i * 7) % 60;
        uint8_t *p = xen_map_cache(GRANTS, w->offset + ref * PAGE + 8, 16, w->offset, 1,
                                   true, (i & 8) != 0);

        if (!p || !xt_has_pattern(p, ref * PAGE + 8, 16))
            w->bad++;
        xen_invalidate_map_cache_entry(p);
    }
    return NULL;
}

/* The offset a grant request subtracts is its own thread's, whatever the
 * others do meanwhile. */
TEST(qemu_grant_offsets_do_not_leak_across_threads)
{
    /* One counting backend per cache: its mutex is all that guards it. */
    fb *ram = fb_new(MIB), *ro = fb_new(64 * PAGE), *rw = fb_new(64 * PAGE);
    struct grant_worker w[2] = { { OFFSET, 0 }, { 3 * OFFSET, 0 } };
    pthread_t th[2];

    CHECK(ram && ro && rw);
    OK(xmc_qemu_configure(&ram->be, &ro->be, &rw->be, GRANTS));
    xen_map_cache_init(NULL, NULL);
    for (int i = 0; i < 2; i++)
        CHECK_EQ(pthread_create(&th[i], NULL, map_grants, &w[i]), 0);
    for (int i = 0; i < 2; i++)
        CHECK_EQ(pthread_join(th[i], NULL), 0);
    CHECK_EQ(w[0].bad + w[1].bad, 0);
    CHECK_EQ(fb_live(ro) + fb_live(rw), 0);
    xmc_qemu_shutdown();
    fb_done(ram, NULL);
    fb_done(ro, NULL);
    fb_done(rw, NULL);
}

const xt_test xt_qemu_tests[] = {
    XT(qemu_requests_reach_their_cache_and_references),
    XT(qemu_configure_is_all_or_nothing),
    XT(qemu_legacy_cache_is_searched_too),
    XT(qemu_grant_offsets_do_not_leak_across_threads),
    XT_END,
};
