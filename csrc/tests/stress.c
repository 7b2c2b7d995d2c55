/*
 * stress.c - many threads against one small cache, with an invalidator.
 *
 * NTHREADS workers share a cache of 16 KiB buckets and only four slots, so
 * every request collides.  Guest RAM [0, 256 KiB) is divided by page among the
 * workers (page p belongs to worker p % NTHREADS, so each bucket serves four
 * of them); each worker writes its own patterns into its own pages, through
 * locked mappings and through xmc_write, and checks every byte it reads back
 * against its private shadow.  Locked mappings carry a tag that encodes
 * their guest address; a concurrent invalidator thread invalidates, lists
 * records, moves entries of a constant region around with xmc_replace (the
 * workers' own entries are not replaced under their feet: remapping memory a
 * thread is writing is a race by definition) and checks every record it
 * sees against its tag, and switches a trace hook on and off.  Reads through a
 * translated hole exercise the callback, which runs with the cache mutex
 * dropped (so the hook can come or go in the middle of a call).  The lock limit is small, so
 * XMC_EOVERFLOW happens too, to batches (xmc_map_sg) as well, which must
 * then hold nothing; batches are unlocked whole (xmc_unlock_sg), once in a
 * while with an address too many, which must unlock nothing.  Half the hot calls go the way the Python
 * binding makes them: the _nowait twin first, the waiting call only when it
 * answers XMC_EAGAIN (the mutex busy, or a miss), which must change nothing.
 *
 * The run is cut into rounds; between rounds every thread stops at a barrier
 * and the main thread checks the invariants that need quiet: stats.locked ==
 * records listed == mappings the workers hold, dma_locked likewise, every
 * record matches a held mapping exactly, and guest RAM equals the shadow.
 *
 * Hitters do nothing but hits (unlocked, size 0, mostly the lock-free hit)
 * of a few buckets at a time, under the feet of the workers' remaps, the
 * invalidator's invalidates, replaces and trace switches, and of its forks:
 * now and then it forks, and the child's hit must answer at once, a hit only
 * if the cache it inherited is whole (XMC_EFORKED otherwise, for every call).
 * A hit is never dereferenced while others run (what it returns is valid
 * until the next call that may remap, which is any other thread's); between
 * rounds the main thread checks that hits return the guest's bytes.
 *
 * Last, the workers hammer the cache while the main thread closes it: every
 * call must end in a documented code, XMC_ECLOSED from then on.
 *
 * Usage: stress [total-worker-ops] (default 160000).  `make tsan` runs it
 * under ThreadSanitizer, `make stress` under AddressSanitizer.
 */
#define _GNU_SOURCE 1

#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "xenmapcache.h"

#define NTHREADS 8
#define NHITTERS 2
#define FORKS_PER_ROUND 4
#define ROUNDS 10
#define SHIFT 14
#define BUCKET (UINT64_C(1) << SHIFT)
#define PAGE UINT64_C(4096)
#define OWNED (UINT64_C(256) << 10)         /* [0, 256 KiB): the workers' pages */
#define ALIAS OWNED                         /* [256 KiB, +64 KiB): constant data */
#define HOLE (UINT64_C(3) << 20)            /* [3 MiB, +64 KiB): translated */
#define ALIAS_LEN (UINT64_C(64) << 10)
#define RAM_SIZE (UINT64_C(4) << 20)
#define MAX_HELD 4
#define LOCK_LIMIT 3

#define FAIL(...)                                                             \
    do {                                                                      \
        fprintf(stderr, "stress: FAIL at %s:%d: ", __FILE__, __LINE__);       \
        fprintf(stderr, __VA_ARGS__);                                         \
        fputc('\n', stderr);                                                  \
        _exit(1);                                                             \
    } while (0)
#define EXPECT(cond)                                                          \
    do {                                                                      \
        if (!(cond))                                                          \
            FAIL("%s", #cond);                                                \
    } while (0)

typedef struct held {
    uint8_t *ptr;
    uint64_t paddr, size, tag;
    bool dma;
} held;

typedef struct worker {
    pthread_t th;
    unsigned id;
    uint64_t rng;
    unsigned long ops_per_round;
    held held[MAX_HELD];
    size_t nheld;
    unsigned long ops, overflows, translated, nowait_done, batches;
    uint64_t next_tag;
} worker;

/* rc = call, or half the time its _nowait twin first, as the binding does. */
#define HOT_CALL(w, rc, nowait_call, call)                                    \
    do {                                                                      \
        (rc) = (rnd(&(w)->rng) & 1) ? (nowait_call) : XMC_EAGAIN;             \
        if ((rc) == XMC_EAGAIN)                                               \
            (rc) = (call);                                                    \
        else                                                                  \
            (w)->nowait_done++;                                               \
    } while (0)

static xmc_cache *cache;
static xmc_ram *ram;
static uint8_t *shadow; /* OWNED bytes; byte b is touched only by its owner */
static worker workers[NTHREADS];
static pthread_barrier_t quiet, resume;
static atomic_uint finished; /* workers done with the round */
static atomic_bool over;
static unsigned long inv_ops, invalidations, replaces, records_seen, forks;
static atomic_ulong hits_seen, hits_refused;

static uint64_t rnd(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static uint8_t constant(uint64_t p)
{
    return (uint8_t)(p * 131 + (p >> 9) + 7);
}

/* tag: worker id in the top byte, a counter, and the guest address. */
static uint64_t make_tag(worker *w, uint64_t paddr)
{
    return ((uint64_t)w->id << 56) | ((w->next_tag++ & 0xffff) << 32) | paddr;
}

static uint64_t tag_paddr(uint64_t tag)
{
    return tag & 0xffffffffu;
}

/* A batch's mappings share its tag, which holds the first one's address. */
#define BATCH_TAG (UINT64_C(1) << 48)

/* A random byte range inside one of w's pages. */
static void own_range(worker *w, uint64_t *paddr, uint64_t *len)
{
    uint64_t pages = OWNED / PAGE / NTHREADS;
    uint64_t page = (rnd(&w->rng) % pages) * NTHREADS + w->id;
    uint64_t off = rnd(&w->rng) % PAGE;

    *paddr = page * PAGE + off;
    *len = 1 + rnd(&w->rng) % (PAGE - off);
    if (*len > 512)
        *len = 1 + *len % 512;
}

static void fill(worker *w, uint8_t *dst, uint64_t paddr, uint64_t len)
{
    uint8_t seed = (uint8_t)rnd(&w->rng);

    for (uint64_t i = 0; i < len; i++) {
        dst[i] = (uint8_t)(seed + i * 3 + w->id);
        shadow[paddr + i] = dst[i];
    }
}

static void verify(const uint8_t *src, uint64_t paddr, uint64_t len, const char *how)
{
    for (uint64_t i = 0; i < len; i++)
        if (src[i] != shadow[paddr + i])
            FAIL("%s: guest %#" PRIx64 " holds %#x, expected %#x", how, paddr + i,
                 src[i], shadow[paddr + i]);
}

static void drop_held(worker *w, size_t i)
{
    held *h = &w->held[i];
    uint8_t *ptr = h->ptr;
    uint64_t tag = 0;
    int rc;

    verify(h->ptr, h->paddr, h->size, "locked mapping before unlock");
    if (rnd(&w->rng) & 1) {
        HOT_CALL(w, rc, xmc_unlock_tag_nowait(cache, h->ptr, h->tag),
                 xmc_unlock_tag(cache, h->ptr, h->tag));
        tag = h->tag;
    } else {
        rc = xmc_unlock(cache, h->ptr, &tag); /* newest record at that address */
    }
    if (rc != XMC_OK)
        FAIL("unlock: %s", xmc_strerror(rc));
    for (size_t j = 0; j < w->nheld; j++)
        if (w->held[j].tag == tag && w->held[j].ptr == ptr) {
            w->held[j] = w->held[--w->nheld];
            return;
        }
    FAIL("unlock returned tag %#" PRIx64 " that worker %u does not hold", tag, w->id);
}

static void op_lock(worker *w)
{
    uint64_t paddr, len, back;
    bool dma = rnd(&w->rng) & 1;
    void *p;
    held *h;
    int rc;

    if (w->nheld == MAX_HELD)
        drop_held(w, 0);
    own_range(w, &paddr, &len);
    h = &w->held[w->nheld];
    h->tag = make_tag(w, paddr);
    HOT_CALL(w, rc, xmc_map_nowait(cache, paddr, len, XMC_LOCK | (dma ? XMC_DMA : 0), h->tag, &p),
             xmc_map(cache, paddr, len, XMC_LOCK | (dma ? XMC_DMA : 0), h->tag, &p));
    if (rc == XMC_EOVERFLOW) {
        w->overflows++;
        return;
    }
    if (rc != XMC_OK)
        FAIL("locked map of %#" PRIx64 "+%#" PRIx64 ": %s", paddr, len, xmc_strerror(rc));
    *h = (held){ .ptr = p, .paddr = paddr, .size = len, .tag = h->tag, .dma = dma };
    w->nheld++;
    verify(h->ptr, paddr, len, "fresh locked mapping");
    fill(w, h->ptr, paddr, len);
    HOT_CALL(w, rc, xmc_ram_addr_nowait(cache, h->ptr + len - 1, &back),
             xmc_ram_addr(cache, h->ptr + len - 1, &back));
    if (rc != XMC_OK || back != paddr + len - 1)
        FAIL("ram_addr of a locked mapping's last byte");
}

/* Up to three of w's ranges (distinct addresses) locked by one xmc_map_sg. */
static void op_batch(worker *w)
{
    size_t n = 1 + rnd(&w->rng) % 3;
    bool dma = rnd(&w->rng) & 1;
    xmc_sg segs[3];
    void *out[3];
    uint64_t tag;
    int rc;

    while (w->nheld + n > MAX_HELD)
        drop_held(w, 0);
    for (size_t i = 0; i < n; i++) {
        bool again;
        do {
            own_range(w, &segs[i].paddr, &segs[i].size);
            again = false;
            for (size_t j = 0; j < i; j++)
                again |= segs[j].paddr == segs[i].paddr;
        } while (again);
    }
    tag = make_tag(w, segs[0].paddr) | BATCH_TAG;
    HOT_CALL(w, rc, xmc_map_sg_nowait(cache, segs, n, dma ? XMC_DMA : 0, tag, out),
             xmc_map_sg(cache, segs, n, dma ? XMC_DMA : 0, tag, out));
    if (rc == XMC_EOVERFLOW) { /* all or nothing: check_quiet() sees no record */
        w->overflows++;
        return;
    }
    if (rc != XMC_OK)
        FAIL("batch of %zu: %s", n, xmc_strerror(rc));
    for (size_t i = 0; i < n; i++) {
        held *h = &w->held[w->nheld++];

        *h = (held){ .ptr = out[i], .paddr = segs[i].paddr, .size = segs[i].size,
                     .tag = tag, .dma = dma };
        verify(h->ptr, h->paddr, h->size, "fresh batch mapping");
        fill(w, h->ptr, h->paddr, h->size);
    }
    w->batches++;
}

/* Unlock every mapping of one of w's batches with one xmc_unlock_sg. */
static void op_unlock_batch(worker *w)
{
    void *addrs[MAX_HELD + 1];
    size_t n = 0;
    uint64_t tag = 0;
    int rc;

    for (size_t i = 0; i < w->nheld && !tag; i++)
        if (w->held[i].tag & BATCH_TAG)
            tag = w->held[i].tag;
    if (!tag)
        return;
    for (size_t i = 0; i < w->nheld; i++)
        if (w->held[i].tag == tag) {
            verify(w->held[i].ptr, w->held[i].paddr, w->held[i].size, "batch before unlock");
            addrs[n++] = w->held[i].ptr;
        }
    if (rnd(&w->rng) % 8 == 0) { /* one address too many: nothing is unlocked */
        addrs[n] = addrs[0];
        rc = xmc_unlock_sg(cache, addrs, n + 1, tag);
        if (rc != XMC_ENOENT)
            FAIL("unlock_sg with an address too many: %s", xmc_strerror(rc));
    }
    HOT_CALL(w, rc, xmc_unlock_sg_nowait(cache, addrs, n, tag),
             xmc_unlock_sg(cache, addrs, n, tag));
    if (rc != XMC_OK)
        FAIL("unlock_sg of %zu: %s", n, xmc_strerror(rc));
    for (size_t i = w->nheld; i-- > 0;)
        if (w->held[i].tag == tag)
            w->held[i] = w->held[--w->nheld];
}

static void op_copy(worker *w, bool write)
{
    uint8_t buf[512];
    uint64_t paddr, len;
    int rc;

    own_range(w, &paddr, &len);
    if (write) {
        fill(w, buf, paddr, len);
        HOT_CALL(w, rc, xmc_write_nowait(cache, paddr, buf, len),
                 xmc_write(cache, paddr, buf, len));
    } else {
        HOT_CALL(w, rc, xmc_read_nowait(cache, paddr, buf, len),
                 xmc_read(cache, paddr, buf, len));
    }
    if (rc != XMC_OK)
        FAIL("%s %#" PRIx64 ": %s", write ? "write" : "read", paddr, xmc_strerror(rc));
    if (!write)
        verify(buf, paddr, len, "xmc_read");
}

static void op_translated_read(worker *w)
{
    uint8_t buf[256];
    uint64_t off = rnd(&w->rng) % (ALIAS_LEN - sizeof(buf));
    int rc = xmc_read(cache, HOLE + off, buf, sizeof(buf));

    if (rc != XMC_OK)
        FAIL("translated read: %s", xmc_strerror(rc));
    for (size_t i = 0; i < sizeof(buf); i++)
        if (buf[i] != constant(ALIAS + off + i))
            FAIL("translated read at hole + %#" PRIx64, off + i);
    w->translated++;
}

static void op_probe(worker *w)
{
    uint64_t paddr = rnd(&w->rng) % (RAM_SIZE + RAM_SIZE / 4), back;
    void *p;
    int rc;

    HOT_CALL(w, rc, xmc_map_nowait(cache, paddr, 0, 0, 0, &p),
             xmc_map(cache, paddr, 0, 0, 0, &p)); /* never dereferenced */

    if (rc != XMC_OK && rc != XMC_EMAP)
        FAIL("unlocked map of %#" PRIx64 ": %s", paddr, xmc_strerror(rc));
    if (w->nheld) {
        held *h = &w->held[rnd(&w->rng) % w->nheld];
        uint64_t k = rnd(&w->rng) % h->size;

        if (xmc_ram_addr(cache, h->ptr + k, &back) != XMC_OK || back != h->paddr + k)
            FAIL("ram_addr of an interior pointer");
    }
}

static void *work(void *arg)
{
    worker *w = arg;

    for (int round = 0; round < ROUNDS; round++) {
        for (unsigned long i = 0; i < w->ops_per_round; i++) {
            unsigned r = (unsigned)(rnd(&w->rng) % 100);

            if (r < 24)
                op_lock(w);
            else if (r < 30)
                op_batch(w);
            else if (r < 33)
                op_unlock_batch(w);
            else if (r < 45) {
                if (w->nheld)
                    drop_held(w, rnd(&w->rng) % w->nheld);
            } else if (r < 65)
                op_copy(w, true);
            else if (r < 85)
                op_copy(w, false);
            else if (r < 90)
                op_translated_read(w);
            else
                op_probe(w);
            if (++w->ops % 8 == 0)
                sched_yield(); /* let the invalidator in: mutexes are unfair */
        }
        if (round == ROUNDS - 1)
            while (w->nheld)
                drop_held(w, w->nheld - 1);
        atomic_fetch_add(&finished, 1);
        pthread_barrier_wait(&quiet);
        pthread_barrier_wait(&resume);
    }
    return NULL;
}

/* A guest address for the hitters: the workers' pages or the constant region. */
static uint64_t hit_target(uint64_t *rng)
{
    return rnd(rng) % 2 ? rnd(rng) % OWNED : ALIAS + rnd(rng) % ALIAS_LEN;
}

/* A burst of hits of one bucket; the answer must be a hit at paddr's offset
 * in the page, or a documented refusal (a miss, without waiting). */
static void hit_burst(uint64_t *rng)
{
    uint64_t paddr = hit_target(rng);

    for (int i = 0; i < 64; i++) {
        uint64_t at = (paddr & ~(BUCKET - 1)) + (paddr + (uint64_t)i * 97) % BUCKET;
        void *p = NULL;
        int rc = (i % 4) ? xmc_map_nowait(cache, at, 0, 0, 0, &p)
                         : xmc_map(cache, at, 0, 0, 0, &p);

        if (rc == XMC_OK && ((uintptr_t)p & (PAGE - 1)) != (at & (PAGE - 1)))
            FAIL("hit of %#" PRIx64 " at %p: the wrong page offset", at, p);
        if (rc != XMC_OK && rc != XMC_EAGAIN)
            FAIL("hit of %#" PRIx64 ": %s", at, xmc_strerror(rc));
        atomic_fetch_add_explicit(rc == XMC_OK ? &hits_seen : &hits_refused, 1,
                                  memory_order_relaxed);
    }
    sched_yield();
}

/* Hit until the workers are done with the round, then wait for the next. */
static void *hitter(void *arg)
{
    uint64_t rng = 0xC0FFEEull * (uintptr_t)arg + 1;

    for (;;) {
        while (atomic_load(&finished) < NTHREADS)
            hit_burst(&rng);
        pthread_barrier_wait(&quiet);
        pthread_barrier_wait(&resume);
        if (atomic_load(&over))
            return NULL;
    }
}

/* Quiet: a hit, and the same hit again (the lock-free one), return the
 * guest's bytes and resolve back to their address. */
static void check_hits(uint64_t *rng)
{
    for (int k = 0; k < 32; k++) {
        uint64_t paddr = hit_target(rng), back;
        uint8_t *p, *q;

        EXPECT(xmc_map(cache, paddr, 0, 0, 0, (void **)&p) == XMC_OK);
        EXPECT(xmc_map_nowait(cache, paddr, 0, 0, 0, (void **)&q) == XMC_OK && q == p);
        EXPECT(xmc_ram_addr(cache, p, &back) == XMC_OK && back == paddr);
        if (paddr < OWNED ? *p != shadow[paddr] : *p != constant(paddr))
            FAIL("a hit of %#" PRIx64 " reads %#x", paddr, *p);
    }
}

/* Fork under everyone's feet; the child hits once and says what it found. */
static void fork_check(uint64_t *rng)
{
    uint64_t paddr = hit_target(rng);
    int status;
    pid_t pid = fork();

    if (pid == 0) {
        xmc_stats st;
        void *p;
        int rc = xmc_map_nowait(cache, paddr, 0, 0, 0, &p);
        int src = xmc_stats_get(cache, &st);

        /* Whole (the mutex was free at fork): it answers; else every call
         * says XMC_EFORKED, the hit included. */
        if (src == XMC_OK ? rc != XMC_OK && rc != XMC_EAGAIN
                          : src != XMC_EFORKED || rc != XMC_EFORKED)
            _exit(3);
        _exit(0);
    }
    EXPECT(pid > 0);
    EXPECT(waitpid(pid, &status, 0) == pid);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        FAIL("the forked child's hit answered wrongly (status %#x)", status);
    forks++;
}

static void check_record(const xmc_record *r, bool want_dma)
{
    EXPECT(r->paddr == tag_paddr(r->tag) || (r->tag & BATCH_TAG));
    EXPECT((r->tag >> 56) < NTHREADS);
    EXPECT(r->paddr % PAGE + r->size <= PAGE);
    EXPECT((r->paddr / PAGE) % NTHREADS == (r->tag >> 56));
    if (want_dma)
        EXPECT(r->dma);
}

/*
 * The invalidator switches this trace hook on and off under the workers'
 * feet (a translate callback runs with the mutex dropped, so the hook can
 * come and go in the middle of a call).  It runs under the cache's mutex:
 * calling back into the cache must be refused, not wait for itself.
 */
static atomic_ulong trace_events;

static int on_event(void *opaque, const xmc_event *ev)
{
    xmc_stats st;

    EXPECT(opaque == &trace_events);
    EXPECT(ev->struct_size == sizeof(*ev) && ev->kind >= XMC_EV_HIT &&
           ev->kind <= XMC_EV_REFUSED);
    if (atomic_fetch_add(&trace_events, 1) % 64 == 0)
        EXPECT(xmc_stats_get(cache, &st) == XMC_EREENTER);
    return 0;
}

static void *invalidator(void *arg)
{
    bool traced = false;
    uint64_t rng = 0x1234567;
    xmc_record *recs;
    xmc_stats st;
    size_t n;
    void *p;
    int rc;

    (void)arg;
    for (int round = 0;; round++) {
        while (atomic_load(&finished) < NTHREADS) {
            if (rnd(&rng) % 256 == 0 && forks < FORKS_PER_ROUND * (unsigned long)(round + 1))
                fork_check(&rng); /* a few per round: fork is slow under TSan */
            switch (rnd(&rng) % 5) {
            case 0:
                rc = xmc_invalidate(cache, &recs, &n);
                if (rc != XMC_OK)
                    FAIL("invalidate: %s", xmc_strerror(rc));
                for (size_t i = 0; i < n; i++)
                    check_record(&recs[i], true);
                records_seen += n;
                xmc_records_free(recs);
                invalidations++;
                break;
            case 1:
                rc = xmc_locked(cache, &recs, &n);
                if (rc != XMC_OK)
                    FAIL("locked: %s", xmc_strerror(rc));
                for (size_t i = 0; i < n; i++)
                    check_record(&recs[i], false);
                records_seen += n;
                xmc_records_free(recs);
                break;
            case 2: { /* move an entry of the constant region to another */
                uint64_t from = ALIAS + (rnd(&rng) % (ALIAS_LEN / BUCKET)) * BUCKET;
                uint64_t to = ALIAS + (rnd(&rng) % (ALIAS_LEN / BUCKET)) * BUCKET;

                rc = xmc_replace(cache, from, to, 0, &p);
                if (rc != XMC_OK && rc != XMC_ENOENT)
                    FAIL("replace: %s", xmc_strerror(rc));
                replaces += rc == XMC_OK;
                break;
            }
            case 3:
                traced = !traced;
                EXPECT(xmc_cache_set_trace(cache, traced ? on_event : NULL, &trace_events) ==
                       XMC_OK);
                break;
            default:
                if (xmc_stats_get(cache, &st) != XMC_OK)
                    FAIL("stats");
                EXPECT(st.dma_locked <= st.locked);
                EXPECT(st.mapped_bytes % BUCKET == 0);
                EXPECT(st.mapped_bytes >= st.entries * BUCKET);
                break;
            }
            inv_ops++;
        }
        pthread_barrier_wait(&quiet);
        pthread_barrier_wait(&resume);
        if (atomic_load(&over))
            return NULL;
    }
}

/* Between rounds: nothing runs but us. */
static void check_quiet(uint64_t *rng)
{
    size_t want = 0, want_dma = 0, n;
    uint8_t *buf = malloc(OWNED);
    xmc_record *recs;
    xmc_stats st;

    EXPECT(buf);
    for (unsigned t = 0; t < NTHREADS; t++) {
        want += workers[t].nheld;
        for (size_t i = 0; i < workers[t].nheld; i++)
            want_dma += workers[t].held[i].dma;
    }
    EXPECT(xmc_stats_get(cache, &st) == XMC_OK);
    EXPECT(xmc_locked(cache, &recs, &n) == XMC_OK);
    if (st.locked != want || n != want || st.dma_locked != want_dma)
        FAIL("stats.locked %" PRIu64 ", %zu records, workers hold %zu (dma %" PRIu64
             " vs %zu)", st.locked, n, want, st.dma_locked, want_dma);
    for (size_t i = 0; i < n; i++) {
        worker *w = &workers[recs[i].tag >> 56];
        bool found = false;

        check_record(&recs[i], false);
        for (size_t j = 0; j < w->nheld; j++) {
            const held *h = &w->held[j];
            if (h->tag == recs[i].tag && (uintptr_t)h->ptr == recs[i].address) {
                EXPECT(h->paddr == recs[i].paddr && h->size == recs[i].size);
                EXPECT(h->dma == recs[i].dma);
                found = true;
            }
        }
        EXPECT(found);
    }
    xmc_records_free(recs);
    EXPECT(xmc_ram_read(ram, 0, buf, OWNED) == XMC_OK);
    for (uint64_t i = 0; i < OWNED; i++)
        if (buf[i] != shadow[i])
            FAIL("guest RAM at %#" PRIx64 " is %#x, shadow %#x", i, buf[i], shadow[i]);
    free(buf);
    check_hits(rng);
}

static int alias(void *opaque, uint64_t paddr, uint64_t size, uint64_t *out)
{
    (void)opaque;
    (void)size;
    *out = paddr >= HOLE && paddr - HOLE < ALIAS_LEN ? paddr - HOLE + ALIAS : paddr;
    return XMC_OK;
}

/*
 * The close race: the workers keep calling (never touching mapped memory,
 * which close unmaps under them) while the main thread closes the cache.
 * Every call must end in a documented code, and once a worker has seen
 * XMC_ECLOSED every later call must say so too.
 */
static void *hammer(void *arg)
{
    worker *w = arg;
    uint8_t buf[64];
    bool closed = false;

    for (unsigned long i = 0;; i++) {
        uint64_t paddr, len, tag = 0;
        void *p = NULL;
        int rc;

        own_range(w, &paddr, &len);
        switch (i % 6) {
        case 5:
            rc = xmc_map(cache, paddr, 0, 0, 0, &p); /* the hit, mostly lock-free */
            break;
        case 0:
            rc = xmc_map(cache, paddr, len, XMC_LOCK | XMC_DMA, 0, &p);
            if (rc == XMC_OK) {
                int urc = xmc_unlock(cache, p, &tag);
                if (urc != XMC_OK && urc != XMC_ECLOSED)
                    FAIL("close race: unlock: %s", xmc_strerror(urc));
            }
            break;
        case 1:
            rc = xmc_read(cache, HOLE + paddr % (ALIAS_LEN - sizeof(buf)), buf, sizeof(buf));
            break;
        case 2:
            rc = xmc_write(cache, paddr, buf, len < sizeof(buf) ? len : sizeof(buf));
            break;
        case 3: {
            xmc_sg seg = { paddr, len };
            rc = xmc_map_sg(cache, &seg, 1, XMC_DMA, 0, &p);
            if (rc == XMC_OK) {
                int urc = xmc_unlock_sg(cache, &p, 1, 0);
                if (urc != XMC_OK && urc != XMC_ECLOSED)
                    FAIL("close race: unlock_sg: %s", xmc_strerror(urc));
            }
            break;
        }
        default:
            rc = xmc_invalidate(cache, NULL, NULL);
            break;
        }
        if (rc != XMC_OK && rc != XMC_EOVERFLOW && rc != XMC_ECLOSED)
            FAIL("close race: %s", xmc_strerror(rc));
        if (closed && rc != XMC_ECLOSED)
            FAIL("close race: a call succeeded after XMC_ECLOSED");
        if (rc == XMC_ECLOSED) {
            if (closed)
                return NULL;
            closed = true;
        }
    }
}

static void close_race(void)
{
    struct timespec pause = { 0, 20 * 1000 * 1000 };
    xmc_stats st;

    for (unsigned t = 0; t < NTHREADS; t++)
        EXPECT(pthread_create(&workers[t].th, NULL, hammer, &workers[t]) == 0);
    nanosleep(&pause, NULL);
    EXPECT(xmc_cache_close(cache) == XMC_OK);
    for (unsigned t = 0; t < NTHREADS; t++)
        EXPECT(pthread_join(workers[t].th, NULL) == 0);
    EXPECT(xmc_stats_get(cache, &st) == XMC_ECLOSED);
}

static double now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    unsigned long total = argc > 1 ? strtoul(argv[1], NULL, 10) : 160000;
    unsigned long ops = 0, overflows = 0, translated = 0, nowait_done = 0, batches = 0;
    pthread_t inv, hitters[NHITTERS];
    uint64_t rng = 42;
    xmc_stats st;
    double t0 = now();
    uint8_t *init;

    if (total < NTHREADS * ROUNDS)
        total = NTHREADS * ROUNDS;
    EXPECT(xmc_ram_new(RAM_SIZE, &ram) == XMC_OK);
    EXPECT(xmc_ram_add_hole(ram, HOLE, HOLE + ALIAS_LEN) == XMC_OK);
    shadow = malloc(OWNED);
    init = malloc(ALIAS_LEN);
    EXPECT(shadow && init);
    for (uint64_t i = 0; i < OWNED; i++)
        shadow[i] = (uint8_t)(i ^ (i >> 8));
    for (uint64_t i = 0; i < ALIAS_LEN; i++)
        init[i] = constant(ALIAS + i);
    EXPECT(xmc_ram_write(ram, 0, shadow, OWNED) == XMC_OK);
    EXPECT(xmc_ram_write(ram, ALIAS, init, ALIAS_LEN) == XMC_OK);
    free(init);
    EXPECT(xmc_cache_new(xmc_ram_backend(ram), SHIFT, 4 * BUCKET, &cache) == XMC_OK);
    EXPECT(xmc_cache_set_lock_limit(cache, LOCK_LIMIT) == XMC_OK);
    EXPECT(xmc_cache_set_translate(cache, alias, NULL) == XMC_OK);

    EXPECT(pthread_barrier_init(&quiet, NULL, NTHREADS + NHITTERS + 2) == 0);
    EXPECT(pthread_barrier_init(&resume, NULL, NTHREADS + NHITTERS + 2) == 0);
    for (unsigned t = 0; t < NTHREADS; t++) {
        workers[t].id = t;
        workers[t].rng = 0x9E3779B97F4A7C15ull * (t + 1);
        workers[t].ops_per_round = (total + NTHREADS * ROUNDS - 1) / (NTHREADS * ROUNDS);
        EXPECT(pthread_create(&workers[t].th, NULL, work, &workers[t]) == 0);
    }
    EXPECT(pthread_create(&inv, NULL, invalidator, NULL) == 0);
    for (uintptr_t t = 0; t < NHITTERS; t++)
        EXPECT(pthread_create(&hitters[t], NULL, hitter, (void *)t) == 0);
    for (int round = 0; round < ROUNDS; round++) {
        pthread_barrier_wait(&quiet);
        check_quiet(&rng);
        atomic_store(&finished, 0);
        if (round == ROUNDS - 1)
            atomic_store(&over, true);
        pthread_barrier_wait(&resume);
    }
    for (unsigned t = 0; t < NTHREADS; t++) {
        EXPECT(pthread_join(workers[t].th, NULL) == 0);
        ops += workers[t].ops;
        overflows += workers[t].overflows;
        translated += workers[t].translated;
        nowait_done += workers[t].nowait_done;
        batches += workers[t].batches;
    }
    EXPECT(pthread_join(inv, NULL) == 0);
    for (unsigned t = 0; t < NHITTERS; t++)
        EXPECT(pthread_join(hitters[t], NULL) == 0);
    EXPECT(atomic_load(&hits_seen) > 0 && forks > 0);
    EXPECT(nowait_done > 0); /* the _nowait calls were answered, not all refused */
    EXPECT(batches > 0);
    EXPECT(atomic_load(&trace_events) > 0);

    /* Everything unlocked: one invalidate leaves nothing mapped. */
    EXPECT(xmc_stats_get(cache, &st) == XMC_OK && st.locked == 0);
    EXPECT(xmc_invalidate(cache, NULL, NULL) == XMC_OK);
    EXPECT(xmc_stats_get(cache, &st) == XMC_OK);
    EXPECT(st.entries == 0 && st.mapped_bytes == 0);
    close_race();
    printf("stress: %d threads, %lu operations on colliding addresses (%lu lock "
           "overflows, %lu translated reads, %lu answered without waiting, %lu batches), "
           "invalidator: %lu operations, %lu "
           "invalidations, %lu in-place replaces, %lu records checked, %lu trace events, "
           "%lu forks; %d hitters: %lu hits, %lu refused; "
           "hits %" PRIu64 ", misses %" PRIu64 ", remaps %" PRIu64 "; closed under "
           "%d threads; %.1f s\n",
           NTHREADS, ops, overflows, translated, nowait_done, batches, inv_ops, invalidations,
           replaces, records_seen, atomic_load(&trace_events), forks, NHITTERS,
           atomic_load(&hits_seen), atomic_load(&hits_refused), st.hits, st.misses, st.remaps,
           NTHREADS, now() - t0);
    xmc_cache_free(cache);
    xmc_ram_free(ram);
    free(shadow);
    pthread_barrier_destroy(&quiet);
    pthread_barrier_destroy(&resume);
    printf("stress: ok\n");
    return 0;
}
