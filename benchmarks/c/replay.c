/*
 * replay.c - plays a mapcache trace (the format of xenmapcache/replay.py, not
 * compressed) on the C core, and the same calls on a no-op cache: the floor
 * of reading the trace, dispatching each call and translating its recorded
 * host addresses, with no mapcache behind.
 *
 *   build/replay [--rounds N] [--json] FILE
 *
 * Each round replays the whole trace on a fresh cache (libxenmapcache's memfd
 * backend, guest RAM of the trace's size, the trace's max_size) and on a fresh
 * no-op cache; the fastest round of each is kept, in ns per call.  Every
 * status the core returns is compared with the recorded one: a difference
 * exits 1.  --json prints the row (the target is xenmapcache/bench.py's).
 */
#define _GNU_SOURCE
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "xenmapcache.h"

enum { OP_MAP = 1, OP_UNLOCK, OP_RAM_ADDR, OP_INVALIDATE, OP_IN_FLIGHT, OP_REPLACE };

typedef struct call {
    uint8_t op, flags;
    int32_t status;
    uint64_t a, b, c, d;
} call;

typedef struct trace {
    uint64_t ram_size, max_size;
    unsigned shift;
    call *calls;
    size_t n;
} trace;

static uint64_t le(const uint8_t *p, unsigned bytes)
{
    uint64_t v = 0;

    for (unsigned i = 0; i < bytes; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

static int load(const char *path, trace *t)
{
    FILE *f = fopen(path, "rb");
    uint8_t h[64], r[40];

    if (!f || fread(h, 1, 64, f) != 64 || memcmp(h, "XMCTRACE", 8) != 0 || le(h + 8, 4) != 1 ||
        le(h + 12, 4) != 40) {
        fprintf(stderr, "%s: not a version 1 mapcache trace (not compressed)\n", path);
        return -1;
    }
    t->ram_size = le(h + 16, 8);
    t->max_size = le(h + 24, 8);
    t->shift = (unsigned)le(h + 32, 4);
    size_t cap = 1024;
    t->calls = malloc(cap * sizeof(call));
    t->n = 0;
    while (t->calls && fread(r, 1, 40, f) == 40) {
        if (r[0] == OP_IN_FLIGHT)
            continue; /* results of the invalidate before: the status check covers it */
        if (t->n == cap) {
            call *more = realloc(t->calls, 2 * cap * sizeof(call));
            if (!more)
                break;
            t->calls = more;
            cap *= 2;
        }
        t->calls[t->n++] = (call){ r[0], r[1], (int32_t)le(r + 4, 4), le(r + 8, 8), le(r + 16, 8),
                                   le(r + 24, 8), le(r + 32, 8) };
    }
    fclose(f);
    return t->calls ? 0 : -1;
}

/* recorded host address -> ours: open addressing, the table twice the maps. */
typedef struct table {
    uint64_t *key, *val;
    size_t mask;
} table;

static int table_new(table *tb, size_t n)
{
    size_t size = 16;

    while (size < 2 * n)
        size *= 2;
    tb->key = calloc(size, sizeof(uint64_t));
    tb->val = calloc(size, sizeof(uint64_t));
    tb->mask = size - 1;
    return tb->key && tb->val ? 0 : -1;
}

static size_t slot(const table *tb, uint64_t k)
{
    size_t i = (size_t)((k >> 4) * 0x9E3779B97F4A7C15ull) & tb->mask;

    while (tb->key[i] && tb->key[i] != k)
        i = (i + 1) & tb->mask;
    return i;
}

static void put(table *tb, uint64_t k, uint64_t v)
{
    size_t i = slot(tb, k);

    tb->key[i] = k;
    tb->val[i] = v;
}

/* The last RECENT maps, for an address inside a mapping (as replay.py). */
#define RECENT 64
typedef struct recent {
    uint64_t base[RECENT], size[RECENT], ours[RECENT];
    unsigned next;
} recent;

static void put_map(table *tb, recent *rc, uint64_t k, uint64_t size, uint64_t v)
{
    put(tb, k, v);
    rc->base[rc->next % RECENT] = k;
    rc->size[rc->next % RECENT] = size ? size : 1;
    rc->ours[rc->next % RECENT] = v;
    rc->next++;
}

static uint64_t get(const table *tb, const recent *rc, uint64_t k)
{
    size_t i = slot(tb, k);

    if (tb->key[i])
        return tb->val[i];
    for (unsigned n = 0; n < RECENT && n < rc->next; n++) {
        unsigned j = (rc->next - 1 - n) % RECENT;

        if (k >= rc->base[j] && k - rc->base[j] < rc->size[j])
            return rc->ours[j] + (k - rc->base[j]);
    }
    return UINT64_MAX - 4095; /* never handed out */
}

/* The no-op cache: guest RAM mapped once, every call answered from it. */
typedef struct noop {
    uint8_t *base;
    uint64_t size;
} noop;

static double now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

/* One replay on the core; returns ns per call, or -1 on a differing status. */
static double run_core(const trace *t, table *tb, size_t *bad)
{
    xmc_ram *ram;
    xmc_cache *c;
    recent rc_maps = { .next = 0 };
    double t0, t1;

    if (xmc_ram_new(t->ram_size, &ram) != XMC_OK ||
        xmc_cache_new(xmc_ram_backend(ram), t->shift, t->max_size, &c) != XMC_OK)
        return -1;
    memset(tb->key, 0, (tb->mask + 1) * sizeof(uint64_t));
    t0 = now_ns();
    for (size_t i = 0; i < t->n; i++) {
        const call *k = &t->calls[i];
        void *p = NULL;
        uint64_t out;
        int rc;

        switch (k->op) {
        case OP_MAP:
            rc = xmc_map(c, k->a, k->b, k->flags, k->c, &p);
            put_map(tb, &rc_maps, k->d, k->b, (uintptr_t)p);
            break;
        case OP_UNLOCK:
            rc = xmc_unlock(c, (void *)(uintptr_t)get(tb, &rc_maps, k->a), NULL);
            break;
        case OP_RAM_ADDR:
            rc = xmc_ram_addr(c, (void *)(uintptr_t)get(tb, &rc_maps, k->a), &out);
            break;
        case OP_INVALIDATE:
            rc = xmc_invalidate(c, NULL, NULL);
            break;
        case OP_REPLACE:
            rc = xmc_replace(c, k->a, k->b, k->c, &p);
            put_map(tb, &rc_maps, k->d, k->c, (uintptr_t)p);
            break;
        default:
            rc = XMC_EINVAL;
        }
        if (rc != k->status && !*bad)
            *bad = i + 1;
    }
    t1 = now_ns();
    xmc_cache_free(c);
    xmc_ram_free(ram);
    return (t1 - t0) / (double)t->n;
}

static double run_noop(const trace *t, table *tb, noop *nc)
{
    volatile uint64_t sink = 0;
    recent rc_maps = { .next = 0 };
    double t0, t1;

    memset(tb->key, 0, (tb->mask + 1) * sizeof(uint64_t));
    t0 = now_ns();
    for (size_t i = 0; i < t->n; i++) {
        const call *k = &t->calls[i];
        uint64_t p;

        switch (k->op) {
        case OP_MAP:
        case OP_REPLACE:
            put_map(tb, &rc_maps, k->d, k->op == OP_MAP ? k->b : k->c,
                    (uintptr_t)nc->base + (k->op == OP_MAP ? k->a : k->b));
            break;
        case OP_UNLOCK:
        case OP_RAM_ADDR:
            p = get(tb, &rc_maps, k->a);
            sink += p - (uintptr_t)nc->base < nc->size ? p - (uintptr_t)nc->base : 0;
            break;
        default:
            break;
        }
    }
    t1 = now_ns();
    (void)sink;
    return (t1 - t0) / (double)t->n;
}

int main(int argc, char **argv)
{
    int rounds = 5;
    bool json = false;
    const char *path = NULL;
    trace t;
    table tb;
    noop nc;
    double best_core = 1e300, best_noop = 1e300;
    size_t maps = 0, bad = 0;

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--rounds") == 0 && i + 1 < argc)
            rounds = atoi(argv[++i]);
        else if (strcmp(argv[i], "--json") == 0)
            json = true;
        else
            path = argv[i];
    }
    if (!path || rounds < 1) {
        fprintf(stderr, "usage: replay [--rounds N] [--json] FILE\n");
        return 2;
    }
    if (load(path, &t) != 0 || t.n == 0)
        return 2;
    for (size_t i = 0; i < t.n; i++)
        maps += t.calls[i].op == OP_MAP || t.calls[i].op == OP_REPLACE;
    nc.size = t.ram_size;
    nc.base = mmap(NULL, t.ram_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    if (nc.base == MAP_FAILED || table_new(&tb, maps) != 0)
        return 2;
    for (int r = 0; r < rounds; r++) {
        double a = run_core(&t, &tb, &bad), b = run_noop(&t, &tb, &nc);

        if (a < 0)
            return 2;
        if (bad) {
            fprintf(stderr, "%s: call #%zu: the core's status differs from the recorded one\n", path,
                    bad - 1);
            return 1;
        }
        best_core = a < best_core ? a : best_core;
        best_noop = b < best_noop ? b : best_noop;
    }
    if (json)
        printf("{\"row\": \"C: replay of a Linux guest's trace (%zu calls)\", \"measured_as\": "
               "\"vs the same replay on a no-op cache (the floor)\", \"a\": %.1f, \"b\": %.1f, "
               "\"ratio\": %.2f, \"unit\": \"ns\"}\n",
               t.n, best_core, best_noop, best_core / best_noop);
    else
        printf("%s: %zu calls; C core %.1f ns/call, no-op cache %.1f ns/call (%.2fx)\n", path, t.n,
               best_core, best_noop, best_core / best_noop);
    munmap(nc.base, t.ram_size);
    free(t.calls);
    free(tb.key);
    free(tb.val);
    return 0;
}
