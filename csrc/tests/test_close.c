/*
 * test_close.c - xmc_cache_close() and xmc_memory_get(): closing unmaps
 * everything at once while other threads may still hold the handle, whose
 * calls then fail with XMC_ECLOSED (even one caught inside a translate
 * callback); the memory figures follow entries and records.
 */
#include "fault_backend.h"

#include <pthread.h>

#define B (UINT64_C(1) << 16)

TEST(close_unmaps_everything_and_later_calls_fail_closed)
{
    const char *call;
    uint8_t *l, *u;
    xmc_memory m;
    uint64_t out;
    void *p;

    fx_setup(MIB, 16, 4 * B);
    l = MAP(0x10000, 0x100, XMC_LOCK | XMC_DMA);
    u = MAP(0x20000, 0, 0);
    OK(xmc_cache_close(C));
    CHECK_EQ(fb_live(F), 0);
    CHECK(!xt_mapped(l, B, false) && !xt_mapped(u, B, false));
    CHECK_EQ(xmc_map(C, 0x10000, 0, 0, 0, &p), XMC_ECLOSED); /* not the fast path */
    CHECK_EQ(xmc_unlock(C, l, NULL), XMC_ECLOSED);
    CHECK_EQ(xmc_ram_addr(C, l, &out), XMC_ECLOSED);
    call = xt_every_call(C, XMC_ECLOSED);
    if (call)
        xt_fail(__FILE__, __LINE__, "%s on a closed cache: not XMC_ECLOSED", call);
    CHECK_EQ(xmc_cache_close(NULL), XMC_EINVAL);
    CHECK_EQ(xmc_memory_get(NULL, &m), XMC_EINVAL);
    fx_teardown(); /* xmc_cache_free after close: nothing left to unmap */
}

TEST(memory_get_follows_entries_and_records)
{
    xmc_memory m0, m1, m2;
    uint8_t *p[300];

    fx_setup(MIB, 16, 4 * B);
    CHECK_EQ(xmc_memory_get(C, NULL), XMC_EINVAL);
    OK(xmc_memory_get(C, &m0));
    CHECK_EQ(m0.entry_bytes, 0);
    CHECK(m0.slot_bytes >= 4 * sizeof(void *));
    for (int i = 0; i < 300; i++)
        p[i] = MAP((uint64_t)(i % 3) * B + (uint64_t)i, 0, XMC_LOCK);
    OK(xmc_memory_get(C, &m1));
    CHECK(m1.entry_bytes > 0);
    CHECK(m1.record_bytes >= 300 * 40); /* a record is tens of bytes */
    CHECK_EQ(m1.slot_bytes, m0.slot_bytes);
    for (int i = 0; i < 300; i++)
        OK(xmc_unlock(C, p[i], NULL));
    OK(xmc_invalidate(C, NULL, NULL));
    OK(xmc_memory_get(C, &m2));
    CHECK_EQ(m2.entry_bytes, 0);
    CHECK(m2.record_bytes <= m1.record_bytes);
    fx_teardown();
}

/* A translate callback that waits until the main thread closed the cache. */
static int waiting_translate(void *opaque, uint64_t paddr, uint64_t size, uint64_t *out)
{
    (void)opaque, (void)size;
    xt_gate_pass();
    *out = paddr - 0x80000; /* to RAM that maps fine */
    return XMC_OK;
}

static void *map_through_translate(void *arg)
{
    static int rc;
    void *p;

    (void)arg;
    rc = xmc_map(C, 0x81000, 0x10, XMC_LOCK | XMC_DMA, 0, &p);
    return &rc;
}

TEST(close_while_a_map_waits_in_translate_fails_that_map)
{
    pthread_t th;
    void *ret;

    fx_setup(MIB, 16, 4 * B);
    fb_bad_pages(F, 0x80, 0x90);
    OK(xmc_cache_set_translate(C, waiting_translate, NULL));
    CHECK(pthread_create(&th, NULL, map_through_translate, NULL) == 0);
    xt_gate_wait_inside();
    OK(xmc_cache_close(C)); /* the mutex is free while the callback runs */
    xt_gate_open();
    CHECK(pthread_join(th, &ret) == 0);
    CHECK_EQ(*(int *)ret, XMC_ECLOSED);
    CHECK_EQ(fb_live(F), 0); /* the closed cache mapped nothing more */
    fx_teardown();
}

const xt_test xt_close_tests[] = {
    XT(close_unmaps_everything_and_later_calls_fail_closed),
    XT(memory_get_follows_entries_and_records),
    XT(close_while_a_map_waits_in_translate_fails_that_map),
    XT_END,
};
