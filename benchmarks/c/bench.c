/*
 * bench.c - the C-level rows of the performance table, measured on the core
 * alone (linked against libxenmapcache.a, built by `make -C csrc bench`).
 *
 * Every ratio is read from one run: the two sides of a ratio are timed in
 * alternating rounds, and each side keeps its fastest round (the machines are
 * shared and noisy; the minimum is the least disturbed measurement).  Times
 * are nanoseconds per operation.  The process starts a thread before it
 * times anything: glibc skips a mutex's atomic instructions in a process
 * that never had a second thread, which no emulator is, so a mutex baseline
 * timed without one would flatter the mutex.
 *
 *   bench            the table, one line per row, PASS/FAIL against target
 *   bench --quick    fewer and shorter rounds (CI: proves the rows work)
 *   bench --json     one JSON object per row instead (for python -m xenmapcache bench)
 *   bench --scaling  also FIFO and reverse-lookup time against outstanding
 *                    mappings (1 to 100,000) and invalidate against slots
 *
 * Exit status: 0 when every row meets its target, 1 when one does not, 2 when
 * the benchmark itself failed.
 */
#define _GNU_SOURCE 1

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "xenmapcache.h"

#define MIB (UINT64_C(1) << 20)
#define RAM_SIZE (UINT64_C(1) << 30) /* 1 GiB of guest RAM */
#define PAGE 4096u
#define RAM_PAGES (RAM_SIZE / PAGE)
#define BUCKET_SHIFT 20

static int rounds = 15;
static double round_ns = 2e6; /* aim for each timed round to last ~2 ms */
static bool json;
static int failures;

static double now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static void die(const char *what, int rc)
{
    fprintf(stderr, "bench: %s: %s\n", what, xmc_strerror(rc));
    exit(2);
}

#define CHECK(what, expr)                                                     \
    do {                                                                      \
        int rc_ = (expr);                                                     \
        if (rc_ != XMC_OK)                                                    \
            die(what, rc_);                                                   \
    } while (0)

/* ---- timing ------------------------------------------------------------ */

/* One measured operation: run it `n` times on `ctx`. */
typedef void (*op_fn)(void *ctx, uint64_t n);

typedef struct side {
    op_fn fn;
    void *ctx;
    uint64_t iters; /* per round, calibrated */
    double best;    /* ns per op, fastest round */
} side;

static void calibrate(side *s)
{
    uint64_t n = 16;

    for (;;) {
        double t0 = now_ns();
        s->fn(s->ctx, n);
        double dt = now_ns() - t0;
        if (dt >= round_ns / 4 || n >= (UINT64_C(1) << 30)) {
            s->iters = dt > 0 ? (uint64_t)((double)n * round_ns / dt) + 1 : n;
            break;
        }
        n *= 4;
    }
    s->best = 1e300;
}

/* Time the sides in alternating rounds; each keeps its fastest round. */
static void measure(side *sides, int n)
{
    for (int i = 0; i < n; i++)
        calibrate(&sides[i]);
    for (int r = 0; r < rounds; r++)
        for (int i = 0; i < n; i++) {
            double t0 = now_ns();
            sides[i].fn(sides[i].ctx, sides[i].iters);
            double per = (now_ns() - t0) / (double)sides[i].iters;
            if (per < sides[i].best)
                sides[i].best = per;
        }
}

/* ---- reporting --------------------------------------------------------- */

static void row(const char *name, const char *measured_as, double a, double b,
                double target, const char *unit)
{
    double ratio = b > 0 ? a / b : 0;
    bool pass = ratio <= target;

    failures += !pass;
    if (json) {
        printf("{\"row\": \"%s\", \"measured_as\": \"%s\", \"a\": %.3f, \"b\": %.3f, "
               "\"ratio\": %.3f, \"target\": %.3f, \"unit\": \"%s\", \"pass\": %s}\n",
               name, measured_as, a, b, ratio, target, unit, pass ? "true" : "false");
    } else {
        printf("%-44s %10.2f %-3s vs %10.2f %-3s  %6.2fx  (target <= %.2fx)  %s\n",
               name, a, unit, b, unit, ratio, target, pass ? "PASS" : "FAIL");
    }
    fflush(stdout);
}

static void point(const char *series, double x, double y)
{
    if (json)
        printf("{\"series\": \"%s\", \"x\": %.0f, \"ns\": %.3f}\n", series, x, y);
    else
        printf("  %-28s %10.0f  %10.2f ns\n", series, x, y);
    fflush(stdout);
}

/* ---- fixtures ----------------------------------------------------------- */

static xmc_ram *ram;
static int ram_fd;

static xmc_cache *new_cache(uint64_t max_size)
{
    xmc_cache *c;

    CHECK("cache", xmc_cache_new(xmc_ram_backend(ram), BUCKET_SHIFT, max_size, &c));
    return c;
}

static void *map(xmc_cache *c, uint64_t paddr, uint64_t size, unsigned flags)
{
    void *p;

    CHECK("map", xmc_map(c, paddr, size, flags, 0, &p));
    return p;
}

/* ---- rows: the hit and its mutex baseline ---------------------------------- */

static pthread_mutex_t bench_mutex = PTHREAD_MUTEX_INITIALIZER;

__attribute__((noinline)) static void mutex_pair(pthread_mutex_t *m)
{
    pthread_mutex_lock(m);
    __asm__ volatile("" ::: "memory");
    pthread_mutex_unlock(m);
}

static void op_mutex(void *ctx, uint64_t n)
{
    for (uint64_t i = 0; i < n; i++)
        mutex_pair(ctx);
}

/* The cost floor of any lock: one compare-and-swap to take it, one release
 * store to give it back (what the cache's own mutex does, uncontended). */
static atomic_uint bench_word;

__attribute__((noinline)) static void cas_pair(atomic_uint *w)
{
    unsigned free_ = 0;

    if (!atomic_compare_exchange_strong_explicit(w, &free_, 1, memory_order_acquire,
                                                 memory_order_relaxed))
        die("cmpxchg", -1);
    __asm__ volatile("" ::: "memory");
    atomic_store_explicit(w, 0, memory_order_release);
}

static void op_cas(void *ctx, uint64_t n)
{
    for (uint64_t i = 0; i < n; i++)
        cas_pair(ctx);
}

static void op_hit(void *ctx, uint64_t n)
{
    xmc_cache *c = ctx;
    void *p;

    for (uint64_t i = 0; i < n; i++) /* same bucket, pages 0..255 of it */
        if (xmc_map(c, 3 * MIB + ((i & 255) << 12), 0, 0, 0, &p) != XMC_OK)
            die("hit", -1);
}

/* Two threads hitting one cache: this one and a helper, n / 2 hits each,
 * started and joined by barriers (whose cost counts against the pair). */
typedef struct pair {
    xmc_cache *c;
    uint64_t n;
    bool over;
    pthread_barrier_t start, done;
    pthread_t helper;
} pair;

static void *pair_helper(void *arg)
{
    pair *h = arg;

    for (;;) {
        pthread_barrier_wait(&h->start);
        if (h->over)
            return NULL;
        op_hit(h->c, h->n);
        pthread_barrier_wait(&h->done);
    }
}

static void op_hit_pair(void *ctx, uint64_t n)
{
    pair *h = ctx;

    h->n = n / 2;
    pthread_barrier_wait(&h->start);
    op_hit(h->c, n - n / 2);
    pthread_barrier_wait(&h->done);
}

static void pair_start(pair *h, xmc_cache *c)
{
    h->c = c;
    h->over = false;
    if (pthread_barrier_init(&h->start, NULL, 2) || pthread_barrier_init(&h->done, NULL, 2) ||
        pthread_create(&h->helper, NULL, pair_helper, h))
        die("pair", XMC_ENOMEM);
}

static void pair_stop(pair *h)
{
    h->over = true;
    pthread_barrier_wait(&h->start);
    pthread_join(h->helper, NULL);
    pthread_barrier_destroy(&h->start);
    pthread_barrier_destroy(&h->done);
}

static void *nothing(void *arg)
{
    return arg;
}

/* ---- rows: a disk's FIFO of DMA mappings, and reverse lookups ---------------- */

typedef struct fifo {
    xmc_cache *c;
    uint64_t n;       /* outstanding locked mappings */
    void **ring;      /* their addresses, oldest at ring[head] */
    uint64_t head;
    uint64_t next_pg; /* guest page of the next mapping */
} fifo;

static void fifo_init(fifo *f, xmc_cache *c, uint64_t n)
{
    f->c = c;
    f->n = n;
    f->head = 0;
    f->next_pg = 0;
    f->ring = calloc(n, sizeof(*f->ring));
    if (!f->ring)
        die("fifo", XMC_ENOMEM);
    for (uint64_t i = 0; i < n; i++) {
        f->ring[i] = map(c, f->next_pg * PAGE, PAGE, XMC_LOCK | XMC_DMA);
        f->next_pg = (f->next_pg + 1) % RAM_PAGES;
    }
}

static void fifo_fini(fifo *f)
{
    for (uint64_t i = 0; i < f->n; i++)
        CHECK("fifo unlock", xmc_unlock(f->c, f->ring[i], NULL));
    free(f->ring);
}

/* Complete the oldest transfer, start a new one at the next page. */
static void op_fifo(void *ctx, uint64_t n)
{
    fifo *f = ctx;

    for (uint64_t i = 0; i < n; i++) {
        void **slot = &f->ring[f->head];
        if (xmc_unlock(f->c, *slot, NULL) != XMC_OK ||
            xmc_map(f->c, f->next_pg * PAGE, PAGE, XMC_LOCK | XMC_DMA, 0, slot) != XMC_OK)
            die("fifo", -1);
        f->next_pg = f->next_pg + 1 == RAM_PAGES ? 0 : f->next_pg + 1;
        f->head = f->head + 1 == f->n ? 0 : f->head + 1;
    }
}

static void op_reverse(void *ctx, uint64_t n)
{
    fifo *f = ctx;
    uint64_t paddr;

    for (uint64_t i = 0; i < n; i++)
        if (xmc_ram_addr(f->c, f->ring[f->head], &paddr) != XMC_OK)
            die("ram_addr", -1);
}

/* A cache over all of RAM with every bucket mapped, so the FIFO only hits. */
static xmc_cache *premapped_cache(void)
{
    xmc_cache *c = new_cache(0);

    for (uint64_t b = 0; b < RAM_SIZE / MIB; b++)
        map(c, b * MIB, 0, 0);
    return c;
}

/* ---- rows: invalidate ----------------------------------------------------- */

static void op_invalidate(void *ctx, uint64_t n)
{
    for (uint64_t i = 0; i < n; i++)
        if (xmc_invalidate(ctx, NULL, NULL) != XMC_OK)
            die("invalidate", -1);
}

/* A cache of `slots` 1 MiB slots with 10 live entries, locked so that every
 * invalidate finds them again (the walk is measured, not munmap). */
static xmc_cache *invalidate_cache(uint64_t slots)
{
    xmc_cache *c = new_cache(slots * MIB);

    for (uint64_t b = 0; b < 10; b++)
        map(c, b * MIB, 0, XMC_LOCK);
    return c;
}

/* ---- rows: a miss, and one raw mmap in place --------------------------------- */

typedef struct miss {
    xmc_cache *c;
    uint64_t stride; /* bytes between two buckets sharing a slot */
    void *raw;
} miss;

/* Two buckets of one slot in turn: every request remaps the unlocked entry. */
static void op_miss(void *ctx, uint64_t n)
{
    miss *m = ctx;
    void *p;

    for (uint64_t i = 0; i < n; i++)
        if (xmc_map(m->c, (i & 1) * m->stride, 0, 0, 0, &p) != XMC_OK)
            die("miss", -1);
}

/* The baseline: what the remap itself must do, one mmap(MAP_FIXED) of the
 * same window in place, alternating between the same two buckets. */
static void op_raw(void *ctx, uint64_t n)
{
    miss *m = ctx;

    for (uint64_t i = 0; i < n; i++)
        if (mmap(m->raw, MIB, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, ram_fd,
                 (off_t)((i & 1) * m->stride)) == MAP_FAILED)
            die("raw mmap", XMC_ESYS);
}

/* ---- main ------------------------------------------------------------------- */

static double fifo_ns(xmc_cache *c, uint64_t n, side *rev)
{
    fifo f;
    side s = { op_fifo, &f, 0, 0 };

    fifo_init(&f, c, n);
    measure(&s, 1);
    if (rev) {
        rev->fn = op_reverse;
        rev->ctx = &f;
        measure(rev, 1);
    }
    fifo_fini(&f);
    return s.best;
}

int main(int argc, char **argv)
{
    bool scaling = false;

    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--quick")) {
            rounds = 3;
            round_ns = 2e5;
        } else if (!strcmp(argv[i], "--json")) {
            json = true;
        } else if (!strcmp(argv[i], "--scaling")) {
            scaling = true;
        } else {
            fprintf(stderr, "usage: %s [--quick] [--json] [--scaling]\n", argv[0]);
            return 2;
        }
    }
    pthread_t th; /* a process that has had a thread, as every emulator */
    if (pthread_create(&th, NULL, nothing, NULL) || pthread_join(th, NULL))
        die("thread", XMC_ENOMEM);
    ram_fd = memfd_create("xenmapcache-bench", MFD_CLOEXEC);
    if (ram_fd < 0 || ftruncate(ram_fd, (off_t)RAM_SIZE) != 0)
        die("memfd", XMC_ESYS);
    CHECK("ram", xmc_ram_new_fd(ram_fd, RAM_SIZE, &ram));

    /* The hit and its baselines: a mutex, and the floor of any lock. */
    xmc_cache *c = premapped_cache(), *c10k = premapped_cache();
    side hit[3] = { { op_hit, c, 0, 0 }, { op_mutex, &bench_mutex, 0, 0 },
                    { op_cas, &bench_word, 0, 0 } };
    map(c, 3 * MIB, 0, 0);
    measure(hit, 3);
    row("C fast-path hit", "vs pthread mutex lock+unlock", hit[0].best, hit[1].best,
        1.5, "ns");
    row("C fast-path hit", "vs a lone cmpxchg + release store", hit[0].best, hit[2].best,
        1.0, "ns");
    /* Two threads hitting one cache: aggregate time per hit against one's. */
    pair two;
    pair_start(&two, c);
    side hits2[2] = { { op_hit_pair, &two, 0, 0 }, { op_hit, c, 0, 0 } };
    measure(hits2, 2);
    pair_stop(&two);
    row("C fast-path hit, two threads on one cache", "time per hit vs one thread's",
        hits2[0].best, hits2[1].best, 0.6, "ns");
    /*
     * FIFO and reverse lookup at 10 and at 10,000 outstanding, and the hit
     * again, in alternating rounds of one run, so that a noisy neighbour
     * slows every side alike and the "x the hit" rows compare like with like.
     * Each depth has its own cache, so that N counts all of its records.
     */
    fifo f10, f10k;
    fifo_init(&f10, c, 10);
    fifo_init(&f10k, c10k, 10000);
    xmc_cache *hc = new_cache(0);
    map(hc, 3 * MIB, 0, 0);
    side depth[5] = {
        { op_fifo, &f10, 0, 0 },  { op_reverse, &f10, 0, 0 },
        { op_fifo, &f10k, 0, 0 }, { op_reverse, &f10k, 0, 0 },
        { op_hit, hc, 0, 0 },
    };
    side *fifo_sides = &depth[0], *fifo_big = &depth[2];
    measure(depth, 5);
    double h = depth[4].best;
    row("C FIFO unlock-oldest + lock-new", "10,000 outstanding vs 10",
        fifo_big[0].best, fifo_sides[0].best, 1.5, "ns");
    row("C FIFO unlock-oldest + lock-new", "10,000 outstanding vs the hit",
        fifo_big[0].best, h, 5.0, "ns");
    row("C reverse lookup of the oldest", "10,000 outstanding vs 10", fifo_big[1].best,
        fifo_sides[1].best, 1.5, "ns");
    row("C reverse lookup of the oldest", "10,000 outstanding vs the hit",
        fifo_big[1].best, h, 2.0, "ns");

    /* Memory: per locked record with 10,000 outstanding, per entry of 1 MiB. */
    xmc_memory mem, mem0;
    xmc_stats st;
    CHECK("memory", xmc_memory_get(c10k, &mem));
    CHECK("stats", xmc_stats_get(c10k, &st));
    fifo_fini(&f10);
    fifo_fini(&f10k);
    xmc_cache *fresh = new_cache(0);
    CHECK("memory", xmc_memory_get(fresh, &mem0));
    xmc_cache_free(fresh);
    double per_record = (double)(mem.record_bytes - mem0.record_bytes) / 10000.0;
    double per_entry = (double)mem.entry_bytes / (double)st.entries;
    row("memory per locked record", "bytes (pool + hash) vs 64", per_record, 64, 1.0, "B");
    row("memory per entry (plus bitmap)", "bytes (1 MiB bucket) vs 128", per_entry, 128,
        1.0, "B");
    xmc_cache_free(c);
    xmc_cache_free(c10k);
    xmc_cache_free(hc);

    /* Invalidate with 10 live entries: 32,768 slots vs 64. */
    xmc_cache *big = invalidate_cache(32768), *small = invalidate_cache(64);
    side inv[2] = { { op_invalidate, big, 0, 0 }, { op_invalidate, small, 0, 0 } };
    measure(inv, 2);
    row("C invalidate, 10 live entries", "32,768 slots vs 64", inv[0].best, inv[1].best,
        2.0, "ns");
    xmc_cache_free(big);
    xmc_cache_free(small);

    /* A miss (remap of an unlocked entry) vs one raw in-place mmap of a bucket. */
    miss m = { new_cache(64 * MIB), 64 * MIB, NULL };
    m.raw = mmap(NULL, MIB, PROT_READ | PROT_WRITE, MAP_SHARED, ram_fd, 0);
    if (m.raw == MAP_FAILED)
        die("raw mmap", XMC_ESYS);
    side ms[2] = { { op_miss, &m, 0, 0 }, { op_raw, &m, 0, 0 } };
    measure(ms, 2);
    row("C miss (remap of an unlocked entry)", "vs one raw mmap(MAP_FIXED) of 1 MiB in place",
        ms[0].best, ms[1].best, 1.1, "ns");
    munmap(m.raw, MIB);
    xmc_cache_free(m.c);

    if (scaling) {
        static const uint64_t ns[] = { 1, 10, 100, 1000, 10000, 100000 };
        static const uint64_t slots[] = { 64, 1024, 32768, 1048576, 8388608 };
        xmc_cache *sc = premapped_cache();

        for (size_t i = 0; i < sizeof(ns) / sizeof(ns[0]); i++) {
            side rev = { 0 };
            double cyc = fifo_ns(sc, ns[i], &rev);
            point("C fifo cycle", (double)ns[i], cyc);
            point("C reverse lookup", (double)ns[i], rev.best);
        }
        xmc_cache_free(sc);
        for (size_t i = 0; i < sizeof(slots) / sizeof(slots[0]); i++) {
            xmc_cache *ic;
            /* page-granular caches for the largest slot counts */
            unsigned shift = slots[i] > 32768 ? 12 : BUCKET_SHIFT;
            CHECK("cache", xmc_cache_new(xmc_ram_backend(ram), shift,
                                         slots[i] << shift, &ic));
            for (uint64_t b = 0; b < 10; b++)
                map(ic, b << shift, 0, XMC_LOCK);
            side s = { op_invalidate, ic, 0, 0 };
            measure(&s, 1);
            point("C invalidate", (double)slots[i], s.best);
            xmc_cache_free(ic);
        }
    }
    xmc_ram_free(ram);
    close(ram_fd);
    return failures ? 1 : 0;
}
