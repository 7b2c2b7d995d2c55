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

#include <pthread.h>
#include <sys/wait.h>
#include <unistd.h>

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

/* ---- tests a planted bug must fail at once ------------------------------- */

TEST(invalidate_clears_the_fast_path_even_at_a_locked_multi_bucket_entry)
{
    uint8_t *l;
    xmc_stats before;
    void *p;

    fx_setup(MIB, SHIFT, 4 * B);
    l = MAP(2 * B, B + 1, XMC_LOCK); /* two buckets, locked: invalidate keeps it */
    OK(xmc_map(C, 2 * B + 0x10, 0, 0, 0, &p));
    CHECK(p == l + 0x10); /* the fast path serves it, as the last entry */
    before = xt_stats(C);
    OK(xmc_invalidate(C, NULL, NULL));
    /* No last entry now: a size-0 request looks up a one-bucket entry, a miss. */
    OK(xmc_map(C, 2 * B + 0x10, 0, 0, 0, &p));
    CHECK(p != l + 0x10);
    CHECK_EQ(xt_stats(C).misses, before.misses + 1);
    CHECK_EQ(xt_stats(C).hits, before.hits);
    OK(xmc_unlock(C, l, NULL));
    fx_teardown();
}

TEST(a_span_ending_on_the_bad_page_of_a_partly_mapped_entry_fails)
{
    uint8_t buf[PAGE + 1];
    void *p;

    fx_setup(MIB, SHIFT, 4 * B);
    fb_bad_pages(F, 21, 22); /* page 21 of bucket 1 (pages 16..31) */
    MAP(16 * PAGE, 0, 0);    /* the entry of bucket 1, partly mapped, is the last */
    CHECK_EQ(xmc_map(C, 21 * PAGE, 0, 0, 0, &p), XMC_EMAP);      /* the fast path */
    CHECK_EQ(xmc_map(C, 20 * PAGE, 2 * PAGE, 0, 0, &p), XMC_EMAP); /* its last page */
    CHECK_EQ(xmc_map(C, 20 * PAGE + 0x800, PAGE, XMC_LOCK, 0, &p), XMC_EMAP);
    CHECK_EQ(xmc_read(C, 20 * PAGE, buf, PAGE + 1), XMC_EMAP);
    CHECK_EQ(xmc_map(C, 22 * PAGE - 1, 2, 0, 0, &p), XMC_EMAP); /* its first page */
    MAP(20 * PAGE, PAGE, 0); /* the page before is fine */
    CHECK_EQ(xt_stats(C).locked, 0);
    fx_teardown();
}

TEST(a_hole_that_ends_or_starts_inside_a_page_takes_all_of_that_page)
{
    xmc_ram *ram = xt_ram(MIB);
    xmc_cache *c;
    void *p;

    OK(xmc_ram_add_hole(ram, 5 * PAGE, 6 * PAGE + 0x800)); /* ends inside page 6 */
    OK(xmc_ram_add_hole(ram, 9 * PAGE + 0x800, 10 * PAGE)); /* starts inside page 9 */
    OK(xmc_cache_new(xmc_ram_backend(ram), 16, 4 * B, &c));
    xmc_ram_free(ram);
    CHECK_EQ(xmc_map(c, 6 * PAGE + 0x900, 0, 0, 0, &p), XMC_EMAP); /* past the end, same page */
    CHECK_EQ(xmc_map(c, 9 * PAGE, 0, 0, 0, &p), XMC_EMAP);         /* before the start */
    OK(xmc_map(c, 7 * PAGE, PAGE, XMC_LOCK, 0, &p));               /* between them: RAM */
    CHECK(xt_has_pattern(p, 7 * PAGE, PAGE));
    OK(xmc_unlock(c, p, NULL));
    xmc_cache_free(c);
}

TEST(the_one_page_past_the_end_of_guest_ram_is_not_ram)
{
    xmc_ram *ram = xt_ram(15 * PAGE); /* bucket 0 holds 16 pages: all but the last are RAM */
    xmc_cache *c;
    void *p;

    OK(xmc_cache_new(xmc_ram_backend(ram), 16, 4 * B, &c));
    xmc_ram_free(ram);
    OK(xmc_map(c, 14 * PAGE, PAGE, 0, 0, &p));
    CHECK_EQ(xmc_map(c, 15 * PAGE, 0, 0, 0, &p), XMC_EMAP);
    CHECK_EQ(xmc_map(c, 14 * PAGE, PAGE + 1, 0, 0, &p), XMC_EMAP);
    xmc_cache_free(c);
}

/* ---- fork ------------------------------------------------------------------ */

static xmc_cache *idle;

static void child_of_a_busy_cache(void)
{
    xmc_stats st;
    uint8_t bytes[16];
    void *p;

    fx_ungate(); /* the child's copy of the backend: no gate here */
    CHECK_EQ(xmc_map(C, 0x10000, 0, 0, 0, &p), XMC_EFORKED); /* at once, no hang */
    CHECK_EQ(xmc_map_nowait(C, 0x10000, 0, 0, 0, &p), XMC_EFORKED);
    CHECK_EQ(xmc_read(C, 0x10000, bytes, sizeof(bytes)), XMC_EFORKED);
    CHECK_EQ(xmc_stats_get(C, &st), XMC_EFORKED);
    CHECK_EQ(xmc_cache_close(C), XMC_EFORKED);
    xmc_cache_free(C); /* leaks it, touches nothing */
    /* A cache that was idle at fork() works as in the parent. */
    p = MAPC(idle, 0x10000, 0, 0);
    CHECK(xt_has_pattern(p, 0x10000, 64));
    p = MAPC(idle, 0x50000, 0x10, XMC_LOCK);
    CHECK(xt_has_pattern(p, 0x50000, 0x10));
    OK(xmc_unlock(idle, p, NULL));
    xmc_cache_free(idle);
}

TEST(fork_while_a_thread_is_inside_a_cache_fails_in_the_child_only)
{
    void *ret;

    fx_setup(MIB, SHIFT, 4 * B);
    OK(xmc_cache_new(&F->be, SHIFT, 4 * B, &idle));
    MAPC(idle, 0x10000, 0, 0);
    fx_park(0x30000); /* another thread holds C's mutex, in the backend */
    CHECK(xt_in_child(child_of_a_busy_cache));
    ret = fx_unpark(); /* the parent's thread goes on undisturbed */
    CHECK(ret != NULL && xt_has_pattern(ret, 0x30000, 64));
    MAP(0x10000, 0, 0);
    xmc_cache_free(idle);
    fx_teardown();
}

static void child_of_an_idle_cache(void)
{
    static const uint8_t hello[] = "from the child";
    uint8_t back[sizeof(hello)];
    uint8_t *p = MAP(0x20000, sizeof(hello), XMC_LOCK);

    OK(xmc_write(C, 0x20000, hello, sizeof(hello)));
    OK(xmc_read(C, 0x20000, back, sizeof(back)));
    CHECK(memcmp(back, hello, sizeof(hello)) == 0 && memcmp(p, hello, sizeof(hello)) == 0);
    OK(xmc_unlock(C, p, NULL));
    OK(xmc_invalidate(C, NULL, NULL));
    xmc_cache_free(C);
}

TEST(fork_of_an_idle_cache_works_in_the_child_on_shared_guest_ram)
{
    static const uint8_t hello[] = "from the child";
    uint8_t back[sizeof(hello)], *held;

    fx_setup(MIB, SHIFT, 4 * B);
    held = MAP(0x20000, 0x10, XMC_LOCK | XMC_DMA);
    CHECK(xt_in_child(child_of_an_idle_cache));
    OK(xmc_read(C, 0x20000, back, sizeof(back))); /* guest RAM is shared */
    CHECK(memcmp(back, hello, sizeof(hello)) == 0);
    CHECK_EQ(xt_stats(C).locked, 1); /* the parent's own state is its own */
    OK(xmc_unlock(C, held, NULL));
    fx_teardown();
}

static int (*plain_map)(void *, void *, uint64_t, size_t, int *, void **);
static pid_t forked_pid;

/* F's map, forking first: under the cache's mutex, in the middle of a miss */
static int forking_map(void *opaque, void *fixed, uint64_t pfn, size_t n, int *errs, void **out)
{
    if (forked_pid < 0)
        forked_pid = fork();
    return plain_map(opaque, fixed, pfn, n, errs, out);
}

TEST(fork_from_inside_a_backend_callback_works_in_both_processes)
{
    uint8_t *p, *q;
    int fds[2], status;
    char done = 0;

    fx_setup(MIB, SHIFT, 4 * B);
    CHECK(pipe(fds) == 0);
    plain_map = F->be.map;
    F->be.map = forking_map; /* the cache calls through &F->be */
    forked_pid = -1;
    p = MAP(0x30000, 0x10, XMC_LOCK); /* both processes finish this miss */
    F->be.map = plain_map;
    CHECK(forked_pid >= 0);
    if (forked_pid == 0)
        alarm(20);
    /* The thread that forked held the mutex, and gave it back in each. */
    CHECK(xt_has_pattern(p, 0x30000, 0x10));
    q = MAP(0x10000, 0x10, XMC_LOCK | XMC_DMA);
    CHECK(xt_has_pattern(q, 0x10000, 0x10));
    OK(xmc_unlock(C, q, NULL));
    OK(xmc_unlock(C, p, NULL));
    CHECK_EQ(xt_stats(C).locked, 0);
    if (forked_pid == 0) { /* the child's cache is whole: freeing it unmaps everything */
        xmc_cache_free(C);
        C = NULL;
        if (F->nlive == 0 && write(fds[1], "k", 1) != 1)
            _exit(1);
        _exit(0);
    }
    close(fds[1]);
    if (read(fds[0], &done, 1) != 1)
        done = 0;
    close(fds[0]);
    CHECK(waitpid(forked_pid, &status, 0) == forked_pid);
    CHECK(done == 'k');
    fx_teardown();
}

const xt_test xt_reliability_tests[] = {
    XT(write_into_a_hole_writes_nothing),
    XT(read_into_a_hole_fills_nothing),
    XT(write_spanning_many_buckets_pins_without_locking),
    XT(invalidate_clears_the_fast_path_even_at_a_locked_multi_bucket_entry),
    XT(a_span_ending_on_the_bad_page_of_a_partly_mapped_entry_fails),
    XT(a_hole_that_ends_or_starts_inside_a_page_takes_all_of_that_page),
    XT(the_one_page_past_the_end_of_guest_ram_is_not_ram),
    XT(fork_while_a_thread_is_inside_a_cache_fails_in_the_child_only),
    XT(fork_of_an_idle_cache_works_in_the_child_on_shared_guest_ram),
    XT(fork_from_inside_a_backend_callback_works_in_both_processes),
    XT_END,
};
