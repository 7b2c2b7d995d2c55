/*
 * fuzz_cache.c - libFuzzer harness: input bytes become a sequence of C API
 * calls on a small cache, checked against a model after every call.
 *
 * Setup (first three bytes): bucket shift 12..14, 1..8 slots, lock limit,
 * translate on/off, a second hole, whether the cache is freed at the end
 * with its locked mappings outstanding (else they are unlocked first), and
 * grant rules (h1 bits 0x1c all set; shift 12): then unlocked requests,
 * copies and replace must fail with XMC_EGRANT, and the cache must hold no
 * more entries than locked mappings, none once they are all unlocked.  Guest RAM is 64 pages with a fixed hole
 * at pages [24, 28) and a chosen one; addresses reach past the end and up to
 * the top of the 64-bit space.  The translate callback maps the fixed hole
 * onto pages [4, 8), fails for the chosen hole and answers a wrapping
 * address just past the end of RAM.
 *
 * Then each op is one byte plus operands: map (unlocked, locked, DMA, bad
 * flags), a batch of locked maps (xmc_map_sg), unlock by address, by tag and
 * by batch (xmc_unlock_sg), unlock of foreign and interior pointers, ram_addr
 * of exact/interior/foreign pointers, invalidate, replace, read, write,
 * writes through held mappings, dummy mode, lock limit, stats.  Every third
 * unlocked map is raced (see race()): a writer runs in the middle of its
 * lock-free hit, or a hit in the middle of its publication.
 *
 * Invariants checked: every status code is one the model allows; a pointer
 * handed out resolves back to the guest address asked for (or its
 * translation) and holds the guest data; stats.locked and dma_locked equal
 * the mappings held, and xmc_locked() lists exactly them, oldest first;
 * invalidate returns exactly the held DMA mappings; guest RAM equals a
 * shadow; every mapping the backend handed out is unmapped exactly once.  A
 * refused batch leaves the held mappings, out[] and (beyond what one failed
 * map may move) the statistics as they were.
 *
 * Where dummy mode may have left anonymous entries, whether a pointer is
 * guest memory is read from /proc/self/maps (only then: it is slow).
 */
#define _GNU_SOURCE 1

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "xmc_internal.h" /* the core's test points: built with XMC_TESTING */

#define PAGE UINT64_C(4096)
#define RAM_PAGES 64
#define RAM_SIZE (RAM_PAGES * PAGE)
#define HOLE_LO (24 * PAGE) /* translated to ALIAS */
#define HOLE_HI (28 * PAGE)
#define ALIAS (4 * PAGE)
#define MAX_HELD 200 /* past 64: the record hash table grows */
#define MAX_TRACK 512

#define FAIL(...)                                                             \
    do {                                                                      \
        fprintf(stderr, "fuzz_cache: invariant broken at line %d: ", __LINE__); \
        fprintf(stderr, __VA_ARGS__);                                         \
        fputc('\n', stderr);                                                  \
        abort();                                                              \
    } while (0)
#define EXPECT(cond)                                                          \
    do {                                                                      \
        if (!(cond))                                                          \
            FAIL("%s", #cond);                                                \
    } while (0)

/* XMC_FUZZ_TRACE=1 prints each call: for reading a crash input. */
static bool tracing;
#define TRACE(...)                                                            \
    do {                                                                      \
        if (tracing)                                                          \
            fprintf(stderr, __VA_ARGS__);                                     \
    } while (0)

typedef struct held {
    uint8_t *ptr;
    uint64_t paddr, size, tag;
    bool dma;
    bool guest;      /* guest memory, not a dummy entry's anonymous pages */
    bool accessible; /* its pages are mapped (a replace may move it onto a hole) */
} held;

/* ---- the input ----------------------------------------------------------- */

static const uint8_t *in;
static size_t in_len, in_pos;

static uint8_t get8(void)
{
    return in_pos < in_len ? in[in_pos++] : 0;
}

static uint16_t get16(void)
{
    uint16_t v = get8();
    return (uint16_t)(v | get8() << 8);
}

static uint64_t get64(void)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)get8() << (8 * i);
    return v;
}

/* ---- the world ------------------------------------------------------------ */

static xmc_ram *ram;
static xmc_cache *cache;
static unsigned shift;
static uint64_t bucket, max_size;
static uint32_t lock_limit;
static bool translate_on, dummy_on, dummy_ever, free_locked, grants;
static uint64_t hole2_lo, hole2_hi;
static uint8_t shadow[RAM_SIZE], initial[RAM_SIZE];
static bool initial_done;
static held hold[MAX_HELD];
static size_t nheld;
static uint64_t next_tag;

/* The backend under the cache, wrapped to see every map and unmap. */
static const xmc_backend *rb;
static xmc_backend tracked;
static struct { uintptr_t addr; size_t len; } track[MAX_TRACK];
static size_t ntrack;

static int tr_map(void *o, void *fixed, uint64_t pfn, size_t n, int *errs, void **out)
{
    int rc = rb->map(o, fixed, pfn, n, errs, out);

    if (rc != XMC_OK)
        return rc;
    if (fixed) {
        for (size_t i = 0; i < ntrack; i++)
            if (track[i].addr == (uintptr_t)fixed) {
                track[i].len = n * PAGE; /* mapped over in place */
                return rc;
            }
    } else {
        uintptr_t lo = (uintptr_t)*out, hi = lo + n * PAGE;
        for (size_t i = 0; i < ntrack;) /* the kernel reused a stale range */
            if (track[i].addr < hi && lo < track[i].addr + track[i].len)
                track[i] = track[--ntrack];
            else
                i++;
    }
    if (ntrack == MAX_TRACK)
        FAIL("more than %d live backend mappings", MAX_TRACK);
    track[ntrack].addr = (uintptr_t)*out;
    track[ntrack++].len = n * PAGE;
    return rc;
}

static int tr_unmap(void *o, void *addr, size_t len)
{
    for (size_t i = 0; i < ntrack; i++)
        if (track[i].addr == (uintptr_t)addr) {
            if (track[i].len != len)
                FAIL("unmap of %zu bytes, %zu mapped", len, track[i].len);
            track[i] = track[--ntrack];
            return rb->unmap(o, addr, len);
        }
    FAIL("unmap of %p, which the backend never handed out (or twice)", addr);
}

static uint64_t translate_model(uint64_t paddr, int *rc)
{
    *rc = XMC_OK;
    if (paddr >= HOLE_LO && paddr < HOLE_HI)
        return paddr - HOLE_LO + ALIAS;
    if (paddr >= hole2_lo && paddr < hole2_hi)
        *rc = XMC_EMAP;
    if (paddr >= RAM_SIZE && paddr < RAM_SIZE + 16 * PAGE)
        return UINT64_MAX - 16;
    return paddr;
}

static int translate(void *opaque, uint64_t paddr, uint64_t size, uint64_t *out)
{
    int rc;

    (void)opaque;
    (void)size;
    *out = translate_model(paddr, &rc);
    return rc;
}

/* ---- the model ------------------------------------------------------------ */

static bool range_ok(uint64_t a, uint64_t n)
{
    return n == 0 || a <= UINT64_MAX - (n - 1);
}

/* Are the pages of [paddr, paddr + max(size, 1)) all RAM? */
static bool valid(uint64_t paddr, uint64_t size)
{
    uint64_t n = size ? size : 1, end;

    if (paddr >= RAM_SIZE || n > RAM_SIZE - paddr)
        return false;
    end = paddr + n;
    if (paddr < HOLE_HI && ((HOLE_LO & ~(PAGE - 1)) < end))
        return false;
    if (paddr < hole2_hi && hole2_lo < end)
        return false;
    return true;
}

/* Entry key of a request: (index, cache_size). */
static void key(uint64_t paddr, uint64_t size, uint64_t *index, uint64_t *csize)
{
    uint64_t off = paddr & (bucket - 1);

    *index = paddr >> shift;
    *csize = size ? (off + size + bucket - 1) & ~(bucket - 1) : bucket;
}

static size_t held_with_key(uint64_t paddr, uint64_t size)
{
    uint64_t i0, c0, i1, c1;
    size_t n = 0;

    key(paddr, size, &i0, &c0);
    for (size_t i = 0; i < nheld; i++) {
        key(hold[i].paddr, hold[i].size, &i1, &c1);
        n += i0 == i1 && c0 == c1;
    }
    return n;
}

/*
 * Is p in guest memory (the memfd), in a dummy entry's anonymous pages, or
 * in a page mapped with no access (a hole, say, after a replace)?
 */
enum kind { GUEST, DUMMY, NO_ACCESS };

/* /proc/self/maps, read at most once per op (run() marks it stale). */
static struct region {
    uintptr_t lo, hi;
    enum kind kind;
} regions[4096];
static size_t nregions;
static bool maps_fresh;

static void read_maps(void)
{
    char line[512];
    FILE *f = fopen("/proc/self/maps", "re");

    EXPECT(f);
    nregions = 0;
    while (fgets(line, sizeof(line), f) && nregions < sizeof(regions) / sizeof(regions[0])) {
        unsigned long lo, hi;
        struct region *r = &regions[nregions];

        if (sscanf(line, "%lx-%lx", &lo, &hi) != 2)
            continue;
        r->lo = lo;
        r->hi = hi;
        r->kind = strstr(line, "xenmapcache-guest-ram") ? GUEST
                  : strstr(line, " rw")                 ? DUMMY
                                                        : NO_ACCESS;
        nregions++;
    }
    fclose(f);
    maps_fresh = true;
}

static enum kind kind_of(const void *p)
{
    if (!dummy_ever)
        return GUEST; /* the caller knows from valid() whether it is RAM */
    if (!maps_fresh)
        read_maps();
    for (size_t i = 0; i < nregions; i++)
        if (regions[i].lo <= (uintptr_t)p && (uintptr_t)p < regions[i].hi)
            return regions[i].kind;
    return NO_ACCESS;
}

static bool is_guest(const void *p)
{
    return kind_of(p) == GUEST;
}

/* Classify a held mapping afresh (after a map or a replace). */
static void classify(held *h)
{
    enum kind k = kind_of(h->ptr);

    h->guest = k == GUEST;
    h->accessible = k == DUMMY || (k == GUEST && valid(h->paddr, h->size));
}

/* With every entry gone, no mapping of guest RAM may be left. */
static void check_no_guest_mapping(void)
{
    FILE *f = fopen("/proc/self/maps", "re");
    char line[512];

    EXPECT(f);
    while (fgets(line, sizeof(line), f))
        if (strstr(line, "xenmapcache-guest-ram"))
            FAIL("guest RAM still mapped after the last entry went: %s", line);
    fclose(f);
}

static void check_data(const uint8_t *p, uint64_t paddr, uint64_t n)
{
    if (n > 2 * PAGE)
        n = 2 * PAGE;
    if (memcmp(p, shadow + paddr, n) == 0) /* fast; the loop finds where */
        return;
    for (uint64_t i = 0; i < n; i++)
        if (p[i] != shadow[paddr + i])
            FAIL("guest %#" PRIx64 " reads %#x through the cache, shadow %#x",
                 paddr + i, p[i], shadow[paddr + i]);
}

/* The shadow from guest RAM itself, after a write the model cannot follow. */
static void resync_shadow(void)
{
    for (uint64_t pg = 0; pg < RAM_PAGES; pg++)
        if (valid(pg * PAGE, PAGE))
            EXPECT(xmc_ram_read(ram, pg * PAGE, shadow + pg * PAGE, PAGE) == XMC_OK);
}

static void check_ram(void)
{
    static uint8_t buf[PAGE];

    for (uint64_t pg = 0; pg < RAM_PAGES; pg++) {
        if (!valid(pg * PAGE, PAGE))
            continue;
        EXPECT(xmc_ram_read(ram, pg * PAGE, buf, PAGE) == XMC_OK);
        if (memcmp(buf, shadow + pg * PAGE, PAGE) != 0)
            FAIL("guest RAM page %" PRIu64 " differs from the shadow", pg);
    }
}

static void check_records(void)
{
    size_t n, ndma = 0;
    xmc_record *r;
    xmc_stats st;

    EXPECT(xmc_stats_get(cache, &st) == XMC_OK);
    EXPECT(xmc_locked(cache, &r, &n) == XMC_OK);
    for (size_t i = 0; i < nheld; i++)
        ndma += hold[i].dma;
    if (st.locked != nheld || n != nheld || st.dma_locked != ndma)
        FAIL("stats.locked %" PRIu64 " (dma %" PRIu64 "), %zu records, %zu held (dma %zu)",
             st.locked, st.dma_locked, n, nheld, ndma);
    for (size_t i = 0; i < n; i++) {
        const held *h = &hold[i];
        if (r[i].tag != h->tag || r[i].address != (uintptr_t)h->ptr ||
            r[i].paddr != h->paddr || r[i].size != h->size || r[i].dma != h->dma)
            FAIL("record %zu: tag %#" PRIx64 " paddr %#" PRIx64 " size %#" PRIx64
                 " at %#" PRIxPTR " dma %d, held tag %#" PRIx64 " paddr %#" PRIx64
                 " size %#" PRIx64 " at %p dma %d", i, r[i].tag, r[i].paddr, r[i].size,
                 r[i].address, r[i].dma, h->tag, h->paddr, h->size, (void *)h->ptr, h->dma);
    }
    xmc_records_free(r);
    EXPECT(st.mapped_bytes % bucket == 0);
    EXPECT(st.mapped_bytes >= st.entries * bucket);
    EXPECT(st.entries <= 4096);
}

static void forget(size_t i)
{
    memmove(&hold[i], &hold[i + 1], (nheld - i - 1) * sizeof(hold[0]));
    nheld--;
}

/* Newest held mapping at exactly p, or -1. */
static long newest_at(const void *p)
{
    for (size_t i = nheld; i-- > 0;)
        if (hold[i].ptr == p)
            return (long)i;
    return -1;
}

/* Newest held mapping at exactly p with tag (a batch's share one), or -1. */
static long newest_tagged(const void *p, uint64_t tag)
{
    for (size_t i = nheld; i-- > 0;)
        if (hold[i].ptr == p && hold[i].tag == tag)
            return (long)i;
    return -1;
}

/* Make room for n more held mappings: unlock the oldest. */
static void make_room(size_t n)
{
    while (nheld + n > MAX_HELD) {
        EXPECT(xmc_unlock_tag(cache, hold[0].ptr, hold[0].tag) == XMC_OK);
        forget((size_t)newest_tagged(hold[0].ptr, hold[0].tag));
    }
}

/* ---- operands ------------------------------------------------------------ */

static uint64_t gen_paddr(void)
{
    uint8_t sel = get8();

    if (sel < 160)
        return (get8() % (RAM_PAGES + 16)) * PAGE + get16() % PAGE;
    if (sel < 200)
        return HOLE_LO + get16() % (HOLE_HI - HOLE_LO);
    if (sel < 220)
        return hole2_lo + get8() % PAGE;
    if (sel < 240)
        return (uint64_t)get8() * bucket + get8();
    if (sel < 250)
        return UINT64_MAX - get16();
    return get64();
}

static uint64_t gen_size(void)
{
    uint8_t sel = get8();

    if (sel < 64)
        return 0;
    if (sel < 160)
        return 1 + get8();
    if (sel < 220)
        return 1 + get16() % (2 * bucket + PAGE);
    if (sel < 235)
        return (1 + get8() % 8) * bucket;
    switch (sel % 4) {
    case 0: return max_size;
    case 1: return max_size + 1;
    case 2: return UINT64_MAX;
    default: return get64();
    }
}

/* A pointer near a held mapping, or a foreign one. */
static uint8_t *gen_ptr(void)
{
    static uint8_t local;
    uint8_t sel = get8();

    if (nheld && sel < 200)
        return hold[get8() % nheld].ptr + (int16_t)get16() % (int)(2 * bucket);
    switch (sel % 4) {
    case 0: return NULL;
    case 1: return &local;
    case 2: return (uint8_t *)UINTPTR_MAX - get8();
    default: return (uint8_t *)(uintptr_t)get64();
    }
}

/* ---- operations ----------------------------------------------------------- */

/*
 * Every other map and read goes the way the Python binding makes it: the
 * _nowait twin first, which either answers (as the waiting call would: the
 * checks after the call do not know which ran) or refuses with XMC_EAGAIN
 * and nothing changed; then the waiting call.  No input byte decides it, so
 * the corpus keeps its meaning.
 */
static unsigned long hot_calls;

static bool try_nowait_first(xmc_stats *before)
{
    if (hot_calls++ & 1)
        return false;
    EXPECT(xmc_stats_get(cache, before) == XMC_OK);
    return true;
}

static void refused_unchanged(const xmc_stats *before)
{
    xmc_stats after;

    EXPECT(xmc_stats_get(cache, &after) == XMC_OK);
    if (memcmp(before, &after, sizeof(after)) != 0)
        FAIL("a _nowait call refused with XMC_EAGAIN but changed the statistics");
}

static int map_hot(uint64_t paddr, uint64_t size, unsigned flags, uint64_t tag, void **out)
{
    xmc_stats before;
    int rc;

    if (try_nowait_first(&before)) {
        rc = xmc_map_nowait(cache, paddr, size, flags, tag, out);
        if (rc != XMC_EAGAIN)
            return rc;
        refused_unchanged(&before);
    }
    return xmc_map(cache, paddr, size, flags, tag, out);
}

static int read_hot(uint64_t paddr, uint8_t *buf, size_t n)
{
    xmc_stats before;
    int rc;

    if (try_nowait_first(&before)) {
        rc = xmc_read_nowait(cache, paddr, buf, n);
        if (rc != XMC_EAGAIN)
            return rc;
        refused_unchanged(&before);
    }
    return xmc_read(cache, paddr, buf, n);
}

static int write_hot(uint64_t paddr, const uint8_t *buf, size_t n)
{
    xmc_stats before;
    int rc;

    if (try_nowait_first(&before)) {
        rc = xmc_write_nowait(cache, paddr, buf, n);
        if (rc != XMC_EAGAIN)
            return rc;
        refused_unchanged(&before);
    }
    return xmc_write(cache, paddr, buf, n);
}

/* A pointer came back: it resolves to what was asked (off RAM, maybe to its
 * translation tp) and holds the guest data.  Returns the address it maps. */
static uint64_t check_pointer(uint8_t *p, uint64_t paddr, uint64_t size, bool v, uint64_t tp)
{
    uint64_t back;

    EXPECT(xmc_ram_addr(cache, p, &back) == XMC_OK);
    if (v ? back != paddr : back != paddr && back != tp)
        FAIL("ram_addr(map(%#" PRIx64 ")) = %#" PRIx64, paddr, back);
    if (size) {
        uint64_t last;
        EXPECT(xmc_ram_addr(cache, p + size - 1, &last) == XMC_OK);
        EXPECT(last == back + size - 1);
    }
    if (valid(back, size) && is_guest(p))
        check_data(p, back, size ? size : 1);
    return back;
}

static void hold_add(uint8_t *p, uint64_t paddr, uint64_t size, uint64_t tag, bool dma)
{
    held *h;

    EXPECT(nheld < MAX_HELD);
    h = &hold[nheld++];
    *h = (held){ .ptr = p, .paddr = paddr, .size = size, .tag = tag, .dma = dma };
    classify(h);
}

/*
 * Races, made deterministic by the core's test points.  An armed unlocked map
 * runs, in the middle of its lock-free hit (after it read the published last
 * entry, before it validated it), an invalidate, a map of another page or a
 * switch of the trace hook, each checked against the model as usual; or, in
 * the middle of the publication of its entry (the mutex held), a _nowait hit
 * of that address, which must be refused: XMC_EAGAIN.  Then the map itself
 * is checked as any other.  No input byte decides which, so the corpus keeps
 * its meaning.
 */
static unsigned long unlocked_maps, races;
static uint64_t race_paddr;
static int race_at; /* the point armed */

static void op_invalidate(void);
static void op_trace(void);

static void race(xmc_cache *c, int point)
{
    uint64_t other = (race_paddr + races * 5 * PAGE) % RAM_SIZE;
    void *p;

    if (c != cache || point != race_at)
        return;
    xmc_test_point = NULL; /* once: what runs here passes the points again */
    TRACE("race %lu at point %d\n", races, point);
    if (point == XMC_TP_PUBLISH) {
        EXPECT(xmc_map_nowait(cache, race_paddr, 0, 0, 0, &p) == XMC_EAGAIN);
    } else if (races % 4 == 0) {
        op_invalidate();
    } else if (races % 4 == 1) {
        while (!valid(other, 0))
            other = (other + PAGE) % RAM_SIZE;
        if (grants) {
            EXPECT(xmc_map(cache, other, 0, 0, 0, &p) == XMC_EGRANT);
        } else {
            EXPECT(xmc_map(cache, other, 0, 0, 0, &p) == XMC_OK);
            check_pointer(p, other, 0, true, other);
        }
    } else {
        op_trace();
    }
    maps_fresh = false;
    races++;
}

static void op_map(unsigned flags)
{
    uint64_t paddr = gen_paddr(), size = gen_size(), tag = next_tag++, back, tp;
    bool lock = flags & XMC_LOCK, ok_flags = !(flags & ~3u);
    bool ok_range = range_ok(paddr, size) && size <= max_size;
    bool v = valid(paddr, size);
    int trc = XMC_OK;
    uint8_t *p = NULL;
    int rc;

    if (lock)
        make_room(1);
    tp = translate_on ? translate_model(paddr, &trc) : paddr;
    if (flags == 0 && unlocked_maps++ % 3 == 0) { /* raced, so waiting at once */
        race_paddr = paddr;
        race_at = races % 4 == 3 ? XMC_TP_PUBLISH : XMC_TP_HIT_READ;
        xmc_test_point = race;
        rc = xmc_map(cache, paddr, size, flags, tag, (void **)&p);
        xmc_test_point = NULL;
    } else {
        rc = map_hot(paddr, size, flags, tag, (void **)&p);
    }
    TRACE("map(%#" PRIx64 ", %#" PRIx64 ", %u) tag %" PRIu64 " = %d %p\n", paddr, size,
          flags, tag, rc, (void *)p);
    if (!ok_flags || !ok_range) {
        if (rc != XMC_EINVAL)
            FAIL("map(%#" PRIx64 ", %#" PRIx64 ", %u) = %d, want EINVAL", paddr, size,
                 flags, rc);
        return;
    }
    if (grants && !lock) {
        if (rc != XMC_EGRANT)
            FAIL("unlocked map(%#" PRIx64 ") on a grant cache = %d", paddr, rc);
        return;
    }
    if (rc == XMC_EOVERFLOW) {
        EXPECT(lock);
        if (held_with_key(paddr, size) < lock_limit &&
            !(translate_on && held_with_key(tp, size) >= lock_limit))
            FAIL("EOVERFLOW with fewer than %u locks on the entry", lock_limit);
        return;
    }
    if (v) {
        if (rc != XMC_OK)
            FAIL("map(%#" PRIx64 ", %#" PRIx64 ") of RAM failed: %s", paddr, size,
                 xmc_strerror(rc));
    } else if (rc == XMC_EMAP) {
        return;
    } else if (rc == XMC_EINVAL) {
        EXPECT(translate_on && !range_ok(tp, size));
        return;
    } else if (rc == XMC_OK) {
        EXPECT(dummy_ever || (translate_on && trc == XMC_OK));
    } else {
        FAIL("map(%#" PRIx64 ", %#" PRIx64 "): unexpected %s", paddr, size,
             xmc_strerror(rc));
    }
    back = check_pointer(p, paddr, size, v, tp);
    if (lock)
        hold_add(p, back, size, tag, flags & XMC_DMA);
}

static void op_unlock(bool by_tag)
{
    uint64_t tag = 0;
    long i;
    int rc;

    if (!nheld)
        return;
    i = (long)(get8() % nheld);
    if (by_tag) {
        EXPECT(xmc_unlock_tag(cache, hold[i].ptr, hold[i].tag) == XMC_OK);
        i = newest_tagged(hold[i].ptr, hold[i].tag);
        forget((size_t)i);
        EXPECT(xmc_unlock_tag(cache, hold[i < (long)nheld ? i : 0].ptr, ~UINT64_C(0)) ==
               XMC_ENOENT);
        return;
    }
    i = newest_at(hold[i].ptr);
    rc = xmc_unlock(cache, hold[i].ptr, &tag);
    EXPECT(rc == XMC_OK && tag == hold[i].tag);
    forget((size_t)i);
}

static void op_unlock_foreign(void)
{
    uint8_t *p = gen_ptr();
    long i = newest_at(p);
    uint64_t tag = 0;
    int rc = xmc_unlock(cache, p, &tag);

    if (i < 0) {
        EXPECT(rc == XMC_ENOENT);
        return;
    }
    EXPECT(rc == XMC_OK && tag == hold[i].tag);
    forget((size_t)i);
}

static void op_ram_addr(void)
{
    uint64_t back, off, csize, idx;
    uint8_t *p;
    int64_t k;
    held *h;

    if (!nheld) {
        p = gen_ptr();
        if (newest_at(p) < 0 && (p == NULL || (uintptr_t)p > UINTPTR_MAX - 512))
            EXPECT(xmc_ram_addr(cache, p, &back) == XMC_ENOENT);
        return;
    }
    h = &hold[get8() % nheld];
    key(h->paddr, h->size, &idx, &csize);
    off = h->paddr & (bucket - 1);
    /* Anywhere in its entry: [ptr - off, ptr - off + csize). */
    k = (int64_t)(get16() % csize) - (int64_t)off;
    EXPECT(xmc_ram_addr(cache, h->ptr + k, &back) == XMC_OK);
    if (back != h->paddr + (uint64_t)k)
        FAIL("ram_addr(ptr %+" PRId64 ") = %#" PRIx64 ", want %#" PRIx64, k, back,
             h->paddr + (uint64_t)k);
    EXPECT(xmc_ram_addr(cache, NULL, &back) == XMC_ENOENT);
}

static void op_invalidate(void)
{
    xmc_record *r;
    size_t n, j = 0;

    EXPECT(xmc_invalidate(cache, &r, &n) == XMC_OK);
    for (size_t i = 0; i < nheld; i++) {
        if (!hold[i].dma)
            continue;
        if (j >= n || r[j].tag != hold[i].tag || r[j].address != (uintptr_t)hold[i].ptr)
            FAIL("invalidate: DMA record %zu is not held mapping %zu", j, i);
        j++;
    }
    EXPECT(j == n);
    xmc_records_free(r);
    if (nheld == 0 && !dummy_on) {
        xmc_stats st;
        EXPECT(xmc_stats_get(cache, &st) == XMC_OK);
        EXPECT(st.entries == 0 && st.mapped_bytes == 0);
        dummy_ever = false; /* no entry left, so no dummy one */
    }
    /* Locked mappings keep their data. */
    for (size_t i = 0; i < nheld; i++)
        if (hold[i].guest && hold[i].accessible)
            check_data(hold[i].ptr, hold[i].paddr, hold[i].size ? hold[i].size : 1);
}

/*
 * Would replace(old, new, size) move a held mapping of old's entry onto pages
 * that are not RAM?  Then it must refuse (XMC_EMAP): the holder would fault.
 * Twins of the entry make this an over-approximation, which is fine here.
 */
static bool strands_a_lock(uint64_t old, uint64_t new, uint64_t size)
{
    uint64_t oi, oc, hi, hc;

    key(old, size, &oi, &oc);
    for (size_t i = 0; i < nheld; i++) {
        key(hold[i].paddr, hold[i].size, &hi, &hc);
        if (hi == oi && hc == oc &&
            !valid(((new >> shift) << shift) + (hold[i].paddr & (bucket - 1)),
                   hold[i].size))
            return true;
    }
    return false;
}

static void op_replace(void)
{
    uint64_t old = gen_paddr(), new = gen_paddr(), size = gen_size(), back;
    xmc_record *r;
    uint8_t *p;
    size_t n;
    int rc;

    if (get8() & 1) /* often the bucket of a held mapping */
        if (nheld)
            old = hold[get8() % nheld].paddr;
    rc = xmc_replace(cache, old, new, size, (void **)&p);
    TRACE("replace(%#" PRIx64 ", %#" PRIx64 ", %#" PRIx64 ") = %d %p\n", old, new, size,
          rc, (void *)p);
    if (!range_ok(old, size) || !range_ok(new, size) || size > max_size) {
        EXPECT(rc == XMC_EINVAL);
        return;
    }
    if (grants) {
        EXPECT(rc == XMC_EGRANT);
        check_records(); /* nothing moved */
        return;
    }
    if (rc != XMC_OK) {
        EXPECT(rc == XMC_ENOENT || rc == XMC_EINVAL || rc == XMC_EMAP);
        EXPECT(rc != XMC_EMAP || !valid(new, size) || strands_a_lock(old, new, size));
        check_records(); /* nothing moved */
        return;
    }
    EXPECT(xmc_ram_addr(cache, p, &back) == XMC_OK && back == new);
    EXPECT(valid(new, size));
    check_data(p, new, size ? size : 1);
    /* Records of the replaced entry follow it: take their new addresses. */
    EXPECT(xmc_locked(cache, &r, &n) == XMC_OK);
    EXPECT(n == nheld);
    for (size_t i = 0; i < n; i++) {
        held *h = &hold[i];

        EXPECT(r[i].tag == h->tag);
        if (r[i].paddr != h->paddr) {
            EXPECT((r[i].paddr & (bucket - 1)) == (h->paddr & (bucket - 1)));
            EXPECT((r[i].paddr >> shift) == (new >> shift));
            h->paddr = r[i].paddr;
            EXPECT(valid(h->paddr, h->size)); /* never moved onto a hole */
        }
        classify(h);
    }
    xmc_records_free(r);
}

static void op_copy(bool write)
{
    uint64_t paddr = gen_paddr(), n = get16() % (3 * bucket);
    static uint8_t buf[3 * (1u << 14)], back[3 * (1u << 14)];
    bool v = n == 0 || valid(paddr, n);
    int rc;

    if (write)
        for (uint64_t i = 0; i < n; i++)
            buf[i] = (uint8_t)(get8() ^ i);
    rc = write ? write_hot(paddr, buf, (size_t)n) : read_hot(paddr, buf, (size_t)n);
    TRACE("%s(%#" PRIx64 ", %#" PRIx64 ") = %d\n", write ? "write" : "read", paddr, n, rc);
    if (!range_ok(paddr, n)) {
        EXPECT(rc == XMC_EINVAL);
        return;
    }
    if (grants && n) { /* a copy is an unlocked request */
        EXPECT(rc == XMC_EGRANT);
        return;
    }
    if (v && rc != XMC_OK)
        FAIL("%s of RAM %#" PRIx64 "+%#" PRIx64 ": %s", write ? "write" : "read",
             paddr, n, xmc_strerror(rc));
    if (!v)
        EXPECT(rc == XMC_OK || rc == XMC_EMAP || rc == XMC_EINVAL);
    if (n == 0 || (rc != XMC_OK && !write))
        return;
    if (rc != XMC_OK || !v || dummy_ever) {
        if (write) /* a failed write may have written its first buckets */
            resync_shadow();
        return;
    }
    if (write) {
        EXPECT(xmc_ram_read(ram, paddr, back, n) == XMC_OK);
        EXPECT(memcmp(back, buf, n) == 0); /* written is read back */
        memcpy(shadow + paddr, buf, n);
    } else {
        check_data(buf, paddr, n);
    }
}

/*
 * The trace hook, switched on and off by op 15.  While it is on the fast
 * path is off (every hit goes through the traced slow path) and batches that
 * run quietly replay their events.  The hook runs under the cache's mutex: a
 * call back into the cache must be refused, never wait for itself.
 */
static bool trace_on;
static unsigned long trace_events;

static int on_event(void *opaque, const xmc_event *ev)
{
    xmc_stats st;

    EXPECT(opaque == &trace_events);
    EXPECT(ev->struct_size == sizeof(*ev));
    EXPECT(ev->kind >= XMC_EV_HIT && ev->kind <= XMC_EV_REFUSED);
    EXPECT(ev->rc <= 0);
    if (trace_events++ % 16 == 0)
        EXPECT(xmc_stats_get(cache, &st) == XMC_EREENTER);
    return 0;
}

static void op_trace(void)
{
    trace_on = !trace_on;
    EXPECT(xmc_cache_set_trace(cache, trace_on ? on_event : NULL, &trace_events) == XMC_OK);
}

static void op_held_write(void)
{
    held *h;
    uint64_t n;

    if (!nheld)
        return;
    h = &hold[get8() % nheld];
    if (!h->accessible)
        return;
    n = h->size ? h->size : 1;
    TRACE("held write tag %" PRIu64 " %p paddr %#" PRIx64 " guest %d\n", h->tag,
          (void *)h->ptr, h->paddr, h->guest);
    if (h->guest)
        check_data(h->ptr, h->paddr, n);
    for (uint64_t i = 0; i < n; i++) {
        h->ptr[i] = (uint8_t)(i * 7 + h->tag);
        if (h->guest)
            shadow[h->paddr + i] = h->ptr[i];
    }
}

/*
 * A batch of 1..8 segments (now and then 0 or SIZE_MAX of them, or bad
 * flags), some repeating the one before.  Segments on RAM whose entry has
 * room for their lock must map; after a refusal nothing may have changed
 * but what one failed map may move: a hit (an allocation failure after the
 * lookup) and up to three misses (the address, its translation, dummy).
 */
#define SG_OPS 8
static void op_map_sg(void)
{
    xmc_sg segs[SG_OPS];
    uint64_t tps[SG_OPS], tag = next_tag++;
    uint8_t *out[SG_OPS];
    uint8_t sel = get8();
    size_t n = sel == 255 ? 0 : sel == 254 ? SIZE_MAX : 1 + sel % SG_OPS;
    size_t nseg = n >= 1 && n <= SG_OPS ? n : 1; /* segments in the input */
    unsigned flags = get8() & 7;
    bool ok_args = n >= 1 && n <= SG_OPS && !(flags & ~3u), sure = ok_args;
    xmc_stats before, after;
    int rc, trc;

    for (size_t i = 0; i < nseg; i++) {
        if (i && get8() < 64) {
            segs[i] = segs[i - 1];
        } else {
            segs[i].paddr = gen_paddr();
            segs[i].size = gen_size();
        }
        out[i] = (uint8_t *)&segs; /* a sentinel: untouched on failure */
        tps[i] = translate_on ? translate_model(segs[i].paddr, &trc) : segs[i].paddr;
        if (!range_ok(segs[i].paddr, segs[i].size) || segs[i].size > max_size)
            ok_args = sure = false;
        /* Sure to map: RAM, and room for one more lock on its entry. */
        size_t same = held_with_key(segs[i].paddr, segs[i].size);
        for (size_t j = 0; j < i; j++) {
            uint64_t a, b, c, d;
            key(segs[i].paddr, segs[i].size, &a, &b);
            key(segs[j].paddr, segs[j].size, &c, &d);
            same += a == c && b == d;
        }
        sure = sure && valid(segs[i].paddr, segs[i].size) && same < lock_limit;
    }
    if (ok_args)
        make_room(n);
    EXPECT(xmc_stats_get(cache, &before) == XMC_OK);
    rc = XMC_EAGAIN;
    if (hot_calls++ & 1) {
        rc = xmc_map_sg_nowait(cache, segs, n, flags, tag, (void **)out);
        if (rc == XMC_EAGAIN)
            refused_unchanged(&before);
    }
    if (rc == XMC_EAGAIN)
        rc = xmc_map_sg(cache, segs, n, flags, tag, (void **)out);
    TRACE("map_sg(%zu segments, %u) tag %" PRIu64 " = %d\n", n, flags, tag, rc);
    EXPECT(xmc_stats_get(cache, &after) == XMC_OK);
    if (!ok_args) {
        EXPECT(rc == XMC_EINVAL);
        EXPECT(memcmp(&before, &after, sizeof(after)) == 0);
    }
    if (rc != XMC_OK) {
        if (sure)
            FAIL("map_sg of %zu segments sure to map: %s", n, xmc_strerror(rc));
        EXPECT(rc == XMC_EINVAL || rc == XMC_EMAP || rc == XMC_EOVERFLOW);
        for (size_t i = 0; i < nseg; i++)
            EXPECT(out[i] == (uint8_t *)&segs);
        if (after.hits > before.hits + 1 || after.misses > before.misses + 3 ||
            after.remaps - before.remaps > after.misses - before.misses)
            FAIL("a refused batch moved hits %" PRIu64 " -> %" PRIu64 ", misses %" PRIu64
                 " -> %" PRIu64, before.hits, after.hits, before.misses, after.misses);
        EXPECT(after.locked == before.locked && after.dma_locked == before.dma_locked);
        return; /* run() then checks that the held mappings are as they were */
    }
    for (size_t i = 0; i < n; i++) {
        bool v = valid(segs[i].paddr, segs[i].size);
        uint64_t back;

        if (!v) {
            translate_model(segs[i].paddr, &trc);
            EXPECT(dummy_ever || (translate_on && trc == XMC_OK));
        }
        back = check_pointer(out[i], segs[i].paddr, segs[i].size, v, tps[i]);
        hold_add(out[i], back, segs[i].size, tag, flags & XMC_DMA);
    }
}

/*
 * Unlock a batch of held mappings sharing one tag (a map_sg batch's, or a
 * single one's), sometimes one too many times or with a foreign pointer: it
 * succeeds only when each address has a record per mention, and then drops
 * the newest ones, as that many xmc_unlock_tag calls would.
 */
static void op_unlock_sg(void)
{
    uint8_t *addrs[SG_OPS];
    size_t n = 1 + get8() % SG_OPS, pick[SG_OPS];
    uint64_t tag;
    bool ok = true, nowait;
    int rc;

    if (!nheld)
        return;
    tag = hold[get8() % nheld].tag;
    for (size_t i = 0; i < n; i++) {
        uint8_t sel = get8();
        size_t h = (size_t)get8() % nheld;

        addrs[i] = sel < 16 ? gen_ptr() : hold[h].ptr;
    }
    /* The model: each mention takes the newest unpicked record at its address. */
    for (size_t i = 0; i < n && ok; i++) {
        long found = -1;
        for (size_t j = nheld; j-- > 0 && found < 0;) {
            bool taken = false;
            for (size_t k = 0; k < i; k++)
                taken |= pick[k] == j;
            if (!taken && hold[j].ptr == addrs[i] && hold[j].tag == tag)
                found = (long)j;
        }
        ok = found >= 0;
        pick[i] = (size_t)found;
    }
    nowait = hot_calls++ & 1;
    rc = nowait ? xmc_unlock_sg_nowait(cache, (void *const *)addrs, n, tag) : XMC_EAGAIN;
    if (rc == XMC_EAGAIN) { /* a grant cache leaves its unlocks to the waiting call */
        EXPECT(grants || !nowait);
        rc = xmc_unlock_sg(cache, (void *const *)addrs, n, tag);
    }
    TRACE("unlock_sg(%zu addresses) tag %" PRIu64 " = %d\n", n, tag, rc);
    if (!ok) {
        EXPECT(rc == XMC_ENOENT); /* and run() checks that nothing was unlocked */
        return;
    }
    EXPECT(rc == XMC_OK);
    for (size_t i = n; i-- > 0;) { /* forget them, highest index first */
        size_t top = 0;
        for (size_t k = 0; k < n; k++)
            if (pick[k] != SIZE_MAX && (pick[top] == SIZE_MAX || pick[k] > pick[top]))
                top = k;
        forget(pick[top]);
        pick[top] = SIZE_MAX;
    }
}

/* Under grant rules an entry lives only while locked: no more entries than
 * locked mappings, and each backend mapping is a live entry. */
static void check_grant_entries(void)
{
    xmc_stats st;

    EXPECT(xmc_stats_get(cache, &st) == XMC_OK);
    EXPECT(st.entries <= nheld && st.remaps == 0);
    EXPECT(dummy_ever ? ntrack <= st.entries : ntrack == st.entries);
}

static void run(void)
{
    while (in_pos < in_len) {
        uint8_t op = get8();

        TRACE("op %u\n", op % 20u);
        maps_fresh = false; /* this op may map or unmap */
        switch (op % 20) {
        case 0: op_map(0); break;
        case 1: op_map_sg(); break;
        case 2: op_map(XMC_LOCK); break;
        case 3: op_map(XMC_LOCK | XMC_DMA); break;
        case 4: op_map(get8() & 7); break;
        case 5: op_unlock(false); break;
        case 6: op_unlock(true); break;
        case 7: op_unlock_foreign(); break;
        case 8: op_ram_addr(); break;
        case 9: op_unlock_sg(); break;
        case 10: op_invalidate(); break;
        case 11: op_replace(); break;
        case 12: op_copy(false); break;
        case 13: op_copy(true); break;
        case 14: op_held_write(); break;
        case 15: op_trace(); break;
        case 16:
            dummy_on = !dummy_on;
            dummy_ever |= dummy_on;
            EXPECT(xmc_cache_set_dummy(cache, dummy_on) == XMC_OK);
            break;
        case 17:
            lock_limit = get8() % 6;
            EXPECT(xmc_cache_set_lock_limit(cache, lock_limit) == XMC_OK);
            break;
        case 18: check_ram(); break;
        default: {
            xmc_stats st;
            EXPECT(xmc_stats_get(cache, &st) == XMC_OK);
            EXPECT(st.hits + st.misses >= st.remaps);
            break;
        }
        }
        check_records();
        if (grants)
            check_grant_entries();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t h0, h1, h2;
    xmc_stats st;

    tracing = getenv("XMC_FUZZ_TRACE") != NULL;
    in = data;
    in_len = size;
    in_pos = 0;
    h0 = get8();
    h1 = get8();
    h2 = get8();
    shift = 12 + h0 % 3;
    bucket = UINT64_C(1) << shift;
    max_size = (1 + (h0 >> 2) % 8) * bucket;
    lock_limit = h1 & 0x80 ? UINT32_MAX : 1 + h1 % 4;
    translate_on = h1 & 0x40;
    free_locked = h1 & 0x20; /* end with xmc_cache_free on locked mappings */
    grants = (h1 & 0x1c) == 0x1c; /* no older seed sets all three bits */
    if (grants) {
        shift = 12;
        bucket = PAGE;
        max_size = (1 + (h0 >> 2) % 8) * bucket;
    }
    TRACE("shift %u, max_size %#" PRIx64 ", lock limit %u, translate %d, grants %d, hole2 page %" PRIu64
          "\n", shift, max_size, lock_limit, translate_on, grants, (uint64_t)(h2 % RAM_PAGES));
    dummy_on = dummy_ever = trace_on = false;
    hole2_lo = (h2 % RAM_PAGES) * PAGE;
    hole2_hi = hole2_lo + (1 + (h2 >> 6)) * PAGE;
    nheld = 0;
    next_tag = 1;
    ntrack = 0;

    if (!initial_done) { /* per byte, this loop is slow under coverage */
        for (uint64_t i = 0; i < RAM_SIZE; i++)
            initial[i] = (uint8_t)(i * 13 + (i >> 12) + 1);
        initial_done = true;
    }
    memcpy(shadow, initial, RAM_SIZE);
    EXPECT(xmc_ram_new(RAM_SIZE, &ram) == XMC_OK);
    EXPECT(xmc_ram_write(ram, 0, shadow, RAM_SIZE) == XMC_OK);
    EXPECT(xmc_ram_add_hole(ram, HOLE_LO, HOLE_HI) == XMC_OK);
    EXPECT(xmc_ram_add_hole(ram, hole2_lo, hole2_hi) == XMC_OK);
    rb = xmc_ram_backend(ram);
    tracked = (xmc_backend){ .opaque = rb->opaque, .map = tr_map, .unmap = tr_unmap };
    EXPECT(xmc_cache_new(&tracked, shift, max_size, &cache) == XMC_OK);
    EXPECT(xmc_cache_set_lock_limit(cache, lock_limit) == XMC_OK);
    if (translate_on)
        EXPECT(xmc_cache_set_translate(cache, translate, NULL) == XMC_OK);
    if (grants)
        EXPECT(xmc_cache_set_grants(cache, true) == XMC_OK);

    run();
    if (grants) { /* the rules cannot change once the cache has mapped */
        EXPECT(xmc_stats_get(cache, &st) == XMC_OK);
        EXPECT(xmc_cache_set_grants(cache, false) == (st.misses ? XMC_EINVAL : XMC_OK));
        EXPECT(xmc_cache_set_grants(cache, true) == XMC_OK);
    }

    if (free_locked) { /* the cache goes with mappings still locked */
        xmc_cache_free(cache);
        if (!dummy_ever)
            check_no_guest_mapping();
        xmc_ram_free(ram);
        return 0;
    }
    /* Unlock everything, invalidate: nothing may stay mapped. */
    while (nheld) {
        uint64_t tag;
        long i = newest_at(hold[nheld - 1].ptr);
        EXPECT(xmc_unlock(cache, hold[i].ptr, &tag) == XMC_OK && tag == hold[i].tag);
        forget((size_t)i);
    }
    check_records();
    check_ram();
    if (grants) { /* the last unlocks unmapped every entry already */
        EXPECT(xmc_stats_get(cache, &st) == XMC_OK);
        EXPECT(st.entries == 0 && ntrack == 0);
    }
    EXPECT(xmc_invalidate(cache, NULL, NULL) == XMC_OK);
    EXPECT(xmc_stats_get(cache, &st) == XMC_OK);
    EXPECT(st.entries == 0 && st.mapped_bytes == 0 && st.locked == 0);
    /* Backend mappings the cache mapped over (dummy, blanking) and then
     * munmapped itself stay in the table; none may still map guest RAM. */
    if (ntrack)
        check_no_guest_mapping();
    xmc_cache_free(cache);
    xmc_ram_free(ram);
    return 0;
}
