/*
 * test_input.c - hostile and malformed input to every public C entry point:
 * NULL handles and pointers, bad flags, huge sizes, wrap-around paddr + size,
 * bucket shifts and max sizes out of range, foreign pointers.  Each gets its
 * documented status code, never a crash, and changes nothing.
 */
#include "fault_backend.h"
#define XMC_QEMU_LEGACY_API 1 /* QEMU's mapcache calls before 9.1 */
#include "xenmapcache_qemu.h"

#include <limits.h>

static int dummy_map(void *o, void *f, uint64_t pfn, size_t n, int *e, void **out)
{
    (void)o, (void)f, (void)pfn, (void)n, (void)e, (void)out;
    return XMC_EMAP;
}

static int dummy_unmap(void *o, void *a, size_t l)
{
    (void)o, (void)a, (void)l;
    return XMC_OK;
}

TEST(null_cache_handle_is_einval_everywhere)
{
    const char *call = xt_every_call(NULL, XMC_EINVAL);

    if (call)
        xt_fail(__FILE__, __LINE__, "%s: not XMC_EINVAL", call);
    xmc_cache_free(NULL);
    xmc_records_free(NULL);
}

TEST(null_out_pointers_and_buffers_are_einval)
{
    uint8_t *p;
    xmc_record *r;
    size_t n;

    fx_setup(MIB, 16, 4 * 65536);
    p = MAP(0x1000, 0, XMC_LOCK | XMC_DMA);
    CHECK_EQ(xmc_map(C, 0, 0, 0, 0, NULL), XMC_EINVAL);
    CHECK_EQ(xmc_map(C, 0, 0, XMC_LOCK, 0, NULL), XMC_EINVAL);
    CHECK_EQ(xmc_ram_addr(C, p, NULL), XMC_EINVAL);
    CHECK_EQ(xmc_replace(C, 0, 0x20000, 0, NULL), XMC_EINVAL);
    CHECK_EQ(xmc_locked(C, NULL, &n), XMC_EINVAL);
    CHECK_EQ(xmc_locked(C, &r, NULL), XMC_EINVAL);
    CHECK_EQ(xmc_invalidate(C, &r, NULL), XMC_EINVAL);
    CHECK_EQ(xmc_invalidate(C, NULL, &n), XMC_EINVAL);
    CHECK_EQ(xmc_stats_get(C, NULL), XMC_EINVAL);
    CHECK_EQ(xmc_read(C, 0, NULL, 4), XMC_EINVAL);
    CHECK_EQ(xmc_write(C, 0, NULL, 4), XMC_EINVAL);
    OK(xmc_read(C, 0, NULL, 0));
    OK(xmc_write(C, 0, NULL, 0));
    CHECK_EQ(xmc_unlock(C, NULL, NULL), XMC_ENOENT);
    CHECK_EQ(xmc_unlock_tag(C, NULL, 0), XMC_ENOENT);
    /* Nothing changed: the invalidate calls above were refused. */
    CHECK_EQ(xt_stats(C).invalidations, 0);
    CHECK_EQ(xt_stats(C).locked, 1);
    CHECK(xt_has_pattern(p, 0x1000, 16));
    fx_teardown();
}

TEST(unknown_map_flags_are_einval)
{
    void *p;

    fx_setup(MIB, 16, 4 * 65536);
    CHECK_EQ(xmc_map(C, 0, 0, 4, 0, &p), XMC_EINVAL);
    CHECK_EQ(xmc_map(C, 0, 0, UINT_MAX, 0, &p), XMC_EINVAL);
    CHECK_EQ(xmc_map(C, 0, 0, XMC_LOCK | 8, 0, &p), XMC_EINVAL);
    CHECK_EQ(xt_stats(C).misses, 0);
    CHECK_EQ(xt_stats(C).locked, 0);
    fx_teardown();
}

TEST(wrap_around_and_huge_sizes_are_einval)
{
    static char buf[64];
    xmc_stats s;
    void *p;

    fx_setup(MIB, 16, 4 * 65536);
    MAP(0x2000, 0, XMC_LOCK);
    CHECK_EQ(xmc_map(C, UINT64_MAX - 10, 20, 0, 0, &p), XMC_EINVAL);
    CHECK_EQ(xmc_map(C, UINT64_MAX, 2, XMC_LOCK, 0, &p), XMC_EINVAL);
    CHECK_EQ(xmc_map(C, 1, UINT64_MAX, 0, 0, &p), XMC_EINVAL);
    CHECK_EQ(xmc_map(C, 0, UINT64_MAX, 0, 0, &p), XMC_EINVAL);
    CHECK_EQ(xmc_map(C, 0, 4 * 65536 + 1, 0, 0, &p), XMC_EINVAL); /* > max_size */
    CHECK_EQ(xmc_map(C, 0, UINT64_C(1) << 63, XMC_LOCK, 0, &p), XMC_EINVAL);
    CHECK_EQ(xmc_replace(C, 0, UINT64_MAX - 1, 16, &p), XMC_EINVAL);
    CHECK_EQ(xmc_replace(C, UINT64_MAX - 1, 0, 16, &p), XMC_EINVAL);
    CHECK_EQ(xmc_replace(C, 0, 0x10000, UINT64_MAX, &p), XMC_EINVAL);
    CHECK_EQ(xmc_read(C, UINT64_MAX - 8, buf, 64), XMC_EINVAL);
    CHECK_EQ(xmc_write(C, UINT64_MAX - 8, buf, 64), XMC_EINVAL);
    CHECK_EQ(xmc_read(C, 2, buf, SIZE_MAX), XMC_EINVAL);
    s = xt_stats(C);
    CHECK_EQ(s.locked, 1);
    CHECK_EQ(s.entries, 1);
    /* max_size itself is fine. */
    MAP(0, 4 * 65536, 0);
    /* The very top of the address space is not RAM: a mapping error. */
    CHECK_EQ(xmc_map(C, UINT64_MAX, 1, 0, 0, &p), XMC_EMAP);
    CHECK_EQ(xmc_map(C, UINT64_MAX - 65535, 65536, 0, 0, &p), XMC_EMAP);
    fx_teardown();
}

TEST(cache_geometry_out_of_range_is_einval)
{
    static const unsigned bad_shifts[] = { 1, 11, 33, 63, 64, 65, 255, UINT_MAX };
    xmc_backend nomap = { .map = NULL, .unmap = dummy_unmap };
    xmc_backend nounmap = { .map = dummy_map, .unmap = NULL };
    xmc_backend ok = { .map = dummy_map, .unmap = dummy_unmap };
    xmc_cache *c = (xmc_cache *)&ok;

    for (size_t i = 0; i < sizeof(bad_shifts) / sizeof(bad_shifts[0]); i++) {
        CHECK_EQ(xmc_cache_new(&ok, bad_shifts[i], 0, &c), XMC_EINVAL);
        CHECK(c == NULL);
        CHECK_EQ(xmc_cache_new(&ok, bad_shifts[i], MIB, &c), XMC_EINVAL);
    }
    /* More slots than XMC_MAX_SLOTS. */
    CHECK_EQ(xmc_cache_new(&ok, 12, ((uint64_t)XMC_MAX_SLOTS << 12) + 1, &c), XMC_EINVAL);
    CHECK_EQ(xmc_cache_new(&ok, 12, UINT64_MAX, &c), XMC_EINVAL);
    CHECK_EQ(xmc_cache_new(&ok, 32, UINT64_MAX, &c), XMC_EINVAL);
    CHECK_EQ(xmc_cache_new(NULL, 20, 0, &c), XMC_EINVAL);
    CHECK_EQ(xmc_cache_new(&nomap, 20, 0, &c), XMC_EINVAL);
    CHECK_EQ(xmc_cache_new(&nounmap, 20, 0, &c), XMC_EINVAL);
    CHECK_EQ(xmc_cache_new(&ok, 20, 0, NULL), XMC_EINVAL);
    /* The edges that are allowed. */
    OK(xmc_cache_new(&ok, 12, 1, &c)); /* one slot */
    xmc_cache_free(c);
    OK(xmc_cache_new(&ok, 32, 0, &c));
    xmc_cache_free(c);
    OK(xmc_cache_new(&ok, 12, (uint64_t)XMC_MAX_SLOTS << 12, &c));
    xmc_cache_free(c);
    OK(xmc_cache_new(&ok, 32, UINT64_MAX >> 8, &c)); /* 2**24 slots of 4 GiB */
    xmc_cache_free(c);
}

TEST(huge_requests_on_a_huge_cache_fail_cleanly)
{
    xmc_ram *ram = xt_ram(MIB);
    xmc_cache *c;
    xmc_stats s;
    void *p;
    int rc;

    /* Buckets of 4 GiB; a 64 TiB request passes max_size and must fail. */
    OK(xmc_cache_new(xmc_ram_backend(ram), 32, UINT64_C(1) << 50, &c));
    rc = xmc_map(c, 0, UINT64_C(1) << 46, XMC_LOCK, 0, &p);
    CHECK(rc == XMC_ENOMEM || rc == XMC_ESYS || rc == XMC_EMAP);
    rc = xmc_map(c, 0, 0, 0, 0, &p); /* one 4 GiB bucket, 1 MiB of RAM */
    CHECK(rc == XMC_OK || rc == XMC_ESYS || rc == XMC_ENOMEM);
    s = xt_stats(c);
    CHECK_EQ(s.locked, 0);
    xmc_cache_free(c);
    xmc_ram_free(ram);
}

TEST(ram_entry_points_reject_bad_input)
{
    xmc_ram *ram = (xmc_ram *)1;
    uint64_t size;
    char buf[8];

    CHECK_EQ(xmc_ram_new(0, &ram), XMC_EINVAL);
    CHECK(ram == NULL);
    CHECK_EQ(xmc_ram_new(4097, &ram), XMC_EINVAL);
    CHECK_EQ(xmc_ram_new(UINT64_MAX - 4095, &ram), XMC_EINVAL);
    CHECK_EQ(xmc_ram_new(MIB, NULL), XMC_EINVAL);
    CHECK_EQ(xmc_ram_open(NULL, &ram), XMC_EINVAL);
    CHECK_EQ(xmc_ram_open("/nonexistent/xmc", NULL), XMC_EINVAL);
    CHECK_EQ(xmc_ram_new_fd(-1, MIB, &ram), XMC_EINVAL);
    CHECK_EQ(xmc_ram_new_fd(INT_MAX, MIB, &ram), XMC_ESYS);
    CHECK_EQ(xmc_ram_new_fd(0, 0, &ram), XMC_EINVAL);
    CHECK_EQ(xmc_ram_add_hole(NULL, 0, 1), XMC_EINVAL);
    CHECK_EQ(xmc_ram_size(NULL, &size), XMC_EINVAL);
    CHECK(xmc_ram_backend(NULL) == NULL);
    xmc_ram_free(NULL);
    CHECK_EQ(xmc_ram_read(NULL, 0, buf, 1), XMC_EINVAL);
    CHECK_EQ(xmc_ram_write(NULL, 0, buf, 1), XMC_EINVAL);

    ram = xt_ram(2 * PAGE);
    CHECK_EQ(xmc_ram_size(ram, NULL), XMC_EINVAL);
    CHECK_EQ(xmc_ram_add_hole(ram, 10, 10), XMC_EINVAL);
    CHECK_EQ(xmc_ram_add_hole(ram, 11, 10), XMC_EINVAL);
    CHECK_EQ(xmc_ram_read(ram, 0, NULL, 1), XMC_EINVAL);
    CHECK_EQ(xmc_ram_write(ram, 0, NULL, 1), XMC_EINVAL);
    CHECK_EQ(xmc_ram_read(ram, 2 * PAGE - 4, buf, 8), XMC_EINVAL);
    CHECK_EQ(xmc_ram_write(ram, 2 * PAGE, buf, 1), XMC_EINVAL);
    CHECK_EQ(xmc_ram_read(ram, UINT64_MAX - 2, buf, 8), XMC_EINVAL);
    CHECK_EQ(xmc_ram_write(ram, UINT64_MAX, buf, 2), XMC_EINVAL);
    OK(xmc_ram_read(ram, 2 * PAGE, buf, 0));
    OK(xmc_ram_add_hole(ram, 100, UINT64_MAX)); /* holes may reach anywhere */
    CHECK_EQ(xmc_ram_read(ram, 0, buf, 8), XMC_OK);
    CHECK_EQ(xmc_ram_read(ram, 96, buf, 8), XMC_EMAP);
    xmc_ram_free(ram);
}

TEST(strerror_names_every_code)
{
    static const int codes[] = { XMC_OK,        XMC_ENOMEM,    XMC_EINVAL, XMC_EMAP,
                                 XMC_ENOENT,    XMC_EOVERFLOW, XMC_EUNAVAIL,
                                 XMC_ESYS,      XMC_ECLOSED };

    for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
        const char *m = xmc_strerror(codes[i]);
        CHECK(m && *m && strcmp(m, "unknown error") != 0);
    }
    CHECK(strcmp(xmc_strerror(12345), "unknown error") == 0);
    CHECK(strcmp(xmc_strerror(INT_MIN), "unknown error") == 0);
}

TEST(foreign_and_interior_pointers_to_unlock_and_ram_addr)
{
    static const uintptr_t odd[] = { 0, 1, 4096, UINTPTR_MAX, UINTPTR_MAX - 4095,
                                     (uintptr_t)1 << 47, ((uintptr_t)1 << 63) };
    uint8_t *p;
    uint64_t out;

    fx_setup(MIB, 16, 4 * 65536);
    p = MAP(0x31000, 0x10, XMC_LOCK);
    for (size_t i = 0; i < sizeof(odd) / sizeof(odd[0]); i++) {
        CHECK_EQ(xmc_ram_addr(C, (void *)odd[i], &out), XMC_ENOENT);
        CHECK_EQ(xmc_unlock(C, (void *)odd[i], NULL), XMC_ENOENT);
        CHECK_EQ(xmc_unlock_tag(C, (void *)odd[i], 0), XMC_ENOENT);
    }
    for (int d = -0x1000; d < 0xf000; d += 0x7ff) {
        if (d == 0)
            continue;
        CHECK_EQ(xmc_unlock(C, p + d, NULL), XMC_ENOENT);
        CHECK_EQ(RAM_ADDR(p + d), (uint64_t)(0x31000 + d));
    }
    CHECK_EQ(xt_stats(C).locked, 1);
    OK(xmc_unlock(C, p, NULL));
    fx_teardown();
}

TEST(qemu_shim_survives_hostile_input)
{
    xmc_ram *ram = xt_ram(MIB);
    xmc_cache *c;

    OK(xmc_cache_new(xmc_ram_backend(ram), 12, MIB, &c));
    xen_map_cache_use(c);
    CHECK(xen_map_cache(UINT64_MAX, UINT64_MAX, 1, true) == NULL);
    CHECK(xen_map_cache(0, 2 * MIB, 1, true) == NULL); /* over max_size */
    CHECK(xen_map_cache(MIB, 0, 1, true) == NULL);     /* past the end */
    CHECK(xen_ram_addr_from_mapcache(NULL) == RAM_ADDR_INVALID);
    CHECK(xen_ram_addr_from_mapcache((void *)UINTPTR_MAX) == RAM_ADDR_INVALID);
    xen_invalidate_map_cache_entry(NULL);
    xen_invalidate_map_cache_entry((uint8_t *)&c);
    CHECK(xen_replace_cache_entry(UINT64_MAX, 0, 5) == NULL);
    CHECK(xen_replace_cache_entry(0, UINT64_MAX, UINT64_MAX) == NULL);
    CHECK_EQ(xt_stats(c).locked, 0);
    xen_map_cache_use(NULL);
    xmc_cache_free(c);
    xmc_ram_free(ram);
}

TEST(xen_backend_entry_points_reject_bad_input)
{
    char why[128], tiny[4];
    xmc_xen *x = (xmc_xen *)1;

    CHECK_EQ(xmc_xen_open(0, NULL, why, sizeof(why), NULL), XMC_EINVAL);
    CHECK_EQ(xmc_xen_open(70000, NULL, why, sizeof(why), &x), XMC_EINVAL);
    CHECK(x == NULL && why[0] != 0);
    CHECK_EQ(xmc_xen_open(UINT32_MAX, NULL, NULL, 0, &x), XMC_EINVAL);
    CHECK_EQ(xmc_xen_open(1, "/nonexistent/libxenforeignmemory.so.1", why, sizeof(why), &x),
             XMC_EUNAVAIL);
    CHECK(x == NULL && strlen(why) > 0 && strlen(why) < sizeof(why));
    /* A short buffer is truncated and terminated, never overrun (ASan). */
    CHECK_EQ(xmc_xen_open(1, "/nonexistent/x.so", tiny, sizeof(tiny), &x), XMC_EUNAVAIL);
    CHECK(strlen(tiny) < sizeof(tiny));
    CHECK_EQ(xmc_xen_open(1, "/nonexistent/x.so", NULL, 0, &x), XMC_EUNAVAIL);
    CHECK_EQ(xmc_xen_open(1, "", tiny, 1, &x), XMC_EUNAVAIL);
    CHECK(tiny[0] == 0);
    CHECK(xmc_xen_backend(NULL) == NULL);
    xmc_xen_free(NULL);
}

const xt_test xt_input_tests[] = {
    XT(null_cache_handle_is_einval_everywhere),
    XT(null_out_pointers_and_buffers_are_einval),
    XT(unknown_map_flags_are_einval),
    XT(wrap_around_and_huge_sizes_are_einval),
    XT(cache_geometry_out_of_range_is_einval),
    XT(huge_requests_on_a_huge_cache_fail_cleanly),
    XT(ram_entry_points_reject_bad_input),
    XT(strerror_names_every_code),
    XT(foreign_and_interior_pointers_to_unlock_and_ram_addr),
    XT(qemu_shim_survives_hostile_input),
    XT(xen_backend_entry_points_reject_bad_input),
    XT_END,
};
