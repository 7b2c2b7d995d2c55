/*
 * xenmapcache.h - the Xen mapcache as a plain C library.
 *
 * An emulator running a Xen guest maps guest-physical memory on demand, in
 * fixed-size buckets, through a "backend" (foreign memory on Xen, a memfd of
 * guest RAM here), and keeps those mappings in a cache.  A request either hits
 * an entry already mapped or maps one; "locked" requests pin their entry until
 * xmc_unlock() and leave a reverse record (host address -> entry) behind, so
 * that host pointers can be turned back into guest addresses in O(1).
 * xmc_invalidate() drops every unlocked entry and hands back the locked DMA
 * mappings still in flight, which the caller should warn about.
 *
 * Every function returns XMC_OK or a negative XMC_E* code (see xmc_strerror);
 * nothing here aborts, exits or prints.  Each cache is serialised by its own
 * mutex, except for the hit (xmc_map), which takes no lock; distinct caches
 * share nothing.  Include this header alone.
 *
 * Each declaration below says what it does, its errors and its cost.  Every
 * call on a cache can also fail with XMC_EINVAL (a NULL cache or out-pointer),
 * XMC_ECLOSED (after xmc_cache_close()) and XMC_EREENTER (made from the
 * cache's own backend map or unmap); a call that fails changes nothing.  The
 * contract is docs/contract.md; docs/c-api.md renders these comments.
 */
#ifndef XENMAPCACHE_H
#define XENMAPCACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* cdef-begin: build_ffi.py hands the text up to cdef-end to cffi. */

/* Status codes: what every function returns (0 or one of the negative codes). */
#define XMC_OK 0
#define XMC_ENOMEM -1    /* out of memory */
#define XMC_EINVAL -2    /* invalid argument or address */
#define XMC_EMAP -3      /* guest pages cannot be mapped */
#define XMC_ENOENT -4    /* no such mapping */
#define XMC_EOVERFLOW -5 /* lock count at its limit */
#define XMC_EUNAVAIL -6  /* backend not available on this machine */
#define XMC_ESYS -7      /* a system call failed; see errno */
#define XMC_ECLOSED -8   /* the cache was closed */
#define XMC_EAGAIN -9    /* a _nowait call would have had to wait; nothing was done */
#define XMC_EREENTER -10 /* called from inside the cache's own backend callback */
#define XMC_EGRANT -12   /* not allowed on a grant cache: an unlocked request, replace */
#define XMC_EFORKED -11  /* inherited through fork() while a thread was inside the cache */
#define XMC_ECALLBACK -13 /* a backend's map failed for good: the call stops, nothing retried */

/* Limits: pages are 4 KiB; a bucket is 2**12 to 2**32 bytes; at most 16 Mi slots. */
#define XMC_PAGE_SHIFT 12
#define XMC_MIN_BUCKET_SHIFT 12
#define XMC_MAX_BUCKET_SHIFT 32
#define XMC_MAX_SLOTS 16777216

/* Flags for xmc_map(). */
#define XMC_LOCK 1 /* pin the entry and leave a reverse record */
#define XMC_DMA 2  /* the locked mapping is a DMA transfer ([b]) */

/* Opaque handles: a cache, guest RAM in a memfd, a Xen domain's memory. */
typedef struct xmc_cache xmc_cache;
typedef struct xmc_ram xmc_ram;
typedef struct xmc_xen xmc_xen;
typedef struct xmc_gnttab xmc_gnttab;

/*
 * The foreign-memory side.  map() maps nr_pages guest pages starting at
 * first_pfn, at `fixed` (replacing what is there) or anywhere when fixed is
 * NULL; it stores 0 or a positive errno per page in errs[] (a page with an
 * error is mapped with no access) and the address in *out.  It returns
 * XMC_OK, or an error when nothing was mapped: XMC_EMAP lets the request
 * go on to translate and dummy mode like pages that cannot be mapped, while
 * XMC_ECALLBACK (a Python backend that raised, an interrupt) fails it at
 * once, having retried nothing.  unmap() undoes one map().
 * translate, retain and release may be NULL.  retain/release let a cache keep
 * the backend alive for as long as it holds mappings from it.  map and unmap
 * run under the cache's mutex: a call from them into the same cache fails
 * with XMC_EREENTER (translate runs without it, and may call in).
 */
typedef struct xmc_backend {
    void *opaque;
    int (*map)(void *opaque, void *fixed, uint64_t first_pfn, size_t nr_pages,
               int *errs, void **out);
    int (*unmap)(void *opaque, void *addr, size_t len);
    int (*translate)(void *opaque, uint64_t paddr, uint64_t size, uint64_t *out);
    void (*retain)(void *opaque);
    void (*release)(void *opaque);
} xmc_backend;

/*
 * The translate hook of xmc_cache_set_translate(): store in *out the guest
 * address to retry a failed request at, and return XMC_OK (or an error, which
 * the failed request then returns).
 */
typedef int (*xmc_translate_fn)(void *opaque, uint64_t paddr, uint64_t size,
                                uint64_t *out);

/* One outstanding locked mapping. */
typedef struct xmc_record {
    uintptr_t address; /* host address handed out */
    uint64_t paddr;    /* guest address behind it (follows xmc_replace) */
    uint64_t size;     /* size asked for */
    uint64_t tag;      /* caller's cookie */
    bool dma;
} xmc_record;

/* The counters of xmc_stats_get(); a refused call moves none of them. */
typedef struct xmc_stats {
    uint64_t hits;          /* requests served by an entry already mapped */
    uint64_t misses;        /* requests that had to map */
    uint64_t remaps;        /* misses that reused an unlocked entry */
    uint64_t entries;       /* live entries */
    uint64_t locked;        /* outstanding locked mappings */
    uint64_t dma_locked;    /* of which DMA */
    uint64_t mapped_bytes;  /* bytes mapped by live entries */
    uint64_t invalidations; /* xmc_invalidate() calls */
} xmc_stats;

/* Heap the cache holds for its bookkeeping (guest mappings not included). */
typedef struct xmc_memory {
    uint64_t record_bytes; /* record pool (grown in chunks, kept) + reverse hash */
    uint64_t entry_bytes;  /* live entries, page bitmaps included */
    uint64_t slot_bytes;   /* the cache itself (hit counters included) and its hash slots */
} xmc_memory;

/*
 * A static string naming status code err ("unknown error" for a code that is
 * not one).  It never fails.  Cost: O(1).
 */
const char *xmc_strerror(int err);

/*
 * Guest RAM in a Linux memfd: the embedded backend.  xmc_ram_new() makes
 * `size` bytes of zeroed RAM (a positive multiple of 4096); xmc_ram_open()
 * copies a raw RAM image file into a new memfd (its size rounded up to whole
 * pages); xmc_ram_new_fd() uses an existing file of at least `size` bytes,
 * whose descriptor it duplicates.  Errors: XMC_EINVAL (a NULL pointer, a size
 * of 0 or not page-aligned, a file shorter than size), XMC_ESYS (memfd_create,
 * ftruncate, dup or the copy failed: see errno), XMC_ENOMEM.  Cost: one memfd;
 * the kernel allocates pages as they are touched; xmc_ram_open() copies the
 * image once.
 */
int xmc_ram_new(uint64_t size, xmc_ram **out);
int xmc_ram_open(const char *path, xmc_ram **out); /* copy of a raw RAM image */
/* RAM in an existing file of at least `size` bytes (the fd is duplicated). */
int xmc_ram_new_fd(int fd, uint64_t size, xmc_ram **out);
/*
 * Declare [start, end) not RAM (a PCI hole, say): its pages come back from the
 * backend as per-page errors and are mapped with no access.  Add holes before
 * a cache uses the RAM.  Errors: XMC_EINVAL (NULL, start >= end), XMC_ENOMEM.
 * Cost: O(1); the backend checks each map against every hole.
 */
int xmc_ram_add_hole(xmc_ram *ram, uint64_t start, uint64_t end); /* [start, end) */
/* The size of guest RAM in *out.  Errors: XMC_EINVAL (NULL).  Cost: O(1). */
int xmc_ram_size(const xmc_ram *ram, uint64_t *out);
/*
 * Copy n bytes of guest RAM at paddr out of, or into, the memfd directly (no
 * cache), all or nothing.  Errors: XMC_EINVAL (NULL, a range past the end of
 * RAM), XMC_EMAP (the range touches a hole), XMC_ESYS (pread or pwrite
 * failed).  Cost: pread/pwrite system calls and the copy.
 */
int xmc_ram_read(xmc_ram *ram, uint64_t paddr, void *buf, size_t n);
int xmc_ram_write(xmc_ram *ram, uint64_t paddr, const void *buf, size_t n);
/*
 * The backend of the RAM, for xmc_cache_new(); it has retain and release, so
 * a cache keeps the RAM alive.  NULL when ram is NULL; it never fails
 * otherwise.  Cost: O(1).
 */
const xmc_backend *xmc_ram_backend(xmc_ram *ram);
/*
 * Drop the caller's reference (NULL is ignored); the memfd is closed when the
 * last cache using it is freed too.  It never fails.  Cost: O(1), or the
 * close and the hole list.
 */
void xmc_ram_free(xmc_ram *ram); /* caches using it keep it alive */

/*
 * Memory of the running Xen domain `domid` through libxenforeignmemory, which
 * is loaded at run time (no build-time dependency).  XMC_EUNAVAIL when the
 * library cannot be loaded or /dev/xen/privcmd is missing (not in a Xen
 * domain); xmc_xen_open() then writes into why[why_size] which it was, and
 * takes the library to load (NULL: "libxenforeignmemory.so.1").  The
 * library's logger is replaced by a quiet one: nothing is printed.
 * xmc_xen_backend() returns the backend for xmc_cache_new() (NULL for NULL);
 * xmc_xen_free() drops the caller's reference (caches keep the handle).
 * Errors: XMC_EUNAVAIL, XMC_EINVAL (a NULL out-pointer), XMC_ENOMEM; the
 * backend's map fails with XMC_EMAP.  Cost: a dlopen and an open of the
 * privcmd device, once per handle; each miss of a cache is one
 * xenforeignmemory_map2 call (a hypercall).
 */
int xmc_xen_new(uint32_t domid, xmc_xen **out);
int xmc_xen_open(uint32_t domid, const char *library, char *why, size_t why_size,
                 xmc_xen **out);
const xmc_backend *xmc_xen_backend(xmc_xen *xen);
void xmc_xen_free(xmc_xen *xen); /* caches using it keep it alive */

/*
 * Pages the Xen domain `domid` granted us, through libxengnttab (loaded at
 * run time): the backend's page numbers are grant references, mapped all or
 * nothing, read-only unless `writable`, never at a fixed address (use it in a
 * cache with xmc_cache_set_grants on).  library NULL: "libxengnttab.so.1";
 * the library's logger is replaced by a quiet one.  xmc_gnttab_backend()
 * returns the backend for xmc_cache_new() (NULL for NULL); xmc_gnttab_free()
 * drops the caller's reference (caches keep the handle).  Errors:
 * XMC_EUNAVAIL when the library cannot be loaded or /dev/xen/gntdev is
 * missing, with the reason in why[why_size]; XMC_EINVAL (a NULL out-pointer,
 * a domid past 65535), XMC_ENOMEM; the backend's map fails with XMC_EMAP
 * (a reference not granted), XMC_EINVAL (a fixed address, references past
 * 2**32).  Cost: a dlopen and an open of the gntdev device, once per handle;
 * each miss of a cache is one xengnttab_map_domain_grant_refs call.
 */
int xmc_gnttab_open(uint32_t domid, bool writable, const char *library, char *why,
                    size_t why_size, xmc_gnttab **out);
const xmc_backend *xmc_gnttab_backend(xmc_gnttab *g);
void xmc_gnttab_free(xmc_gnttab *g); /* caches using it keep it alive */

/*
 * A cache over `be` (which must outlive the cache unless it has retain and
 * release).  bucket_shift 0 = default (20 on 64-bit hosts, 16 on 32-bit);
 * max_size 0 = default (32 GiB on 64-bit hosts, 2 GiB on 32-bit).  max_size
 * bounds one request and sets the slot count, ceil(max_size / bucket size).
 * Errors: XMC_EINVAL (NULL out, a backend without map or unmap, a shift out of
 * [XMC_MIN_BUCKET_SHIFT, XMC_MAX_BUCKET_SHIFT], more than XMC_MAX_SLOTS
 * slots), XMC_ENOMEM.  Cost: one allocation of 8 bytes per slot (256 KiB for
 * the defaults); nothing is mapped until the first request.
 *
 * xmc_cache_free() unmaps every entry, frees every record and releases the
 * backend (NULL is ignored); no other thread may be using the handle.  It
 * never fails (an unmap failure is dropped).  Cost: one unmap per live entry.
 */
int xmc_cache_new(const xmc_backend *be, unsigned bucket_shift, uint64_t max_size,
                  xmc_cache **out);
void xmc_cache_free(xmc_cache *c); /* unmaps everything */
/*
 * Unmap everything and drop every record now, while other threads may still
 * hold the handle: their calls then fail with XMC_ECLOSED until the last user
 * calls xmc_cache_free().  Errors: the common ones (a second close gives
 * XMC_ECLOSED).  Cost: one unmap per live entry.
 */
int xmc_cache_close(xmc_cache *c);
/*
 * Settings, safe at any time.  The lock limit caps each entry's lock count (a
 * lock at the limit fails with XMC_EOVERFLOW; default UINT32_MAX).  Dummy mode
 * (an incoming migration) maps anonymous memory where guest pages cannot be
 * mapped, instead of failing.  The translate hook (NULL removes it) is called
 * once, without the mutex, when a request's pages cannot be mapped, and the
 * request is retried at the address it gives.  Errors: the common ones.
 * Cost: O(1).
 */
int xmc_cache_set_lock_limit(xmc_cache *c, uint32_t limit);
int xmc_cache_set_dummy(xmc_cache *c, bool on); /* incoming-migration mode */
int xmc_cache_set_translate(xmc_cache *c, xmc_translate_fn fn, void *opaque);
/*
 * Grant rules, on any backend (QEMU's grant caches): only locked requests are
 * served (an unlocked one, a read, a write or a replace fails with XMC_EGRANT
 * and maps nothing); an entry is unmapped as soon as its last lock goes, so
 * it is never kept for later hits, never remapped, never the fast path's last
 * entry; invalidate reports DMA mappings in flight as on any cache.  Entries
 * are page-granular: the cache must have bucket_shift 12 (else XMC_EINVAL).
 * Set it before the first map (after one, changing it fails with XMC_EINVAL).
 * Unlocking the last lock of an entry unmaps it through the backend: when
 * that unmap fails the lock is gone all the same (the entry too, never
 * retried) and xmc_unlock() returns XMC_ESYS; the _nowait unlock returns
 * XMC_EAGAIN instead of unmapping.  Cost: O(1).
 */
int xmc_cache_set_grants(xmc_cache *c, bool on); /* grant rules on any backend */

/*
 * The host address of guest address paddr in *out (QEMU's xen_map_cache()).
 * size 0 asks for one bucket.  flags: XMC_LOCK pins the entry and leaves a
 * reverse record carrying tag, until xmc_unlock(); XMC_DMA marks that locked
 * mapping as DMA (xmc_invalidate() reports it).  Without XMC_LOCK the address
 * is valid until the entry is next remapped or invalidated.  Errors:
 * XMC_EINVAL (size over max_size, paddr + size past 2**64, unknown flags),
 * XMC_EMAP (a page cannot be mapped, after translate and dummy mode),
 * XMC_EOVERFLOW (the entry's lock count is at the limit), XMC_ENOMEM, and the
 * common ones.  Cost: a hit (unlocked, size 0, in the bucket of the entry that
 * served last, every page of it mapped) takes no lock and writes nothing
 * another thread reads: a few loads, validated by a sequence counter, and a
 * count in the calling thread's own slot; other requests take the mutex; a
 * miss calls the backend's map; O(1) in the locked mappings outstanding.
 */
int xmc_map(xmc_cache *c, uint64_t paddr, uint64_t size, unsigned flags,
            uint64_t tag, void **out);
/*
 * Drop one locked mapping at exactly addr, the newest there, and store its tag
 * in *tag_out (which may be NULL).  xmc_unlock_tag() drops the one at addr
 * that carries tag.  The entry stays mapped, unpinned by this lock.  Errors:
 * XMC_ENOENT (no locked mapping there, or none with that tag; nothing
 * changed), and the common ones.  Cost: O(1) in the locked mappings (a hash
 * by host address).
 */
int xmc_unlock(xmc_cache *c, const void *addr, uint64_t *tag_out);
int xmc_unlock_tag(xmc_cache *c, const void *addr, uint64_t tag);
/*
 * The guest address behind a host address in *out: the exact address of a
 * locked mapping, or any address inside a live entry, locked or not.  Errors:
 * XMC_ENOENT (in no entry), and the common ones.  Cost: O(1) for the exact
 * address of a locked mapping, O(log n) in the live entries otherwise.
 */
int xmc_ram_addr(xmc_cache *c, const void *addr, uint64_t *out);
/*
 * Unmap every unlocked entry (QEMU's xen_invalidate_map_cache()), chained
 * ones included; keep locked entries and their data; forget the last entry.
 * When dma_out is not NULL it receives an array (free it with
 * xmc_records_free) of the n_dma DMA mappings still outstanding, oldest
 * first.  Errors: XMC_EINVAL (only one of dma_out and n_dma given), XMC_ESYS
 * (an unmap failed: the invalidation happened all the same, and the entry is
 * gone), XMC_ENOMEM (for the array; nothing was invalidated), and the common
 * ones.  Cost: O(live entries + DMA mappings), whatever the slot count.
 */
int xmc_invalidate(xmc_cache *c, xmc_record **dma_out, size_t *n_dma);
/*
 * Remap the entry holding old_paddr (with that size) onto new_paddr in place:
 * same host address (MAP_FIXED), new guest memory; its records then report
 * the new guest address.  *out is the host address of new_paddr.  Errors:
 * XMC_ENOENT (no such entry), XMC_EMAP (the new pages cannot be mapped; the
 * entry keeps its old memory, or is dropped if unlocked and that failed too),
 * XMC_EINVAL (ranges past 2**64, size over max_size), and the common ones.
 * Cost: one remap by the backend.
 */
int xmc_replace(xmc_cache *c, uint64_t old_paddr, uint64_t new_paddr,
                uint64_t size, void **out);
/*
 * Every outstanding locked mapping, oldest first, in a new array of *n
 * records (NULL when there are none).  Errors: XMC_ENOMEM, and the common
 * ones.  Cost: O(n) in the locked mappings.
 */
int xmc_locked(xmc_cache *c, xmc_record **out, size_t *n);
/* Free an array of xmc_locked() or xmc_invalidate(); NULL is ignored.  It never fails.  Cost: O(1). */
void xmc_records_free(xmc_record *records);
/*
 * Copy n bytes of guest memory at paddr through the cache, unlocked; the range
 * may span buckets.  All or nothing: every bucket is mapped before a byte is
 * copied, so a write that would run into a hole writes nothing.  Errors:
 * XMC_EINVAL (NULL buf with n > 0, paddr + n past 2**64), XMC_EMAP (a page
 * cannot be mapped), XMC_ENOMEM, and the common ones.  Cost: one lookup per
 * bucket (a hit or a map), plus the copy.
 */
int xmc_read(xmc_cache *c, uint64_t paddr, void *buf, size_t n);
int xmc_write(xmc_cache *c, uint64_t paddr, const void *buf, size_t n);
/*
 * Batches (scatter-gather): n locked mappings, or n unlocks, for the price of
 * one call and one acquisition of the cache's mutex.  n is 1 to XMC_SG_MAX;
 * n == 0, a larger n, NULL pointers and unknown flags are XMC_EINVAL.
 *
 * xmc_map_sg() maps segment i as xmc_map(c, segs[i].paddr, segs[i].size,
 * XMC_LOCK | flags, tag, &out[i]) would (size 0 included), in order: the
 * lock is implied, and flags may hold XMC_DMA and XMC_LOCK, nothing else.
 * Every mapping of the batch carries the same tag.  All or nothing: when a
 * segment fails, its error is returned, the locks of the segments before it
 * are undone and out[] is left as it was.  Hits, misses and remaps then
 * differ from their values before the call by what the failing segment's own
 * attempt moved, exactly as after a failed xmc_map() of that segment; locked
 * and dma_locked are unchanged.  Entries mapped on the way may stay cached,
 * unlocked (entries, mapped_bytes), as after a failed xmc_map(); on a grant
 * cache they go with their last lock.  Every
 * segment's range (paddr + size within 2**64, size <= max_size) is checked
 * before anything is looked up, so a bad one anywhere changes nothing.
 * Cost: that of n locked xmc_map() calls less n - 1 mutex round trips; a
 * batch of more than 64 segments allocates n pointers (XMC_ENOMEM before
 * anything is done).  The mutex is given up only while a translate callback
 * runs, as in xmc_map(); other threads' calls may then land mid-batch.
 *
 * xmc_unlock_sg() drops, for each address, the newest locked mapping at
 * exactly addrs[i] that carries tag, as n xmc_unlock_tag() calls would.  All
 * or nothing: it first finds a record for every address (an address given k
 * times needs k records), and when one is missing returns XMC_ENOENT having
 * unlocked nothing.  On a grant cache an entry whose last lock goes is
 * unmapped; if that fails the locks are gone all the same and it returns
 * XMC_ESYS.  O(n) hash lookups (none for the batch mapped last, its addresses
 * given in order: its records are the newest), no allocation.
 *
 * Traced (xmc_cache_set_trace), a batch reports each segment as xmc_map()
 * does, the undo of a failed batch as unlocks, and a refused unlock batch as
 * one unknown unlock: its first address without a record.
 */
#define XMC_SG_MAX 65536
typedef struct xmc_sg {
    uint64_t paddr;
    uint64_t size;
} xmc_sg;

int xmc_map_sg(xmc_cache *c, const xmc_sg *segs, size_t n, unsigned flags, uint64_t tag,
               void **out);
int xmc_unlock_sg(xmc_cache *c, void *const *addrs, size_t n, uint64_t tag);

/*
 * For callers that hold a lock of their own across the call, such as a
 * language runtime's global interpreter lock: the same calls, except that
 * where they would wait (for the cache's mutex, held by another thread) or
 * reach the backend (a miss, which maps), they return XMC_EAGAIN having
 * changed nothing and traced nothing.  Then drop your own lock and make the waiting call.  A read
 * or a write is served only within one bucket.  Any other answer is the final one.
 * Errors: XMC_EAGAIN, and those of the plain call.  Cost: the plain call's
 * (the same lock-free hit), with a try-lock instead of a lock; never a
 * system call.
 */
int xmc_map_nowait(xmc_cache *c, uint64_t paddr, uint64_t size, unsigned flags,
                   uint64_t tag, void **out);
int xmc_unlock_tag_nowait(xmc_cache *c, const void *addr, uint64_t tag);
/* All or nothing too: XMC_EAGAIN, nothing changed, when any segment would miss;
 * the batch unlock on a grant cache always leaves the work to the waiting call. */
int xmc_map_sg_nowait(xmc_cache *c, const xmc_sg *segs, size_t n, unsigned flags,
                      uint64_t tag, void **out);
int xmc_unlock_sg_nowait(xmc_cache *c, void *const *addrs, size_t n, uint64_t tag);
int xmc_ram_addr_nowait(xmc_cache *c, const void *addr, uint64_t *out);
int xmc_read_nowait(xmc_cache *c, uint64_t paddr, void *buf, size_t n);
int xmc_write_nowait(xmc_cache *c, uint64_t paddr, const void *buf, size_t n);
/*
 * The counters (xmc_stats) or the heap the cache holds for its bookkeeping
 * (xmc_memory) in *out.  Errors: the common ones.  Cost: O(1).
 */
int xmc_stats_get(xmc_cache *c, xmc_stats *out);
int xmc_memory_get(xmc_cache *c, xmc_memory *out);

/*
 * Trace events: what the cache does, as QEMU's mapcache reports it through
 * its trace points.  xmc_cache_set_trace(c, fn, opaque) calls fn(opaque, ev)
 * for each event (fn NULL: none, the default).  The hook runs in the calling
 * thread, under the cache's mutex and in order: it may record, count or
 * print, but must not call into the same cache (that fails with
 * XMC_EREENTER) nor wait for a thread that does; *ev lives only during the
 * call.  Closing and freeing the cache emit nothing.
 *
 * The hook returns 0 to let the call go on.  Nonzero refuses the event: a
 * call whose effect comes after its events then stops, fails with
 * XMC_ECALLBACK and changes nothing (no byte copied, no lock dropped, no hit
 * counted; entries it mapped stay, as after any failure): xmc_read() and
 * xmc_write() (any event of theirs), xmc_unlock(), xmc_unlock_tag() and
 * xmc_unlock_sg() (their XMC_EV_UNLOCK events, all told before any lock
 * goes: all or nothing), and their _nowait forms.  Every other call has done
 * its work when it reports it, and ignores the answer (a map that must not
 * stand is the caller's to unlock).  Errors: the common ones.  Cost: O(1) to set; while no hook is set a hit costs nothing more
 * (hits are traced off the fast path, which is taken only while no hook is
 * set), and every other call one test of a flag per event.
 *
 * The struct may grow at its end, and kinds may be added (numbers are never
 * reused): read ev->struct_size before a field added later, and ignore
 * kinds you do not know.
 */
#define XMC_EV_HIT 1        /* a request served by a mapped entry */
#define XMC_EV_MISS 2       /* a request that had to map (rc: its outcome) */
#define XMC_EV_MAP 3        /* an entry mapped from the backend (paddr/size/address: the entry) */
#define XMC_EV_REMAP 4      /* an unlocked entry mapped over for another bucket */
#define XMC_EV_UNMAP 5      /* an entry unmapped (rc: the backend's answer) */
#define XMC_EV_DUMMY 6      /* anonymous memory mapped in place of guest memory */
#define XMC_EV_TRANSLATE 7  /* pages not mappable: old_paddr translated to paddr */
#define XMC_EV_LOCK_OVERFLOW 8 /* a lock refused: the entry's count is at the limit */
#define XMC_EV_UNLOCK 9     /* a locked mapping dropped */
#define XMC_EV_UNLOCK_UNKNOWN 10 /* an unlock of an address with no locked mapping */
#define XMC_EV_RAM_ADDR_UNKNOWN 11 /* a reverse lookup of an address in no entry */
#define XMC_EV_INVALIDATE 12 /* invalidate: size = the DMA mappings in flight */
#define XMC_EV_DMA_IN_FLIGHT 13 /* one per DMA mapping in flight at an invalidate */
#define XMC_EV_REPLACE 14   /* an entry remapped onto new_paddr (rc: the outcome) */
#define XMC_EV_REFUSED 15   /* a request refused by the grant rules (unlocked) */

typedef struct xmc_event {
    uint32_t struct_size; /* sizeof(xmc_event) of the library that filled it */
    uint32_t kind;        /* XMC_EV_* */
    int32_t rc;           /* XMC_OK, or the error of the call or the backend */
    uint32_t flags;       /* XMC_LOCK, XMC_DMA of the request or mapping */
    uint64_t paddr;       /* guest address */
    uint64_t size;        /* bytes asked for, or of the entry */
    uintptr_t address;    /* host address (0 when none) */
    uint64_t tag;         /* the locked mapping's tag (0 otherwise) */
    uint64_t old_paddr;   /* REPLACE: where it was; TRANSLATE: what was asked */
} xmc_event;

typedef int (*xmc_trace_fn)(void *opaque, const xmc_event *ev);
int xmc_cache_set_trace(xmc_cache *c, xmc_trace_fn fn, void *opaque);

/* cdef-end */

#ifdef __cplusplus
}
#endif

#endif /* XENMAPCACHE_H */
