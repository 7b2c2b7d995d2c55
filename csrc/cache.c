/*
 * cache.c - the mapcache proper.
 *
 * Entries hang off hash slots (index % nr_slots) in doubly linked chains, and
 * every live entry is also on one "live" list, so invalidate costs the number
 * of live entries rather than the number of slots, and in a treap keyed by
 * host address (links inside the entry), so any interior pointer resolves in
 * O(log n).  An entry is one allocation: its page bitmap follows it, and the
 * fields read on every lookup come first.
 * Locked mappings leave records in a hash table keyed by exact host address
 * (O(1) unlock and reverse lookup) that point straight at their entry, and on
 * an age list so they can be listed oldest first.  Records live in one array
 * indexed by 32-bit ids (an id is one multiply away from its record), grown
 * by mremap in steps of 1,024 so growing never copies; a record costs 48
 * bytes and a freed one is reused at once (a disk's FIFO stays in cache).
 *
 * Lock convention: every public xmc_x() takes c->mutex and calls x_locked();
 * helpers without the suffix also expect the caller to hold it.  The one
 * exception is the hit (hit_home, hit_fast), which takes no lock and writes
 * no shared cache line: the last entry is published as a copy, its bucket's
 * guest-physical base and its mapping less that base, under a seqlock whose
 * counter is kept twice: writers, holding the mutex, move pub_gen on before
 * they change the copy and pub_done up to it after; a reader validates what
 * it read by finding pub_gen, read last, equal to pub_done, read first.  The
 * copy, not the entry, is read, so nothing a reader touches is ever freed
 * under it; an entry is unpublished before it is remapped, blanked or
 * unmapped.  Each thread counts its hits in a slot of its own.
 */
#include "xmc_internal.h"

#include <linux/futex.h>
#include <sys/syscall.h>

enum {
    ENTRY_DUMMY = 1u,    /* anonymous memory standing in for guest memory */
    ENTRY_ANON = 2u,     /* unmap with munmap(), not the backend */
    ENTRY_ALLVALID = 4u, /* every page mapped: skip the bitmap */
};

#if defined(__GNUC__)
#define XMC_NOINLINE __attribute__((noinline))
/* Inline even where gcc would not: a record's add, find and drop, once per
 * segment in a batch, where a call's prologue costs as much as the work. */
#define XMC_INLINE inline __attribute__((always_inline))
#define XMC_COLD __attribute__((noinline, cold))
#define XMC_LIKELY(x) __builtin_expect(!!(x), 1)
/* A function whose hit path starts a cache line: it spans two lines of
 * instructions, not three, wherever the linker puts it. */
#define XMC_LINE_ALIGNED __attribute__((aligned(LINE)))
#else
#define XMC_LIKELY(x) (x)
#define XMC_LINE_ALIGNED
#define XMC_COLD
#define XMC_NOINLINE
#define XMC_INLINE inline
#endif

#define BITS_PER_WORD (sizeof(unsigned long) * CHAR_BIT)
#define ERRS_ON_STACK 1024
#define RHASH_MIN_BITS 6
#define REC_STEP 1024u /* the record array grows by this many (48 KiB, 12 pages) */
#define REC_MAX_ID (UINT32_MAX - 1)
#define MAP_NOWAIT 0x80000000u /* internal map flag: XMC_EAGAIN rather than a miss */
#define LINE 64             /* bytes of a cache line */
#define HIT_SLOTS 64        /* threads that can count lock-free hits, per cache */
#define HIT_SLOT_BITS 6     /* HIT_SLOTS = 1 << HIT_SLOT_BITS */
#define HIT_PROBE 4         /* slots a thread's own may be found in */

#ifdef XMC_TESTING
void (*xmc_test_point)(xmc_cache *c, int point);
#endif

typedef struct xmc_entry {
    /* Read by every lookup: the first 32 bytes. */
    uint8_t *vaddr;
    uint64_t index; /* guest address >> bucket shift */
    uint64_t size;  /* bytes mapped, whole buckets */
    uint32_t lock;  /* outstanding locked mappings */
    uint32_t flags;
    struct xmc_entry *next; /* slot chain */
    struct xmc_entry **pprev;
    struct xmc_entry *lnext; /* live list */
    struct xmc_entry *lprev;
    struct xmc_entry *left; /* treap by host address */
    struct xmc_entry *right;
    unsigned long valid[]; /* one bit per page */
} xmc_entry;

/* Links are record ids: 0 is "none", id i is c->recs[i]. */
typedef struct record {
    uintptr_t addr;
    xmc_entry *e;
    uint64_t size;
    uint64_t tag;
    uint32_t hnext; /* hash chain, newest first; free list when unused */
    uint32_t older; /* age list */
    uint32_t newer;
    uint16_t dma;
    uint16_t claimed; /* picked by the xmc_unlock_sg() under way */
} record;

/*
 * The cache's mutex: a word on a futex, in the classic three states (0 free,
 * 1 held, 2 held and maybe waited for).  Taking and giving it back are one
 * atomic instruction each, inline, with no call and no mutex-type dispatch:
 * the fast path is cheaper than an uncontended pthread_mutex_lock/unlock.
 * A waiter spins briefly (the critical sections are tens of ns, unless the
 * backend maps), then sleeps in the kernel.
 */
typedef struct xmc_mutex {
    atomic_uint state;
} xmc_mutex;

static inline bool mutex_try(xmc_mutex *m)
{
    unsigned free_ = 0;

    return atomic_compare_exchange_strong_explicit(&m->state, &free_, 1, memory_order_acquire,
                                                   memory_order_relaxed);
}

XMC_COLD static void mutex_wait(xmc_mutex *m)
{
    for (int spin = 0; spin < 100; spin++) {
        if (atomic_load_explicit(&m->state, memory_order_relaxed) == 0 && mutex_try(m))
            return;
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause(); /* let the other hyperthread run */
#endif
    }
    /* From now on the word says 2, so whoever gives it back wakes a waiter. */
    while (atomic_exchange_explicit(&m->state, 2, memory_order_acquire) != 0)
        syscall(SYS_futex, &m->state, FUTEX_WAIT_PRIVATE, 2, NULL, NULL, 0);
}

XMC_COLD static void mutex_wake(xmc_mutex *m)
{
    syscall(SYS_futex, &m->state, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}

static inline void mutex_lock(xmc_mutex *m)
{
    if (!mutex_try(m))
        mutex_wait(m);
}

static inline void mutex_unlock(xmc_mutex *m)
{
    if (atomic_exchange_explicit(&m->state, 0, memory_order_release) == 2)
        mutex_wake(m);
}

/* A thread's count of lock-free hits: written by that thread only (a load
 * and a store, no locked instruction), summed by xmc_stats_get().  One cache
 * line each, so that threads hitting at once share no written line. */
typedef struct hit_slot {
    _Alignas(LINE) atomic_uintptr_t owner; /* this_thread() of its thread; 0: free */
    _Atomic uint64_t hits;
} hit_slot;

/* A number unique to the calling thread among live threads, the same in a
 * child of fork(): its thread pointer, one register read, where the compiler
 * has it; else pthread_self(), an integer on Linux. */
static inline uintptr_t this_thread(void)
{
#if defined(__has_builtin) && (defined(__x86_64__) || defined(__aarch64__))
#if __has_builtin(__builtin_thread_pointer)
    return (uintptr_t)__builtin_thread_pointer();
#endif
#endif
    return (uintptr_t)pthread_self();
}

/* The calling thread's home hit slot, where it claims one first: bits 34 to
 * 39 of self times a 30-bit constant (one instruction, no 64-bit constant to
 * load), scaled to a slot by a mask rather than a shift.  Thread pointers
 * differ by the threads' stack size; the constant was searched for so that
 * 16 threads created one after another get 16 homes for stacks of 16 KiB to
 * 16 MiB, with or without a guard page (a Fibonacci hash of the pointer gave
 * glibc's default 8 MiB stacks 8 homes for 16 threads). */
static inline hit_slot *slot_home(hit_slot *slots, uintptr_t self)
{
    _Static_assert(sizeof(hit_slot) == LINE && LINE == 64, "a hit slot is one line");
    return (hit_slot *)((char *)slots + (((uint64_t)self * UINT64_C(0x3BDEFB01)) >> (34 - 6) &
                                         (HIT_SLOTS - 1) * sizeof(hit_slot)));
}

/* The calling thread's hit slot, or NULL: none claimed yet, or no room.
 * Slots are claimed in probe order and never given back, so the slots before
 * a thread's own were taken before it claimed it, and it sees them taken. */
static hit_slot *slot_find(hit_slot *slots, uintptr_t self)
{
    size_t home = (size_t)(slot_home(slots, self) - slots);

    for (size_t i = 0; i < HIT_PROBE; i++) {
        hit_slot *s = &slots[(home + i) % HIT_SLOTS];
        uintptr_t owner = atomic_load_explicit(&s->owner, memory_order_relaxed);

        if (owner == self)
            return s;
        if (owner == 0)
            break;
    }
    return NULL;
}

struct xmc_cache {
    /* The line the lock-free hit reads, written only by changes of the last
     * entry and around backend calls. */
    /* Changes of the published last entry, counted twice: pub_gen as one
     * starts, pub_done once it is over; they differ while one is under way. */
    _Alignas(LINE) _Atomic uint64_t pub_gen;
    _Atomic uint64_t pub_done;
    /* The published last entry: the guest-physical address of its bucket
     * (PUB_NONE: none), and its mapping less that address, modulo 2^64, so
     * that the host address of a paddr in it is paddr + pub_delta. */
    _Atomic uint64_t pub_base;
    _Atomic uint64_t pub_delta;
    uint64_t bucket_mask; /* ~(bucket_size - 1): a bucket's base, no bit below */
    /* this_thread() of the thread inside a backend map or unmap, else 0: it
     * holds the mutex, so a call of its into this cache would wait for itself. */
    atomic_uintptr_t callback_thread;
    unsigned shift;
    uint64_t bucket_size;
    /* Everything else is the mutex's. */
    _Alignas(LINE) xmc_mutex mutex;
    const xmc_backend *be;
    uint64_t max_size;
    uint64_t nr_slots;
    uint64_t slot_mask; /* nr_slots - 1 when a power of two (the default), else 0 */
    xmc_entry **slots;
    xmc_entry *fast; /* the entry that served last; NULL while traced (see set_last) */
    xmc_entry *live; /* live list head */
    xmc_entry *tree; /* treap root, entries by host address */
    record *recs;      /* record array: mmap'd, rec_cap records */
    uint32_t rec_cap;
    uint32_t next_id; /* first id never handed out */
    uint32_t free_ids; /* freed records, reused first */
    uint32_t *rhash;
    unsigned rhash_bits;
    uint32_t oldest;
    uint32_t newest;
    uint32_t lock_limit;
    bool dummy;
    bool grants; /* grant rules: locked requests only, unmapped at the last unlock */
    bool closed;
    bool traced; /* trace != NULL, read on hot paths: on their cache line */
    /* closed || grants || traced: the fast path never hits, and map and
     * unlock leave their usual paths (one test of one byte for all three) */
    bool unusual;
    xmc_translate_fn translate;
    void *translate_opaque;
    struct sg_tally *tally; /* the batch holding the mutex, if one does */
    xmc_stats st;
    /* Off the hot cache lines: */
    xmc_entry *last; /* while traced, the entry that served last */
    xmc_trace_fn trace; /* NULL: no hook */
    void *trace_opaque;
    /* Set in a forked child when the mutex was held at fork(): its holder is
     * gone, the cache may be half updated.  Read only when the mutex is busy. */
    bool forked;
    struct xmc_cache *fnext; /* every cache of the process, for fork_child() */
    struct xmc_cache **fpprev;
    hit_slot hits[HIT_SLOTS]; /* the threads' counts of lock-free hits */
};

/* ---- calls out of the cache ---------------------------------------------- */

/*
 * Around every call the cache makes out of itself under its mutex (a backend
 * map or unmap, a trace hook), so that a call of the callback's into this
 * cache fails with XMC_EREENTER instead of waiting for itself.  The calling
 * thread becomes the callback_thread, for cache_lock(), and its hit slot,
 * if it has one, is marked away (~self: odd, so neither 0 nor any thread's
 * id, an aligned address), so that no lock-free hit of the callback's finds
 * a slot: every one takes the locked path, which answers XMC_EREENTER, and
 * the hits need no check of their own.  Only a slot's owner writes a slot
 * that has one; slot_find() and slot_claim() pass over a marked one as
 * taken.  Returns the marked slot, for callback_leave() to give back.
 */
static hit_slot *callback_enter(xmc_cache *c)
{
    uintptr_t self = this_thread();
    hit_slot *mine = slot_find(c->hits, self);

    atomic_store_explicit(&c->callback_thread, self, memory_order_relaxed);
    if (mine)
        atomic_store_explicit(&mine->owner, ~self, memory_order_relaxed);
    return mine;
}

static void callback_leave(xmc_cache *c, hit_slot *mine)
{
    if (mine)
        atomic_store_explicit(&mine->owner, this_thread(), memory_order_relaxed);
    atomic_store_explicit(&c->callback_thread, 0, memory_order_relaxed);
}

/* ---- trace events ------------------------------------------------------- */

/* The hook's refusals in this thread (see trace_emit): a call that can still
 * stop compares it with what it was when the call began (copy_locked). */
static _Thread_local unsigned trace_refusals;

/* Call the hook; the caller checked that there is one (TRACE does).  Whether
 * the hook refused the event (returned nonzero): the calls whose effect
 * follows their events (an unlock, a copy) then stop with nothing changed;
 * every other call goes on, its work being done. */
XMC_COLD static bool trace_emit(xmc_cache *c, uint32_t kind, int rc, unsigned flags,
                                uint64_t paddr, uint64_t size, uintptr_t address,
                                uint64_t tag, uint64_t old_paddr)
{
    xmc_event ev = { .struct_size = sizeof(ev), .kind = kind, .rc = rc, .flags = flags,
                     .paddr = paddr, .size = size, .address = address, .tag = tag,
                     .old_paddr = old_paddr };
    hit_slot *mine = callback_enter(c);
    bool refused = c->trace(c->trace_opaque, &ev) != 0;

    callback_leave(c, mine);
    trace_refusals += refused;
    return refused;
}

#define TRACE(c, ...)                                                         \
    do {                                                                      \
        if ((c)->traced)                                                      \
            trace_emit((c), __VA_ARGS__);                                     \
    } while (0)

/* An unlock or a reverse lookup of an address that nothing holds. */
XMC_COLD static void trace_unknown(xmc_cache *c, uint32_t kind, uintptr_t addr, uint64_t tag)
{
    TRACE(c, kind, XMC_ENOENT, 0, 0, 0, addr, tag, 0);
}

/* ---- the published last entry (the lock-free hit reads it) -------------- */

/* No bucket: pub_base when nothing is published (never a multiple of the
 * bucket size, unlike paddr & bucket_mask). */
#define PUB_NONE UINT64_C(1)

/*
 * Publish (vaddr, index) for hit_check(); vaddr NULL publishes nothing.  The
 * writer side of a seqlock whose counter is kept twice: pub_gen one ahead,
 * then the copy, then pub_done caught up.  The copy's stores are releases,
 * so a reader that acquires a new value has the new pub_gen before it; the
 * last store is a release too, handing the copy and the mapping itself to a
 * reader that acquires pub_done.  (No standalone fence: ThreadSanitizer
 * models none.)  Under the mutex; no store at all when nothing changes, as
 * at every locked hit.
 */
static void publish(xmc_cache *c, uint8_t *vaddr, uint64_t index)
{
    uint64_t gen = atomic_load_explicit(&c->pub_gen, memory_order_relaxed) + 1;
    uint64_t base = vaddr ? index << c->shift : PUB_NONE;
    uint64_t delta = vaddr ? (uint64_t)(uintptr_t)vaddr - base : 0;

    if (atomic_load_explicit(&c->pub_base, memory_order_relaxed) == base &&
        atomic_load_explicit(&c->pub_delta, memory_order_relaxed) == delta)
        return;
    atomic_store_explicit(&c->pub_gen, gen, memory_order_relaxed);
    atomic_store_explicit(&c->pub_base, base, memory_order_release);
    XMC_TEST_POINT(c, XMC_TP_PUBLISH);
    atomic_store_explicit(&c->pub_delta, delta, memory_order_release);
    atomic_store_explicit(&c->pub_done, gen, memory_order_release);
}

/*
 * Make e the last entry: the fast path's, unless traced; then it is kept
 * aside and the fast path never hits, so hits are traced on the slow path
 * and the fast path stays as it was.  A grant cache has no last entry: an
 * entry may go at any unlock.  (A closed cache has no entries at all.)  The
 * fast path's entry is published for the lock-free hit when every page of it
 * is mapped (a partly mapped one is hit under the mutex, bitmap and all).
 */
static inline void set_last(xmc_cache *c, xmc_entry *e)
{
    if (!c->unusual) {
        if (c->fast == e) /* published as it is: a change of e unsets it first */
            return;
        c->fast = e;
        if (e && (e->flags & ENTRY_ALLVALID))
            publish(c, e->vaddr, e->index);
        else
            publish(c, NULL, 0);
    } else if (!c->grants) {
        c->last = e;
    }
}

static inline xmc_entry *get_last(const xmc_cache *c)
{
    return c->unusual ? c->last : c->fast;
}

/* e is about to change (remapped, blanked or unmapped): no longer the last
 * entry, so that no lock-free hit can return an address in it from now on. */
static inline void forget(xmc_cache *c, const xmc_entry *e)
{
    if (get_last(c) == e)
        set_last(c, NULL);
}

/* Recompute c->unusual; the last entry moves to where get_last() finds it. */
static void set_unusual(xmc_cache *c)
{
    xmc_entry *last = get_last(c);

    c->fast = c->last = NULL;
    publish(c, NULL, 0);
    c->unusual = c->closed || c->grants || c->traced;
    set_last(c, last);
}

const char *xmc_strerror(int err)
{
    switch (err) {
    case XMC_OK: return "success";
    case XMC_ENOMEM: return "out of memory";
    case XMC_EINVAL: return "invalid argument or address";
    case XMC_EMAP: return "guest pages cannot be mapped";
    case XMC_ENOENT: return "no such mapping";
    case XMC_EOVERFLOW: return "lock count at its limit";
    case XMC_EUNAVAIL: return "backend not available";
    case XMC_ESYS: return "system call failed";
    case XMC_ECLOSED: return "the cache is closed";
    case XMC_EAGAIN: return "the call would have to wait";
    case XMC_EREENTER: return "called from inside one of the cache's own backend callbacks";
    case XMC_EGRANT: return "not allowed on a grant cache (locked requests only, no replace)";
    case XMC_ECALLBACK: return "a callback failed; nothing was retried";
    case XMC_EFORKED:
        return "the process forked while another thread was inside the cache; unusable in the child";
    default: return "unknown error";
    }
}

/* The hash slot of a bucket index: a mask instead of a division when it can. */
static inline uint64_t slot_of(const xmc_cache *c, uint64_t index)
{
    return c->slot_mask ? index & c->slot_mask : index % c->nr_slots;
}

/* ---- page bitmaps ---------------------------------------------------- */

static size_t bitmap_words(uint64_t pages)
{
    return (size_t)((pages + BITS_PER_WORD - 1) / BITS_PER_WORD);
}

/* Bytes of one entry mapping `size` bytes: the struct and its bitmap. */
static size_t entry_bytes(uint64_t size)
{
    return sizeof(xmc_entry) +
           bitmap_words(size >> XMC_PAGE_SHIFT) * sizeof(unsigned long);
}

static inline bool pages_valid(const xmc_entry *e, uint64_t first, uint64_t n)
{
    if (e->flags & ENTRY_ALLVALID)
        return first + n <= (e->size >> XMC_PAGE_SHIFT);
    if (first + n > (e->size >> XMC_PAGE_SHIFT))
        return false;
    for (uint64_t p = first; p < first + n; p++)
        if (!(e->valid[p / BITS_PER_WORD] & (1ul << (p % BITS_PER_WORD))))
            return false;
    return true;
}

/* ---- the host-address treap (interior pointers) ---------------------- */

/*
 * A treap keyed by vaddr (entries never overlap) whose heap priority is a
 * hash of the entry's own address: expected O(log n) depth, no extra memory.
 */
static uint64_t treap_prio(const xmc_entry *e)
{
    return (uint64_t)(uintptr_t)e * UINT64_C(0x9E3779B97F4A7C15);
}

/* Split t into the entries below addr (*l) and those at or above it (*r). */
static void treap_split(xmc_entry *t, uintptr_t addr, xmc_entry **l, xmc_entry **r)
{
    while (t) {
        if ((uintptr_t)t->vaddr < addr) {
            *l = t;
            l = &t->right;
            t = t->right;
        } else {
            *r = t;
            r = &t->left;
            t = t->left;
        }
    }
    *l = *r = NULL;
}

/* Join two treaps, every entry of a below every entry of b. */
static xmc_entry *treap_merge(xmc_entry *a, xmc_entry *b)
{
    xmc_entry *root, **pp = &root;

    while (a && b) {
        if (treap_prio(a) > treap_prio(b)) {
            *pp = a;
            pp = &a->right;
            a = a->right;
        } else {
            *pp = b;
            pp = &b->left;
            b = b->left;
        }
    }
    *pp = a ? a : b;
    return root;
}

static void tree_insert(xmc_cache *c, xmc_entry *e)
{
    xmc_entry **pp = &c->tree;
    uint64_t prio = treap_prio(e);

    while (*pp && treap_prio(*pp) > prio)
        pp = (uintptr_t)e->vaddr < (uintptr_t)(*pp)->vaddr ? &(*pp)->left : &(*pp)->right;
    treap_split(*pp, (uintptr_t)e->vaddr, &e->left, &e->right);
    *pp = e;
}

static void tree_delete(xmc_cache *c, xmc_entry *e)
{
    xmc_entry **pp = &c->tree;

    while (*pp && *pp != e)
        pp = (uintptr_t)e->vaddr < (uintptr_t)(*pp)->vaddr ? &(*pp)->left : &(*pp)->right;
    if (*pp)
        *pp = treap_merge(e->left, e->right);
}

/* The entry whose mapping contains addr, or NULL. */
static xmc_entry *tree_find(const xmc_cache *c, uintptr_t addr)
{
    xmc_entry *t = c->tree;

    while (t) {
        if (addr < (uintptr_t)t->vaddr)
            t = t->left;
        else if (addr - (uintptr_t)t->vaddr < t->size)
            return t;
        else
            t = t->right;
    }
    return NULL;
}

/* ---- entries ---------------------------------------------------------- */

static void chain_append(xmc_cache *c, xmc_entry *e)
{
    xmc_entry **pp = &c->slots[slot_of(c, e->index)];

    while (*pp)
        pp = &(*pp)->next;
    e->next = NULL;
    e->pprev = pp;
    *pp = e;
}

static void chain_del(xmc_entry *e)
{
    *e->pprev = e->next;
    if (e->next)
        e->next->pprev = e->pprev;
}

static int backend_map(xmc_cache *c, void *fixed, uint64_t pfn, size_t n, int *errs,
                       void **out)
{
    hit_slot *mine = callback_enter(c);
    int rc = c->be->map(c->be->opaque, fixed, pfn, n, errs, out);

    callback_leave(c, mine);
    return rc;
}

static int backend_unmap(xmc_cache *c, void *addr, size_t len)
{
    hit_slot *mine = callback_enter(c);
    int rc = c->be->unmap(c->be->opaque, addr, len);

    callback_leave(c, mine);
    return rc;
}

static int entry_unmap(xmc_cache *c, xmc_entry *e)
{
    if (e->flags & ENTRY_ANON)
        return munmap(e->vaddr, e->size) ? XMC_ESYS : XMC_OK;
    return backend_unmap(c, e->vaddr, e->size);
}

/* Unlink e from everything, unmap it and free it; reports the unmap result. */
static int entry_destroy(xmc_cache *c, xmc_entry *e)
{
    int rc;

    chain_del(e);
    if (e->lprev)
        e->lprev->lnext = e->lnext;
    else
        c->live = e->lnext;
    if (e->lnext)
        e->lnext->lprev = e->lprev;
    forget(c, e);
    c->st.entries--;
    c->st.mapped_bytes -= e->size;
    tree_delete(c, e);
    rc = entry_unmap(c, e);
    TRACE(c, XMC_EV_UNMAP, rc, 0, e->index << c->shift, e->size, (uintptr_t)e->vaddr, 0, 0);
    free(e);
    return rc;
}

/*
 * Map `size` bytes of guest memory from bucket `index` into e, at e->vaddr
 * when `fixed`, filling e's bitmap (which must have room for `size`).  On
 * success e describes the new mapping; on failure e is unchanged (but with
 * `fixed` the old pages may be gone).
 */
static int map_into(xmc_cache *c, xmc_entry *e, uint64_t index, uint64_t size,
                    bool fixed, bool dummy)
{
    unsigned long *bitmap = e->valid;
    uint64_t pages = size >> XMC_PAGE_SHIFT;
    int errs_stack[ERRS_ON_STACK];
    int *errs = errs_stack;
    void *addr = NULL;
    bool all = true;
    int rc = XMC_OK;

    if (fixed)
        forget(c, e);
    if (dummy) {
        addr = mmap(fixed ? e->vaddr : NULL, size, PROT_READ | PROT_WRITE,
                    MAP_PRIVATE | MAP_ANONYMOUS | (fixed ? MAP_FIXED : 0), -1, 0);
        if (addr == MAP_FAILED)
            return XMC_ESYS;
        memset(bitmap, 0xff, bitmap_words(pages) * sizeof(*bitmap));
        e->flags = ENTRY_DUMMY | ENTRY_ANON | ENTRY_ALLVALID;
    } else {
        if (pages > ERRS_ON_STACK) {
            errs = calloc((size_t)pages, sizeof(*errs));
            if (!errs)
                return XMC_ENOMEM;
        } else {
            memset(errs, 0, (size_t)pages * sizeof(*errs));
        }
        rc = backend_map(c, fixed ? e->vaddr : NULL, index << (c->shift - XMC_PAGE_SHIFT),
                         (size_t)pages, errs, &addr);
        if (rc == XMC_OK && !addr)
            rc = XMC_EMAP;
        if (rc == XMC_OK) {
            /* Every page mapped: errs[] all zero, that is all equal to a zero
             * errs[0].  memcmp, not a loop: on every miss, a loop over 256
             * pages cost as much as the rest of the remap's own work. */
            all = errs[0] == 0 &&
                  (pages == 1 || memcmp(errs, errs + 1, (size_t)(pages - 1) * sizeof(*errs)) == 0);
            memset(bitmap, all ? 0xff : 0, bitmap_words(pages) * sizeof(*bitmap));
            for (uint64_t p = 0; p < pages && !all; p++)
                if (!errs[p])
                    bitmap[p / BITS_PER_WORD] |= 1ul << (p % BITS_PER_WORD);
            e->flags = all ? ENTRY_ALLVALID : 0;
        }
        if (errs != errs_stack)
            free(errs);
        if (rc != XMC_OK)
            return rc < 0 ? rc : XMC_EMAP;
    }
    e->vaddr = addr;
    e->index = index;
    e->size = size;
    return XMC_OK;
}

/* Add a new entry for bucket `index` at the tail of its chain. */
static int entry_new(xmc_cache *c, uint64_t index, uint64_t size, bool dummy,
                     xmc_entry **out)
{
    xmc_entry *e = calloc(1, entry_bytes(size));
    int rc;

    if (!e)
        return XMC_ENOMEM;
    rc = map_into(c, e, index, size, false, dummy);
    if (rc != XMC_OK) {
        free(e);
        return rc;
    }
    tree_insert(c, e);
    chain_append(c, e);
    e->lnext = c->live;
    if (c->live)
        c->live->lprev = e;
    c->live = e;
    c->st.entries++;
    c->st.mapped_bytes += size;
    TRACE(c, dummy ? XMC_EV_DUMMY : XMC_EV_MAP, XMC_OK, 0, index << c->shift, size,
          (uintptr_t)e->vaddr, 0, 0);
    *out = e;
    return XMC_OK;
}

/*
 * Point the unlocked entry *ep at bucket `index`.  Same size and same kind of
 * memory (backend or anonymous): map over it in place.  Otherwise unmap it
 * through whoever mapped it and replace it with a new entry (its bitmap is
 * the wrong size, or its memory of the wrong kind).  On failure the entry is
 * destroyed.
 */
static int entry_remap(xmc_cache *c, xmc_entry **ep, uint64_t index, uint64_t size,
                       bool dummy)
{
    xmc_entry *e = *ep;
    uint64_t old_slot = slot_of(c, e->index);
    int rc;

    if (size != e->size || dummy != !!(e->flags & ENTRY_ANON)) {
        rc = entry_destroy(c, e);
        return rc == XMC_OK ? entry_new(c, index, size, dummy, ep) : rc;
    }
    rc = map_into(c, e, index, size, true, dummy);
    if (rc != XMC_OK) { /* the backend unmaps whatever is left there */
        entry_destroy(c, e);
        return rc;
    }
    if (slot_of(c, index) != old_slot) {
        chain_del(e);
        chain_append(c, e);
    }
    TRACE(c, dummy ? XMC_EV_DUMMY : XMC_EV_REMAP, XMC_OK, 0, index << c->shift, size,
          (uintptr_t)e->vaddr, 0, 0);
    return XMC_OK;
}

/* The first entry of the slot of `index` of `size` bytes whose pages
 * [first, first + n) are valid, or NULL. */
static inline xmc_entry *entry_find(const xmc_cache *c, uint64_t index, uint64_t size,
                                    uint64_t first, uint64_t n)
{
    xmc_entry *e;

    for (e = c->slots[slot_of(c, index)]; e; e = e->next)
        if (e->index == index && e->size == size && pages_valid(e, first, n))
            break;
    return e;
}

/*
 * Find in the slot of `index` an entry of `size` bytes whose pages
 * [first, first + n) are valid, else reuse the first unlocked entry of the
 * chain, else add one.  XMC_EMAP when the pages are still not valid;
 * XMC_EAGAIN, with nothing changed, instead of a miss when `nowait`.
 */
static int find_or_map(xmc_cache *c, uint64_t index, uint64_t size,
                       uint64_t first, uint64_t n, bool dummy, bool nowait,
                       xmc_entry **out)
{
    xmc_entry *e, *reuse = NULL;
    int rc;

    if ((e = entry_find(c, index, size, first, n))) {
        c->st.hits++;
        *out = e;
        return XMC_OK;
    }
    if (!c->grants)
        for (e = c->slots[slot_of(c, index)]; e && !reuse; e = e->next)
            if (e->lock == 0)
                reuse = e;
    if (nowait) /* a miss reaches the backend */
        return XMC_EAGAIN;
    c->st.misses++;
    if (reuse) {
        c->st.remaps++;
        e = reuse;
        rc = entry_remap(c, &e, index, size, dummy);
    } else {
        rc = entry_new(c, index, size, dummy, &e);
    }
    if (rc != XMC_OK)
        return rc;
    if (!pages_valid(e, first, n)) {
        if (c->grants) /* a grant entry lives only while locked */
            entry_destroy(c, e);
        return XMC_EMAP;
    }
    *out = e;
    return XMC_OK;
}

/* ---- reverse records -------------------------------------------------- */

static record *rec(const xmc_cache *c, uint32_t id)
{
    return &c->recs[id];
}

static size_t rhash_slot(const xmc_cache *c, uintptr_t addr)
{
    return (size_t)(((uint64_t)addr * UINT64_C(0x9E3779B97F4A7C15)) >>
                    (64 - c->rhash_bits));
}

/* A larger hash table (or the first): chains rebuilt newest first. */
XMC_NOINLINE static int rhash_grow(xmc_cache *c)
{
    unsigned bits = c->rhash ? c->rhash_bits + 1 : RHASH_MIN_BITS;
    uint32_t *table;

    table = calloc((size_t)1 << bits, sizeof(*table));
    if (!table)
        return XMC_ENOMEM;
    free(c->rhash);
    c->rhash = table;
    c->rhash_bits = bits;
    for (uint32_t id = c->oldest; id; id = rec(c, id)->newer) {
        size_t s = rhash_slot(c, rec(c, id)->addr);
        rec(c, id)->hnext = table[s];
        table[s] = id;
    }
    return XMC_OK;
}

/* Make room for one more record. */
static XMC_INLINE int rhash_reserve(xmc_cache *c)
{
    return c->rhash && c->st.locked < ((uint64_t)1 << c->rhash_bits) ? XMC_OK : rhash_grow(c);
}

/* A free record id: a freed one, else the next one (growing the array). */
static uint32_t record_alloc(xmc_cache *c)
{
    uint32_t id = c->free_ids;

    if (id) {
        c->free_ids = rec(c, id)->hnext;
        return id;
    }
    if (c->next_id == 0)
        c->next_id = 1; /* id 0 means "none" */
    if (c->next_id > REC_MAX_ID)
        return 0;
    if (c->next_id >= c->rec_cap) {
        /* The kernel moves the pages (or extends them in place): records
         * are found by id, never by a pointer kept across calls. */
        size_t old = (size_t)c->rec_cap * sizeof(record);
        size_t len = old + REC_STEP * sizeof(record);
        void *grown;

        if (c->rec_cap > REC_MAX_ID - REC_STEP || len / sizeof(record) != c->rec_cap + REC_STEP)
            return 0; /* no more ids, or no address space to count them in */
        grown = c->recs ? mremap(c->recs, old, len, MREMAP_MAYMOVE)
                        : mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                               -1, 0);
        if (grown == MAP_FAILED)
            return 0;
        c->recs = grown;
        c->rec_cap += REC_STEP;
    }
    return c->next_id++;
}

static XMC_INLINE int record_add(xmc_cache *c, xmc_entry *e, uintptr_t addr, uint64_t size,
                                  uint64_t tag, bool dma)
{
    uint32_t id;
    record *r;
    size_t s;

    if (rhash_reserve(c) != XMC_OK || !(id = record_alloc(c)))
        return XMC_ENOMEM;
    r = rec(c, id);
    s = rhash_slot(c, addr);
    *r = (record){ .addr = addr, .e = e, .size = size, .tag = tag, .dma = dma,
                   .hnext = c->rhash[s], .older = c->newest };
    c->rhash[s] = id;
    if (c->newest)
        rec(c, c->newest)->newer = id;
    else
        c->oldest = id;
    c->newest = id;
    c->st.locked++;
    if (dma)
        c->st.dma_locked++;
    return XMC_OK;
}

/* The hash link that holds the newest record at addr (with tag), or NULL. */
static uint32_t *record_find(xmc_cache *c, uintptr_t addr, bool by_tag, uint64_t tag)
{
    uint32_t *link;

    if (!c->rhash)
        return NULL;
    for (link = &c->rhash[rhash_slot(c, addr)]; *link; link = &rec(c, *link)->hnext) {
        const record *r = rec(c, *link);
        if (r->addr == addr && (!by_tag || r->tag == tag))
            return link;
    }
    return NULL;
}

static XMC_INLINE void record_del(xmc_cache *c, uint32_t *link)
{
    uint32_t id = *link;
    record *r = rec(c, id);

    *link = r->hnext;
    if (r->older)
        rec(c, r->older)->newer = r->newer;
    else
        c->oldest = r->newer;
    if (r->newer)
        rec(c, r->newer)->older = r->older;
    else
        c->newest = r->older;
    r->e->lock--;
    c->st.locked--;
    if (r->dma) /* a branch, not arithmetic: gcc would pair the two counters in
                 * one 16-byte load that the 8-byte stores of record_add stall */
        c->st.dma_locked--;
    r->hnext = c->free_ids;
    c->free_ids = id;
}

/* The unlock event of the record r, if traced; whether the hook refused it. */
XMC_COLD static bool trace_unlock(xmc_cache *c, const record *r)
{
    return c->traced &&
           trace_emit(c, XMC_EV_UNLOCK, XMC_OK, XMC_LOCK | (r->dma ? XMC_DMA : 0),
                      (r->e->index << c->shift) + (r->addr - (uintptr_t)r->e->vaddr), r->size,
                      r->addr, r->tag, 0);
}

/* record_del(), then the grant rule: an entry whose last lock went is unmapped
 * at once (XMC_ESYS when the backend fails to; the lock is gone all the same). */
static XMC_INLINE int record_release(xmc_cache *c, uint32_t *link)
{
    xmc_entry *e = rec(c, *link)->e;

    record_del(c, link);
    if (c->grants && e->lock == 0)
        return entry_destroy(c, e) == XMC_OK ? XMC_OK : XMC_ESYS;
    return XMC_OK;
}

/* Its unlock event, then record_release().  A refused event stops an unlock
 * (XMC_ECALLBACK, nothing changed); an undo (!stoppable) drops all the same,
 * or a hook that keeps refusing would leak the lock. */
static int record_drop(xmc_cache *c, uint32_t *link, bool stoppable)
{
    if (c->unusual && trace_unlock(c, rec(c, *link)) && stoppable)
        return XMC_ECALLBACK;
    return record_release(c, link);
}

static uint64_t entry_paddr(const xmc_cache *c, const xmc_entry *e, uintptr_t addr)
{
    return (e->index << c->shift) + (addr - (uintptr_t)e->vaddr);
}

static void record_info(const xmc_cache *c, const record *r, xmc_record *out)
{
    *out = (xmc_record){ .address = r->addr, .paddr = entry_paddr(c, r->e, r->addr),
                         .size = r->size, .tag = r->tag, .dma = r->dma != 0 };
}

/* Copy the records (all, or only DMA ones) into a new array. */
static int records_copy(const xmc_cache *c, bool dma_only, xmc_record **out,
                        size_t *n)
{
    size_t count = (size_t)(dma_only ? c->st.dma_locked : c->st.locked), i = 0;
    xmc_record *arr = NULL;

    if (count && !(arr = calloc(count, sizeof(*arr))))
        return XMC_ENOMEM;
    for (uint32_t id = c->oldest; id; id = rec(c, id)->newer)
        if (!dma_only || rec(c, id)->dma)
            record_info(c, rec(c, id), &arr[i++]);
    *out = arr;
    *n = count;
    return XMC_OK;
}

void xmc_records_free(xmc_record *records)
{
    free(records);
}

/* ---- fork ----------------------------------------------------------------- */

/*
 * A child of fork() has one thread, the one that forked.  A cache whose mutex
 * some other thread held at that moment stays held forever in the child, and
 * may be half updated: fork_child() marks it, and cache_lock() answers
 * XMC_EFORKED once it finds the mutex busy (so the hit path pays nothing).
 * A cache that was idle works in the child as in the parent, and so does one
 * whose mutex the forking thread held itself, from inside one of the cache's
 * callbacks: it finishes its call in both processes.
 */
static pthread_mutex_t caches_lock = PTHREAD_MUTEX_INITIALIZER;
static xmc_cache *caches;
static pthread_once_t fork_once = PTHREAD_ONCE_INIT;
static int fork_rc = XMC_ENOMEM;

static void fork_prepare(void)
{
    pthread_mutex_lock(&caches_lock); /* no cache is added or freed across fork() */
}

static void fork_parent(void)
{
    pthread_mutex_unlock(&caches_lock);
}

static void fork_child(void)
{
    uintptr_t self = this_thread(); /* the same in the child (pthread_self) */

    for (xmc_cache *c = caches; c; c = c->fnext)
        if (atomic_load_explicit(&c->mutex.state, memory_order_relaxed) != 0 &&
            atomic_load_explicit(&c->callback_thread, memory_order_relaxed) != self) {
            c->forked = true;
            /* A change under way for good: every hit takes the locked path,
             * which answers XMC_EFORKED.  (No writer is left to end it.) */
            atomic_fetch_add_explicit(&c->pub_gen, 1, memory_order_relaxed);
        }
    pthread_mutex_unlock(&caches_lock);
}

static void fork_register(void)
{
    fork_rc = pthread_atfork(fork_prepare, fork_parent, fork_child) == 0 ? XMC_OK : XMC_ENOMEM;
}

static int caches_add(xmc_cache *c)
{
    if (pthread_once(&fork_once, fork_register) != 0 || fork_rc != XMC_OK)
        return XMC_ENOMEM;
    pthread_mutex_lock(&caches_lock);
    c->fnext = caches;
    c->fpprev = &caches;
    if (caches)
        caches->fpprev = &c->fnext;
    caches = c;
    pthread_mutex_unlock(&caches_lock);
    return XMC_OK;
}

static void caches_del(xmc_cache *c)
{
    pthread_mutex_lock(&caches_lock);
    *c->fpprev = c->fnext;
    if (c->fnext)
        c->fnext->fpprev = c->fpprev;
    pthread_mutex_unlock(&caches_lock);
}

/* ---- cache life ------------------------------------------------------- */

int xmc_cache_new(const xmc_backend *be, unsigned bucket_shift, uint64_t max_size,
                  xmc_cache **out)
{
    xmc_cache *c;
    uint64_t bucket, slots;

    if (!out)
        return XMC_EINVAL;
    *out = NULL;
    if (!be || !be->map || !be->unmap)
        return XMC_EINVAL;
    if (bucket_shift == 0)
        bucket_shift = sizeof(void *) >= 8 ? 20 : 16;
    if (max_size == 0)
        max_size = sizeof(void *) >= 8 ? UINT64_C(1) << 35 : UINT64_C(1) << 31;
    if (bucket_shift < XMC_MIN_BUCKET_SHIFT || bucket_shift > XMC_MAX_BUCKET_SHIFT)
        return XMC_EINVAL;
    bucket = UINT64_C(1) << bucket_shift;
    slots = max_size / bucket + (max_size % bucket != 0);
    if (slots > XMC_MAX_SLOTS)
        return XMC_EINVAL;
    c = aligned_alloc(LINE, sizeof(*c)); /* a multiple of LINE: _Alignas */
    if (!c)
        return XMC_ENOMEM;
    memset(c, 0, sizeof(*c));
    c->slots = calloc((size_t)slots, sizeof(*c->slots));
    if (!c->slots) {
        free(c);
        return XMC_ENOMEM;
    }
    if (caches_add(c) != XMC_OK) {
        free(c->slots);
        free(c);
        return XMC_ENOMEM;
    }
    atomic_init(&c->callback_thread, 0);
    atomic_init(&c->pub_gen, 0);
    atomic_init(&c->pub_done, 0);
    atomic_init(&c->pub_base, PUB_NONE);
    atomic_init(&c->pub_delta, 0);
    c->be = be;
    c->shift = bucket_shift;
    c->bucket_size = bucket;
    c->bucket_mask = ~(bucket - 1);
    c->max_size = max_size;
    c->nr_slots = slots;
    c->slot_mask = (slots & (slots - 1)) == 0 ? slots - 1 : 0;
    c->lock_limit = UINT32_MAX;
    if (be->retain)
        be->retain(be->opaque);
    *out = c;
    return XMC_OK;
}

/* Drop every record and entry; the cache is then empty but usable.  The
 * first failed unmap, if any (each entry is unmapped once, never retried). */
static int drain(xmc_cache *c)
{
    int rc = XMC_OK;

    /* Closing says nothing (its hook may be half gone): untraced, no last. */
    c->traced = false;
    c->trace = NULL;
    set_unusual(c);
    if (c->recs)
        munmap(c->recs, (size_t)c->rec_cap * sizeof(record));
    c->recs = NULL;
    c->rec_cap = c->next_id = c->free_ids = 0;
    c->oldest = c->newest = 0;
    free(c->rhash);
    c->rhash = NULL;
    c->rhash_bits = 0;
    while (c->live) {
        int urc = entry_destroy(c, c->live);
        if (rc == XMC_OK)
            rc = urc;
    }
    c->st.locked = c->st.dma_locked = 0;
    return rc;
}

void xmc_cache_free(xmc_cache *c)
{
    const xmc_backend *be;

    if (!c)
        return;
    caches_del(c);
    if (c->forked)
        return; /* half updated by a thread that is gone: leak it, touch nothing */
    drain(c);
    free(c->slots);
    be = c->be;
    free(c);
    if (be->release)
        be->release(be->opaque);
}

/*
 * Take c's mutex; unless `wait`, XMC_EAGAIN instead of waiting for it.  A
 * busy mutex may be held by this very thread, inside one of c's backend
 * callbacks: XMC_EREENTER rather than wait for itself.  (Another thread may
 * read a stale callback_thread, but never its own id: only a thread stores
 * its own id, and it clears it before it returns.)
 */
static inline int cache_lock(xmc_cache *c, bool wait)
{
    if (mutex_try(&c->mutex))
        return XMC_OK;
    if (c->forked)
        return XMC_EFORKED;
    if (atomic_load_explicit(&c->callback_thread, memory_order_relaxed) == this_thread())
        return XMC_EREENTER;
    if (!wait)
        return XMC_EAGAIN;
    mutex_wait(&c->mutex);
    return XMC_OK;
}

#define LOCKED_CALL_IF(c, wait, expr)                                         \
    do {                                                                      \
        int rc_;                                                              \
        if (!(c))                                                             \
            return XMC_EINVAL;                                                \
        if ((rc_ = cache_lock((c), (wait))) != XMC_OK)                        \
            return rc_;                                                       \
        rc_ = (c)->closed ? XMC_ECLOSED : (expr);                             \
        mutex_unlock(&(c)->mutex);                                            \
        return rc_;                                                           \
    } while (0)

#define LOCKED_CALL(c, expr) LOCKED_CALL_IF(c, true, expr)

/* Closed even when an unmap fails; that failure is reported (XMC_ESYS). */
static int close_locked(xmc_cache *c)
{
    c->closed = true;
    return drain(c); /* which makes the cache unusual: closed */
}

int xmc_cache_close(xmc_cache *c)
{
    LOCKED_CALL(c, close_locked(c));
}

static int set_lock_limit_locked(xmc_cache *c, uint32_t limit)
{
    c->lock_limit = limit;
    return XMC_OK;
}

int xmc_cache_set_lock_limit(xmc_cache *c, uint32_t limit)
{
    LOCKED_CALL(c, set_lock_limit_locked(c, limit));
}

static int set_dummy_locked(xmc_cache *c, bool on)
{
    c->dummy = on;
    return XMC_OK;
}

int xmc_cache_set_dummy(xmc_cache *c, bool on)
{
    LOCKED_CALL(c, set_dummy_locked(c, on));
}

static int set_grants_locked(xmc_cache *c, bool on)
{
    if (on == c->grants)
        return XMC_OK;
    /* Page-granular entries only; and no entry may predate the rules. */
    if ((on && c->shift != XMC_PAGE_SHIFT) || c->st.misses)
        return XMC_EINVAL;
    c->grants = on;
    set_unusual(c);
    return XMC_OK;
}

int xmc_cache_set_grants(xmc_cache *c, bool on)
{
    LOCKED_CALL(c, set_grants_locked(c, on));
}

static int set_trace_locked(xmc_cache *c, xmc_trace_fn fn, void *opaque)
{
    c->trace = fn;
    c->trace_opaque = opaque;
    c->traced = fn != NULL;
    set_unusual(c);
    return XMC_OK;
}

int xmc_cache_set_trace(xmc_cache *c, xmc_trace_fn fn, void *opaque)
{
    LOCKED_CALL(c, set_trace_locked(c, fn, opaque));
}

static int set_translate_locked(xmc_cache *c, xmc_translate_fn fn, void *opaque)
{
    c->translate = fn;
    c->translate_opaque = opaque;
    return XMC_OK;
}

int xmc_cache_set_translate(xmc_cache *c, xmc_translate_fn fn, void *opaque)
{
    LOCKED_CALL(c, set_translate_locked(c, fn, opaque));
}

/* ---- map -------------------------------------------------------------- */

/*
 * The counters a batch (xmc_map_sg) moved itself, told apart from those of
 * other threads while a translate callback runs without the mutex.  While the
 * batch holds the mutex the tally holds its share minus c->st's counters, so
 * that adding c->st gives its share; while it waits, its share.  c->tally is
 * set only while a batch holds the mutex.
 */
typedef struct sg_tally {
    uint64_t hits, misses, remaps;
} sg_tally;

/* The batch t has taken the mutex, or taken it back. */
static void tally_resume(xmc_cache *c, sg_tally *t)
{
    c->tally = t;
    if (t) {
        t->hits -= c->st.hits;
        t->misses -= c->st.misses;
        t->remaps -= c->st.remaps;
    }
}

/* What the batch t, holding the mutex, has moved so far. */
static sg_tally tally_now(const xmc_cache *c, const sg_tally *t)
{
    return (sg_tally){ t->hits + c->st.hits, t->misses + c->st.misses,
                       t->remaps + c->st.remaps };
}

/* The mutex is about to be given up: the batch holding it (returned, or
 * NULL, for tally_resume) keeps what it moved so far. */
static sg_tally *tally_pause(xmc_cache *c)
{
    sg_tally *t = c->tally;

    if (t) {
        *t = tally_now(c, t);
        c->tally = NULL;
    }
    return t;
}

static int translate_unlocked(xmc_cache *c, uint64_t paddr, uint64_t size,
                              uint64_t *out)
{
    xmc_translate_fn fn = c->translate;
    void *opaque = c->translate_opaque;
    sg_tally *batch;
    int rc;

    if (!fn) {
        fn = c->be->translate;
        opaque = c->be->opaque;
    }
    if (!fn)
        return XMC_ENOENT;
    /* The callback may take its time or call back in: do not hold the lock. */
    batch = tally_pause(c);
    mutex_unlock(&c->mutex);
    rc = fn(opaque, paddr, size, out);
    mutex_lock(&c->mutex);
    tally_resume(c, batch);
    if (c->closed) /* closed while the callback ran: map nothing more */
        return XMC_ECLOSED;
    if (rc != XMC_OK)
        return XMC_EMAP;
    if (!xmc_range_ok(*out, size))
        return XMC_EINVAL;
    return XMC_OK;
}

/* ---- the lock-free hit ---------------------------------------------------- */

/* Give the calling thread a hit slot, unless it has one or there is no room;
 * then its hits are counted under the mutex. */
static void slot_claim(xmc_cache *c)
{
    uintptr_t self = this_thread();
    size_t home = (size_t)(slot_home(c->hits, self) - c->hits);

    for (size_t i = 0; i < HIT_PROBE; i++) {
        hit_slot *s = &c->hits[(home + i) % HIT_SLOTS];
        uintptr_t owner = atomic_load_explicit(&s->owner, memory_order_relaxed);

        if (owner == self)
            return;
        if (owner == 0) {
            atomic_store_explicit(&s->owner, self, memory_order_relaxed);
            return;
        }
    }
}

/* Every thread's lock-free hits so far. */
static uint64_t slot_hits(xmc_cache *c)
{
    uint64_t n = 0;

    for (size_t i = 0; i < HIT_SLOTS; i++)
        n += atomic_load_explicit(&c->hits[i].hits, memory_order_relaxed);
    return n;
}

enum { HIT_NONE, HIT_DONE, HIT_UNCOUNTED };

/*
 * The hit without a lock, for an unlocked request of size 0: the published
 * last entry covers paddr's bucket (it is published only when all its pages
 * are mapped).  The reader side of the seqlock (see publish()): pub_done,
 * the copy and pub_gen, the first three loads acquires (free on x86), so the
 * last cannot be done before them.  pub_gen then differs from pub_done when
 * a change was under way as the reader began (its pub_gen was stored before
 * the pub_done read, which saw it not done) or began while it read (its
 * pub_gen was stored before a new value the copy read, or is read now
 * anyway); then the locked path decides.  (So must a call from inside one
 * of the cache's callbacks, XMC_EREENTER: the callers see to that.)  Zero
 * when it hits, with the host address of paddr in *p (written either way):
 * the two tests are or'ed into one branch.  Writes nothing else.
 */
static inline uint64_t hit_check(xmc_cache *c, uint64_t paddr, void **p)
{
    uint64_t done = atomic_load_explicit(&c->pub_done, memory_order_acquire);
    uint64_t base = atomic_load_explicit(&c->pub_base, memory_order_acquire);
    uint64_t delta = atomic_load_explicit(&c->pub_delta, memory_order_acquire);

    XMC_TEST_POINT(c, XMC_TP_HIT_READ);
    *p = (void *)(uintptr_t)(paddr + delta);
    return ((paddr & c->bucket_mask) ^ base) |
           (atomic_load_explicit(&c->pub_gen, memory_order_relaxed) ^ done);
}

/* One more hit in the calling thread's own slot: a load and a store. */
static inline void hit_count(hit_slot *s)
{
    atomic_store_explicit(&s->hits, atomic_load_explicit(&s->hits, memory_order_relaxed) + 1,
                          memory_order_relaxed);
}

/* Inline in xmc_map(): the lock-free hit of a thread whose slot is its home
 * slot, as almost every thread's is. */
static inline bool hit_home(xmc_cache *c, uint64_t paddr, void **out)
{
    uintptr_t self = this_thread();
    hit_slot *home = slot_home(c->hits, self);
    void *p;

    if (!XMC_LIKELY(atomic_load_explicit(&home->owner, memory_order_relaxed) == self &&
                    !hit_check(c, paddr, &p)))
        return false;
    hit_count(home);
    *out = p;
    return true;
}

/* The lock-free hit of any thread.  HIT_DONE: hit, counted, *out set;
 * HIT_UNCOUNTED: it would hit, but the thread has no slot (yet, or while it
 * is inside a callback of the cache's). */
static int hit_fast(xmc_cache *c, uint64_t paddr, void **out)
{
    uintptr_t self = this_thread();
    hit_slot *mine;
    void *p;

    if (hit_check(c, paddr, &p))
        return HIT_NONE;
    if (!(mine = slot_find(c->hits, self)))
        return HIT_UNCOUNTED;
    hit_count(mine);
    *out = p;
    return HIT_DONE;
}

/*
 * The locked fast path, for an unlocked request of size 0: the last entry
 * covers paddr's bucket and its page is valid, inline in map_call(): it
 * serves what the lock-free hit leaves (a partly mapped last entry, a thread
 * without a hit slot, a writer at work).
 */
static inline bool hit_locked(xmc_cache *c, const xmc_entry *e, uint64_t paddr,
                              void **out)
{
    uint64_t offset = paddr & (c->bucket_size - 1);

    if (!e || e->index != paddr >> c->shift ||
        !pages_valid(e, offset >> XMC_PAGE_SHIFT, 1))
        return false;
    c->st.hits++;
    *out = e->vaddr + offset;
    return true;
}

/* The pages of a request of `size` bytes at paddr (size 0: the one page of
 * paddr), and in *cache_size the bytes of whole buckets an entry for it maps. */
static inline uint64_t request_pages(const xmc_cache *c, uint64_t paddr, uint64_t size,
                                     uint64_t *cache_size)
{
    uint64_t offset = paddr & (c->bucket_size - 1);

    if (!size) {
        *cache_size = c->bucket_size;
        return 1;
    }
    *cache_size = (offset + size + c->bucket_size - 1) & ~(c->bucket_size - 1);
    return ((paddr & (XMC_PAGE_SIZE - 1)) + size + XMC_PAGE_SIZE - 1) >> XMC_PAGE_SHIFT;
}

/* One more lock on e, recorded at addr: XMC_EOVERFLOW at lock_limit, or the
 * record's error, with nothing changed. */
static XMC_INLINE int entry_lock(xmc_cache *c, xmc_entry *e, uintptr_t addr, uint64_t size,
                                 uint64_t tag, bool dma)
{
    int rc;

    if (e->lock >= c->lock_limit)
        return XMC_EOVERFLOW;
    if ((rc = record_add(c, e, addr, size, tag, dma)) != XMC_OK)
        return rc;
    e->lock++;
    return XMC_OK;
}

/* Everything but the fast path, which the caller has tried (or which cannot
 * serve: locked or sized); kept out of line so xmc_map() stays small. */
XMC_NOINLINE static int map_locked(xmc_cache *c, uint64_t paddr, uint64_t size,
                                   unsigned flags, uint64_t tag, void **out)
{
    bool lock = flags & XMC_LOCK, translated = false, dummy = false;
    uint64_t index = paddr >> c->shift;
    uint64_t offset = paddr & (c->bucket_size - 1);
    xmc_entry *e = NULL; /* set by find_or_map; gcc -O1 cannot tell */
    int rc;

    if (!xmc_range_ok(paddr, size) || size > c->max_size)
        return XMC_EINVAL;
    if (!lock && c->grants)
        return XMC_EGRANT;
    if (lock && c->lock_limit == 0)
        return XMC_EOVERFLOW; /* before any lookup: nothing changes */
    for (;;) {
        uint64_t cache_size, n = request_pages(c, paddr, size, &cache_size);

        rc = find_or_map(c, index, cache_size, offset >> XMC_PAGE_SHIFT, n, dummy,
                         flags & MAP_NOWAIT, &e);
        if (rc != XMC_EMAP)
            break;
        set_last(c, NULL);
        if (!translated && (c->translate || c->be->translate)) {
            uint64_t np;
            rc = translate_unlocked(c, paddr, size, &np);
            if (rc != XMC_OK)
                return rc;
            TRACE(c, XMC_EV_TRANSLATE, XMC_OK, flags & (XMC_LOCK | XMC_DMA), np, size, 0,
                  lock ? tag : 0, paddr);
            translated = true;
            paddr = np;
            index = paddr >> c->shift;
            offset = paddr & (c->bucket_size - 1);
        } else if (!dummy && c->dummy) {
            dummy = true;
        } else {
            return XMC_EMAP;
        }
    }
    if (rc != XMC_OK)
        return rc;
    if (lock && (rc = entry_lock(c, e, (uintptr_t)(e->vaddr + offset), size, tag,
                                 flags & XMC_DMA)) != XMC_OK) {
        if (rc == XMC_EOVERFLOW) {
            /* e was locked already, so it was found, not mapped: take back
             * the hit and leave everything as it was. */
            c->st.hits--;
        } else if (c->grants && e->lock == 0) { /* just mapped for this request */
            entry_destroy(c, e);
        }
        return rc;
    }
    set_last(c, e);
    *out = e->vaddr + offset;
    return XMC_OK;
}

/* map_locked(), and its events when traced: a hit of the fast path (which
 * is off while traced), then a hit, a miss, a lock overflow or a refusal. */
XMC_NOINLINE static int map_slow(xmc_cache *c, uint64_t paddr, uint64_t size,
                                 unsigned flags, uint64_t tag, void **out)
{
    unsigned ev_flags = flags & (XMC_LOCK | XMC_DMA);
    uint64_t misses = c->st.misses;
    uint32_t kind = 0;
    int rc;

    if (!c->traced) /* (the hook went while translate ran: copy_locked) */
        return map_locked(c, paddr, size, flags, tag, out);
    if (!(flags & XMC_LOCK) && !size && hit_locked(c, get_last(c), paddr, out))
        rc = XMC_OK;
    else
        rc = map_locked(c, paddr, size, flags, tag, out);
    if (rc == XMC_EGRANT)
        kind = XMC_EV_REFUSED;
    else if (rc == XMC_EOVERFLOW)
        kind = XMC_EV_LOCK_OVERFLOW;
    else if (c->st.misses != misses)
        kind = XMC_EV_MISS;
    else if (rc == XMC_OK)
        kind = XMC_EV_HIT;
    if (kind && c->traced) /* translate may have run: the hook may be gone */
        trace_emit(c, kind, rc, ev_flags, paddr, size, rc == XMC_OK ? (uintptr_t)*out : 0,
                   flags & XMC_LOCK ? tag : 0, 0);
    return rc;
}

/* Everything but the inline hit: the lock-free hit of a thread outside its
 * home slot, or the map under the mutex. */
XMC_NOINLINE static int map_call(xmc_cache *c, uint64_t paddr, uint64_t size,
                                 unsigned flags, uint64_t tag, void **out)
{
    int rc, hit = HIT_NONE;

    if (!c || !out || (flags & ~(unsigned)(XMC_LOCK | XMC_DMA | MAP_NOWAIT)))
        return XMC_EINVAL;
    if (!(flags & XMC_LOCK) && !size && (hit = hit_fast(c, paddr, out)) == HIT_DONE)
        return XMC_OK;
    if ((rc = cache_lock(c, !(flags & MAP_NOWAIT))) != XMC_OK)
        return rc;
    if (hit == HIT_UNCOUNTED) /* the next hit of this thread takes no lock */
        slot_claim(c);
    /* A closed cache has no entries, so no last entry: it never hits. */
    if ((flags & XMC_LOCK) || size || !hit_locked(c, c->fast, paddr, out))
        rc = !c->unusual ? map_locked(c, paddr, size, flags, tag, out)
             : c->closed ? XMC_ECLOSED
                         : map_slow(c, paddr, size, flags, tag, out);
    mutex_unlock(&c->mutex);
    return rc;
}

/* The lock-free hit first, inline, for a request of size 0 and no flags
 * (an unlocked one that is not DMA); then the rest, in which size, flags and
 * tag (unused unlocked) are constants, so that the hit keeps only c, paddr
 * and out.  (An unlocked DMA request hits lock-free in map_call().) */
#define HIT_FIRST(c, paddr, size, flags, out, more)                           \
    do {                                                                      \
        if (XMC_LIKELY(!((size) | (flags)) && (c) && (out)))                  \
            return hit_home((c), (paddr), (out)) ? XMC_OK                     \
                                                 : map_call((c), (paddr), 0, (more), 0, (out)); \
    } while (0)

XMC_LINE_ALIGNED int xmc_map(xmc_cache *c, uint64_t paddr, uint64_t size, unsigned flags,
                             uint64_t tag, void **out)
{
    HIT_FIRST(c, paddr, size, flags, out, 0u);
    return (flags & MAP_NOWAIT) ? XMC_EINVAL : map_call(c, paddr, size, flags, tag, out);
}

XMC_LINE_ALIGNED int xmc_map_nowait(xmc_cache *c, uint64_t paddr, uint64_t size,
                                    unsigned flags, uint64_t tag, void **out)
{
    HIT_FIRST(c, paddr, size, flags, out, MAP_NOWAIT);
    return (flags & MAP_NOWAIT) ? XMC_EINVAL
                                : map_call(c, paddr, size, flags | MAP_NOWAIT, tag, out);
}

/* ---- batches ------------------------------------------------------------ */

#define SG_ON_STACK 64 /* addresses a batch keeps on the stack; more are allocated */

/*
 * Segment s of a batch on a usual cache, when it hits: an entry maps it
 * whole and takes one more lock.  Then its address is in *out and the entry
 * in *ep, which the caller makes the last entry (once, for a run of hits).
 * False, with nothing changed, for anything else (a miss, a lock overflow,
 * no memory for the record), which the caller hands to map_slow().
 */
static inline bool sg_hit(xmc_cache *c, const xmc_sg *s, unsigned flags, uint64_t tag,
                          void **out, xmc_entry **ep)
{
    uint64_t offset = s->paddr & (c->bucket_size - 1), cache_size;
    uint64_t n = request_pages(c, s->paddr, s->size, &cache_size);
    xmc_entry *e = entry_find(c, s->paddr >> c->shift, cache_size, offset >> XMC_PAGE_SHIFT, n);

    if (!e || entry_lock(c, e, (uintptr_t)(e->vaddr + offset), s->size, tag,
                         flags & XMC_DMA) != XMC_OK)
        return false;
    c->st.hits++;
    *out = e->vaddr + offset;
    *ep = e;
    return true;
}

/*
 * Map segments 0..n-1 as locked map_locked() calls into addrs[] (a hit on a
 * usual cache by sg_hit(), without the rest of that path).  When one fails,
 * undo the records of those before it and take back what they moved of
 * hits, misses and remaps (kept apart from other threads' counts by the
 * tally); the entries they mapped stay, unlocked (on a grant cache they go
 * with their last lock, as record_drop() does).
 */
static int map_sg_locked(xmc_cache *c, const xmc_sg *segs, size_t n, unsigned flags,
                         uint64_t tag, void **addrs)
{
    xmc_entry *last = get_last(c), *hit = NULL; /* hit: the last entry, not yet set */
    sg_tally t = { 0 }, before = { 0 }; /* before: what segments 0..i-1 moved */
    size_t i;
    int rc = XMC_OK;

    for (i = 0; i < n; i++)
        if (!xmc_range_ok(segs[i].paddr, segs[i].size) || segs[i].size > c->max_size)
            return XMC_EINVAL;
    tally_resume(c, &t);
    for (i = 0; i < n; i++) {
        if (!c->unusual && sg_hit(c, &segs[i], flags, tag, &addrs[i], &hit))
            continue;
        if (hit) /* as if each hit had set it */
            set_last(c, hit);
        hit = NULL;
        before = tally_now(c, &t); /* (only map_slow() can fail) */
        rc = map_slow(c, segs[i].paddr, segs[i].size, flags | XMC_LOCK, tag, &addrs[i]);
        if (rc != XMC_OK)
            break;
    }
    c->tally = NULL;
    if (hit)
        set_last(c, hit);
    if (rc == XMC_OK)
        return XMC_OK;
    /* Undo segments i - 1 down to 0, newest first: each one's record is the
     * newest at its address with this tag (unless a translate callback let
     * another thread in: then this is what n xmc_unlock_tag() calls do). */
    while (i--) {
        uint32_t *link = record_find(c, (uintptr_t)addrs[i], true, tag);
        if (link)
            (void)record_drop(c, link, false); /* the batch's own error is the one to report */
    }
    c->st.hits -= before.hits;
    c->st.misses -= before.misses;
    c->st.remaps -= before.remaps;
    if (flags & MAP_NOWAIT) /* nothing was mapped or dropped: last is still live */
        set_last(c, last);
    return rc;
}

/*
 * map_sg_locked(), with the rule of every refused _nowait call: a batch that
 * answers XMC_EAGAIN has traced nothing.  A _nowait batch never gives up the
 * mutex (it neither translates nor reaches the backend), so it runs with the
 * hook off, unseen by any other thread; then its events are told: a hit per
 * segment when it succeeded (a _nowait batch has no misses), and when it
 * failed otherwise, a second, traced run, which does exactly what the first
 * did, since the failed first run changed nothing.
 */
static int map_sg_quiet(xmc_cache *c, const xmc_sg *segs, size_t n, unsigned flags,
                        uint64_t tag, void **addrs)
{
    int rc;

    c->traced = false;
    rc = map_sg_locked(c, segs, n, flags, tag, addrs);
    c->traced = true;
    if (rc == XMC_OK) {
        for (size_t i = 0; i < n && c->traced; i++)
            trace_emit(c, XMC_EV_HIT, XMC_OK, XMC_LOCK | (flags & XMC_DMA), segs[i].paddr,
                       segs[i].size, (uintptr_t)addrs[i], tag, 0);
    } else if (rc != XMC_EAGAIN) {
        rc = map_sg_locked(c, segs, n, flags, tag, addrs);
    }
    return rc;
}

static int map_sg_call(xmc_cache *c, const xmc_sg *segs, size_t n, unsigned flags,
                       uint64_t tag, void **out)
{
    void *stack[SG_ON_STACK], **addrs = stack;
    int rc;

    /* n <= XMC_SG_MAX: n * sizeof(xmc_sg) cannot overflow. */
    if (!c || !segs || !out || n == 0 || n > XMC_SG_MAX ||
        (flags & ~(unsigned)(XMC_LOCK | XMC_DMA | MAP_NOWAIT)))
        return XMC_EINVAL;
    if (n > SG_ON_STACK && !(addrs = malloc(n * sizeof(*addrs))))
        return XMC_ENOMEM;
    rc = cache_lock(c, !(flags & MAP_NOWAIT));
    if (rc == XMC_OK) {
        rc = c->closed                               ? XMC_ECLOSED
             : (flags & MAP_NOWAIT) && c->traced ? map_sg_quiet(c, segs, n, flags, tag, addrs)
                                                 : map_sg_locked(c, segs, n, flags, tag, addrs);
        mutex_unlock(&c->mutex);
    }
    if (rc == XMC_OK)
        memcpy(out, addrs, n * sizeof(*out));
    if (addrs != stack)
        free(addrs);
    return rc;
}

int xmc_map_sg(xmc_cache *c, const xmc_sg *segs, size_t n, unsigned flags, uint64_t tag,
               void **out)
{
    return (flags & MAP_NOWAIT) ? XMC_EINVAL : map_sg_call(c, segs, n, flags, tag, out);
}

int xmc_map_sg_nowait(xmc_cache *c, const xmc_sg *segs, size_t n, unsigned flags,
                      uint64_t tag, void **out)
{
    return (flags & MAP_NOWAIT) ? XMC_EINVAL
                                : map_sg_call(c, segs, n, flags | MAP_NOWAIT, tag, out);
}

/* The hash link of the newest record at addr with tag whose claim is `claimed`
 * (0: none, 1: claimed, 2: claimed and its unlock event told). */
static XMC_INLINE uint32_t *record_find_claimed(xmc_cache *c, uintptr_t addr, uint64_t tag,
                                                unsigned claimed)
{
    uint32_t *link;

    if (!c->rhash)
        return NULL;
    for (link = &c->rhash[rhash_slot(c, addr)]; *link; link = &rec(c, *link)->hnext) {
        const record *r = rec(c, *link);
        if (r->addr == addr && r->tag == tag && r->claimed == claimed)
            return link;
    }
    return NULL;
}

/* Give back the claims `claim` of the first n addresses. */
static void claims_undo(xmc_cache *c, void *const *addrs, size_t n, uint64_t tag,
                        unsigned claim)
{
    for (size_t i = 0; i < n; i++) {
        uint32_t *link;
        while ((link = record_find_claimed(c, (uintptr_t)addrs[i], tag, claim)))
            rec(c, *link)->claimed = 0;
    }
}

/*
 * The batch's unlock when its records are the n newest, in order, as
 * xmc_map_sg() leaves them: then they are what the lookups would find, and
 * they go newest first, each the head of its hash chain (chains are newest
 * first), without a lookup.  False, with nothing changed, when they are not.
 */
static bool unlock_sg_newest(xmc_cache *c, void *const *addrs, size_t n, uint64_t tag)
{
    uint32_t id = c->newest;

    for (size_t i = n; i-- > 0; id = rec(c, id)->older)
        if (!id || rec(c, id)->addr != (uintptr_t)addrs[i] || rec(c, id)->tag != tag)
            return false;
    while (n--) {
        uint32_t *link = &c->rhash[rhash_slot(c, rec(c, c->newest)->addr)];
        while (*link != c->newest)
            link = &rec(c, *link)->hnext;
        record_del(c, link);
    }
    return true;
}

/* Claim a record for every address first; when traced, tell every unlock
 * (a refused one stops the batch, nothing changed); then drop the claimed ones. */
static int unlock_sg_locked(xmc_cache *c, void *const *addrs, size_t n, uint64_t tag)
{
    unsigned claim = 1;
    size_t i;
    int rc = XMC_OK;

    if (!c->unusual && unlock_sg_newest(c, addrs, n, tag))
        return XMC_OK;

    for (i = 0; i < n; i++) {
        uint32_t *link = record_find_claimed(c, (uintptr_t)addrs[i], tag, 0);
        if (!link)
            break;
        rec(c, *link)->claimed = 1;
    }
    if (i < n) { /* give the claims back */
        TRACE(c, XMC_EV_UNLOCK_UNKNOWN, XMC_ENOENT, 0, 0, 0, (uintptr_t)addrs[i], tag, 0);
        claims_undo(c, addrs, i, tag, 1);
        return XMC_ENOENT;
    }
    if (c->traced) {
        for (i = 0; i < n; i++) {
            record *r = rec(c, *record_find_claimed(c, (uintptr_t)addrs[i], tag, 1));
            r->claimed = 2;
            if (trace_unlock(c, r)) {
                claims_undo(c, addrs, n, tag, 1);
                claims_undo(c, addrs, n, tag, 2);
                return XMC_ECALLBACK;
            }
        }
        claim = 2;
    }
    for (i = 0; i < n; i++)
        if (record_release(c, record_find_claimed(c, (uintptr_t)addrs[i], tag, claim)) != XMC_OK)
            rc = XMC_ESYS;
    return rc;
}

int xmc_unlock_sg(xmc_cache *c, void *const *addrs, size_t n, uint64_t tag)
{
    if (!addrs || n == 0 || n > XMC_SG_MAX)
        return XMC_EINVAL;
    LOCKED_CALL(c, unlock_sg_locked(c, addrs, n, tag));
}

int xmc_unlock_sg_nowait(xmc_cache *c, void *const *addrs, size_t n, uint64_t tag)
{
    if (!addrs || n == 0 || n > XMC_SG_MAX)
        return XMC_EINVAL;
    /* Under grant rules a last unlock reaches the backend: the waiting call does it. */
    LOCKED_CALL_IF(c, false, c->grants ? XMC_EAGAIN : unlock_sg_locked(c, addrs, n, tag));
}

/* ---- unlock and reverse lookup ------------------------------------------ */

/* Under grant rules the last unlock of an entry unmaps it: then XMC_ESYS
 * when the backend fails to (the lock is gone all the same), or, when
 * `nowait`, XMC_EAGAIN with nothing done, since the backend would run. */
static inline int unlock_locked(xmc_cache *c, uintptr_t addr, bool by_tag, uint64_t tag,
                                uint64_t *tag_out, bool nowait)
{
    uint32_t *link = record_find(c, addr, by_tag, tag);
    const record *r;
    xmc_entry *e;
    int rc;

    if (!link) {
        if (c->unusual)
            trace_unknown(c, XMC_EV_UNLOCK_UNKNOWN, addr, tag);
        return XMC_ENOENT;
    }
    r = rec(c, *link);
    e = r->e;
    if (nowait && c->grants && e->lock == 1)
        return XMC_EAGAIN;
    tag = r->tag;
    rc = record_drop(c, link, true);
    if (tag_out && rc != XMC_ECALLBACK)
        *tag_out = tag;
    return rc;
}

int xmc_unlock(xmc_cache *c, const void *addr, uint64_t *tag_out)
{
    LOCKED_CALL(c, unlock_locked(c, (uintptr_t)addr, false, 0, tag_out, false));
}

int xmc_unlock_tag(xmc_cache *c, const void *addr, uint64_t tag)
{
    LOCKED_CALL(c, unlock_locked(c, (uintptr_t)addr, true, tag, NULL, false));
}

int xmc_unlock_tag_nowait(xmc_cache *c, const void *addr, uint64_t tag)
{
    LOCKED_CALL_IF(c, false, unlock_locked(c, (uintptr_t)addr, true, tag, NULL, true));
}

static int ram_addr_locked(xmc_cache *c, const void *addr, uint64_t *out)
{
    uint32_t *link = record_find(c, (uintptr_t)addr, false, 0);
    const xmc_entry *e = link ? rec(c, *link)->e : tree_find(c, (uintptr_t)addr);

    if (!e) {
        if (c->unusual)
            trace_unknown(c, XMC_EV_RAM_ADDR_UNKNOWN, (uintptr_t)addr, 0);
        return XMC_ENOENT;
    }
    *out = entry_paddr(c, e, (uintptr_t)addr);
    return XMC_OK;
}

int xmc_ram_addr(xmc_cache *c, const void *addr, uint64_t *out)
{
    if (!out)
        return XMC_EINVAL;
    LOCKED_CALL(c, ram_addr_locked(c, addr, out));
}

int xmc_ram_addr_nowait(xmc_cache *c, const void *addr, uint64_t *out)
{
    if (!out)
        return XMC_EINVAL;
    LOCKED_CALL_IF(c, false, ram_addr_locked(c, addr, out));
}

/* ---- invalidate --------------------------------------------------------- */

/* The invalidate event, then one per DMA mapping in flight, oldest first. */
XMC_COLD static void trace_invalidate(xmc_cache *c)
{
    TRACE(c, XMC_EV_INVALIDATE, XMC_OK, 0, 0, c->st.dma_locked, 0, 0, 0);
    for (uint32_t id = c->oldest; id && c->traced; id = rec(c, id)->newer) {
        const record *r = rec(c, id);

        if (r->dma)
            trace_emit(c, XMC_EV_DMA_IN_FLIGHT, XMC_OK, XMC_LOCK | XMC_DMA,
                       entry_paddr(c, r->e, r->addr), r->size, r->addr, r->tag, 0);
    }
}

static int invalidate_locked(xmc_cache *c, xmc_record **dma_out, size_t *n_dma)
{
    int rc = XMC_OK;

    if (dma_out) {
        rc = records_copy(c, true, dma_out, n_dma);
        if (rc != XMC_OK)
            return rc;
    }
    if (c->traced)
        trace_invalidate(c);
    for (xmc_entry *e = c->live, *next; e; e = next) {
        next = e->lnext;
        if (e->lock == 0) {
            int urc = entry_destroy(c, e);
            if (rc == XMC_OK)
                rc = urc;
        }
    }
    set_last(c, NULL);
    c->st.invalidations++;
    return rc;
}

int xmc_invalidate(xmc_cache *c, xmc_record **dma_out, size_t *n_dma)
{
    if (!dma_out != !n_dma)
        return XMC_EINVAL;
    LOCKED_CALL(c, invalidate_locked(c, dma_out, n_dma));
}

/* ---- replace ------------------------------------------------------------ */

/*
 * Do the locked mappings of e all lie on pages e has mapped?  A replace must
 * not move one onto pages that cannot be mapped: its holder would fault.
 * O(outstanding records), but replace is rare.
 */
static bool records_valid(const xmc_cache *c, const xmc_entry *e)
{
    for (uint32_t id = c->oldest; id; id = rec(c, id)->newer) {
        const record *r = rec(c, id);
        uint64_t off = r->addr - (uintptr_t)e->vaddr;

        if (r->e == e &&
            !pages_valid(e, off >> XMC_PAGE_SHIFT,
                         ((off & (XMC_PAGE_SIZE - 1)) + (r->size ? r->size : 1) +
                          XMC_PAGE_SIZE - 1) >> XMC_PAGE_SHIFT))
            return false;
    }
    return true;
}

/* Give up on e's contents: keep its range reserved with no access. */
static void entry_blank(xmc_cache *c, xmc_entry *e)
{
    if (mmap(e->vaddr, e->size, PROT_NONE,
             MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0) ==
        MAP_FAILED)
        backend_unmap(c, e->vaddr, e->size);
    e->flags = ENTRY_ANON;
    memset(e->valid, 0, bitmap_words(e->size >> XMC_PAGE_SHIFT) * sizeof(*e->valid));
}

static int replace_locked(xmc_cache *c, uint64_t old_paddr, uint64_t new_paddr,
                          uint64_t size, void **out)
{
    uint64_t index = old_paddr >> c->shift, old_index;
    uint64_t offset = old_paddr & (c->bucket_size - 1);
    uint64_t new_offset = new_paddr & (c->bucket_size - 1);
    uint64_t cache_size = c->bucket_size, n = 1;
    xmc_entry *e;
    bool was_dummy, was_last;
    int rc;

    if (!xmc_range_ok(old_paddr, size) || !xmc_range_ok(new_paddr, size) ||
        size > c->max_size)
        return XMC_EINVAL;
    if (c->grants) /* a grant entry is never remapped in place */
        return XMC_EGRANT;
    if (size) {
        cache_size = (offset + size + c->bucket_size - 1) & ~(c->bucket_size - 1);
        n = ((new_paddr & (XMC_PAGE_SIZE - 1)) + size + XMC_PAGE_SIZE - 1) >> XMC_PAGE_SHIFT;
    }
    for (e = c->slots[slot_of(c, index)]; e; e = e->next)
        if (e->index == index && e->size == cache_size)
            break;
    if (!e)
        return XMC_ENOENT;
    if ((new_offset >> XMC_PAGE_SHIFT) + n > (cache_size >> XMC_PAGE_SHIFT))
        return XMC_EINVAL;
    /* e keeps its size: it must fit below 2**64 at the new index too. */
    if (!xmc_range_ok(new_paddr - new_offset, cache_size))
        return XMC_EINVAL;
    old_index = e->index;
    was_dummy = e->flags & ENTRY_DUMMY;
    was_last = get_last(c) == e; /* map_into() forgets it */
    rc = map_into(c, e, new_paddr >> c->shift, cache_size, true, false);
    if (rc == XMC_OK && (!pages_valid(e, new_offset >> XMC_PAGE_SHIFT, n) ||
                         (e->lock && !records_valid(c, e))))
        rc = XMC_EMAP;
    if (rc != XMC_OK) {
        /* Put back what was there: guest pages, or anonymous memory for a
         * dummy entry (whose old guest pages may not be mappable at all). */
        if (map_into(c, e, old_index, cache_size, true, was_dummy) != XMC_OK) {
            e->index = old_index; /* the records still name the old address */
            if (e->lock == 0) {
                entry_blank(c, e);
                entry_destroy(c, e);
                return rc;
            }
            if (map_into(c, e, old_index, cache_size, true, true) == XMC_OK) {
                /* Its holders still use it: dummy memory, never no-access; but
                 * no lookup may match it again, so its pages count as invalid. */
                e->flags &= ~ENTRY_ALLVALID;
                memset(e->valid, 0, bitmap_words(e->size >> XMC_PAGE_SHIFT) * sizeof(*e->valid));
            } else {
                entry_blank(c, e); /* not even anonymous memory could be had */
            }
        }
    } else if (slot_of(c, e->index) != slot_of(c, old_index)) {
        chain_del(e);
        chain_append(c, e);
    }
    /* As in QEMU, a replace leaves the last entry alone, failed or not: still
     * e, over whatever bucket it now holds (published again if every page of
     * it is mapped; an entry with no valid page never hits). */
    if (was_last)
        set_last(c, e);
    if (rc == XMC_OK)
        *out = e->vaddr + new_offset;
    return rc;
}

static int replace_traced(xmc_cache *c, uint64_t old_paddr, uint64_t new_paddr,
                          uint64_t size, void **out)
{
    int rc = replace_locked(c, old_paddr, new_paddr, size, out);

    TRACE(c, XMC_EV_REPLACE, rc, 0, new_paddr, size, rc == XMC_OK ? (uintptr_t)*out : 0, 0,
          old_paddr);
    return rc;
}

int xmc_replace(xmc_cache *c, uint64_t old_paddr, uint64_t new_paddr,
                uint64_t size, void **out)
{
    if (!out)
        return XMC_EINVAL;
    LOCKED_CALL(c, replace_traced(c, old_paddr, new_paddr, size, out));
}

/* ---- listing, copying, statistics --------------------------------------- */

int xmc_locked(xmc_cache *c, xmc_record **out, size_t *n)
{
    if (!out || !n)
        return XMC_EINVAL;
    LOCKED_CALL(c, records_copy(c, false, out, n));
}

/* The bytes of a copy at paddr (n left) that one map serves: one bucket's,
 * at most max_size of them (map_locked refuses more, even in one bucket). */
static size_t copy_chunk(const xmc_cache *c, uint64_t paddr, size_t n)
{
    uint64_t room = c->bucket_size - (paddr & (c->bucket_size - 1));
    size_t chunk = n < room ? n : (size_t)room;

    return chunk > c->max_size ? (size_t)c->max_size : chunk;
}

#define PIECES_ON_STACK 16

/*
 * map_slow() for a copy: also counts in *hits the hits it served, which a
 * copy stopped by its trace hook takes back (copy_stopped).
 */
static int copy_map(xmc_cache *c, uint64_t paddr, size_t n, unsigned flags, void **out,
                    uint64_t *hits)
{
    uint64_t misses = c->st.misses;
    int rc = map_slow(c, paddr, n, flags, 0, out);

    *hits += rc == XMC_OK && c->st.misses == misses;
    return rc;
}

/* Whether the trace hook refused one of this copy's events (refusals: the
 * count when it began, if traced then: an untraced copy reads no thread-local
 * variable); then the hits it counted are taken back. */
static bool copy_stopped(xmc_cache *c, bool traced, unsigned refusals, uint64_t hits)
{
    if (!traced || trace_refusals == refusals)
        return false;
    c->st.hits -= hits;
    return true;
}

/*
 * Copy n bytes between buf and guest memory, all or nothing: every chunk is
 * mapped first, its entry pinned (lock count raised, no record) so that a
 * later chunk cannot remap it, and only then is a byte copied.  A failure
 * leaves guest memory and buf untouched.  So does a trace hook that refuses
 * one of the copy's events: XMC_ECALLBACK, and no hit counted (the entries
 * it mapped stay, as after any failure).
 */
static int copy_locked(xmc_cache *c, uint64_t paddr, uint8_t *buf, size_t n,
                       bool to_guest, unsigned flags)
{
    struct piece { xmc_entry *e; uint8_t *p; size_t len; uint64_t index; uint32_t flags; }
        stack[PIECES_ON_STACK];
    struct piece *pieces = stack;
    size_t count = 0, pinned = 0, chunk;
    bool traced = c->traced;
    unsigned refusals = traced ? trace_refusals : 0;
    uint64_t hits = 0;
    xmc_entry *e;
    void *p;
    int rc = XMC_OK;

    if (!xmc_range_ok(paddr, n))
        return XMC_EINVAL;
    if (n == 0)
        return XMC_OK;
    chunk = copy_chunk(c, paddr, n);
    /* Without waiting, one bucket only: a later one could miss after the
     * first was counted as a hit, and the waiting retry would count it twice. */
    if ((flags & MAP_NOWAIT) && chunk < n)
        return XMC_EAGAIN;
    if (chunk == n) { /* the common case: one map, nothing to pin */
        if ((rc = copy_map(c, paddr, n, flags, &p, &hits)) != XMC_OK)
            return rc;
        if (copy_stopped(c, traced, refusals, hits))
            return XMC_ECALLBACK;
        memcpy(to_guest ? p : buf, to_guest ? buf : p, n);
        return XMC_OK;
    }
    for (uint64_t at = paddr, left = n; left; at += chunk, left -= chunk, count++)
        chunk = copy_chunk(c, at, (size_t)left);
    if (count > PIECES_ON_STACK && !(pieces = calloc(count, sizeof(*pieces))))
        return XMC_ENOMEM;
again:
    for (uint64_t at = paddr, left = n; left; at += chunk, left -= chunk) {
        chunk = copy_chunk(c, at, (size_t)left);
        if ((rc = copy_map(c, at, chunk, flags, &p, &hits)) != XMC_OK)
            break;
        e = get_last(c); /* the entry that served this chunk */
        if (e->lock == UINT32_MAX) { /* no room to pin it */
            rc = XMC_EOVERFLOW;
            break;
        }
        e->lock++;
        pieces[pinned++] = (struct piece){ e, p, chunk, e->index, e->flags };
    }
    /* translate runs with the mutex dropped: meanwhile another thread may
     * have replaced a pinned entry (moved it to other guest pages).  Then
     * start again, so the copy sees one consistent state. */
    for (size_t i = 0; rc == XMC_OK && i < pinned; i++)
        if (pieces[i].e->index != pieces[i].index || pieces[i].e->flags != pieces[i].flags) {
            while (pinned)
                pieces[--pinned].e->lock--;
            goto again;
        }
    if (rc == XMC_OK && copy_stopped(c, traced, refusals, hits))
        rc = XMC_ECALLBACK;
    for (size_t i = 0; rc == XMC_OK && i < pinned; buf += pieces[i].len, i++)
        memcpy(to_guest ? pieces[i].p : buf, to_guest ? buf : pieces[i].p, pieces[i].len);
    /* A cache closed while translate ran has freed every entry, pinned or not. */
    for (size_t i = 0; i < pinned && !c->closed; i++)
        pieces[i].e->lock--;
    if (pieces != stack)
        free(pieces);
    return rc;
}

int xmc_read(xmc_cache *c, uint64_t paddr, void *buf, size_t n)
{
    if (!buf && n)
        return XMC_EINVAL;
    LOCKED_CALL(c, copy_locked(c, paddr, buf, n, false, 0));
}

int xmc_read_nowait(xmc_cache *c, uint64_t paddr, void *buf, size_t n)
{
    if (!buf && n)
        return XMC_EINVAL;
    LOCKED_CALL_IF(c, false, copy_locked(c, paddr, buf, n, false, MAP_NOWAIT));
}

int xmc_write(xmc_cache *c, uint64_t paddr, const void *buf, size_t n)
{
    if (!buf && n)
        return XMC_EINVAL;
    LOCKED_CALL(c, copy_locked(c, paddr, (uint8_t *)(uintptr_t)buf, n, true, 0));
}

int xmc_write_nowait(xmc_cache *c, uint64_t paddr, const void *buf, size_t n)
{
    if (!buf && n)
        return XMC_EINVAL;
    LOCKED_CALL_IF(c, false, copy_locked(c, paddr, (uint8_t *)(uintptr_t)buf, n, true, MAP_NOWAIT));
}

static int stats_locked(xmc_cache *c, xmc_stats *out)
{
    *out = c->st;
    out->hits += slot_hits(c);
    return XMC_OK;
}

int xmc_stats_get(xmc_cache *c, xmc_stats *out)
{
    if (!out)
        return XMC_EINVAL;
    LOCKED_CALL(c, stats_locked(c, out));
}

static int memory_locked(xmc_cache *c, xmc_memory *out)
{
    uint64_t entries = 0;

    for (const xmc_entry *e = c->live; e; e = e->lnext)
        entries += entry_bytes(e->size);
    *out = (xmc_memory){
        .record_bytes = (uint64_t)c->rec_cap * sizeof(record) +
                        (c->rhash ? ((uint64_t)1 << c->rhash_bits) * sizeof(uint32_t) : 0),
        .entry_bytes = entries,
        .slot_bytes = sizeof(*c) + c->nr_slots * sizeof(*c->slots),
    };
    return XMC_OK;
}

int xmc_memory_get(xmc_cache *c, xmc_memory *out)
{
    if (!out)
        return XMC_EINVAL;
    LOCKED_CALL(c, memory_locked(c, out));
}
