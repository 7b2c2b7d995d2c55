/*
 * cache.c - the mapcache proper.
 *
 * Entries hang off hash slots (index % nr_slots) in doubly linked chains, and
 * every live entry is also on one "live" list, so invalidate costs the number
 * of live entries rather than the number of slots, and in a search tree keyed
 * by host address range, so any interior pointer resolves in O(log n).
 * Locked mappings leave records in a hash table keyed by exact host address
 * (O(1) unlock and reverse lookup) that point straight at their entry, and on
 * an age list so they can be listed oldest first.
 *
 * Lock convention: every public xmc_x() takes c->mutex and calls x_locked();
 * helpers without the suffix also expect the caller to hold it.
 */
#include "xmc_internal.h"

enum {
    ENTRY_DUMMY = 1u,    /* anonymous memory standing in for guest memory */
    ENTRY_ANON = 2u,     /* unmap with munmap(), not the backend */
    ENTRY_ALLVALID = 4u, /* every page mapped: skip the bitmap */
};

#define BITS_PER_WORD (sizeof(unsigned long) * CHAR_BIT)
#define ERRS_ON_STACK 1024
#define RHASH_MIN_BITS 6

typedef struct xmc_entry {
    uint8_t *vaddr;
    uint64_t index; /* guest address >> bucket shift */
    uint64_t size; /* bytes mapped, whole buckets */
    uint32_t lock; /* outstanding locked mappings */
    uint32_t flags;
    struct xmc_entry *next; /* slot chain */
    struct xmc_entry **pprev;
    struct xmc_entry *lnext; /* live list */
    struct xmc_entry *lprev;
    unsigned long *valid; /* one bit per page */
} xmc_entry;

typedef struct record {
    uintptr_t addr;
    xmc_entry *e;
    uint64_t size;
    uint64_t tag;
    struct record *hnext; /* hash chain, newest first */
    struct record *older; /* age list */
    struct record *newer;
    bool dma;
} record;

struct xmc_cache {
    pthread_mutex_t mutex;
    const xmc_backend *be;
    unsigned shift;
    uint64_t bucket_size;
    uint64_t max_size;
    uint64_t nr_slots;
    xmc_entry **slots;
    xmc_entry *last; /* fast path: the entry that served last */
    xmc_entry *live; /* live list head */
    void *tree; /* tsearch() root, entries by host range */
    record **rhash;
    unsigned rhash_bits;
    record *oldest;
    record *newest;
    uint32_t lock_limit;
    bool dummy;
    xmc_translate_fn translate;
    void *translate_opaque;
    xmc_stats st;
};

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
    default: return "unknown error";
    }
}

/* ---- page bitmaps ---------------------------------------------------- */

static size_t bitmap_words(uint64_t pages)
{
    return (size_t)((pages + BITS_PER_WORD - 1) / BITS_PER_WORD);
}

static bool pages_valid(const xmc_entry *e, uint64_t first, uint64_t n)
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

/* ---- the host-address tree (interior pointers) ------------------------ */

static int entry_cmp(const void *a, const void *b)
{
    const xmc_entry *x = a, *y = b;
    uintptr_t xs = (uintptr_t)x->vaddr, ys = (uintptr_t)y->vaddr;

    if (xs + x->size <= ys)
        return -1;
    if (ys + y->size <= xs)
        return 1;
    return 0; /* overlap: entries never overlap, so this is "inside" */
}

static xmc_entry *tree_find(const xmc_cache *c, const void *addr)
{
    xmc_entry probe = { .vaddr = (uint8_t *)(uintptr_t)addr, .size = 1 };
    void *const *node = tfind(&probe, &c->tree, entry_cmp);

    return node ? *(xmc_entry *const *)node : NULL;
}

static void tree_noop(void *p)
{
    (void)p;
}

/* ---- entries ---------------------------------------------------------- */

static void chain_append(xmc_cache *c, xmc_entry *e)
{
    xmc_entry **pp = &c->slots[e->index % c->nr_slots];

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

static int entry_unmap(xmc_cache *c, xmc_entry *e)
{
    if (e->flags & ENTRY_ANON)
        return munmap(e->vaddr, e->size) ? XMC_ESYS : XMC_OK;
    return c->be->unmap(c->be->opaque, e->vaddr, e->size);
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
    if (c->last == e)
        c->last = NULL;
    c->st.entries--;
    c->st.mapped_bytes -= e->size;
    rc = XMC_OK;
    if (e->size) { /* size 0: a failed remap left nothing mapped or indexed */
        tdelete(e, &c->tree, entry_cmp);
        rc = entry_unmap(c, e);
    }
    free(e->valid);
    free(e);
    return rc;
}

/*
 * Map `size` bytes of guest memory from bucket `index` into e, at e->vaddr
 * when `fixed`, filling `bitmap`.  On success e describes the new mapping;
 * on failure e is unchanged (but with `fixed` the old pages may be gone).
 */
static int map_into(xmc_cache *c, xmc_entry *e, uint64_t index, uint64_t size,
                    bool fixed, bool dummy, unsigned long *bitmap)
{
    uint64_t pages = size >> XMC_PAGE_SHIFT;
    int errs_stack[ERRS_ON_STACK];
    int *errs = errs_stack;
    void *addr = NULL;
    bool all = true;
    int rc = XMC_OK;

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
        rc = c->be->map(c->be->opaque, fixed ? e->vaddr : NULL,
                        index << (c->shift - XMC_PAGE_SHIFT), (size_t)pages,
                        errs, &addr);
        if (rc == XMC_OK && !addr)
            rc = XMC_EMAP;
        if (rc == XMC_OK) {
            memset(bitmap, 0, bitmap_words(pages) * sizeof(*bitmap));
            for (uint64_t p = 0; p < pages; p++) {
                if (errs[p])
                    all = false;
                else
                    bitmap[p / BITS_PER_WORD] |= 1ul << (p % BITS_PER_WORD);
            }
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
    xmc_entry *e = calloc(1, sizeof(*e));
    int rc;

    if (!e)
        return XMC_ENOMEM;
    e->valid = calloc(bitmap_words(size >> XMC_PAGE_SHIFT), sizeof(*e->valid));
    if (!e->valid) {
        free(e);
        return XMC_ENOMEM;
    }
    rc = map_into(c, e, index, size, false, dummy, e->valid);
    if (rc == XMC_OK && !tsearch(e, &c->tree, entry_cmp)) {
        entry_unmap(c, e);
        rc = XMC_ENOMEM;
    }
    if (rc != XMC_OK) {
        free(e->valid);
        free(e);
        return rc;
    }
    chain_append(c, e);
    e->lnext = c->live;
    if (c->live)
        c->live->lprev = e;
    c->live = e;
    c->st.entries++;
    c->st.mapped_bytes += size;
    *out = e;
    return XMC_OK;
}

/*
 * Point the unlocked entry e at bucket `index`.  Same size: map over it in
 * place.  Otherwise unmap and map afresh.  On failure e is destroyed.
 */
static int entry_remap(xmc_cache *c, xmc_entry *e, uint64_t index, uint64_t size,
                       bool dummy)
{
    uint64_t old_slot = e->index % c->nr_slots;
    unsigned long *bitmap = e->valid;
    int rc;

    if (size == e->size) {
        rc = map_into(c, e, index, size, true, dummy, e->valid);
        if (rc != XMC_OK) {
            e->flags |= ENTRY_ANON; /* whatever is left there is ours to drop */
            entry_destroy(c, e);
            return rc;
        }
    } else {
        bitmap = calloc(bitmap_words(size >> XMC_PAGE_SHIFT), sizeof(*bitmap));
        if (!bitmap)
            return XMC_ENOMEM;
        tdelete(e, &c->tree, entry_cmp);
        rc = entry_unmap(c, e);
        c->st.mapped_bytes -= e->size;
        e->size = 0;
        if (rc == XMC_OK)
            rc = map_into(c, e, index, size, false, dummy, bitmap);
        if (rc == XMC_OK && !tsearch(e, &c->tree, entry_cmp)) {
            entry_unmap(c, e);
            rc = XMC_ENOMEM;
        }
        if (rc != XMC_OK) {
            free(bitmap);
            e->size = 0; /* nothing left mapped or indexed */
            entry_destroy(c, e);
            return rc;
        }
        free(e->valid);
        e->valid = bitmap;
        c->st.mapped_bytes += size;
    }
    if (index % c->nr_slots != old_slot) {
        chain_del(e);
        chain_append(c, e);
    }
    return XMC_OK;
}

/*
 * Find in the slot of `index` an entry of `size` bytes whose pages
 * [first, first + n) are valid, else reuse the first unlocked entry of the
 * chain, else add one.  XMC_EMAP when the pages are still not valid.
 */
static int find_or_map(xmc_cache *c, uint64_t index, uint64_t size,
                       uint64_t first, uint64_t n, bool dummy, xmc_entry **out)
{
    xmc_entry *e, *reuse = NULL;
    int rc;

    for (e = c->slots[index % c->nr_slots]; e; e = e->next) {
        if (e->index == index && e->size == size && pages_valid(e, first, n)) {
            c->st.hits++;
            *out = e;
            return XMC_OK;
        }
        if (!reuse && e->lock == 0)
            reuse = e;
    }
    c->st.misses++;
    if (reuse) {
        c->st.remaps++;
        rc = entry_remap(c, reuse, index, size, dummy);
        e = reuse;
    } else {
        rc = entry_new(c, index, size, dummy, &e);
    }
    if (rc != XMC_OK)
        return rc;
    if (!pages_valid(e, first, n))
        return XMC_EMAP;
    *out = e;
    return XMC_OK;
}

/* ---- reverse records -------------------------------------------------- */

static size_t rhash_slot(const xmc_cache *c, uintptr_t addr)
{
    return (size_t)(((uint64_t)addr * UINT64_C(0x9E3779B97F4A7C15)) >>
                    (64 - c->rhash_bits));
}

/* Make room for one more record; rebuilds chains newest first. */
static int rhash_reserve(xmc_cache *c)
{
    unsigned bits = c->rhash_bits;
    record **table;

    if (c->rhash && c->st.locked < ((uint64_t)1 << bits))
        return XMC_OK;
    bits = c->rhash ? bits + 1 : RHASH_MIN_BITS;
    table = calloc((size_t)1 << bits, sizeof(*table));
    if (!table)
        return XMC_ENOMEM;
    free(c->rhash);
    c->rhash = table;
    c->rhash_bits = bits;
    for (record *r = c->oldest; r; r = r->newer) {
        size_t s = rhash_slot(c, r->addr);
        r->hnext = table[s];
        table[s] = r;
    }
    return XMC_OK;
}

static int record_add(xmc_cache *c, xmc_entry *e, uintptr_t addr, uint64_t size,
                      uint64_t tag, bool dma)
{
    record *r;
    size_t s;

    if (rhash_reserve(c) != XMC_OK || !(r = malloc(sizeof(*r))))
        return XMC_ENOMEM;
    *r = (record){ .addr = addr, .e = e, .size = size, .tag = tag, .dma = dma };
    s = rhash_slot(c, addr);
    r->hnext = c->rhash[s];
    c->rhash[s] = r;
    r->older = c->newest;
    if (c->newest)
        c->newest->newer = r;
    else
        c->oldest = r;
    c->newest = r;
    c->st.locked++;
    c->st.dma_locked += dma;
    return XMC_OK;
}

static record **record_find(xmc_cache *c, uintptr_t addr, bool by_tag, uint64_t tag)
{
    record **rp;

    if (!c->rhash)
        return NULL;
    for (rp = &c->rhash[rhash_slot(c, addr)]; *rp; rp = &(*rp)->hnext)
        if ((*rp)->addr == addr && (!by_tag || (*rp)->tag == tag))
            return rp;
    return NULL;
}

static void record_del(xmc_cache *c, record **rp)
{
    record *r = *rp;

    *rp = r->hnext;
    if (r->older)
        r->older->newer = r->newer;
    else
        c->oldest = r->newer;
    if (r->newer)
        r->newer->older = r->older;
    else
        c->newest = r->older;
    r->e->lock--;
    c->st.locked--;
    c->st.dma_locked -= r->dma;
    free(r);
}

static uint64_t entry_paddr(const xmc_cache *c, const xmc_entry *e, uintptr_t addr)
{
    return (e->index << c->shift) + (addr - (uintptr_t)e->vaddr);
}

static void record_info(const xmc_cache *c, const record *r, xmc_record *out)
{
    *out = (xmc_record){ .address = r->addr, .paddr = entry_paddr(c, r->e, r->addr),
                         .size = r->size, .tag = r->tag, .dma = r->dma };
}

/* Copy the records (all, or only DMA ones) into a new array. */
static int records_copy(const xmc_cache *c, bool dma_only, xmc_record **out,
                        size_t *n)
{
    size_t count = (size_t)(dma_only ? c->st.dma_locked : c->st.locked), i = 0;
    xmc_record *arr = NULL;

    if (count && !(arr = calloc(count, sizeof(*arr))))
        return XMC_ENOMEM;
    for (const record *r = c->oldest; r; r = r->newer)
        if (!dma_only || r->dma)
            record_info(c, r, &arr[i++]);
    *out = arr;
    *n = count;
    return XMC_OK;
}

void xmc_records_free(xmc_record *records)
{
    free(records);
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
    c = calloc(1, sizeof(*c));
    if (!c)
        return XMC_ENOMEM;
    c->slots = calloc((size_t)slots, sizeof(*c->slots));
    if (!c->slots || pthread_mutex_init(&c->mutex, NULL) != 0) {
        free(c->slots);
        free(c);
        return XMC_ENOMEM;
    }
    c->be = be;
    c->shift = bucket_shift;
    c->bucket_size = bucket;
    c->max_size = max_size;
    c->nr_slots = slots;
    c->lock_limit = UINT32_MAX;
    if (be->retain)
        be->retain(be->opaque);
    *out = c;
    return XMC_OK;
}

void xmc_cache_free(xmc_cache *c)
{
    const xmc_backend *be;

    if (!c)
        return;
    while (c->oldest) {
        record *r = c->oldest;
        c->oldest = r->newer;
        free(r);
    }
    while (c->live)
        entry_destroy(c, c->live);
    tdestroy(c->tree, tree_noop);
    free(c->rhash);
    free(c->slots);
    pthread_mutex_destroy(&c->mutex);
    be = c->be;
    free(c);
    if (be->release)
        be->release(be->opaque);
}

#define LOCKED_CALL(c, expr)                                                  \
    do {                                                                      \
        int rc_;                                                              \
        if (!(c))                                                             \
            return XMC_EINVAL;                                                \
        pthread_mutex_lock(&(c)->mutex);                                      \
        rc_ = (expr);                                                         \
        pthread_mutex_unlock(&(c)->mutex);                                    \
        return rc_;                                                           \
    } while (0)

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

static int translate_unlocked(xmc_cache *c, uint64_t paddr, uint64_t size,
                              uint64_t *out)
{
    xmc_translate_fn fn = c->translate;
    void *opaque = c->translate_opaque;
    int rc;

    if (!fn) {
        fn = c->be->translate;
        opaque = c->be->opaque;
    }
    if (!fn)
        return XMC_ENOENT;
    /* The callback may take its time or call back in: do not hold the lock. */
    pthread_mutex_unlock(&c->mutex);
    rc = fn(opaque, paddr, size, out);
    pthread_mutex_lock(&c->mutex);
    if (rc != XMC_OK)
        return XMC_EMAP;
    if (!xmc_range_ok(*out, size))
        return XMC_EINVAL;
    return XMC_OK;
}

static int map_locked(xmc_cache *c, uint64_t paddr, uint64_t size, unsigned flags,
                      uint64_t tag, void **out)
{
    bool lock = flags & XMC_LOCK, translated = false, dummy = false;
    uint64_t index = paddr >> c->shift;
    uint64_t offset = paddr & (c->bucket_size - 1);
    xmc_entry *e = c->last;
    int rc;

    if (!lock && size == 0 && e && e->index == index &&
        pages_valid(e, offset >> XMC_PAGE_SHIFT, 1)) {
        c->st.hits++;
        *out = e->vaddr + offset;
        return XMC_OK;
    }
    if (!xmc_range_ok(paddr, size) || size > c->max_size)
        return XMC_EINVAL;
    for (;;) {
        uint64_t cache_size = c->bucket_size, n = 1;

        if (size) {
            cache_size = (offset + size + c->bucket_size - 1) & ~(c->bucket_size - 1);
            n = ((paddr & (XMC_PAGE_SIZE - 1)) + size + XMC_PAGE_SIZE - 1) >> XMC_PAGE_SHIFT;
        }
        rc = find_or_map(c, index, cache_size, offset >> XMC_PAGE_SHIFT, n, dummy, &e);
        if (rc != XMC_EMAP)
            break;
        c->last = NULL;
        if (!translated && (c->translate || c->be->translate)) {
            uint64_t np;
            rc = translate_unlocked(c, paddr, size, &np);
            if (rc != XMC_OK)
                return rc;
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
    if (lock) {
        if (e->lock >= c->lock_limit)
            return XMC_EOVERFLOW;
        rc = record_add(c, e, (uintptr_t)(e->vaddr + offset), size, tag,
                        flags & XMC_DMA);
        if (rc != XMC_OK)
            return rc;
        e->lock++;
    }
    c->last = e;
    *out = e->vaddr + offset;
    return XMC_OK;
}

int xmc_map(xmc_cache *c, uint64_t paddr, uint64_t size, unsigned flags,
            uint64_t tag, void **out)
{
    if (!out || (flags & ~(unsigned)(XMC_LOCK | XMC_DMA)))
        return XMC_EINVAL;
    LOCKED_CALL(c, map_locked(c, paddr, size, flags, tag, out));
}

/* ---- unlock and reverse lookup ------------------------------------------ */

static int unlock_locked(xmc_cache *c, uintptr_t addr, bool by_tag, uint64_t tag,
                         uint64_t *tag_out)
{
    record **rp = record_find(c, addr, by_tag, tag);

    if (!rp)
        return XMC_ENOENT;
    if (tag_out)
        *tag_out = (*rp)->tag;
    record_del(c, rp);
    return XMC_OK;
}

int xmc_unlock(xmc_cache *c, const void *addr, uint64_t *tag_out)
{
    LOCKED_CALL(c, unlock_locked(c, (uintptr_t)addr, false, 0, tag_out));
}

int xmc_unlock_tag(xmc_cache *c, const void *addr, uint64_t tag)
{
    LOCKED_CALL(c, unlock_locked(c, (uintptr_t)addr, true, tag, NULL));
}

static int ram_addr_locked(xmc_cache *c, const void *addr, uint64_t *out)
{
    record **rp = record_find(c, (uintptr_t)addr, false, 0);
    const xmc_entry *e = rp ? (*rp)->e : tree_find(c, addr);

    if (!e)
        return XMC_ENOENT;
    *out = entry_paddr(c, e, (uintptr_t)addr);
    return XMC_OK;
}

int xmc_ram_addr(xmc_cache *c, const void *addr, uint64_t *out)
{
    if (!out)
        return XMC_EINVAL;
    LOCKED_CALL(c, ram_addr_locked(c, addr, out));
}

/* ---- invalidate --------------------------------------------------------- */

static int invalidate_locked(xmc_cache *c, xmc_record **dma_out, size_t *n_dma)
{
    int rc = XMC_OK;

    if (dma_out) {
        rc = records_copy(c, true, dma_out, n_dma);
        if (rc != XMC_OK)
            return rc;
    }
    for (xmc_entry *e = c->live, *next; e; e = next) {
        next = e->lnext;
        if (e->lock == 0) {
            int urc = entry_destroy(c, e);
            if (rc == XMC_OK)
                rc = urc;
        }
    }
    c->last = NULL;
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
    for (const record *r = c->oldest; r; r = r->newer) {
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
        c->be->unmap(c->be->opaque, e->vaddr, e->size);
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
    bool was_dummy;
    int rc;

    if (!xmc_range_ok(old_paddr, size) || !xmc_range_ok(new_paddr, size) ||
        size > c->max_size)
        return XMC_EINVAL;
    if (size) {
        cache_size = (offset + size + c->bucket_size - 1) & ~(c->bucket_size - 1);
        n = ((new_paddr & (XMC_PAGE_SIZE - 1)) + size + XMC_PAGE_SIZE - 1) >> XMC_PAGE_SHIFT;
    }
    for (e = c->slots[index % c->nr_slots]; e; e = e->next)
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
    rc = map_into(c, e, new_paddr >> c->shift, cache_size, true, false, e->valid);
    if (rc == XMC_OK && (!pages_valid(e, new_offset >> XMC_PAGE_SHIFT, n) ||
                         (e->lock && !records_valid(c, e)))) {
        /* Put back what was there: guest pages, or anonymous memory for a
         * dummy entry (whose old guest pages may not be mappable at all). */
        rc = XMC_EMAP;
        if (map_into(c, e, old_index, cache_size, true, was_dummy, e->valid) != XMC_OK)
            entry_blank(c, e);
        return rc;
    }
    if (rc != XMC_OK) {
        entry_blank(c, e);
        if (e->lock == 0)
            entry_destroy(c, e);
        return rc;
    }
    if (e->index % c->nr_slots != old_index % c->nr_slots) {
        chain_del(e);
        chain_append(c, e);
    }
    *out = e->vaddr + new_offset;
    return XMC_OK;
}

int xmc_replace(xmc_cache *c, uint64_t old_paddr, uint64_t new_paddr,
                uint64_t size, void **out)
{
    if (!out)
        return XMC_EINVAL;
    LOCKED_CALL(c, replace_locked(c, old_paddr, new_paddr, size, out));
}

/* ---- listing, copying, statistics --------------------------------------- */

int xmc_locked(xmc_cache *c, xmc_record **out, size_t *n)
{
    if (!out || !n)
        return XMC_EINVAL;
    LOCKED_CALL(c, records_copy(c, false, out, n));
}

static int copy_locked(xmc_cache *c, uint64_t paddr, uint8_t *buf, size_t n,
                       bool to_guest)
{
    if (!xmc_range_ok(paddr, n))
        return XMC_EINVAL;
    while (n) {
        uint64_t room = c->bucket_size - (paddr & (c->bucket_size - 1));
        size_t chunk = n < room ? n : (size_t)room;

        if (chunk > c->max_size) /* map_locked refuses more, even in one bucket */
            chunk = (size_t)c->max_size;
        void *p;
        int rc = map_locked(c, paddr, chunk, 0, 0, &p);

        if (rc != XMC_OK)
            return rc;
        if (to_guest)
            memcpy(p, buf, chunk);
        else
            memcpy(buf, p, chunk);
        buf += chunk;
        paddr += chunk;
        n -= chunk;
    }
    return XMC_OK;
}

int xmc_read(xmc_cache *c, uint64_t paddr, void *buf, size_t n)
{
    if (!buf && n)
        return XMC_EINVAL;
    LOCKED_CALL(c, copy_locked(c, paddr, buf, n, false));
}

int xmc_write(xmc_cache *c, uint64_t paddr, const void *buf, size_t n)
{
    if (!buf && n)
        return XMC_EINVAL;
    LOCKED_CALL(c, copy_locked(c, paddr, (uint8_t *)(uintptr_t)buf, n, true));
}

static int stats_locked(xmc_cache *c, xmc_stats *out)
{
    *out = c->st;
    return XMC_OK;
}

int xmc_stats_get(xmc_cache *c, xmc_stats *out)
{
    if (!out)
        return XMC_EINVAL;
    LOCKED_CALL(c, stats_locked(c, out));
}
