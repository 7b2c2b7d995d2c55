/*
 * test_regress.c - regression tests for library bugs found by these tests,
 * the stress test and the fuzzer; each says what went wrong.  Every fuzzer
 * crash also keeps its input in csrc/fuzz/corpus/ (replayed by fuzz-smoke).
 */
#include "fault_backend.h"

#include <errno.h>

/*
 * ram.c's range check rejected first_pfn + nr_pages == 2**52, so the last
 * bucket of the 64-bit guest address space gave XMC_EINVAL (InvalidAddress)
 * for a request that is in range, instead of XMC_EMAP like any other
 * address past the end of RAM.
 */
TEST(regress_last_bucket_of_address_space_is_emap_not_einval)
{
    xmc_ram *ram = xt_ram(MIB);
    const xmc_backend *be = xmc_ram_backend(ram);
    static const unsigned shifts[] = { 12, 16, 20, 32 };
    int errs[16];
    void *p;

    for (size_t i = 0; i < sizeof(shifts) / sizeof(shifts[0]); i++) {
        xmc_cache *c;

        OK(xmc_cache_new(be, shifts[i], 0, &c));
        CHECK_EQ(xmc_map(c, UINT64_MAX, 0, 0, 0, &p), XMC_EMAP);
        CHECK_EQ(xmc_map(c, UINT64_MAX - 4095, 4096, XMC_LOCK, 0, &p), XMC_EMAP);
        CHECK_EQ(xt_stats(c).locked, 0);
        xmc_cache_free(c);
    }
    /* The backend itself: the last 16 pages map, with no access. */
    memset(errs, 0, sizeof(errs));
    OK(be->map(be->opaque, NULL, (UINT64_MAX >> 12) - 15, 16, errs, &p));
    CHECK(errs[0] == ENXIO && errs[15] == ENXIO);
    OK(be->unmap(be->opaque, p, 16 * PAGE));
    CHECK_EQ(be->map(be->opaque, NULL, (UINT64_MAX >> 12) - 14, 16, errs, &p),
             XMC_EINVAL); /* one page past 2**64 */
    xmc_ram_free(ram);
}

/*
 * When replace found the new pages invalid and could not map the old ones
 * back, the blanked entry kept the new bucket index while it stayed in the
 * old bucket's chain: its records named a guest address the replace never
 * delivered, and an unlocked one stayed half-built in the chain.
 */
TEST(regress_failed_replace_restore_keeps_records_and_drops_unlocked)
{
    uint8_t *l, *u;
    xmc_record *r;
    size_t n;
    void *q;

    fx_setup(MIB, 16, 4 << 16);
    fb_bad_pages(F, 0x60, 0x61);
    l = MAPT(0x10200, 0x10, XMC_LOCK | XMC_DMA, 3);
    F->fail_map_at = F->map_calls + 2; /* the restoring map */
    CHECK_EQ(xmc_replace(C, 0x10000, 0x60000, 0, &q), XMC_EMAP);
    OK(xmc_locked(C, &r, &n));
    CHECK(n == 1 && r[0].paddr == 0x10200);
    xmc_records_free(r);
    CHECK_EQ(RAM_ADDR(l + 1), 0x10201);
    OK(xmc_unlock(C, l, NULL));

    u = MAP(0x20000, 0, 0);
    F->fail_map_at = F->map_calls + 2;
    CHECK_EQ(xmc_replace(C, 0x20000, 0x60000, 0, &q), XMC_EMAP);
    CHECK_EQ(xmc_ram_addr(C, u, (uint64_t *)&q), XMC_ENOENT);
    OK(xmc_invalidate(C, NULL, NULL));
    CHECK_EQ(xt_stats(C).entries, 0);
    CHECK_EQ(xt_stats(C).mapped_bytes, 0);
    fx_teardown();
}

/*
 * Found by the fuzzer (fuzz/corpus/crash-replace-dummy-restore): replace of
 * a dummy entry onto invalid pages "restored" it from the backend, whose
 * pages for that bucket are not there, so a locked mapping that had been
 * handed out writable turned PROT_NONE and the next access crashed.
 */
TEST(regress_failed_replace_of_dummy_entry_keeps_it_accessible)
{
    uint8_t *l;
    void *q;

    fx_setup(MIB, 16, 4 << 16);
    fb_bad_pages(F, 0x30, 0x40); /* bucket 3 is not there yet */
    fb_bad_pages(F, 0x70, 0x71);
    OK(xmc_cache_set_dummy(C, true));
    l = MAP(0x30020, 0x29, XMC_LOCK | XMC_DMA);
    OK(xmc_cache_set_dummy(C, false));
    CHECK_EQ(xmc_replace(C, 0x30000, 0x70000, 0, &q), XMC_EMAP);
    CHECK(!xt_faults(xt_touch_write, l));
    CHECK(!xt_faults(xt_touch_read, l + 0x28));
    l[0] = 1; /* and for real */
    CHECK_EQ(RAM_ADDR(l), 0x30020);
    OK(xmc_unlock(C, l, NULL));
    fx_teardown();
}

/*
 * replace() sizes the entry from the old address's offset, so a new address
 * in the last bucket below 2**64 can ask for an entry that would run past
 * 2**64.  The backend refused it (XMC_EINVAL) without touching anything, but
 * replace took any map failure as "the old pages may be gone" and blanked
 * the entry: a locked mapping handed out writable turned PROT_NONE.
 */
TEST(regress_replace_past_top_of_address_space_leaves_entry_alone)
{
    uint8_t *l;
    void *q;

    fx_setup(MIB, 16, 4 << 16);
    l = MAP(0x1f000, 0x2000, XMC_LOCK); /* a two-bucket entry, bucket 1 */
    CHECK_EQ(xmc_replace(C, 0x1f000, UINT64_MAX - 0x1fff, 0x2000, &q), XMC_EINVAL);
    CHECK(!xt_faults(xt_touch_read, l + 0x1fff));
    CHECK(xt_has_pattern(l, 0x1f000, 0x2000));
    l[0] = 1; /* writable */
    CHECK_EQ(RAM_ADDR(l + 0x1000), 0x20000);
    OK(xmc_unlock(C, l, NULL));
    l = MAP(0x1f001, 0x1fff, 0); /* unlocked: still there, not dropped */
    CHECK_EQ(xmc_replace(C, 0x1f000, UINT64_MAX - 0x1fff, 0x2000, &q), XMC_EINVAL);
    CHECK(xt_has_pattern(l, 0x1f001, 0x1fff));
    CHECK_EQ(xt_stats(C).entries, 1);
    fx_teardown();
}

const xt_test xt_regress_tests[] = {
    XT(regress_last_bucket_of_address_space_is_emap_not_einval),
    XT(regress_failed_replace_restore_keeps_records_and_drops_unlocked),
    XT(regress_failed_replace_of_dummy_entry_keeps_it_accessible),
    XT(regress_replace_past_top_of_address_space_leaves_entry_alone),
    XT_END,
};
