/*
 * test_memory.c - the memfd guest RAM and what the cache does with real
 * mappings: holes and past-end pages are PROT_NONE (seen in /proc/self/maps
 * and by a forked child that faults), page-granular caches, several caches at
 * once, the QEMU shim, RAM images, and clean-up of everything on free.
 */
#include "fault_backend.h"
#define XMC_QEMU_LEGACY_API 1 /* QEMU's mapcache calls before 9.1 */
#include "xenmapcache_qemu.h"

#include <fcntl.h>
#include <unistd.h>

/* 4 MiB of RAM with a "PCI hole" at [1 MiB + 8 KiB, 1 MiB + 24 KiB). */
static xmc_ram *holey_ram(void)
{
    xmc_ram *ram = xt_ram(4 * MIB);

    OK(xmc_ram_add_hole(ram, MIB + 8 * KIB, MIB + 24 * KIB));
    return ram;
}

TEST(hole_pages_are_mapped_with_no_access)
{
    xmc_ram *ram = holey_ram();
    xmc_cache *c;
    uint8_t *p;
    char prot[5];
    void *q;

    OK(xmc_cache_new(xmc_ram_backend(ram), 20, 0, &c));
    p = MAPC(c, MIB, 0, XMC_LOCK); /* page 0 of bucket 1 is RAM */
    CHECK(xt_has_pattern(p, MIB, 8 * KIB));
    CHECK(xt_prot(p, prot) && strcmp(prot, "rw-s") == 0);
    CHECK(xt_prot(p + 8 * KIB, prot) && strcmp(prot, "---p") == 0);
    CHECK(xt_prot(p + 23 * KIB, prot) && strcmp(prot, "---p") == 0);
    CHECK(xt_prot(p + 24 * KIB, prot) && strcmp(prot, "rw-s") == 0);
    CHECK(xt_faults(xt_touch_read, p + 8 * KIB));
    CHECK(xt_faults(xt_touch_write, p + 16 * KIB));
    CHECK(!xt_faults(xt_touch_read, p + 24 * KIB));
    CHECK(xt_has_pattern(p + 24 * KIB, MIB + 24 * KIB, 1000));
    /* The cache refuses to hand out hole pages. */
    CHECK_EQ(xmc_map(c, MIB + 8 * KIB, 0, 0, 0, &q), XMC_EMAP);
    CHECK_EQ(xmc_map(c, MIB, 9 * KIB, 0, 0, &q), XMC_EMAP);
    /* Reading the hole through the RAM is refused too. */
    CHECK_EQ(xmc_ram_read(ram, MIB + 8 * KIB, prot, 1), XMC_EMAP);
    OK(xmc_unlock(c, p, NULL));
    xmc_cache_free(c);
    xmc_ram_free(ram);
}

TEST(past_end_pages_are_mapped_with_no_access)
{
    xmc_ram *ram = xt_ram(MIB + 12 * KIB); /* bucket 1 has three pages of RAM */
    xmc_cache *c;
    char prot[5];
    uint8_t *p;
    void *q;

    OK(xmc_cache_new(xmc_ram_backend(ram), 20, 0, &c));
    p = MAPC(c, MIB + 4 * KIB, 8 * KIB, XMC_LOCK);
    CHECK(xt_has_pattern(p, MIB + 4 * KIB, 8 * KIB));
    CHECK(xt_prot(p + 8 * KIB, prot) && strcmp(prot, "---p") == 0);
    CHECK(xt_faults(xt_touch_read, p + 8 * KIB));
    CHECK(xt_faults(xt_touch_write, p + MIB - 5 * KIB));
    CHECK_EQ(xmc_map(c, MIB + 12 * KIB, 0, 0, 0, &q), XMC_EMAP);
    CHECK_EQ(xmc_map(c, 64 * MIB, 0, 0, 0, &q), XMC_EMAP);
    CHECK_EQ(xmc_map(c, UINT64_MAX - 4095, 0, 0, 0, &q), XMC_EMAP);
    CHECK_EQ(xmc_map(c, UINT64_MAX - 4095, 4096, 0, 0, &q), XMC_EMAP);
    CHECK_EQ(xmc_map(c, UINT64_MAX, 1, XMC_LOCK, 0, &q), XMC_EMAP);
    CHECK_EQ(xt_stats(c).locked, 1);
    xmc_cache_free(c); /* with a mapping still locked: all unmapped */
    CHECK(!xt_mapped(p - 4 * KIB, MIB, false));
    xmc_ram_free(ram);
}

TEST(page_granular_cache_shift_12)
{
    xmc_ram *ram = holey_ram();
    xmc_cache *c;
    uint8_t *p, *q, *r;
    xmc_stats s;
    void *v;

    OK(xmc_cache_new(xmc_ram_backend(ram), 12, 64 * PAGE, &c));
    p = MAPC(c, 0x5123, 0, XMC_LOCK);
    CHECK(xt_has_pattern(p, 0x5123, PAGE - 0x123));
    q = MAPC(c, 0x6ff0, 0x20, XMC_LOCK | XMC_DMA); /* two one-page buckets */
    CHECK(xt_has_pattern(q, 0x6ff0, 0x20));
    s = xt_stats(c);
    CHECK_EQ(s.entries, 2);
    CHECK_EQ(s.mapped_bytes, 3 * PAGE);
    /* Slot 5 of 64: 0x45000 collides with 0x5000. */
    r = MAPC(c, 0x45000, 0, 0);
    CHECK(xt_has_pattern(r, 0x45000, PAGE));
    CHECK_EQ(xt_stats(c).entries, 3);
    /* Holes are per page: the page before the hole maps, the hole does not. */
    MAPC(c, MIB + 4 * KIB, 0, 0);
    CHECK_EQ(xmc_map(c, MIB + 8 * KIB, 0, 0, 0, &v), XMC_EMAP);
    CHECK_EQ(xmc_map(c, MIB + 4 * KIB, 2 * PAGE, 0, 0, &v), XMC_EMAP);
    MAPC(c, MIB + 24 * KIB, 0, 0);
    OK(xmc_unlock(c, p, NULL));
    OK(xmc_invalidate(c, NULL, NULL));
    CHECK_EQ(xt_stats(c).entries, 1);
    CHECK(xt_has_pattern(q, 0x6ff0, 0x20));
    OK(xmc_unlock(c, q, NULL));
    xmc_cache_free(c);
    xmc_ram_free(ram);
}

TEST(several_caches_at_once_share_nothing_but_ram)
{
    xmc_ram *ram = xt_ram(8 * MIB);
    xmc_cache *a, *b, *g;
    uint8_t *pa, *pb, *pg;
    uint64_t out;

    OK(xmc_cache_new(xmc_ram_backend(ram), 20, 0, &a));
    OK(xmc_cache_new(xmc_ram_backend(ram), 16, 4 * MIB, &b));
    OK(xmc_cache_new(xmc_ram_backend(ram), 12, 16 * PAGE, &g));
    pa = MAPC(a, 0x234567, 0x10, XMC_LOCK | XMC_DMA);
    pb = MAPC(b, 0x234567, 0x10, XMC_LOCK);
    pg = MAPC(g, 0x234567, 0x10, 0);
    CHECK(pa != pb && pb != pg);
    memcpy(pa, "shared guest RAM", 16); /* one RAM, three views */
    CHECK(memcmp(pb, "shared guest RAM", 16) == 0);
    CHECK(memcmp(pg, "shared guest RAM", 16) == 0);
    /* Pointers of one cache are unknown to the others. */
    CHECK_EQ(xmc_ram_addr(b, pa, &out), XMC_ENOENT);
    CHECK_EQ(xmc_unlock(b, pa, NULL), XMC_ENOENT);
    /* Invalidating one leaves the others alone. */
    OK(xmc_invalidate(g, NULL, NULL));
    CHECK_EQ(xt_stats(a).entries, 1);
    CHECK_EQ(xt_stats(b).entries, 1);
    CHECK_EQ(xt_stats(g).entries, 0);
    CHECK_EQ(xt_stats(a).dma_locked, 1);
    CHECK_EQ(xt_stats(b).dma_locked, 0);
    CHECK_EQ(xt_stats(g).invalidations, 1);
    CHECK_EQ(xt_stats(a).invalidations, 0);
    xmc_ram_free(ram); /* the caches keep it alive */
    CHECK(memcmp(pb, "shared guest RAM", 16) == 0);
    MAPC(a, 0x700000, 0, 0);
    xmc_cache_free(a);
    xmc_cache_free(g);
    CHECK(memcmp(pb, "shared guest RAM", 16) == 0);
    xmc_cache_free(b); /* the last one frees the RAM (LeakSanitizer, fd count) */
}

TEST(qemu_shim_maps_resolves_unlocks_and_invalidates)
{
    xmc_ram *ram = xt_ram(4 * MIB);
    xmc_cache *c;
    uint8_t *p, *d, *u, *r;

    OK(xmc_cache_new(xmc_ram_backend(ram), 0, 0, &c));
    /* No cache chosen yet: failures, no crash. */
    xen_map_cache_use(NULL);
    CHECK(xen_map_cache(0x1000, 0, 0, false) == NULL);
    CHECK(xen_ram_addr_from_mapcache(&c) == RAM_ADDR_INVALID);
    xen_invalidate_map_cache_entry(NULL);
    xen_invalidate_map_cache();
    CHECK(xen_replace_cache_entry(0, 0x1000, 0) == NULL);

    xen_map_cache_use(c);
    p = xen_map_cache(0x101000, 0x100, 1, false); /* [a] device memory */
    d = xen_map_cache(0x202000, 0x200, 1, true);  /* [b] DMA */
    u = xen_map_cache(0x303000, 0, 0, false);
    CHECK(p && d && u);
    CHECK(xt_has_pattern(p, 0x101000, 0x100) && xt_has_pattern(u, 0x303000, 64));
    CHECK_EQ(xen_ram_addr_from_mapcache(p), 0x101000);
    CHECK_EQ(xen_ram_addr_from_mapcache(d + 0x10), 0x202010);
    CHECK_EQ(xen_ram_addr_from_mapcache(u + 1), 0x303001);
    CHECK(xen_ram_addr_from_mapcache(&p) == RAM_ADDR_INVALID);
    CHECK(xen_map_cache(UINT64_MAX, 2, 0, false) == NULL);
    CHECK(xen_map_cache(8 * MIB, 0, 1, true) == NULL); /* past the end */
    CHECK_EQ(xt_stats(c).locked, 2);
    xen_invalidate_map_cache();
    CHECK_EQ(xt_stats(c).entries, 2);
    CHECK(xen_ram_addr_from_mapcache(u) == RAM_ADDR_INVALID);
    r = xen_replace_cache_entry(0x200000, 0x100000 * 3, 0x2200);
    CHECK(r == d - 0x2000);
    CHECK_EQ(xen_ram_addr_from_mapcache(d), 0x302000);
    CHECK(xen_replace_cache_entry(0x300000 + MIB, 0, 0) == NULL);
    xen_invalidate_map_cache_entry(d);
    xen_invalidate_map_cache_entry(d); /* a second time: ignored */
    xen_invalidate_map_cache_entry(p);
    CHECK_EQ(xt_stats(c).locked, 0);
    xen_invalidate_map_cache();
    CHECK_EQ(xt_stats(c).entries, 0);
    xen_map_cache_use(NULL);
    xmc_cache_free(c);
    xmc_ram_free(ram);
}

TEST(ram_image_file_and_fd)
{
    char path[] = "/tmp/xmc-test-XXXXXX";
    int fd = mkstemp(path);
    uint8_t buf[5000], back[5000];
    xmc_ram *ram;
    uint64_t size;

    CHECK(fd >= 0);
    for (size_t i = 0; i < sizeof(buf); i++)
        buf[i] = (uint8_t)(i * 3 + 1);
    CHECK(write(fd, buf, sizeof(buf)) == (ssize_t)sizeof(buf));
    OK(xmc_ram_open(path, &ram));
    OK(xmc_ram_size(ram, &size));
    CHECK_EQ(size, 2 * PAGE); /* rounded up to whole pages */
    OK(xmc_ram_read(ram, 0, back, sizeof(back)));
    CHECK(memcmp(buf, back, sizeof(buf)) == 0);
    xmc_ram_free(ram);
    CHECK_EQ(xmc_ram_new_fd(fd, 2 * PAGE, &ram), XMC_EINVAL); /* file too short */
    CHECK(ftruncate(fd, 2 * PAGE) == 0);
    OK(xmc_ram_new_fd(fd, 2 * PAGE, &ram));
    OK(xmc_ram_write(ram, 0, "fd", 2));
    CHECK(pread(fd, back, 2, 0) == 2 && memcmp(back, "fd", 2) == 0);
    xmc_ram_free(ram);
    close(fd);
    unlink(path);
    CHECK_EQ(xmc_ram_open(path, &ram), XMC_ESYS); /* gone */
    CHECK(ram == NULL);
    CHECK_EQ(xmc_ram_open("/tmp", &ram), XMC_EINVAL); /* not a regular file */
}

TEST(cache_free_unmaps_everything_locked_or_not)
{
    uint8_t *a, *b, *c;

    fx_setup(4 * MIB, 16, MIB);
    a = MAP(0x10000, 0, XMC_LOCK | XMC_DMA);
    b = MAP(0x20000, 0x30000, XMC_LOCK);
    c = MAP(0x300000, 0, 0);
    CHECK_EQ(fb_live(F), 3);
    xmc_cache_free(C);
    C = NULL;
    CHECK_EQ(fb_live(F), 0);
    CHECK(!xt_mapped(a, 0x10000, false) && !xt_mapped(b, 0x30000, false) &&
          !xt_mapped(c, 0x10000, false));
    fx_teardown();
}

TEST(a_thousand_caches_leave_no_mapping_or_fd)
{
    int fds = xt_fd_count();
    char prot[5];
    uint8_t *p = NULL;

    for (int i = 0; i < 1000; i++) {
        xmc_ram *ram;
        xmc_cache *c;

        OK(xmc_ram_new(MIB, &ram));
        OK(xmc_cache_new(xmc_ram_backend(ram), 12 + (unsigned)(i % 9), 16 * MIB, &c));
        xmc_ram_free(ram);
        p = MAPC(c, (uint64_t)(i % 256) * PAGE, 0, (unsigned)(i % 3 == 0));
        MAPC(c, 0x80000, 0x10, 0);
        xmc_cache_free(c);
        CHECK(!xt_prot(p, prot)); /* gone from /proc/self/maps */
    }
    CHECK_EQ(xt_fd_count(), fds);
}

const xt_test xt_memory_tests[] = {
    XT(hole_pages_are_mapped_with_no_access),
    XT(past_end_pages_are_mapped_with_no_access),
    XT(page_granular_cache_shift_12),
    XT(several_caches_at_once_share_nothing_but_ram),
    XT(qemu_shim_maps_resolves_unlocks_and_invalidates),
    XT(ram_image_file_and_fd),
    XT(cache_free_unmaps_everything_locked_or_not),
    XT(a_thousand_caches_leave_no_mapping_or_fd),
    XT_END,
};
