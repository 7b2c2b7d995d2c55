/*
 * test_reliability.c - faults users meet (docs/contract.md, section 10 and the
 * "every error changes nothing" rule): a failed copy writes nothing, a
 * forked child never hangs on a cache it inherited.
 *
 * Geometry unless a test says otherwise: 64 KiB buckets (shift 16), one slot
 * (max_size 64 KiB), so every bucket collides with every other; 1 MiB of
 * guest RAM filled with xt_pattern(); the counting backend F.
 */
#include "fault_backend.h"

#define SHIFT 16
#define B (UINT64_C(1) << SHIFT)

static uint8_t buf[4 * B], back[4 * B];

static void fill(uint8_t *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)(i * 13 + seed);
}

TEST(write_into_a_hole_writes_nothing)
{
    fx_setup(MIB, SHIFT, B);
    fill(buf, sizeof(buf), 5);
    fb_bad_pages(F, (3 * B) >> 12, ((3 * B) >> 12) + 1); /* the 4th bucket's first page */
    /* Three good buckets, then the hole: not one byte may land. */
    CHECK_EQ(xmc_write(C, 0x100, buf, 3 * B + 0x10), XMC_EMAP);
    OK(xmc_ram_read(F->ram, 0, back, 4 * B));
    CHECK(xt_has_pattern(back, 0, 4 * B));
    CHECK_EQ(xt_stats(C).locked, 0);
    CHECK_EQ(xt_nlocked(C), 0);
    /* The same span without the hole: every byte lands, on colliding buckets. */
    fb_clear_bad(F);
    OK(xmc_write(C, 0x100, buf, 3 * B + 0x10));
    OK(xmc_ram_read(F->ram, 0, back, 4 * B));
    CHECK(xt_has_pattern(back, 0, 0x100));
    CHECK(memcmp(buf, back + 0x100, 3 * B + 0x10) == 0);
    CHECK(xt_has_pattern(back + 3 * B + 0x110, 3 * B + 0x110, B - 0x110));
    /* Pins are gone: every entry can be dropped. */
    OK(xmc_invalidate(C, NULL, NULL));
    CHECK_EQ(xt_stats(C).entries, 0);
    fx_teardown();
}

TEST(read_into_a_hole_fills_nothing)
{
    fx_setup(MIB, SHIFT, B);
    memset(back, 0xa5, sizeof(back));
    fb_bad_pages(F, (2 * B + 0x3000) >> 12, ((2 * B + 0x3000) >> 12) + 1);
    CHECK_EQ(xmc_read(C, 0x10, back, 3 * B), XMC_EMAP);
    for (size_t i = 0; i < 3 * B; i++)
        if (back[i] != 0xa5)
            CHECK_EQ(i, -1); /* the buffer was touched */
    CHECK_EQ(xt_stats(C).locked, 0);
    OK(xmc_invalidate(C, NULL, NULL));
    CHECK_EQ(xt_stats(C).entries, 0);
    /* A read past the end of RAM, the same. */
    CHECK_EQ(xmc_read(C, MIB - B, back, 2 * B), XMC_EMAP);
    CHECK(back[0] == 0xa5 && back[2 * B - 1] == 0xa5);
    fx_teardown();
}

TEST(write_spanning_many_buckets_pins_without_locking)
{
    static uint8_t big[20 * B]; /* more pieces than fit on the stack */

    fx_setup(2 * MIB, SHIFT, B);
    fill(big, sizeof(big), 9);
    OK(xmc_write(C, 0x7, big, sizeof(big)));
    CHECK_EQ(xt_stats(C).locked, 0);
    memset(big, 0, sizeof(big));
    OK(xmc_read(C, 0x7, big, sizeof(big)));
    fill(buf, sizeof(buf), 9);
    CHECK(memcmp(big, buf, sizeof(buf)) == 0);
    OK(xmc_invalidate(C, NULL, NULL));
    CHECK_EQ(xt_stats(C).entries, 0);
    fx_teardown();
}

const xt_test xt_reliability_tests[] = {
    XT(write_into_a_hole_writes_nothing),
    XT(read_into_a_hole_fills_nothing),
    XT(write_spanning_many_buckets_pins_without_locking),
    XT_END,
};
