/*
 * fault_backend.h - a test backend over the memfd guest RAM that counts every
 * map and unmap, remembers every mapping it handed out, and fails chosen map
 * calls, chosen unmap calls and chosen pages on demand.
 *
 * It is how the tests see what the cache does to the foreign-memory side:
 * that each mapping is unmapped exactly once, that a failed unmap is never
 * retried, that an injected error reaches the caller.  Give &fb->be to
 * xmc_cache_new().  Not thread-safe beyond what one cache's mutex gives.
 */
#ifndef FAULT_BACKEND_H
#define FAULT_BACKEND_H

#include "xt.h"

#define FB_MAX_LIVE 4096
#define FB_MAX_BAD 16

typedef struct fb_mapping {
    uintptr_t addr;
    size_t len;
    bool unmap_failed; /* an injected unmap failure left it mapped */
} fb_mapping;

typedef struct fb {
    xmc_backend be;        /* hand this to xmc_cache_new */
    xmc_ram *ram;          /* owned */
    const xmc_backend *rb; /* the RAM's own backend */

    /* Counters (1-based call numbers for the fail_* knobs). */
    unsigned long map_calls, unmap_calls, translate_calls;
    unsigned long fixed_maps; /* map calls at a fixed address */

    /* Injection. */
    unsigned long fail_map_at;   /* fail map call number N; 0 = none */
    bool fail_map_always;        /* fail every map call */
    bool fail_map_clobbers;      /* a failed fixed map leaves PROT_NONE behind */
    int fail_map_rc;             /* what a failed map returns (XMC_ESYS) */
    unsigned long fail_unmap_at; /* fail unmap call number N; 0 = none */
    struct { uint64_t lo, hi; } bad[FB_MAX_BAD]; /* pfns [lo, hi) fail */
    size_t nbad;
    /* backend translate: [tr_from, tr_from + tr_len) -> tr_to + offset; other
     * addresses come back unchanged ("no translation", as in QEMU) */
    bool tr_on;
    uint64_t tr_from, tr_len, tr_to;

    /* Accounting. */
    fb_mapping live[FB_MAX_LIVE];
    size_t nlive;
    unsigned long unknown_unmaps; /* unmap of something not handed out */
    unsigned long retried_unmaps; /* unmap again after an injected failure */
    unsigned long bad_len_unmaps; /* unmap with a length other than mapped */
} fb;

/* A backend over fresh pattern-filled RAM of `size` bytes; NULL on failure. */
fb *fb_new(uint64_t size);
/*
 * Free it.  Call after every cache on it is freed: this unmaps (itself) the
 * mappings left behind by injected unmap failures.
 */
void fb_free(fb *f);
/* Make pfns [lo, hi) fail from now on / no longer. */
void fb_bad_pages(fb *f, uint64_t lo, uint64_t hi);
void fb_clear_bad(fb *f);
/* Mappings handed out and not yet unmapped (or left by a failed unmap). */
size_t fb_live(const fb *f);
/* Those left mapped by injected unmap failures. */
size_t fb_failed_unmaps(const fb *f);
/* No unknown, repeated or wrong-length unmap was ever seen. */
bool fb_clean(const fb *f);

/*
 * Free the cache c (may be NULL) and then f, failing the test if the cache
 * left a mapping behind (one the backend handed out that is still mapped,
 * other than those of injected unmap failures) or ever unmapped something
 * twice, unknown or with the wrong length.
 */
void fb_done_(fb *f, xmc_cache *c, const char *file, int line);
#define fb_done(f, c) fb_done_((f), (c), __FILE__, __LINE__)

/* ---- a fixture: one fb backend F and one cache C over it ---------------- */

extern fb *F;
extern xmc_cache *C;
void fx_setup_(uint64_t ram_size, unsigned shift, uint64_t max_size,
               const char *file, int line);
#define fx_setup(ram_size, shift, max_size)                                   \
    fx_setup_((ram_size), (shift), (max_size), __FILE__, __LINE__)
#define fx_teardown() fb_done(F, C)

/* Map through C; it must succeed.  Checks the pointer maps paddr. */
void *xt_map_(xmc_cache *c, uint64_t paddr, uint64_t size, unsigned flags,
              uint64_t tag, const char *file, int line);
#define MAP(paddr, size, flags) xt_map_(C, (paddr), (size), (flags), 0, __FILE__, __LINE__)
#define MAPT(paddr, size, flags, tag)                                         \
    xt_map_(C, (paddr), (size), (flags), (tag), __FILE__, __LINE__)
#define MAPC(c, paddr, size, flags) xt_map_((c), (paddr), (size), (flags), 0, __FILE__, __LINE__)
/* Guest address behind p in c; it must resolve. */
uint64_t xt_ram_addr_(xmc_cache *c, const void *p, const char *file, int line);
#define RAM_ADDR(p) xt_ram_addr_(C, (p), __FILE__, __LINE__)

/* A thread parked inside F's backend: fx_park(paddr) starts a thread whose
 * miss at paddr on C stops at the gate (xt_gate_pass) in the backend's map,
 * holding C's mutex, and returns once it is there.  fx_unpark() lets it go
 * on, joins it, takes the gate out of F's map (fx_ungate) and returns the
 * address the miss mapped, or NULL.  Once per test, as the gate is. */
void fx_park(uint64_t paddr);
void *fx_unpark(void);
void fx_ungate(void); /* F's map without the gate (a forked child's, say) */

#endif /* FAULT_BACKEND_H */
